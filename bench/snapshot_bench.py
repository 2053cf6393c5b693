"""Full-table snapshot speed of cdc-replicator against COPY (the physical limit) and dlt, in one run.

    /opt/venv/bin/python bench/snapshot_bench.py [--scale 50] [--wide-rows 1000000] [--parallel 2]
        [--pg 15] [--out bench/results/snapshot.json] [--skip-dlt] [--repeat 1]

Starts a throwaway PostgreSQL (fsync off, wal_level = logical, shared_buffers 256MB), builds
``pgbench_accounts`` (``pgbench -i -s SCALE``: 100,000 rows per scale unit) and ``wide`` (12 columns
of mixed types), then for each table runs, each as its own subprocess (wall clock from spawn to exit,
peak RSS from ``wait4`` through ``rusage_launcher.py``, whose ~9 MB are the floor of that figure):

- ``psql`` COPY to /dev/null: the baseline every "vs COPY" ratio refers to;
- psycopg ``copy.read()`` discarding the bytes: the client-library cost on top of it;
- ``cdc-replicator snapshot --table T --parallel N`` with a config listing only T, into a fresh
  lake and state store (flags the installed CLI lacks are left out: plain ``snapshot``);
- dlt's ``sql_table`` (pyarrow backend) into its filesystem destination as Delta, full load. It needs
  ``pip install "dlt[deltalake,filesystem]" psycopg2-binary``; without it the report says
  ``dlt: unavailable: <reason>`` and the dlt targets are SKIP.

Every Delta result is counted against the source: a wrong count is a FAIL whatever the speed.
Prints the figures and PASS/FAIL/SKIP lines for the targets, writes everything plus machine and
version information as JSON to ``--out``, and exits 0 when nothing failed, 1 when a target or a
count failed, 2 when the benchmark itself could not run. The cluster and every temp directory are
removed on exit, on error and on Ctrl-C/SIGTERM.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import psycopg
from common import (
    MIB,
    BenchError,
    Measured,
    clean_env,
    format_table,
    git_revision,
    interruptible,
    machine_info,
    package_versions,
    run_measured,
    server_user_ids,
)
from psycopg import sql
from workers import dlt_table_path

from cdc_replicator.demo.localpg import LocalPostgres, find_binaries
from cdc_replicator.errors import ReplicatorError

logger = logging.getLogger("snapshot_bench")

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
WORKERS = BENCH_DIR / "workers.py"
DEFAULT_OUT = BENCH_DIR / "results" / "snapshot.json"

DATABASE = "bench"
SLOT = "bench"
PUBLICATION = "bench"
ACCOUNTS = "public.pgbench_accounts"
WIDE = "public.wide"
TABLES = (ACCOUNTS, WIDE)

# Server settings for the throwaway cluster, on top of LocalPostgres's (fsync off with fast=True).
PG_SETTINGS = {
    "shared_buffers": "256MB",
    "max_wal_size": "8GB",
    "checkpoint_timeout": "30min",
    "synchronous_commit": "off",
    "maintenance_work_mem": "256MB",
}

# Targets for cdc-replicator (rows/s ratios and peak memory).
MIN_RATIO_VS_COPY = {WIDE: 0.5, ACCOUNTS: 0.3}
MIN_SPEEDUP_VS_DLT = 4.0
MAX_PEAK_RSS_BYTES = 1024 * MIB

TOOL_PSQL = "copy psql>/dev/null"
TOOL_PSYCOPG = "copy psycopg read"
TOOL_CDC = "cdc-replicator"
TOOL_DLT = "dlt"
TOOL_WATERMARK = "cdc-replicator watermark"  # run --once catch-up in watermark mode (wide table only)

PACKAGES = (
    "cdc-replicator",
    "deltalake",
    "pyarrow",
    "psycopg",
    "psycopg-binary",
    "sqlalchemy",
    "dlt",
    "psycopg2-binary",
)

_WIDE_DDL = """
create table public.wide (
    id bigint primary key,
    account_id integer not null,
    quantity integer not null,
    priority smallint not null,
    amount numeric(12,2) not null,
    note text not null,
    created_at timestamptz not null,
    updated_at timestamptz,
    active boolean not null,
    score double precision not null,
    code varchar(16) not null,
    attrs jsonb not null
)
"""

# note: 100 characters; updated_at: null in every tenth row; attrs: a small object.
_WIDE_FILL = """
insert into public.wide
select g,
       ((g * 7919) %% 1000003)::integer,
       (g %% 1000)::integer,
       (g %% 5)::smallint,
       (((g * 37) %% 10000000) / 100.0)::numeric(12,2),
       md5(g::text) || md5((g * 2)::text) || md5((g * 3)::text) || left(md5((g * 5)::text), 4),
       timestamptz '2024-01-01 00:00:00+00' + g * interval '1 second',
       case when g %% 10 = 0 then null
            else timestamptz '2024-06-01 00:00:00+00' + g * interval '1 second' end,
       g %% 3 <> 0,
       ((g %% 100000) / 7.0)::double precision,
       'C' || lpad((g %% 10000)::text, 5, '0'),
       jsonb_build_object('tier', g %% 4, 'tag', 't' || (g %% 10), 'flags', jsonb_build_array(g %% 2 = 0, g %% 5 = 0))
