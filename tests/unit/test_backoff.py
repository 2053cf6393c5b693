"""Specification of the reconnect back-off: doubling in a row, starting again after a healthy stream."""

from __future__ import annotations

from cdc_replicator.engine.backoff import Backoff


def test_failures_in_a_row_double_the_wait_up_to_the_cap() -> None:
    b = Backoff(first=0.5, cap=8.0, reset_after=3.0)
    waits = [b.failed(float(t)) for t in range(7)]  # never streamed in between
    assert waits == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0, 8.0]


def test_a_failure_after_a_stream_that_heard_the_source_long_enough_waits_the_first_wait_again() -> None:
    b = Backoff(first=0.5, cap=30.0, reset_after=3.0)
    now = 100.0
    waits = []
    for _ in range(6):  # six cuts 6 s apart, each reconnect streamed fine in between
        b.streaming(now + 1.0)
        now += 6.0
        waits.append(b.failed(now, heard=now))
    assert waits == [0.5] * 6


def test_a_stream_that_died_before_the_reset_bound_still_counts_as_a_failure_in_a_row() -> None:
    b = Backoff(first=0.5, cap=30.0, reset_after=3.0)
    assert b.failed(10.0) == 0.5
    b.streaming(11.0)
    assert b.failed(12.5) == 1.0  # streamed 1.5 s only
    b.streaming(14.0)
    # connected long ago, but the source went silent right after (a partition found by the timeout)
    assert b.failed(30.0, heard=14.5) == 2.0


def test_reset_after_zero_never_resets() -> None:
    b = Backoff(first=0.5, cap=30.0, reset_after=0.0)
    b.streaming(0.0)
    assert b.failed(1000.0) == 0.5
    b.streaming(1000.0)
    assert b.failed(5000.0) == 1.0


def test_failing_for_counts_from_the_first_failure_in_a_row_and_restarts_with_the_back_off() -> None:
    b = Backoff(first=0.5, cap=30.0, reset_after=3.0)
    assert b.failing_for(5.0) == 0.0
    b.failed(10.0)
    b.failed(11.0)
    assert b.failing_for(20.0) == 10.0
    b.streaming(21.0)
    b.failed(40.0)  # after a healthy stream: a new run of failures
    assert b.failing_for(45.0) == 5.0


def test_a_wait_for_a_slot_another_walsender_still_holds_is_polled_below_the_cap() -> None:
    b = Backoff(first=0.5, cap=30.0)
    waits = [b.failed(float(t), cap=5.0) for t in range(8)]
    assert waits == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0, 5.0, 5.0]
    assert b.failed(9.0) == 30.0  # another failure in a row, without the lower cap, backs off as before
