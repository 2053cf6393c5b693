"""Specification of the Batcher: whole transactions in, ChangeBatches out, one surviving change per key.

Events are built with ``tests.support.events``: ``txn(100, insert(ORDERS, b"1", b"a"))`` is a
transaction whose commit record is at LSN 100 and that ends at ``end_of(100)``.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import pytest

from cdc_replicator.engine.batching import Batcher, BatchLimits
from cdc_replicator.errors import DecodeError
from cdc_replicator.model import (
    UNCHANGED,
    UNCHANGED_PREFIX,
    ChangeBatch,
    Column,
    Lsn,
    Op,
    PartialTxn,
    RelationChanged,
    RowChange,
    TableId,
    TablePatch,
    TablePosition,
    TableSchema,
)
from tests.support.events import (
    INT4,
    INT8,
    TEXT,
    FakeClock,
    begin,
    commit,
    commit_time,
    delete,
    end_of,
    feed,
    insert,
    schema,
    truncate,
    txn,
    update,
)

ORDERS = TableId("public", "orders")
ITEMS = TableId("sales", "items")
# orders(id int8 key, qty int4, doc text): doc is the TOASTed column of these tests
ORDERS_SCHEMA = schema(ORDERS, ("id", INT8), ("qty", INT4), ("doc", TEXT))
# items(order_id, line) composite key, note text
ITEMS_SCHEMA = schema(ITEMS, ("order_id", INT8), ("line", INT4), ("note", TEXT), key=("order_id", "line"))
SCHEMAS = {ORDERS: ORDERS_SCHEMA, ITEMS: ITEMS_SCHEMA}

ROOMY = BatchLimits(max_rows=1_000, max_bytes=1 << 30, max_seconds=60.0)


def batcher(
    limits: BatchLimits = ROOMY,
    *,
    positions: dict[TableId, TablePosition] | None = None,
    start: Lsn = Lsn.ZERO,
    clock: FakeClock | None = None,
) -> Batcher:
    return Batcher(limits, SCHEMAS, positions, start=start, clock=clock or FakeClock())


def only(batches: list[ChangeBatch]) -> ChangeBatch:
    assert len(batches) == 1, f"expected one batch, got {len(batches)}"
    return batches[0]


def flushed(b: Batcher) -> ChangeBatch:
    batch = b.flush()
    assert batch is not None, "flush() closed no batch"
    return batch


def rows(patch: TablePatch, *columns: str) -> list[tuple[Any, ...]]:
    """The patch's rows in order, as tuples of the named columns (default: op and source columns)."""
    names = columns or ("_cdc_op", *patch.schema.column_names)
    data = patch.rows.to_pydict()
    return list(zip(*(data[n] for n in names), strict=True))


# ---- when a batch closes -----------------------------------------------------------------------


def test_a_batch_closes_at_the_commit_that_reaches_max_rows() -> None:
    b = batcher(BatchLimits(max_rows=3, max_bytes=1 << 30, max_seconds=60))

    assert feed(b, txn(100, insert(ORDERS, b"1", b"1", b"a"), insert(ORDERS, b"2", b"1", b"b"))) == []
    batch = only(feed(b, txn(200, insert(ORDERS, b"3", b"1", b"c"), insert(ORDERS, b"4", b"1", b"d"))))

    assert batch.end == end_of(200)
    assert batch.partial is None
    assert batch.transactions == 2
    assert [r[1] for r in rows(batch.tables[ORDERS])] == [b"1", b"2", b"3", b"4"]


def test_a_transaction_that_fits_max_rows_is_not_cut_because_the_batch_already_holds_rows() -> None:
    b = batcher(BatchLimits(max_rows=4, max_bytes=1 << 30, max_seconds=60))
    feed(b, txn(100, *(insert(ORDERS, str(i).encode(), b"1", None) for i in range(3))))

    batches = feed(b, txn(200, *(insert(ORDERS, str(i).encode(), b"1", None) for i in range(10, 13))))

    batch = only(batches)
    assert batch.partial is None, "a 3-change transaction was cut although max_rows is 4"
    assert batch.end == end_of(200)
    assert batch.tables[ORDERS].rows.num_rows == 6


def test_a_batch_closes_at_the_commit_that_reaches_max_bytes() -> None:
    b = batcher(BatchLimits(max_rows=1_000, max_bytes=2_000, max_seconds=60))
    big = b"x" * 900

    assert feed(b, txn(100, insert(ORDERS, b"1", b"1", big))) == []
    batch = only(feed(b, txn(200, insert(ORDERS, b"2", b"1", big), insert(ORDERS, b"3", b"1", big))))

    assert batch.partial is None
    assert batch.end == end_of(200)
    assert batch.tables[ORDERS].rows.num_rows == 3


