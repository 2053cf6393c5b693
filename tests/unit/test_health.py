"""Specification of HealthState: when the daemon counts as alive (/healthz) and ready (/readyz)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from cdc_replicator.model import Lsn, TableId, WatermarkPosition
from cdc_replicator.service.health import HealthState, Phase, TableState

ORDERS = TableId("public", "orders")
ITEMS = TableId("public", "items")


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def streaming_health(clock: FakeClock | None = None) -> HealthState:
    h = HealthState((ORDERS, ITEMS), liveness_timeout=30.0, clock=clock or FakeClock())
    h.set_phase(Phase.STREAMING)
    h.set_connected(True)
    h.set_table(ORDERS, TableState.STREAMING)
    h.set_table(ITEMS, TableState.STREAMING)
    return h


def test_alive_while_the_loop_beats_and_wedged_after_the_timeout_without_a_beat() -> None:
    clock = FakeClock()
    h = streaming_health(clock)
    clock.now += 29.0
    assert h.alive()
    h.beat()
    clock.now += 29.0
    assert h.alive()
    clock.now += 2.0
    assert not h.alive()
    assert h.liveness()["alive"] is False and h.liveness()["seconds_since_progress"] == 31.0


def test_a_phase_change_counts_as_progress_and_a_fatal_error_is_never_alive() -> None:
    clock = FakeClock()
    h = streaming_health(clock)
    clock.now += 100.0
    h.set_phase(Phase.RETRYING, error="connection refused")
    assert h.alive()
    h.set_phase(Phase.FAILED, error="slot invalidated")
    assert not h.alive()


def test_ready_only_when_streaming_connected_and_every_table_streams() -> None:
    h = streaming_health()
    r = h.readiness()
    assert r.ready and r.body["reasons"] == []
    assert r.body["tables"]["public.orders"] == {"ready": True, "state": "streaming"}


def test_not_ready_while_starting_loading_or_retrying_and_the_reason_says_which() -> None:
    h = HealthState((ORDERS,))
    assert h.readiness().body["reasons"] == ["starting: checking the source"]
    h.set_phase(Phase.LOADING)
    assert h.readiness().body["reasons"] == ["initial load in progress"]
    h.set_phase(Phase.RETRYING, error="cannot connect to the source database")
    r = h.readiness()
    assert not r.ready
    assert r.body["reasons"] == ["source unavailable, retrying: cannot connect to the source database"]
    assert r.body["connected"] is False


def test_a_lost_connection_while_streaming_is_not_ready() -> None:
    h = streaming_health()
    h.set_connected(False)
    r = h.readiness()
    assert not r.ready and r.body["reasons"] == ["not connected to the source"]


def test_a_paused_table_makes_the_daemon_not_ready_and_names_the_table_and_why() -> None:
    h = streaming_health()
    h.set_table(ITEMS, TableState.PAUSED, "contract freeze: column added: note text")
    h.set_committed(ITEMS, Lsn.parse("0/16B3748"))
    r = h.readiness()
    assert not r.ready
    assert r.body["reasons"] == ["tables not ready: public.items"]
    assert r.body["tables"]["public.items"] == {
        "ready": False,
        "state": "paused",
        "reason": "contract freeze: column added: note text",
        "committed_lsn": "0/16B3748",
    }
    assert r.body["tables"]["public.orders"]["ready"] is True


def test_a_polled_table_reports_its_commit_sequence_number_where_a_logical_one_reports_its_lsn() -> None:
    h = streaming_health()
    h.set_committed(ORDERS, WatermarkPosition(("2026-01-01", "7"), (), 0x16B3748))
    assert h.readiness().body["tables"]["public.orders"]["committed_lsn"] == "0/16B3748"


def test_lag_is_the_age_of_the_oldest_unapplied_transaction_and_zero_when_all_is_applied() -> None:
    h = streaming_health()
    assert h.lag_seconds() == 0.0
    h.txn_received(datetime.now(UTC) - timedelta(seconds=40))
    h.txn_received(datetime.now(UTC) - timedelta(seconds=5))  # a later one does not hide the oldest
    assert 39.0 <= h.lag_seconds() <= 45.0
    h.applied(complete=False)  # the head of a large transaction: it is still pending
    assert h.lag_seconds() >= 39.0
    h.applied(complete=True)
    assert h.lag_seconds() == 0.0


def test_listeners_hear_each_phase_change_once() -> None:
    h = HealthState((ORDERS,))
    heard: list[tuple[Phase, str | None]] = []
    h.add_listener(lambda phase, error: heard.append((phase, error)))
    h.set_phase(Phase.STREAMING)
    h.set_phase(Phase.STREAMING)
    h.set_phase(Phase.RETRYING, error="gone")
    assert heard == [(Phase.STREAMING, None), (Phase.RETRYING, "gone")]


def test_a_batch_applied_in_the_background_leaves_later_transactions_pending() -> None:
    h = streaming_health()
    now = datetime.now(UTC)
    h.txn_received(now - timedelta(seconds=40), Lsn(100))
    h.txn_received(now - timedelta(seconds=20), Lsn(300))  # arrived while the batch ending at 200 merged
    h.applied(complete=True, upto=Lsn(200))
    assert 19.0 <= h.lag_seconds() <= 25.0
    h.applied(complete=True, upto=Lsn(400))
    assert h.lag_seconds() == 0.0


def test_a_silent_source_turns_readiness_red_with_the_reason_and_connected_false() -> None:
    clock = FakeClock()
    h = streaming_health(clock)
    heard = [clock.now]
    h.watch_source(lambda: heard[0], 4.0)
    clock.now += 2.9  # within three quarters of the timeout: an idle stream waiting for a keepalive
    assert h.readiness().ready
    clock.now += 0.2
    body = h.readiness().body
    assert not body["ready"] and body["connected"] is False
    assert any(
        "no message from the source" in r and "wal_receiver_timeout_seconds" in r for r in body["reasons"]
    )
    heard[0] = clock.now  # a keepalive came
    assert h.readiness().ready


def test_an_idle_loop_is_alive_only_while_the_source_is_heard_from() -> None:
    clock = FakeClock()
    h = streaming_health(clock)
    heard = [clock.now]
    h.watch_source(lambda: heard[0], 4.0)
    clock.now += 3.9
    assert h.source_heard()
    clock.now += 0.2
    assert not h.source_heard()  # the loop's idle turns no longer beat: /healthz goes red in time
    h.watch_source(None)
    assert h.source_heard()


def test_a_disabled_timeout_never_holds_silence_against_the_source() -> None:
    clock = FakeClock()
    h = streaming_health(clock)
    h.watch_source(lambda: 0.0, 0.0)
    clock.now += 10_000
    assert h.source_heard() and h.readiness().ready
