"""Write amplification: bytes the daemon writes to the lake per byte of changed rows, and its RSS.

    python bench/write_amplification.py [--minutes 10] [--rate 1000] [--scale 10] [--rows 10000000]
        [--scenarios pgbench,random,clustered] [--file-size BYTES] [--max-seconds S] [--rss-every 5]
        [--pg 15] [--out bench/results/write_amplification.json]

Starts a throwaway PostgreSQL (fsync off, wal_level = logical) and runs each scenario in its own
database with a fresh daemon and a fresh lake:

- **pgbench**: ``pgbench -i -s SCALE`` (``pgbench_history`` at REPLICA IDENTITY FULL), then the
  built-in TPC-B-like script (3 updates + 1 insert per transaction) at ``pgbench -R RATE``;
- **random**: a ``big`` table of ROWS rows (``id bigint`` key, an integer, a 32-character text),
  one ``update big set v = v + 1`` per transaction at a uniformly random id;
- **clustered**: the same table, the updated id drawn from the newest 1 % of the keys (a hot range,
  as orders are updated shortly after they are created).

Each stream lasts MINUTES. Definitions (all figures are for the stream only; the initial load is
not counted):

- *changed rows*: ``n_tup_ins + n_tup_upd + n_tup_del`` of ``pg_stat_user_tables`` over the stream;
- *byte of changed rows* (the denominator): PostgreSQL's row width, ``avg(pg_column_size(t.*))``
  of the table, times its changed rows. A second baseline, in the same run: the Parquet bytes per
  row of the table's live files times its changed rows, i.e. what an append of the same rows would
  have written (the floor for any copy-on-write layout);
- *bytes written*: the sum of the ``size`` of every ``add`` action committed to the Delta log
  after the load (data files; the log itself is listed apart), and *files created* their count;
- *on disk*: the Parquet bytes under the table's directory after the stream, against its live
  bytes (the sum of the live files), and again after one maintenance pass (``maintain`` below).

Lag: every 0.5 s a row is committed to ``lag_probe``; a watcher notes when it is visible in Delta
(p50, p99). RSS: ``VmRSS`` of the daemon's process (and, apart, of its children: the replication
reader) every RSS_EVERY seconds. TPS and lag are noisy on a shared machine; byte ratios are not.

Writes a table to stdout and everything (with machine and versions) to ``--out``; exits 0 when
every scenario ran, 2 when the benchmark could not run.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import psycopg
from common import (
    MIB,
    BenchError,
    clean_env,
    format_table,
    git_revision,
    interruptible,
    machine_info,
    package_versions,
)
from deltalake import DeltaTable
from stream_bench import PG_SETTINGS, SLOT, Daemon, _as_postgres, _children, _daemons, _wait_confirmed, _wal

from cdc_replicator.demo.localpg import LocalPostgres, find_binaries
from cdc_replicator.errors import ReplicatorError

logger = logging.getLogger("write_amplification")

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
DEFAULT_OUT = BENCH_DIR / "results" / "write_amplification.json"
PUBLICATION = "cdc_bench"
SCENARIOS = ("pgbench", "random", "clustered")
PGBENCH_TABLES = ("pgbench_accounts", "pgbench_tellers", "pgbench_branches", "pgbench_history")
PROBE_EVERY = 0.5
HOT_SHARE = 0.01  # clustered: the updated keys are the newest 1 % of the table


@dataclass
class Options:
    minutes: float
    rate: int
    scale: int
    rows: int
    scenarios: list[str]
    file_size: int | None
    max_seconds: float | None
    rss_every: float
    pg: int
    out: Path


@dataclass
class TableBytes:
    table: str
    live_rows: int
    live_files: int
    live_bytes: int
    pg_row_bytes: float
    changed_rows: int
    changed_pg_bytes: int
    changed_parquet_bytes: int
    files_created: int
    bytes_written: int
    log_bytes_written: int
    commits: int
    on_disk_after_stream: int
    on_disk_after_maintenance: int = 0
    files_after_maintenance: int = 0
    maintenance_seconds: float = 0.0


@dataclass
class Scenario:
    name: str
    minutes: float
    target_rate_tps: int
    achieved_tps: float = float("nan")
    tables: list[TableBytes] = field(default_factory=list)
    lag: dict[str, float] = field(default_factory=dict)
    rss: dict[str, object] = field(default_factory=dict)
    load_seconds: float = 0.0
    drain_seconds: float = 0.0

    def total(self, attr: str) -> int:
        return sum(int(getattr(t, attr)) for t in self.tables)


# ---- maintenance (swap for ``cdc-replicator maintain`` once it exists) ------------------------------


def maintain(uri: str) -> float:
    """ONE maintenance pass with direct deltalake calls, the steps of ``cdc-replicator maintain``;
    returns its seconds.

    Compact small files, vacuum every removed file now, checkpoint, drop expired log files. The
    retention is 0 — the floor a pass reaches once the retention has passed — which ``maintain``
    does not take (``retention_hours`` is positive; and on a table at reader version 3 it vacuums by
    whole hours): hence the direct calls.
    """
    started = time.perf_counter()
    dt = DeltaTable(uri)
    dt.optimize.compact()
    dt.vacuum(retention_hours=0, enforce_retention_duration=False, dry_run=False)
    dt.create_checkpoint()
    dt.cleanup_metadata()
    return time.perf_counter() - started


# ---- measuring a lake -----------------------------------------------------------------------------


def _parquet_bytes(path: Path) -> tuple[int, int]:
    """(files, bytes) of the Parquet data files under ``path`` (the log is not counted)."""
    files = size = 0
    for d, _, names in os.walk(path):
        if "_delta_log" in d:
            continue
        for n in names:
            if n.endswith(".parquet"):
                files += 1
                size += os.path.getsize(os.path.join(d, n))
    return files, size


def _log_since(path: Path, version: int) -> tuple[int, int, int, int]:
    """(commits, files added, bytes added, log bytes) of the JSON commits after ``version``."""
    commits = added = size = log_bytes = 0
    for f in (path / "_delta_log").glob("*.json"):
        try:
            v = int(f.stem)
        except ValueError:
            continue
        if v <= version:
            continue
        commits += 1
        log_bytes += f.stat().st_size
        for line in f.read_text().splitlines():
            if '"add"' not in line:
                continue
            action = json.loads(line)
            if "add" in action:
                added += 1
                size += int(action["add"]["size"])
    for f in (path / "_delta_log").glob("*.checkpoint*.parquet"):
        log_bytes += f.stat().st_size
    return commits, added, size, log_bytes


def _live(uri: str) -> tuple[int, int, int, int]:
    """(version, live rows, live files, live bytes) of the table's current version."""
    dt = DeltaTable(uri)
    actions = dt.get_add_actions(flatten=True)
    rows = sum(int(x or 0) for x in actions.column("num_records").to_pylist())
    size = sum(int(x) for x in actions.column("size_bytes").to_pylist())
    return dt.version(), rows, len(actions.column("size_bytes")), size


