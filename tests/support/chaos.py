"""A chaos soak: the randomized workload under kill -9, network cuts and server restarts, compared by key.

``run_chaos(cluster, plan, workdir)`` creates a database on a running ``Cluster`` with the crash
tests' schema (``tests.support.workload``) plus a one-row ``chaos_marker`` table, starts the daemon
with its DSN through a ``TcpProxy``, keeps the workload running from a background thread (directly
to the server, throttled to ``plan.tps`` transactions per second) and plays a shuffled schedule of
faults, one per *round*, each after a random stretch of load:

- ``kill``: SIGKILL of the daemon (down for up to a second, then started again), or ``kill-reader``:
  SIGKILL of its replication reader child only (the daemon must notice and reconnect by itself), or
  ``kill-reader-frozen``: the same while the daemon is stopped (SIGSTOP, like a long pause) and the
  reader has filled the pipe between them, so that it dies halfway through handing over a chunk;
- ``cut-all`` / ``cut-walsender`` / ``cut-side``: the proxy resets (RST) every open connection,
  only the walsender's, or only the others (slot watch, state, resync);
- ``restart-fast`` / ``restart-immediate`` / ``restart-crash``: ``pg_ctl restart -m fast``, a stop
  ``-m immediate`` then a start, or SIGKILL of every server process (power cut) then a start;
- ``partition`` (only when ``plan.partitions`` > 0; it needs ``source.wal_receiver_timeout_seconds``):
  the proxy silently drops every byte for a few seconds, then heals.

*Recovery* is the time from the end of a fault (the daemon started again, the cut, the server up
again, the partition healed) until a marker committed at that moment is visible in Delta: the
daemon streams again and has caught up. Every ``plan.check_every`` rounds, and at the end, the
workload pauses, the marker waits for the daemon, and every table is compared with its source row
by row by key (every column except ``_cdc_*``): rows lost, extra, duplicated, differing.

The report (``ChaosReport``) has everything ``bench/chaos.py`` prints; ``failures`` is empty when
no row differed, no recovery took longer than ``plan.max_recovery_seconds``, the daemon never
exited by itself and the workload never failed for a reason other than the faults.
"""

from __future__ import annotations

import logging
import os
import random
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import psycopg
from deltalake import DeltaTable
from deltalake.exceptions import TableNotFoundError
from psycopg import sql

from cdc_replicator.errors import SourceError
from tests.support.cluster import Cluster, processes
from tests.support.daemon import Daemon, write_config
from tests.support.lake import delta_rows, source_rows, table_path
from tests.support.pg import PgDatabase, create_test_database
from tests.support.proxy import ProxiedConnection, TcpProxy
from tests.support.workload import TABLES, Workload, create_schema

__all__ = ["ChaosPlan", "ChaosReport", "Check", "Recovery", "TableDiff", "compare_table", "run_chaos"]

logger = logging.getLogger(__name__)

MARKER = "public.chaos_marker"
ALL_TABLES = (*TABLES, MARKER)
KEYS: dict[str, tuple[str, ...]] = {
    "public.accounts": ("id",),
    "public.ledger": ("acct", "entry"),
    "public.profiles": ("id",),
    MARKER: ("id",),
}
KILL_KINDS = ("kill", "kill-reader", "kill-reader-frozen")
CUT_KINDS = ("cut-all", "cut-walsender", "cut-side")
RESTART_KINDS = ("restart-crash", "restart-fast", "restart-immediate")  # one restart: the harshest
SETTLE_SECONDS = 30.0  # after the marker: how long tables may still differ (tables commit one by one)