from generate_series(1, %s::bigint) as g
"""

_STDERR_TAIL_CHARS = 4000

Status = Literal["PASS", "FAIL", "SKIP"]


@dataclass(frozen=True, slots=True)
class Options:
    scale: int
    wide_rows: int
    parallel: int
    pg: int
    out: Path
    skip_dlt: bool
    repeat: int
    timeout: float


@dataclass(frozen=True, slots=True)
class SourceTable:
    """A benchmark table as built: its exact row count and on-disk size."""

    name: str
    rows: int
    table_bytes: int


@dataclass(frozen=True, slots=True)
class ToolRun:
    """One measured run of one tool on one table. ``rows_out`` is what landed (None: not counted)."""

    table: str
    tool: str
    attempt: int
    seconds: float
    peak_rss_bytes: int
    ok: bool
    rows_out: int | None
    detail: str = ""
    extra: dict[str, object] = field(default_factory=dict)
    stderr_tail: str = ""  # what the tool logged (warnings, retries), for reading the JSON later


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    status: Status
    detail: str


@dataclass(frozen=True, slots=True)
class CdcCli:
    """What the installed ``cdc-replicator snapshot`` accepts (read from its --help)."""

    has_table: bool
    has_parallel: bool

    def argv(self, table: str, parallel: int) -> list[str]:
        """The ``snapshot`` arguments for loading ``table`` with this CLI."""
        args = ["snapshot"]
        if self.has_table:
            args += ["--table", table]
        if self.has_parallel:
            args += ["--parallel", str(parallel)]
        return args

    def describe(self, parallel: int) -> str:
        return " ".join(self.argv("T", parallel)) + ", config listing only T"


@dataclass(frozen=True, slots=True)
class DltAvailability:
    available: bool
    reason: str


# ---- set-up ------------------------------------------------------------------------------------


def build_data(cluster: LocalPostgres, dsn: str, opts: Options) -> tuple[list[SourceTable], dict[str, float]]:
    """pgbench -i, the wide table, vacuum analyze, the publication; returns the tables and step times."""
    timings: dict[str, float] = {}
    started = time.perf_counter()
    argv = [cluster.binaries.tool("pgbench"), "-i", "-s", str(opts.scale), "-q"]
    argv += ["-h", cluster.host, "-p", str(cluster.port), "-U", "postgres", DATABASE]
    user = server_user_ids()
    try:
        result = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=opts.timeout,
            check=False,
            cwd="/",
            env=clean_env(),
            user=user.uid if user else None,
            group=user.gid if user else None,
            extra_groups=[] if user else None,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise BenchError(f"pgbench -i -s {opts.scale} could not run") from exc
    if result.returncode != 0:
        raise BenchError(
            f"pgbench -i -s {opts.scale} exited {result.returncode}: {result.stderr.strip()[-2000:]}"
        )
    timings["pgbench_init"] = time.perf_counter() - started

    with psycopg.connect(dsn, autocommit=True) as conn:
        started = time.perf_counter()
        conn.execute(_WIDE_DDL)
        conn.execute(_WIDE_FILL, (opts.wide_rows,))
        timings["wide_fill"] = time.perf_counter() - started
        started = time.perf_counter()
        for table in TABLES:
            conn.execute(sql.SQL("vacuum (analyze) {}").format(_ident(table)))
        timings["vacuum_analyze"] = time.perf_counter() - started
        # Created here for both tables, so a config that lists only one of them passes the
        # publication check of the installed cdc-replicator (it must publish every listed table).
        targets = sql.SQL(", ").join(_ident(t) for t in TABLES)
        conn.execute(
            sql.SQL("create publication {} for table {} with (publish_via_partition_root = true)").format(
                sql.Identifier(PUBLICATION), targets
            )
        )
        tables = []
        for table in TABLES:
            count = conn.execute(sql.SQL("select count(*) from {}").format(_ident(table))).fetchone()
            size = conn.execute("select pg_table_size(%s::regclass)", (table,)).fetchone()
            if count is None or size is None:
                raise BenchError(f"cannot count rows of {table}")
            tables.append(SourceTable(table, int(count[0]), int(size[0])))
    return tables, timings


def _ident(table: str) -> sql.Identifier:
    schema, _, name = table.partition(".")
    return sql.Identifier(schema, name)


def server_version(dsn: str) -> str:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("select version()").fetchone()
    return str(row[0]) if row else "unknown"


def detect_cdc_cli() -> CdcCli:
    result = subprocess.run(
        [sys.executable, "-m", "cdc_replicator", "snapshot", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=clean_env(),
    )
    if result.returncode != 0:
        raise BenchError(
            f"cdc-replicator snapshot --help exited {result.returncode}: {result.stderr.strip()}"
        )
    return CdcCli(has_table="--table" in result.stdout, has_parallel="--parallel" in result.stdout)


def detect_dlt(skip: bool) -> DltAvailability:
    if skip:
        return DltAvailability(False, "skipped (--skip-dlt)")
    probe = "import dlt, deltalake, sqlalchemy, psycopg2; from dlt.sources.sql_database import sql_table"
    result = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=clean_env({"RUNTIME__DLTHUB_TELEMETRY": "false"}),
    )
    if result.returncode != 0:
        lines = result.stderr.strip().splitlines()
        reason = lines[-1] if lines else f"exit {result.returncode}"
        return DltAvailability(
            False, f"{reason} (install: pip install 'dlt[deltalake,filesystem]' psycopg2-binary)"
        )
    return DltAvailability(True, "")


# ---- the measured tools --------------------------------------------------------------------------


def delta_count(path: Path) -> tuple[int | None, str]:
    """Rows in the Delta table at ``path``, or None and why it could not be read."""
    from deltalake import DeltaTable

    try:
        return int(DeltaTable(str(path)).to_pyarrow_dataset().count_rows()), ""
    except Exception as exc:  # any failure to read the result is reported as a wrong result
        return None, f"cannot read the Delta table at {path}: {type(exc).__name__}: {exc}"


def run_psql_copy(cluster: LocalPostgres, table: SourceTable, attempt: int, timeout: float) -> ToolRun:
    stmt = sql.SQL("copy (select * from {}) to stdout").format(_ident(table.name)).as_string()
    argv = [cluster.binaries.tool("psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1"]
    argv += ["-h", cluster.host, "-p", str(cluster.port), "-U", "postgres", "-d", DATABASE, "-c", stmt]
    m = run_measured(argv, env=clean_env(), timeout=timeout, stdout_to_null=True)
    return _run_from(table, TOOL_PSQL, attempt, m, rows_out=table.rows if m.ok else None)


def run_psycopg_copy(dsn: str, table: SourceTable, attempt: int, timeout: float) -> ToolRun:
    argv = [sys.executable, str(WORKERS), "copy-read", "--dsn", dsn, "--table", table.name]
    m = run_measured(argv, env=clean_env(), timeout=timeout)
    extra = _last_json_line(m.stdout) if m.ok else {}
    return _run_from(table, TOOL_PSYCOPG, attempt, m, rows_out=table.rows if m.ok else None, extra=extra)


def run_cdc_snapshot(
    dsn: str, table: SourceTable, attempt: int, workdir: Path, cli: CdcCli, opts: Options
) -> ToolRun:
    """``cdc-replicator snapshot`` into a fresh lake and state store, then count the Delta rows."""
    rundir = workdir / f"cdc-{table.name}-{attempt}"
    (rundir / "state").mkdir(parents=True)
    # Only T is configured: on a fresh state store, `snapshot --table T` still runs the initial
    # load of every configured table (it has no slot to keep), which would time both tables.
    config = rundir / "config.toml"
    config.write_text(cdc_config(dsn, rundir, [table.name]))
    argv = [
        sys.executable,
        "-m",
        "cdc_replicator",
        "--config",
        str(config),
        *cli.argv(table.name, opts.parallel),
    ]
    m = run_measured(argv, env=clean_env(), timeout=opts.timeout, cwd=rundir)
    if not m.ok:
        return _run_from(table, TOOL_CDC, attempt, m, rows_out=None)
    schema, _, name = table.name.partition(".")
    rows, problem = delta_count(rundir / "lake" / schema / name)
    return _run_from(
        table, TOOL_CDC, attempt, m, rows_out=rows, detail=problem or cli.describe(opts.parallel)
    )


def run_cdc_watermark(dsn: str, table: SourceTable, attempt: int, workdir: Path, opts: Options) -> ToolRun:
    """``cdc-replicator run --once`` in watermark mode (cursor = the key): a catch-up from empty."""
    rundir = workdir / f"wm-{table.name}-{attempt}"
    (rundir / "state").mkdir(parents=True)
    config = rundir / "config.toml"
    config.write_text(cdc_config(dsn, rundir, [table.name], watermark_cursor="id"))
    argv = [sys.executable, "-m", "cdc_replicator", "--config", str(config), "run", "--once"]
    m = run_measured(argv, env=clean_env(), timeout=opts.timeout, cwd=rundir)
    if not m.ok:
        return _run_from(table, TOOL_WATERMARK, attempt, m, rows_out=None)
    schema, _, name = table.name.partition(".")
    rows, problem = delta_count(rundir / "lake" / schema / name)
    return _run_from(
        table, TOOL_WATERMARK, attempt, m, rows_out=rows, detail=problem or "cursor id, pages 10000"
    )


def cdc_config(dsn: str, rundir: Path, tables: Sequence[str], *, watermark_cursor: str | None = None) -> str:
    def q(value: str) -> str:
        return json.dumps(value)  # a JSON string is a valid TOML basic string

    lines = [
        "[source]",
        f"dsn = {q(dsn)}",
        f"slot = {q(SLOT)}",
        f"publication = {q(PUBLICATION)}",
        *([f"mode = {q('watermark')}"] if watermark_cursor else []),
        "",
        "[target]",
        f"uri = {q(str(rundir / 'lake'))}",
        "",
    ]
    for name in tables:
        lines += ["[[tables]]", f"name = {q(name)}"]
        if watermark_cursor:
            lines.append(f"cursor = {q(watermark_cursor)}")
        lines.append("")
    lines += [
        "[state]",
        f"url = {q('sqlite:///' + str(rundir / 'state' / 'cdc.db'))}",
        "",
        "[server]",
        "enabled = false",
        "",
        "[log]",
        'format = "json"',
        'level = "warning"',
    ]
    return "\n".join(lines) + "\n"


def run_dlt(dsn: str, table: SourceTable, attempt: int, workdir: Path, timeout: float) -> ToolRun:
    dest = workdir / f"dlt-{table.name}-{attempt}"
    dest.mkdir(parents=True)
    argv = [
        sys.executable,
        str(WORKERS),
        "dlt-load",
        "--dsn",
        dsn,
        "--table",
        table.name,
        "--dest",
        str(dest),
    ]
    env = clean_env({"RUNTIME__DLTHUB_TELEMETRY": "false"})
    m = run_measured(argv, env=env, timeout=timeout, cwd=dest)
    if not m.ok:
        return _run_from(table, TOOL_DLT, attempt, m, rows_out=None)
    extra = _last_json_line(m.stdout)
    rows, problem = delta_count(dlt_table_path(dest, table.name))
    return _run_from(
        table,
        TOOL_DLT,
        attempt,
        m,
        rows_out=rows,
        detail=problem or "sql_table pyarrow -> filesystem delta",
        extra=extra,
    )


def _run_from(
    table: SourceTable,
    tool: str,
    attempt: int,
    m: Measured,
    *,
    rows_out: int | None,
    detail: str = "",
    extra: dict[str, object] | None = None,
) -> ToolRun:
    if not m.ok:
        detail = m.failure(tool)
        logger.warning("run failed table=%s tool=%s exit=%d", table.name, tool, m.returncode)
    return ToolRun(
        table.name,
        tool,
        attempt,
        m.seconds,
        m.peak_rss_bytes,
        m.ok,
        rows_out,
        detail,
        extra or {},
        m.stderr[-_STDERR_TAIL_CHARS:],
    )


def _last_json_line(stdout: str) -> dict[str, object]:
    for line in reversed(stdout.strip().splitlines()):
        with contextlib.suppress(ValueError):
            value = json.loads(line)
            if isinstance(value, dict):
                return value
    return {}


def measure_all(
    cluster: LocalPostgres,
    dsn: str,
    tables: Sequence[SourceTable],
    workdir: Path,
    cli: CdcCli,
    dlt: DltAvailability,
    opts: Options,
) -> list[ToolRun]:
    runs: list[ToolRun] = []
    for table in tables:
        for attempt in range(1, opts.repeat + 1):
            for tool in (TOOL_PSQL, TOOL_PSYCOPG, TOOL_CDC, TOOL_WATERMARK, TOOL_DLT):
                if tool == TOOL_DLT and not dlt.available:
                    continue
                if tool == TOOL_WATERMARK and table.name != WIDE:
                    continue
                if tool == TOOL_PSQL:
                    run = run_psql_copy(cluster, table, attempt, opts.timeout)
                elif tool == TOOL_PSYCOPG:
                    run = run_psycopg_copy(dsn, table, attempt, opts.timeout)
                elif tool == TOOL_CDC:
                    run = run_cdc_snapshot(dsn, table, attempt, workdir, cli, opts)
                elif tool == TOOL_WATERMARK:
                    run = run_cdc_watermark(dsn, table, attempt, workdir, opts)
                else:
                    run = run_dlt(dsn, table, attempt, workdir, opts.timeout)
                _progress(table, run)
                runs.append(run)
    return runs


def _progress(table: SourceTable, run: ToolRun) -> None:
    status = "ok" if run.ok else "FAILED"
    print(
        f"  {table.name:<24} {run.tool:<20} #{run.attempt} {run.seconds:8.2f}s "
        f"{run.peak_rss_bytes / MIB:8.1f} MB  {status}",
        file=sys.stderr,
        flush=True,
    )


# ---- results ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Summary:
    """The best (fastest successful) run of one tool on one table, with ratios against the baseline."""

    table: str
    rows: int
    tool: str
    seconds: float | None
    rows_per_second: float | None
    copy_mb_per_second: float | None  # the table's COPY text size over this tool's seconds
    ratio_vs_copy: float | None
    peak_rss_mb: float
    rows_out: int | None
    ok: bool
    detail: str


def summarise(tables: Sequence[SourceTable], runs: Sequence[ToolRun]) -> list[Summary]:
    summaries: list[Summary] = []
    for table in tables:
        baseline = _best(runs, table.name, TOOL_PSQL)
        text_bytes = copy_text_bytes(runs, table.name)
        tools = list(dict.fromkeys(r.tool for r in runs if r.table == table.name))
        for tool in tools:
            mine = [r for r in runs if r.table == table.name and r.tool == tool]
            best = _best(runs, table.name, tool)
            peak = max(r.peak_rss_bytes for r in mine) / MIB
            if best is None:
                failed = mine[-1]
                summaries.append(
                    Summary(
                        table.name, table.rows, tool, None, None, None, None, peak, None, False, failed.detail
                    )
                )
                continue
            rate = table.rows / best.seconds
            mb_rate = text_bytes / MIB / best.seconds if text_bytes is not None else None
            ratio = baseline.seconds / best.seconds if baseline is not None else None
            counted_ok = best.rows_out == table.rows
            summaries.append(
                Summary(
                    table.name,
                    table.rows,
                    tool,
                    best.seconds,
                    rate,
                    mb_rate,
                    ratio,
                    peak,
                    best.rows_out,
                    counted_ok,
                    best.detail,
                )
            )
    return summaries


def copy_text_bytes(runs: Sequence[ToolRun], table: str) -> int | None:
    """Size of the table's COPY text, as counted by the psycopg reader (None if it never succeeded)."""
    for run in runs:
        if run.table == table and run.tool == TOOL_PSYCOPG and run.ok:
            value = run.extra.get("bytes")
            if isinstance(value, int):
                return value
    return None