# ---- the RSS sampler ------------------------------------------------------------------------------


def _vmrss(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class RssSampler:
    """VmRSS of the daemon (and of its children, apart) every ``every`` seconds, in a thread."""

    def __init__(self, pid: int, every: float) -> None:
        self._pid, self._every = pid, every
        self.series: list[tuple[float, float, float]] = []  # (seconds, daemon MiB, children MiB)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._t0 = time.perf_counter()

    def start(self) -> None:
        self._t0 = time.perf_counter()
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            main = _vmrss(self._pid)
            if main == 0:
                return
            kids = sum(_vmrss(p) for p in _children(self._pid))
            self.series.append((round(time.perf_counter() - self._t0, 1), main / MIB, kids / MIB))
            self._stop.wait(self._every)

    def stop(self) -> dict[str, object]:
        self._stop.set()
        self._thread.join(timeout=10)
        s = self.series
        if not s:
            return {}
        mains = [m for _, m, _ in s]
        # the first minute's median is the start: the first samples still include the load's tail
        head = [m for t, m, _ in s if t <= 60] or mains[:1]
        tail = [m for t, m, _ in s if t >= s[-1][0] - 60] or mains[-1:]
        return {
            "every_seconds": self._every,
            "start_mib": statistics.median(head),
            "end_mib": statistics.median(tail),
            "max_mib": max(mains),
            "max_over_start": max(mains) / statistics.median(head),
            "children_max_mib": max(k for _, _, k in s),
            "series": [[t, round(m, 1), round(k, 1)] for t, m, k in s],
        }


def compact_series(series: list[list[float]], points: int = 12) -> str:
    """``0.0m 290 · 2.5m 300 · …``: the daemon's MiB at about ``points`` evenly spaced samples."""
    if not series:
        return "-"
    step = max(1, len(series) // points)
    picked = series[::step]
    if picked[-1] is not series[-1]:
        picked.append(series[-1])
    return " · ".join(f"{t / 60:.1f}m {m:.0f}" for t, m, _ in picked)


# ---- the lag probe --------------------------------------------------------------------------------


class LagProbe:
    """A row committed to ``lag_probe`` every PROBE_EVERY s; a watcher notes when Delta shows it."""

    def __init__(self, dsn: str, table_uri: str) -> None:
        self._dsn, self._uri = dsn, table_uri
        self.committed: dict[int, float] = {}
        self.visible: dict[int, float] = {}
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._write, daemon=True),
            threading.Thread(target=self._watch, daemon=True),
        ]

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def _write(self) -> None:
        with psycopg.connect(self._dsn, autocommit=True) as conn:
            i = 0
            while not self._stop.is_set():
                i += 1
                conn.execute("insert into lag_probe values (%s, clock_timestamp())", (i,))
                self.committed[i] = time.time()
                self._stop.wait(PROBE_EVERY)

    def _watch(self) -> None:
        dt: DeltaTable | None = None
        deadline = float("inf")
        while time.time() < deadline:
            if self._stop.is_set() and deadline == float("inf"):
                deadline = time.time() + 120
            try:
                if dt is None:
                    dt = DeltaTable(self._uri)
                else:
                    dt.update_incremental()
                ids = dt.to_pyarrow_table(columns=["id"]).column("id").to_pylist()
            except Exception:  # the table is being written: look again
                time.sleep(0.1)
                continue
            now = time.time()
            for i in ids:
                self.visible.setdefault(int(i), now)
            if self._stop.is_set() and len(self.visible) >= len(self.committed):
                return
            time.sleep(0.1)

    def stop(self) -> dict[str, float]:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=180)
        lags = sorted(self.visible[i] - self.committed[i] for i in self.committed if i in self.visible)
        if len(lags) < 2:
            return {"probes": float(len(self.committed)), "probes_not_seen": float(len(self.committed))}
        q = statistics.quantiles(lags, n=100, method="inclusive")
        return {
            "probes": float(len(self.committed)),
            "probes_not_seen": float(len(self.committed) - len(lags)),
            "p50_seconds": statistics.median(lags),
            "p99_seconds": q[98],
            "max_seconds": lags[-1],
        }