@dataclass(frozen=True, slots=True)
class ChaosPlan:
    """What to inject and how hard to load; the defaults are the long soak's."""

    rounds: int = 100  # kill -9 rounds (``reader_share`` of them kill the reader child only, half frozen)
    cuts: int = 20
    restarts: int = 3
    partitions: int = 0  # opt-in: needs source.wal_receiver_timeout_seconds (not on main yet)
    seed: int = 1
    minutes: float = 0.0  # 0: no limit; else stop starting rounds after this long
    check_every: int = 10
    tps: float = 20.0  # workload transactions per second (a cap; 2 connections)
    max_accounts: int = 15_000  # the workload trims the oldest accounts above this (a bulk delete)
    initial_rows: int = 300
    reader_share: float = 0.2
    gap_seconds: tuple[float, float] = (0.5, 3.0)  # load between two faults
    rapid_share: float = 0.15  # rounds whose next fault comes without waiting for the recovery
    max_recovery_seconds: float = 120.0
    converge_timeout: float = 180.0
    retry_max_seconds: float = 30.0  # the daemon's [source] retry_max_seconds (its default)
    wal_receiver_timeout_seconds: float = 10.0  # only written to the config when partitions > 0
    partition_seconds: tuple[float, float] = (2.0, 8.0)

    @property
    def total_rounds(self) -> int:
        return self.rounds + self.cuts + self.restarts + self.partitions


@dataclass(frozen=True, slots=True)
class TableDiff:
    """One table compared by key with its source: counts, and a few example keys of each kind."""

    table: str
    source_rows: int
    delta_rows: int
    lost: int  # keys in the source, not in Delta
    extra: int  # keys in Delta, not in the source
    duplicated: int  # extra copies of a key in Delta
    differing: int  # same key, another value in some column
    examples: tuple[str, ...] = ()

    @property
    def equal(self) -> bool:
        return not (self.lost or self.extra or self.duplicated or self.differing)


@dataclass(frozen=True, slots=True)
class Check:
    """One full comparison after round ``after_round``."""

    after_round: int
    seconds_to_converge: float | None  # None: the marker never arrived
    tables: tuple[TableDiff, ...]

    @property
    def equal(self) -> bool:
        return self.seconds_to_converge is not None and all(t.equal for t in self.tables)


@dataclass(frozen=True, slots=True)
class Recovery:
    round: int
    kind: str
    seconds: float | None  # None: not within max_recovery_seconds


@dataclass(frozen=True, slots=True)
class ChaosReport:
    plan: ChaosPlan
    rounds_done: int
    seconds: float
    faults: tuple[tuple[str, int], ...]
    recoveries: tuple[Recovery, ...]
    checks: tuple[Check, ...]
    workload_transactions: int
    workload_errors: int  # transactions the faults broke (server restarts)
    failures: tuple[str, ...]

    @property
    def converged(self) -> tuple[Check, ...]:
        """The checks whose marker reached Delta: only there is a difference a wrong row, not lag."""
        return tuple(c for c in self.checks if c.seconds_to_converge is not None)

    @property
    def stalled_checks(self) -> int:
        return len(self.checks) - len(self.converged)

    @property
    def rows_compared(self) -> int:
        return sum(t.source_rows for c in self.converged for t in c.tables)

    def total(self, what: str) -> int:
        """Rows ``lost``/``extra``/``duplicated``/``differing`` over the converged checks."""
        return sum(int(getattr(t, what)) for c in self.converged for t in c.tables)

    @property
    def slowest(self) -> Recovery | None:
        measured = [r for r in self.recoveries if r.seconds is not None]
        stalled = [r for r in self.recoveries if r.seconds is None]
        if stalled:
            return stalled[0]
        return max(measured, key=lambda r: r.seconds or 0.0, default=None)


# ---- comparing ----------------------------------------------------------------------------------


def _rkey(values: tuple[Any, ...]) -> tuple[str, ...]:
    return tuple(repr(v) for v in values)


