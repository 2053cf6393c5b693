"""Specification of unchanged TOAST values that Delta has no row to keep from (``sink.plan`` steps + ``DeltaSink``).

The pure steps find such rows (``flagged_keys``, ``toast_gaps``) and fill them (``fill_toast``);
the sink end to end on a real Delta table in ``tmp_path``, with a stand-in for the source's
fresh read by key (what ``source.refetch.SourceRows`` does on a real server).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pyarrow as pa

from cdc_replicator.model import UNCHANGED, ChangeBatch, Lsn, TablePosition, TableSchema
from cdc_replicator.sink import ApplyResult
from cdc_replicator.sink.delta import DeltaSink
from cdc_replicator.sink.plan import fill_toast, flagged_keys, toast_gaps
from tests.support.events import insert, txn, update
from tests.unit.test_plan import ORDERS, ORDERS_SCHEMA, batches_of, delta_rows, patch_of, sink_with_table


class SourceStandIn:
    """The source's current rows (``id -> (qty, doc)``, text) and the keys it was asked for."""

    def __init__(self, rows: dict[bytes, tuple[bytes, bytes]]) -> None:
        self.rows = rows
        self.asked: list[list[bytes]] = []

    def read(self, schema: TableSchema, keys: pa.Table, columns: Sequence[str]) -> pa.Table:
        ids = keys.column("id").to_pylist()
        self.asked.append(ids)
        found = [i for i in ids if i in self.rows]
        return pa.table(
            {
                "id": pa.array(found, pa.binary()),
                **{c: pa.array([self.rows[i][1] for i in found], pa.binary()) for c in columns},
            }
        )


def apply(sink: DeltaSink, batch: ChangeBatch) -> ApplyResult | None:
    return sink.apply(batch.tables[ORDERS], batch.position, batch_id=batch.batch_id)


def typed_ids(*ids: int) -> pa.Table:
    return pa.table({"id": pa.array(ids, pa.int64())})


# ---- the pure steps -------------------------------------------------------------------------------


def test_rows_still_marked_unchanged_are_the_ones_to_look_up_in_delta() -> None:
    patch = patch_of(
        ORDERS_SCHEMA,
        txn(100, update(ORDERS, b"1", b"5", UNCHANGED), update(ORDERS, b"2", b"5", b"new")),
        txn(200, insert(ORDERS, b"3", b"1", b"doc"), update(ORDERS, b"3", b"2", UNCHANGED)),  # carried
    )
    keys = flagged_keys(patch)
    assert keys is not None and keys.column("id").to_pylist() == [1]


def test_a_gap_is_a_marked_row_delta_has_no_row_for_or_a_move_from_a_key_delta_has_no_row_at() -> None:
    patch = patch_of(
        ORDERS_SCHEMA,
        txn(
            100,
            update(ORDERS, b"1", b"5", UNCHANGED),
            update(ORDERS, b"2", b"5", UNCHANGED),
            update(ORDERS, b"30", b"5", UNCHANGED, old=(b"3", None, None)),
            update(ORDERS, b"40", b"5", UNCHANGED, old=(b"4", None, None)),
        ),
    )
    present = typed_ids(1)  # Delta has row 1, not row 2
    moved_rows = pa.table({"id": pa.array([3], pa.int64()), "doc": ["doc three"]})  # has 3, not 4
    gaps = toast_gaps(patch, present, moved_rows)
    assert gaps is not None and gaps.column("id").to_pylist() == [b"2", b"40"]
    assert toast_gaps(patch, typed_ids(1, 2), pa.table({"id": pa.array([3, 4], pa.int64())})) is None


def test_filling_takes_the_sources_values_and_leaves_out_the_rows_it_does_not_have() -> None:
    patch = patch_of(
        ORDERS_SCHEMA,
        txn(100, update(ORDERS, b"1", b"5", UNCHANGED), update(ORDERS, b"2", b"6", UNCHANGED)),
        txn(200, update(ORDERS, b"3", b"7", UNCHANGED)),
    )
    gaps = pa.table({"id": pa.array([b"1", b"2"], pa.binary())})
    found = pa.table({"id": pa.array([b"1"], pa.binary()), "doc": pa.array([b"source doc"], pa.binary())})
    filled, left_out = fill_toast(patch, gaps, found)
    assert left_out == 1
    rows = filled.rows
    assert rows.column("id").to_pylist() == [b"1", b"3"]
    assert rows.column("doc").to_pylist() == [b"source doc", None]
    assert rows.column("__unchanged__doc").to_pylist() == [False, True]  # 3 keeps Delta's value


# ---- the sink, end to end ---------------------------------------------------------------------


def loaded(tmp_path: Path, reader: SourceStandIn | None) -> DeltaSink:
    sink = sink_with_table(tmp_path)
    (first,) = batches_of(
        ORDERS_SCHEMA,
        txn(100, *(insert(ORDERS, str(i).encode(), b"1", f"doc {i}".encode()) for i in (1, 2, 3))),
    )
    apply(sink, first)
    return DeltaSink(str(tmp_path), slot="test_slot", toast_reader=reader)