def _best(runs: Sequence[ToolRun], table: str, tool: str) -> ToolRun | None:
    done = [r for r in runs if r.table == table and r.tool == tool and r.ok]
    return min(done, key=lambda r: r.seconds) if done else None


def evaluate(
    summaries: Sequence[Summary], tables: Sequence[SourceTable], dlt: DltAvailability
) -> list[Check]:
    checks: list[Check] = []
    by_key = {(s.table, s.tool): s for s in summaries}
    for table in tables:
        cdc = by_key.get((table.name, TOOL_CDC))
        name = table.name
        if cdc is None or cdc.seconds is None:
            detail = cdc.detail if cdc else "not run"
            checks.append(Check(f"cdc-replicator snapshot of {name} completes", "FAIL", detail))
            continue
        checks.append(
            Check(
                f"cdc-replicator row count on {name} equals source",
                "PASS" if cdc.rows_out == table.rows else "FAIL",
                cdc.detail if cdc.rows_out is None else f"delta {cdc.rows_out:,} vs source {table.rows:,}",
            )
        )
        want = MIN_RATIO_VS_COPY[name]
        ratio = cdc.ratio_vs_copy
        checks.append(
            Check(
                f"cdc-replicator >= {want}x COPY rows/s on {name}",
                "SKIP" if ratio is None else ("PASS" if ratio >= want else "FAIL"),
                "no COPY baseline" if ratio is None else f"{ratio:.3f}x",
            )
        )
        checks.append(_vs_dlt(cdc, by_key.get((name, TOOL_DLT)), dlt))
        checks.append(
            Check(
                f"cdc-replicator peak RSS < {MAX_PEAK_RSS_BYTES // MIB} MiB on {name}",
                "PASS" if cdc.peak_rss_mb * MIB < MAX_PEAK_RSS_BYTES else "FAIL",
                f"{cdc.peak_rss_mb:.0f} MiB",
            )
        )
        wm = by_key.get((name, TOOL_WATERMARK))
        if wm is not None:
            checks.append(
                Check(
                    f"watermark catch-up row count on {name} equals source",
                    "PASS" if wm.rows_out == table.rows else "FAIL",
                    wm.detail if wm.rows_out is None else f"delta {wm.rows_out:,} vs source {table.rows:,}",
                )
            )
    return checks