def compare_table(db: PgDatabase, lake: Path, table: str) -> TableDiff:
    """The Delta table against its source, row by row by key (``_cdc_*`` columns left out)."""
    try:
        cols, lake_rows = delta_rows(lake, table)
    except TableNotFoundError:
        cols, lake_rows = [], []
    if not cols:
        schema, _, name = table.rpartition(".")
        n = len(db.query(sql.SQL("select 1 from {}").format(sql.Identifier(schema, name))))
        return TableDiff(table, n, 0, n, 0, 0, 0, ("no Delta table",))
    arrow = DeltaTable(str(table_path(lake, table))).schema().to_arrow()
    text_cols = {
        f.name
        for f in (arrow.field(i) for i in range(len(arrow.names)))
        if f.name in cols and ("string" in str(f.type) or "utf8" in str(f.type).lower())
    }
    src = source_rows(db, table, cols, text_cols)
    at = [cols.index(k) for k in KEYS[table]]
    source_by_key = {_rkey(tuple(r[i] for i in at)): r for r in src}
    delta_by_key: dict[tuple[str, ...], list[tuple[Any, ...]]] = {}
    for r in lake_rows:
        delta_by_key.setdefault(_rkey(tuple(r[i] for i in at)), []).append(r)
    lost = [k for k in source_by_key if k not in delta_by_key]
    extra = [k for k in delta_by_key if k not in source_by_key]
    duplicated = [k for k, rows in delta_by_key.items() if len(rows) > 1]
    differing = [
        k
        for k, rows in delta_by_key.items()
        if k in source_by_key and _rkey(rows[0]) != _rkey(source_by_key[k])
    ]
    examples = [f"lost {k}" for k in lost[:3]] + [f"extra {k}" for k in extra[:3]]
    examples += [f"duplicated {k}" for k in duplicated[:3]]
    for k in differing[:3]:
        a, b = delta_by_key[k][0], source_by_key[k]
        columns = [c for c, x, y in zip(cols, a, b, strict=True) if _rkey((x,)) != _rkey((y,))]
        examples.append(f"differing {k} in {columns}")
    return TableDiff(
        table,
        len(src),
        len(lake_rows),
        len(lost),
        len(extra),
        sum(len(delta_by_key[k]) - 1 for k in duplicated),
        len(differing),
        tuple(examples),
    )


# ---- the workload thread ------------------------------------------------------------------------


class _Load:
    """The workload in a background thread, throttled; ``pause()``/``resume()`` around comparisons."""

    def __init__(self, db: PgDatabase, seed: int, tps: float, max_accounts: int) -> None:
        self._db, self._tps, self._max_accounts = db, tps, max_accounts
        self._rng = random.Random(seed * 7919 + 1)
        self._w = Workload(db, seed=seed + 1)
        self._stop = threading.Event()
        self._pause = threading.Event()
        self._paused = threading.Event()
        self._thread = threading.Thread(target=self._run, name="chaos-load", daemon=True)
        self.transactions = 0
        self.errors = 0
        self.fatal: BaseException | None = None

    def start(self) -> None:
        self._thread.start()

    def pause(self, timeout: float = 120.0) -> bool:
        self._pause.set()
        return self._paused.wait(timeout)

    def resume(self) -> None:
        self._pause.clear()

    def stop(self) -> None:
        self._stop.set()
        self._pause.clear()
        self._thread.join(timeout=120)

    def _run(self) -> None:
        chunk, chunks = 5, 0
        while not self._stop.is_set():
            if self._pause.is_set():
                self._paused.set()
                while self._pause.is_set() and not self._stop.is_set():
                    time.sleep(0.05)
                self._paused.clear()
                continue
            began = time.monotonic()
            try:
                self._w.run(chunk, concurrency=2)
                self.transactions += chunk
                x = self._rng.random()
                if x < 0.01:
                    self._w.large_transaction(900)  # spans several batches: partial positions
                elif x < 0.012:
                    self._w.truncate_ledger()
                chunks += 1
                if chunks % 20 == 0:
                    self._trim()
            except (psycopg.OperationalError, psycopg.InterfaceError):
                self.errors += 1  # the server restarted under it: the source stays consistent
                time.sleep(0.3)
                continue
            except BaseException as exc:
                self.fatal = exc
                logger.exception("chaos workload failed")
                return
            time.sleep(max(0.0, chunk / self._tps - (time.monotonic() - began)))

    def _trim(self) -> None:
        with self._db.connect() as conn:
            row = conn.execute("select count(*) from accounts").fetchone()
            if row is not None and row[0] > self._max_accounts:
                conn.execute(
                    "delete from accounts where id in (select id from accounts order by id limit 1000)"
                )
            conn.commit()


# ---- the soak -----------------------------------------------------------------------------------


