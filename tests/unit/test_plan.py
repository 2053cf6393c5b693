"""Specification of merge planning (target schema, typed columns, sequenced MERGE clauses).

The last part applies plans to a real Delta table in ``tmp_path`` with ``DeltaSink`` (no mocks):
rows, the sequenced ``_cdc_lsn`` rule, replay as a no-op, and positions read back from the log.
Patches are built the way the daemon builds them, by feeding transactions to a Batcher.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from deltalake import DeltaTable, write_deltalake

from cdc_replicator.engine.batching import Batcher, BatchLimits
from cdc_replicator.model import (
    UNCHANGED,
    ChangeBatch,
    Lsn,
    PartialTxn,
    TableId,
    TablePatch,
    TablePosition,
    TableSchema,
)
from cdc_replicator.sink.delta import DeltaSink
from cdc_replicator.sink.plan import META_COLUMNS, plan_merge, quote, target_schema, typed_columns
from tests.support.events import (
    INT4,
    INT8,
    TEXT,
    FakeClock,
    commit_time,
    delete,
    end_of,
    insert,
    schema,
    truncate,
    txn,
    update,
)

UUID, DATE, TIMESTAMPTZ, NUMERIC = 2950, 1082, 1184, 1700
TS_UTC = pa.timestamp("us", tz="UTC")

ORDERS = TableId("public", "orders")
# orders(id int8 key, qty int4, doc text)
ORDERS_SCHEMA = schema(ORDERS, ("id", INT8), ("qty", INT4), ("doc", TEXT))

HARD_DELETE = "s._cdc_op = 'd' AND s._cdc_lsn >= t._cdc_lsn"
NEWER_UPSERT = "s._cdc_op <> 'd' AND s._cdc_lsn >= t._cdc_lsn"


def patch_of(table_schema: TableSchema, *events: Any, max_rows: int = 1_000) -> TablePatch:
    """Feed transactions to a fresh Batcher and return the table's patch of the flushed batch."""
    batch = batches_of(table_schema, *events, max_rows=max_rows)[-1]
    return batch.tables[table_schema.table]


def batches_of(table_schema: TableSchema, *events: Any, max_rows: int = 1_000) -> list[ChangeBatch]:
    b = Batcher(
        BatchLimits(max_rows=max_rows, max_bytes=1 << 30, max_seconds=60),
        {table_schema.table: table_schema},
        clock=FakeClock(),
    )
    out = []
    for ev in (e for group in events for e in group):
        batch = b.add(ev)
        if batch is not None:
            out.append(batch)
    last = b.flush()
    if last is not None:
        out.append(last)
    return out


# ---- target schema and typed columns -----------------------------------------------------------


def test_the_target_schema_is_the_typed_source_columns_then_the_metadata_columns() -> None:
    target = target_schema(ORDERS_SCHEMA, soft_delete=False)

    assert [(f.name, f.type) for f in target] == [
        ("id", pa.int64()),
        ("qty", pa.int32()),
        ("doc", pa.string()),
        ("_cdc_lsn", pa.int64()),
        ("_cdc_op", pa.string()),
        ("_cdc_committed_at", TS_UTC),
    ]
    assert all(f.nullable for f in target)
    assert tuple(target.names[-3:]) == META_COLUMNS


def test_soft_delete_adds_a_deleted_flag_to_the_target_schema() -> None:
    target = target_schema(ORDERS_SCHEMA, soft_delete=True)

    assert target.names[-1] == "_cdc_deleted"
    assert target.field("_cdc_deleted").type == pa.bool_()


def test_typed_columns_cast_the_postgresql_text_of_each_source_column() -> None:
    patch = patch_of(
        ORDERS_SCHEMA, txn(100, insert(ORDERS, b"7", b"-3", b"it's"), insert(ORDERS, b"8", None, None))
    )

    cols = typed_columns(ORDERS_SCHEMA, patch.rows)

    assert [c.type for c in cols] == [pa.int64(), pa.int32(), pa.string()]
    assert [c.to_pylist() for c in cols] == [[7, 8], [-3, None], ["it's", None]]


def test_the_merge_source_holds_typed_columns_metadata_and_unchanged_flags() -> None:
    patch = patch_of(ORDERS_SCHEMA, txn(100, update(ORDERS, b"1", b"2", UNCHANGED)))

    plan = plan_merge(patch, soft_delete=False)

    assert [(f.name, f.type) for f in plan.source.schema] == [
        ("id", pa.int64()),
        ("qty", pa.int32()),
        ("doc", pa.string()),
        ("_cdc_lsn", pa.int64()),
        ("_cdc_op", pa.string()),
        ("_cdc_committed_at", TS_UTC),
        ("__unchanged__doc", pa.bool_()),
    ]
    assert plan.source.to_pylist() == [
        {
            "id": 1,
            "qty": 2,
            "doc": None,
            "_cdc_lsn": 100,
            "_cdc_op": "u",
            "_cdc_committed_at": commit_time(100),
            "__unchanged__doc": True,
        }
    ]


