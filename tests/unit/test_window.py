"""Specification of a stream change passing an open DBLog chunk window (``engine.window``)."""

from __future__ import annotations

from cdc_replicator.engine.window import pass_window
from cdc_replicator.model import UNCHANGED, TableId, Value
from tests.support.events import delete, insert, update

DOCS = TableId("public", "docs")
KPOS = (0,)  # docs(id key, v, doc)

Chunk = dict[tuple[Value, ...], tuple[Value, ...]]


def chunk(*rows: tuple[Value, ...]) -> Chunk:
    return {(r[0],): r for r in rows}


def test_a_change_takes_its_keys_out_of_the_chunk_and_wins_for_the_columns_it_carries() -> None:
    rows = chunk((b"1", b"old", b"doc1"), (b"2", b"old", b"doc2"))
    out = pass_window(rows, update(DOCS, b"1", b"new", b"new doc"), KPOS)
    assert out.new == (b"1", b"new", b"new doc")
    assert rows == chunk((b"2", b"old", b"doc2"))


def test_an_unchanged_toast_value_comes_from_the_chunks_row_of_that_key() -> None:
    rows = chunk((b"1", b"old", b"doc1"))
    out = pass_window(rows, update(DOCS, b"1", b"new", UNCHANGED), KPOS)
    assert out.new == (b"1", b"new", b"doc1")  # v from the stream, doc from the chunk
    assert rows == {}


def test_a_later_change_of_the_same_key_finds_the_chunk_row_gone_and_keeps_its_marker() -> None:
    rows = chunk((b"1", b"old", b"doc1"))
    pass_window(rows, update(DOCS, b"1", b"a", UNCHANGED), KPOS)
    out = pass_window(rows, update(DOCS, b"1", b"b", UNCHANGED), KPOS)
    assert out.new == (b"1", b"b", UNCHANGED)  # the batch or Delta (which now has the row) gives it


def test_a_key_move_takes_the_value_from_the_new_keys_row_else_from_the_old_keys() -> None:
    moved = update(DOCS, b"9", b"v", UNCHANGED, old=(b"1", None, None))
    # the chunk was read before the move: only the old key has a row
    rows = chunk((b"1", b"v", b"doc1"), (b"2", b"v", b"doc2"))
    assert pass_window(rows, moved, KPOS).new == (b"9", b"v", b"doc1")
    assert rows == chunk((b"2", b"v", b"doc2"))
    # read after the move (and after a new row took the old key): the new key's row is the moved one
    rows = chunk((b"1", b"other", b"another doc"), (b"9", b"v", b"doc1"))
    assert pass_window(rows, moved, KPOS).new == (b"9", b"v", b"doc1")
    assert rows == {}


def test_a_change_without_unchanged_values_and_a_delete_pass_unchanged() -> None:
    rows = chunk((b"1", b"v", b"doc1"), (b"2", b"v", b"doc2"))
    ins = insert(DOCS, b"1", b"v", b"x")
    gone = delete(DOCS, b"2", None, None)
    assert pass_window(rows, ins, KPOS) is ins
    assert pass_window(rows, gone, KPOS) is gone
    assert rows == {}


def test_a_key_outside_the_chunk_keeps_its_marker() -> None:
    rows = chunk((b"1", b"v", b"doc1"))
    out = pass_window(rows, update(DOCS, b"7", b"v", UNCHANGED), KPOS)
    assert out.new == (b"7", b"v", UNCHANGED)
    assert rows == chunk((b"1", b"v", b"doc1"))
