"""Every row of the README's type map, round-tripped: PostgreSQL → (snapshot | stream | watermark poll)
→ Delta, read back and compared value for value with what PostgreSQL holds, on every server version
the suite runs (15 and 16).

Each case is one column: its SQL type, the Delta (Arrow) type the README promises and the values to
store, edge cases included (NULL, empty, extremes, unicode, special floats, ±infinity, BC, 10 MB).
The expected value of a column is computed by PostgreSQL itself from the type map's rule: the text
the output function prints (string columns), days / microseconds since 1970 (dates, timestamps, with
±infinity at the ends of Delta's range and dates clamped to it), NaN as NULL (decimal columns).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pyarrow as pa
import pytest
from deltalake import DeltaTable
from psycopg import sql

from cdc_replicator.source.replication import SESSION_OPTIONS
from cdc_replicator.types import TYPES
from tests.support.daemon import Daemon, wait_converged, write_config
from tests.support.kernel_reader import duckdb_rows
from tests.support.lake import table_path
from tests.support.pg import PgDatabase
from tests.support.wait import wait_until

T = "public.every_type"
LAST_DAY, FIRST_DAY = 2_932_896, -719_162  # 9999-12-31, 0001-01-01 (days since 1970)
LAST_MICRO, FIRST_MICRO = (LAST_DAY + 1) * 86_400_000_000 - 1, FIRST_DAY * 86_400_000_000
TEN_MB = 10 * 1024 * 1024


@dataclass(frozen=True)
class Case:
    column: str
    sql_type: str
    delta: pa.DataType
    values: Sequence[str]  # SQL expressions; each row takes the next one, NULL once they run out


def dec(p: int, s: int) -> pa.DataType:
    return pa.decimal128(p, s)


S, TS, TSTZ = pa.string(), pa.timestamp("us"), pa.timestamp("us", tz="UTC")
CASES: list[Case] = [
    Case("c_int2", "smallint", pa.int16(), ["32767", "-32768", "0"]),
    Case("c_int4", "integer", pa.int32(), ["2147483647", "-2147483648", "0"]),
    Case("c_int8", "bigint", pa.int64(), ["9223372036854775807", "-9223372036854775808", "0"]),
    Case(
        "c_float4",
        "real",
        pa.float32(),
        ["'NaN'", "'Infinity'", "'-Infinity'", "'3.4028235e38'", "'-1.1754944e-38'", "'0.1'", "'-0'"],
    ),
    Case(
        "c_float8",
        "double precision",
        pa.float64(),
        ["'NaN'", "'Infinity'", "'-Infinity'", "'1.7976931348623157e308'", "'5e-324'", "'0.1'", "'-0'"],
    ),
    Case("c_numeric_10_2", "numeric(10,2)", dec(10, 2), ["12345678.91", "-0.01", "'NaN'", "0"]),
    Case(
        "c_numeric_38_10",
        "numeric(38,10)",
        dec(38, 10),
        [
            "1234567890123456789012345678.0123456789",
            "-0.0000000001",
            "-9999999999999999999999999999.9999999999",
        ],
    ),
    Case("c_numeric_neg_scale", "numeric(5,-2)", dec(7, 0), ["12300", "-9999900"]),
    Case(
        "c_numeric",
        "numeric",
        S,
        [
            "'NaN'",
            "'Infinity'",
            "'-Infinity'",
            "1e-50",
            "123456789012345678901234567890123456789012345.5",
            "0",
        ],
    ),
    Case("c_numeric_50_5", "numeric(50,5)", S, ["123456789012345678901234567890123456789012345.12345"]),
    Case(
        "c_money", "money", dec(19, 2), ["'92233720368547758.07'", "'-92233720368547758.08'", "0", "1234.5"]
    ),
    Case("c_bool", "boolean", pa.bool_(), ["true", "false"]),
    Case(
        "c_text",
        "text",
        S,
        ["''", "'héllo ✓ 𝄞 日本'", "'NULL'", "E'line\\nbreak\\ttab \\\\ back'", "'quote '' \" '"],
    ),
    Case("c_varchar", "varchar(20)", S, ["'abc'", "''", "'ünïcødé'"]),
    Case("c_bpchar", "char(5)", S, ["'ab'", "''", "'abcde'"]),
    Case("c_name", "name", S, ["'pg_class'", "''"]),
    Case("c_char", '"char"', S, ["'a'", "''"]),
    Case(
        "c_bytea",
        "bytea",
        pa.binary(),
        ["'\\x'::bytea", "'\\xdeadbeef00'::bytea", "convert_to('日本', 'UTF8')"],
    ),
    Case(
        "c_date",
        "date",
        pa.date32(),
        [
            "'2024-02-29'",
            "'0001-01-01'",
            "'9999-12-31'",
            "'infinity'",
            "'-infinity'",
            "'0044-03-15 BC'",
            "'10000-01-01'",
        ],
    ),
    Case("c_time", "time", S, ["'00:00'", "'23:59:59.999999'", "'24:00:00'"]),
    Case("c_timetz", "timetz", S, ["'04:05:06.789+05:30'", "'00:00:00-14:59'"]),
    Case(
        "c_timestamp",
        "timestamp",
        TS,
        [
            "'2024-01-02 03:04:05.123456'",
            "'infinity'",
            "'-infinity'",
            "'0044-03-15 12:00:00.5 BC'",
            "'0001-01-01'",
            "'9999-12-31 23:59:59.999999'",
            "'12345-06-07 08:09:10'",
        ],
    ),
    Case(
        "c_timestamptz",
        "timestamptz",
        TSTZ,
        [
            "'2024-01-02 03:04:05.123456+05:30'",
            "'infinity'",
            "'-infinity'",
            "'4714-11-24 00:00:00+00 BC'",
            "'1900-01-01 00:00:00+00'",
        ],
    ),
    Case("c_interval", "interval", S, ["'1 year 2 mons 3 days 04:05:06.789'", "'-178000000 years'", "'0'"]),
    Case(
        "c_uuid",
        "uuid",
        S,
        ["'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'", "'00000000-0000-0000-0000-000000000000'"],
    ),
    Case("c_json", "json", S, ['\'{"b":  1, "a": [1, 2.50]}\'', "'null'", "'\"\\u00e9\"'"]),
    Case("c_jsonb", "jsonb", S, ['\'{"b": 1, "a": [1, 2.50]}\'', "'[]'", "'\"é\"'"]),
    Case("c_xml", "xml", S, ["'<a x=\"1\">é</a>'", "'text only'"]),
    Case("c_inet", "inet", S, ["'10.0.0.1'", "'10.0.0.1/8'", "'::1'", "'2001:db8::1/64'"]),
    Case("c_cidr", "cidr", S, ["'10.1.0.0/16'", "'2001:db8::/32'"]),
    Case("c_macaddr", "macaddr", S, ["'08:00:2b:01:02:03'"]),
    Case("c_macaddr8", "macaddr8", S, ["'08:00:2b:01:02:03:04:05'"]),
    Case("c_enum", "mood", S, ["'happy'", "'sad'"]),
    Case("c_domain_int", "posint", pa.int32(), ["1", "2147483647"]),
    Case("c_domain_numeric", "price", dec(12, 2), ["12.5", "'NaN'"]),
    Case("c_domain_of_domain", "sale_price", dec(12, 2), ["99.99"]),
    Case("c_domain_varchar", "short_text", S, ["'short'"]),
    Case("c_composite", "pair", S, ["row(1, 'a,b \"c\"')::pair", "row(null, null)::pair"]),
    Case("c_int4range", "int4range", S, ["'[1,10)'", "'empty'", "'(,5]'"]),
    Case("c_tstzrange", "tstzrange", S, ["tstzrange('2024-01-01 00:00+02', 'infinity')"]),
    Case("c_numrange", "numrange", S, ["'(1.5,2.5]'"]),
    Case("c_daterange", "daterange", S, ["'[2024-01-01,2024-02-01)'"]),
    Case("c_multirange", "int4multirange", S, ["'{[1,3),[5,7)}'", "'{}'"]),
    Case("c_bit", "bit(4)", S, ["B'1010'"]),
    Case("c_varbit", "varbit", S, ["B'1'", "B''"]),
    Case("c_tsvector", "tsvector", S, ["to_tsvector('english', 'The fat cats sat')", "''"]),
    Case("c_tsquery", "tsquery", S, ["'fat & !rat'"]),
    Case("c_oid", "oid", pa.int64(), ["4294967295", "0"]),
    Case("c_pg_lsn", "pg_lsn", S, ["'16/B374D848'"]),
    Case("c_point", "point", S, ["'(1.5,-2)'"]),
    Case("c_polygon", "polygon", S, ["'((0,0),(1,1),(1,0))'"]),
    Case("c_unknown", "geo_text", S, ["'POINT(1 2)'", "''"]),  # a base type the daemon never heard of
    Case("c_int4_array", "integer[]", S, ["'{1,NULL,3}'", "'{}'", "'{{1,2},{3,4}}'", "'[0:1]={7,8}'"]),
    Case("c_text_array", "text[]", S, ["array['a,b', 'q\"uote', null, 'NULL', '', 'é', 'back\\slash']"]),
    Case("c_numeric_array", "numeric[]", S, ["'{1.5,NaN,NULL}'"]),
    Case(
        "c_timestamptz_array", "timestamptz[]", S, ["array['2024-01-01 00:00+02'::timestamptz, 'infinity']"]
    ),
    Case("c_date_array", "date[]", S, ["array['-infinity'::date, '2024-01-01']"]),
    Case("c_bytea_array", "bytea[]", S, ["array['\\x00ff'::bytea, null]"]),
    Case("c_bool_array", "boolean[]", S, ["'{t,f,NULL}'"]),
    Case("c_uuid_array", "uuid[]", S, ["array['a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::uuid]"]),
    Case("c_jsonb_array", "jsonb[]", S, ["array['{\"a\": 1}'::jsonb, 'null']"]),
    Case("c_enum_array", "mood[]", S, ["array['sad', 'happy']::mood[]"]),
    Case("c_composite_array", "pair[]", S, ["array[row(1, 'x')::pair, null]"]),
    Case("c_big_text", "text", S, [f"repeat('é✓ 0123456', {TEN_MB // 12})"]),
    Case("c_big_bytea", "bytea", pa.binary(), [f"decode(repeat('00ff17', {TEN_MB // 3}), 'hex')"]),
]

SETUP = """
create type mood as enum ('sad', 'ok', 'happy');
create type pair as (a int, b text);
create domain posint as integer check (value > 0);
create domain price as numeric(12,2);
create domain sale_price as price;
create domain short_text as varchar(10);
-- a base type with its own input/output functions, as an extension like PostGIS makes them
create type geo_text;
create function geo_text_in(cstring) returns geo_text language internal immutable strict as 'textin';
create function geo_text_out(geo_text) returns cstring language internal immutable strict as 'textout';
create type geo_text (input = geo_text_in, output = geo_text_out, like = text);
"""

ROWS = max(len(c.values) for c in CASES) + 1  # the last row is NULL everywhere


def create_table(pg: PgDatabase, cases: Sequence[Case], *, first_id: int = 1) -> None:
    """The table with one column per case; row i holds each case's i-th value (or NULL)."""
    pg.execute(SETUP)
    columns = ", ".join(f"{c.column} {c.sql_type}" for c in cases)
    pg.execute(f"create table every_type (id int primary key, {columns})")
    insert_rows(pg, cases, first_id)