def test_a_batch_closes_at_the_first_commit_after_max_seconds() -> None:
    clock = FakeClock()
    b = batcher(BatchLimits(max_rows=1_000, max_bytes=1 << 30, max_seconds=5), clock=clock)

    assert feed(b, txn(100, insert(ORDERS, b"1", b"1", None))) == []
    clock.advance(4.9)
    assert feed(b, txn(200, insert(ORDERS, b"2", b"1", None))) == []
    clock.advance(0.1)
    batch = only(feed(b, txn(300, insert(ORDERS, b"3", b"1", None))))

    assert batch.transactions == 3
    assert batch.end == end_of(300)


def test_the_time_limit_follows_the_cost_of_applying_the_last_batch_within_its_bounds() -> None:
    clock = FakeClock()  # (advances are binary fractions: exact in floating point)
    b = batcher(BatchLimits(max_rows=1_000, max_bytes=1 << 30, max_seconds=5), clock=clock)

    b.adapt(0.25)  # cheap merges: a batch closes after 3 x 0.25 s
    assert feed(b, txn(100, insert(ORDERS, b"1", b"1", None))) == []
    clock.advance(0.5)
    assert feed(b, txn(200, insert(ORDERS, b"2", b"1", None))) == []
    clock.advance(0.25)
    assert only(feed(b, txn(300, insert(ORDERS, b"3", b"1", None)))).transactions == 3

    b.adapt(0.0078125)  # never below half a second
    assert feed(b, txn(400, insert(ORDERS, b"4", b"1", None))) == []
    clock.advance(0.25)
    assert feed(b, txn(500, insert(ORDERS, b"5", b"1", None))) == []
    clock.advance(0.25)
    assert only(feed(b, txn(600, insert(ORDERS, b"6", b"1", None)))).transactions == 3

    b.adapt(32.0)  # expensive merges: never above max_seconds
    assert feed(b, txn(700, insert(ORDERS, b"7", b"1", None))) == []
    clock.advance(4.75)
    assert feed(b, txn(800, insert(ORDERS, b"8", b"1", None))) == []
    clock.advance(0.25)
    assert only(feed(b, txn(900, insert(ORDERS, b"9", b"1", None)))).transactions == 3


def test_a_batch_due_on_time_stays_open_while_the_previous_one_is_still_applied() -> None:
    clock = FakeClock()
    b = batcher(BatchLimits(max_rows=4, max_bytes=1 << 30, max_seconds=5), clock=clock)
    merging = [True]
    b.hold_while(lambda: merging[0])
    feed(b, txn(100, insert(ORDERS, b"1", b"1", None)))
    clock.advance(60)

    assert feed(b, txn(200, insert(ORDERS, b"2", b"1", None))) == []  # due, but nothing could merge it
    assert b.poll() is None
    merging[0] = False
    batch = b.poll()  # the previous batch committed: the due batch goes at once

    assert batch is not None and batch.transactions == 2


def test_a_full_batch_closes_even_while_the_previous_one_is_still_applied() -> None:
    b = batcher(BatchLimits(max_rows=2, max_bytes=1 << 30, max_seconds=5))
    b.hold_while(lambda: True)  # memory stays bounded: the loop waits for the merge instead

    assert feed(b, txn(100, insert(ORDERS, b"1", b"1", None))) == []
    batch = only(feed(b, txn(200, insert(ORDERS, b"2", b"1", None))))

    assert batch.tables[ORDERS].rows.num_rows == 2


def test_the_time_limit_never_closes_a_batch_inside_a_transaction() -> None:
    clock = FakeClock()
    b = batcher(BatchLimits(max_rows=1_000, max_bytes=1 << 30, max_seconds=5), clock=clock)
    feed(b, begin(100), insert(ORDERS, b"1", b"1", None))

    clock.advance(60)

    assert b.poll() is None
    assert feed(b, insert(ORDERS, b"2", b"1", None)) == []
    batch = only(feed(b, commit(100)))
    assert batch.tables[ORDERS].rows.num_rows == 2


def test_poll_closes_an_expired_batch_outside_a_transaction() -> None:
    clock = FakeClock()
    b = batcher(BatchLimits(max_rows=1_000, max_bytes=1 << 30, max_seconds=5), clock=clock)
    feed(b, txn(100, insert(ORDERS, b"1", b"1", None)))

    assert b.poll() is None  # not expired yet
    clock.advance(5)
    batch = b.poll()

    assert batch is not None
    assert batch.end == end_of(100)
    assert b.poll() is None  # nothing left