def _vs_dlt(cdc: Summary, dlt_run: Summary | None, dlt: DltAvailability) -> Check:
    name = f"cdc-replicator >= {MIN_SPEEDUP_VS_DLT:g}x dlt rows/s on {cdc.table}"
    if not dlt.available:
        return Check(name, "SKIP", f"dlt unavailable: {dlt.reason}")
    if dlt_run is None or dlt_run.seconds is None or cdc.seconds is None:
        return Check(name, "SKIP", f"dlt failed: {dlt_run.detail if dlt_run else 'not run'}")
    speedup = dlt_run.seconds / cdc.seconds
    note = "" if dlt_run.rows_out == cdc.rows else f" (dlt wrote {dlt_run.rows_out} of {cdc.rows} rows)"
    return Check(name, "PASS" if speedup >= MIN_SPEEDUP_VS_DLT else "FAIL", f"{speedup:.2f}x{note}")


def render(summaries: Sequence[Summary], checks: Sequence[Check], dlt: DltAvailability) -> str:
    headers = ["table", "tool", "rows", "seconds", "rows/s", "MB/s", "vs COPY", "peak RSS MB", "rows ok"]
    rows = []
    for s in summaries:
        rows.append(
            [
                s.table,
                s.tool,
                f"{s.rows:,}",
                "-" if s.seconds is None else f"{s.seconds:.2f}",
                "-" if s.rows_per_second is None else f"{s.rows_per_second:,.0f}",
                "-" if s.copy_mb_per_second is None else f"{s.copy_mb_per_second:.1f}",
                "-" if s.ratio_vs_copy is None else f"{s.ratio_vs_copy:.2f}x",
                f"{s.peak_rss_mb:.0f}",
                "yes" if s.ok else "NO",
            ]
        )
    out = [format_table(headers, rows, left=2)]
    out.append("MB/s: the table's COPY text size over the tool's seconds; vs COPY: rows/s over psql COPY's")
    if not dlt.available:
        out.append(f"dlt: unavailable: {dlt.reason}")
    failed = [s for s in summaries if s.seconds is None]
    for s in failed:
        out.append(f"{s.table} {s.tool}: {s.detail}")
    out.append("")
    out += [f"{c.status} {c.name}: {c.detail}" for c in checks]
    return "\n".join(out)


