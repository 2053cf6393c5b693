"""Specification of the metrics exposition: names, types, labels, and gauges read at scrape time."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from prometheus_client.parser import text_string_to_metric_families

from cdc_replicator.model import Lsn, TableId
from cdc_replicator.service.health import HealthState, Phase, TableState
from cdc_replicator.service.metrics import Metrics

ORDERS = TableId("public", "orders")


def scrape(m: Metrics) -> dict[str, list[tuple[dict[str, str], float]]]:
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(m.render().decode()):
        for sample in family.samples:
            out.setdefault(sample.name, []).append((sample.labels, sample.value))
    return out


def value(samples: dict[str, list[tuple[dict[str, str], float]]], name: str, **labels: str) -> float:
    matches = [v for lab, v in samples[name] if all(lab.get(k) == w for k, w in labels.items())]
    assert len(matches) == 1, (name, labels, samples.get(name))
    return matches[0]


def test_every_metric_of_ours_has_the_cdc_prefix_and_help_text() -> None:
    m = Metrics(HealthState((ORDERS,)), (ORDERS,))
    families = list(text_string_to_metric_families(m.render().decode()))
    ours = [f for f in families if not f.name.startswith(("process_", "python_"))]
    assert ours and all(f.name.startswith("cdc_") for f in ours), [f.name for f in ours]
    assert all(f.documentation for f in ours)
    counters = [f.name for f in ours if f.type == "counter"]
    assert "cdc_changes_applied" in counters  # exposed as cdc_changes_applied_total
    assert not [n for n in counters if n.endswith("_total")]


def test_counters_histograms_and_per_table_labels() -> None:
    m = Metrics(HealthState((ORDERS,)), (ORDERS,))
    m.changes_applied.labels(table="public.orders", op="insert").inc(3)
    m.merge_duration.labels(table="public.orders").observe(0.3)
    m.batch_duration.observe(0.4)
    m.errors.labels(kind="SourceUnavailable").inc()
    s = scrape(m)
    assert value(s, "cdc_changes_applied_total", table="public.orders", op="insert") == 3
    assert value(s, "cdc_merge_duration_seconds_count", table="public.orders") == 1
    assert value(s, "cdc_merge_duration_seconds_bucket", table="public.orders", le="0.5") == 1
    assert value(s, "cdc_batch_duration_seconds_sum") == 0.4
    assert value(s, "cdc_errors_total", kind="SourceUnavailable") == 1
    assert not [n for n in s if n.endswith("_created")]


def test_state_gauges_follow_the_health_at_scrape_time() -> None:
    h = HealthState((ORDERS,))
    m = Metrics(h, (ORDERS,))
    s = scrape(m)
    assert value(s, "cdc_phase", cdc_phase="starting") == 1
    assert value(s, "cdc_table_state", table="public.orders", cdc_table_state="pending") == 1
    assert value(s, "cdc_source_connected") == 0

    h.set_phase(Phase.STREAMING)
    h.set_connected(True)
    h.set_table(ORDERS, TableState.PAUSED, "contract")
    h.set_committed(ORDERS, Lsn.parse("0/10"))
    h.txn_received(datetime.now(UTC) - timedelta(seconds=12))
    s = scrape(m)
    assert value(s, "cdc_phase", cdc_phase="streaming") == 1
    assert value(s, "cdc_phase", cdc_phase="starting") == 0
    assert value(s, "cdc_table_state", table="public.orders", cdc_table_state="paused") == 1
    assert value(s, "cdc_paused_tables") == 1
    assert value(s, "cdc_table_committed_lsn", table="public.orders") == 16
    assert value(s, "cdc_source_connected") == 1
    assert value(s, "cdc_alive") == 1
    assert 11.0 <= value(s, "cdc_replication_lag_seconds") <= 20.0


def test_two_instances_do_not_share_a_registry() -> None:
    a = Metrics(HealthState(()))
    b = Metrics(HealthState(()))
    a.batches.inc()
    assert value(scrape(a), "cdc_batches_applied_total") == 1
    assert value(scrape(b), "cdc_batches_applied_total") == 0


def test_every_metric_the_readme_lists_is_exported_under_that_name() -> None:
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    table = [line for line in readme.splitlines() if line.startswith("| `cdc_")]
    named = {n for line in table for n in re.findall(r"`(cdc_[a-z_]+)", line)}
    families = list(
        text_string_to_metric_families(Metrics(HealthState((ORDERS,)), (ORDERS,)).render().decode())
    )
    exported = {f.name for f in families} | {f.name + "_total" for f in families if f.type == "counter"}
    assert len(named) >= 25 and named <= exported, sorted(named - exported)