def insert_rows(pg: PgDatabase, cases: Sequence[Case], first_id: int) -> None:
    names = ", ".join(c.column for c in cases)
    for i in range(ROWS):
        values = ", ".join(c.values[i] if i < len(c.values) else "null" for c in cases)
        pg.execute(f"insert into every_type (id, {names}) values ({first_id + i}, {values})")  # noqa: S608


def expected_sql(case: Case) -> sql.Composable:
    """What Delta must hold for this column, computed by PostgreSQL from the type map's rule."""
    col = sql.Identifier(case.column)
    d = case.delta
    if pa.types.is_string(d):  # the output function's text; NULL only for NULL (not for ROW(NULL, NULL))
        return sql.SQL("case when {0} is not distinct from null then null else format('%s', {0}) end").format(
            col
        )
    if pa.types.is_date32(d):  # days since 1970; ±infinity and out-of-range dates at the ends
        return sql.SQL(
            "case when {0} is null then null when {0} = 'infinity' then {1} when {0} = '-infinity' then {2} "
            "else greatest(least({0} - date '1970-01-01', {1}), {2}) end"
        ).format(col, LAST_DAY, FIRST_DAY)
    if pa.types.is_timestamp(d):  # microseconds since 1970 (UTC), clamped; ±infinity at the ends
        return sql.SQL(
            "case when {0} is null then null when {0} = 'infinity' then {1} when {0} = '-infinity' then {2} "
            "else greatest(least((extract(epoch from {0}) * 1000000)::bigint, {1}), {2}) end"
        ).format(col, LAST_MICRO, FIRST_MICRO)
    if case.sql_type == "money":
        return sql.SQL("{}::numeric").format(col)
    if pa.types.is_decimal(d):  # a decimal has no NaN: NULL
        return sql.SQL("case when {0} = 'NaN' then null else {0}::numeric end").format(col)
    if pa.types.is_float32(d):  # the float4 value exactly, as a double
        return sql.SQL("{}::float8").format(col)
    return col


