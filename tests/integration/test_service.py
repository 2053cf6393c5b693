"""The daemon as a service: its HTTP endpoint, metrics, status and heartbeats, probed for real.

Every test runs ``cdc-replicator run`` as a subprocess with the endpoint on a free port and reads
``/healthz``, ``/readyz`` and ``/metrics`` over HTTP, as an orchestrator or Prometheus would.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.daemon import Daemon, run_cli, wait_converged, write_config
from tests.support.pg import PgDatabase, create_test_database, drop_test_database, versions_from_env
from tests.support.wait import wait_until

SECRET = "hunter2-Secret-9f3b"


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    d = Daemon(tmp_path / "cfg.toml", tmp_path)
    yield d
    d.close()


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def _json(url: str) -> tuple[int, dict[str, Any]]:
    code, body = _get(url)
    return code, json.loads(body)


def _metrics(base: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    code, text = _get(base + "/metrics")
    assert code == 200
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, []).append((s.labels, s.value))
    return out


def _value(samples: dict[str, list[tuple[dict[str, str], float]]], name: str, **labels: str) -> float:
    found = [v for lab, v in samples.get(name, []) if all(lab.get(k) == w for k, w in labels.items())]
    assert len(found) == 1, (name, labels, samples.get(name))
    return found[0]


def _with_password(dsn: str) -> str:
    # the test cluster trusts every local connection, so the password is sent but never checked
    assert dsn.startswith("postgresql://postgres@"), dsn
    return dsn.replace("postgresql://postgres@", f"postgresql://postgres:{SECRET}@", 1)


def _ready(base: str) -> bool:
    return _get(base + "/readyz")[0] == 200


def test_endpoints_report_liveness_readiness_and_follow_the_source_going_away_and_back(
    pg: PgDatabase, tmp_lake: Path, daemon: Daemon
) -> None:
    pg.execute("create table t (id int primary key, v text)")
    pg.execute("insert into t select g, 'v' || g from generate_series(1, 500) g")
    write_config(
        daemon.config,
        pg,
        tmp_lake,
        ["public.t"],
        server={},
        source_extra={"slot_check_interval_seconds": 0.5},
    )
    daemon.start()
    base = daemon.http_address()
    wait_until(lambda: _ready(base), timeout=60, message="never ready")

    code, live = _json(base + "/healthz")
    assert code == 200 and live["alive"] is True and live["phase"] == "streaming"
    code, ready = _json(base + "/readyz")
    assert code == 200 and ready["ready"] is True and ready["connected"] is True
    assert ready["tables"]["public.t"]["state"] == "streaming"
    assert _get(base + "/nope")[0] == 404
    m = _metrics(base)
    assert _value(m, "cdc_snapshot_rows_total", table="public.t") == 500
    assert _value(m, "cdc_table_state", table="public.t", cdc_table_state="streaming") == 1
    wait_until(
        lambda: _value(_metrics(base), "cdc_slot_wal_status", cdc_slot_wal_status="reserved") == 1,
        timeout=30,
        message="the slot check never saw the slot",
    )

    pg.cluster.stop()
    try:
        wait_until(lambda: not _ready(base), timeout=30, message="still ready with the source down")
        # the phase follows once the stream has been torn down (the reader process has ended)
        wait_until(
            lambda: _json(base + "/readyz")[1]["phase"] == "retrying", timeout=30, message="never retrying"
        )
        code, ready = _json(base + "/readyz")
        assert code == 503 and ready["connected"] is False and ready["phase"] == "retrying"
        assert any("source unavailable" in r for r in ready["reasons"]), ready
        # waiting for the source on purpose is not being wedged
        code, live = _json(base + "/healthz")
        assert code == 200 and live["alive"] is True
        wait_until(
            lambda: _value(_metrics(base), "cdc_retries_total", kind="SourceUnavailable") >= 1,
            timeout=30,
            message="no retry counted",
        )
    finally:
        pg.cluster.start_again()
    wait_until(lambda: _ready(base), timeout=60, message="not ready again after the source came back")
    pg.execute("update t set v = 'after' where id <= 20")
    wait_converged(pg, tmp_lake, ["public.t"], daemon=daemon)
    m = _metrics(base)
    assert _value(m, "cdc_changes_applied_total", table="public.t", op="update") == 20
    assert _value(m, "cdc_merge_duration_seconds_count", table="public.t") >= 1
    assert daemon.stop() == 0


# the exposition format and the redaction are the daemon's, whatever the server: the newest version only
@pytest.mark.parametrize("pg_binaries", [versions_from_env()[-1]], indirect=True)
def test_metrics_pass_promtool_and_no_endpoint_status_or_log_shows_the_password(
    pg: PgDatabase, tmp_lake: Path, daemon: Daemon
) -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: apt-get install prometheus (.ci/run installs it)"
    pg.execute("create table t (id int primary key, v text)")
    pg.execute("insert into t select g, 'v' || g from generate_series(1, 100) g")
    write_config(
        daemon.config,
        pg,
        tmp_lake,
        ["public.t"],
        server={},
        source_extra={"dsn": _with_password(pg.dsn), "slot_check_interval_seconds": 0.5},
    )
    daemon.start()
    base = daemon.http_address()
    wait_until(lambda: _ready(base), timeout=60, message="never ready")
    pg.execute("delete from t where id <= 5")
    wait_converged(pg, tmp_lake, ["public.t"], daemon=daemon)
    wait_until(
        lambda: _value(_metrics(base), "cdc_slot_checks_total") >= 2, timeout=30, message="no slot check"
    )

    code, text = _get(base + "/metrics")
    assert code == 200
    check = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, check=False
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert "cdc_changes_applied_total" in text and "cdc_replication_lag_bytes" in text

    shown = {"metrics": text, "readyz": _get(base + "/readyz")[1], "healthz": _get(base + "/healthz")[1]}
    status = run_cli(daemon.config, "status")
    status_json = run_cli(daemon.config, "status", "--json")
    assert status.returncode == 0 and status_json.returncode == 0, status.stderr + status_json.stderr
    assert "public.t" in status.stdout and "streaming" in status.stdout
    shown["status"] = status.stdout + status.stderr
    shown["status --json"] = status_json.stdout + status_json.stderr
    assert daemon.stop() == 0
    shown["log"] = daemon.logs[-1].read_text(errors="replace")
    assert "dsn=" in shown["log"], "the log should name the source (redacted)"
    for where, content in shown.items():
        assert SECRET not in content, f"the password leaked into {where}"


def test_lag_metrics_rise_while_a_backlog_drains_and_fall_when_caught_up(
    pg: PgDatabase, tmp_lake: Path, daemon: Daemon
) -> None:
    pg.execute("create table t (id int primary key, v text)")
    write_config(
        daemon.config,
        pg,
        tmp_lake,
        ["public.t"],
        server={},
        source_extra={"slot_check_interval_seconds": 0.2},
        batch={"max_rows": 500, "max_seconds": 0.2},
    )
    daemon.start()
    wait_converged(pg, tmp_lake, ["public.t"], daemon=daemon)
    assert daemon.stop() == 0

    # a backlog made while the daemon is stopped: 300 transactions, then a few seconds of age
    with pg.connect(autocommit=True) as conn:
        for i in range(300):
            conn.execute(
                "insert into t select g, repeat('x', 200) from generate_series(%s::int, %s::int) g",
                (i * 200, i * 200 + 199),
            )
    time.sleep(3.0)

    daemon.start()
    base = daemon.http_address()
    seen: dict[str, float] = {"lag_seconds": 0.0, "lag_bytes": 0.0}
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            try:
                m = _metrics(base)
            except (OSError, AssertionError):
                time.sleep(0.05)
                continue
            seen["lag_seconds"] = max(seen["lag_seconds"], _value(m, "cdc_replication_lag_seconds"))
            seen["lag_bytes"] = max(seen["lag_bytes"], _value(m, "cdc_replication_lag_bytes"))
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        wait_converged(pg, tmp_lake, ["public.t"], daemon=daemon, timeout=180)
    finally:
        done.set()
        sampler.join(timeout=10)
    assert seen["lag_seconds"] >= 3.0, seen  # the oldest waiting transaction was over 3 s old
    assert seen["lag_bytes"] > 1_000_000, seen  # ~14 MB of WAL behind at the start

    def caught_up() -> bool:
        m = _metrics(base)
        return (
            _value(m, "cdc_replication_lag_seconds") == 0 and _value(m, "cdc_replication_lag_bytes") < 100_000
        )

    wait_until(caught_up, timeout=60, message="lag metrics did not fall after catching up")
    assert daemon.stop() == 0


def test_heartbeats_advance_the_slot_of_an_idle_table_while_another_database_is_busy(
    pg: PgDatabase, tmp_lake: Path, daemon: Daemon
) -> None:
    pg.execute("create table t (id int primary key)")
    write_config(
        daemon.config,
        pg,
        tmp_lake,
        ["public.t"],
        server={},
        source_extra={"heartbeat_interval_seconds": 0.5, "slot_check_interval_seconds": 0.5},
    )
    daemon.start()
    wait_converged(pg, tmp_lake, ["public.t"], daemon=daemon)
    base = daemon.http_address()

    busy = create_test_database(pg.cluster, "busy_neighbour")
    try:
        busy.execute("create table noise (id bigint, pad text)")
        for _ in range(5):
            busy.execute("insert into noise select g, repeat('n', 100) from generate_series(1, 20000) g")
        target = str(busy.query("select pg_current_wal_lsn()::text")[0][0])

        def slot_passed_target() -> bool:
            return bool(
                pg.query(
                    "select confirmed_flush_lsn >= %s::pg_lsn from pg_replication_slots where slot_name = 'cdc_test'",
                    (target,),
                )[0][0]
            )

        wait_until(slot_passed_target, timeout=60, message=f"the slot never passed {target}")
        wait_until(
            lambda: _value(_metrics(base), "cdc_heartbeats_total") >= 2,
            timeout=30,
            message="no heartbeats counted",
        )
    finally:
        assert daemon.stop() == 0
        drop_test_database(busy)


def test_the_shipped_alert_rules_pass_promtool_and_use_only_metrics_we_export() -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: apt-get install prometheus (.ci/run installs it)"
    rules = Path(__file__).resolve().parents[2] / "docker" / "alerts.yml"
    check = subprocess.run(
        [promtool, "check", "rules", str(rules)], capture_output=True, text=True, check=False
    )
    assert check.returncode == 0, check.stdout + check.stderr

    from cdc_replicator.service.health import HealthState
    from cdc_replicator.service.metrics import Metrics

    families = list(text_string_to_metric_families(Metrics(HealthState(())).render().decode()))
    # a labelled counter has no sample before its first use: name it from its family
    exported = {f.name + ("_total" if f.type == "counter" else "") for f in families}
    exported |= {s.name for f in families for s in f.samples}
    used = set(re.findall(r"\b(cdc_[a-z_]+)", rules.read_text()))
    assert used and used <= exported, f"alerts use metrics that do not exist: {sorted(used - exported)}"
