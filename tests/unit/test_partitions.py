"""Specification of partition_by's pure parts: parsing, the derived-column kernels, the catalog check,
the merge's partition predicate; and a chunk of native (binary-read) rows written to a real Delta table."""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path

import pyarrow as pa
import pytest
from deltalake import DeltaTable

from cdc_replicator.config import load_config
from cdc_replicator.errors import ConfigError
from cdc_replicator.model import Column, KeyRange, TableId, TablePatch, TableSchema
from cdc_replicator.sink.delta import DeltaSink
from cdc_replicator.sink.plan import partition_predicate, plan_merge
from cdc_replicator.types import arrow_type
from cdc_replicator.types.partitions import (
    PartitionColumn,
    Transform,
    derive,
    parse_partition,
    partition_problems,
)

T = TableId("public", "orders")
# id bigint key, region text, created_at timestamptz, d date, blob bytea
SCHEMA = TableSchema(
    T,
    (
        Column("id", 20, -1, True),
        Column("region", 25),
        Column("created_at", 1184),
        Column("d", 1082),
        Column("blob", 17),
    ),
)
TYPES = [arrow_type(c.type_oid, c.type_modifier) for c in SCHEMA.columns]
DAY = PartitionColumn("created_at", Transform.DAY)


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("region", PartitionColumn("region")),
        ("day(created_at)", DAY),
        (" month( created_at ) ", PartitionColumn("created_at", Transform.MONTH)),
        ("year(d)", PartitionColumn("d", Transform.YEAR)),
    ],
)
def test_a_partition_entry_is_a_column_or_a_calendar_transform_of_one(
    text: str, parsed: PartitionColumn
) -> None:
    assert parse_partition(text) == parsed


def test_a_transform_adds_a_column_named_after_its_source_and_transform() -> None:
    assert [parse_partition(t).name for t in ("region", "day(c)", "month(c)", "year(c)")] == [
        "region",
        "c_day",
        "c_month",
        "c_year",
    ]


@pytest.mark.parametrize("text", ["week(c)", "day(a, b)", "day(c", "day()", "", "day(month(c))"])
def test_anything_else_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="year"):
        parse_partition(text)


def test_the_config_key_is_validated_and_a_bad_entry_names_the_key(tmp_path: Path) -> None:
    base = '[source]\ndsn = "dbname=app"\n[target]\nuri = "./lake"\n[[tables]]\nname = "public.orders"\n'
    good = tmp_path / "good.toml"
    good.write_text(base + 'partition_by = ["region", "day(created_at)"]\n')
    assert load_config(good).tables[0].partition_by == (PartitionColumn("region"), DAY)

    bad = tmp_path / "bad.toml"
    bad.write_text(base + 'partition_by = ["region", "hour(created_at)"]\n')
    with pytest.raises(ConfigError, match=r"tables\[0\]\.partition_by.*unknown transform hour"):
        load_config(bad)
    twice = tmp_path / "twice.toml"
    twice.write_text(base + 'partition_by = ["region", "region"]\n')
    with pytest.raises(ConfigError, match="each listed once"):
        load_config(twice)


def test_the_day_month_and_year_of_a_timestamptz_are_utcs_and_null_stays_null() -> None:
    ts = pa.array(
        [datetime(2026, 12, 1, 23, 30, tzinfo=UTC), None, datetime(1, 1, 1, tzinfo=UTC)],
        pa.timestamp("us", tz="UTC"),
    )

    assert derive(DAY, ts).to_pylist() == [date(2026, 12, 1), None, date(1, 1, 1)]
    assert derive(PartitionColumn("c", Transform.MONTH), ts).to_pylist() == ["2026-12", None, "0001-01"]
    year = derive(PartitionColumn("c", Transform.YEAR), ts)
    assert year.type == pa.int32() and year.to_pylist() == [2026, None, 1]


def test_a_date_and_a_naive_timestamp_transform_their_own_calendar_values() -> None:
    d = pa.array([date(2026, 2, 28), None], pa.date32())
    naive = pa.array([datetime(2026, 12, 31, 23, 59)], pa.timestamp("us"))

    assert derive(PartitionColumn("d", Transform.MONTH), d).to_pylist() == ["2026-02", None]
    assert derive(PartitionColumn("d", Transform.DAY), d).to_pylist() == [date(2026, 2, 28), None]
    assert derive(PartitionColumn("t", Transform.DAY), naive).to_pylist() == [date(2026, 12, 31)]


def test_the_catalog_check_names_every_problem_and_accepts_the_rest() -> None:
    asked = [
        PartitionColumn("region"),
        PartitionColumn("nope"),
        PartitionColumn("region", Transform.DAY),
        PartitionColumn("blob"),
        PartitionColumn("secret"),
        PartitionColumn("d", Transform.YEAR),
    ]

    problems = partition_problems(SCHEMA, asked, TYPES, excluded={"secret"})

    assert problems == [
        "nope: public.orders has no column nope",
        "day(region): day() needs a date, timestamp or timestamptz column",
        "blob: Delta cannot partition by a column of type binary",
        "secret: column secret is not replicated (columns / exclude_columns)",
    ]