def source_values(pg: PgDatabase, cases: Sequence[Case]) -> list[tuple[Any, ...]]:
    items = sql.SQL(", ").join(expected_sql(c) for c in cases)
    query = sql.SQL("select id, {} from every_type order by id").format(items)
    with psycopg.connect(pg.dsn, options=SESSION_OPTIONS) as conn:
        return [tuple(r) for r in conn.execute(query).fetchall()]


def delta_values(lake: Path, cases: Sequence[Case]) -> tuple[pa.Schema, list[tuple[Any, ...]]]:
    data = DeltaTable(str(table_path(lake, T))).to_pyarrow_table().sort_by("id")
    schema = data.schema
    cols: list[list[Any]] = [data.column("id").to_pylist()]
    for c in cases:
        col = data.column(c.column)
        if pa.types.is_date32(col.type):
            col = col.cast(pa.int32())
        elif pa.types.is_timestamp(col.type):
            col = col.cast(pa.int64())  # Python datetimes stop at year 9999
        elif pa.types.is_string_view(col.type) or pa.types.is_large_string(col.type):
            col = col.cast(pa.string())
        elif pa.types.is_binary_view(col.type) or pa.types.is_large_binary(col.type):
            col = col.cast(pa.binary())
        cols.append(col.to_pylist())
    return schema, list(zip(*cols, strict=True))


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        if math.isnan(a) or math.isnan(b):
            return math.isnan(a) and math.isnan(b)
        return a == b and math.copysign(1.0, a) == math.copysign(1.0, b)  # -0 is kept
    if isinstance(a, memoryview):
        a = bytes(a)
    if isinstance(b, memoryview):
        b = bytes(b)
    if isinstance(a, Decimal) and isinstance(b, Decimal):
        return a == b
    return bool(a == b) and type(a) is type(b)