def test_poll_does_not_close_a_batch_while_a_transaction_is_open() -> None:
    clock = FakeClock()
    b = batcher(BatchLimits(max_rows=1_000, max_bytes=1 << 30, max_seconds=5), clock=clock)
    feed(b, txn(100, insert(ORDERS, b"1", b"1", None)), begin(200), insert(ORDERS, b"2", b"1", None))
    clock.advance(10)

    assert b.poll() is None

    batch = only(feed(b, commit(200)))  # the commit sees the expired batch
    assert batch.transactions == 2


def test_flush_closes_the_complete_transactions_and_never_an_open_one() -> None:
    b = batcher()
    assert b.flush() is None  # nothing pending

    feed(b, txn(100, insert(ORDERS, b"1", b"1", None)), begin(200), insert(ORDERS, b"2", b"1", None))
    assert b.flush() is None  # a transaction is open

    feed(b, commit(200))
    batch = flushed(b)
    assert batch.end == end_of(200)
    assert [r[1] for r in rows(batch.tables[ORDERS])] == [b"1", b"2"]


def test_a_transaction_without_changes_for_our_tables_still_advances_the_batch_end() -> None:
    b = batcher()
    feed(b, txn(100))

    batch = flushed(b)

    assert batch.tables == {}
    assert batch.end == end_of(100)
    assert batch.transactions == 1


def test_batches_are_numbered_from_one() -> None:
    b = batcher()
    feed(b, txn(100, insert(ORDERS, b"1", b"1", None)))
    first = flushed(b)
    feed(b, txn(200, insert(ORDERS, b"2", b"1", None)))
    second = flushed(b)

    assert (first.batch_id, second.batch_id) == (1, 2)
    assert second.last_commit_time == commit_time(200)


# ---- state properties --------------------------------------------------------------------------


def test_idle_and_in_transaction_follow_the_stream() -> None:
    b = batcher()
    assert b.idle and not b.in_transaction

    feed(b, begin(100))
    assert b.in_transaction and not b.idle

    feed(b, insert(ORDERS, b"1", b"1", None), commit(100))
    assert not b.in_transaction
    assert not b.idle, "a complete transaction waits to be applied"

    flushed(b)
    assert b.idle


def test_an_empty_transaction_waits_to_be_confirmed_so_the_batcher_is_not_idle() -> None:
    b = batcher()
    feed(b, txn(100))

    assert not b.idle
    flushed(b)
    assert b.idle


# ---- collapsing to the last change per key -----------------------------------------------------


def test_the_last_change_of_a_key_wins_in_stream_order() -> None:
    b = batcher()
    feed(
        b,
        txn(
            100,
            insert(ORDERS, b"1", b"1", b"a"),
            insert(ORDERS, b"2", b"1", b"b"),
            update(ORDERS, b"1", b"2", b"a"),
            update(ORDERS, b"1", b"3", b"a"),
        ),
    )

    patch = flushed(b).tables[ORDERS]

    # one row per key, ordered by each key's last change in the stream
    assert rows(patch) == [("c", b"2", b"1", b"b"), ("u", b"1", b"3", b"a")]
    assert patch.changes == 4


def test_the_last_change_of_a_key_wins_across_transactions_whatever_their_commit_lsn() -> None:
    # "last" is arrival order: the Batcher never compares LSNs to pick the survivor.
    b = batcher()
    feed(
        b,
        txn(300, insert(ORDERS, b"1", b"1", b"first")),
        txn(200, update(ORDERS, b"1", b"2", b"second")),
    )

    patch = flushed(b).tables[ORDERS]

    assert rows(patch, "qty", "doc", "_cdc_lsn") == [(b"2", b"second", 200)]


def test_insert_then_update_then_delete_of_one_key_leaves_a_delete() -> None:
    b = batcher()
    feed(
        b,
        txn(100, insert(ORDERS, b"1", b"1", b"a"), update(ORDERS, b"1", b"2", b"b")),
        txn(200, delete(ORDERS, b"1", None, None)),
    )

    patch = flushed(b).tables[ORDERS]

    assert rows(patch, "_cdc_op", "id", "qty", "doc", "_cdc_lsn") == [("d", b"1", None, None, 200)]


def test_a_delete_keeps_only_the_key_even_under_replica_identity_full() -> None:
    b = batcher()
    feed(b, txn(100, delete(ORDERS, b"1", b"5", b"old doc")))

    assert rows(flushed(b).tables[ORDERS]) == [("d", b"1", None, None)]


def test_a_delete_then_insert_of_one_key_leaves_the_insert() -> None:
    b = batcher()
    feed(b, txn(100, delete(ORDERS, b"1", None, None), insert(ORDERS, b"1", b"9", b"new")))

    assert rows(flushed(b).tables[ORDERS]) == [("c", b"1", b"9", b"new")]