# ---- main ---------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> Options:
    parser = argparse.ArgumentParser(
        description="Snapshot speed of cdc-replicator vs COPY and dlt on a throwaway PostgreSQL."
    )
    parser.add_argument("--scale", type=int, default=50, help="pgbench scale (100,000 rows each; default 50)")
    parser.add_argument("--wide-rows", type=int, default=1_000_000, help="rows in the wide table")
    parser.add_argument("--parallel", type=int, default=2, help="cdc-replicator snapshot --parallel N")
    parser.add_argument("--pg", type=int, default=15, help="PostgreSQL major version (default 15)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON results file")
    parser.add_argument("--skip-dlt", action="store_true", help="do not run dlt")
    parser.add_argument("--repeat", type=int, default=1, help="runs per tool and table; the fastest counts")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds allowed for each step")
    args = parser.parse_args(argv)
    for name in ("scale", "wide_rows", "parallel", "repeat"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    return Options(
        scale=args.scale,
        wide_rows=args.wide_rows,
        parallel=args.parallel,
        pg=args.pg,
        out=args.out,
        skip_dlt=args.skip_dlt,
        repeat=args.repeat,
        timeout=args.timeout,
    )


@contextlib.contextmanager
def workspace() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="cdc-snapshot-bench-") as path:
        yield Path(path)