def _schedule(plan: ChaosPlan, rng: random.Random) -> list[str]:
    readers = round(plan.rounds * plan.reader_share)
    kinds = [("kill-reader", "kill-reader-frozen")[i % 2] for i in range(readers)]
    kinds += ["kill"] * (plan.rounds - readers)
    kinds += [CUT_KINDS[i % len(CUT_KINDS)] for i in range(plan.cuts)]
    kinds += [RESTART_KINDS[i % len(RESTART_KINDS)] for i in range(plan.restarts)]
    kinds += ["partition"] * plan.partitions
    rng.shuffle(kinds)
    return kinds


def _reader_pid(daemon_pid: int) -> int | None:
    """The daemon's replication reader child (multiprocessing's spawn_main), if it has one now."""
    for pid, stat in processes("stat"):
        fields = stat[stat.rfind(b")") + 2 :].split()
        if len(fields) > 1 and fields[1] == str(daemon_pid).encode():
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if b"spawn_main" in cmdline:
                return pid
    return None


def _state(pid: int) -> str:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat[stat.rfind(")") + 2 :][:1]


class _Marker:
    """A one-row table whose counter, once visible in Delta, proves the daemon has caught up to it."""

    def __init__(self, db: PgDatabase, lake: Path) -> None:
        self._db, self._path = db, table_path(lake, MARKER)
        self._table: DeltaTable | None = None

    def bump(self) -> int:
        rows = self._db.query("update chaos_marker set n = n + 1 where id = 1 returning n")
        return int(rows[0][0])

    def seen(self) -> int:
        try:
            if self._table is None:
                self._table = DeltaTable(str(self._path))
            else:
                self._table.update_incremental()
        except TableNotFoundError:
            return -1
        values = self._table.to_pyarrow_table(columns=["n"]).column("n").to_pylist()
        return max((int(v) for v in values), default=-1)

    def wait(self, value: int, timeout: float, alive: Callable[[], bool]) -> float | None:
        """Seconds until ``value`` is visible in Delta; None after ``timeout`` or once not ``alive()``."""
        began = time.monotonic()
        while time.monotonic() - began < timeout:
            if self.seen() >= value:
                return time.monotonic() - began
            if not alive():
                return None
            time.sleep(0.2)
        return None


