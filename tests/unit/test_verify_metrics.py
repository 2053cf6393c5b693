"""The last verify results: kept in the state store by `verify`, exported by the daemon's /metrics."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from cdc_replicator.model import VerifyResult
from cdc_replicator.service.health import HealthState
from cdc_replicator.service.metrics import Metrics
from cdc_replicator.store.state import StateStore


def test_a_verify_result_is_kept_per_table_and_replaced_by_the_next_one(tmp_path: Path) -> None:
    store = StateStore(f"sqlite:///{tmp_path / 'cdc.db'}")
    at = datetime(2026, 12, 2, 1, 0, tzinfo=UTC)
    store.record_verify("s", VerifyResult("public.t", at, 10, 2, 3, 0.5))
    store.record_verify("s", VerifyResult("public.t", at, 12, 2, 0, 0.4))
    store.record_verify("other", VerifyResult("public.t", at, 1, 1, 1, 0.1))
    assert store.verifies("s") == [VerifyResult("public.t", at, 12, 2, 0, 0.4)]
    store.close()


def test_the_daemon_exports_the_last_verify_of_each_table_at_scrape_time() -> None:
    metrics = Metrics(HealthState(()))
    at = datetime(2026, 12, 2, 1, 0, tzinfo=UTC)
    metrics.verify_results = lambda: [VerifyResult("public.t", at, 12, 3, 2, 0.4)]
    text = metrics.render().decode()
    (last,) = [line for line in text.splitlines() if line.startswith("cdc_verify_last_timestamp_seconds{")]
    assert float(last.split()[-1]) == at.timestamp()
    assert 'cdc_verify_ranges_checked{table="public.t"} 3.0' in text
    assert 'cdc_verify_differences{table="public.t"} 2.0' in text
    assert 'cdc_verify_rows_checked{table="public.t"} 12.0' in text


def test_a_state_store_that_cannot_be_read_does_not_fail_the_scrape() -> None:
    metrics = Metrics(HealthState(()))

    def broken() -> list[VerifyResult]:
        raise OSError("gone")

    metrics.verify_results = broken
    assert b"cdc_alive" in metrics.render()
