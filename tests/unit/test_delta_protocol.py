"""Which Delta protocol the daemon's tables need, and which option raises it (README "Delta protocol
and readers"): recorded on real Delta tables made by ``DeltaSink`` (delta-rs 1.6.6), and read back
by DuckDB's delta extension (delta-kernel-rs) equal to what delta-rs reads.

A protocol is (min reader version, min writer version, reader features, writer features). (1, 2)
is what every Delta reader and writer of the last years understands; (1, 4) adds the change data
feed for writers only; (3, 7) lists table features by name, and a reader must know each one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pytest
from deltalake import DeltaTable, QueryBuilder, write_deltalake
from deltalake.exceptions import DeltaProtocolError

from cdc_replicator.model import Column, KeyRange, TableId, TableSchema
from cdc_replicator.sink.delta import DeltaSink
from cdc_replicator.types import TYPES, arrow_type
from tests.support.kernel_reader import duckdb_rows

T = TableId("public", "t")
TIMESTAMP = 1114  # timestamp without time zone


@dataclass(frozen=True)
class Protocol:
    reader: int
    writer: int
    reader_features: frozenset[str] = frozenset()
    writer_features: frozenset[str] = frozenset()


def protocol(path: Path | str) -> Protocol:
    p = DeltaTable(str(path)).protocol()
    return Protocol(
        p.min_reader_version,
        p.min_writer_version,
        frozenset(p.reader_features or ()),
        frozenset(p.writer_features or ()),
    )


def _naive(oid: int) -> bool:
    kind = arrow_type(oid)
    return pa.types.is_timestamp(kind) and kind.tz is None


# one column per type of the type map (arrays included), by the Arrow type it is stored as
EVERY_TYPE = tuple(Column(f"c_{t.name.lstrip('_')}_{oid}", oid) for oid, t in sorted(TYPES.items()))
WITHOUT_NAIVE = tuple(c for c in EVERY_TYPE if not _naive(c.type_oid))


def schema(*columns: Column) -> TableSchema:
    return TableSchema(T, (Column("id", 20, -1, True), *columns))


def created(tmp_path: Path, table: TableSchema, *, feed: bool = False) -> Path:
    sink = DeltaSink(str(tmp_path / "lake"), slot="spec", change_data_feed=[T] if feed else [])
    sink.begin_load(table, fresh=True)
    return Path(sink.uri(T))


def load(tmp_path: Path, table: TableSchema, rows: dict[str, list[bytes | None]], *, feed: bool) -> Path:
    """A table made and loaded by the sink: ``rows`` are column → text values, as a load reads them."""
    sink = DeltaSink(str(tmp_path / "lake"), slot="spec", change_data_feed=[T] if feed else [])
    sink.begin_load(table, fresh=True)
    batch = pa.record_batch({n: pa.array(v, pa.binary()) for n, v in rows.items()})
    sink.load_chunk(table, [batch], KeyRange(), row_lsn=1, loaded_at=datetime.now(UTC), append=True)
    return Path(sink.uri(T))


def test_timestamp_without_time_zone_is_the_only_type_of_the_map_stored_tz_naive() -> None:
    assert sorted(TYPES[c.type_oid].name for c in EVERY_TYPE if _naive(c.type_oid)) == ["timestamp"]


def test_a_default_table_of_every_other_type_is_at_the_lowest_protocol(tmp_path: Path) -> None:
    assert protocol(created(tmp_path, schema(*WITHOUT_NAIVE))) == Protocol(1, 2)


def test_a_timestamp_column_puts_the_table_at_3_7_with_the_timestamp_ntz_feature_only(tmp_path: Path) -> None:
    got = protocol(created(tmp_path, schema(*EVERY_TYPE)))
    assert got == Protocol(3, 7, frozenset({"timestampNtz"}), frozenset({"timestampNtz"}))


@pytest.mark.parametrize(
    ("columns", "want"),
    [
        ((), Protocol(1, 4)),
        (
            (Column("ts", TIMESTAMP),),
            Protocol(3, 7, frozenset({"timestampNtz"}), frozenset({"timestampNtz", "changeDataFeed"})),
        ),
    ],
    ids=["writer-4", "feature-at-3-7"],
)
def test_the_change_data_feed_raises_the_writer_protocol_only(
    tmp_path: Path, columns: tuple[Column, ...], want: Protocol
) -> None:
    path = created(tmp_path, schema(*columns), feed=True)
    assert protocol(path) == want
    assert DeltaTable(str(path)).metadata().configuration["delta.enableChangeDataFeed"] == "true"


def test_switching_the_feed_on_later_gives_writer_4_or_at_3_7_more_features_than_it_needs(
    tmp_path: Path,
) -> None:
    """delta-rs 1.6.6 ``alter.set_table_properties`` on a (3, 7) table also lists ``appendOnly``,
    ``invariants`` and the reader feature ``variantType`` (for any property). If a delta-rs upgrade
    stops doing that, this test says so: then the README's table can be simplified."""
    plain = schema(Column("v", 25))
    naive = schema(Column("ts", TIMESTAMP))
    for name, table in (("plain", plain), ("naive", naive)):
        created(tmp_path / name, table)
        DeltaSink(str(tmp_path / name / "lake"), slot="spec", change_data_feed=[T]).exists(T)  # opens it
    assert protocol(tmp_path / "plain" / "lake" / "public" / "t") == Protocol(1, 4)
    assert protocol(tmp_path / "naive" / "lake" / "public" / "t") == Protocol(
        3,
        7,
        frozenset({"timestampNtz", "variantType"}),
        frozenset({"timestampNtz", "changeDataFeed", "appendOnly", "invariants", "variantType"}),
    )


