"""Lake maintenance on real PostgreSQL and real Delta: the daemon keeps a streamed lake small, readable, exact.

A short stream of the OLTP workload with a retention of seconds and a pass every few seconds,
then: disk close to the live bytes, small tables in a handful of files, a checkpoint, time travel
inside the retention, DuckDB reading every table equal to the source, and the stream exactly once
through it (also after a restart that reads the positions from a checkpoint). PostgreSQL 15 only:
the server's version changes nothing in maintenance.
"""

from __future__ import annotations

import glob
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import duckdb
import duckdb_extension_delta
import pyarrow as pa
import pytest
from deltalake import DeltaTable

from tests.support.cli import refusal
from tests.support.daemon import Daemon, run_cli, wait_converged, write_config
from tests.support.http import get
from tests.support.lake import table_path
from tests.support.pg import PgDatabase
from tests.support.wait import wait_until
from tests.support.workload import TABLES, Workload, create_schema

pytestmark = pytest.mark.slow

SHORT = 0.001  # hours: 3.6 s, written as "interval 4 seconds"
KEPT = "public.profiles"  # keeps an hour: time travel across many passes
EVENTS = "public.events"  # append-only: one small file per batch, until compacted
ALL = [*TABLES, EVENTS]
SHORT_TABLES = [t for t in ALL if t != KEPT]


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    d = Daemon(tmp_path / "cfg.toml", tmp_path)
    yield d
    d.close()


def _maintenance(config: Path, **keys: object) -> None:
    """Append a [maintenance] section to a config written by ``write_config``."""
    lines = [
        "[maintenance]",
        *(f"{k} = {str(v).lower() if isinstance(v, bool) else v}" for k, v in keys.items()),
    ]
    config.write_text(config.read_text() + "\n".join(lines) + "\n")


def _disk_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*.parquet") if "_delta_log" not in p.parts)


def _live(path: Path) -> tuple[int, int]:
    actions = pa.table(DeltaTable(str(path)).get_add_actions(flatten=True))
    return actions.num_rows, sum(actions.column("size_bytes").to_pylist())


def _stream(db: PgDatabase, seconds: float, seed: int) -> None:
    w = Workload(db, seed=seed)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        w.run(10, concurrency=2)
        db.execute("insert into events (note) select 'e' || g from generate_series(1, 3) g")
        time.sleep(0.05)


def test_a_streamed_lake_stays_small_checkpointed_time_travelable_and_exact_under_maintenance(
    db15: PgDatabase, tmp_path: Path, daemon: Daemon
) -> None:
    lake = tmp_path / "lake"
    create_schema(db15, rows=150, seed=7)
    db15.execute("create table events (id bigserial primary key, note text, at timestamptz default now())")
    write_config(
        daemon.config,
        db15,
        lake,
        ALL,
        server={"liveness_timeout_seconds": 10},
        table_extra={KEPT: {"retention_hours": 1}},
    )
    _maintenance(
        daemon.config,
        interval_seconds=2,
        retention_hours=SHORT,
        compact_min_files=4,
        checkpoint_min_commits=5,
    )
    daemon.start()
    daemon.wait_streaming()
    url = daemon.http_address()
    kept = table_path(lake, KEPT)
    wait_until(lambda: DeltaTable(str(kept)).version() >= 0, timeout=30, message="no profiles table")
    loaded_version = DeltaTable(str(kept)).version()
    loaded_rows = DeltaTable(str(kept)).to_pyarrow_table().num_rows

    writer = threading.Thread(target=_stream, args=(db15, 10.0, 11))
    writer.start()
    health: list[int] = []
    while writer.is_alive():  # maintenance runs between batches: the daemon stays live and ready
        health.append(get(url + "/healthz")[0])
        time.sleep(1.0)
    writer.join()
    wait_converged(db15, lake, ALL, daemon=daemon, timeout=60)
    assert set(health) == {200}, health

    def small() -> bool:
        for t in SHORT_TABLES:
            files, live = _live(table_path(lake, t))
            if files > 10 or _disk_bytes(table_path(lake, t)) > 1.5 * live:
                return False
        return True

    # once the retention has passed, the next passes have compacted and vacuumed the short tables
    wait_until(small, timeout=60, interval=1.0, message="the lake did not shrink to its live bytes")
    for t in ALL:
        path = table_path(lake, t)
        assert glob.glob(str(path / "_delta_log" / "*.checkpoint.parquet")), t
        assert _live(path)[0] <= 10, t
    # expired log entries of the short tables were cleaned up (the oldest commits are gone)
    assert not (table_path(lake, SHORT_TABLES[0]) / "_delta_log" / f"{0:020d}.json").exists()
    # the kept table still reads its first loaded version, many compactions and vacuums later
    assert DeltaTable(str(kept), version=loaded_version).to_pyarrow_table().num_rows == loaded_rows
    assert DeltaTable(str(kept)).metadata().configuration["delta.deletedFileRetentionDuration"] == (
        "interval 1 hours"
    )

    _, metrics = get(url + "/metrics")
    # the append-only table was compacted (its files would be one per batch otherwise)
    assert 'cdc_maintenance_steps_total{outcome="ok",step="compact",table="public.events"}' in metrics
    assert 'cdc_maintenance_steps_total{outcome="ok",step="vacuum",table="public.accounts"}' in metrics
    assert 'outcome="failed"' not in metrics
    assert 'cdc_lake_files{table="public.accounts"}' in metrics

    # positions survive compactions, checkpoints and log cleanup: a restart resumes exactly once
    assert daemon.stop() == 0
    daemon.start()
    daemon.wait_streaming()
    _stream(db15, 2.0, 12)
    wait_converged(db15, lake, ALL, daemon=daemon, timeout=60)
    assert daemon.stop() == 0

    ext = Path(duckdb_extension_delta.__file__).parent / "extensions" / f"v{duckdb.__version__}"
    con = duckdb.connect(config={"allow_unsigned_extensions": "true"})
    try:
        con.execute(f"load '{ext / 'delta.duckdb_extension'}'")
        for t, key in (
            ("public.accounts", "id"),
            ("public.ledger", "acct, entry"),
            ("public.profiles", "id"),
            (EVENTS, "id"),
        ):
            scan = f"select {key} from delta_scan('{table_path(lake, t)}') order by {key}"  # noqa: S608
            assert con.execute(scan).fetchall() == db15.query(f"select {key} from {t} order by {key}"), t  # noqa: S608
        total = (
            f"select sum(balance), sum(length(big)) from delta_scan('{table_path(lake, 'public.accounts')}')"  # noqa: S608
        )
        assert con.execute(total).fetchall() == db15.query(
            "select sum(balance), sum(length(big)) from accounts"
        )
    finally:
        con.close()


