"""Cast a column of PostgreSQL text output to its registry's Arrow type, vectorised. Pure.

:func:`cast_text` is the one entry point for both data paths (COPY csv and pgoutput text tuples):
it checks the text is UTF-8, picks the type's caster from the registry and runs it over the whole
column. A value stored differently by design is reported in ``notes`` (the sink logs it); a value
that cannot be stored at all raises :class:`~cdc_replicator.errors.DecodeError` naming the type and
one offending value, found by bisecting the column. Nothing is silently coerced.
"""

from __future__ import annotations

from typing import Final

import pyarrow as pa
import pyarrow.compute as pc

from cdc_replicator.errors import DecodeError
from cdc_replicator.types.kernels import Caster, Unparsable
from cdc_replicator.types.registry import PgType, pg_type

__all__ = ["cast_text"]

_STRING: Final = pa.string()
_EXAMPLE_CHARS: Final = 60


def cast_text(
    values: pa.Array | pa.ChunkedArray,
    type_oid: int,
    type_modifier: int = -1,
    notes: list[str] | None = None,
) -> pa.Array | pa.ChunkedArray:
    """Cast a column of PostgreSQL text output (``binary`` or ``string``) to ``arrow_type(...)``.

    Nulls stay null; a chunked input gives a chunked output. Raises ``DecodeError`` naming the type
    and one offending value when any value is not valid UTF-8 or cannot be stored at all. Values
    stored differently by design (numeric NaN → NULL, ±infinity and out-of-range dates → the ends
    of Delta's range) are described in ``notes``, one entry per kind, for the caller to report.
    """
    pg = pg_type(type_oid)
    target = pg.arrow_for(type_modifier)
    sink: list[str] = [] if notes is None else notes
    if isinstance(values, pa.ChunkedArray):
        return pa.chunked_array(
            [_cast_array(chunk, pg, target, sink) for chunk in values.chunks], type=target
        )
    return _cast_array(values, pg, target, sink)


def _cast_array(values: pa.Array, pg: PgType, target: pa.DataType, notes: list[str]) -> pa.Array:
    text = _as_text(values, pg)
    if pa.types.is_string(target):
        return text
    try:
        return pg.cast(text, target, notes)
    except (pa.ArrowInvalid, Unparsable) as exc:
        raise _decode_error(text, pg, target) from exc


def _as_text(values: pa.Array, pg: PgType) -> pa.Array:
    kind = values.type
    if pa.types.is_string(kind):
        return values
    if not (
        pa.types.is_binary(kind)
        or pa.types.is_large_binary(kind)
        or pa.types.is_large_string(kind)
        or pa.types.is_binary_view(kind)
        or pa.types.is_string_view(kind)
        or pa.types.is_null(kind)
    ):
        raise TypeError(f"cast_text needs binary or string values, got {kind}")

    def to_string(chunk: pa.Array, target: pa.DataType, _notes: list[str]) -> pa.Array:
        return pc.cast(chunk, target)

    try:
        return to_string(values, _STRING, [])
    except pa.ArrowInvalid as exc:
        bad = _first_failure(values, _STRING, to_string)
        shown = "" if bad is None else f" {_shorten(bad)!r}"
        raise DecodeError(
            f"{pg.name} value{shown} is not valid UTF-8",
            hint="replicate from a database with UTF8 encoding, or set client_encoding to UTF8",
        ) from exc


def _first_failure(values: pa.Array, target: pa.DataType, cast: Caster) -> object:
    """The first value whose cast fails (binary search over zero-copy slices), or None if none does."""

    def fails(lo: int, hi: int) -> bool:
        try:
            cast(values.slice(lo, hi - lo), target, [])
        except (pa.ArrowInvalid, Unparsable):
            return True
        return False

    lo, hi = 0, len(values)
    if hi == 0 or not fails(lo, hi):
        return None
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if fails(lo, mid):
            hi = mid
        elif fails(mid, hi):
            lo = mid
        else:  # the failure needs values from both halves: give no example rather than a wrong one
            return None
    return values[lo].as_py()


def _decode_error(text: pa.Array, pg: PgType, target: pa.DataType) -> DecodeError:
    bad = _first_failure(text, target, pg.cast)
    reason, hint = _explain(bad, target, pg)
    shown = "" if bad is None else f" {_shorten(bad)!r}"
    return DecodeError(f"cannot cast {pg.name} value{shown} to {target}: {reason}", hint=hint)


def _explain(bad: object, target: pa.DataType, pg: PgType) -> tuple[str, str]:
    value = bad if isinstance(bad, str) else ""
    if pg.name == "money":
        return (
            "money is read as printed with lc_monetary=C ($1,234.56)",
            "connect with options '-c lc_monetary=C' (every session of the daemon sets it)",
        )
    temporal = pa.types.is_date(target) or pa.types.is_timestamp(target)
    if pa.types.is_decimal(target) and value.lower() in {"infinity", "-infinity"}:
        return (
            "±Infinity has no decimal representation",
            "change the column to unconstrained numeric (replicated as exact text)",
        )
    if temporal and value[:5].isdigit():
        return f"the year is beyond the range of {target}", "leave the column out of replication"
    if pa.types.is_decimal(target):
        return "it does not fit the column's precision and scale", "check the column's type modifier"
    return (
        "it is not valid PostgreSQL text output for this type or is out of range",
        "check that the session uses DateStyle=ISO, TimeZone=UTC, bytea_output=hex, lc_monetary=C and "
        "that the column's type OID is right",
    )


def _shorten(value: object) -> object:
    if isinstance(value, str) and len(value) > _EXAMPLE_CHARS:
        return value[:_EXAMPLE_CHARS] + "…"
    if isinstance(value, bytes) and len(value) > _EXAMPLE_CHARS:
        return value[:_EXAMPLE_CHARS] + b"..."
    return value
