"""Specification of the text casts: PostgreSQL text output of numbers, bool, text and bytea → Arrow values.

Text samples are what a PostgreSQL 15 server prints with DateStyle=ISO, TimeZone=UTC,
extra_float_digits=3, bytea_output=hex, IntervalStyle=postgres (captured with psql).
"""

from __future__ import annotations

import math
import os
import re
import struct
from decimal import Decimal

import pyarrow as pa
import pytest

from cdc_replicator.errors import DecodeError
from cdc_replicator.types import TYPES, arrow_type, cast_text
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
    MONEY,
    NAME,
    NUMERIC,
    OID,
    TEXT,
    TEXT_ARRAY,
    TIME,
    TIMESTAMPTZ,
    TIMETZ,
    UNKNOWN,
    UUID,
    VARCHAR,
    cast,
    numeric_typmod,
    text_array,
)


@pytest.fixture(params=[pa.binary(), pa.string()], ids=["binary", "string"])
def kind(request: pytest.FixtureRequest) -> pa.DataType:
    """Both encodings the batching layer may hand over."""
    return request.param


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