# ---- the merge predicate -----------------------------------------------------------------------


def test_the_predicate_joins_the_key_and_adds_a_target_range_for_an_integer_key() -> None:
    patch = patch_of(
        ORDERS_SCHEMA, txn(100, insert(ORDERS, b"42", b"1", None), delete(ORDERS, b"-7", None, None))
    )

    plan = plan_merge(patch, soft_delete=False)

    assert plan.predicate == 't."id" = s."id" AND t."id" >= -7 AND t."id" <= 42'


def test_the_predicate_joins_every_key_column_and_ranges_on_the_first_only() -> None:
    lines = TableId("sales", "order lines")
    lines_schema = schema(lines, ("order_id", INT8), ("line", INT4), ("note", TEXT), key=("order_id", "line"))
    patch = patch_of(lines_schema, txn(100, insert(lines, b"5", b"1", None), insert(lines, b"9", b"3", None)))

    plan = plan_merge(patch, soft_delete=False)

    assert plan.predicate == (
        't."order_id" = s."order_id" AND t."line" = s."line" AND t."order_id" >= 5 AND t."order_id" <= 9'
    )


def test_a_string_key_gets_a_quoted_range_with_quotes_escaped() -> None:
    codes = TableId("public", "codes")
    codes_schema = schema(codes, ("code", TEXT), ("qty", INT4), key=("code",))
    patch = patch_of(codes_schema, txn(100, insert(codes, b"it's", b"1"), insert(codes, b"a'b", b"1")))

    plan = plan_merge(patch, soft_delete=False)

    assert plan.predicate == """t."code" = s."code" AND t."code" >= 'a''b' AND t."code" <= 'it''s'"""


@pytest.mark.parametrize(
    ("oid", "value"),
    [(DATE, b"2024-05-01"), (TIMESTAMPTZ, b"2024-05-01 12:00:00+00")],
    ids=["date", "timestamptz"],
)
def test_a_key_of_another_type_gets_no_range(oid: int, value: bytes) -> None:
    events = TableId("public", "events")
    events_schema = schema(events, ("at", oid), ("qty", INT4), key=("at",))
    patch = patch_of(events_schema, txn(100, insert(events, value, b"1")))

    plan = plan_merge(patch, soft_delete=False)

    assert plan.predicate == 't."at" = s."at"'


def test_a_patch_with_no_rows_gets_no_range() -> None:
    patch = patch_of(ORDERS_SCHEMA, txn(100, insert(ORDERS, b"1", b"1", None)), txn(200, truncate(ORDERS)))

    plan = plan_merge(patch, soft_delete=False)

    assert patch.truncate and patch.rows.num_rows == 0
    assert plan.predicate == 't."id" = s."id"'


def test_column_names_are_quoted_for_datafusion() -> None:
    assert quote("id") == '"id"'
    assert quote('we"ird Name') == '"we""ird Name"'


# ---- clauses -----------------------------------------------------------------------------------


def test_updates_set_every_non_key_column_and_keep_the_target_value_only_for_unchanged_columns() -> None:
    patch = patch_of(ORDERS_SCHEMA, txn(100, update(ORDERS, b"1", b"2", UNCHANGED)))

    plan = plan_merge(patch, soft_delete=False)

    assert plan.updates == {
        '"qty"': 's."qty"',
        '"doc"': 'CASE WHEN s."__unchanged__doc" THEN t."doc" ELSE s."doc" END',
        '"_cdc_lsn"': 's."_cdc_lsn"',
        '"_cdc_op"': 's."_cdc_op"',
        '"_cdc_committed_at"': 's."_cdc_committed_at"',
    }
    assert plan.update_predicate == NEWER_UPSERT


def test_without_unchanged_columns_no_update_uses_case() -> None:
    patch = patch_of(ORDERS_SCHEMA, txn(100, update(ORDERS, b"1", b"2", b"doc")))

    plan = plan_merge(patch, soft_delete=False)

    assert not any("CASE" in v for v in plan.updates.values())


def test_inserts_write_every_target_column_from_the_source_except_for_deletes() -> None:
    plan = plan_merge(patch_of(ORDERS_SCHEMA, txn(100, insert(ORDERS, b"1", b"1", None))), soft_delete=False)

    assert plan.inserts == {f'"{n}"': f's."{n}"' for n in ("id", "qty", "doc", *META_COLUMNS)}
    assert plan.insert_predicate == "s._cdc_op <> 'd'"


