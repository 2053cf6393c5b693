"""Specification of the watermark bookkeeping: snapshots, pending ranges and when they settle."""

from __future__ import annotations

from cdc_replicator.engine.watermarks import MAX_PENDING, add_pending, may_be_late, settle
from cdc_replicator.model import PendingRange, WatermarkPosition, XidSnapshot


def pending(
    after: int | None, upto: int, xip: tuple[int, ...], *, xmax: int = 100, at: float = 0.0
) -> PendingRange:
    return PendingRange(
        None if after is None else (str(after),),
        (str(upto),),
        XidSnapshot(min(xip, default=xmax), xmax, xip),
        at,
    )


def test_a_snapshot_parses_and_says_which_transactions_have_finished() -> None:
    s = XidSnapshot.parse("10:20:12,15")
    assert (s.xmin, s.xmax, s.xip) == (10, 20, (12, 15))
    assert s.finished(9) and s.finished(13) and not s.finished(12) and not s.finished(15)
    assert XidSnapshot.parse("7:7:").xip == ()


def test_a_range_settles_once_every_xid_below_its_xmax_finished_and_the_lookback_passed() -> None:
    # on a hot standby xip is always empty: only xmin/xmax tell what may still be running
    state = WatermarkPosition(("5",), (PendingRange(None, ("5",), XidSnapshot(42, 50, ()), 100.0),), 1)
    assert settle(state, XidSnapshot(42, 60, ()), now=200.0, lookback=0) == state.pending  # 42..49 may run
    assert settle(state, XidSnapshot(49, 60, (49,)), now=200.0, lookback=0) == state.pending
    assert (
        settle(state, XidSnapshot(50, 60, ()), now=100.5, lookback=10) == state.pending
    )  # look-back not over
    assert settle(state, XidSnapshot(50, 60, ()), now=111.0, lookback=10) == ()
    assert may_be_late(XidSnapshot(42, 50, ())) and not may_be_late(XidSnapshot(50, 50, ()))


def test_pending_ranges_stay_bounded_and_a_merge_never_settles_earlier_than_its_parts() -> None:
    ranges: tuple[PendingRange, ...] = ()
    for i in range(50):  # a transaction (xid 7) left open for 50 polls, others coming and going
        ranges = add_pending(ranges, pending(i or None, i + 1, (7, 1000 + i), xmax=1000 + i + 1, at=float(i)))
    assert len(ranges) == MAX_PENDING
    first = ranges[0]
    assert first.after is None and first.at == 0.0
    assert first.snapshot.xmin == 7 and first.snapshot.xmax == 1043  # oldest xmin, newest xmax merged
    assert [r.after for r in ranges[1:]] == [r.upto for r in ranges[:-1]]  # still consecutive
    state = WatermarkPosition(("50",), ranges, 50)
    assert settle(state, XidSnapshot(7, 2000, (7,)), now=1e9, lookback=0) == ranges  # xid 7 still runs
    assert settle(state, XidSnapshot(2000, 2000, ()), now=1e9, lookback=0) == ()


def test_the_state_survives_its_json_form() -> None:
    state = WatermarkPosition(("2026-01-01 00:00:00+00", "7"), (pending(3, 7, (9, 11), at=1.5),), 42)
    assert WatermarkPosition.from_json(state.to_json()) == state
