"""Specification of typemap: PostgreSQL type → Arrow type, and PostgreSQL text output → Arrow values.

Text samples are what a PostgreSQL 15 server prints with DateStyle=ISO, TimeZone=UTC,
extra_float_digits=3, bytea_output=hex, IntervalStyle=postgres (captured with psql).
"""

from __future__ import annotations

import math
import os
import re
import struct
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import pyarrow as pa
import pytest
from deltalake import DeltaTable, write_deltalake

from cdc_replicator.errors import DecodeError
from cdc_replicator.model import Column
from cdc_replicator.typemap import TYPES, PgType, arrow_schema, arrow_type, cast_text, pg_type

BOOL, BYTEA, CHAR, NAME, INT8, INT2, INT4, TEXT, OID, JSON = 16, 17, 18, 19, 20, 21, 23, 25, 26, 114
FLOAT4, FLOAT8, UNKNOWN, BPCHAR, VARCHAR, DATE, TIME = 700, 701, 705, 1042, 1043, 1082, 1083
TIMESTAMP, TIMESTAMPTZ, INTERVAL, TIMETZ, NUMERIC, UUID, JSONB = 1114, 1184, 1186, 1266, 1700, 2950, 3802
INT4_ARRAY, TEXT_ARRAY, JSONB_ARRAY = 1007, 1009, 3807

MONEY = 790
BINARY = pa.binary()
EPOCH = date(1970, 1, 1)
UTC_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def numeric_typmod(precision: int, scale: int) -> int:
    """atttypmod of numeric(precision, scale), as PostgreSQL 15 encodes it (scale is 11-bit signed)."""
    return ((precision << 16) | (scale & 0x7FF)) + 4


def text_array(values: Sequence[str | None], kind: pa.DataType = BINARY) -> pa.Array:
    if pa.types.is_binary(kind):
        return pa.array([None if v is None else v.encode() for v in values], kind)
    return pa.array(values, kind)


def cast(
    values: Sequence[str | None], oid: int, typmod: int = -1, kind: pa.DataType = BINARY
) -> list[object]:
    out = cast_text(text_array(values, kind), oid, typmod)
    out.validate(full=True)
    assert out.type == arrow_type(oid, typmod)
    return list(out.to_pylist())


def raw_ints(values: Sequence[str | None], oid: int) -> list[int | None]:
    """Cast, then read the physical integers (days / microseconds): Python dates stop at year 9999."""
    out = cast_text(text_array(values), oid)
    out.validate(full=True)
    physical = pa.int32() if pa.types.is_date32(out.type) else pa.int64()
    return list(out.view(physical).to_pylist())


@pytest.fixture(params=[pa.binary(), pa.string()], ids=["binary", "string"])
def kind(request: pytest.FixtureRequest) -> pa.DataType:
    """Both encodings the batching layer may hand over."""
    return request.param


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


# ---- integers ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("oid", "low", "high"),
    [
        (INT2, -(2**15), 2**15 - 1),
        (INT4, -(2**31), 2**31 - 1),
        (INT8, -(2**63), 2**63 - 1),
        (OID, 0, 2**32 - 1),
    ],
)
def test_integers_cast_across_their_full_range(oid: int, low: int, high: int, kind: pa.DataType) -> None:
    texts = [str(low), "-1", "0", None, "42", str(high)]
    assert cast(texts, oid, kind=kind) == [low, -1, 0, None, 42, high]


@pytest.mark.parametrize(
    ("oid", "text"), [(INT2, "32768"), (INT4, "-2147483649"), (INT8, "9223372036854775808")]
)
def test_integer_out_of_range_raises_decode_error_naming_type_and_value(oid: int, text: str) -> None:
    with pytest.raises(DecodeError) as info:
        cast(["1", text, "2"], oid)
    assert TYPES[oid].name in str(info.value)
    assert repr(text) in str(info.value)