def lose_rows(sink: DeltaSink, predicate: str) -> None:
    from deltalake import DeltaTable

    DeltaTable(sink.uri(ORDERS)).delete(predicate)


def test_a_row_delta_lost_takes_its_unchanged_value_from_the_source_and_a_kept_row_from_delta(
    tmp_path: Path,
) -> None:
    reader = SourceStandIn({b"2": (b"5", b"doc 2 at the source")})
    sink = loaded(tmp_path, reader)
    lose_rows(sink, "id = 2")
    (batch,) = batches_of(
        ORDERS_SCHEMA, txn(200, update(ORDERS, b"1", b"5", UNCHANGED), update(ORDERS, b"2", b"5", UNCHANGED))
    )
    result = apply(sink, batch)
    assert reader.asked == [[b"2"]]  # only the lost row is read
    assert delta_rows(sink) == [
        (1, 5, "doc 1", 200),
        (2, 5, "doc 2 at the source", 200),
        (3, 1, "doc 3", 100),
    ]
    assert result is not None and (result.toast_read, result.toast_unknown) == (1, 0)


def test_a_key_moved_from_a_lost_row_is_read_at_its_new_key(tmp_path: Path) -> None:
    reader = SourceStandIn({b"30": (b"1", b"doc 3 at the source")})
    sink = loaded(tmp_path, reader)
    lose_rows(sink, "id = 3")
    (batch,) = batches_of(
        ORDERS_SCHEMA, txn(200, update(ORDERS, b"30", b"1", UNCHANGED, old=(b"3", None, None)))
    )
    apply(sink, batch)
    assert reader.asked == [[b"30"]]
    assert delta_rows(sink) == [
        (1, 1, "doc 1", 100),
        (2, 1, "doc 2", 100),
        (30, 1, "doc 3 at the source", 200),
    ]


def test_a_value_nobody_can_know_is_left_out_and_counted_never_written_as_null(tmp_path: Path) -> None:
    for reader in (SourceStandIn({}), None):  # the source lost the row too / no source to ask
        root = tmp_path / ("none" if reader is None else "gone")
        sink = loaded(root, reader)
        lose_rows(sink, "id = 2")
        (batch,) = batches_of(ORDERS_SCHEMA, txn(200, update(ORDERS, b"2", b"5", UNCHANGED)))
        result = apply(sink, batch)
        assert result is not None and result.toast_unknown == 1
        assert delta_rows(sink) == [(1, 1, "doc 1", 100), (3, 1, "doc 3", 100)]
        assert sink.position(ORDERS) == TablePosition(Lsn(208))  # the position still moves on


def test_a_text_and_composite_key_finds_exactly_the_lost_row(tmp_path: Path) -> None:
    from deltalake import DeltaTable, write_deltalake

    from cdc_replicator.model import TableId
    from cdc_replicator.sink.plan import target_schema
    from tests.support.events import INT4, TEXT, schema

    notes = TableId("public", "notes")
    notes_schema = schema(notes, ("tenant", INT4), ("name", TEXT), ("doc", TEXT), key=("tenant", "name"))
    sink = DeltaSink(str(tmp_path), slot="test_slot")
    write_deltalake(sink.uri(notes), target_schema(notes_schema, soft_delete=False).empty_table())
    rows = [(b"1", b"a", b"doc 1a"), (b"1", b"b", b"doc 1b"), (b"2", b"a", b"doc 2a")]
    (first,) = batches_of(notes_schema, txn(100, *(insert(notes, *r) for r in rows)))
    sink.apply(first.tables[notes], first.position)
    DeltaTable(sink.uri(notes)).delete("tenant = 1 AND name = 'b'")

    class Source:
        def __init__(self) -> None:
            self.asked: list[object] = []

        def read(self, schema: TableSchema, keys: pa.Table, columns: Sequence[str]) -> pa.Table:
            self.asked.append(keys.to_pylist())
            return keys.append_column("doc", pa.array([b"doc 1b at the source"] * keys.num_rows, pa.binary()))

    source = Source()
    sink = DeltaSink(str(tmp_path), slot="test_slot", toast_reader=source)
    (batch,) = batches_of(notes_schema, txn(200, *(update(notes, r[0], r[1], UNCHANGED) for r in rows)))
    sink.apply(batch.tables[notes], batch.position)
    assert source.asked == [[{"tenant": b"1", "name": b"b"}]]
    got = DeltaTable(sink.uri(notes)).to_pyarrow_table(columns=["tenant", "name", "doc"]).to_pylist()
    assert sorted((r["tenant"], r["name"], r["doc"]) for r in got) == [
        (1, "a", "doc 1a"),
        (1, "b", "doc 1b at the source"),
        (2, "a", "doc 2a"),
    ]
