"""Map PostgreSQL types to Delta-compatible Arrow types and cast PostgreSQL text output to them, vectorised.

Both data paths (COPY csv and pgoutput text tuples) deliver a column as PostgreSQL's *text output*
of a session running with ``DateStyle=ISO``, ``TimeZone=UTC``, ``extra_float_digits=3``,
``bytea_output=hex``, ``IntervalStyle=postgres`` and ``lc_monetary=C``. This module is the one registry (``TYPES``,
one :class:`PgType` entry per type OID) that says which Arrow type a column becomes and how its
text is cast, with ``pyarrow.compute`` kernels over whole arrays. Pure: no I/O.

The README's "Type map" lists every type with its Delta type and the choices made where Delta has
no exact equivalent; in short: integers, floats, bool, bytea, date and timestamps map to their
Arrow types; numeric(p,s) up to 38 digits and money to decimal128 (numeric NaN → NULL); everything
else — unconstrained numeric, time, interval, uuid, json, network, range, geometric and extension
types, enums, composites and arrays of anything — keeps its exact text. Domains take their base type
(``resolve_domains``). Dates and timestamps follow Delta's range 0001-01-01..9999-12-31: ±infinity
and every value outside it (BC, after 9999) become the nearest end of it.

A value stored differently by design is reported in ``notes`` (the sink logs it); a value that cannot
be stored at all raises :class:`~cdc_replicator.errors.DecodeError` naming the type and one offending
value. Nothing is silently coerced.
"""

from __future__ import annotations

import binascii
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final

import pyarrow as pa
import pyarrow.compute as pc

from cdc_replicator.errors import DecodeError
from cdc_replicator.model import Column, TableSchema

__all__ = [
    "TYPES",
    "PgType",
    "arrow_schema",
    "arrow_type",
    "cast_text",
    "pg_type",
    "resolve_domains",
    "unresolved_types",
]

# A cast takes valid UTF-8 text (Arrow ``string``, nulls allowed), the target type and a list to which
# it appends a note for every kind of value it had to store differently (documented, never silent);
# it returns an array of exactly the target type, or raises ``pa.ArrowInvalid`` / ``_Unparsable`` when
# some value cannot be stored at all.
Caster = Callable[[pa.Array, pa.DataType, list[str]], pa.Array]

_VARHDRSZ: Final = 4
_MAX_DECIMAL128_DIGITS: Final = 38
_EXAMPLE_CHARS: Final = 60


class _Unparsable(Exception):
    """Raised inside a caster when some value is not valid text for the type (no details needed)."""


@dataclass(frozen=True, slots=True)
class PgType:
    """One PostgreSQL type: the Arrow type Delta stores it as, and how its text output is cast.

    ``arrow`` is the type for an unconstrained column (type modifier -1); ``modifier``, when set,
    computes the type from ``atttypmod`` instead (e.g. numeric precision and scale). A target of
    Arrow ``string`` always keeps the text exactly, whatever ``cast`` does for other targets.
    ``array_oid`` registers the type's array (``_name``) too, as text.
    """

    oid: int
    name: str
    arrow: pa.DataType
    cast: Caster = field(repr=False, compare=False)
    array_oid: int = 0
    modifier: Callable[[int], pa.DataType] | None = field(default=None, repr=False, compare=False)
    note: str = ""

    def arrow_for(self, type_modifier: int = -1) -> pa.DataType:
        """The Arrow type of a column of this type with ``type_modifier`` (``atttypmod``)."""
        return self.arrow if self.modifier is None else self.modifier(type_modifier)


# ---- casters -------------------------------------------------------------------------------------


def _keep_text(text: pa.Array, target: pa.DataType, notes: list[str]) -> pa.Array:
    return text


def _any(mask: pa.Array) -> bool:
    """True when some non-null entry of a boolean array is true (empty / all-null → False)."""
    return pc.any(mask).as_py() is True