@pytest.mark.parametrize("text", ["0x10", "0X1F", "1.5", "", " 7", "seven"])
def test_integer_text_postgres_never_prints_is_refused(text: str) -> None:
    # Arrow alone would read "0x10" as 16.
    with pytest.raises(DecodeError, match="int4"):
        cast([text], INT4)


# ---- floats --------------------------------------------------------------------------------------


def test_float8_reads_shortest_round_trip_text_exactly(kind: pa.DataType) -> None:
    texts = [
        "0.1",
        "-1.5",
        "1.7976931348623157e+308",
        "5e-324",
        "2.2250738585072014e-308",
        "123456789012345680",
    ]
    assert cast([*texts, None], FLOAT8, kind=kind) == [float(t) for t in texts] + [None]


def test_float4_reads_to_the_nearest_float32() -> None:
    texts = ["0.1", "1.5", "3.4028235e+38", "1e-45", "-16777217"]
    as_float32 = [struct.unpack("f", struct.pack("f", float(t)))[0] for t in texts]
    assert cast(texts, FLOAT4) == as_float32


@pytest.mark.parametrize("oid", [FLOAT4, FLOAT8])
def test_float_nan_and_infinities_round_trip(oid: int, kind: pa.DataType) -> None:
    nan, inf, minus_inf, minus_zero, null = cast(["NaN", "Infinity", "-Infinity", "-0", None], oid, kind=kind)
    assert isinstance(nan, float) and math.isnan(nan)
    assert inf == math.inf
    assert minus_inf == -math.inf
    assert minus_zero == 0.0 and math.copysign(1.0, float(str(minus_zero))) == -1.0
    assert null is None


def test_float_garbage_raises_decode_error() -> None:
    with pytest.raises(DecodeError, match=r"float8 value '1,5'"):
        cast(["1.5", "1,5"], FLOAT8)


# ---- numeric -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("precision", "scale", "expected"),
    [
        (10, 4, pa.decimal128(10, 4)),
        (1, 0, pa.decimal128(1, 0)),
        (38, 0, pa.decimal128(38, 0)),
        (38, 38, pa.decimal128(38, 38)),
        (39, 0, pa.string()),
        (1000, 0, pa.string()),
        (3, -2, pa.decimal128(5, 0)),  # holds multiples of 100 up to 99900
        (37, -2, pa.string()),  # 39 integer digits
        (2, 5, pa.decimal128(5, 5)),  # holds up to 0.00099
    ],
)
def test_numeric_type_modifier_gives_decimal128_up_to_38_digits_else_string(
    precision: int, scale: int, expected: pa.DataType
) -> None:
    assert arrow_type(NUMERIC, numeric_typmod(precision, scale)) == expected


def test_numeric_type_modifiers_reported_by_postgres_15_decode() -> None:
    # pg_attribute.atttypmod of numeric(38,10), numeric(3,-2), numeric(5,5), numeric(1000,0), numeric
    assert arrow_type(NUMERIC, 2490382) == pa.decimal128(38, 10)
    assert arrow_type(NUMERIC, 198658) == pa.decimal128(5, 0)
    assert arrow_type(NUMERIC, 327689) == pa.decimal128(5, 5)
    assert arrow_type(NUMERIC, 65536004) == pa.string()
    assert arrow_type(NUMERIC, -1) == pa.string()


def test_numeric_with_precision_and_scale_becomes_exact_decimals(kind: pa.DataType) -> None:
    texts = ["1.5000", "-0.0010", "0.0001", "0.0000", "-999999.9999", "999999.9999", None]
    expected = [Decimal(t) if t is not None else None for t in texts]
    assert cast(texts, NUMERIC, numeric_typmod(10, 4), kind=kind) == expected


@pytest.mark.parametrize(
    ("precision", "scale", "text"),
    [
        (38, 0, "99999999999999999999999999999999999999"),
        (38, 0, "-99999999999999999999999999999999999999"),
        (38, 10, "1234567890123456789012345678.0123456789"),
        (38, 38, "0.00000000000000000000000000000000000001"),
        (38, 38, "-0.12345678901234567890123456789012345678"),
    ],
)
def test_numeric_at_maximum_precision_38_is_exact(precision: int, scale: int, text: str) -> None:
    assert cast([text], NUMERIC, numeric_typmod(precision, scale)) == [Decimal(text)]