def test_composite_keys_collapse_on_every_key_column() -> None:
    b = batcher()
    feed(
        b,
        txn(
            100,
            insert(ITEMS, b"1", b"1", b"a"),
            insert(ITEMS, b"1", b"2", b"b"),
            update(ITEMS, b"1", b"1", b"a2"),
        ),
    )

    assert rows(flushed(b).tables[ITEMS]) == [("c", b"1", b"2", b"b"), ("u", b"1", b"1", b"a2")]


def test_update_changing_the_key_deletes_the_old_key() -> None:
    b = batcher()
    feed(b, txn(100, update(ORDERS, b"2", b"1", b"a", old=(b"1", None, None))))

    patch = flushed(b).tables[ORDERS]

    assert rows(patch) == [("d", b"1", None, None), ("u", b"2", b"1", b"a")]
    assert rows(patch, "_cdc_lsn") == [(100,), (100,)]


def test_update_changing_the_key_back_and_forth_leaves_the_row_at_its_last_key() -> None:
    b = batcher()
    feed(
        b,
        txn(
            100,
            insert(ORDERS, b"1", b"1", b"a"),
            update(ORDERS, b"2", b"1", b"a", old=(b"1", None, None)),
            update(ORDERS, b"3", b"1", b"a", old=(b"2", None, None)),
        ),
    )

    patch = flushed(b).tables[ORDERS]

    assert sorted(rows(patch, "id", "_cdc_op")) == [(b"1", "d"), (b"2", "d"), (b"3", "u")]


def test_an_update_with_an_old_tuple_but_the_same_key_is_a_plain_update() -> None:
    # REPLICA IDENTITY FULL sends the whole old row with every update
    b = batcher()
    feed(b, txn(100, update(ORDERS, b"1", b"2", b"b", old=(b"1", b"1", b"a"))))

    assert rows(flushed(b).tables[ORDERS]) == [("u", b"1", b"2", b"b")]


# ---- unchanged TOAST ---------------------------------------------------------------------------


def test_an_unchanged_toast_column_takes_the_value_of_an_earlier_change_of_the_same_key() -> None:
    b = batcher()
    feed(
        b,
        txn(100, insert(ORDERS, b"1", b"1", b"long document")),
        txn(200, update(ORDERS, b"1", b"2", UNCHANGED)),
    )

    patch = flushed(b).tables[ORDERS]

    assert rows(patch) == [("u", b"1", b"2", b"long document")]
    assert patch.unchanged_columns == ()
    assert not any(n.startswith(UNCHANGED_PREFIX) for n in patch.rows.column_names)


def test_an_unchanged_toast_column_carries_forward_through_several_updates() -> None:
    b = batcher()
    feed(
        b,
        txn(
            100,
            insert(ORDERS, b"1", b"1", b"long document"),
            update(ORDERS, b"1", b"2", UNCHANGED),
            update(ORDERS, b"1", b"3", UNCHANGED),
        ),
    )

    assert rows(flushed(b).tables[ORDERS]) == [("u", b"1", b"3", b"long document")]


def test_an_unchanged_toast_column_without_an_earlier_change_stays_flagged_with_a_null_value() -> None:
    b = batcher()
    feed(
        b,
        txn(
            100,
            update(ORDERS, b"1", b"2", UNCHANGED),
            update(ORDERS, b"2", b"5", b"new document"),
        ),
    )

    patch = flushed(b).tables[ORDERS]

    assert patch.unchanged_columns == ("doc",)
    flag = UNCHANGED_PREFIX + "doc"
    assert patch.rows.schema.field(flag).type == pa.bool_()
    assert rows(patch, "id", "doc", flag) == [(b"1", None, True), (b"2", b"new document", False)]


def test_an_update_of_a_flagged_row_keeps_the_flag_until_a_value_arrives() -> None:
    b = batcher()
    feed(
        b,
        txn(100, update(ORDERS, b"1", b"2", UNCHANGED)),
        txn(200, update(ORDERS, b"1", b"3", UNCHANGED)),
    )
    still_flagged = flushed(b).tables[ORDERS]
    feed(
        b,
        txn(300, update(ORDERS, b"1", b"2", UNCHANGED)),
        txn(400, update(ORDERS, b"1", b"3", b"set")),
    )
    valued = flushed(b).tables[ORDERS]

    assert rows(still_flagged, "qty", "doc", UNCHANGED_PREFIX + "doc") == [(b"3", None, True)]
    assert rows(valued, "qty", "doc") == [(b"3", b"set")]
    assert valued.unchanged_columns == ()


def test_an_explicit_null_is_a_value_not_an_unchanged_marker() -> None:
    b = batcher()
    feed(b, txn(100, insert(ORDERS, b"1", b"1", b"doc"), update(ORDERS, b"1", b"2", None)))

    patch = flushed(b).tables[ORDERS]

    assert rows(patch) == [("u", b"1", b"2", None)]
    assert patch.unchanged_columns == ()