def _schema(db: PgDatabase) -> None:
    db.execute("create table t (id int primary key, v text); create table u (id int primary key, v text)")


def _commits(db: PgDatabase, first: int, n: int) -> None:
    """``n`` transactions, far enough apart to be batches (and Delta commits) of their own."""
    for i in range(first, first + n):
        db.execute("with a as (insert into t values (%s, 'x')) insert into u values (%s, 'y')", (i, i))
        time.sleep(0.35)


def _updates(db: PgDatabase, n: int) -> None:
    for i in range(n):
        db.execute(
            "with a as (update t set v = %s where id <= 8) update u set v = %s where id <= 8", (str(i),) * 2
        )
        time.sleep(0.3)


def _retention(lake: Path, table: str) -> str:
    conf = DeltaTable(str(table_path(lake, table))).metadata().configuration
    assert conf["delta.logRetentionDuration"] == conf["delta.deletedFileRetentionDuration"]
    return conf["delta.logRetentionDuration"]


def test_maintain_compacts_one_table_of_a_stopped_daemon_and_sets_its_retention_override(
    db15: PgDatabase, tmp_path: Path, daemon: Daemon
) -> None:
    lake = tmp_path / "lake"
    _schema(db15)
    tables = ["public.t", "public.u"]
    write_config(daemon.config, db15, lake, tables, table_extra={"public.t": {"retention_hours": 48}})
    _maintenance(daemon.config, enabled=False, compact_min_files=3)
    daemon.start()
    daemon.wait_streaming()
    _commits(db15, 1, 8)
    wait_converged(db15, lake, tables, daemon=daemon)
    assert daemon.stop() == 0
    # set at creation: the override on t, the section's default on u
    assert (_retention(lake, "public.t"), _retention(lake, "public.u")) == (
        "interval 48 hours",
        "interval 168 hours",
    )
    files_u = _live(table_path(lake, "public.u"))[0]
    assert _live(table_path(lake, "public.t"))[0] > 3 and files_u > 3

    refused = run_cli(daemon.config, "maintain", "--table", "public.nope")
    assert "--table public.nope: not a configured table" in refusal(refused, 2)

    # an existing table whose property differs gets the configured one
    daemon.config.write_text(
        daemon.config.read_text().replace("retention_hours = 48", "retention_hours = 24")
    )
    done = run_cli(daemon.config, "maintain", "--table", "public.t")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert (
        lines[0].startswith("public.t: files ") and "steps properties,compact,checkpoint,vacuum" in lines[0]
    )
    assert lines[-1] == "maintain: 1 table(s) maintained"
    assert _live(table_path(lake, "public.t"))[0] == 1
    assert _live(table_path(lake, "public.u"))[0] == files_u  # not asked for: untouched
    assert _retention(lake, "public.t") == "interval 24 hours"
    assert glob.glob(str(table_path(lake, "public.t") / "_delta_log" / "*.checkpoint.parquet"))
    report = json.loads(run_cli(daemon.config, "status", "--json").stdout)
    row = next(r for r in report["tables"] if r["table"] == "public.t")
    assert row["files"] == 1 and row["bytes"] > 0 and row["last_maintenance"] is not None
    assert row["unvacuumed_bytes"] > 0  # the compacted files, kept for the 24 hours
    assert "unvacuumed" in run_cli(daemon.config, "status").stdout

    # a maintain beside the running daemon (updates touching the files it compacts): whichever
    # commit loses the conflict check is retried (a pass: exit 7; a merge: by the daemon, from the
    # new version), and the lake converges exactly once
    daemon.start()
    daemon.wait_streaming()
    writer = threading.Thread(target=_updates, args=(db15, 4))
    writer.start()
    beside = run_cli(daemon.config, "maintain")
    assert beside.returncode in (0, 7), beside.stderr
    writer.join()
    wait_converged(db15, lake, tables, daemon=daemon, timeout=60)
    assert daemon.stop() == 0
