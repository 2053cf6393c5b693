"""Streaming: catch-up against pg_recvlogical, steady-state lag, one huge transaction, merge cost growth.

    /opt/venv/bin/python bench/stream_bench.py [--scale 20] [--seconds 60] [--repeat 3] [--rate 1000]
        [--lag-seconds 30] [--big-rows 5000000] [--merge-rows 1000000,10000000] [--pg 15]
        [--out bench/results/stream.json]

Starts a throwaway PostgreSQL (fsync off, wal_level = logical), builds ``pgbench -i -s SCALE`` (with
``pgbench_history`` at REPLICA IDENTITY FULL: it has no key), a ``big`` table of BIG_ROWS rows and a
tiny ``lag_probe`` table, loads them with the daemon, then measures in the same run:

- **catch-up** (``--repeat`` rounds, medians): with the daemon stopped, ``pgbench -n -T SECONDS -c 2``
  writes TPC-B transactions (3 updates + 1 insert each); then ``pg_recvlogical`` (pgoutput, the same
  publication, its own slot created at the same point) drains them to /dev/null up to the end LSN,
  and the daemon drains its slot until its confirmed LSN reaches that end (wall clock from spawn).
  Changes/s for both and the ratio;
- **steady-state lag**: the daemon runs while ``pgbench -R RATE`` loads the server; every 0.2 s a row
  is committed to ``lag_probe`` and a watcher notes when it is visible in Delta: p50, p99, max;
- **large transaction**: one ``update big set v = v + 1`` (BIG_ROWS rows): seconds from its commit
  to the daemon's confirmed LSN passing it, and the daemon's peak RSS;
- **merge cost growth**: the daemon's sink applies the same 10,000 clustered updates to Delta tables
  of each MERGE_ROWS size: seconds and files rewritten.

The daemon's peak RSS is its VmHWM (a fresh process per scenario). Prints a table and PASS/FAIL per
target, writes everything (with machine and versions) to ``--out``; exits 0 when every target
passed, 1 when one failed, 2 when the benchmark could not run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pyarrow as pa
from common import (
    BenchError,
    clean_env,
    format_table,
    git_revision,
    interruptible,
    machine_info,
    package_versions,
    server_user_ids,
)
from deltalake import DeltaTable, write_deltalake

from cdc_replicator.config import TargetConfig
from cdc_replicator.demo.localpg import LocalPostgres, find_binaries
from cdc_replicator.errors import ReplicatorError
from cdc_replicator.model import Column, Lsn, Op, TableId, TablePatch, TablePosition, TableSchema
from cdc_replicator.sink.delta import DeltaSink
from cdc_replicator.sink.plan import target_schema

logger = logging.getLogger("stream_bench")

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
DEFAULT_OUT = BENCH_DIR / "results" / "stream.json"
DATABASE = "bench"
SLOT = "cdc_bench"
RECV_SLOT = "recv_bench"
PUBLICATION = "cdc_bench"
TABLES = [
    "public.pgbench_accounts",
    "public.pgbench_tellers",
    "public.pgbench_branches",
    "public.pgbench_history",
    "public.big",
    "public.lag_probe",
]
PG_SETTINGS = {
    "shared_buffers": "256MB",
    "max_wal_size": "16GB",
    "checkpoint_timeout": "30min",
    "max_connections": "50",
}
MIN_RATIO_VS_RECVLOGICAL = 0.5
MAX_P99_LAG_SECONDS = 5.0
MAX_PEAK_RSS_BYTES = 1024 * 1024 * 1024
MAX_MERGE_GROWTH = 3.0
MERGE_CHANGES = 10_000


@dataclass
class Options:
    scale: int
    seconds: int
    repeat: int
    rate: int
    lag_seconds: int
    big_rows: int
    merge_rows: list[int]
    pg: int
    out: Path


@dataclass
class Check:
    name: str
    status: str
    detail: str


@dataclass
class Results:
    catch_up: list[dict[str, float]] = field(default_factory=list)
    lag: dict[str, float] = field(default_factory=dict)
    large_txn: dict[str, float] = field(default_factory=dict)
    merge: list[dict[str, float]] = field(default_factory=list)
    setup: dict[str, float] = field(default_factory=dict)


# ---- the daemon ---------------------------------------------------------------------------------


class Daemon:
    """``cdc-replicator run`` as a subprocess; its peak RSS read from /proc before it stops."""

    def __init__(self, config: Path, log: Path) -> None:
        self._config, self._log = config, log
        self.proc: subprocess.Popen[bytes] | None = None
        self.started = 0.0

    def start(self) -> None:
        out = open(self._log, "ab")
        self.started = time.perf_counter()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cdc_replicator", "--config", str(self._config), "run"],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=clean_env(),
            start_new_session=True,
        )
        out.close()

    def log_text(self) -> str:
        return self._log.read_text(errors="replace") if self._log.exists() else ""

    def peak_rss(self) -> int:
        """Peak RSS of the daemon plus that of each of its child processes (the replication reader,
        multiprocessing's resource tracker): an upper bound of the peak they held together."""
        assert self.proc is not None
        return sum(_hwm(pid) for pid in (self.proc.pid, *_children(self.proc.pid)))

    def check_alive(self) -> None:
        assert self.proc is not None
        if self.proc.poll() is not None:
            tail = self._log.read_text(errors="replace")[-3000:]
            raise BenchError(f"the daemon exited with {self.proc.returncode}:\n{tail}")

    def stop(self) -> int:
        """SIGTERM, wait; returns the peak RSS (bytes) read just before."""
        assert self.proc is not None
        peak = self.peak_rss()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return peak


def _hwm(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid:  # the field after the state is the parent pid
            found.append(int(stat.parent.name))
    return found


@contextlib.contextmanager
def _daemons() -> Iterator[list[Daemon]]:
    """Daemons started in the block are killed when it ends, also on an error or Ctrl-C."""
    started: list[Daemon] = []
    try:
        yield started
    finally:
        for d in started:
            if d.proc is not None and d.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(d.proc.pid, signal.SIGKILL)
                d.proc.wait()


def _confirmed_at_least(conn: psycopg.Connection[tuple[object, ...]], slot: str, lsn: str) -> bool:
    row = conn.execute(
        "select confirmed_flush_lsn >= %s::pg_lsn from pg_replication_slots where slot_name = %s", (lsn, slot)
    ).fetchone()
    return bool(row and row[0])


def _wait_confirmed(
    conn: psycopg.Connection[tuple[object, ...]], daemon: Daemon, lsn: str, timeout: float, step: float = 0.05
) -> float:
    """Poll until the daemon's slot has confirmed ``lsn``; return the perf_counter time it did."""
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        daemon.check_alive()
        if _confirmed_at_least(conn, SLOT, lsn):
            return time.perf_counter()
        time.sleep(step)
    raise BenchError(f"the daemon did not confirm {lsn} within {timeout:.0f}s")


def _wal(conn: psycopg.Connection[tuple[object, ...]]) -> str:
    row = conn.execute("select pg_current_wal_lsn()::text").fetchone()
    assert row is not None
    return str(row[0])


# ---- set-up -------------------------------------------------------------------------------------


def _as_postgres() -> dict[str, object]:
    user = server_user_ids()
    return {"user": user.uid, "group": user.gid, "extra_groups": []} if user else {}


def _pgbench(cluster: LocalPostgres, *args: str, timeout: float) -> str:
    argv = [
        cluster.binaries.tool("pgbench"),
        *args,
        "-h",
        cluster.host,
        "-p",
        str(cluster.port),
        "-U",
        "postgres",
    ]
    result = subprocess.run(
        [*argv, DATABASE],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        cwd="/",
        env=clean_env(),
        **_as_postgres(),  # type: ignore[arg-type]
    )
    if result.returncode != 0:
        raise BenchError(f"pgbench {' '.join(args)} exited {result.returncode}: {result.stderr[-2000:]}")
    return result.stdout + result.stderr


def _config(dsn: str, workdir: Path) -> Path:
    def q(v: str) -> str:
        return json.dumps(v)

    lines = [
        "[source]",
        f"dsn = {q(dsn)}",
        f"slot = {q(SLOT)}",
        f"publication = {q(PUBLICATION)}",
        "status_interval_seconds = 1.0",
        "[target]",
        f"uri = {q(str(workdir / 'lake'))}",
        "[state]",
        f"url = {q('sqlite:///' + str(workdir / 'state' / 'cdc.db'))}",
        "[server]",
        "enabled = false",
        "[log]",
        'format = "json"',
        'level = "info"',
    ]
    for t in TABLES:
        lines += ["[[tables]]", f"name = {q(t)}"]
    path = workdir / "config.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def build(cluster: LocalPostgres, dsn: str, opts: Options, res: Results) -> None:
    started = time.perf_counter()
    _pgbench(cluster, "-i", "-s", str(opts.scale), "-q", timeout=1800)
    res.setup["pgbench_init_seconds"] = time.perf_counter() - started
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("alter table pgbench_history replica identity full")
        conn.execute("create table big (id bigint primary key, v integer not null)")
        started = time.perf_counter()
        conn.execute("insert into big select g, 0 from generate_series(1, %s::bigint) g", (opts.big_rows,))
        res.setup["big_fill_seconds"] = time.perf_counter() - started
        conn.execute("create table lag_probe (id bigint primary key, at timestamptz not null)")
        conn.execute("vacuum analyze")


# ---- scenarios ----------------------------------------------------------------------------------


def initial_load(daemon: Daemon, dsn: str, res: Results) -> None:
    daemon.start()
    deadline = time.perf_counter() + 1800
    while "streaming slot=" not in daemon.log_text():  # the load is done once it streams
        daemon.check_alive()
        if time.perf_counter() > deadline:
            raise BenchError("the initial load did not finish within 30 minutes")
        time.sleep(0.2)
    with psycopg.connect(dsn, autocommit=True) as conn:
        done = _wait_confirmed(conn, daemon, _wal(conn), timeout=1800, step=0.2)
    res.setup["initial_load_seconds"] = done - daemon.started
    res.setup["initial_load_peak_rss_mb"] = daemon.stop() / 2**20


def catch_up_round(
    cluster: LocalPostgres, dsn: str, daemon: Daemon, opts: Options, round_no: int
) -> dict[str, float]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "select pg_drop_replication_slot(slot_name) from pg_replication_slots where slot_name = %s",
            (RECV_SLOT,),
        )
        conn.execute("select pg_create_logical_replication_slot(%s, 'pgoutput')", (RECV_SLOT,))
        out = _pgbench(
            cluster, "-n", "-T", str(opts.seconds), "-c", "2", "-j", "2", timeout=opts.seconds + 600
        )
        m = re.search(r"number of transactions actually processed: (\d+)", out)
        if not m:
            raise BenchError(f"cannot read pgbench's transaction count:\n{out[-2000:]}")
        txns = int(m.group(1))
        changes = 4 * txns
        end = _wal(conn)
        # pg_recvlogical: the same publication through pgoutput, to /dev/null, until the end LSN
        argv = [cluster.binaries.tool("pg_recvlogical"), "-h", cluster.host, "-p", str(cluster.port)]
        argv += ["-U", "postgres", "-d", DATABASE, "--slot", RECV_SLOT, "--start", "--no-loop"]
        argv += [
            "--endpos",
            end,
            "-o",
            "proto_version=1",
            "-o",
            f"publication_names={PUBLICATION}",
            "-f",
            "/dev/null",
        ]
        started = time.perf_counter()
        recv = subprocess.run(
            argv, capture_output=True, text=True, timeout=3600, check=False, env=clean_env()
        )
        recv_seconds = time.perf_counter() - started
        if recv.returncode != 0:
            raise BenchError(f"pg_recvlogical exited {recv.returncode}: {recv.stderr[-2000:]}")
        daemon.start()
        done = _wait_confirmed(conn, daemon, end, timeout=3600)
        cdc_seconds = done - daemon.started
        peak = daemon.stop()
        conn.execute("select pg_drop_replication_slot(%s)", (RECV_SLOT,))
    row = {
        "round": round_no,
        "transactions": txns,
        "changes": changes,
        "pg_recvlogical_seconds": recv_seconds,
        "pg_recvlogical_changes_per_s": changes / recv_seconds,
        "cdc_seconds": cdc_seconds,
        "cdc_changes_per_s": changes / cdc_seconds,
        "ratio": recv_seconds / cdc_seconds,
        "cdc_peak_rss_mb": peak / 2**20,
    }
    print(
        f"  catch-up #{round_no}: {changes:,} changes; pg_recvlogical {recv_seconds:.1f}s, "
        f"cdc-replicator {cdc_seconds:.1f}s ({row['ratio']:.2f}x), RSS {row['cdc_peak_rss_mb']:.0f} MB",
        file=sys.stderr,
        flush=True,
    )
    return row


def steady_lag(
    cluster: LocalPostgres, dsn: str, daemon: Daemon, workdir: Path, opts: Options
) -> dict[str, float]:
    daemon.start()
    probe_path = workdir / "lake" / "public" / "lag_probe"
    committed: dict[int, float] = {}
    visible: dict[int, float] = {}
    stop = threading.Event()
    with psycopg.connect(dsn, autocommit=True) as conn:
        _wait_confirmed(conn, daemon, _wal(conn), timeout=600)

    def watch() -> None:
        dt: DeltaTable | None = None
        while not stop.is_set() or len(visible) < len(committed):
            try:
                if dt is None:
                    dt = DeltaTable(str(probe_path))
                else:
                    dt.update_incremental()
                ids = dt.to_pyarrow_table(columns=["id"]).column("id").to_pylist()
            except Exception:
                time.sleep(0.05)
                continue
            now = time.time()
            for i in ids:
                visible.setdefault(int(i), now)
            if stop.is_set() and time.time() - stop_at[0] > 120:
                return
            time.sleep(0.05)

    stop_at = [0.0]
    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    load = threading.Thread(
        target=lambda: out.append(
            _pgbench(
                cluster,
                "-n",
                "-T",
                str(opts.lag_seconds),
                "-R",
                str(opts.rate),
                "-c",
                "2",
                "-j",
                "2",
                timeout=opts.lag_seconds + 600,
            )
        ),
        daemon=True,
    )
    out: list[str] = []
    load.start()
    with psycopg.connect(dsn, autocommit=True) as conn:
        i = 0
        while load.is_alive():
            i += 1
            conn.execute("insert into lag_probe values (%s, clock_timestamp())", (i,))
            committed[i] = time.time()
            daemon.check_alive()
            time.sleep(0.2)
    load.join()
    stop.set()
    stop_at[0] = time.time()
    watcher.join(timeout=180)
    peak = daemon.stop()
    lags = sorted(visible[i] - committed[i] for i in committed if i in visible)
    missing = len(committed) - len(lags)
    tps = re.search(r"tps = ([\d.]+)", out[0] if out else "")
    q = statistics.quantiles(lags, n=100, method="inclusive") if len(lags) >= 2 else [float("nan")] * 99
    result = {
        "probes": len(committed),
        "probes_not_seen": missing,
        "p50_seconds": statistics.median(lags) if lags else float("nan"),
        "p99_seconds": q[98],
        "max_seconds": max(lags) if lags else float("nan"),
        "target_rate_tps": opts.rate,
        "achieved_tps": float(tps.group(1)) if tps else float("nan"),
        "cdc_peak_rss_mb": peak / 2**20,
    }
    print(
        f"  lag at {opts.rate} tps (achieved {result['achieved_tps']:.0f}): p50 {result['p50_seconds']:.2f}s "
        f"p99 {result['p99_seconds']:.2f}s max {result['max_seconds']:.2f}s, RSS {result['cdc_peak_rss_mb']:.0f} MB",
        file=sys.stderr,
        flush=True,
    )
    return result


def large_transaction(dsn: str, daemon: Daemon, opts: Options) -> dict[str, float]:
    daemon.start()
    with psycopg.connect(dsn, autocommit=True) as conn:
        _wait_confirmed(conn, daemon, _wal(conn), timeout=600)
        started = time.perf_counter()
        conn.execute("update big set v = v + 1")
        committed = time.perf_counter()
        end = _wal(conn)
        done = _wait_confirmed(conn, daemon, end, timeout=3600, step=0.2)
    peak = daemon.stop()
    result = {
        "rows": opts.big_rows,
        "postgres_update_seconds": committed - started,
        "apply_seconds_after_commit": done - committed,
        "cdc_peak_rss_mb": peak / 2**20,
    }
    print(
        f"  one transaction updating {opts.big_rows:,} rows: PostgreSQL {result['postgres_update_seconds']:.1f}s, "
        f"then applied in {result['apply_seconds_after_commit']:.1f}s, RSS {result['cdc_peak_rss_mb']:.0f} MB",
        file=sys.stderr,
        flush=True,
    )
    return result


def merge_growth(workdir: Path, sizes: list[int], file_size: int) -> list[dict[str, float]]:
    """The same 10k clustered updates merged into Delta tables of each size, through the daemon's sink.

    The tables are written in key order with the daemon's target file size, as its initial load
    writes them.
    """
    table = TableId("public", "m")
    schema = TableSchema(table, (Column("id", 20, -1, True), Column("v", 20), Column("pad", 25)))
    results = []
    for n in sizes:
        lake = workdir / f"merge-{n}"
        sink = DeltaSink(str(lake), slot="bench", target_file_size=file_size)
        tschema = target_schema(schema, soft_delete=False)
        now = datetime.now(UTC)

        def batches(
            total: int = n, tschema: pa.Schema = tschema, now: datetime = now
        ) -> Iterator[pa.RecordBatch]:
            step = 500_000
            for lo in range(0, total, step):
                ids = pa.array(range(lo, min(total, lo + step)), pa.int64())
                k = len(ids)
                yield pa.RecordBatch.from_arrays(
                    [
                        ids,
                        ids,
                        pa.array([f"{j:050d}" for j in range(lo, lo + k)], pa.string()),
                        pa.repeat(pa.scalar(1, pa.int64()), k),
                        pa.repeat(pa.scalar("r", pa.string()), k),
                        pa.repeat(pa.scalar(now, pa.timestamp("us", tz="UTC")), k),
                    ],
                    schema=tschema,
                )

        started = time.perf_counter()
        write_deltalake(
            str(lake / "public" / "m"),
            pa.RecordBatchReader.from_batches(tschema, batches()),
            target_file_size=file_size,
            configuration={"delta.targetFileSize": str(file_size)},
        )
        build_seconds = time.perf_counter() - started
        files = len(DeltaTable(str(lake / "public" / "m")).file_uris())
        first = n // 2  # a clustered range of keys in the middle of the table
        ids = [str(i).encode() for i in range(first, first + MERGE_CHANGES)]
        rows = pa.table(
            {
                "id": pa.array(ids, pa.binary()),
                "v": pa.array([b"-1"] * MERGE_CHANGES, pa.binary()),
                "pad": pa.array([b"changed"] * MERGE_CHANGES, pa.binary()),
                "_cdc_lsn": pa.repeat(pa.scalar(2, pa.int64()), MERGE_CHANGES),
                "_cdc_op": pa.repeat(pa.scalar(Op.UPDATE.value, pa.string()), MERGE_CHANGES),
                "_cdc_committed_at": pa.repeat(pa.scalar(now, pa.timestamp("us", tz="UTC")), MERGE_CHANGES),
            }
        )
        patch = TablePatch(schema, rows, changes=MERGE_CHANGES)
        started = time.perf_counter()
        sink.apply(patch, TablePosition(Lsn(2)))
        seconds = time.perf_counter() - started
        metrics = DeltaTable(str(lake / "public" / "m")).history(1)[0].get("operationMetrics", {})
        row = {
            "table_rows": n,
            "table_files": files,
            "build_seconds": build_seconds,
            "merge_seconds": seconds,
            "files_removed": float(metrics.get("num_target_files_removed", 0)),
            "files_added": float(metrics.get("num_target_files_added", 0)),
            "rows_copied": float(metrics.get("num_target_rows_copied", 0)),
        }
        print(
            f"  merge of {MERGE_CHANGES:,} clustered updates into {n:,} rows ({files} files): {seconds:.2f}s, "
            f"{row['files_removed']:.0f} file(s) rewritten",
            file=sys.stderr,
            flush=True,
        )
        results.append(row)
        shutil.rmtree(lake, ignore_errors=True)
    return results


# ---- report -------------------------------------------------------------------------------------


def evaluate(res: Results) -> list[Check]:
    checks: list[Check] = []
    if res.catch_up:
        ratio = statistics.median(r["ratio"] for r in res.catch_up)
        checks.append(
            Check(
                f"catch-up >= {MIN_RATIO_VS_RECVLOGICAL}x pg_recvlogical (median of {len(res.catch_up)})",
                "PASS" if ratio >= MIN_RATIO_VS_RECVLOGICAL else "FAIL",
                f"{ratio:.2f}x",
            )
        )
    if res.lag:
        ok = res.lag["p99_seconds"] < MAX_P99_LAG_SECONDS and res.lag["probes_not_seen"] == 0
        checks.append(
            Check(
                f"steady-state p99 lag < {MAX_P99_LAG_SECONDS:g}s at {res.lag['target_rate_tps']:.0f} tps",
                "PASS" if ok else "FAIL",
                f"p99 {res.lag['p99_seconds']:.2f}s (achieved {res.lag['achieved_tps']:.0f} tps, "
                f"{res.lag['probes_not_seen']:.0f} probes not seen)",
            )
        )
    rss = [("catch-up", r["cdc_peak_rss_mb"]) for r in res.catch_up]
    if res.lag:
        rss.append(("steady lag", res.lag["cdc_peak_rss_mb"]))
    if res.large_txn:
        rss.append(("large transaction", res.large_txn["cdc_peak_rss_mb"]))
    if "initial_load_peak_rss_mb" in res.setup:
        rss.append(("initial load", res.setup["initial_load_peak_rss_mb"]))
    if rss:
        worst = max(rss, key=lambda x: x[1])
        checks.append(
            Check(
                "daemon peak RSS < 1024 MiB in every scenario",
                "PASS" if worst[1] * 2**20 < MAX_PEAK_RSS_BYTES else "FAIL",
                f"worst {worst[1]:.0f} MiB ({worst[0]})",
            )
        )
    if len(res.merge) >= 2:
        small, large = res.merge[0], res.merge[-1]
        growth = large["merge_seconds"] / small["merge_seconds"]
        checks.append(
            Check(
                f"merge into {large['table_rows']:,.0f} rows < {MAX_MERGE_GROWTH:g}x the time into {small['table_rows']:,.0f}",
                "PASS" if growth < MAX_MERGE_GROWTH else "FAIL",
                f"{growth:.2f}x ({small['merge_seconds']:.2f}s -> {large['merge_seconds']:.2f}s)",
            )
        )
    return checks


def render(res: Results, checks: list[Check]) -> str:
    rows = []
    for r in res.catch_up:
        rows.append(
            [
                f"catch-up #{r['round']:.0f}",
                f"{r['changes']:,.0f} changes",
                f"pg_recvlogical {r['pg_recvlogical_changes_per_s']:,.0f}/s",
                f"cdc-replicator {r['cdc_changes_per_s']:,.0f}/s",
                f"{r['ratio']:.2f}x",
                f"{r['cdc_peak_rss_mb']:.0f} MiB",
            ]
        )
    if res.lag:
        lag = res.lag
        rows.append(
            [
                "steady-state lag",
                f"{lag['achieved_tps']:.0f} tps",
                f"p50 {lag['p50_seconds']:.2f}s",
                f"p99 {lag['p99_seconds']:.2f}s",
                f"max {lag['max_seconds']:.2f}s",
                f"{lag['cdc_peak_rss_mb']:.0f} MiB",
            ]
        )
    if res.large_txn:
        lt = res.large_txn
        rows.append(
            [
                "large transaction",
                f"{lt['rows']:,.0f} rows",
                f"PostgreSQL {lt['postgres_update_seconds']:.1f}s",
                f"applied {lt['apply_seconds_after_commit']:.1f}s after commit",
                "",
                f"{lt['cdc_peak_rss_mb']:.0f} MiB",
            ]
        )
    for m in res.merge:
        rows.append(
            [
                "merge 10k clustered",
                f"{m['table_rows']:,.0f} rows",
                f"{m['table_files']:.0f} files",
                f"{m['merge_seconds']:.2f}s",
                f"{m['files_removed']:.0f} rewritten",
                "",
            ]
        )
    table = format_table(["scenario", "size", "", "", "", "peak RSS"], rows)
    lines = [f"{c.status} {c.name}: {c.detail}" for c in checks]
    return table + "\n\n" + "\n".join(lines)


def parse_args(argv: list[str] | None) -> Options:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scale", type=int, default=20)
    p.add_argument("--seconds", type=int, default=60, help="pgbench -T of each catch-up round")
    p.add_argument("--repeat", type=int, default=3, help="catch-up rounds (the checks use the median)")
    p.add_argument("--rate", type=int, default=1000, help="pgbench -R of the steady-state lag scenario")
    p.add_argument("--lag-seconds", type=int, default=30)
    p.add_argument("--big-rows", type=int, default=5_000_000)
    p.add_argument("--merge-rows", default="1000000,10000000")
    p.add_argument("--pg", type=int, default=15)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    a = p.parse_args(argv)
    return Options(
        a.scale, a.seconds, a.repeat, a.rate, a.lag_seconds, a.big_rows,
        [int(x) for x in a.merge_rows.split(",") if x], a.pg, a.out,
    )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    res = Results()
    started = time.perf_counter()
    try:
        with interruptible():
            binaries = find_binaries(opts.pg)
            workdir = Path(tempfile.mkdtemp(prefix="cdc-stream-bench-"))
            try:
                with (
                    LocalPostgres(binaries, fast=True, settings=PG_SETTINGS) as cluster,
                    _daemons() as daemons,
                ):
                    dsn = cluster.create_database(DATABASE)
                    print(
                        f"PostgreSQL {binaries.version}; building pgbench -s {opts.scale}, big {opts.big_rows:,} rows ...",
                        file=sys.stderr,
                    )
                    build(cluster, dsn, opts, res)
                    (workdir / "state").mkdir()
                    daemon = Daemon(_config(dsn, workdir), workdir / "daemon.log")
                    daemons.append(daemon)
                    print("initial load ...", file=sys.stderr, flush=True)
                    initial_load(daemon, dsn, res)
                    for i in range(1, opts.repeat + 1):
                        res.catch_up.append(catch_up_round(cluster, dsn, daemon, opts, i))
                    res.lag = steady_lag(cluster, dsn, daemon, workdir, opts)
                    res.large_txn = large_transaction(dsn, daemon, opts)
                res.merge = merge_growth(workdir, opts.merge_rows, TargetConfig("").target_file_size)
            finally:
                shutil.rmtree(workdir, ignore_errors=True)
    except KeyboardInterrupt:
        print("interrupted; the cluster and temp directories were removed", file=sys.stderr)
        return 2
    except (BenchError, ReplicatorError, psycopg.Error, OSError, subprocess.SubprocessError) as exc:
        print(f"benchmark could not run: {exc}", file=sys.stderr)
        return 2
    checks = evaluate(res)
    print(render(res, checks))
    report = {
        "when": datetime.now(UTC).isoformat(),
        "seconds": time.perf_counter() - started,
        "options": {**asdict(opts), "out": str(opts.out)},
        "machine": machine_info(),
        "git": git_revision(REPO_DIR),
        "versions": package_versions(["cdc-replicator", "deltalake", "pyarrow", "psycopg"]),
        "results": asdict(res),
        "checks": [asdict(c) for c in checks],
    }
    opts.out.parent.mkdir(parents=True, exist_ok=True)
    opts.out.write_text(json.dumps(report, indent=2, default=str))
    print(f"\nwrote {opts.out} ({report['seconds']:.0f}s)")
    return 1 if any(c.status == "FAIL" for c in checks) else 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # delta-rs may abort at interpreter exit (delta-rs #2184)