def test_an_update_changing_the_key_carries_unchanged_toast_values_from_the_old_key() -> None:
    # PostgreSQL keeps the TOAST pointer when the key moves, so pgoutput sends the column as unchanged.
    b = batcher()
    feed(
        b,
        txn(100, insert(ORDERS, b"1", b"1", b"long document")),
        txn(200, update(ORDERS, b"2", b"1", UNCHANGED, old=(b"1", None, None))),
    )

    patch = flushed(b).tables[ORDERS]

    assert rows(patch) == [("d", b"1", None, None), ("u", b"2", b"1", b"long document")]
    assert patch.unchanged_columns == ()


# ---- TRUNCATE ----------------------------------------------------------------------------------


def test_truncate_drops_the_earlier_rows_of_that_table_only() -> None:
    b = batcher()
    feed(
        b,
        txn(100, insert(ORDERS, b"1", b"1", None), insert(ITEMS, b"1", b"1", b"n")),
        txn(200, truncate(ORDERS)),
    )

    batch = flushed(b)

    assert batch.tables[ORDERS].truncate is True
    assert batch.tables[ORDERS].rows.num_rows == 0
    assert batch.tables[ITEMS].truncate is False
    assert rows(batch.tables[ITEMS]) == [("c", b"1", b"1", b"n")]


def test_changes_after_a_truncate_in_the_same_batch_survive() -> None:
    b = batcher()
    feed(
        b,
        txn(100, insert(ORDERS, b"1", b"1", None), insert(ORDERS, b"2", b"1", None)),
        txn(200, truncate(ORDERS, ITEMS), insert(ORDERS, b"2", b"7", b"after")),
        txn(300, insert(ORDERS, b"3", b"1", None)),
    )

    batch = flushed(b)

    orders = batch.tables[ORDERS]
    assert orders.truncate is True
    assert rows(orders) == [("c", b"2", b"7", b"after"), ("c", b"3", b"1", None)]
    assert batch.tables[ITEMS].truncate is True
    assert batch.tables[ITEMS].rows.num_rows == 0


def test_a_truncate_does_not_let_unchanged_toast_carry_values_from_before_it() -> None:
    b = batcher()
    feed(
        b,
        txn(100, insert(ORDERS, b"1", b"1", b"before")),
        txn(200, truncate(ORDERS)),
        txn(300, update(ORDERS, b"1", b"2", UNCHANGED)),
    )

    patch = flushed(b).tables[ORDERS]

    assert rows(patch, "id", "doc", UNCHANGED_PREFIX + "doc") == [(b"1", None, True)]


# ---- _cdc_* columns ----------------------------------------------------------------------------


def test_every_row_carries_its_transactions_commit_lsn_time_and_op() -> None:
    b = batcher()
    feed(
        b,
        txn(100, insert(ORDERS, b"1", b"1", None), insert(ORDERS, b"2", b"1", None), end_lsn=150),
        txn(0x1_0000_0200, update(ORDERS, b"2", b"3", None), delete(ORDERS, b"3", None, None)),
    )

    patch = flushed(b).tables[ORDERS]

    assert rows(patch, "id", "_cdc_lsn", "_cdc_op", "_cdc_committed_at") == [
        (b"1", 100, Op.INSERT.value, commit_time(100)),
        (b"2", 0x1_0000_0200, Op.UPDATE.value, commit_time(0x1_0000_0200)),
        (b"3", 0x1_0000_0200, Op.DELETE.value, commit_time(0x1_0000_0200)),
    ]


def test_the_patch_columns_are_binary_text_then_the_metadata_columns() -> None:
    b = batcher()
    feed(b, txn(100, update(ORDERS, b"1", b"2", UNCHANGED)))

    schema_ = flushed(b).tables[ORDERS].rows.schema

    assert [(f.name, f.type) for f in schema_] == [
        ("id", pa.binary()),
        ("qty", pa.binary()),
        ("doc", pa.binary()),
        ("_cdc_lsn", pa.int64()),
        ("_cdc_op", pa.string()),
        ("_cdc_committed_at", pa.timestamp("us", tz="UTC")),
        ("__unchanged__doc", pa.bool_()),
    ]


# ---- multi-table transactions ------------------------------------------------------------------


