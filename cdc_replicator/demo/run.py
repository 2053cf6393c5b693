"""Run the README's demo: a throwaway PostgreSQL, a live workload and a replicator; then check.

``run_demo`` starts a PostgreSQL cluster in a fresh temp directory (``LocalPostgres``, fsync off:
nothing in it is kept), creates the ``shop`` database with three sample tables and a few thousand
rows, and then runs three threads until Ctrl-C or ``--seconds``:

- the workload thread writes a live stream of sample transactions (new orders with their items,
  status changes, cancellations that delete rows, new customers), from a few to a few hundred
  changes per second;
- the replicator thread runs a ``Replicator`` that loads the tables into ``<dir>/lake`` and then
  applies the change stream about once a second;
- the main thread prints progress every two seconds and turns SIGINT/SIGTERM into a stop request.

Shutdown order: the workload stops; the demo waits until the slot has confirmed every change the
workload made and every Delta table has its source table's row count; the replicator stops (it
drains); the counts are compared one last time; the server is stopped and its directory removed.
The lake and state stay in ``<dir>``. The next run removes them first: the replication slot their
positions refer to died with the old server.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any, Final

import click
from deltalake.exceptions import DeltaError

from cdc_replicator.config import (
    BatchConfig,
    Config,
    LogConfig,
    ServerConfig,
    SourceConfig,
    StateConfig,
    TableConfig,
    TargetConfig,
)
from cdc_replicator.demo import DemoError
from cdc_replicator.demo.display import (
    Check,
    Symbols,
    format_check,
    format_header,
    format_progress,
    format_query_help,
    symbols_for,
)
from cdc_replicator.demo.lake import Lake, TableStats
from cdc_replicator.demo.localpg import LocalPostgres, find_binaries
from cdc_replicator.demo.shop import (
    DATABASE,
    ORDERS,
    SLOT,
    TABLES,
    Seeded,
    create_shop,
    slot_confirmed,
    source_counts,
    wal_position,
)
from cdc_replicator.demo.workdir import DemoDir
from cdc_replicator.demo.workload import Workload
from cdc_replicator.engine.pipeline import BatchReport, Replicator
from cdc_replicator.model import TableId
from cdc_replicator.service.log import setup_logging

__all__ = ["DemoError", "run_demo"]

logger = logging.getLogger(__name__)

_PROGRESS_EVERY: Final = 2.0  # seconds between progress blocks
_CATCH_UP_TIMEOUT: Final = 60.0  # seconds to wait for Delta to match the source after the workload stops
_THREAD_JOIN_TIMEOUT: Final = 30.0


# ---- the replicator thread -------------------------------------------------------------------


class _Applied:
    """Changes applied per table so far. ``on_batch`` runs in the replicator thread; reads in main."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._changes: dict[TableId, int] = {}

    def on_batch(self, report: BatchReport) -> None:
        with self._lock:
            for table, n in report.changes.items():
                self._changes[table] = self._changes.get(table, 0) + n

    def snapshot(self) -> dict[TableId, int]:
        with self._lock:
            return dict(self._changes)


class _ReplicatorThread:
    """Runs ``Replicator.run`` in a thread; its error, if any, is re-raised by ``check()``."""

    def __init__(self, config: Config, on_batch: Callable[[BatchReport], None]) -> None:
        self._config = config
        self._on_batch = on_batch
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cdc-demo-replicator", daemon=True)
        self._error: Exception | None = None

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        try:
            rep = Replicator(self._config, stop=self._stop, on_batch=self._on_batch)
            try:
                rep.run()
            finally:
                rep.close()
        except Exception as exc:  # handed to the main thread through check()
            logger.debug("replicator failed", exc_info=True)
            self._error = exc

    def check(self) -> None:
        """Raise the replicator's error if its thread ended without being asked to."""
        if self._thread.is_alive() or self._thread.ident is None:
            return
        if self._error is not None:
            raise self._error
        if not self._stop.is_set():
            raise DemoError("the replicator stopped unexpectedly", hint="run the demo again")

    def stop(self) -> None:
        """Ask the replicator to drain and stop, and wait for it."""
        self._stop.set()
        if self._thread.ident is None:
            return
        self._thread.join(_THREAD_JOIN_TIMEOUT)
        if self._thread.is_alive():
            logger.warning(
                "the replicator did not stop within %.0fs; removing the server anyway", _THREAD_JOIN_TIMEOUT
            )