def _short(v: Any) -> str:
    text = repr(v)
    return text if len(text) < 80 else text[:77] + "..."


def differences(pg: PgDatabase, lake: Path, cases: Sequence[Case]) -> list[str]:
    """Every (row, column) whose Delta value is not what PostgreSQL holds; empty when all agree."""
    schema, got = delta_values(lake, cases)
    want = source_values(pg, cases)
    out = []
    for c in cases:
        kind = schema.field(c.column).type
        kind = {pa.string_view(): pa.string(), pa.binary_view(): pa.binary()}.get(kind, kind)
        if kind != c.delta:
            out.append(f"{c.column} ({c.sql_type}) is {kind} in Delta, the type map says {c.delta}")
    if [r[0] for r in got] != [r[0] for r in want]:
        return [*out, f"ids differ: delta {[r[0] for r in got]}, source {[r[0] for r in want]}"]
    for g, w in zip(got, want, strict=True):
        for i, c in enumerate(cases, start=1):
            if not _same(g[i], w[i]):
                out.append(
                    f"id {w[0]} {c.column} ({c.sql_type}): delta {_short(g[i])}, source {_short(w[i])}"
                )
    return out


def assert_all_null_composites_kept(pg: PgDatabase, lake: Path) -> None:
    """A composite whose fields are all NULL is a value, ``(,)``, although ``ROW(NULL, NULL) IS NULL``."""
    ids = [
        int(r[0])
        for r in pg.query(
            "select id from every_type where num_nulls(c_composite) = 0 "
            "and (c_composite).a is null and (c_composite).b is null"
        )
    ]
    assert ids, "the table holds a composite value whose fields are all NULL"
    data = DeltaTable(str(table_path(lake, T))).to_pyarrow_table(columns=["id", "c_composite"])
    got = dict(zip(data.column("id").to_pylist(), data.column("c_composite").to_pylist(), strict=True))
    assert {i: got.get(i) for i in ids} == dict.fromkeys(ids, "(,)")