def test_partition_columns_leave_the_protocol_alone(tmp_path: Path) -> None:
    data = pa.table({"id": pa.array([1, 2], pa.int64()), "region": ["eu", "us"]})
    write_deltalake(str(tmp_path / "p"), data, partition_by=["region"])
    assert protocol(tmp_path / "p") == Protocol(1, 2)


def test_deletion_vectors_raise_the_table_to_3_7_and_delta_rs_merges_into_it_copy_on_write(
    tmp_path: Path,
) -> None:
    """Why the daemon never enables them: delta-rs 1.6.6 cannot write a deletion vector, so the
    feature only raises the protocol (and stops ``to_pyarrow_table``) without making a merge cheaper."""
    path = str(tmp_path / "dv")
    data = pa.table({"id": pa.array([1, 2, 3], pa.int64()), "v": ["a", "b", "c"]})
    write_deltalake(path, data, configuration={"delta.enableDeletionVectors": "true"})
    got = protocol(path)
    assert (got.reader, got.writer) == (3, 7)
    assert "deletionVectors" in got.reader_features and "deletionVectors" in got.writer_features

    source = pa.table({"id": pa.array([2, 3], pa.int64()), "v": ["B", "gone"]})
    metrics = (
        DeltaTable(path)
        .merge(source, "t.id = s.id", source_alias="s", target_alias="t")
        .when_matched_delete("s.v = 'gone'")
        .when_matched_update_all()
        .execute()
    )
    assert (metrics["num_target_files_removed"], metrics["num_target_files_added"]) == (1, 1)
    assert metrics["num_target_rows_copied"] == 1  # the untouched row was rewritten: copy-on-write
    log = [
        json.loads(line)
        for f in sorted(Path(path, "_delta_log").glob("*.json"))
        for line in f.read_text().splitlines()
    ]
    assert not [a for a in log if (a.get("add") or {}).get("deletionVector")], "no deletion vector written"
    assert not list(Path(path).glob("*.bin"))

    dt = DeltaTable(path)
    with pytest.raises(DeltaProtocolError, match="deletionVectors"):
        dt.to_pyarrow_table()
    rows = pa.table(QueryBuilder().register("t", dt).execute("select id, v from t order by id").read_all())
    assert rows.to_pylist() == [{"id": 1, "v": "a"}, {"id": 2, "v": "B"}]
    assert duckdb_rows(Path(path), "id, v", "id") == [(1, "a"), (2, "B")]


def test_duckdb_reads_a_feed_table_with_a_timestamp_column_equal_to_delta_rs(tmp_path: Path) -> None:
    table = schema(Column("v", 25), Column("ts", TIMESTAMP), Column("tstz", 1184))
    path = load(
        tmp_path,
        table,
        {
            "id": [b"1", b"2", b"3"],
            "v": [b"a", None, "é".encode()],
            "ts": [b"2024-01-02 03:04:05.123456", b"infinity", None],
            "tstz": [b"2024-01-02 03:04:05+02", None, b"1900-01-01 00:00:00+00"],
        },
        feed=True,
    )
    assert protocol(path).writer_features == {"timestampNtz", "changeDataFeed"}
    cols = "id, v, ts, tstz, _cdc_lsn"
    dt = DeltaTable(str(path))
    want = pa.table(QueryBuilder().register("t", dt).execute(f"select {cols} from t order by id").read_all())  # noqa: S608
    plain = {
        pa.string_view(): pa.string(),
        pa.timestamp("us"): pa.int64(),
        pa.timestamp("us", "UTC"): pa.int64(),
    }
    want = want.cast(pa.schema([pa.field(f.name, plain.get(f.type, f.type)) for f in want.schema]))
    # microseconds since 1970 on both sides (DuckDB's Python datetimes with a time zone need pytz)
    got = duckdb_rows(path, "id, v, epoch_us(ts), epoch_us(tstz), _cdc_lsn", "id")
    assert got == [tuple(r.values()) for r in want.to_pylist()]
    assert len(got) == 3 and got[0][1:3] == ("a", 1704164645123456)