def _config(dsn: str, workdir: DemoDir) -> Config:
    """The replicator's configuration: the demo slot, the lake and state in ``workdir``, no HTTP server."""
    return Config(
        source=SourceConfig(
            dsn=dsn,
            slot=SLOT,
            publication=SLOT,
            status_interval_seconds=1.0,  # the catch-up wait reads the confirmed position from the slot
            retry_give_up_seconds=30.0,  # a demo should fail visibly, not retry forever
        ),
        target=TargetConfig(uri=str(workdir.lake)),
        tables=tuple(TableConfig(t) for t in TABLES),
        batch=BatchConfig(max_seconds=1.0),
        state=StateConfig(url=f"sqlite:///{workdir.state_db}"),
        server=ServerConfig(enabled=False),
        log=LogConfig(level="warning", format="text"),
    )


# ---- signals ---------------------------------------------------------------------------------

_Handler = Callable[[int, FrameType | None], Any] | int | None


class _Interrupts:
    """SIGINT/SIGTERM in the main thread: the first one asks to stop, the next one aborts.

    The handler only sets a flag (no locks), which the main loop polls.
    """

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[signal.Signals, _Handler] = {}

    @contextmanager
    def installed(self) -> Iterator[_Interrupts]:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        try:
            yield self
        finally:
            for sig, handler in self._previous.items():
                signal.signal(sig, handler)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True


# ---- the run ---------------------------------------------------------------------------------


def run_demo(workdir: Path, *, seconds: float, pg_version: int | None) -> None:
    """Run the demo in ``workdir`` until Ctrl-C, or for ``seconds`` when that is above 0.

    Raises DemoError (or the replicator's own ReplicatorError) with a hint when anything fails;
    the throwaway server is stopped and removed in every case.
    """
    if seconds < 0:
        raise DemoError(
            f"--seconds must be 0 (run until Ctrl-C) or more, got {seconds:g}",
            hint="for example --seconds 30",
        )
    setup_logging("warning", "text")
    out = click.echo
    sym = symbols_for(sys.stdout.encoding)
    demo_dir = DemoDir(workdir.absolute())
    binaries = find_binaries(pg_version)  # SourceError with an install hint when there are none
    with demo_dir.claimed() as removed_previous, _Interrupts().installed() as interrupts:
        if removed_previous:
            out(
                f"Removed the lake and state of the previous run in {demo_dir.root} "
                "(their replication slot went away with that run's server)."
            )
        out(f"Starting a throwaway PostgreSQL {binaries.version} {sym.ellipsis}")
        started = time.monotonic()
        try:
            with LocalPostgres(binaries, fast=True) as pg:
                dsn = pg.create_database(DATABASE)
                seeded = create_shop(dsn)
                config = _config(dsn, demo_dir)
                lake = Lake(demo_dir.lake)
                header = format_header(
                    version=pg.version,
                    address=f"{pg.host}:{pg.port}",
                    startup=time.monotonic() - started,
                    rows=seeded.rows,
                    lake=demo_dir.lake,
                    state_db=demo_dir.state_db,
                    seconds=seconds,
                    sym=sym,
                )
                out("\n".join(header))
                checks = _replicate(dsn, config, seeded, lake, seconds, interrupts, out, sym)
        except KeyboardInterrupt:  # a second Ctrl-C: the server is gone, the check is skipped
            out("Stopped without the final check; PostgreSQL stopped and removed.")
            raise
        out(f"PostgreSQL stopped and its directory {pg.base_dir} removed.")
    out("")
    out("Check (after the workload stopped and the replicator caught up):")
    for check in checks:
        out(format_check(check, sym))
    out("")
    out("\n".join(format_query_help(lake.path(ORDERS))))
    bad = [str(c.table) for c in checks if not c.ok]
    if bad:
        raise DemoError(
            f"Delta and the source disagree on the row count of {', '.join(bad)}",
            hint="run the demo again; if it happens again, please report it with this output",
        )