def assert_duckdb_reads_what_delta_rs_reads(lake: Path, cases: Sequence[Case]) -> None:
    """DuckDB's delta extension (delta-kernel-rs) reads every value as delta-rs does, and the table is at
    the protocol the README's "Delta protocol and readers" gives: (3, 7) with timestampNtz only."""
    path = table_path(lake, T)
    p = DeltaTable(str(path)).protocol()
    assert (p.min_reader_version, p.min_writer_version) == (3, 7)
    assert (p.reader_features, p.writer_features) == (["timestampNtz"], ["timestampNtz"])
    _, want = delta_values(lake, cases)  # timestamps as microseconds (DuckDB's tz datetimes need pytz)
    cols = ", ".join(
        ["id"]
        + [
            f"epoch_us({c.column})"
            if pa.types.is_timestamp(c.delta)
            else f"{c.column}::date - date '1970-01-01'"
            if pa.types.is_date32(c.delta)
            else c.column
            for c in cases
        ]
    )
    got = duckdb_rows(path, cols, "id")
    assert [r[0] for r in got] == [r[0] for r in want]
    wrong = [
        f"id {w[0]} {c.column}: duckdb {_short(g[i])}, delta-rs {_short(w[i])}"
        for g, w in zip(got, want, strict=True)
        for i, c in enumerate(cases, start=1)
        if not _same(g[i], w[i])
    ]
    assert not wrong, wrong[:20]


def wait_equal(pg: PgDatabase, lake: Path, cases: Sequence[Case], daemon: Daemon) -> None:
    last: list[str] = ["no Delta table yet"]

    def check() -> bool:
        assert daemon.alive(), daemon.output()
        try:
            last[:] = differences(pg, lake, cases)
        except Exception as exc:  # the table is not there yet
            last[:] = [repr(exc)]
        return not last

    try:
        wait_until(check, timeout=120, interval=1.0, message="Delta never held every value")
    except AssertionError as exc:
        raise AssertionError(f"{exc}:\n" + "\n".join(last[:40]) + f"\n{daemon.output()}") from None


def cases_for(pg: PgDatabase) -> list[Case]:
    """The cases this server can store: pgserver's PostgreSQL 16 is built without libxml (no xml
    values at all) and without contrib (no citext); Debian's 15 has both."""
    cases = list(CASES)
    try:
        pg.query("select '<a/>'::xml")
    except psycopg.errors.FeatureNotSupported:
        cases = [c for c in cases if c.sql_type != "xml"]
    if pg.query("select count(*) from pg_available_extensions where name = 'citext'")[0][0]:
        pg.execute("create extension citext")
        cases.append(Case("c_citext", "citext", S, ["'MiXeD Case'", "''"]))
    return cases


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    d = Daemon(tmp_path / "cfg.toml", tmp_path)
    yield d
    d.close()