def _count(mask: pa.Array) -> int:
    """How many entries of a boolean array are true."""
    return int(pc.sum(pc.cast(mask, pa.int64())).as_py() or 0)


def _cast_int(text: pa.Array, target: pa.DataType, notes: list[str]) -> pa.Array:
    # Arrow's integer parser reads a leading "0x"/"0X" as hex ("0xffffffffffffffff" → -1 as int64);
    # PostgreSQL never prints hex, so refuse it. (starts_with is ~20x cheaper than a case-insensitive
    # match_substring, which runs a regex.)
    if _any(pc.or_(pc.starts_with(text, "0x"), pc.starts_with(text, "0X"))):
        raise _Unparsable
    return pc.cast(text, target)


def _cast_float(text: pa.Array, target: pa.DataType, notes: list[str]) -> pa.Array:
    # Arrow parses NaN / Infinity / -Infinity (case-insensitively) and rounds to the target width.
    return pc.cast(text, target)


def _cast_bool(text: pa.Array, target: pa.DataType, notes: list[str]) -> pa.Array:
    is_true = pc.equal(text, "t")
    if _any(pc.invert(pc.or_(is_true, pc.equal(text, "f")))):
        raise _Unparsable
    return is_true


def _cast_decimal(text: pa.Array, target: pa.DataType, notes: list[str]) -> pa.Array:
    # A numeric(p,s) column may hold NaN (never ±Infinity: PostgreSQL refuses those there); a
    # decimal cannot. NaN is stored as NULL and noted. Arrow raises on anything else it cannot
    # parse, on too many digits and on a rescale that would lose digits.
    nan = pc.equal(text, "NaN")
    if _any(nan):
        notes.append(f"{_count(nan)} NaN value(s) stored as NULL (a decimal has no NaN)")
        text = pc.if_else(nan, pa.scalar(None, pa.string()), text)
    return pc.cast(text, target)


def _cast_money(text: pa.Array, target: pa.DataType, notes: list[str]) -> pa.Array:
    """``-$1,234.56`` (lc_monetary=C, which every session of the daemon sets) → decimal(19,2)."""
    if _any(pc.invert(pc.match_substring_regex(text, r"^-?\$[0-9,]+\.[0-9]{2}$"))):
        raise _Unparsable
    plain = pc.replace_substring(pc.replace_substring(text, "$", ""), ",", "")
    return pc.cast(plain, target)


def _cast_bytea(text: pa.Array, target: pa.DataType, notes: list[str]) -> pa.Array:
    """``\\x`` + hex → binary: drop every value's prefix, then unhexlify all digits in one call."""
    n = len(text)
    filled = text.fill_null("\\x") if text.null_count else text
    if _any(pc.invert(pc.starts_with(filled, "\\x"))):
        raise _Unparsable
    lengths = pc.binary_length(filled)
    if _any(pc.not_equal(pc.bit_wise_and(lengths, 1), 0)):
        raise _Unparsable
    # The values lie back to back in the data buffer, between the first and the last offset.
    _, offsets_buf, data_buf = filled.buffers()
    offsets = pa.Array.from_buffers(pa.int32(), n + 1, [None, offsets_buf], offset=filled.offset)
    start, end = offsets[0].as_py(), offsets[-1].as_py()
    joined = memoryview(data_buf)[start:end].tobytes() if data_buf is not None else b""
    # Delete every backslash and "x" (a byte-table pass, ~3x faster than replace(b"\\x", b"")). Each
    # value starts with one of each, so deleting exactly 2n bytes means there were no others.
    digits = joined.translate(None, b"\\x")
    if len(digits) != len(joined) - 2 * n:
        raise _Unparsable
    try:
        raw = binascii.unhexlify(digits)
    except binascii.Error as exc:
        raise _Unparsable from exc
    sizes = pc.cumulative_sum(pc.divide(pc.subtract(lengths, 2), 2))
    new_offsets = pa.concat_arrays([pa.array([0], pa.int32()), pc.cast(sizes, pa.int32())])
    validity = pc.is_valid(text).buffers()[1] if text.null_count else None
    return pa.Array.from_buffers(
        target, n, [validity, new_offsets.buffers()[1], pa.py_buffer(raw)], null_count=text.null_count
    )


