"""Throwaway local PostgreSQL + live sample workload for the README quickstart.

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

import fcntl
import logging
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from random import Random
from types import FrameType
from typing import Any, Final

import click
import psycopg
import pyarrow as pa
import pyarrow.compute as pc
from deltalake import DeltaTable
from deltalake.exceptions import DeltaError, TableNotFoundError
from psycopg import sql

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
from cdc_replicator.demo.localpg import LocalPostgres, find_binaries
from cdc_replicator.engine.pipeline import BatchReport, Replicator
from cdc_replicator.errors import ReplicatorError
from cdc_replicator.model import Lsn, TableId
from cdc_replicator.service.log import setup_logging

__all__ = ["DemoError", "run_demo"]

logger = logging.getLogger(__name__)

DATABASE: Final = "shop"
SLOT: Final = "cdc_demo"  # also the publication
CUSTOMERS: Final = TableId("public", "customers")
ORDERS: Final = TableId("public", "orders")
ORDER_ITEMS: Final = TableId("public", "order_items")
TABLES: Final = (CUSTOMERS, ORDERS, ORDER_ITEMS)

_SEED_CUSTOMERS: Final = 1_000
_SEED_ORDERS: Final = 3_000  # with 1 to 4 items each
_PROGRESS_EVERY: Final = 2.0  # seconds between progress blocks
_CATCH_UP_TIMEOUT: Final = 60.0  # seconds to wait for Delta to match the source after the workload stops
_THREAD_JOIN_TIMEOUT: Final = 30.0
_MARKER: Final = ".cdc-demo"  # in --dir: says the demo made lake/ and state/ there; also the run lock


class DemoError(ReplicatorError):
    """The demo could not run, or its final check found Delta and the source apart."""


# ---- the sample database ---------------------------------------------------------------------

_SCHEMA: Final[tuple[sql.SQL, ...]] = (
    sql.SQL(
        "create table public.customers ("
        " id bigserial primary key,"
        " name text not null,"
        " email text not null,"
        " created_at timestamptz not null default now())"
    ),
    sql.SQL(
        "create table public.orders ("
        " id bigserial primary key,"
        " customer_id bigint not null,"
        " amount numeric(10,2) not null,"
        " status text not null,"
        " updated_at timestamptz not null default now())"
    ),
    sql.SQL(
        "create table public.order_items ("
        " order_id bigint not null,"
        " line int not null,"
        " sku text not null,"
        " qty int not null,"
        " primary key (order_id, line))"
    ),
)
_FIRST_NAMES: Final = (
    "Ada",
    "Grace",
    "Linus",
    "Edsger",
    "Barbara",
    "Ken",
    "Frances",
    "Dennis",
    "Radia",
    "Alan",
)
_LAST_NAMES: Final = ("Lovelace", "Hopper", "Torvalds", "Dijkstra", "Liskov", "Thompson", "Allen", "Ritchie")
_STATUSES: Final = ("new", "paid", "shipped", "delivered")


@dataclass(frozen=True, slots=True)
class _Seeded:
    """What the initial fill wrote: the highest ids, where the workload starts from."""

    rows: Mapping[TableId, int]
    max_customer_id: int
    max_order_id: int


def _create_shop(dsn: str) -> _Seeded:
    """Create the sample tables and fill them (deterministic values, one transaction)."""
    try:
        with psycopg.connect(dsn) as conn:
            for statement in _SCHEMA:
                conn.execute(statement)
            conn.execute(
                "insert into public.customers (name, email, created_at)"
                " select (%(first)s::text[])[1 + g %% cardinality(%(first)s::text[])]"
                " || ' ' || (%(last)s::text[])[1 + (g / 10) %% cardinality(%(last)s::text[])],"
                " 'customer' || g || '@example.com', now() - g * interval '1 hour'"
                " from generate_series(1, %(n)s) g",
                {"first": list(_FIRST_NAMES), "last": list(_LAST_NAMES), "n": _SEED_CUSTOMERS},
            )
            conn.execute(
                "insert into public.orders (customer_id, amount, status, updated_at)"
                " select 1 + (g * 7919) %% %(customers)s, ((g * 3571) %% 50000 + 500) / 100.0,"
                " (%(statuses)s::text[])[1 + g %% 4], now() - g * interval '1 minute'"
                " from generate_series(1, %(n)s) g",
                {"customers": _SEED_CUSTOMERS, "statuses": list(_STATUSES), "n": _SEED_ORDERS},
            )
            conn.execute(
                "insert into public.order_items (order_id, line, sku, qty)"
                " select o.id, l, 'SKU-' || lpad(((o.id * 31 + l * 17) % 500)::text, 4, '0'), 1 + (o.id + l) % 5"
                " from public.orders o, generate_series(1, 1 + (o.id % 4)::int) l"
            )
            rows = _count_rows(conn)
    except psycopg.Error as exc:
        raise DemoError(
            f"creating the sample tables in database {DATABASE!r} failed", hint=_pg_said(exc)
        ) from exc
    return _Seeded(rows, max_customer_id=_SEED_CUSTOMERS, max_order_id=_SEED_ORDERS)


def _pg_said(exc: BaseException) -> str:
    """A hint quoting PostgreSQL's one-line reason: the demo's user has no other log to look at."""
    primary = exc.diag.message_primary if isinstance(exc, psycopg.Error) else None
    first = primary or (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return f"PostgreSQL said: {first}"


def _count_rows(conn: psycopg.Connection[Any]) -> dict[TableId, int]:
    counts: dict[TableId, int] = {}
    for table in TABLES:
        query = sql.SQL("select count(*) from {}").format(sql.Identifier(table.schema, table.name))
        row = conn.execute(query).fetchone()
        counts[table] = int(row[0]) if row is not None else 0
    return counts


def _source_counts(dsn: str) -> dict[TableId, int]:
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            return _count_rows(conn)
    except psycopg.Error as exc:
        raise DemoError(
            f"counting the rows of the sample tables in database {DATABASE!r} failed", hint=_pg_said(exc)
        ) from exc


def _wal_position(dsn: str) -> Lsn:
    """The server's current WAL flush position: every committed change lies before it."""
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            row = conn.execute("select pg_current_wal_flush_lsn()::text").fetchone()
    except psycopg.Error as exc:
        raise DemoError("reading the WAL position of the demo server failed", hint=_pg_said(exc)) from exc
    return Lsn.parse(str(row[0])) if row is not None else Lsn.ZERO