@dataclass
class _Run:
    plan: ChaosPlan
    cluster: Cluster
    db: PgDatabase
    lake: Path
    proxy: TcpProxy
    daemon: Daemon
    load: _Load
    marker: _Marker
    rng: random.Random
    log: Callable[[str], None]
    faults: Counter[str] = field(default_factory=Counter)
    _bulk: Workload = field(init=False)
    recoveries: list[Recovery] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._bulk = Workload(self.db, seed=self.plan.seed + 500)  # its own range of ids

    # -- keeping the daemon up ----------------------------------------------------------------

    def daemon_alive(self) -> bool:
        return self.daemon.alive()

    def ensure_daemon(self, where: str) -> None:
        """A daemon that exited by itself is a finding; start it again so the soak goes on."""
        if self.daemon.proc is not None and not self.daemon.alive():
            code = self.daemon.proc.returncode
            self.failures.append(
                f"{where}: the daemon exited by itself with {code}; log {self.daemon.logs[-1]}"
            )
            self.log(f"FINDING {where}: daemon exited with {code}:\n{self.daemon.output(15)}")
            self.daemon.start()

    # -- one fault -------------------------------------------------------------------------------

    def inject(self, kind: str) -> str:
        """Do ``kind`` to the path or the processes and return what was done, once it is over.

        A ``kill-reader`` while the daemon has no reader (loading, or reconnecting) kills the daemon.
        """
        if kind == "kill":
            self.daemon.kill()
            time.sleep(self.rng.uniform(0.0, 1.0))
            self.daemon.start()
        elif kind == "kill-reader":
            pid = self._reader()
            if pid is None:  # still loading, or between readers: kill the daemon instead
                return self.inject("kill")
            os.kill(pid, signal.SIGKILL)
        elif kind == "kill-reader-frozen":
            pid = self._reader()
            if pid is None or self.daemon.proc is None:
                return self.inject("kill")
            daemon_pid = self.daemon.proc.pid
            os.kill(daemon_pid, signal.SIGSTOP)  # a daemon that does not read (a long pause) ...
            try:
                # ... while a large transaction makes the reader hand over full chunks (512 events,
                # more than the pipe holds) ...
                self._bulk.large_transaction(2000)
                time.sleep(self.rng.uniform(1.0, 2.0))
                os.kill(pid, signal.SIGKILL)  # ... and it dies halfway through writing one
                while Path(f"/proc/{pid}").exists() and _state(pid) not in ("Z", "X", ""):
                    time.sleep(0.01)
            finally:
                os.kill(daemon_pid, signal.SIGCONT)
        elif kind.startswith("cut-"):
            which: Callable[[ProxiedConnection], bool] | None = {
                "cut-all": None,
                "cut-walsender": lambda c: c.replication,
                "cut-side": lambda c: not c.replication,
            }[kind]
            self.faults["(connections reset)"] += self.proxy.cut(which)
        elif kind == "restart-fast":
            try:
                self.cluster.restart()
            except SourceError as exc:  # the fast shutdown waits for the walsender to be confirmed
                self.failures.append(f"restart-fast: {exc.message}")
                self.cluster.stop("immediate")
                self.cluster.start_again()
        elif kind == "restart-immediate":
            self.cluster.stop("immediate")
            time.sleep(self.rng.uniform(0.0, 2.0))
            self.cluster.start_again()
        elif kind == "restart-crash":
            self.cluster.kill()
            time.sleep(self.rng.uniform(0.0, 2.0))
            self.cluster.start_again()
        elif kind == "partition":
            self.proxy.partition()
            time.sleep(self.rng.uniform(*self.plan.partition_seconds))
            self.proxy.heal()
        else:
            raise ValueError(f"unknown fault {kind!r}")
        return kind

    def _reader(self, timeout: float = 10.0) -> int | None:
        """The daemon's reader child, waiting a little for one (the daemon may be reconnecting)."""
        deadline = time.monotonic() + timeout
        while self.daemon.proc is not None and self.daemon.alive():
            pid = _reader_pid(self.daemon.proc.pid)
            if pid is not None or time.monotonic() > deadline:
                return pid
            time.sleep(0.05)
        return None

    def round(self, number: int, kind: str) -> None:
        time.sleep(self.rng.uniform(*self.plan.gap_seconds))
        self.ensure_daemon(f"round {number} ({kind}), before")
        kind = self.inject(kind)
        self.faults[kind] += 1
        if self.rng.random() < self.plan.rapid_share:
            return  # the next fault may hit the daemon while it recovers
        value = self._bump()
        seconds = self.marker.wait(value, self.plan.max_recovery_seconds, self.daemon_alive)
        self.recoveries.append(Recovery(number, kind, seconds))
        if seconds is not None:
            return
        if not self.daemon.alive():
            self.ensure_daemon(f"round {number} ({kind})")
            return
        self.failures.append(
            f"round {number} ({kind}): no progress within {self.plan.max_recovery_seconds:g}s while the "
            f"daemon runs; log {self.daemon.logs[-1]}"
        )
        self.log(f"FINDING round {number} ({kind}): no progress:\n{self.daemon.output(15)}")
        self.daemon.kill()  # so that the rounds after it test something
        self.daemon.start()

    def _bump(self) -> int:
        for _ in range(100):  # the server may still be starting up after a restart
            try:
                return self.marker.bump()
            except psycopg.OperationalError:
                time.sleep(0.2)
        return self.marker.bump()

    # -- comparing ----------------------------------------------------------------------------------

    def check(self, after_round: int) -> Check:
        if not self.load.pause():
            self.failures.append(f"check after round {after_round}: the workload did not pause")
        try:
            self.ensure_daemon(f"check after round {after_round}")
            value = self._bump()
            seconds = self.marker.wait(value, self.plan.converge_timeout, self.daemon_alive)
            began = time.monotonic()
            while True:
                tables = tuple(compare_table(self.db, self.lake, t) for t in ALL_TABLES)
                if (
                    all(t.equal for t in tables)
                    or time.monotonic() - began > SETTLE_SECONDS
                    or seconds is None
                ):
                    break
                time.sleep(1.0)
        finally:
            self.load.resume()
        result = Check(after_round, seconds, tables)
        self.checks.append(result)
        if not result.equal:
            self.failures.append(
                f"check after round {after_round}: "
                + ("not converged; " if seconds is None else "")
                + "; ".join(
                    f"{t.table}: lost {t.lost}, extra {t.extra}, duplicated {t.duplicated}, differing {t.differing} "
                    f"{list(t.examples)}"
                    for t in tables
                    if not t.equal
                )
            )
        rows = sum(t.source_rows for t in tables)
        state = "equal" if result.equal else "DIFFERENT"
        took = "never" if seconds is None else f"{seconds:.1f}s"
        self.log(f"check after round {after_round}: {rows} rows compared, {state} (converged in {took})")
        return result