def _cast_date(text: pa.Array, target: pa.DataType, notes: list[str]) -> pa.Array:
    try:  # fast path: Arrow's parser reads 4-digit years, all inside Delta's range
        return pc.cast(text, target)
    except pa.ArrowInvalid:
        return _parse_temporal(text, target, notes)


def _cast_timestamp(text: pa.Array, target: pa.DataType, notes: list[str]) -> pa.Array:
    try:  # fast path: 4-digit years, offsets of whole minutes
        return pc.cast(text, target)
    except pa.ArrowInvalid:
        return _parse_temporal(text, target, notes)


# ---- the general date/timestamp parser: infinity, BC, years past 9999, offsets with seconds ------

_DATE_PART: Final = r"^(?P<year>\d{4,7})-(?P<month>\d\d)-(?P<day>\d\d)"
_TIME_PART: Final = r" (?P<hour>\d\d):(?P<minute>\d\d):(?P<second>\d\d)(?:\.(?P<fraction>\d{1,6}))?"
_OFFSET_PART: Final = r"(?P<sign>[+-])(?P<oh>\d\d)(?::(?P<om>\d\d))?(?::(?P<os>\d\d))?"
_ERA_PART: Final = r"(?P<bc> BC)?$"
_DATE_RE: Final = _DATE_PART + _ERA_PART
_TIMESTAMP_RE: Final = _DATE_PART + _TIME_PART + _ERA_PART
_TIMESTAMPTZ_RE: Final = _DATE_PART + _TIME_PART + _OFFSET_PART + _ERA_PART
_DAYS_IN_MONTH: Final = pa.array([0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31], pa.int64())
_MICROS_PER_DAY: Final = 86_400_000_000
_MICROS_PER_SECOND: Final = 1_000_000
# Delta's range (its protocol's, and the one readers parse in file statistics): 0001-01-01 to
# 9999-12-31 23:59:59.999999. ±infinity become its ends.
DATE_MIN_DAYS: Final = -719_162  # 0001-01-01
DATE_MAX_DAYS: Final = 2_932_896  # 9999-12-31
TIMESTAMP_MIN_MICROS: Final = DATE_MIN_DAYS * _MICROS_PER_DAY
TIMESTAMP_MAX_MICROS: Final = (DATE_MAX_DAYS + 1) * _MICROS_PER_DAY - 1
_PLACEHOLDER: Final = {
    "date": "1970-01-01",
    "timestamp": "1970-01-01 00:00:00",
    "timestamptz": "1970-01-01 00:00:00+00",
}