def test_a_transaction_touching_two_tables_yields_one_patch_per_table() -> None:
    b = batcher()
    feed(
        b,
        txn(
            100,
            insert(ORDERS, b"1", b"1", None),
            insert(ITEMS, b"1", b"1", b"a"),
            insert(ITEMS, b"1", b"2", b"b"),
            update(ORDERS, b"1", b"2", None),
        ),
    )

    batch = flushed(b)

    assert set(batch.tables) == {ORDERS, ITEMS}
    assert batch.tables[ORDERS].schema == ORDERS_SCHEMA
    assert (batch.tables[ORDERS].changes, batch.tables[ITEMS].changes) == (2, 2)
    assert rows(batch.tables[ORDERS]) == [("u", b"1", b"2", None)]
    assert rows(batch.tables[ITEMS], "order_id", "line") == [(b"1", b"1"), (b"1", b"2")]
    assert batch.position == TablePosition(end_of(100))


def test_a_table_untouched_by_the_batch_gets_no_patch() -> None:
    b = batcher()
    feed(b, txn(100, insert(ITEMS, b"1", b"1", b"a")))

    assert set(flushed(b).tables) == {ITEMS}


# ---- skipping what a table already holds ------------------------------------------------------


def test_changes_a_table_already_holds_are_skipped_for_that_table_only() -> None:
    positions = {ORDERS: TablePosition(end_of(200))}
    b = batcher(positions=positions)
    feed(
        b,
        txn(100, insert(ORDERS, b"1", b"1", None), insert(ITEMS, b"1", b"1", b"a")),
        txn(200, insert(ORDERS, b"2", b"1", None), insert(ITEMS, b"2", b"1", b"b")),
        txn(300, insert(ORDERS, b"3", b"1", None), insert(ITEMS, b"3", b"1", b"c")),
    )

    batch = flushed(b)

    assert [r[1] for r in rows(batch.tables[ORDERS])] == [b"3"]
    assert [r[1] for r in rows(batch.tables[ITEMS])] == [b"1", b"2", b"3"]
    assert batch.end == end_of(300)


def test_a_truncate_a_table_already_holds_is_skipped() -> None:
    b = batcher(positions={ORDERS: TablePosition(end_of(200))})
    feed(b, txn(100, truncate(ORDERS)), txn(300, insert(ORDERS, b"3", b"1", None)))

    patch = flushed(b).tables[ORDERS]

    assert patch.truncate is False
    assert patch.rows.num_rows == 1


def test_a_transaction_committed_at_the_tables_position_is_not_held() -> None:
    # the position is the END of the last applied transaction; a commit record at that LSN is newer
    b = batcher(positions={ORDERS: TablePosition(Lsn(200))})
    feed(b, txn(200, insert(ORDERS, b"1", b"1", None)))

    assert flushed(b).tables[ORDERS].rows.num_rows == 1


def test_changes_of_a_partially_held_transaction_are_skipped_up_to_its_seq() -> None:
    positions = {ORDERS: TablePosition(end_of(100), PartialTxn(Lsn(200), 2))}
    b = batcher(positions=positions)
    feed(
        b,
        txn(
            200,
            insert(ORDERS, b"1", b"1", None),  # seq 1: held
            insert(ITEMS, b"1", b"1", b"a"),  # seq 2: ITEMS has no position, kept
            insert(ORDERS, b"3", b"1", None),  # seq 3: not held
            truncate(ORDERS),  # seq 4: not held
            insert(ORDERS, b"5", b"1", None),  # seq 5
        ),
    )

    batch = flushed(b)

    assert batch.tables[ORDERS].truncate is True
    assert [r[1] for r in rows(batch.tables[ORDERS])] == [b"5"]
    assert [r[1] for r in rows(batch.tables[ITEMS])] == [b"1"]


def test_a_partial_position_of_another_transaction_skips_nothing_newer() -> None:
    positions = {ORDERS: TablePosition(end_of(100), PartialTxn(Lsn(200), 5))}
    b = batcher(positions=positions)
    feed(b, txn(300, insert(ORDERS, b"1", b"1", None)))

    assert flushed(b).tables[ORDERS].rows.num_rows == 1


# ---- a transaction larger than max_rows --------------------------------------------------------


def big_txn(commit_lsn: int, n: int) -> list[Any]:
    return txn(commit_lsn, *(insert(ORDERS, str(i).encode(), b"1", None) for i in range(1, n + 1)))


def test_a_transaction_larger_than_max_rows_is_cut_into_partial_batches() -> None:
    b = batcher(BatchLimits(max_rows=3, max_bytes=1 << 30, max_seconds=60), start=Lsn(50))

    cuts = feed(b, big_txn(200, 7))
    last = flushed(b)

    assert [c.partial for c in cuts] == [PartialTxn(Lsn(200), 3), PartialTxn(Lsn(200), 6)]
    assert [c.end for c in cuts] == [Lsn(50), Lsn(50)], "no complete transaction yet: the Batcher's start"
    assert [[r[1] for r in rows(c.tables[ORDERS])] for c in cuts] == [[b"1", b"2", b"3"], [b"4", b"5", b"6"]]
    assert [c.transactions for c in cuts] == [0, 0]
    assert last.partial is None
    assert last.end == end_of(200)
    assert last.transactions == 1
    assert [r[1] for r in rows(last.tables[ORDERS])] == [b"7"]