def _proxied(db: PgDatabase, cluster: Cluster, proxy: TcpProxy) -> PgDatabase:
    needle = f"{cluster.host}:{cluster.port}/"
    if needle not in db.dsn:
        raise ValueError(f"unexpected dsn shape {db.dsn!r}")
    return replace(db, dsn=db.dsn.replace(needle, f"127.0.0.1:{proxy.port}/"))


def run_chaos(
    cluster: Cluster, plan: ChaosPlan, workdir: Path, *, log: Callable[[str], None] | None = None
) -> ChaosReport:
    """Play ``plan`` against a new database on the running ``cluster``; the daemon's files in ``workdir``."""
    say = log or (lambda line: logger.info("%s", line))
    rng = random.Random(plan.seed)
    began = time.monotonic()
    db = create_test_database(cluster, f"chaos_{plan.seed}")
    create_schema(db, rows=plan.initial_rows, seed=plan.seed)
    db.execute("create table chaos_marker (id int primary key, n bigint not null)")
    db.execute("insert into chaos_marker values (1, 0)")
    lake = workdir / "lake"
    workdir.mkdir(parents=True, exist_ok=True)
    source_extra: dict[str, object] = {"retry_max_seconds": plan.retry_max_seconds}
    if plan.partitions:
        source_extra["wal_receiver_timeout_seconds"] = plan.wal_receiver_timeout_seconds
    schedule = _schedule(plan, rng)
    load = _Load(db, plan.seed, plan.tps, plan.max_accounts)
    done = 0
    with TcpProxy(cluster.host, cluster.port) as proxy:
        daemon = Daemon(workdir / "cfg.toml", workdir)
        write_config(
            daemon.config,
            _proxied(db, cluster, proxy),
            lake,
            ALL_TABLES,
            source_extra=source_extra,
            batch={"max_rows": 2000, "max_seconds": 0.5},
        )
        run = _Run(plan, cluster, db, lake, proxy, daemon, load, _Marker(db, lake), rng, say)
        try:
            daemon.start()  # the first rounds may hit the initial load
            load.start()
            for number, kind in enumerate(schedule, start=1):
                if plan.minutes and time.monotonic() - began > plan.minutes * 60:
                    say(f"--minutes {plan.minutes:g} reached after {done} of {len(schedule)} rounds")
                    break
                if load.fatal is not None:
                    break
                run.round(number, kind)
                done = number
                if number % plan.check_every == 0 and number != len(schedule):
                    run.check(number)
                elif number % 5 == 0:
                    say(f"round {number}/{len(schedule)} {dict(run.faults)}")
            run.check(done)
            if daemon.alive() and daemon.stop() != 0:
                run.failures.append(f"the daemon's graceful stop exited non-zero; log {daemon.logs[-1]}")
        finally:
            load.stop()
            daemon.close()
    if load.fatal is not None:
        run.failures.append(f"the workload failed: {load.fatal!r}")
    return ChaosReport(
        plan=plan,
        rounds_done=done,
        seconds=time.monotonic() - began,
        faults=tuple(sorted(run.faults.items())),
        recoveries=tuple(run.recoveries),
        checks=tuple(run.checks),
        workload_transactions=load.transactions,
        workload_errors=load.errors,
        failures=tuple(run.failures),
    )
