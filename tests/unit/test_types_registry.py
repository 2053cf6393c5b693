"""Specification of the type registry: PostgreSQL type → Arrow type, domains, and Delta accepting every one."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pytest
from deltalake import DeltaTable, write_deltalake

from cdc_replicator.model import Column
from cdc_replicator.types import TYPES, PgType, arrow_schema, arrow_type, cast_text, pg_type
from tests.unit.types_support import (
    BOOL,
    BPCHAR,
    BYTEA,
    CHAR,
    DATE,
    FLOAT4,
    FLOAT8,
    INT2,
    INT4,
    INT4_ARRAY,
    INT8,
    INTERVAL,
    JSON,
    JSONB,
    JSONB_ARRAY,
    MONEY,
    NAME,
    NUMERIC,
    OID,
    TEXT,
    TEXT_ARRAY,
    TIME,
    TIMESTAMP,
    TIMESTAMPTZ,
    TIMETZ,
    UNKNOWN,
    UUID,
    VARCHAR,
    cast,
    numeric_typmod,
    text_array,
)

# ---- the registry --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("oid", "typmod", "expected"),
    [
        (INT2, -1, pa.int16()),
        (INT4, -1, pa.int32()),
        (INT8, -1, pa.int64()),
        (OID, -1, pa.int64()),
        (FLOAT4, -1, pa.float32()),
        (FLOAT8, -1, pa.float64()),
        (BOOL, -1, pa.bool_()),
        (BYTEA, -1, pa.binary()),
        (DATE, -1, pa.date32()),
        (TIMESTAMP, -1, pa.timestamp("us")),
        (TIMESTAMP, 3, pa.timestamp("us")),
        (TIMESTAMPTZ, -1, pa.timestamp("us", tz="UTC")),
        (NUMERIC, -1, pa.string()),
        (NUMERIC, numeric_typmod(10, 4), pa.decimal128(10, 4)),
        (TEXT, -1, pa.string()),
        (VARCHAR, 14, pa.string()),
        (BPCHAR, 9, pa.string()),
        (NAME, -1, pa.string()),
        (CHAR, -1, pa.string()),
        (UNKNOWN, -1, pa.string()),
        (TIME, -1, pa.string()),
        (TIMETZ, -1, pa.string()),
        (INTERVAL, -1, pa.string()),
        (UUID, -1, pa.string()),
        (JSON, -1, pa.string()),
        (JSONB, -1, pa.string()),
        (INT4_ARRAY, -1, pa.string()),
        (JSONB_ARRAY, -1, pa.string()),
        (987_654, -1, pa.string()),
    ],
)
def test_each_postgres_type_maps_to_its_arrow_type(oid: int, typmod: int, expected: pa.DataType) -> None:
    assert arrow_type(oid, typmod) == expected


def test_registry_names_builtin_types_by_their_pg_type_typname() -> None:
    # every entry is checked against live PostgreSQL 15 and 16 catalogs in tests/integration/test_types.py
    assert {oid: t.name for oid, t in TYPES.items() if not t.name.startswith("_")}.items() >= {
        16: "bool",
        17: "bytea",
        18: "char",
        19: "name",
        20: "int8",
        21: "int2",
        23: "int4",
        25: "text",
        26: "oid",
        114: "json",
        700: "float4",
        701: "float8",
        705: "unknown",
        1042: "bpchar",
        1043: "varchar",
        1082: "date",
        1083: "time",
        1114: "timestamp",
        1184: "timestamptz",
        1186: "interval",
        1266: "timetz",
        1700: "numeric",
        2950: "uuid",
        3802: "jsonb",
        790: "money",
        142: "xml",
        869: "inet",
        3904: "int4range",
        3614: "tsvector",
    }.items()


def test_registry_holds_the_array_type_of_every_element_type_as_text() -> None:
    arrays = {t.array_oid: t.name for t in TYPES.values() if t.array_oid}
    assert arrays[INT4_ARRAY] == "int4"
    for array_oid, element in arrays.items():
        assert TYPES[array_oid].name == f"_{element}"
        assert TYPES[array_oid].arrow == pa.string()
    assert pg_type(TEXT_ARRAY).name == "_text"


def test_unknown_type_oid_keeps_text_and_is_named_by_its_oid() -> None:
    entry = pg_type(16_385)
    assert isinstance(entry, PgType)
    assert entry.arrow == pa.string()
    assert "16385" in entry.name
    assert cast(["happy", None, "sad"], 16_385) == ["happy", None, "sad"]


def test_registry_is_read_only() -> None:
    with pytest.raises(TypeError):
        TYPES[99] = TYPES[TEXT]  # type: ignore[index]


def test_arrow_schema_keeps_column_names_order_and_makes_every_field_nullable() -> None:
    columns = [
        Column("id", INT8, is_key=True),
        Column("price", NUMERIC, numeric_typmod(12, 2)),
        Column("seen_at", TIMESTAMPTZ),
        Column("tags", TEXT_ARRAY),
    ]
    schema = arrow_schema(columns)
    assert schema.names == ["id", "price", "seen_at", "tags"]
    assert schema.types == [pa.int64(), pa.decimal128(12, 2), pa.timestamp("us", tz="UTC"), pa.string()]
    assert all(f.nullable for f in schema)


# ---- Delta Lake accepts every Arrow type -----------------------------------------------------


SAMPLES: dict[tuple[int, int], list[str | None]] = {
    (BOOL, -1): ["t", "f", None],
    (BYTEA, -1): ["\\xdeadbeef", "\\x", None],
    (CHAR, -1): ["a", "b", None],
    (NAME, -1): ["pg_class", "x", None],
    (INT8, -1): ["9223372036854775807", "-9223372036854775808", None],
    (INT2, -1): ["32767", "-32768", None],
    (INT4, -1): ["2147483647", "-2147483648", None],
    (TEXT, -1): ["héllo ✓", "", None],
    (OID, -1): ["4294967295", "0", None],
    (JSON, -1): ['{"a":   1}', "[]", None],
    (FLOAT4, -1): ["0.1", "-Infinity", None],
    (FLOAT8, -1): ["1.7976931348623157e+308", "-0", None],
    (UNKNOWN, -1): ["?", "", None],
    (BPCHAR, 9): ["ab   ", "abcde", None],
    (VARCHAR, 7): ["abc", "", None],
    (DATE, -1): ["2024-02-29", "0001-01-01", None],
    (TIME, -1): ["04:05:06.789", "24:00:00", None],
    (TIMESTAMP, -1): ["2024-01-02 03:04:05.123456", "0001-01-01 00:00:00", None],
    (TIMESTAMPTZ, -1): ["2024-01-02 08:34:05.5+05:30", "9999-12-31 23:59:59.999999+00", None],
    (INTERVAL, -1): ["1 year 2 mons", "-00:00:01", None],
    (TIMETZ, -1): ["04:05:06+05:30", "00:00:00+00", None],
    (NUMERIC, -1): ["NaN", "1e-20", None],
    (NUMERIC, numeric_typmod(38, 10)): ["1234567890123456789012345678.0123456789", "-0.0000000001", None],
    (NUMERIC, numeric_typmod(38, 0)): ["99999999999999999999999999999999999999", "0", None],
    (NUMERIC, numeric_typmod(3, -2)): ["12300", "-99900", None],
    (NUMERIC, numeric_typmod(2, 5)): ["0.00099", "0.00000", None],
    (UUID, -1): ["a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "00000000-0000-0000-0000-000000000000", None],
    (JSONB, -1): ['{"a": 1}', "null", None],
    (INT4_ARRAY, -1): ["{1,2,NULL}", "{}", None],
    (MONEY, -1): ["-$1,234.56", "$0.00", None],
    # kept as text: captured from PostgreSQL 15 with the daemon's session options
    (22, -1): ["1 2", "", None],  # int2vector
    (24, -1): ["now", "", None],  # regproc
    (27, -1): ["(0,1)", "", None],  # tid
    (28, -1): ["42", "", None],  # xid
    (29, -1): ["3", "", None],  # cid
    (30, -1): ["23 25", "", None],  # oidvector
    (142, -1): ['<a x="1">é</a>', "", None],  # xml
    (600, -1): ["(1.5,-2)", "", None],  # point
    (601, -1): ["[(0,0),(1,1)]", "", None],  # lseg
    (602, -1): ["((0,0),(1,1),(2,0))", "", None],  # path
    (603, -1): ["(1,1),(0,0)", "", None],  # box
    (604, -1): ["((0,0),(1,1),(1,0))", "", None],  # polygon
    (628, -1): ["{1,-1,0}", "", None],  # line
    (650, -1): ["10.1.0.0/16", "", None],  # cidr
    (718, -1): ["<(0,0),2>", "", None],  # circle
    (774, -1): ["08:00:2b:01:02:03:04:05", "", None],  # macaddr8
    (829, -1): ["08:00:2b:01:02:03", "", None],  # macaddr
    (869, -1): ["::1", "", None],  # inet
    (1560, -1): ["1", "", None],  # bit
    (1562, -1): ["101", "", None],  # varbit
    (1790, -1): ["c1", "", None],  # refcursor
    (2202, -1): ["now()", "", None],  # regprocedure
    (2203, -1): ["||/", "", None],  # regoper
    (2204, -1): ["+(integer,integer)", "", None],  # regoperator
    (2205, -1): ["pg_class", "", None],  # regclass
    (2206, -1): ["integer", "", None],  # regtype
    (2970, -1): ["10:20:10,14,15", "", None],  # txid_snapshot
    (3220, -1): ["0/16B3748", "", None],  # pg_lsn
    (3614, -1): ["'a' 'cat':3 'fat'", "", None],  # tsvector
    (3615, -1): ["'fat' & 'rat'", "", None],  # tsquery
    (3734, -1): ["english", "", None],  # regconfig
    (3769, -1): ["simple", "", None],  # regdictionary
    (3904, -1): ["[1,10)", "", None],  # int4range
    (3906, -1): ["(1.5,2.5]", "", None],  # numrange
    (3908, -1): ['["2024-01-01 00:00:00",infinity)', "", None],  # tsrange
    (3910, -1): ['["2023-12-31 22:00:00+00",)', "", None],  # tstzrange
    (3912, -1): ["[2024-01-01,2024-02-01)", "", None],  # daterange
    (3926, -1): ["empty", "", None],  # int8range
    (4072, -1): ['$."a"[*]?(@ > 1)', "", None],  # jsonpath
    (4089, -1): ["pg_catalog", "", None],  # regnamespace
    (4096, -1): ["postgres", "", None],  # regrole
    (4191, -1): ['"C"', "", None],  # regcollation
    (4451, -1): ["{[1,3),[5,7)}", "", None],  # int4multirange
    (4532, -1): ["{}", "", None],  # nummultirange
    (4533, -1): ['{["2024-01-01 00:00:00","2024-01-02 00:00:00")}', "", None],  # tsmultirange
    (4534, -1): ['{(,"2024-01-01 00:00:00+00"]}', "", None],  # tstzmultirange
    (4535, -1): ["{[2024-01-01,2024-01-05)}", "", None],  # datemultirange
    (4536, -1): ["{[1,3)}", "", None],  # int8multirange
    (5038, -1): ["10:20:10,14,15", "", None],  # pg_snapshot
    (5069, -1): ["18446744073709551615", "", None],  # xid8
    (987_654, -1): ["some enum label", "", None],
}


def test_samples_cover_every_registered_element_type() -> None:
    assert {oid for oid, t in TYPES.items() if not t.name.startswith("_")} <= {oid for oid, _ in SAMPLES}


def test_every_arrow_type_is_written_to_delta_and_read_back_equal(tmp_path: Path) -> None:
    columns = {
        f"{pg_type(oid).name.replace(' ', '_')}_{i}": (oid, typmod) for i, (oid, typmod) in enumerate(SAMPLES)
    }
    table = pa.table(
        {name: cast_text(text_array(SAMPLES[key]), *key) for name, key in columns.items()},
        schema=arrow_schema([Column(name, oid, typmod) for name, (oid, typmod) in columns.items()]),
    )
    write_deltalake(str(tmp_path / "t"), table)
    back = DeltaTable(str(tmp_path / "t")).to_pyarrow_table()
    assert back.schema == table.schema
    assert back.to_pylist() == table.to_pylist()
    timestamptz = next(name for name in columns if name.startswith("timestamptz_"))
    assert back.column(timestamptz)[0].as_py() == datetime(2024, 1, 2, 3, 4, 5, 500000, tzinfo=UTC)


# ---- domains -------------------------------------------------------------------------------------


def test_a_domain_column_takes_its_base_type_and_the_domains_modifier() -> None:
    from cdc_replicator.model import TableId, TableSchema
    from cdc_replicator.types import resolve_domains, unresolved_types

    price, posint, mood = 16_500, 16_501, 16_502
    schema = TableSchema(
        TableId("public", "t"),
        (Column("id", posint, -1, True), Column("p", price), Column("m", mood), Column("n", INT8)),
    )
    domains = {price: (NUMERIC, numeric_typmod(12, 2)), posint: (INT4, -1)}
    resolved = resolve_domains(schema, domains)
    assert resolved.columns == (
        Column("id", INT4, -1, True),
        Column("p", NUMERIC, numeric_typmod(12, 2)),
        Column("m", mood),
        Column("n", INT8),
    )
    assert arrow_schema(resolved.columns).field("p").type == pa.decimal128(12, 2)
    assert unresolved_types(schema, domains) == {mood}
    assert resolve_domains(schema, {}) is schema