def _parse_temporal(text: pa.Array, target: pa.DataType, notes: list[str]) -> pa.Array:
    """Parse ISO date/timestamp text by its fields: any 4- to 7-digit year, BC, any UTC offset.

    Slower than Arrow's own parser (one regex per value), so only used when that one refuses a
    chunk. Validates every field. ``infinity``/``-infinity`` and every value outside Delta's range
    0001-01-01..9999-12-31 (BC, proleptic Gregorian with 1 BC = year 0, or after 9999) become the
    nearest end of that range, and are noted: one rule, so that ordering holds (an exact year-10000
    value would sort after ``infinity``), and delta-rs's reader cannot parse dates outside it in the
    file statistics.
    """
    if pa.types.is_date(target):
        kind, pattern = "date", _DATE_RE
    elif target.tz is None:
        kind, pattern = "timestamp", _TIMESTAMP_RE
    else:
        kind, pattern = "timestamptz", _TIMESTAMPTZ_RE
    plus, minus = pc.equal(text, "infinity"), pc.equal(text, "-infinity")
    infinite = pc.or_(plus, minus)
    if _any(infinite):
        text = pc.if_else(infinite, pa.scalar(_PLACEHOLDER[kind]), text)
    parts = pc.extract_regex(text, pattern)
    if _any(pc.and_(pc.is_valid(text), pc.is_null(parts))):
        raise _Unparsable

    def number(name: str, width: int = 0) -> pa.Array:
        # struct_field keeps the struct's nulls; pad optional fields ("" → "00", "5" → "500000").
        value = pc.struct_field(parts, name)
        if width:
            value = pc.utf8_rpad(value, width=width, padding="0")
        return pc.cast(value, pa.int64())

    year, month, day = number("year"), number("month"), number("day")
    if _any(pc.or_(pc.less(month, 1), pc.greater(month, 12))):
        raise _Unparsable
    bc = pc.equal(pc.struct_field(parts, "bc"), " BC")
    if _any(bc):
        year = pc.if_else(bc, pc.subtract(1, year), year)  # 1 BC is year 0 of the proleptic calendar
    leap = pc.and_(pc.equal(month, 2), _is_leap(year))
    last_day = pc.add(pc.take(_DAYS_IN_MONTH, month), pc.cast(leap, pa.int64()))
    if _any(pc.or_(pc.less(day, 1), pc.greater(day, last_day))):
        raise _Unparsable
    days = _days_from_civil(year, month, day)
    finite = pc.invert(infinite)
    before = pc.and_(finite, pc.less(days, DATE_MIN_DAYS))
    after = pc.and_(finite, pc.greater(days, DATE_MAX_DAYS))
    outside = pc.or_(before, after)
    clamp = _any(outside)
    if clamp:
        word = "date" if kind == "date" else "timestamp"
        notes.append(
            f"{_count(outside)} {word}(s) outside 0001-01-01..9999-12-31 stored as the nearest end of that range"
        )
        days = pc.if_else(outside, 0, days)  # computed below as a placeholder, then replaced
    if kind == "date":
        value = days
        low, high = DATE_MIN_DAYS, DATE_MAX_DAYS
    else:
        hour, minute, second = number("hour"), number("minute"), number("second")
        if _any(pc.or_(pc.or_(pc.greater(hour, 23), pc.greater(minute, 59)), pc.greater(second, 59))):
            raise _Unparsable
        seconds = pc.add(pc.add(pc.multiply(hour, 3600), pc.multiply(minute, 60)), second)
        if kind == "timestamptz":
            offset = pc.add(
                pc.add(pc.multiply(number("oh"), 3600), pc.multiply(number("om", 2), 60)), number("os", 2)
            )
            negative = pc.equal(pc.struct_field(parts, "sign"), "-")
            seconds = pc.subtract(seconds, pc.if_else(negative, pc.negate(offset), offset))
        value = pc.add_checked(
            pc.multiply_checked(days, _MICROS_PER_DAY),
            pc.add_checked(pc.multiply_checked(seconds, _MICROS_PER_SECOND), number("fraction", 6)),
        )
        low, high = TIMESTAMP_MIN_MICROS, TIMESTAMP_MAX_MICROS
        # a UTC offset can move a value at an end of the range just past it
        edge = pc.and_(finite, pc.or_(pc.less(value, low), pc.greater(value, high)))
        if _any(edge):
            before = pc.or_(before, pc.and_(edge, pc.less(value, low)))
            after = pc.or_(after, pc.and_(edge, pc.greater(value, high)))
            if not clamp:
                notes.append(
                    f"{_count(edge)} timestamp(s) outside 0001-01-01..9999-12-31 stored as the nearest end of "
                    "that range"
                )
            clamp = True
    if clamp:
        value = pc.if_else(before, low, pc.if_else(after, high, value))
    if _any(infinite):
        notes.append(
            f"{_count(infinite)} ±infinity value(s) stored as the end of Delta's range "
            f"({'9999-12-31' if kind == 'date' else '9999-12-31 23:59:59.999999'} / 0001-01-01)"
        )
        value = pc.if_else(plus, high, pc.if_else(minus, low, value))
    if kind == "date":
        return pc.cast(pc.cast(value, pa.int32()), target)
    return pc.cast(value, target)


