"""Date and timestamp text → Arrow: ISO parsing, BC, ±infinity, clamping to Delta's range. Pure.

Arrow's own parser reads the common case (4-digit years, offsets of whole minutes) in one call;
when it refuses a chunk, :func:`parse_temporal` reads every value by its fields, with proleptic
Gregorian (Julian-day) arithmetic over whole arrays. Delta's range is 0001-01-01..9999-12-31:
±infinity and every value outside it (BC, after 9999) become the nearest end of it, and are noted.
"""

from __future__ import annotations

from typing import Final

import pyarrow as pa
import pyarrow.compute as pc

from cdc_replicator.types.kernels import Unparsable, any_true, count_true

__all__ = [
    "DATE_MAX_DAYS",
    "DATE_MIN_DAYS",
    "TIMESTAMP_MAX_MICROS",
    "TIMESTAMP_MIN_MICROS",
    "cast_date",
    "cast_timestamp",
    "parse_temporal",
]


def cast_date(text: pa.Array, target: pa.DataType, notes: list[str]) -> pa.Array:
    try:  # fast path: Arrow's parser reads 4-digit years, all inside Delta's range
        return pc.cast(text, target)
    except pa.ArrowInvalid:
        return parse_temporal(text, target, notes)


def cast_timestamp(text: pa.Array, target: pa.DataType, notes: list[str]) -> pa.Array:
    try:  # fast path: 4-digit years, offsets of whole minutes
        return pc.cast(text, target)
    except pa.ArrowInvalid:
        return parse_temporal(text, target, notes)


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


def parse_temporal(text: pa.Array, target: pa.DataType, notes: list[str]) -> pa.Array:
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
    if any_true(infinite):
        text = pc.if_else(infinite, pa.scalar(_PLACEHOLDER[kind]), text)
    parts = pc.extract_regex(text, pattern)
    if any_true(pc.and_(pc.is_valid(text), pc.is_null(parts))):
        raise Unparsable
    days = _days(parts)
    finite = pc.invert(infinite)
    before = pc.and_(finite, pc.less(days, DATE_MIN_DAYS))
    after = pc.and_(finite, pc.greater(days, DATE_MAX_DAYS))
    outside = pc.or_(before, after)
    clamp = any_true(outside)
    if clamp:
        word = "date" if kind == "date" else "timestamp"
        notes.append(
            f"{count_true(outside)} {word}(s) outside 0001-01-01..9999-12-31 stored as the nearest end of that range"
        )
        days = pc.if_else(outside, 0, days)  # computed below as a placeholder, then replaced
    if kind == "date":
        value = days
        low, high = DATE_MIN_DAYS, DATE_MAX_DAYS
    else:
        value = _micros(parts, days, with_offset=kind == "timestamptz")
        low, high = TIMESTAMP_MIN_MICROS, TIMESTAMP_MAX_MICROS
        # a UTC offset can move a value at an end of the range just past it
        edge = pc.and_(finite, pc.or_(pc.less(value, low), pc.greater(value, high)))
        if any_true(edge):
            before = pc.or_(before, pc.and_(edge, pc.less(value, low)))
            after = pc.or_(after, pc.and_(edge, pc.greater(value, high)))
            if not clamp:
                notes.append(
                    f"{count_true(edge)} timestamp(s) outside 0001-01-01..9999-12-31 stored as the nearest end of "
                    "that range"
                )
            clamp = True
    if clamp:
        value = pc.if_else(before, low, pc.if_else(after, high, value))
    if any_true(infinite):
        notes.append(
            f"{count_true(infinite)} ±infinity value(s) stored as the end of Delta's range "
            f"({'9999-12-31' if kind == 'date' else '9999-12-31 23:59:59.999999'} / 0001-01-01)"
        )
        value = pc.if_else(plus, high, pc.if_else(minus, low, value))
    if kind == "date":
        return pc.cast(pc.cast(value, pa.int32()), target)
    return pc.cast(value, target)


def _number(parts: pa.Array, name: str, width: int = 0) -> pa.Array:
    """One field of the parsed struct as int64; ``width`` pads an optional one ("" → "00", "5" → "500000")."""
    value = pc.struct_field(parts, name)  # keeps the struct's nulls
    if width:
        value = pc.utf8_rpad(value, width=width, padding="0")
    return pc.cast(value, pa.int64())


def _days(parts: pa.Array) -> pa.Array:
    """Days since 1970-01-01 of the parsed dates, each field validated; BC years counted back from 0."""
    year, month, day = _number(parts, "year"), _number(parts, "month"), _number(parts, "day")
    if any_true(pc.or_(pc.less(month, 1), pc.greater(month, 12))):
        raise Unparsable
    bc = pc.equal(pc.struct_field(parts, "bc"), " BC")
    if any_true(bc):
        year = pc.if_else(bc, pc.subtract(1, year), year)  # 1 BC is year 0 of the proleptic calendar
    leap = pc.and_(pc.equal(month, 2), _is_leap(year))
    last_day = pc.add(pc.take(_DAYS_IN_MONTH, month), pc.cast(leap, pa.int64()))
    if any_true(pc.or_(pc.less(day, 1), pc.greater(day, last_day))):
        raise Unparsable
    return _days_from_civil(year, month, day)


def _micros(parts: pa.Array, days: pa.Array, *, with_offset: bool) -> pa.Array:
    """Microseconds since 1970-01-01 UTC of the parsed timestamps on ``days``, less their UTC offset."""
    hour, minute, second = _number(parts, "hour"), _number(parts, "minute"), _number(parts, "second")
    if any_true(pc.or_(pc.or_(pc.greater(hour, 23), pc.greater(minute, 59)), pc.greater(second, 59))):
        raise Unparsable
    seconds = pc.add(pc.add(pc.multiply(hour, 3600), pc.multiply(minute, 60)), second)
    if with_offset:
        offset = pc.add(
            pc.add(pc.multiply(_number(parts, "oh"), 3600), pc.multiply(_number(parts, "om", 2), 60)),
            _number(parts, "os", 2),
        )
        negative = pc.equal(pc.struct_field(parts, "sign"), "-")
        seconds = pc.subtract(seconds, pc.if_else(negative, pc.negate(offset), offset))
    return pc.add_checked(
        pc.multiply_checked(days, _MICROS_PER_DAY),
        pc.add_checked(pc.multiply_checked(seconds, _MICROS_PER_SECOND), _number(parts, "fraction", 6)),
    )


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