def _source(**cols: pa.Array) -> pa.Table:
    return pa.table(cols)


def test_merges_are_pruned_by_partition_only_when_every_partition_column_is_a_key_column() -> None:
    keyed = TableSchema(T, (Column("region", 25, -1, True), Column("id", 20, -1, True), Column("v", 25)))
    source = _source(region=pa.array(["us", "eu", "us"]), id=pa.array([1, 2, 3]), v=pa.array(["a", "b", "c"]))

    assert partition_predicate(source, keyed, [PartitionColumn("region")]) == "t.\"region\" IN ('eu', 'us')"
    # region not in the key: an update moving a row carries no old region, so no pruning
    assert partition_predicate(source, SCHEMA, [PartitionColumn("region")]) is None
    assert partition_predicate(source, keyed, [PartitionColumn("region"), PartitionColumn("v")]) is None
    assert partition_predicate(source, keyed, []) is None


def test_a_pruned_day_partition_is_a_date_literal_and_too_many_partitions_prune_nothing() -> None:
    keyed = TableSchema(T, (Column("at", 1082, -1, True),))
    days = pa.array([date(2026, 12, 1), date(2026, 12, 2)], pa.date32())

    assert (
        partition_predicate(_source(at=days, at_day=days), keyed, [PartitionColumn("at", Transform.DAY)])
        == "t.\"at_day\" IN (CAST('2026-12-01' AS DATE), CAST('2026-12-02' AS DATE))"
    )
    many = pa.array(range(500))
    wide = TableSchema(T, (Column("n", 23, -1, True),))
    assert partition_predicate(_source(n=many), wide, [PartitionColumn("n")]) is None


def test_a_merge_plan_carries_the_derived_column_into_inserts_and_updates() -> None:
    schema = TableSchema(T, (Column("id", 20, -1, True), Column("created_at", 1184)))
    rows = pa.table(
        {
            "id": pa.array([b"1", b"2"], pa.binary()),
            "created_at": pa.array([b"2026-12-01 23:30:00+00", None], pa.binary()),
            "_cdc_lsn": pa.array([5, 5], pa.int64()),
            "_cdc_op": pa.array(["u", "c"]),
            "_cdc_committed_at": pa.array(
                [datetime(2026, 12, 1, tzinfo=UTC)] * 2, pa.timestamp("us", tz="UTC")
            ),
        }
    )

    plan = plan_merge(TablePatch(schema, rows, changes=2), soft_delete=False, partitions=[DAY])

    assert plan.source.column("created_at_day").to_pylist() == [date(2026, 12, 1), None]
    assert plan.inserts['"created_at_day"'] == 's."created_at_day"'
    assert plan.updates['"created_at_day"'] == 's."created_at_day"'
    assert "created_at_day" in plan.upsert_rows.column_names
    assert "IN" not in plan.predicate  # created_at is no key column


def test_a_native_chunk_is_written_into_partition_directories_with_its_derived_column(tmp_path: Path) -> None:
    schema = TableSchema(T, (Column("id", 20, -1, True), Column("region", 25), Column("created_at", 1184)))
    sink = DeltaSink(str(tmp_path / "lake"), slot="spec", partitions={T: [PartitionColumn("region"), DAY]})
    sink.begin_load(schema, fresh=True)
    chunk = pa.record_batch(
        {
            "id": pa.array([1, 2, 3], pa.int64()),
            "region": pa.array(["eu", None, "eu"]),
            "created_at": pa.array(
                [datetime(2026, 12, 1, 23, 59, tzinfo=UTC), datetime(2026, 12, 2, tzinfo=UTC), None],
                pa.timestamp("us", tz="UTC"),
            ),
        }
    )

    sink.load_chunk(
        schema, [chunk], KeyRange(), row_lsn=1, loaded_at=datetime.now(UTC), append=True, native=True
    )

    dt = DeltaTable(sink.uri(T))
    assert dt.metadata().partition_columns == ["region", "created_at_day"]
    paths = {
        str(Path(p).parent) for p in pa.table(dt.get_add_actions(flatten=True)).column("path").to_pylist()
    }
    assert paths == {
        "region=eu/created_at_day=2026-12-01",
        "region=__HIVE_DEFAULT_PARTITION__/created_at_day=2026-12-02",
        "region=eu/created_at_day=__HIVE_DEFAULT_PARTITION__",
    }
    got = dt.to_pyarrow_table(columns=["id", "created_at_day"]).sort_by("id").to_pylist()
    assert got == [
        {"id": 1, "created_at_day": date(2026, 12, 1)},
        {"id": 2, "created_at_day": date(2026, 12, 2)},
        {"id": 3, "created_at_day": None},
    ]
