"""The only module that knows every stage: start checks, initial load, the stream loop, retries, shutdown.

Flow: source → batching → sink → state record → confirm. The position confirmed to PostgreSQL is
the end of the last batch whose touched tables all committed to Delta, and it is written to the
state store before it is sent, so a later start can tell a slot moved by someone else.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

import psycopg
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_delay,
    stop_never,
    wait_exponential,
)

from cdc_replicator import failpoints
from cdc_replicator.batching import Batcher, BatchLimits
from cdc_replicator.checkpoint import Recorded, SlotState, StartKind, StartPlan, plan_start
from cdc_replicator.config import Config, redact_dsn
from cdc_replicator.errors import ContractViolation, ReplicatorError, SourceError
from cdc_replicator.model import (
    ChangeBatch,
    Keepalive,
    Lsn,
    RelationChanged,
    TableId,
    TablePosition,
    TableSchema,
)
from cdc_replicator.sink.delta import DeltaSink
from cdc_replicator.source import checks
from cdc_replicator.source.logical import LogicalSource
from cdc_replicator.source.replication import ReplicationConnection
from cdc_replicator.source.snapshot import copy_table
from cdc_replicator.state import StateStore

__all__ = ["BatchReport", "Replicator"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class BatchReport:
    """What one applied batch did; handed to the optional observer (demo, metrics)."""

    batch_id: int
    end: Lsn
    transactions: int
    changes: Mapping[TableId, int]
    seconds: float


class Replicator:
    """Runs one configured pipeline in the calling thread until ``stop`` is set."""

    def __init__(
        self,
        config: Config,
        *,
        stop: threading.Event | None = None,
        on_batch: Callable[[BatchReport], None] | None = None,
    ) -> None:
        self._cfg = config
        self._stop = stop or threading.Event()
        self._on_batch = on_batch
        self._slot = config.source.slot
        self._tables = config.table_ids
        self._sink = DeltaSink(
            config.target.uri,
            slot=self._slot,
            storage_options=dict(config.target.storage_options),
            soft_delete=[t.name for t in config.tables if t.soft_delete],
            target_file_size=config.target.target_file_size,
        )
        self._state = StateStore(config.state.url)

    def close(self) -> None:
        self._state.close()

    # ---- entry points ----------------------------------------------------------------------

    def run(self) -> None:
        """Stream until stopped; retry what can be retried, with backoff; raise what cannot."""
        give_up = self._cfg.source.retry_give_up_seconds
        retrying = Retrying(
            retry=retry_if_exception(lambda e: isinstance(e, ReplicatorError) and e.retryable),
            wait=wait_exponential(multiplier=0.5, min=0.5, max=self._cfg.source.retry_max_seconds),
            stop=stop_after_delay(give_up) if give_up > 0 else stop_never,
            sleep=self._sleep,
            before_sleep=_log_retry,
            reraise=True,
        )
        for attempt in retrying:
            with attempt:
                if self._stop.is_set():
                    return
                self._run_once()

    def resync_all(self) -> None:
        """Full re-sync: drop and recreate the slot, reload every table. The daemon must be stopped."""
        with checks.connect(
            self._cfg.source.dsn, connect_timeout=self._cfg.source.connect_timeout_seconds
        ) as conn:
            schemas = checks.preflight(conn, self._tables)
            checks.ensure_publication(conn, self._cfg.source.publication, self._tables)
            slot = checks.slot_info(conn, self._slot)
            if slot is not None and slot.active_pid is not None:
                raise SourceError(
                    f"replication slot {self._slot!r} is in use by process {slot.active_pid}",
                    hint="stop the running cdc-replicator first, then run the snapshot again",
                )
            system_id = self._system_id()
            self._initial_load(conn, schemas, system_id)

    # ---- one attempt ------------------------------------------------------------------------

    def _sleep(self, seconds: float) -> None:
        self._stop.wait(seconds)

    def _system_id(self) -> str:
        repl = ReplicationConnection(
            self._cfg.source.dsn, connect_timeout=self._cfg.source.connect_timeout_seconds
        )
        try:
            return repl.identify_system().system_id
        finally:
            repl.close()

    def _run_once(self) -> None:
        src = self._cfg.source
        with checks.connect(src.dsn, connect_timeout=src.connect_timeout_seconds) as conn:
            schemas = checks.preflight(conn, self._tables)
            checks.ensure_publication(conn, src.publication, self._tables)
            system_id = self._system_id()
            info = checks.slot_info(conn, self._slot)
            if info is not None and info.plugin != "pgoutput":
                raise SourceError(
                    f"replication slot {self._slot!r} uses plugin {info.plugin!r}, not pgoutput",
                    hint="choose another source.slot, or drop that slot if it is unused",
                )
            positions = {t: self._sink.position(t) for t in self._tables}
            rec = self._state.slot(self._slot)
            plan = plan_start(
                slot_name=self._slot,
                slot=None
                if info is None
                else SlotState(info.confirmed_flush or Lsn.ZERO, info.invalidated, info.wal_status),
                recorded=None
                if rec is None
                else Recorded(rec.load_state, rec.applied_lsn, rec.consistent_point, rec.system_id),
                tables=positions,
                system_id=system_id,
            )
            if plan.kind is not StartKind.STREAM:
                logger.info("initial load needed reason=%s slot=%s", plan.kind.value, self._slot)
                start = self._initial_load(conn, schemas, system_id)
                plan = StartPlan(StartKind.STREAM, start)
        self._stream(schemas, plan.start)

    def _initial_load(
        self,
        conn: psycopg.Connection[tuple[object, ...]],
        schemas: Mapping[TableId, TableSchema],
        system_id: str,
    ) -> Lsn:
        """Create the slot with an exported snapshot and copy every table inside that snapshot."""
        src = self._cfg.source
        self._state.begin_load(self._slot, system_id)
        checks.drop_slot(conn, self._slot)
        repl = ReplicationConnection(src.dsn, connect_timeout=src.connect_timeout_seconds)
        try:
            created = repl.create_slot(self._slot, export_snapshot=True)
            point = created.consistent_point
            self._state.set_consistent_point(self._slot, point)
            logger.info("replication slot created slot=%s consistent_point=%s", self._slot, point)
            loaded_at = datetime.now(UTC)
            with checks.connect(src.dsn, connect_timeout=src.connect_timeout_seconds) as copy_conn:
                for table in self._tables:
                    if self._stop.is_set():
                        raise ReplicatorError("stopped during the initial load; the next start loads again")
                    schema = schemas[table]
                    self._state.table_status(self._slot, table, "loading")
                    started = time.monotonic()
                    rows = self._sink.load(
                        schema,
                        copy_table(copy_conn, schema, snapshot=created.snapshot_name),
                        position=point,
                        loaded_at=loaded_at,
                    )
                    failpoints.hit("after_table_load")
                    self._state.table_status(
                        self._slot, table, "streaming", position=str(point), rows_loaded=rows
                    )
                    logger.info(
                        "initial load done table=%s rows=%d seconds=%.1f",
                        table,
                        rows,
                        time.monotonic() - started,
                    )
        finally:
            repl.close()
        self._state.finish_load(self._slot, point)
        return point

    def _stream(self, schemas: Mapping[TableId, TableSchema], start: Lsn) -> None:
        src = self._cfg.source
        positions: dict[TableId, TablePosition] = {}
        for t in self._tables:
            p = self._sink.position(t)
            if p is not None:
                positions[t] = p
        source = LogicalSource(
            src.dsn,
            slot=self._slot,
            publication=src.publication,
            keys={t: s.key for t, s in schemas.items()},
            start=start,
            streaming=src.streaming,
            status_interval=src.status_interval_seconds,
            connect_timeout=src.connect_timeout_seconds,
        )
        b = self._cfg.batch
        batcher = Batcher(
            BatchLimits(b.max_rows, b.max_bytes, b.max_seconds),
            {},
            positions,
            start=start,
            clock=time.monotonic,
        )
        confirmed = start
        try:
            source.open()
            logger.info("streaming slot=%s from=%s dsn=%s", self._slot, start, redact_dsn(src.dsn))
            for ev in source.events(idle_timeout=0.2):
                if self._stop.is_set():
                    last = batcher.flush()
                    if last is not None:
                        confirmed = self._apply(last, source, confirmed)
                    break
                batch: ChangeBatch | None = None
                if ev is None:
                    batch = batcher.poll()
                elif isinstance(ev, Keepalive):
                    # keepalives can arrive back to back (a server shutting down waits for our
                    # flush): the batch timer must run on them too, or nothing would ever close
                    batch = batcher.poll()
                    if batch is not None:
                        confirmed = self._apply(batch, source, confirmed)
                        batch = None
                    if batcher.idle and ev.wal_end > confirmed:
                        # everything sent before the keepalive is applied: let the slot move on
                        self._state.record_applied(self._slot, ev.wal_end)
                        source.confirm(ev.wal_end)
                        confirmed = ev.wal_end
                    continue
                elif isinstance(ev, RelationChanged):
                    self._check_relation(ev, schemas)
                    batcher.add(ev)
                else:
                    batch = batcher.add(ev)
                if batch is not None:
                    confirmed = self._apply(batch, source, confirmed)
        finally:
            source.close()
        logger.info("stream stopped slot=%s confirmed=%s", self._slot, confirmed)

    def _check_relation(self, ev: RelationChanged, schemas: Mapping[TableId, TableSchema]) -> None:
        want = schemas.get(ev.schema.table)
        got = ev.schema
        if want is None:
            return
        old = [(c.name, c.type_oid, c.type_modifier) for c in want.columns]
        new = [(c.name, c.type_oid, c.type_modifier) for c in got.columns]
        if old != new:
            raise ContractViolation(
                f"the columns of {got.table} changed in the stream: {old} -> {new}; "
                "schema evolution is not supported yet",
                hint="re-sync after the change: cdc-replicator --config FILE snapshot",
            )

    def _apply(self, batch: ChangeBatch, source: LogicalSource, confirmed: Lsn) -> Lsn:
        started = time.monotonic()
        for patch in batch.tables.values():
            self._sink.apply(patch, batch.position, batch_id=batch.batch_id)
            failpoints.hit("after_table_commit")
        failpoints.hit("before_confirm")
        if batch.end > confirmed:
            self._state.record_applied(self._slot, batch.end)
            source.confirm(batch.end)
            confirmed = batch.end
        seconds = time.monotonic() - started
        changes = {t: p.changes for t, p in batch.tables.items()}
        logger.debug(
            "batch applied id=%d end=%s txns=%d tables=%d changes=%d seconds=%.3f",
            batch.batch_id,
            batch.end,
            batch.transactions,
            len(batch.tables),
            sum(changes.values()),
            seconds,
        )
        if self._on_batch is not None:
            self._on_batch(BatchReport(batch.batch_id, batch.end, batch.transactions, changes, seconds))
        return confirmed


def _log_retry(state: RetryCallState) -> None:
    exc = state.outcome.exception() if state.outcome is not None else None
    wait = state.next_action.sleep if state.next_action is not None else 0.0
    logger.warning("retrying in %.1fs after: %s", wait, str(exc).splitlines()[0] if exc else "?")
