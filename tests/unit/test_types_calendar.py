"""Specification of the calendar kernels: dates and timestamps, BC, ±infinity, clamping to Delta's range.

Text samples are what a PostgreSQL 15 server prints with DateStyle=ISO, TimeZone=UTC (captured with psql).
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta, timezone

import pyarrow as pa
import pytest

from cdc_replicator.errors import DecodeError
from cdc_replicator.types import cast_text
from tests.unit.types_support import (
    DATE,
    EPOCH,
    TIMESTAMP,
    TIMESTAMPTZ,
    cast,
    raw_ints,
    text_array,
)


@pytest.fixture(params=[pa.binary(), pa.string()], ids=["binary", "string"])
def kind(request: pytest.FixtureRequest) -> pa.DataType:
    """Both encodings the batching layer may hand over."""
    return request.param


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
