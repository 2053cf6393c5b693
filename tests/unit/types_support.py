"""Helpers of the type specifications: type OIDs, and text columns cast through ``cast_text``."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, date, datetime

import pyarrow as pa

from cdc_replicator.types import arrow_type, cast_text

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