def test_the_type_map_names_each_builtin_type_by_its_oid_and_array_oid_in_the_catalog(pg: PgDatabase) -> None:
    catalog = {
        int(r[0]): (str(r[1]), int(r[2]))
        for r in pg.query("select oid::int, typname, typarray::int from pg_type")
    }
    wrong = [
        f"{oid}: registry says {t.name} (array {t.array_oid}), catalog {catalog.get(oid)}"
        for oid, t in TYPES.items()
        if not t.name.startswith("_")
        and catalog.get(oid) != (t.name, t.array_oid or catalog.get(oid, ("", 0))[1])
    ]
    arrays = [
        f"{oid}: {t.name}"
        for oid, t in TYPES.items()
        if t.name.startswith("_") and catalog.get(oid, ("",))[0] != t.name
    ]
    assert not wrong and not arrays, wrong + arrays


def test_every_type_arrives_exactly_through_the_snapshot_and_the_stream(
    pg: PgDatabase, tmp_lake: Path, daemon: Daemon
) -> None:
    cases = cases_for(pg)
    create_table(pg, cases)
    write_config(daemon.config, pg, tmp_lake, [T])
    daemon.start()
    wait_equal(pg, tmp_lake, cases, daemon)  # the snapshot path (initial load)
    assert_all_null_composites_kept(pg, tmp_lake)

    # the stream: inserts of every value; updates that move every value to another row (old and new
    # tuples); an update of row 1001, which holds the 10 MB values, that leaves them unchanged (TOAST);
    # a delete
    names = sql.SQL(", ").join(sql.Identifier(c.column) for c in cases)
    pg.execute(
        sql.SQL("insert into every_type (id, {0}) select id + 1000, {0} from every_type").format(names)
    )
    pg.execute(
        sql.SQL(
            "update every_type t set ({0}) = (select {0} from every_type s where s.id = t.id % {1} + 1) "
            "where t.id between 1002 and {2}"
        ).format(names, ROWS, 1000 + ROWS - 1)
    )
    pg.execute("update every_type set c_int4 = 42 where id = 1001")
    pg.execute("delete from every_type where id = 1003")
    wait_equal(pg, tmp_lake, cases, daemon)
    assert_all_null_composites_kept(pg, tmp_lake)
    assert_duckdb_reads_what_delta_rs_reads(tmp_lake, cases)

    log = daemon.output(last=10_000)
    assert "NaN value(s) stored as NULL" in log  # numeric NaN in a decimal column is said, not silent
    assert "±infinity value(s) stored as the end of Delta's range" in log
    assert daemon.stop() == 0


def test_every_type_arrives_exactly_through_watermark_polls(
    pg: PgDatabase, tmp_lake: Path, daemon: Daemon
) -> None:
    cases = cases_for(pg)
    create_table(pg, cases)
    write_config(
        daemon.config,
        pg,
        tmp_lake,
        [T],
        source_extra={"mode": "watermark"},
        table_extra={T: {"cursor": "id"}},
    )
    with open(daemon.config, "a") as f:
        f.write("[watermark]\npoll_interval_seconds = 0.2\npage_size = 3\n")
    daemon.start()
    wait_equal(pg, tmp_lake, cases, daemon)
    insert_rows(pg, cases, first_id=1000)
    wait_equal(pg, tmp_lake, cases, daemon)
    assert_all_null_composites_kept(pg, tmp_lake)
    assert daemon.stop() == 0


def test_a_column_of_a_domain_created_while_streaming_arrives_as_the_domains_base_type(
    pg: PgDatabase, tmp_lake: Path, daemon: Daemon
) -> None:
    pg.execute("create table t (id int primary key, v text)")
    pg.execute("insert into t values (1, 'a')")
    write_config(daemon.config, pg, tmp_lake, ["public.t"])
    daemon.start()
    daemon.wait_streaming()
    pg.execute("insert into t values (10, 'streamed before the domain exists')")
    wait_converged(pg, tmp_lake, ["public.t"], daemon=daemon)
    pg.execute("create domain qty as bigint check (value >= 0)")
    pg.execute("alter table t add column q qty")
    pg.execute("insert into t values (2, 'b', 9000000000)")
    wait_converged(pg, tmp_lake, ["public.t"], daemon=daemon)
    field = DeltaTable(str(table_path(tmp_lake, "public.t"))).schema().to_arrow().field("q")
    assert pa.int64() == field.type, field
    assert daemon.stop() == 0