def test_hard_delete_removes_a_matched_row_unless_the_row_is_newer() -> None:
    plan = plan_merge(patch_of(ORDERS_SCHEMA, txn(100, delete(ORDERS, b"1", None, None))), soft_delete=False)

    assert plan.delete_predicate == HARD_DELETE
    assert plan.soft_delete_updates is None
    assert "_cdc_deleted" not in plan.source.column_names


def test_soft_delete_marks_the_row_deleted_instead_of_removing_it() -> None:
    patch = patch_of(
        ORDERS_SCHEMA, txn(100, insert(ORDERS, b"1", b"1", None), delete(ORDERS, b"2", None, None))
    )

    plan = plan_merge(patch, soft_delete=True)

    assert plan.delete_predicate is None
    assert plan.soft_delete_updates == {
        '"_cdc_lsn"': 's."_cdc_lsn"',
        '"_cdc_op"': 's."_cdc_op"',
        '"_cdc_committed_at"': 's."_cdc_committed_at"',
        '"_cdc_deleted"': 's."_cdc_deleted"',
    }
    assert plan.source.column("_cdc_deleted").to_pylist() == [False, True]
    assert plan.updates['"_cdc_deleted"'] == 's."_cdc_deleted"', "a re-insert un-deletes the row"
    assert plan.inserts['"_cdc_deleted"'] == 's."_cdc_deleted"'


def test_upsert_rows_exclude_deletes_and_match_the_target_schema() -> None:
    patch = patch_of(
        ORDERS_SCHEMA,
        txn(100, insert(ORDERS, b"1", b"1", b"a"), insert(ORDERS, b"2", b"1", b"b")),
        txn(200, delete(ORDERS, b"1", None, None), update(ORDERS, b"3", b"5", UNCHANGED)),
    )

    for soft in (False, True):
        plan = plan_merge(patch, soft_delete=soft)
        assert plan.upsert_rows.schema == target_schema(ORDERS_SCHEMA, soft_delete=soft)
        assert plan.upsert_rows.column("id").to_pylist() == [2, 3]
        assert set(plan.upsert_rows.column("_cdc_op").to_pylist()) == {"c", "u"}


# ---- end to end on a real Delta table ----------------------------------------------------------


def sink_with_table(root: Path, *, soft_delete: bool = False) -> DeltaSink:
    sink = DeltaSink(str(root), slot="test_slot", soft_delete=[ORDERS] if soft_delete else [])
    write_deltalake(sink.uri(ORDERS), target_schema(ORDERS_SCHEMA, soft_delete=soft_delete).empty_table())
    return sink


def delta_rows(sink: DeltaSink, *columns: str) -> list[tuple[Any, ...]]:
    data = DeltaTable(sink.uri(ORDERS)).to_pyarrow_table().to_pydict()
    names = columns or ("id", "qty", "doc", "_cdc_lsn")
    return sorted(zip(*(data[n] for n in names), strict=True))


def apply(sink: DeltaSink, batch: ChangeBatch) -> object:
    return sink.apply(batch.tables[ORDERS], batch.position, batch_id=batch.batch_id)


def test_two_plans_applied_to_a_delta_table_leave_the_rows_and_position_of_the_stream(tmp_path: Path) -> None:
    sink = sink_with_table(tmp_path)
    assert sink.position(ORDERS) is None

    (first,) = batches_of(
        ORDERS_SCHEMA,
        txn(100, insert(ORDERS, b"1", b"1", b"doc one"), insert(ORDERS, b"2", b"1", b"doc two")),
        txn(200, insert(ORDERS, b"3", b"1", b"doc three"), update(ORDERS, b"2", b"2", UNCHANGED)),
    )
    apply(sink, first)
    (second,) = batches_of(
        ORDERS_SCHEMA,
        txn(300, update(ORDERS, b"1", b"5", UNCHANGED), delete(ORDERS, b"3", None, None)),
        txn(400, insert(ORDERS, b"4", None, None), update(ORDERS, b"2", b"3", b"new two")),
    )
    assert second.tables[ORDERS].unchanged_columns == ("doc",)
    apply(sink, second)

    assert delta_rows(sink) == [
        (1, 5, "doc one", 300),  # doc kept from the target: unchanged TOAST
        (2, 3, "new two", 400),
        (4, None, None, 400),
    ]
    assert sink.position(ORDERS) == TablePosition(end_of(400))


def test_replaying_a_patch_the_table_holds_is_a_no_op(tmp_path: Path) -> None:
    sink = sink_with_table(tmp_path)
    (batch,) = batches_of(ORDERS_SCHEMA, txn(100, insert(ORDERS, b"1", b"1", b"a")))
    apply(sink, batch)
    version = DeltaTable(sink.uri(ORDERS)).version()

    assert apply(sink, batch) is None
    assert DeltaTable(sink.uri(ORDERS)).version() == version
    assert delta_rows(sink) == [(1, 1, "a", 100)]