def _slot_confirmed(dsn: str) -> Lsn | None:
    """How far the replicator has confirmed the demo slot (None: no slot yet)."""
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            row = conn.execute(
                "select confirmed_flush_lsn::text from pg_replication_slots where slot_name = %s", (SLOT,)
            ).fetchone()
    except psycopg.Error as exc:
        raise DemoError("reading the demo's replication slot failed", hint=_pg_said(exc)) from exc
    return Lsn.parse(str(row[0])) if row is not None and row[0] is not None else None


# ---- the live workload -----------------------------------------------------------------------

# Target transactions per second (about 2.5 changes each), one after the other, each for a few
# seconds, then round again: from a handful of changes per second to a few hundred.
_RATES: Final = (15.0, 60.0, 150.0, 60.0, 15.0, 3.0)
_RATE_PHASE_SECONDS: Final = 3.0


def _rate_at(elapsed: float) -> float:
    """The workload's target rate ``elapsed`` seconds after it started."""
    return _RATES[int(elapsed // _RATE_PHASE_SECONDS) % len(_RATES)]


class _Workload:
    """A background thread writing sample transactions until ``stop()``; one connection of its own."""

    def __init__(self, dsn: str, seeded: _Seeded, *, seed: int = 1) -> None:
        self._dsn = dsn
        self._rng = Random(seed)
        self._max_customer = seeded.max_customer_id
        self._max_order = seeded.max_order_id
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cdc-demo-workload", daemon=True)
        self.transactions = 0  # written by the workload thread only
        self.error: Exception | None = None

    def start(self) -> None:
        self._thread.start()

    def alive(self) -> bool:
        return self._thread.is_alive()

    def stop(self, *, check: bool = True) -> None:
        """Stop and wait for the thread; with ``check``, raise DemoError if the workload had failed."""
        self._stop.set()
        if self._thread.ident is not None:
            self._thread.join(_THREAD_JOIN_TIMEOUT)
        if check and self.error is not None:
            raise DemoError("the sample workload failed", hint=_pg_said(self.error)) from self.error

    def _run(self) -> None:
        try:
            with psycopg.connect(self._dsn, autocommit=True) as conn:
                began = time.monotonic()
                while not self._stop.is_set():
                    self._step(conn)
                    self.transactions += 1
                    self._stop.wait(self._rng.expovariate(_rate_at(time.monotonic() - began)))
        except Exception as exc:  # handed to the main thread through stop()
            logger.debug("workload failed", exc_info=True)
            self.error = exc

    def _step(self, conn: psycopg.Connection[Any]) -> None:
        r = self._rng.random()
        if r < 0.35:
            self._new_order(conn)
        elif r < 0.65:
            self._advance_status(conn)
        elif r < 0.73:
            self._cancel_order(conn)
        elif r < 0.83:
            self._new_customer(conn)
        elif r < 0.90:
            self._change_email(conn)
        elif r < 0.99:
            self._change_quantity(conn)
        else:
            self._deliver_shipped(conn)

    def _recent_order(self) -> int:
        return max(1, self._max_order - self._rng.randrange(300))

    def _new_order(self, conn: psycopg.Connection[Any]) -> None:
        """One order and its items in one transaction (a multi-table transaction)."""
        rng = self._rng
        with conn.transaction():
            row = conn.execute(
                "insert into public.orders (customer_id, amount, status) values (%s, %s, 'new') returning id",
                (rng.randint(1, self._max_customer), Decimal(rng.randrange(500, 50_000)) / 100),
            ).fetchone()
            order_id = int(row[0]) if row is not None else 0
            for line in range(1, rng.randint(1, 4) + 1):
                conn.execute(
                    "insert into public.order_items (order_id, line, sku, qty) values (%s, %s, %s, %s)",
                    (order_id, line, f"SKU-{rng.randrange(500):04d}", rng.randint(1, 5)),
                )
        self._max_order = max(self._max_order, order_id)

    def _advance_status(self, conn: psycopg.Connection[Any]) -> None:
        conn.execute(
            "update public.orders set status = case status when 'new' then 'paid'"
            " when 'paid' then 'shipped' when 'shipped' then 'delivered' else status end,"
            " updated_at = now() where id = %s and status <> 'delivered'",
            (self._recent_order(),),
        )

    def _cancel_order(self, conn: psycopg.Connection[Any]) -> None:
        """Delete an order and its items in one transaction."""
        order_id = self._rng.randint(1, self._max_order)
        with conn.transaction():
            conn.execute("delete from public.order_items where order_id = %s", (order_id,))
            conn.execute("delete from public.orders where id = %s", (order_id,))

    def _new_customer(self, conn: psycopg.Connection[Any]) -> None:
        rng = self._rng
        row = conn.execute(
            "insert into public.customers (name, email) values (%s, %s) returning id",
            (
                f"{rng.choice(_FIRST_NAMES)} {rng.choice(_LAST_NAMES)}",
                f"new{rng.randrange(10**9)}@example.com",
            ),
        ).fetchone()
        self._max_customer = max(self._max_customer, int(row[0]) if row is not None else 0)

    def _change_email(self, conn: psycopg.Connection[Any]) -> None:
        customer_id = self._rng.randint(1, self._max_customer)
        conn.execute(
            "update public.customers set email = %s where id = %s",
            (f"changed{self._rng.randrange(10**9)}@example.com", customer_id),
        )

    def _change_quantity(self, conn: psycopg.Connection[Any]) -> None:
        conn.execute(
            "update public.order_items set qty = qty + 1 where order_id = %s and line = 1",
            (self._recent_order(),),
        )

    def _deliver_shipped(self, conn: psycopg.Connection[Any]) -> None:
        """Now and then a larger transaction: mark a few dozen shipped orders delivered."""
        conn.execute(
            "update public.orders set status = 'delivered', updated_at = now() where id in"
            " (select id from public.orders where status = 'shipped' order by id limit %s)",
            (self._rng.randint(20, 60),),
        )


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


# ---- the lake, read-only ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _TableStats:
    """A Delta table's row count and the newest source commit time it holds, from its log's file stats."""

    rows: int
    newest_commit: datetime | None


class _Lake:
    """Reads the demo's Delta tables (main thread only) while the replicator writes them."""

    def __init__(self, root: Path) -> None:
        self._root = root
        self._open: dict[TableId, Any] = {}  # TableId -> DeltaTable

    def path(self, table: TableId) -> Path:
        return self._root / table.schema / table.name

    def stats(self, table: TableId) -> _TableStats | None:
        """None while the table does not exist yet (the initial load has not reached it)."""
        dt = self._open.get(table)
        if dt is None:
            try:
                dt = DeltaTable(str(self.path(table)))
            except TableNotFoundError:
                return None
            self._open[table] = dt
        else:
            dt.update_incremental()
        actions = pa.table(dt.get_add_actions(flatten=True))
        if actions.num_rows == 0:
            return _TableStats(0, None)
        counts = actions.column("num_records")
        rows = (
            int(pc.sum(counts).as_py() or 0)
            if counts.null_count == 0
            else int(dt.to_pyarrow_dataset().count_rows())
        )
        newest: datetime | None = None
        if "max._cdc_committed_at" in actions.column_names:
            newest = pc.max(actions.column("max._cdc_committed_at")).as_py()
        return _TableStats(rows, newest)

    def exact_rows(self, table: TableId) -> int | None:
        """Rows in the latest version, counted by a fresh reader (the final check)."""
        try:
            return int(DeltaTable(str(self.path(table))).to_pyarrow_dataset().count_rows())
        except TableNotFoundError:
            return None


# ---- output: pure formatting -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Symbols:
    ok: str
    bad: str
    ellipsis: str
    arrow: str


_UNICODE: Final = _Symbols("✓", "✗", "…", "→")
_ASCII: Final = _Symbols("OK", "MISMATCH", "...", "->")


def _symbols_for(encoding: str | None) -> _Symbols:
    try:
        "".join((_UNICODE.ok, _UNICODE.bad, _UNICODE.ellipsis, _UNICODE.arrow)).encode(encoding or "ascii")
    except (UnicodeEncodeError, LookupError):
        return _ASCII
    return _UNICODE


_NAME_WIDTH: Final = max(len(str(t)) for t in TABLES)


def _format_progress(
    elapsed: float,
    applied: Mapping[TableId, int],
    stats: Mapping[TableId, _TableStats | None],
    lag: float | None,
    sym: _Symbols,
) -> list[str]:
    """One line per table: changes applied so far and rows now in Delta; the lag on the last line."""
    lines = []
    for i, table in enumerate(TABLES):
        clock = f"{elapsed:5.0f}s" if i == 0 else " " * 6
        st = stats.get(table)
        rows = f"{st.rows:>9,} rows in Delta" if st is not None else f"{'loading' + sym.ellipsis:>23}"
        line = f"{clock}  {str(table):<{_NAME_WIDTH}}  {applied.get(table, 0):>8,} changes applied  {rows}"
        if i == len(TABLES) - 1 and lag is not None:
            line += f"   lag {lag:.1f}s"
        lines.append(line)
    return lines


@dataclass(frozen=True, slots=True)
class _Check:
    table: TableId
    source_rows: int
    delta_rows: int | None

    @property
    def ok(self) -> bool:
        return self.delta_rows == self.source_rows


def _format_check(check: _Check, sym: _Symbols) -> str:
    name = f"{str(check.table):<{_NAME_WIDTH}}"
    if check.ok:
        return f"  {name}  Delta rows = source rows = {check.source_rows:,}  {sym.ok}"
    delta = "no table" if check.delta_rows is None else f"{check.delta_rows:,}"
    return f"  {name}  Delta rows {delta} != source rows {check.source_rows:,}  {sym.bad}"


def _format_query_help(lake: _Lake) -> list[str]:
    orders = lake.path(ORDERS)
    return [
        "Query the result (the lake stays; each table also has _cdc_lsn, _cdc_op, _cdc_committed_at):",
        "",
        "    from deltalake import DeltaTable",
        f'    orders = DeltaTable("{orders}").to_pyarrow_table()',
        "    print(orders.num_rows, orders.column_names)",
        "",
        f'  polars:  pl.read_delta("{orders}")',
        f"""  duckdb:  duckdb.sql("from delta_scan('{orders}')").show()""",
    ]


# ---- the demo directory ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _DemoDir:
    root: Path

    @property
    def lake(self) -> Path:
        return self.root / "lake"

    @property
    def state_db(self) -> Path:
        return self.root / "state" / "cdc.db"

    @contextmanager
    def claimed(self) -> Iterator[bool]:
        """Lock the directory for this run and empty its lake and state; yields whether old ones went.

        Only lake/ and state/ are removed, and only when the marker file says the demo made them.
        """
        previous = [p for p in (self.lake, self.state_db.parent) if p.exists()]
        marker = self.root / _MARKER
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            if previous and not marker.exists():
                raise DemoError(
                    f"{self.root} already holds {' and '.join(p.name + '/' for p in previous)}, "
                    "not made by the demo",
                    hint="pass another --dir (the demo would delete them), or remove them if a demo left them",
                )
            lock = marker.open("a")
        except OSError as exc:
            raise DemoError(f"cannot use {self.root} for the demo", hint="pass another --dir") from exc
        with lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise DemoError(
                    f"another demo is running in {self.root}", hint="stop it first, or pass another --dir"
                ) from None
            try:
                for path in previous:
                    shutil.rmtree(path)
            except OSError as exc:
                raise DemoError(
                    f"cannot remove the previous run's {path}", hint=f"remove it: rm -rf {path}"
                ) from exc
            yield bool(previous)


def _config(dsn: str, workdir: _DemoDir) -> Config:
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
    sym = _symbols_for(sys.stdout.encoding)
    demo_dir = _DemoDir(workdir.absolute())
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
                seeded = _create_shop(dsn)
                config = _config(dsn, demo_dir)
                lake = _Lake(demo_dir.lake)
                _print_header(out, pg, seeded, demo_dir, seconds, time.monotonic() - started, sym)
                checks = _replicate(dsn, config, seeded, lake, seconds, interrupts, out, sym)
        except KeyboardInterrupt:  # a second Ctrl-C: the server is gone, the check is skipped
            out("Stopped without the final check; PostgreSQL stopped and removed.")
            raise
        out(f"PostgreSQL stopped and its directory {pg.base_dir} removed.")
    out("")
    out("Check (after the workload stopped and the replicator caught up):")
    for check in checks:
        out(_format_check(check, sym))
    out("")
    for line in _format_query_help(lake):
        out(line)
    bad = [str(c.table) for c in checks if not c.ok]
    if bad:
        raise DemoError(
            f"Delta and the source disagree on the row count of {', '.join(bad)}",
            hint="run the demo again; if it happens again, please report it with this output",
        )


def _print_header(
    out: Callable[[str], None],
    pg: LocalPostgres,
    seeded: _Seeded,
    demo_dir: _DemoDir,
    seconds: float,
    startup: float,
    sym: _Symbols,
) -> None:
    sizes = ", ".join(f"{t.name} {seeded.rows[t]:,}" for t in TABLES)
    stop = f"Stops by itself after {seconds:g}s, or press Ctrl-C." if seconds > 0 else "Press Ctrl-C to stop."
    for line in (
        f"PostgreSQL {pg.version} is up on {pg.host}:{pg.port} after {startup:.1f}s (a throwaway: removed on exit).",
        "",
        f"  source  database {DATABASE!r}, rows: {sizes}",
        f"  lake    {demo_dir.lake}/public/<table>  (Delta tables)",
        f"  state   {demo_dir.state_db}",
        "",
        "A workload thread writes new orders with their items, moves orders along "
        f"new {sym.arrow} paid {sym.arrow} shipped {sym.arrow} delivered,",
        "cancels (deletes) some and adds customers: a few to a few hundred changes per second.",
        "cdc-replicator loads the three tables into Delta, then applies the change stream about once a second.",
        f"Lag = how long ago the newest change now in Delta was committed. {stop}",
        "",
    ):
        out(line)


def _replicate(
    dsn: str,
    config: Config,
    seeded: _Seeded,
    lake: _Lake,
    seconds: float,
    interrupts: _Interrupts,
    out: Callable[[str], None],
    sym: _Symbols,
) -> list[_Check]:
    """Run workload and replicator, report progress, then stop both once Delta caught up."""
    applied = _Applied()
    workload = _Workload(dsn, seeded)
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
    source = _source_counts(dsn)
    return [_Check(t, source[t], lake.exact_rows(t)) for t in TABLES]


def _watch(
    seconds: float,
    interrupts: _Interrupts,
    workload: _Workload,
    replicator: _ReplicatorThread,
    lake: _Lake,
    applied: _Applied,
    out: Callable[[str], None],
    sym: _Symbols,
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
            for line in _format_progress(now - began, applied.snapshot(), stats, _lag(stats), sym):
                out(line)
            next_report += _PROGRESS_EVERY
        time.sleep(0.1)


def _stats_or_none(lake: _Lake, table: TableId) -> _TableStats | None:
    try:
        return lake.stats(table)
    except (DeltaError, OSError):  # a read racing a commit; the next tick reads again
        logger.debug("reading the Delta table of %s failed", table, exc_info=True)
        return None


def _lag(stats: Mapping[TableId, _TableStats | None]) -> float | None:
    newest = [s.newest_commit for s in stats.values() if s is not None and s.newest_commit is not None]
    if not newest:
        return None
    return max(0.0, (datetime.now(UTC) - max(newest)).total_seconds())


def _catch_up(dsn: str, lake: _Lake, replicator: _ReplicatorThread) -> bool:
    """Wait until the slot confirmed every change made so far and the row counts agree; False on timeout.

    The workload has stopped, so the source no longer changes. Equal counts alone could hide an
    update still in flight; the slot's confirmed position passing the WAL flush position cannot,
    since the replicator confirms only what Delta holds.
    """
    target = _wal_position(dsn)
    source = _source_counts(dsn)
    deadline = time.monotonic() + _CATCH_UP_TIMEOUT
    while time.monotonic() < deadline:
        replicator.check()
        confirmed = _slot_confirmed(dsn)
        if confirmed is not None and confirmed >= target:
            stats = {t: _stats_or_none(lake, t) for t in TABLES}
            if all(s is not None and s.rows == source[t] for t, s in stats.items()):
                return True
        time.sleep(0.2)
    return False