def test_numeric_with_negative_scale_keeps_its_integer_values() -> None:
    assert cast(["12300", "-99900", "0"], NUMERIC, numeric_typmod(3, -2)) == [
        Decimal(12300),
        Decimal(-99900),
        Decimal(0),
    ]


def test_numeric_with_scale_above_precision_keeps_its_small_values() -> None:
    assert cast(["0.00099", "-0.00001"], NUMERIC, numeric_typmod(2, 5)) == [
        Decimal("0.00099"),
        Decimal("-0.00001"),
    ]


def test_numeric_nan_in_a_decimal_column_is_stored_as_null_and_said() -> None:
    notes: list[str] = []
    out = cast_text(text_array(["1.5", None, "NaN", "NaN"]), NUMERIC, numeric_typmod(10, 2), notes)
    assert out.to_pylist() == [Decimal("1.50"), None, None, None]
    assert notes == ["2 NaN value(s) stored as NULL (a decimal has no NaN)"]


@pytest.mark.parametrize("text", ["Infinity", "-Infinity"])
def test_numeric_infinity_in_a_decimal_column_raises(text: str) -> None:
    # PostgreSQL refuses infinity in numeric(p,s); should one arrive anyway, nothing is made up
    with pytest.raises(DecodeError) as info:
        cast(["1.5", None, text], NUMERIC, numeric_typmod(10, 2))
    message = str(info.value)
    assert "numeric" in message and repr(text) in message
    assert "no decimal representation" in message
    assert info.value.retryable is False


def test_money_printed_with_lc_monetary_c_becomes_an_exact_decimal(kind: pa.DataType) -> None:
    texts = ["$0.00", "-$1,234,567.89", "$92,233,720,368,547,758.07", "-$92,233,720,368,547,758.08", None]
    assert cast(texts, MONEY, kind=kind) == [
        Decimal("0.00"),
        Decimal("-1234567.89"),
        Decimal("92233720368547758.07"),
        Decimal("-92233720368547758.08"),
        None,
    ]


@pytest.mark.parametrize("text", ["1.00", "€1,00", "$1.5", "($1.00)"])
def test_money_in_another_locale_raises_naming_the_setting(text: str) -> None:
    with pytest.raises(DecodeError, match=r"money value .*lc_monetary=C"):
        cast(["$1.00", text], MONEY)


@pytest.mark.parametrize("text", ["1.001", "1234567890.5"])
def test_numeric_that_does_not_fit_the_decimal_raises_instead_of_rounding(text: str) -> None:
    with pytest.raises(DecodeError, match="numeric"):
        cast([text], NUMERIC, numeric_typmod(10, 2))


def test_unconstrained_numeric_keeps_its_exact_text_including_special_values(kind: pa.DataType) -> None:
    huge = "9" * 1000 + "." + "0" * 30 + "1"
    texts = [
        "NaN",
        "Infinity",
        "-Infinity",
        "100000000000000000000",
        "0.000000000000000000000000000000000000000001",
    ]
    assert cast([*texts, huge, None], NUMERIC, kind=kind) == [*texts, huge, None]


def test_numeric_wider_than_38_digits_keeps_its_exact_text() -> None:
    text = "1" * 39
    assert cast([text, "NaN"], NUMERIC, numeric_typmod(39, 0)) == [text, "NaN"]


# ---- bool ----------------------------------------------------------------------------------------


def test_bool_reads_t_and_f(kind: pa.DataType) -> None:
    assert cast(["t", "f", None, "t"], BOOL, kind=kind) == [True, False, None, True]


@pytest.mark.parametrize("text", ["true", "T", "1", ""])
def test_bool_text_other_than_t_or_f_raises(text: str) -> None:
    with pytest.raises(DecodeError, match=re.escape(f"bool value {text!r}")):
        cast(["t", text], BOOL)