def test_a_cut_batch_ends_at_the_last_complete_transaction_before_it() -> None:
    b = batcher(BatchLimits(max_rows=3, max_bytes=1 << 30, max_seconds=60), start=Lsn(50))
    feed(b, txn(100, insert(ITEMS, b"1", b"1", b"a")))

    cuts = feed(b, big_txn(200, 4)[:-1])  # the Commit has not arrived yet

    cut = only(cuts)
    assert cut.end == end_of(100)
    assert cut.partial == PartialTxn(Lsn(200), 3)
    assert cut.position == TablePosition(end_of(100), PartialTxn(Lsn(200), 3))
    assert cut.transactions == 1
    assert set(cut.tables) == {ITEMS, ORDERS}
    assert b.in_transaction and not b.idle


def test_a_transaction_larger_than_max_bytes_is_cut_too() -> None:
    b = batcher(BatchLimits(max_rows=1_000, max_bytes=2_000, max_seconds=60))
    big = b"x" * 900

    cuts = feed(b, txn(200, *(insert(ORDERS, str(i).encode(), b"1", big) for i in range(1, 6))))

    assert [c.partial for c in cuts] == [PartialTxn(Lsn(200), 3)]
    assert flushed(b).tables[ORDERS].rows.num_rows == 2


def test_replaying_a_cut_transaction_yields_exactly_the_changes_not_yet_held() -> None:
    limits = BatchLimits(max_rows=3, max_bytes=1 << 30, max_seconds=60)
    first_run = batcher(limits, start=Lsn(50))
    cuts = feed(first_run, big_txn(200, 7))
    held = cuts[0].position  # the first chunk committed, then the process died

    replay = batcher(limits, positions={ORDERS: held}, start=Lsn(50))
    again = feed(replay, big_txn(200, 7))
    rest = flushed(replay)

    assert [c.partial for c in again] == [PartialTxn(Lsn(200), 6)]
    assert [r[1] for r in rows(again[0].tables[ORDERS])] == [b"4", b"5", b"6"]
    assert [r[1] for r in rows(rest.tables[ORDERS])] == [b"7"]
    assert rest.end == end_of(200)


def test_replaying_a_cut_transaction_across_tables_skips_by_seq_per_table() -> None:
    limits = BatchLimits(max_rows=2, max_bytes=1 << 30, max_seconds=60)
    changes = [
        insert(ORDERS, b"1", b"1", None),
        insert(ITEMS, b"1", b"1", b"a"),
        insert(ORDERS, b"2", b"1", None),
        insert(ITEMS, b"1", b"2", b"b"),
        insert(ORDERS, b"3", b"1", None),
    ]
    first = feed(batcher(limits), txn(200, *changes))
    assert [c.partial for c in first] == [PartialTxn(Lsn(200), 2), PartialTxn(Lsn(200), 4)]

    # ORDERS committed the first two chunks, ITEMS only the first
    positions = {ORDERS: first[1].position, ITEMS: first[0].position}
    replay = batcher(limits, positions=positions)
    again = feed(replay, txn(200, *changes))
    rest = flushed(replay)

    seen = [(t, r[1:]) for batch in [*again, rest] for t, p in batch.tables.items() for r in rows(p)]
    assert seen == [(ITEMS, (b"1", b"2", b"b")), (ORDERS, (b"3", b"1", None))]


# ---- schemas and protocol errors ---------------------------------------------------------------


def test_a_relation_message_registers_a_table_the_batcher_did_not_know() -> None:
    other = TableId("public", "other")
    b = Batcher(ROOMY, {}, clock=FakeClock())
    other_schema = schema(other, ("id", INT8))
    b.add(RelationChanged(16400, other_schema))
    feed(b, txn(100, insert(other, b"1")))

    assert b.schema(other) == other_schema
    assert rows(flushed(b).tables[other]) == [("c", b"1")]


def test_a_column_change_closes_the_rows_buffered_in_the_old_layout_into_their_own_batch() -> None:
    b = batcher()
    feed(b, txn(100, insert(ORDERS, b"1", b"1", None)))
    wider = TableSchema(ORDERS, (*ORDERS_SCHEMA.columns, Column("extra", TEXT)))

    batch = only(feed(b, begin(200), RelationChanged(16384, wider)))
    assert batch.tables[ORDERS].schema == ORDERS_SCHEMA and rows(batch.tables[ORDERS], "id") == [(b"1",)]
    assert batch.end == end_of(100) and batch.partial == PartialTxn(Lsn(200), 0)
    feed(b, insert(ORDERS, b"2", b"1", None, b"x"), commit(200))
    after = flushed(b)
    assert after.tables[ORDERS].schema == wider and rows(after.tables[ORDERS], "id", "extra") == [
        (b"2", b"x")
    ]