def run(opts: Options) -> int:
    started_at = datetime.now(UTC)
    binaries = find_binaries(opts.pg)
    cli = detect_cdc_cli()
    dlt = detect_dlt(opts.skip_dlt)
    print(
        f"PostgreSQL {binaries.version} from {binaries.bindir}; cdc-replicator CLI: {cli.describe(opts.parallel)}",
        file=sys.stderr,
    )
    if not dlt.available:
        print(f"dlt: unavailable: {dlt.reason}", file=sys.stderr)
    with LocalPostgres(binaries, fast=True, settings=PG_SETTINGS) as cluster, workspace() as workdir:
        dsn = cluster.create_database(DATABASE)
        print(
            f"building data: pgbench -s {opts.scale}, wide {opts.wide_rows:,} rows ...",
            file=sys.stderr,
            flush=True,
        )
        tables, setup = build_data(cluster, dsn, opts)
        version = server_version(dsn)
        print("measuring:", file=sys.stderr, flush=True)
        runs = measure_all(cluster, dsn, tables, workdir, cli, dlt, opts)
    summaries = summarise(tables, runs)
    checks = evaluate(summaries, tables, dlt)
    print(render(summaries, checks, dlt))
    report = {
        "benchmark": "snapshot",
        "started_at": started_at.isoformat(),
        "finished_at": datetime.now(UTC).isoformat(),
        "options": {**asdict(opts), "out": str(opts.out)},
        "machine": machine_info(),
        "postgres": {
            "version": version,
            "bindir": str(binaries.bindir),
            "settings": PG_SETTINGS,
            "fsync": "off",
        },
        "packages": package_versions(PACKAGES),
        "git": git_revision(REPO_DIR),
        "cdc_cli": {**asdict(cli), "mode": cli.describe(opts.parallel)},
        "dlt": asdict(dlt),
        "setup_seconds": setup,
        "tables": [asdict(t) for t in tables],
        "summary": [asdict(s) for s in summaries],
        "runs": [asdict(r) for r in runs],
        "checks": [asdict(c) for c in checks],
    }
    opts.out.parent.mkdir(parents=True, exist_ok=True)
    opts.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {opts.out}", file=sys.stderr)
    return 1 if any(c.status == "FAIL" for c in checks) else 0


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    opts = parse_args(argv)
    try:
        with interruptible():
            return run(opts)
    except KeyboardInterrupt:
        print("interrupted; the cluster and temp directories were removed", file=sys.stderr)
        return 130
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ReplicatorError as exc:  # from LocalPostgres / find_binaries
        print(f"error: {exc.message}", file=sys.stderr)
        if exc.hint:
            print(f"  hint: {exc.hint}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