# ---- text-like types -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("oid", "texts"),
    [
        (TEXT, ["plain", "héllo wörld ✓ 😀", "line\nbreak\ttab", "back\\slash", "'quoted' \"double\""]),
        (VARCHAR, ["abc", "x"]),
        (BPCHAR, ["ab   ", "abcde"]),  # char(5) as PostgreSQL prints it: padded
        (NAME, ["pg_catalog"]),
        (CHAR, ["a"]),
        (UNKNOWN, ["whatever"]),
        (UUID, ["a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "00000000-0000-0000-0000-000000000000"]),
        (JSON, ['{"a":   1}', '[1, "two", null]']),  # json keeps the input's spacing
        (JSONB, ['{"a": 1, "b": [true, null]}', '"ünïcode"']),
        (TIME, ["04:05:06.789", "00:00:00", "24:00:00"]),
        (TIMETZ, ["04:05:06+05:30", "23:59:59.999999-03"]),
        (INTERVAL, ["1 year 2 mons 3 days 04:05:06.5", "-00:00:01", "00:00:00"]),
        (INT4_ARRAY, ["{1,2,NULL}", "{{1,2},{3,4}}", "{}"]),
        (TEXT_ARRAY, ['{"a b",c,"\\"q\\""}']),
    ],
)
def test_text_like_types_keep_postgres_text_exactly(oid: int, texts: list[str], kind: pa.DataType) -> None:
    assert cast([*texts, None], oid, kind=kind) == [*texts, None]


def test_empty_string_and_null_stay_distinct(kind: pa.DataType) -> None:
    assert cast(["", None, ""], TEXT, kind=kind) == ["", None, ""]


def test_one_megabyte_text_is_kept_whole() -> None:
    big = "ä" + "x" * (1 << 20) + "✓"
    assert cast([big, "small"], TEXT) == [big, "small"]


def test_invalid_utf8_raises_decode_error_with_the_bytes() -> None:
    with pytest.raises(DecodeError) as info:
        cast_text(pa.array([b"ok", b"caf\xe9"], pa.binary()), TEXT)
    assert "text value b'caf\\xe9' is not valid UTF-8" in str(info.value)
    assert "UTF8" in info.value.hint


# ---- bytea ---------------------------------------------------------------------------------------


def test_bytea_hex_text_becomes_the_bytes(kind: pa.DataType) -> None:
    texts = ["\\x00ff7f", "\\x", None, "\\x68656c6c6f", "\\x00"]
    assert cast(texts, BYTEA, kind=kind) == [b"\x00\xff\x7f", b"", None, b"hello", b"\x00"]


def test_bytea_empty_value_is_not_null() -> None:
    assert cast(["\\x", None], BYTEA) == [b"", None]


def test_bytea_of_one_megabyte_round_trips() -> None:
    payload = os.urandom(1 << 20)
    assert cast(["\\x" + payload.hex(), None, "\\x01"], BYTEA) == [payload, None, b"\x01"]


def test_bytea_from_a_sliced_chunk_uses_only_its_own_values() -> None:
    whole = text_array(["\\x01", None, "\\x0203", "\\x", "\\x04"])
    out = cast_text(whole.slice(1, 3), BYTEA)
    out.validate(full=True)
    assert out.to_pylist() == [None, b"\x02\x03", b""]


@pytest.mark.parametrize("offset", range(10))
def test_bytea_nulls_stay_in_place_at_any_slice_offset(offset: int) -> None:
    texts = [None if i % 3 == 0 else "\\x" + bytes([i, 255 - i]).hex() for i in range(40)]
    out = cast_text(text_array(texts).slice(offset), BYTEA)
    out.validate(full=True)
    assert out.to_pylist() == [None if t is None else bytes.fromhex(t[2:]) for t in texts[offset:]]


def test_bytea_with_a_backslash_inside_raises() -> None:
    with pytest.raises(DecodeError, match="bytea value"):
        cast(["\\x0\\", "\\x01", "\\x00\\x1"], BYTEA)


def test_bytea_of_only_nulls_and_no_values() -> None:
    assert cast([None, None], BYTEA) == [None, None]
    assert cast([], BYTEA) == []


@pytest.mark.parametrize("text", ["00ff", "\\x0", "\\xzz", "\\000", "\\x12 34"])
def test_bytea_text_that_is_not_hex_output_raises(text: str) -> None:
    with pytest.raises(DecodeError, match=r"bytea value"):
        cast(["\\x01", text], BYTEA)


# ---- date ----------------------------------------------------------------------------------------


def test_date_reads_iso_dates(kind: pa.DataType) -> None:
    texts = ["2024-02-29", "1970-01-01", "0001-01-01", "9999-12-31", "1899-12-31", None]
    assert cast(texts, DATE, kind=kind) == [date.fromisoformat(t) if t else None for t in texts]


LAST_DAY = (date(9999, 12, 31) - EPOCH).days
FIRST_DAY = (date(1, 1, 1) - EPOCH).days
LAST_MICRO = (LAST_DAY + 1) * 86_400_000_000 - 1
FIRST_MICRO = FIRST_DAY * 86_400_000_000


def test_date_outside_deltas_range_is_stored_as_its_nearest_end_and_said() -> None:
    # delta-rs cannot read back a table whose file statistics hold such a date; 5874897-12-31 is
    # PostgreSQL's last date, 4713-01-01 BC its first
    notes: list[str] = []
    out = cast_text(
        text_array(["10000-01-01", None, "5874897-12-31", "2000-01-01", "4713-01-01 BC"]), DATE, notes=notes
    )
    assert out.view(pa.int32()).to_pylist() == [
        LAST_DAY,
        None,
        LAST_DAY,
        (date(2000, 1, 1) - EPOCH).days,
        FIRST_DAY,
    ]
    assert notes == ["3 date(s) outside 0001-01-01..9999-12-31 stored as the nearest end of that range"]


def test_date_infinity_is_stored_as_the_ends_of_deltas_range_and_said() -> None:
    notes: list[str] = []
    out = cast_text(text_array(["infinity", "2024-01-01", "-infinity", None]), DATE, notes=notes)
    assert out.to_pylist() == [date(9999, 12, 31), date(2024, 1, 1), date(1, 1, 1), None]
    assert notes == ["2 ±infinity value(s) stored as the end of Delta's range (9999-12-31 / 0001-01-01)"]


def test_date_general_parser_agrees_with_the_calendar_for_every_era() -> None:
    # A 5-digit year makes Arrow's parser refuse the chunk, so all of it goes through our own.
    days = list(range((date(1, 1, 1) - EPOCH).days, (date(9999, 12, 31) - EPOCH).days, 37))
    days += [
        (date(y, m, d) - EPOCH).days
        for y, m, d in [(1600, 2, 29), (2000, 2, 29), (1900, 3, 1), (2400, 2, 29)]
    ]
    texts = [(EPOCH + timedelta(days=n)).isoformat() for n in days]
    assert raw_ints([*texts, "10000-01-01"], DATE)[:-1] == days


@pytest.mark.parametrize("text", ["2023-02-29", "1900-02-29", "2024-13-01", "2024-04-31", "2024-00-10"])
def test_date_that_is_not_in_the_calendar_raises_on_both_parsers(text: str) -> None:
    with pytest.raises(DecodeError, match="date"):
        cast([text], DATE)
    with pytest.raises(DecodeError, match="date"):
        cast([text, "10000-01-01"], DATE)


def test_timestamps_outside_deltas_range_are_stored_as_its_nearest_end_so_order_holds() -> None:
    # exact values past 9999 would sort after infinity (stored as 9999-12-31 23:59:59.999999)
    notes: list[str] = []
    texts = [
        "10000-01-01 00:00:00.000001",
        "0044-03-15 12:00:00.5 BC",
        "294276-12-31 23:59:59.999999",
        "infinity",
    ]
    out = cast_text(text_array(texts), TIMESTAMP, notes=notes)
    assert out.view(pa.int64()).to_pylist() == [LAST_MICRO, FIRST_MICRO, LAST_MICRO, LAST_MICRO]
    assert notes[0] == "3 timestamp(s) outside 0001-01-01..9999-12-31 stored as the nearest end of that range"


# ---- timestamp -----------------------------------------------------------------------------------


def test_timestamp_reads_naive_timestamps_to_the_microsecond(kind: pa.DataType) -> None:
    texts = [
        "2024-01-02 03:04:05.123456",
        "2024-01-02 03:04:05",
        "2024-01-02 03:04:05.5",
        "2024-01-02 03:04:05.000001",
        "0001-01-01 00:00:00",
        "9999-12-31 23:59:59.999999",
        "1969-12-31 23:59:59.999999",
    ]
    assert cast([*texts, None], TIMESTAMP, kind=kind) == [datetime.fromisoformat(t) for t in texts] + [None]


def test_timestamp_infinity_is_stored_as_the_ends_of_deltas_range_and_said() -> None:
    notes: list[str] = []
    out = cast_text(text_array(["-infinity", "2024-01-02 03:04:05", "infinity"]), TIMESTAMP, notes=notes)
    assert out.view(pa.int64()).to_pylist() == [FIRST_MICRO, 1_704_164_645_000_000, LAST_MICRO]
    assert notes == [
        "2 ±infinity value(s) stored as the end of Delta's range (9999-12-31 23:59:59.999999 / 0001-01-01)"
    ]


@pytest.mark.parametrize("text", ["2024-01-02 03:04:05+00", "2024-01-02 25:00:00"])
def test_timestamp_text_it_cannot_represent_raises(text: str) -> None:
    with pytest.raises(DecodeError, match=re.escape(f"timestamp value {text!r}")):
        cast(["2024-01-02 03:04:05", text], TIMESTAMP)


# ---- timestamptz ---------------------------------------------------------------------------------


def test_timestamptz_in_utc_reads_to_the_microsecond(kind: pa.DataType) -> None:
    texts = ["2024-01-01 21:34:05.123456+00", "0001-01-01 00:00:00+00", "9999-12-31 23:59:59.999999+00"]
    expected = [datetime.fromisoformat(t.replace("+00", "+00:00")) for t in texts]
    assert cast([*texts, None], TIMESTAMPTZ, kind=kind) == [*expected, None]


def test_timestamptz_with_other_offsets_is_converted_to_utc(kind: pa.DataType) -> None:
    texts = [
        "2024-01-02 08:34:05.5+05:30",
        "2024-01-02 00:04:05.5-03",
        "2024-01-02 00:04:05.000001-03:30",
        "2024-01-01 12:00:00+14",
    ]
    assert cast(texts, TIMESTAMPTZ, kind=kind) == [
        datetime(2024, 1, 2, 3, 4, 5, 500000, tzinfo=UTC),
        datetime(2024, 1, 2, 3, 4, 5, 500000, tzinfo=UTC),
        datetime(2024, 1, 2, 3, 34, 5, 1, tzinfo=UTC),
        datetime(2023, 12, 31, 22, 0, 0, tzinfo=UTC),
    ]


def test_timestamptz_with_a_local_mean_time_offset_in_seconds_is_converted_to_utc() -> None:
    # TimeZone=Asia/Kolkata prints 1900 with the city's local mean time, +05:21:10.
    assert cast(["1900-01-01 05:21:10+05:21:10", "1900-01-01 00:19:32.25+00:19:32", None], TIMESTAMPTZ) == [
        datetime(1900, 1, 1, tzinfo=UTC),
        datetime(1900, 1, 1, 0, 0, 0, 250000, tzinfo=UTC),
        None,
    ]


def test_timestamptz_general_parser_agrees_with_python_for_many_offsets() -> None:
    offsets = [timedelta(hours=h, minutes=m) for h in range(-12, 15) for m in (0, 30, 45)]
    texts, expected = [], []
    for i in range(4000):
        instant = datetime(1, 1, 2, tzinfo=UTC) + timedelta(days=900 * i, microseconds=7_919 * i)
        offset = offsets[i % len(offsets)]
        local = instant.astimezone(timezone(offset))
        minutes_east = int(offset.total_seconds()) // 60
        hours, minutes = divmod(abs(minutes_east), 60)
        zone = ("-" if minutes_east < 0 else "+") + f"{hours:02d}" + (f":{minutes:02d}" if minutes else "")
        fraction = f".{local.microsecond:06d}".rstrip("0") if local.microsecond else ""
        texts.append(
            f"{local.year:04d}-{local.month:02d}-{local.day:02d} "
            f"{local.hour:02d}:{local.minute:02d}:{local.second:02d}{fraction}{zone}"
        )
        expected.append(instant)
    assert cast(texts, TIMESTAMPTZ) == expected  # Arrow's own parser
    # A seconds offset makes Arrow's parser refuse the chunk, so all of it goes through our own.
    assert cast([*texts, "1900-01-01 05:21:10+05:21:10"], TIMESTAMPTZ)[:-1] == expected


@pytest.mark.parametrize(
    "text",
    ["2024-01-02 03:04:05", "2024-01-02 03:04:05+5", "2024-01-02 03:04:05+00 AD"],
)
def test_timestamptz_text_it_cannot_represent_raises(text: str) -> None:
    with pytest.raises(DecodeError, match=re.escape(f"timestamptz value {text!r}")):
        cast(["2024-01-02 03:04:05+00", text], TIMESTAMPTZ)


def test_timestamptz_infinity_and_bc_read_in_utc() -> None:
    assert raw_ints(["infinity", "0001-12-31 23:00:00-01 BC", "-infinity"], TIMESTAMPTZ) == [
        LAST_MICRO,
        FIRST_MICRO,
        FIRST_MICRO,
    ]


# ---- arrays of values ----------------------------------------------------------------------------


def test_chunked_input_gives_chunked_output_of_the_same_shape() -> None:
    chunks = pa.chunked_array([text_array(["1", None]), text_array([]), text_array(["3"])], pa.binary())
    out = cast_text(chunks, INT8)
    assert isinstance(out, pa.ChunkedArray)
    assert out.type == pa.int64()
    assert [len(c) for c in out.chunks] == [2, 0, 1]
    assert out.to_pylist() == [1, None, 3]


def test_chunked_input_without_chunks_gives_an_empty_column() -> None:
    out = cast_text(pa.chunked_array([], pa.string()), TIMESTAMPTZ)
    assert out.type == pa.timestamp("us", tz="UTC")
    assert len(out) == 0


@pytest.mark.parametrize("kind", [pa.large_binary(), pa.large_string(), pa.binary_view(), pa.string_view()])
def test_large_and_view_text_arrays_are_accepted(kind: pa.DataType) -> None:
    values = pa.array(["\\x0102", None], pa.string()).cast(kind)
    assert cast_text(values, BYTEA).to_pylist() == [b"\x01\x02", None]


def test_an_all_null_column_of_null_type_casts_to_nulls() -> None:
    assert cast_text(pa.nulls(2), DATE).to_pylist() == [None, None]


def test_a_non_text_array_is_a_programming_error() -> None:
    with pytest.raises(TypeError, match="binary or string"):
        cast_text(pa.array([1, 2]), INT4)


def test_decode_error_shows_the_first_bad_value_and_shortens_long_ones() -> None:
    values = ["1"] * 1000 + ["bad" * 100, "worse"]
    with pytest.raises(DecodeError) as info:
        cast(values, INT4)
    message = str(info.value)
    assert "int4 value 'badbad" in message and "…" in message and "worse" not in message
    assert len(message.splitlines()[0]) < 200


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
    from cdc_replicator.typemap import resolve_domains, unresolved_types

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