def _replicate(
    dsn: str,
    config: Config,
    seeded: Seeded,
    lake: Lake,
    seconds: float,
    interrupts: _Interrupts,
    out: Callable[[str], None],
    sym: Symbols,
) -> list[Check]:
    """Run workload and replicator, report progress, then stop both once Delta caught up."""
    applied = _Applied()
    workload = Workload(dsn, seeded)
    replicator = _ReplicatorThread(config, applied.on_batch)
    try:
        replicator.start()
        workload.start()
        reason = _watch(seconds, interrupts, workload, replicator, lake, applied, out, sym)
        out("")  # after the terminal's "^C"
        out(f"{reason}: stopping the workload after {workload.transactions:,} transactions {sym.ellipsis}")
        workload.stop()
        out(f"Waiting for the replicator to apply the last changes {sym.ellipsis}")
        waited = time.monotonic()
        if _catch_up(dsn, lake, replicator):
            out(f"Caught up {time.monotonic() - waited:.1f}s later; stopping the replicator.")
        else:
            out(f"Delta did not catch up within {_CATCH_UP_TIMEOUT:.0f}s; stopping the replicator.")
    finally:
        workload.stop(check=False)  # idempotent; a failure is already propagating if it did not run yet
        replicator.stop()
    replicator.check()
    source = source_counts(dsn)
    return [Check(t, source[t], lake.exact_rows(t)) for t in TABLES]


def _watch(
    seconds: float,
    interrupts: _Interrupts,
    workload: Workload,
    replicator: _ReplicatorThread,
    lake: Lake,
    applied: _Applied,
    out: Callable[[str], None],
    sym: Symbols,
) -> str:
    """Print progress every two seconds until Ctrl-C or ``seconds``; returns why it stopped."""
    began = time.monotonic()
    next_report = began + _PROGRESS_EVERY
    while True:
        now = time.monotonic()
        if interrupts.requested:
            return "Ctrl-C"
        if seconds > 0 and now - began >= seconds:
            return f"{seconds:g}s are up"
        replicator.check()
        if not workload.alive():
            workload.stop()  # raises the workload's error
        if now >= next_report:
            stats = {t: _stats_or_none(lake, t) for t in TABLES}
            out("\n".join(format_progress(now - began, applied.snapshot(), stats, _lag(stats), sym)))
            next_report += _PROGRESS_EVERY
        time.sleep(0.1)


def _stats_or_none(lake: Lake, table: TableId) -> TableStats | None:
    try:
        return lake.stats(table)
    except (DeltaError, OSError):  # a read racing a commit; the next tick reads again
        logger.debug("reading the Delta table of %s failed", table, exc_info=True)
        return None


def _lag(stats: Mapping[TableId, TableStats | None]) -> float | None:
    newest = [s.newest_commit for s in stats.values() if s is not None and s.newest_commit is not None]
    if not newest:
        return None
    return max(0.0, (datetime.now(UTC) - max(newest)).total_seconds())


def _catch_up(dsn: str, lake: Lake, replicator: _ReplicatorThread) -> bool:
    """Wait until the slot confirmed every change made so far and the row counts agree; False on timeout.

    The workload has stopped, so the source no longer changes. Equal counts alone could hide an
    update still in flight; the slot's confirmed position passing the WAL flush position cannot,
    since the replicator confirms only what Delta holds.
    """
    target = wal_position(dsn)
    source = source_counts(dsn)
    deadline = time.monotonic() + _CATCH_UP_TIMEOUT
    while time.monotonic() < deadline:
        replicator.check()
        confirmed = slot_confirmed(dsn)
        if confirmed is not None and confirmed >= target:
            stats = {t: _stats_or_none(lake, t) for t in TABLES}
            if all(s is not None and s.rows == source[t] for t, s in stats.items()):
                return True
        time.sleep(0.2)
    return False