def test_a_column_change_between_transactions_closes_the_batch_at_the_last_commit() -> None:
    b = batcher()
    feed(b, txn(100, insert(ORDERS, b"1", b"1", None)))
    wider = TableSchema(ORDERS, (*ORDERS_SCHEMA.columns, Column("extra", TEXT)))

    batch = only(feed(b, RelationChanged(16384, wider)))
    assert batch.end == end_of(100) and batch.partial is None


def test_a_relation_message_that_changes_nothing_or_finds_no_rows_closes_nothing() -> None:
    b = batcher()
    feed(b, txn(100, insert(ORDERS, b"1", b"1", None)))
    assert feed(b, RelationChanged(16384, ORDERS_SCHEMA)) == []
    other = TableSchema(ITEMS, (*ITEMS_SCHEMA.columns, Column("extra", TEXT)))
    assert feed(b, RelationChanged(16385, other)) == []


def test_a_change_for_a_table_without_a_schema_is_a_decode_error() -> None:
    b = batcher()
    feed(b, begin(100))

    with pytest.raises(DecodeError, match="public.unknown"):
        b.add(insert(TableId("public", "unknown"), b"1"))


def test_a_commit_without_begin_is_a_decode_error() -> None:
    with pytest.raises(DecodeError, match="Commit outside a transaction"):
        batcher().add(commit(100))


def test_a_change_without_begin_is_a_decode_error() -> None:
    with pytest.raises(DecodeError, match="outside a transaction"):
        batcher().add(insert(ORDERS, b"1", b"1", None))


def test_a_truncate_without_begin_is_a_decode_error() -> None:
    with pytest.raises(DecodeError, match="Truncate outside a transaction"):
        batcher().add(truncate(ORDERS))


def test_a_begin_inside_a_transaction_is_a_decode_error() -> None:
    b = batcher()
    b.add(begin(100, xid=7))

    with pytest.raises(DecodeError, match="inside the open xid 7"):
        b.add(begin(200, xid=8))


def test_a_commit_that_does_not_match_its_begin_is_a_decode_error() -> None:
    b = batcher()
    b.add(begin(100))

    with pytest.raises(DecodeError, match="does not match Begin"):
        b.add(commit(200))


@pytest.mark.parametrize(
    "change",
    [
        insert(ORDERS, b"1", b"1"),
        insert(ORDERS, b"1", b"1", None, None),
        update(ORDERS, b"1", b"1"),
        update(ORDERS, b"2", b"1", None, old=(b"1",)),
        delete(ORDERS, b"1"),
        delete(ORDERS, b"1", None, None, None),
    ],
    ids=["insert-short", "insert-long", "update-short", "update-old-short", "delete-short", "delete-long"],
)
def test_a_row_with_the_wrong_column_count_is_a_decode_error(change: Any) -> None:
    b = batcher()
    b.add(begin(100))

    with pytest.raises(DecodeError, match="public.orders"):
        b.add(change)


def test_a_delete_without_an_old_key_is_a_decode_error() -> None:
    b = batcher()
    b.add(begin(100))

    with pytest.raises(DecodeError, match="without an old key"):
        b.add(RowChange(ORDERS, Op.DELETE, None, None))


def test_a_moved_row_updated_again_in_the_batch_still_takes_unchanged_values_from_its_old_key() -> None:
    from cdc_replicator.model import MOVED_PREFIX
    from tests.support.events import INT8, TEXT

    t = TableId("public", "moves")
    s = schema(t, ("id", INT8), ("big", TEXT), ("v", INT8))
    b = Batcher(BatchLimits(), {}, {}, clock=FakeClock())
    b.add(RelationChanged(1, s))
    feed(
        b,
        txn(
            100,
            update(t, b"2", UNCHANGED, b"5", old=(b"1", None, None)),  # k1 → k2, big unchanged
            update(t, b"2", UNCHANGED, b"6"),  # k2 updated, big still unchanged
            update(t, b"3", UNCHANGED, b"7", old=(b"2", None, None)),  # k2 → k3
        ),
    )
    batch = b.flush()
    assert batch is not None
    rows = batch.tables[t].rows.to_pylist()
    [final] = [r for r in rows if r["_cdc_op"] != "d"]
    assert final["id"] == b"3" and final["__unchanged__big"] is True
    # the sink must take big from k1's row in Delta: the only row that holds it
    assert final[MOVED_PREFIX + "id"] == b"1"