def _is_leap(year: pa.Array) -> pa.Array:
    def divisible(k: int) -> pa.Array:
        return pc.equal(pc.subtract(year, pc.multiply(pc.divide(year, k), k)), 0)

    return pc.and_(divisible(4), pc.or_(pc.invert(divisible(100)), divisible(400)))


_SHIFT_CYCLES: Final = 1_000  # 400-year cycles added so that every year PostgreSQL has (>= 4713 BC) is > 0


def _days_from_civil(year: pa.Array, month: pa.Array, day: pa.Array) -> pa.Array:
    """Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm), any year > -400000.

    The calendar repeats every 400 years (146,097 days): years are shifted up by whole cycles so
    that integer division is floor division, and the cycles are taken off the result.
    """
    shifted = pc.add(year, 400 * _SHIFT_CYCLES)
    y = pc.subtract(shifted, pc.cast(pc.less_equal(month, 2), pa.int64()))  # years start in March
    era = pc.divide(y, 400)  # y >= 0, so integer division is floor division
    year_of_era = pc.subtract(y, pc.multiply(era, 400))
    march_month = pc.if_else(pc.greater(month, 2), pc.subtract(month, 3), pc.add(month, 9))
    day_of_year = pc.add(pc.divide(pc.add(pc.multiply(march_month, 153), 2), 5), pc.subtract(day, 1))
    day_of_era = pc.add(
        pc.subtract(
            pc.add(pc.multiply(year_of_era, 365), pc.divide(year_of_era, 4)), pc.divide(year_of_era, 100)
        ),
        day_of_year,
    )
    return pc.subtract(pc.add(pc.multiply(era, 146_097), day_of_era), 719_468 + 146_097 * _SHIFT_CYCLES)


# ---- type modifiers ------------------------------------------------------------------------------


def _numeric_arrow(type_modifier: int) -> pa.DataType:
    """decimal128 for numeric(p,s) that fits 38 digits, else string (lossless text)."""
    if type_modifier < _VARHDRSZ:
        return pa.string()
    precision = ((type_modifier - _VARHDRSZ) >> 16) & 0xFFFF
    scale = (((type_modifier - _VARHDRSZ) & 0x7FF) ^ 1024) - 1024  # 11-bit signed since PG 15
    if scale < 0:  # numeric(3,-2) holds multiples of 100 up to 99900: five integer digits
        precision, scale = precision - scale, 0
    else:  # numeric(2,5) holds up to 0.00099: five fractional digits
        precision = max(precision, scale)
    if not 1 <= precision <= _MAX_DECIMAL128_DIGITS:
        return pa.string()
    return pa.decimal128(precision, scale)


# ---- the registry --------------------------------------------------------------------------------

_STRING: Final = pa.string()
_TEXT_NOTE: Final = "text kept exactly as PostgreSQL prints it"