# ---- set-up ---------------------------------------------------------------------------------------


def _pgbench(cluster: LocalPostgres, db: str, *args: str, timeout: float) -> str:
    argv = [cluster.binaries.tool("pgbench"), *args, "-h", cluster.host, "-p", str(cluster.port)]
    result = subprocess.run(
        [*argv, "-U", "postgres", db],
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


def _build(cluster: LocalPostgres, dsn: str, db: str, name: str, opts: Options) -> list[str]:
    """Create the scenario's tables; returns their names (without ``lag_probe``)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("create table lag_probe (id bigint primary key, at timestamptz not null)")
    if name == "pgbench":
        _pgbench(cluster, db, "-i", "-s", str(opts.scale), "-q", timeout=1800)
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("alter table pgbench_history replica identity full")
            conn.execute("vacuum analyze")
        return list(PGBENCH_TABLES)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("create table big (id bigint primary key, v integer not null, pad text not null)")
        conn.execute(
            "insert into big select g, 0, md5(g::text) from generate_series(1, %s::bigint) g", (opts.rows,)
        )
        conn.execute("vacuum analyze big")
    return ["big"]


def _script(workdir: Path, name: str, rows: int) -> Path:
    lo = 1 if name == "random" else max(1, rows - int(rows * HOT_SHARE) + 1)
    path = workdir / f"{name}.sql"
    path.write_text(f"\\set id random({lo}, {rows})\nupdate big set v = v + 1 where id = :id;\n")
    path.chmod(0o644)
    workdir.chmod(0o755)
    return path


def _config(dsn: str, workdir: Path, tables: list[str], opts: Options) -> Path:
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
    ]
    if opts.file_size:
        lines.append(f"target_file_size = {opts.file_size}")
    if opts.max_seconds:
        lines += ["[batch]", f"max_seconds = {opts.max_seconds}"]
    lines += [
        "[state]",
        f"url = {q('sqlite:///' + str(workdir / 'state' / 'cdc.db'))}",
        "[server]",
        "enabled = false",
        "[log]",
        'format = "json"',
        'level = "info"',
    ]
    for t in [*tables, "lag_probe"]:
        lines += ["[[tables]]", f"name = {q('public.' + t)}"]
    path = workdir / "config.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def _counters(dsn: str, tables: list[str]) -> dict[str, int]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(
            "select relname, n_tup_ins + n_tup_upd + n_tup_del from pg_stat_user_tables"
            " where relname = any(%s)",
            (tables,),
        ).fetchall()
    return {str(r[0]): int(r[1]) for r in rows}


def _row_width(dsn: str, table: str) -> float:
    with psycopg.connect(dsn, autocommit=True) as conn:
        sample = "tablesample system (1)" if table == "big" else ""
        row = conn.execute(
            f"select avg(pg_column_size(t.*))::float8 from {table} t {sample}"  # noqa: S608 - our names
        ).fetchone()
    return float(row[0]) if row and row[0] is not None else 0.0


# ---- one scenario ---------------------------------------------------------------------------------


def run_scenario(cluster: LocalPostgres, name: str, opts: Options, root: Path) -> Scenario:
    db = f"amp_{name}"
    dsn = cluster.create_database(db)
    workdir = root / name
    (workdir / "state").mkdir(parents=True)
    res = Scenario(name, opts.minutes, opts.rate)
    print(f"[{name}] building ...", file=sys.stderr, flush=True)
    tables = _build(cluster, dsn, db, name, opts)
    lake = workdir / "lake" / "public"
    with _daemons() as daemons:
        daemon = Daemon(_config(dsn, workdir, tables, opts), workdir / "daemon.log")
        daemons.append(daemon)
        print(f"[{name}] initial load ...", file=sys.stderr, flush=True)
        daemon.start()
        deadline = time.perf_counter() + 3600
        while "streaming slot=" not in daemon.log_text():
            daemon.check_alive()
            if time.perf_counter() > deadline:
                raise BenchError("the initial load did not finish within an hour")
            time.sleep(0.5)
        with psycopg.connect(dsn, autocommit=True) as conn:
            _wait_confirmed(conn, daemon, _wal(conn), timeout=3600, step=0.2)
        res.load_seconds = time.perf_counter() - daemon.started
        loaded = {t: _live(str(lake / t))[0] for t in tables}
        before = _counters(dsn, tables)
        assert daemon.proc is not None
        rss = RssSampler(daemon.proc.pid, opts.rss_every)
        rss.start()
        probe = LagProbe(dsn, str(lake / "lag_probe"))
        probe.start()
        seconds = int(opts.minutes * 60)
        print(f"[{name}] streaming {seconds}s at {opts.rate} tps ...", file=sys.stderr, flush=True)
        args = ["-n", "-T", str(seconds), "-R", str(opts.rate), "-c", "2", "-j", "2"]
        if name != "pgbench":
            args += ["-f", str(_script(workdir, name, opts.rows))]
        out = _pgbench(cluster, db, *args, timeout=seconds + 900)
        tps = re.search(r"tps = ([\d.]+)", out)
        res.achieved_tps = float(tps.group(1)) if tps else float("nan")
        drain = time.perf_counter()
        with psycopg.connect(dsn, autocommit=True) as conn:
            _wait_confirmed(conn, daemon, _wal(conn), timeout=3600, step=0.2)
        res.drain_seconds = time.perf_counter() - drain
        res.lag = probe.stop()
        res.rss = rss.stop()
        daemon.stop()
    time.sleep(1.5)  # pgbench's backends have exited: their table counters are flushed
    after = _counters(dsn, tables)
    for t in tables:
        path = lake / t
        _, live_rows, live_files, live_bytes = _live(str(path))
        commits, added, written, log_bytes = _log_since(path, loaded[t])
        changed = after.get(t, 0) - before.get(t, 0)
        width = _row_width(dsn, t)
        per_row = live_bytes / live_rows if live_rows else 0.0
        tb = TableBytes(
            table=t,
            live_rows=live_rows,
            live_files=live_files,
            live_bytes=live_bytes,
            pg_row_bytes=width,
            changed_rows=changed,
            changed_pg_bytes=int(width * changed),
            changed_parquet_bytes=int(per_row * changed),
            files_created=added,
            bytes_written=written,
            log_bytes_written=log_bytes,
            commits=commits,
            on_disk_after_stream=_parquet_bytes(path)[1],
        )
        tb.maintenance_seconds = maintain(str(path))
        tb.files_after_maintenance, tb.on_disk_after_maintenance = _parquet_bytes(path)
        res.tables.append(tb)
        print(
            f"[{name}] {t}: {changed:,} changed rows, wrote {written / MIB:,.1f} MiB in {added:,} files "
            f"({_ratio(written, tb.changed_pg_bytes)}x PG bytes); on disk {tb.on_disk_after_stream / MIB:,.1f}"
            f" -> {tb.on_disk_after_maintenance / MIB:,.1f} MiB after maintenance (live {live_bytes / MIB:,.1f})",
            file=sys.stderr,
            flush=True,
        )
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "select pg_drop_replication_slot(slot_name) from pg_replication_slots where slot_name = %s",
            (SLOT,),
        )
    shutil.rmtree(workdir / "lake", ignore_errors=True)
    return res


def _ratio(a: float, b: float) -> str:
    return f"{a / b:,.1f}" if b else "-"


# ---- report ---------------------------------------------------------------------------------------


def render(results: list[Scenario]) -> str:
    rows = []
    for s in results:
        for t in s.tables:
            rows.append(
                [
                    s.name,
                    t.table,
                    f"{t.changed_rows:,}",
                    f"{t.changed_pg_bytes / MIB:,.1f}",
                    f"{t.bytes_written / MIB:,.1f}",
                    _ratio(t.bytes_written, t.changed_pg_bytes),
                    _ratio(t.bytes_written, t.changed_parquet_bytes),
                    f"{t.files_created:,}",
                    f"{t.live_bytes / MIB:,.1f}",
                    f"{t.on_disk_after_stream / MIB:,.1f}",
                    f"{t.on_disk_after_maintenance / MIB:,.1f}",
                ]
            )
        rows.append(
            [
                s.name,
                "all tables",
                f"{s.total('changed_rows'):,}",
                f"{s.total('changed_pg_bytes') / MIB:,.1f}",
                f"{s.total('bytes_written') / MIB:,.1f}",
                _ratio(s.total("bytes_written"), s.total("changed_pg_bytes")),
                _ratio(s.total("bytes_written"), s.total("changed_parquet_bytes")),
                f"{s.total('files_created'):,}",
                f"{s.total('live_bytes') / MIB:,.1f}",
                f"{s.total('on_disk_after_stream') / MIB:,.1f}",
                f"{s.total('on_disk_after_maintenance') / MIB:,.1f}",
            ]
        )
    headers = [
        "scenario",
        "table",
        "changed rows",
        "changed MiB (PG)",
        "written MiB",
        "x PG",
        "x append",
        "files",
        "live MiB",
        "disk MiB",
        "after maint.",
    ]
    out = [format_table(headers, rows, left=2), ""]
    for s in results:
        lag = s.lag
        rss = s.rss
        out.append(
            f"{s.name}: {s.minutes:g} min at {s.achieved_tps:.0f} tps (target {s.target_rate_tps}); "
            f"lag p50 {lag.get('p50_seconds', float('nan')):.2f}s p99 {lag.get('p99_seconds', float('nan')):.2f}s; "
            f"daemon RSS start {rss.get('start_mib', 0):.0f} MiB, max {rss.get('max_mib', 0):.0f} "
            f"({rss.get('max_over_start', 0):.2f}x), end {rss.get('end_mib', 0):.0f}"
        )
        out.append(f"  RSS MiB: {compact_series(rss.get('series', []))}")  # type: ignore[arg-type]
    return "\n".join(out)


def parse_args(argv: list[str] | None) -> Options:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=10.0, help="length of each scenario's stream")
    p.add_argument("--rate", type=int, default=1000, help="pgbench -R (transactions per second)")
    p.add_argument("--scale", type=int, default=10, help="pgbench -i -s of the pgbench scenario")
    p.add_argument("--rows", type=int, default=10_000_000, help="rows of the big table")
    p.add_argument("--scenarios", default=",".join(SCENARIOS))
    p.add_argument(
        "--file-size", type=int, default=None, help="[target] target_file_size (default: the daemon's)"
    )
    p.add_argument(
        "--max-seconds", type=float, default=None, help="[batch] max_seconds (default: the daemon's)"
    )
    p.add_argument("--rss-every", type=float, default=5.0, help="seconds between RSS samples")
    p.add_argument("--pg", type=int, default=15)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    a = p.parse_args(argv)
    names = [s for s in a.scenarios.split(",") if s]
    unknown = set(names) - set(SCENARIOS)
    if unknown:
        p.error(f"unknown scenario(s) {sorted(unknown)}; choose from {', '.join(SCENARIOS)}")
    return Options(
        a.minutes, a.rate, a.scale, a.rows, names, a.file_size, a.max_seconds, a.rss_every, a.pg, a.out
    )


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    results: list[Scenario] = []
    started = time.perf_counter()
    try:
        with interruptible():
            binaries = find_binaries(opts.pg)
            root = Path(tempfile.mkdtemp(prefix="cdc-amp-bench-"))
            root.chmod(0o755)  # pgbench runs as postgres and reads its script from here
            try:
                with LocalPostgres(binaries, fast=True, settings=PG_SETTINGS) as cluster:
                    for name in opts.scenarios:
                        results.append(run_scenario(cluster, name, opts, root))
            finally:
                shutil.rmtree(root, ignore_errors=True)
    except KeyboardInterrupt:
        print("interrupted; the cluster and temp directories were removed", file=sys.stderr)
        return 2
    except (BenchError, ReplicatorError, psycopg.Error, OSError, subprocess.SubprocessError) as exc:
        print(f"benchmark could not run: {exc}", file=sys.stderr)
        return 2
    print(render(results))
    report = {
        "when": datetime.now(UTC).isoformat(),
        "seconds": time.perf_counter() - started,
        "options": {**asdict(opts), "out": str(opts.out)},
        "definitions": {
            "changed_pg_bytes": "avg(pg_column_size(t.*)) x (n_tup_ins + n_tup_upd + n_tup_del) over the stream",
            "changed_parquet_bytes": "live Parquet bytes per row of the table x changed rows (an append's size)",
            "bytes_written": "sum of add.size of the Delta commits after the initial load",
        },
        "machine": machine_info(),
        "git": git_revision(REPO_DIR),
        "versions": package_versions(["cdc-replicator", "deltalake", "pyarrow", "psycopg"]),
        "results": [asdict(s) for s in results],
    }
    opts.out.parent.mkdir(parents=True, exist_ok=True)
    opts.out.write_text(json.dumps(report, indent=2, default=str))
    print(f"\nwrote {opts.out} ({report['seconds']:.0f}s)")
    return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # delta-rs may abort at interpreter exit (delta-rs #2184)