def test_an_older_cdc_lsn_never_overwrites_or_deletes_a_newer_row(tmp_path: Path) -> None:
    sink = sink_with_table(tmp_path)
    (newer,) = batches_of(
        ORDERS_SCHEMA, txn(500, insert(ORDERS, b"1", b"1", b"new"), insert(ORDERS, b"2", b"1", b"new"))
    )
    apply(sink, newer)

    # changes committed at 300, offered with a position beyond what the table holds
    (stale,) = batches_of(
        ORDERS_SCHEMA, txn(300, update(ORDERS, b"1", b"9", b"old"), delete(ORDERS, b"2", None, None))
    )
    sink.apply(stale.tables[ORDERS], TablePosition(Lsn(900)))

    assert delta_rows(sink) == [(1, 1, "new", 500), (2, 1, "new", 500)]
    assert sink.position(ORDERS) == TablePosition(Lsn(900))


def test_a_cut_transaction_records_its_partial_position_and_clears_it_at_the_end(tmp_path: Path) -> None:
    sink = sink_with_table(tmp_path)
    big = txn(200, *(insert(ORDERS, str(i).encode(), b"1", None) for i in range(1, 6)))
    first, second, last = batches_of(
        ORDERS_SCHEMA, txn(100, insert(ORDERS, b"0", b"0", None)), big, max_rows=2
    )
    assert (first.partial, second.partial, last.partial) == (
        PartialTxn(Lsn(200), 2),
        PartialTxn(Lsn(200), 4),
        None,
    )

    apply(sink, first)
    assert sink.position(ORDERS) == TablePosition(end_of(100), PartialTxn(Lsn(200), 2))
    apply(sink, second)
    assert sink.position(ORDERS) == TablePosition(end_of(100), PartialTxn(Lsn(200), 4))
    assert apply(sink, first) is None, "a chunk the table holds is skipped"

    apply(sink, last)
    assert sink.position(ORDERS) == TablePosition(end_of(200))
    assert [r[0] for r in delta_rows(sink)] == [0, 1, 2, 3, 4, 5]


def test_a_truncate_empties_the_table_before_the_rows_after_it(tmp_path: Path) -> None:
    sink = sink_with_table(tmp_path)
    (before,) = batches_of(
        ORDERS_SCHEMA, txn(100, insert(ORDERS, b"1", b"1", None), insert(ORDERS, b"2", b"1", None))
    )
    apply(sink, before)

    (batch,) = batches_of(ORDERS_SCHEMA, txn(200, truncate(ORDERS), insert(ORDERS, b"3", b"1", b"after")))
    apply(sink, batch)

    assert delta_rows(sink) == [(3, 1, "after", 200)]
    assert sink.position(ORDERS) == TablePosition(end_of(200))


def test_a_soft_deleted_row_stays_flagged_until_it_is_inserted_again(tmp_path: Path) -> None:
    sink = sink_with_table(tmp_path, soft_delete=True)
    (first,) = batches_of(
        ORDERS_SCHEMA,
        txn(100, insert(ORDERS, b"1", b"1", b"a"), insert(ORDERS, b"2", b"1", b"b")),
    )
    apply(sink, first)
    (second,) = batches_of(
        ORDERS_SCHEMA, txn(200, delete(ORDERS, b"1", None, None), delete(ORDERS, b"2", None, None))
    )
    apply(sink, second)
    (third,) = batches_of(ORDERS_SCHEMA, txn(300, insert(ORDERS, b"2", b"7", b"back")))
    apply(sink, third)

    assert delta_rows(sink, "id", "qty", "doc", "_cdc_op", "_cdc_deleted") == [
        (1, 1, "a", "d", True),
        (2, 7, "back", "c", False),
    ]


def test_a_key_value_delta_cannot_store_exactly_is_refused_not_merged() -> None:
    # 'infinity' and '9999-12-31' would be one stored key: a merge would mix two source rows
    from cdc_replicator.errors import DecodeError
    from cdc_replicator.model import Column, TableId, TableSchema
    from cdc_replicator.sink.plan import typed_columns

    schema = TableSchema(TableId("public", "d"), (Column("day", 1082, -1, True), Column("v", 25)))
    rows = pa.table({"day": pa.array([b"infinity", b"9999-12-31"]), "v": pa.array([b"a", b"b"])})
    with pytest.raises(DecodeError, match="key column day of public.d: 1 ±infinity"):
        typed_columns(schema, rows)
    fine = pa.table({"day": pa.array([b"2024-01-01"]), "v": pa.array([b"infinity"])})
    assert typed_columns(schema, fine)[0].to_pylist()[0].year == 2024