# Types stored as their text output: (oid, typname, array oid, note). OIDs from pg_type.dat,
# checked against PostgreSQL 15 and 16 catalogs by tests/integration/test_types.py.
_TEXT_TYPES: Final = (
    (22, "int2vector", 1006, "e.g. 1 2"),
    (24, "regproc", 1008, "the name"),
    (27, "tid", 1010, "(block,offset)"),
    (28, "xid", 1011, "32-bit transaction id"),
    (29, "cid", 1012, ""),
    (30, "oidvector", 1013, ""),
    (142, "xml", 143, "the document as printed"),
    (600, "point", 1017, "(x,y)"),
    (601, "lseg", 1018, ""),
    (602, "path", 1019, ""),
    (603, "box", 1020, ""),
    (604, "polygon", 1027, ""),
    (628, "line", 629, ""),
    (650, "cidr", 651, "with its netmask"),
    (718, "circle", 719, ""),
    (774, "macaddr8", 775, ""),
    (829, "macaddr", 1040, ""),
    (869, "inet", 1041, "netmask only when not /32 (/128)"),
    (1560, "bit", 1561, "e.g. 1010"),
    (1562, "varbit", 1563, ""),
    (1790, "refcursor", 2201, ""),
    (2202, "regprocedure", 2207, ""),
    (2203, "regoper", 2208, ""),
    (2204, "regoperator", 2209, ""),
    (2205, "regclass", 2210, "the name, schema-qualified when not on the search path"),
    (2206, "regtype", 2211, ""),
    (2970, "txid_snapshot", 2949, ""),
    (3220, "pg_lsn", 3221, "e.g. 0/16B3748"),
    (3614, "tsvector", 3643, "lexemes with positions"),
    (3615, "tsquery", 3645, ""),
    (3734, "regconfig", 3735, ""),
    (3769, "regdictionary", 3770, ""),
    (3904, "int4range", 3905, "e.g. [1,10)"),
    (3906, "numrange", 3907, ""),
    (3908, "tsrange", 3909, ""),
    (3910, "tstzrange", 3911, "bounds in UTC"),
    (3912, "daterange", 3913, ""),
    (3926, "int8range", 3927, ""),
    (4072, "jsonpath", 4073, ""),
    (4089, "regnamespace", 4090, ""),
    (4096, "regrole", 4097, ""),
    (4191, "regcollation", 4192, ""),
    (4451, "int4multirange", 6150, "e.g. {[1,3),[5,7)}"),
    (4532, "nummultirange", 6151, ""),
    (4533, "tsmultirange", 6152, ""),
    (4534, "tstzmultirange", 6153, ""),
    (4535, "datemultirange", 6155, ""),
    (4536, "int8multirange", 6157, ""),
    (5038, "pg_snapshot", 5039, ""),
    (5069, "xid8", 271, "64-bit transaction id"),
)


def _index(entries: Iterable[PgType]) -> dict[int, PgType]:
    table: dict[int, PgType] = {}
    for entry in entries:
        arrays = (
            [PgType(entry.array_oid, f"_{entry.name}", _STRING, _keep_text, note="array as text")]
            if entry.array_oid
            else []
        )
        for item in (entry, *arrays):
            if item.oid in table:
                raise ValueError(
                    f"type oid {item.oid} registered twice ({table[item.oid].name}, {item.name})"
                )
            table[item.oid] = item
    return table


# The registry, read-only. OIDs as in PostgreSQL's pg_type.dat (fixed for builtin types; checked
# against a PostgreSQL 15 catalog). Adding a type is one entry here.
TYPES: Final[Mapping[int, PgType]] = MappingProxyType(
    _index(
        [
            PgType(16, "bool", pa.bool_(), _cast_bool, 1000),
            PgType(17, "bytea", pa.binary(), _cast_bytea, 1001, note="text form is \\x + hex"),
            PgType(18, "char", _STRING, _keep_text, 1002, note=_TEXT_NOTE),
            PgType(19, "name", _STRING, _keep_text, 1003, note=_TEXT_NOTE),
            PgType(20, "int8", pa.int64(), _cast_int, 1016),
            PgType(21, "int2", pa.int16(), _cast_int, 1005),
            PgType(23, "int4", pa.int32(), _cast_int, 1007),
            PgType(25, "text", _STRING, _keep_text, 1009, note=_TEXT_NOTE),
            PgType(26, "oid", pa.int64(), _cast_int, 1028, note="unsigned 32-bit, needs int64"),
            PgType(114, "json", _STRING, _keep_text, 199, note=_TEXT_NOTE),
            PgType(700, "float4", pa.float32(), _cast_float, 1021),
            PgType(701, "float8", pa.float64(), _cast_float, 1022),
            PgType(705, "unknown", _STRING, _keep_text, note=_TEXT_NOTE),
            PgType(1042, "bpchar", _STRING, _keep_text, 1014, note="padded with blanks as printed"),
            PgType(1043, "varchar", _STRING, _keep_text, 1015, note=_TEXT_NOTE),
            PgType(1082, "date", pa.date32(), _cast_date, 1182, note="clamped to 0001-01-01..9999-12-31"),
            PgType(1083, "time", _STRING, _keep_text, 1183, note="delta-rs rejects time64"),
            PgType(1114, "timestamp", pa.timestamp("us"), _cast_timestamp, 1115, note="timezone-naive"),
            PgType(1184, "timestamptz", pa.timestamp("us", tz="UTC"), _cast_timestamp, 1185, note="in UTC"),
            PgType(1186, "interval", _STRING, _keep_text, 1187, note="delta-rs rejects duration"),
            PgType(1266, "timetz", _STRING, _keep_text, 1270, note="delta-rs rejects time64"),
            PgType(
                1700,
                "numeric",
                _STRING,
                _cast_decimal,
                1231,
                modifier=_numeric_arrow,
                note="decimal128(p,s) up to 38 digits, else text",
            ),
            PgType(2950, "uuid", _STRING, _keep_text, 2951, note="canonical lower-case text"),
            PgType(3802, "jsonb", _STRING, _keep_text, 3807, note=_TEXT_NOTE),
            PgType(790, "money", pa.decimal128(19, 2), _cast_money, 791, note="read with lc_monetary=C"),
            # kept as PostgreSQL prints them: Delta has no such types, and the text is exact
            *(
                PgType(oid, name, _STRING, _keep_text, array, note=note)
                for oid, name, array, note in _TEXT_TYPES
            ),
        ]
    )
)


def pg_type(type_oid: int) -> PgType:
    """The registry entry for ``type_oid``; an unknown OID maps to a text-keeping entry."""
    entry = TYPES.get(type_oid)
    if entry is None:
        return PgType(type_oid, f"type oid {type_oid}", _STRING, _keep_text, note="unsupported: text kept")
    return entry


def arrow_type(type_oid: int, type_modifier: int = -1) -> pa.DataType:
    """The Arrow type (accepted by Delta Lake) of a column with this type OID and ``atttypmod``."""
    return pg_type(type_oid).arrow_for(type_modifier)


def resolve_domains(schema: TableSchema, domains: Mapping[int, tuple[int, int]]) -> TableSchema:
    """``schema`` with each domain column typed as the domain's base type.

    ``domains``: domain OID → (base type OID, the domain's type modifier), chains of domains already
    followed to the base (``source.checks.load_domains``). A column's own modifier wins over the
    domain's (a domain column's is -1 in practice). Both data paths describe a domain column by the
    domain's OID (the catalog and pgoutput's Relation message), so both pass through here.
    """
    if not any(c.type_oid in domains for c in schema.columns):
        return schema
    columns = tuple(
        Column(
            c.name,
            domains[c.type_oid][0],
            c.type_modifier if c.type_modifier != -1 else domains[c.type_oid][1],
            c.is_key,
        )
        if c.type_oid in domains
        else c
        for c in schema.columns
    )
    return TableSchema(schema.table, columns, schema.replica_identity)


def unresolved_types(schema: TableSchema, domains: Mapping[int, tuple[int, int]]) -> set[int]:
    """Type OIDs of ``schema`` that are neither registered nor known domains (enums, composites, …)."""
    return {c.type_oid for c in schema.columns if c.type_oid not in TYPES and c.type_oid not in domains}


def arrow_schema(columns: Sequence[Column]) -> pa.Schema:
    """The Arrow schema of a table with these columns: same names and order, every field nullable."""
    return pa.schema(
        [pa.field(c.name, arrow_type(c.type_oid, c.type_modifier), nullable=True) for c in columns]
    )


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
    except (pa.ArrowInvalid, _Unparsable) as exc:
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
        except (pa.ArrowInvalid, _Unparsable):
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
