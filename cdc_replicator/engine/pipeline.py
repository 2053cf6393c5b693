"""The only module that knows every stage: start checks, initial load, the stream loop, retries, shutdown.

Flow: source → batching → sink → state record → confirm. The position confirmed to PostgreSQL is
the end of the last batch whose touched tables all committed to Delta, and it is written to the
state store before it is sent, so a later start can tell a slot moved by someone else.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace

import psycopg
import pyarrow as pa
import pyarrow.compute as pc
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_delay,
    stop_never,
    wait_exponential,
)

from cdc_replicator.config import Config, TableConfig, redact_dsn
from cdc_replicator.engine.batching import Batcher, BatchLimits
from cdc_replicator.engine.checkpoint import Recorded, SlotState, StartKind, StartPlan, plan_start
from cdc_replicator.engine.contracts import decide, schema_from_json, schema_to_json
from cdc_replicator.engine.loader import Loader, LoadInterrupted, LoadResult, ProgressSink
from cdc_replicator.engine.resync import Resyncer, request_resync
from cdc_replicator.errors import ConfigError, ReplicatorError, SourceError
from cdc_replicator.model import (
    Begin,
    ChangeBatch,
    ColumnSelection,
    Commit,
    Keepalive,
    KeyRange,
    Lsn,
    Op,
    RelationChanged,
    RowChange,
    SourceMessage,
    TableId,
    TablePatch,
    TablePosition,
    TableSchema,
    Truncate,
)
from cdc_replicator.service import failpoints
from cdc_replicator.service.health import HealthState, Phase, TableState
from cdc_replicator.service.metrics import WAL_STATUSES, Metrics
from cdc_replicator.sink.delta import ApplyResult, DeltaSink
from cdc_replicator.source import checks, objects
from cdc_replicator.source.logical import LogicalSource
from cdc_replicator.source.replication import ReplicationConnection
from cdc_replicator.source.watermark import (
    RECONCILE_DELETE_KEY_OIDS,
    Page,
    Pending,
    PollResult,
    WatermarkSource,
    WatermarkState,
    WatermarkTable,
    add_pending,
    may_be_late,
    now_utc,
    page_patch,
    settle,
    wall,
)
from cdc_replicator.store.state import StateStore, migrations_dir
from cdc_replicator.types import cast_text, resolve_domains, unresolved_types

__all__ = ["BatchReport", "Replicator"]

_MERGE_THREADS = 4  # tables of one batch merged side by side (delta-rs releases the GIL)

logger = logging.getLogger(__name__)

_WATERMARK_KEY = "cdc.watermark"  # commit metadata: the table's WatermarkState, in the data's commit


def _empty_patch_rows(schema: TableSchema) -> pa.Table:
    cols: dict[str, pa.Array] = {c.name: pa.array([], pa.binary()) for c in schema.columns}
    cols["_cdc_lsn"] = pa.array([], pa.int64())
    cols["_cdc_op"] = pa.array([], pa.string())
    cols["_cdc_committed_at"] = pa.array([], pa.timestamp("us", tz="UTC"))
    return pa.table(cols)


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
        health: HealthState | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self._cfg = config
        self._stop = stop or threading.Event()
        self._on_batch = on_batch
        self._health = health or HealthState(config.table_ids)
        self._metrics = metrics
        self._once = False
        self._applied: dict[TableId, TableSchema] = {}  # the layout each Delta table holds
        self._domains: dict[int, tuple[int, int]] | None = None  # domain oid -> (base oid, typmod)
        self._selections = {
            t.name: ColumnSelection(frozenset(t.columns), frozenset(t.exclude_columns)) for t in config.tables
        }
        self._paused: dict[TableId, tuple[Lsn, str]] = {}  # table -> (confirm cap, reason)
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
        self._merge_pool = ThreadPoolExecutor(max_workers=_MERGE_THREADS, thread_name_prefix="cdc-merge")

    def close(self) -> None:
        self._merge_pool.shutdown(wait=True)
        self._state.close()

    # ---- entry points ----------------------------------------------------------------------

    def run(self, *, once: bool = False) -> None:
        """Stream until stopped; retry what can be retried, with backoff; raise what cannot.

        ``once`` (watermark mode): poll every table until it has nothing new, then return.
        """
        if once and self._cfg.source.mode != "watermark":
            raise ConfigError(
                'run --once is for source.mode = "watermark"',
                hint="in logical mode the stream never ends: stop the daemon with SIGTERM",
            )
        self._once = once
        give_up = self._cfg.source.retry_give_up_seconds
        retrying = Retrying(
            retry=retry_if_exception(lambda e: isinstance(e, ReplicatorError) and e.retryable),
            wait=wait_exponential(multiplier=0.5, min=0.5, max=self._cfg.source.retry_max_seconds),
            stop=stop_after_delay(give_up) if give_up > 0 else stop_never,
            sleep=self._sleep,
            before_sleep=self._before_retry,
            reraise=True,
        )
        watch = _SlotWatch(
            self._cfg, self._health, self._metrics, self._stop, enabled=self._cfg.source.mode == "logical"
        )
        watch.start()
        try:
            for attempt in retrying:
                with attempt:
                    if self._stop.is_set():
                        return
                    self._health.set_phase(Phase.STARTING)
                    if self._cfg.source.mode == "watermark":
                        self._run_watermark_once()
                    else:
                        self._run_once()
        except ReplicatorError as exc:
            if self._metrics is not None:
                self._metrics.errors.labels(kind=type(exc).__name__).inc()
            self._health.set_phase(Phase.FAILED, error=exc.message)
            for t in self._tables:
                self._set_table(t, TableState.FAILED, exc.message)
            raise
        finally:
            watch.stop()
            if self._health.phase is not Phase.FAILED:
                self._health.set_phase(Phase.STOPPING)

    def _before_retry(self, state: RetryCallState) -> None:
        _log_retry(state)
        exc = state.outcome.exception() if state.outcome is not None else None
        kind = type(exc).__name__ if exc is not None else "unknown"
        if self._metrics is not None:
            self._metrics.errors.labels(kind=kind).inc()
            self._metrics.retries.labels(kind=kind).inc()
        self._health.set_phase(Phase.RETRYING, error=str(exc).splitlines()[0] if exc else None)

    def _set_table(self, table: TableId, state: TableState, reason: str | None = None) -> None:
        """A table's state: in the health (endpoint, metrics) and, on a change, in the state store."""
        before = self._health.table_states().get(table)
        self._health.set_table(table, state, reason)
        if before is None or before[0] is not state or before[1] != reason:
            try:
                self._state.table_status(self._slot, table, state.value, error=reason)
            except Exception as exc:
                logger.warning("could not record the state of %s: %s", table, exc)

    def snapshot(
        self,
        tables: Sequence[TableId] | None = None,
        *,
        parallel: int | None = None,
        progress: ProgressSink | None = None,
    ) -> list[LoadResult]:
        """Load tables while the daemon is stopped; resumes a load that was cut short.

        All tables (``tables`` None, or no slot yet): the slot is recreated with an exported
        snapshot and every table is loaded in it. Some tables: they are loaded in the snapshot of a
        temporary slot, and each ends at that slot's consistent point, so the daemon, resuming from
        its own slot, skips their older changes and applies the newer ones.
        """
        src = self._cfg.source
        wanted = list(tables) if tables else list(self._tables)
        unknown = [str(t) for t in wanted if t not in self._tables]
        if unknown:
            raise ConfigError(
                f"config: {', '.join(unknown)} is not a configured table",
                hint="add it to [[tables]] first (the daemon must know the tables it streams)",
            )
        if src.mode == "watermark":
            self._watermark_resync(wanted)
            return []
        with checks.connect(src.dsn, connect_timeout=src.connect_timeout_seconds) as conn:
            schemas = checks.preflight(conn, self._tables, self._selections)
            checks.ensure_publication(conn, src.publication, self._tables, self._narrowed(schemas))
            info = checks.slot_info(conn, self._slot)
            if info is not None and info.active_pid is not None:
                if tables:
                    self._live_resync(conn, wanted)
                    return []
                raise SourceError(
                    f"replication slot {self._slot!r} is in use by process {info.active_pid}",
                    hint="a full re-sync recreates the slot: stop the running cdc-replicator first "
                    "(or name tables with --table to re-sync them live)",
                )
            rec = self._state.slot(self._slot)
            system_id = self._system_id()
            whole = tables is None or info is None or (rec is not None and rec.load_state == "loading")
            if whole:
                return self._full_load(conn, schemas, system_id, progress=progress, parallel=parallel)[1]
        return self._partial_load([schemas[t] for t in wanted], progress=progress, parallel=parallel)

    def _live_resync(self, conn: psycopg.Connection[tuple[object, ...]], tables: list[TableId]) -> None:
        """Ask the running daemon to re-sync ``tables`` and wait until it reports them done."""
        request = request_resync(conn, tables)
        logger.info("live re-sync requested request=%s tables=%s", request, [str(t) for t in tables])
        last = ""
        while not self._stop.is_set():
            recs = [r for r in self._state.resyncs(self._slot) if r.request == request]
            line = ", ".join(f"{r.table} {r.state} chunks={r.chunks} rows={r.rows}" for r in recs)
            if line != last:
                logger.warning("live re-sync %s", line or "waiting for the daemon to pick up the request")
                last = line
            if len(recs) == len(tables) and all(r.state != "running" for r in recs):
                failed = [r for r in recs if r.state != "done"]
                if failed:
                    raise SourceError(
                        f"live re-sync failed: {', '.join(f'{r.table}: {r.detail}' for r in failed)}",
                        hint="stop the daemon and run: cdc-replicator --config FILE snapshot --table <table>",
                    )
                return
            self._stop.wait(0.5)
        raise LoadInterrupted(
            "stopped waiting; the daemon continues the re-sync on its own",
            hint="follow it with: cdc-replicator --config FILE status",
        )

    def _loader(self, parallel: int | None, progress: ProgressSink | None) -> Loader:
        snap = self._cfg.snapshot
        n = parallel or snap.parallel or min(4, os.cpu_count() or 1)
        return Loader(
            dsn=self._cfg.source.dsn,
            sink=self._sink,
            state=self._state,
            slot=self._slot,
            parallel=n,
            chunk_rows=snap.chunk_rows,
            stop=self._stop,
            progress=_ObservedLoad(self._health, self._metrics, progress),
            connect_timeout=self._cfg.source.connect_timeout_seconds,
        )

    def _partial_load(
        self, schemas: list[TableSchema], *, progress: ProgressSink | None, parallel: int | None
    ) -> list[LoadResult]:
        """Re-sync some tables in the snapshot of a temporary slot (the daemon's slot stays as is)."""
        src = self._cfg.source
        repl = ReplicationConnection(src.dsn, connect_timeout=src.connect_timeout_seconds)
        try:
            temp = repl.create_slot(
                f"{self._slot}_snap_{os.getpid()}",
                export_snapshot=True,
                temporary=True,
                timeout=src.slot_create_timeout_seconds,
            )
            point = temp.consistent_point
            # a load of the same tables cut short keeps its position: the rows it already wrote are older
            recs = [self._state.load(self._slot, s.table) for s in schemas]
            resumable = [r for r in recs if r is not None and r.state == "running"]
            position = min((r.position for r in resumable), default=point)
            if any(r.position != position for r in resumable) or len(resumable) not in (0, len(schemas)):
                position = point  # mixed history: start these tables over
                fresh = True
            else:
                fresh = False
            logger.info(
                "table snapshot tables=%s snapshot_at=%s position=%s",
                [str(s.table) for s in schemas],
                point,
                position,
            )
            results = self._loader(parallel, progress).run(
                schemas, position=position, snapshot=temp.snapshot_name, snapshot_lsn=point, fresh=fresh
            )
            self._record_loaded(schemas, point)
            return results
        finally:
            repl.close()

    # ---- one attempt ------------------------------------------------------------------------

    def _sleep(self, seconds: float) -> None:
        """A back-off wait: waiting on purpose, so the health keeps beating."""
        deadline = time.monotonic() + seconds
        while not self._stop.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self._health.beat()
            self._stop.wait(min(1.0, left))

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
            schemas = checks.preflight(conn, self._tables, self._selections)
            checks.ensure_publication(conn, src.publication, self._tables, self._narrowed(schemas))
            if src.heartbeat == "table" and src.heartbeat_interval_seconds > 0:
                objects.apply_source_migrations(conn, migrations_dir("source"))
            self._health.set_connected(True)
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
                self._health.set_phase(Phase.LOADING)
                for t in self._tables:
                    self._set_table(t, TableState.SNAPSHOTTING)
                start, _ = self._full_load(conn, schemas, system_id)
                plan = StartPlan(StartKind.STREAM, start)
        self._stream(schemas, plan.start)

    def _full_load(
        self,
        conn: psycopg.Connection[tuple[object, ...]],
        schemas: Mapping[TableId, TableSchema],
        system_id: str,
        *,
        progress: ProgressSink | None = None,
        parallel: int | None = None,
    ) -> tuple[Lsn, list[LoadResult]]:
        """Load every table at the slot's consistent point; resume our own load that was cut short.

        Fresh: (re)create the slot with an exported snapshot and copy every chunk inside it.
        Resume (the state store says our load runs and the slot has not moved since): the chunks
        still missing are read in a temporary slot's newer snapshot; positions stay at the slot's.
        """
        src = self._cfg.source
        rec = self._state.slot(self._slot)
        info = checks.slot_info(conn, self._slot)
        resume = (
            rec is not None
            and rec.load_state == "loading"
            and rec.consistent_point is not None
            and info is not None
            and info.active_pid is None
            and info.confirmed_flush == rec.consistent_point
        )
        ordered = [schemas[t] for t in self._tables]
        repl = ReplicationConnection(src.dsn, connect_timeout=src.connect_timeout_seconds)
        try:
            if resume and rec is not None and rec.consistent_point is not None:
                point = rec.consistent_point
                temp = repl.create_slot(
                    f"{self._slot}_snap_{os.getpid()}",
                    export_snapshot=True,
                    temporary=True,
                    timeout=src.slot_create_timeout_seconds,
                )
                logger.info(
                    "initial load resumed slot=%s position=%s snapshot_at=%s",
                    self._slot,
                    point,
                    temp.consistent_point,
                )
                results = self._loader(parallel, progress).run(
                    ordered,
                    position=point,
                    snapshot=temp.snapshot_name,
                    snapshot_lsn=temp.consistent_point,
                    fresh=False,
                )
            else:
                self._state.begin_load(self._slot, system_id)
                checks.drop_slot(conn, self._slot)
                created = repl.create_slot(
                    self._slot, export_snapshot=True, timeout=src.slot_create_timeout_seconds
                )
                point = created.consistent_point
                self._state.set_consistent_point(self._slot, point)
                logger.info("replication slot created slot=%s consistent_point=%s", self._slot, point)
                failpoints.hit("after_slot_created")
                results = self._loader(parallel, progress).run(
                    ordered, position=point, snapshot=created.snapshot_name, snapshot_lsn=point, fresh=True
                )
        finally:
            repl.close()
        for r in results:
            logger.info("initial load done table=%s rows=%d chunks=%d", r.table, r.rows, r.chunks)
        self._record_loaded(ordered, point)
        self._state.finish_load(self._slot, point)
        return point, results

    def _record_loaded(self, schemas: Sequence[TableSchema], at: Lsn) -> None:
        """A load wrote each table in its catalog layout: that is what the stream compares with now."""
        for s in schemas:
            self._state.record_schema(
                self._slot, s.table, decision="load", lsn=at, new_schema=schema_to_json(s)
            )

    def _stream(self, schemas: Mapping[TableId, TableSchema], start: Lsn) -> None:
        src = self._cfg.source
        self._paused.clear()  # decided again as the stream replays (a contract may have changed)
        self._load_applied_schemas(schemas)
        positions: dict[TableId, TablePosition] = {}
        for t in self._tables:
            p = self._sink.position(t)
            if p is not None:
                positions[t] = p
        resync = Resyncer(
            dsn=src.dsn,
            slot=self._slot,
            state=self._state,
            schemas=schemas,
            chunk_rows=min(self._cfg.snapshot.chunk_rows, max(1, self._cfg.batch.max_rows // 2), 20_000),
            connect_timeout=src.connect_timeout_seconds,
            paused=self._paused,
        )
        source = LogicalSource(
            src.dsn,
            slot=self._slot,
            publication=src.publication,
            keys={t: s.key for t, s in schemas.items()},
            selections=self._selections,
            start=start,
            streaming=src.streaming,
            status_interval=src.status_interval_seconds,
            connect_timeout=src.connect_timeout_seconds,
            reader=src.reader,
        )
        b = self._cfg.batch
        batcher = Batcher(
            BatchLimits(b.max_rows, b.max_bytes, b.max_seconds),
            {},
            positions,
            start=start,
            clock=time.monotonic,
        )

        def apply(batch: ChangeBatch, upto: Lsn) -> Lsn:
            started = time.monotonic()
            confirmed = self._apply(batch, source, upto, resync)
            batcher.adapt(time.monotonic() - started)  # the next batch's time limit follows merge cost
            return confirmed

        applier = _Applier(apply, start)

        def hand_over(batch: ChangeBatch) -> None:
            if resync.idle:
                applier.submit(batch)  # merges while the loop decodes the next batch
            else:
                applier.apply_now(batch)  # the re-sync bookkeeping stays in this thread

        try:
            source.open()
            logger.info("streaming slot=%s from=%s dsn=%s", self._slot, start, redact_dsn(src.dsn))
            self._health.set_connected(True)
            self._health.set_phase(Phase.STREAMING)
            for t in self._tables:
                if t in positions:
                    self._health.set_committed(t, positions[t].lsn)
                self._set_table(t, TableState.STREAMING)
            resync.restore()
            txn_commit = Lsn.ZERO
            health = self._health
            for ev in source.events(idle_timeout=0.2):
                health.beat()
                if self._stop.is_set():
                    last = batcher.flush()
                    if last is not None:
                        applier.apply_now(last)
                    applier.wait()
                    break
                batch: ChangeBatch | None = None
                if ev is None:
                    applier.check()  # a quiet source must not hide a failed apply
                    batch = batcher.poll()
                elif isinstance(ev, Keepalive):
                    # keepalives can arrive back to back (a server shutting down waits for our
                    # flush): the batch timer must run on them too, or nothing would ever close
                    applier.check()
                    batch = batcher.poll()
                    if batch is not None:
                        hand_over(batch)
                        batch = None
                    if batcher.idle and not applier.busy:
                        confirmed = applier.wait()
                        if self._confirmable(ev.wal_end) > confirmed:
                            # everything sent before the keepalive is applied: let the slot move on
                            confirmed = applier.confirmed = self._confirmable(ev.wal_end)
                            self._state.record_applied(self._slot, confirmed)
                            source.confirm(confirmed)
                            if self._metrics is not None:
                                self._metrics.confirmed_lsn.set(confirmed.value)
                elif isinstance(ev, RelationChanged):
                    applier.confirmed = self._on_relation(
                        ev, batcher, source, applier.wait(), resync, txn_commit
                    )
                elif isinstance(ev, SourceMessage):
                    applier.wait()
                    for injected in resync.on_message(ev, txn_commit):
                        if injected.table in self._paused:
                            continue  # a paused table takes nothing, re-sync rows included
                        done = batcher.add(injected)
                        if done is not None:
                            applier.apply_now(done)
                elif isinstance(ev, Begin | Commit | RowChange | Truncate):
                    if isinstance(ev, Begin):
                        txn_commit = ev.commit_lsn
                        health.txn_received(ev.commit_time, ev.commit_lsn)
                    elif isinstance(ev, RowChange) and ev.table in self._paused:
                        continue  # held back: the slot keeps it until the table resumes
                    elif isinstance(ev, Truncate) and self._paused.keys() & set(ev.tables):
                        kept = tuple(t for t in ev.tables if t not in self._paused)
                        if not kept:
                            continue
                        ev = Truncate(kept, ev.seq)
                    if isinstance(ev, RowChange | Truncate):
                        resync.on_change(ev)
                    batch = batcher.add(ev)
                if batch is not None:
                    hand_over(batch)
                if resync.active:
                    applier.wait()
                    resync.step()
        finally:
            applier.close()
            self._health.set_connected(False)
            source.close()
            resync.close()
        confirmed = applier.confirmed
        logger.info("stream stopped slot=%s confirmed=%s", self._slot, confirmed)

    # ---- watermark mode ------------------------------------------------------------------------

    def _run_watermark_once(self) -> None:
        """Poll every table in turn, each at its interval, until stopped (one attempt of ``run``)."""
        cfg = self._cfg
        wm = cfg.watermark
        source = WatermarkSource(
            cfg.source.dsn,
            connect_timeout=cfg.source.connect_timeout_seconds,
            statement_timeout=wm.statement_timeout_seconds,
        )
        try:
            tables: dict[TableId, WatermarkTable] = {}
            for tc in cfg.tables:
                schema = self._watermark_schema(source, tc)
                tables[tc.name] = WatermarkTable(
                    schema, tc.cursor, tc.delete_column, tc.page_size or wm.page_size, tc.soft_delete
                )
            paused = self._watermark_contracts(tables)
            replica = source.is_replica()
            logger.info(
                "watermark polling tables=%d replica=%s dsn=%s",
                len(tables),
                replica,
                redact_dsn(cfg.source.dsn),
            )
            states = {t: self._watermark_state(wt) for t, wt in tables.items()}
            self._health.set_connected(True)
            self._health.set_phase(Phase.STREAMING)
            for t in tables:
                if t in paused:
                    self._set_table(t, TableState.PAUSED, paused[t])
                else:
                    self._set_table(t, TableState.STREAMING)
            tables = {t: wt for t, wt in tables.items() if t not in paused}
            due = dict.fromkeys(tables, 0.0)
            interval = {tc.name: tc.poll_interval_seconds or wm.poll_interval_seconds for tc in cfg.tables}
            recon_every = wm.reconcile_interval_seconds
            recon_due = dict.fromkeys(
                tables, time.monotonic() + recon_every if recon_every > 0 else float("inf")
            )
            recon_from: dict[TableId, tuple[str, ...] | None] = dict.fromkeys(tables)
            if self._once:
                for t, wt in tables.items():
                    if not self._stop.is_set():
                        states[t] = self._poll(source, wt, states[t])
                logger.info("watermark catch-up done tables=%d (run --once)", len(tables))
                return
            while not self._stop.is_set():
                now = time.monotonic()
                for t, wt in tables.items():
                    if due[t] <= now and not self._stop.is_set():
                        states[t] = self._poll(source, wt, states[t])
                        due[t] = time.monotonic() + interval[t]
                    if recon_due[t] <= time.monotonic() and not self._stop.is_set():
                        # one range per turn, so polls go on between ranges; rate-limited
                        states[t], recon_from[t], keys = self._reconcile(source, wt, states[t], recon_from[t])
                        pause = keys / wm.reconcile_max_rows_per_second
                        recon_due[t] = time.monotonic() + (
                            pause if recon_from[t] is not None else recon_every
                        )
                self._health.beat()
                wait = min(*due.values(), *recon_due.values()) - time.monotonic()
                if wait > 0:
                    self._stop.wait(min(wait, 1.0))
        finally:
            self._health.set_connected(False)
            source.close()
        logger.info("watermark polling stopped")

    def _watermark_schema(self, source: WatermarkSource, tc: TableConfig) -> TableSchema:
        """The polled layout: the selected columns, which must include the cursor and delete column."""
        schema = checks.select_columns(
            source.describe(tc.name, tc.cursor, tc.delete_column), self._selections.get(tc.name)
        )
        needed = [c for c in (*tc.cursor, tc.delete_column) if c and c not in schema.column_names]
        if needed:
            raise ConfigError(
                f"config: {tc.name}: {', '.join(needed)} (cursor / delete_column) must be replicated, "
                "but the column selection leaves it out",
                hint="add it to columns, or remove it from exclude_columns",
            )
        return schema

    def _watermark_contracts(self, tables: Mapping[TableId, WatermarkTable]) -> dict[TableId, str]:
        """Compare each table's layout now with the one its Delta table holds; evolve or pause.

        Polling reads the current layout only, so the decision is taken at start; a table paused
        here is not polled (nothing is read, so nothing is lost) until its contract allows it.
        """
        paused: dict[TableId, str] = {}
        for t, wt in tables.items():
            new = wt.schema
            saved = self._state.applied_schema(self._slot, t)
            if saved is None or not self._sink.exists(t):
                self._state.record_schema(self._slot, t, decision="load", new_schema=schema_to_json(new))
                continue
            old = schema_from_json(saved)
            decision = decide(self._cfg.table(t).contract, old, new)
            if not decision.changes:
                continue
            if decision.action == "pause":
                paused[t] = f"schema change: {decision.summary} ({decision.reason})"
                logger.error("table paused table=%s changes=[%s]: %s", t, decision.summary, decision.reason)
            elif decision.action == "evolve":
                done = self._sink.evolve(new)
                logger.warning(
                    "schema evolved table=%s changes=[%s] delta=[%s]", t, decision.summary, "; ".join(done)
                )
            self._state.record_schema(
                self._slot,
                t,
                decision={"pause": "pause", "evolve": "evolve"}.get(decision.action, "accept"),
                changes=decision.summary,
                old_schema=saved,
                new_schema=schema_to_json(new),
            )
        return paused

    def _watermark_resync(self, tables: Sequence[TableId]) -> None:
        """Watermark mode re-sync: empty the tables' Delta tables and their watermarks, then catch up.

        Stop the daemon first: its next poll would otherwise continue from its own state.
        """
        cfg = self._cfg
        source = WatermarkSource(
            cfg.source.dsn,
            connect_timeout=cfg.source.connect_timeout_seconds,
            statement_timeout=cfg.watermark.statement_timeout_seconds,
        )
        try:
            for tc in cfg.tables:
                if tc.name not in tables:
                    continue
                schema = self._watermark_schema(source, tc)
                self._begin_watermark_load(schema)
                self._state.record_schema(
                    self._slot, tc.name, decision="load", new_schema=schema_to_json(schema)
                )
                wt = WatermarkTable(
                    schema,
                    tc.cursor,
                    tc.delete_column,
                    tc.page_size or cfg.watermark.page_size,
                    tc.soft_delete,
                )
                logger.info("watermark re-sync table=%s", tc.name)
                state = self._poll(source, wt, WatermarkState())
                logger.info("watermark re-sync done table=%s read=%s", tc.name, ",".join(state.read or ()))
        finally:
            source.close()

    def _begin_watermark_load(self, schema: TableSchema) -> None:
        """An empty table whose commit says 'nothing read yet' (also in the state store's copy), so
        a load cut short before its first page never resumes from an older watermark."""
        empty = WatermarkState()
        self._sink.begin_load(schema, fresh=True, metadata={_WATERMARK_KEY: empty.to_json()})
        self._record_watermark(schema.table, empty)

    def _watermark_state(self, wt: WatermarkTable) -> WatermarkState:
        """The table's state from its newest Delta commit (or the state store's copy); create the table."""
        table = wt.schema.table
        if not self._sink.exists(table):
            self._begin_watermark_load(wt.schema)
            return WatermarkState()
        text = self._sink.latest_metadata(table, _WATERMARK_KEY)
        if text is None:
            saved = self._state.table_statuses(self._slot).get(str(table))
            text = (
                saved.position
                if saved is not None and saved.position and saved.position.startswith("{")
                else None
            )
            if text is None:
                logger.warning(
                    "no watermark found for %s: reading the whole table again (merges make that safe)", table
                )
                return WatermarkState()
        return WatermarkState.from_json(text)

    def _poll(self, source: WatermarkSource, wt: WatermarkTable, state: WatermarkState) -> WatermarkState:
        """One poll of one table: late rows and new rows, each page one Delta commit with the new state."""
        table = wt.schema.table
        lookback = self._cfg.watermark.lookback_seconds
        polled_at = wall()
        it = source.poll(wt, state, lookback=lookback)
        header = next(it)
        assert isinstance(header, PollResult)
        if self._metrics is not None and header.replica_lag_seconds is not None:
            self._metrics.replica_lag.set(max(0.0, header.replica_lag_seconds))
        pending = settle(state, header.snapshot, now=polled_at, lookback=lookback)
        start = state.read
        fresh = start is None and not state.pending and (self._sink.row_count(table) or 0) == 0
        read = start
        # never below what the Delta table already holds (a state from the state store, or none)
        held = self._sink.position(table)
        seq = max(state.seq, held.lsn.value if held is not None else 0)
        forward = False  # a page after the watermark was committed (its state drops settled ranges)
        rows_read = late_rows = 0
        for page in it:
            assert isinstance(page, Page)
            self._health.beat()
            if not page.late and page.last is not None:
                read = page.last
            seq = max(seq + 1, header.lsn.value)
            if page.late:
                # late pages come first; until all are read, every pending range stays recorded
                # (a crash now must re-read the ranges not reached yet)
                watch = state.pending
            else:
                watch = pending
                if read is not None and read != start and (may_be_late(header.snapshot) or lookback > 0):
                    watch = add_pending(pending, Pending(start, read, header.snapshot, polled_at))
            new = WatermarkState(read, watch, seq)
            meta = {_WATERMARK_KEY: new.to_json(), "cdc.op": "watermark"}
            at = now_utc()
            t0 = time.monotonic()
            if fresh and not page.late and not wt.soft_delete:
                rows = page.rows
                if wt.delete_column:
                    rows = rows.filter(pc.is_null(rows.column(wt.delete_column)))
                self._sink.load_chunk(
                    wt.schema,
                    rows.to_batches(),
                    KeyRange(),
                    snapshot_lsn=Lsn(seq),
                    loaded_at=at,
                    append=True,
                    position=TablePosition(Lsn(seq)),
                    metadata=meta,
                )
                result = None
            else:
                data, _deletes = page_patch(page, wt, seq=seq, read_at=at)
                patch = TablePatch(wt.schema, data, changes=data.num_rows)
                result = self._sink.apply(patch, TablePosition(Lsn(seq)), metadata=meta)
            self._after_watermark_commit(table, new, page, result, time.monotonic() - t0)
            rows_read += page.rows.num_rows
            late_rows += page.rows.num_rows if page.late else 0
            state = new
            forward |= not page.late
        if not forward and state.pending != pending:
            # ranges settled (and late pages, if any, all read) without new rows: record it (an
            # empty commit), so a restart does not watch them again
            seq = max(seq + 1, header.lsn.value)
            new = WatermarkState(read, pending, seq)
            empty = TablePatch(wt.schema, _empty_patch_rows(wt.schema), changes=0)
            self._sink.apply(
                empty,
                TablePosition(Lsn(seq)),
                metadata={_WATERMARK_KEY: new.to_json(), "cdc.op": "watermark"},
            )
            self._record_watermark(table, new)
            state = new
        if rows_read:
            logger.info(
                "watermark poll table=%s rows=%d late=%d read=%s pending=%d",
                table,
                rows_read,
                late_rows,
                ",".join(read or ()),
                len(state.pending),
            )
        if late_rows:
            logger.warning(
                "late rows table=%s rows=%d: committed after a poll had passed their cursor value; "
                "captured (source.mode watermark watches pending ranges)",
                table,
                late_rows,
            )
        return state

    def _reconcile(
        self, source: WatermarkSource, wt: WatermarkTable, state: WatermarkState, lo: tuple[str, ...] | None
    ) -> tuple[WatermarkState, tuple[str, ...] | None, int]:
        """Compare the keys of one range [lo, next) between the database and Delta and fix Delta.

        Keys Delta has and the database does not (checked again in a fresh snapshot) are deleted;
        rows the database has and Delta lacks are copied. Returns the new state, where the next
        range starts (None: the pass is complete) and how many keys were read.
        """
        schema = wt.schema
        table = schema.table
        size = self._cfg.watermark.reconcile_range_rows
        keys = source.key_page(wt, lo, size + 1)
        nxt = keys[size] if len(keys) > size else None
        keys = keys[:size]
        key_cols = [c for c in schema.columns if c.is_key]
        src = pa.table(
            {
                c.name: cast_text(pa.array([k[i] for k in keys], pa.string()), c.type_oid, c.type_modifier)
                for i, c in enumerate(key_cols)
            }
        )
        lake = self._sink.keys_in_range(schema, KeyRange(lo, nxt))
        lake = lake.cast(src.schema) if lake.schema != src.schema else lake
        names = list(schema.key)
        extra = lake.join(src, keys=names, join_type="left anti")
        missing = src.join(lake, keys=names, join_type="left anti")
        read = len(keys) + lake.num_rows
        if extra.num_rows == 0 and missing.num_rows == 0:
            return state, nxt, read
        as_text = [
            tuple(str(v) for v in row)
            for row in zip(*[pc.cast(extra.column(n), pa.string()).to_pylist() for n in names], strict=True)
        ]
        still = source.rows_by_key(wt, as_text) if as_text else None
        present = (
            set()
            if still is None
            else set(zip(*[still.rows.column(n).to_pylist() for n in names], strict=True))
        )
        gone = [k for k in as_text if tuple(v.encode() for v in k) not in present]
        if gone and not all(c.type_oid in RECONCILE_DELETE_KEY_OIDS for c in key_cols):
            # the keys are compared in Arrow's text form: exact only for integer and text keys
            logger.warning(
                "reconciliation found %d key(s) of %s gone from the database but deletes them only for "
                "integer or text keys: use a delete_column, or re-sync the table",
                len(gone),
                table,
            )
            gone = []
        found = None
        if missing.num_rows and state.read is not None:
            # only rows polling has already passed: newer ones are the next poll's
            wanted = [tuple(str(v) for v in r.values()) for r in missing.to_pylist()]
            found = source.rows_by_key(wt, wanted, upto=state.read)
        seq = state.seq + 1
        new = WatermarkState(state.read, state.pending, seq)
        at = now_utc()
        parts = []
        if found is not None and found.rows.num_rows:
            rows, _ = page_patch(found, wt, seq=seq, read_at=at)
            parts.append(rows)
        if gone:
            n = len(gone)
            cols: dict[str, pa.Array] = {}
            for c in schema.columns:
                if c.is_key:
                    cols[c.name] = pa.array([k[names.index(c.name)] for k in gone], pa.string()).cast(
                        pa.binary()
                    )
                else:
                    cols[c.name] = pa.nulls(n, pa.binary())
            cols["_cdc_lsn"] = pa.repeat(pa.scalar(seq, pa.int64()), n)
            cols["_cdc_op"] = pa.repeat(pa.scalar(Op.DELETE.value, pa.string()), n)
            cols["_cdc_committed_at"] = pa.repeat(pa.scalar(at, pa.timestamp("us", tz="UTC")), n)
            parts.append(pa.table(cols))
        if parts:
            data = pa.concat_tables(parts)
            patch = TablePatch(schema, data, changes=data.num_rows)
            meta = {_WATERMARK_KEY: new.to_json(), "cdc.op": "reconcile"}
            self._sink.apply(patch, TablePosition(Lsn(seq)), metadata=meta)
            self._record_watermark(table, new)
            state = new
        copied = 0 if found is None else found.rows.num_rows
        if self._metrics is not None:
            self._metrics.reconciled_deletes.labels(table=str(table)).inc(len(gone))
            self._metrics.reconciled_missing.labels(table=str(table)).inc(copied)
        logger.warning(
            "reconciliation fixed table=%s range_from=%s deleted=%d copied=%d",
            table,
            ",".join(lo) if lo else "start",
            len(gone),
            copied,
        )
        return state, nxt, read

    def _after_watermark_commit(
        self, table: TableId, state: WatermarkState, page: Page, result: ApplyResult | None, seconds: float
    ) -> None:
        self._record_watermark(table, state)
        self._health.set_committed(table, Lsn(state.seq))
        m = self._metrics
        if m is None:
            return
        name = str(table)
        m.merge_duration.labels(table=name).observe(seconds)
        if page.late:
            m.watermark_late_rows.labels(table=name).inc(page.rows.num_rows)
        if result is None:
            m.snapshot_rows.labels(table=name).inc(page.rows.num_rows)
        else:
            m.changes_applied.labels(table=name, op="insert").inc(result.inserted)
            m.changes_applied.labels(table=name, op="update").inc(result.updated)
            m.changes_applied.labels(table=name, op="delete").inc(result.deleted)
        m.batches.inc()

    def _record_watermark(self, table: TableId, state: WatermarkState) -> None:
        """A copy of the state in the state store (the Delta commit is the authority)."""
        try:
            self._state.table_status(self._slot, table, TableState.STREAMING.value, position=state.to_json())
        except Exception as exc:
            logger.warning("could not record the watermark of %s: %s", table, exc)

    # ---- schema changes and contracts ---------------------------------------------------------

    def _confirmable(self, lsn: Lsn) -> Lsn:
        """``lsn``, or less: never past the point where a paused table stopped taking changes."""
        caps = [cap for cap, _reason in self._paused.values()]
        return min([lsn, *caps])

    def _narrowed(self, schemas: Mapping[TableId, TableSchema]) -> dict[TableId, TableSchema]:
        """The tables replicated with a column selection (their publication lists those columns)."""
        return {t: schemas[t] for t, sel in self._selections.items() if not sel.everything and t in schemas}

    def _load_applied_schemas(self, schemas: Mapping[TableId, TableSchema]) -> None:
        """The layout each Delta table holds: the schema history's, else the catalog's (recorded)."""
        for t, schema in schemas.items():
            saved = self._state.applied_schema(self._slot, t)
            if saved is None:
                self._state.record_schema(self._slot, t, decision="load", new_schema=schema_to_json(schema))
                self._applied[t] = schema
            else:
                self._applied[t] = schema_from_json(saved)

    def _on_relation(
        self,
        ev: RelationChanged,
        batcher: Batcher,
        source: LogicalSource,
        confirmed: Lsn,
        resync: Resyncer,
        txn_commit: Lsn,
    ) -> Lsn:
        """A table's layout in the stream: follow it, or pause the table, as its contract says."""
        if ev.schema.table not in self._tables or ev.schema.table in self._paused:
            return confirmed
        ev = replace(ev, schema=self._base_types(ev.schema))
        table, new = ev.schema.table, ev.schema
        old = self._applied.get(table)
        held = self._sink.position(table)
        if old is None or (held is not None and held.holds(txn_commit, ev.seq + 1)):
            # the table already holds the first change after this layout (a replay after a restart
            # or a re-sync): nothing to decide. Holding only the changes before it (the cut made
            # at the change) is not enough: then it is decided again (evolving is idempotent).
            self._applied[table] = new
            batch = batcher.add(ev)
            return confirmed if batch is None else self._apply(batch, source, confirmed, resync)
        contract = self._cfg.table(table).contract
        decision = decide(contract, old, new)
        if decision.action == "pause":
            # the old-layout changes still buffered go out first, with a position inside this
            # transaction at most: the table then holds nothing from the change on
            batch = batcher.close_table(table)
            if batch is not None:
                confirmed = self._apply(batch, source, confirmed, resync)
            cap = batcher.last_end
            self._paused[table] = (cap, decision.reason)
            reason = f"schema change at {txn_commit}: {decision.summary} ({decision.reason})"
            logger.error(
                "table paused table=%s lsn=%s contract=%s changes=[%s]: %s; its changes are held back "
                "(nothing is lost: the slot keeps them from %s)",
                table,
                txn_commit,
                contract,
                decision.summary,
                decision.reason,
                cap,
            )
            self._set_table(table, TableState.PAUSED, reason)
            self._state.record_schema(
                self._slot,
                table,
                decision="pause",
                lsn=txn_commit,
                changes=decision.summary,
                old_schema=schema_to_json(old),
                new_schema=schema_to_json(new),
            )
            return confirmed
        batch = batcher.add(ev)  # closes the rows buffered in the old layout
        if batch is not None:
            confirmed = self._apply(batch, source, confirmed, resync)
        if decision.action == "evolve":
            failpoints.hit("before_evolve")
            done = self._sink.evolve(new)
            logger.warning(
                "schema evolved table=%s lsn=%s changes=[%s] delta=[%s]",
                table,
                txn_commit,
                decision.summary,
                "; ".join(done) or "nothing to change",
            )
        if decision.changes:
            self._state.record_schema(
                self._slot,
                table,
                decision="evolve" if decision.action == "evolve" else "accept",
                lsn=txn_commit,
                changes=decision.summary,
                old_schema=schema_to_json(old),
                new_schema=schema_to_json(new),
            )
        self._applied[table] = new
        return confirmed

    def _base_types(self, schema: TableSchema) -> TableSchema:
        """Domain columns typed as their base type, as the catalog path types them (``read_schema``).

        The domains are read from the source when a Relation message names a type the daemon does
        not know yet (a domain created while it runs; enums and composites ask again, rarely).
        """
        if self._domains is None or unresolved_types(schema, self._domains):
            src = self._cfg.source
            with checks.connect(src.dsn, connect_timeout=src.connect_timeout_seconds) as conn:
                self._domains = checks.load_domains(conn)
        return resolve_domains(schema, self._domains)

    def _apply_table(self, patch: TablePatch, batch: ChangeBatch) -> None:
        t0 = time.monotonic()
        result = self._sink.apply(patch, batch.position, batch_id=batch.batch_id)
        failpoints.hit("after_table_commit")
        self._health.beat()
        self._health.set_committed(patch.schema.table, batch.position.lsn)
        m = self._metrics
        if m is not None and result is not None:
            name = str(patch.schema.table)
            m.merge_duration.labels(table=name).observe(time.monotonic() - t0)
            m.changes_applied.labels(table=name, op="insert").inc(result.inserted)
            m.changes_applied.labels(table=name, op="update").inc(result.updated)
            m.changes_applied.labels(table=name, op="delete").inc(result.deleted)
            if result.truncated:
                m.truncates.labels(table=name).inc()

    def _apply(self, batch: ChangeBatch, source: LogicalSource, confirmed: Lsn, resync: Resyncer) -> Lsn:
        started = time.monotonic()
        m = self._metrics
        patches = list(batch.tables.values())
        if len(patches) > 1:
            # each table is its own Delta commit with its own position, and delta-rs merges with
            # the GIL released: the tables of a batch merge side by side. The slot is confirmed
            # below, once every one of them has committed; a failure of any is raised after all
            # have finished (none is left running behind a retry).
            futures = [self._merge_pool.submit(self._apply_table, p, batch) for p in patches]
            errors = [f.exception() for f in futures]
            first = next((e for e in errors if e is not None), None)
            if first is not None:
                raise first
        else:
            for patch in patches:
                self._apply_table(patch, batch)
        failpoints.hit("before_confirm")
        resync.committed(batch.end)
        if self._confirmable(batch.end) > confirmed:
            confirmed = self._confirmable(batch.end)
            self._state.record_applied(self._slot, confirmed)
            source.confirm(confirmed)
        seconds = time.monotonic() - started
        self._health.applied(complete=batch.partial is None, upto=batch.end)
        if m is not None:
            m.batches.inc()
            m.batch_duration.observe(seconds)
            m.transactions.inc(batch.transactions)
            m.confirmed_lsn.set(confirmed.value)
        changes = {t: p.changes for t, p in batch.tables.items()}
        logger.debug(
            "batch applied batch=%d end=%s txns=%d tables=%d changes=%d seconds=%.3f",
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


class _Applier:
    """Applies batches in order, at most one of them in a background thread (pipelined apply).

    A merge spends most of its time in delta-rs with the GIL released: while batch n merges, the
    stream loop decodes and batches n+1 (``submit``). Anything that must see every earlier batch
    applied (a schema decision, a re-sync, an idle confirm, stopping) calls ``wait`` first, or
    ``apply_now``. ``confirmed`` is the LSN confirmed after the last batch that finished; an error
    of the background apply is raised by the next ``wait``.
    """

    def __init__(self, apply: Callable[[ChangeBatch, Lsn], Lsn], confirmed: Lsn) -> None:
        self._apply = apply
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cdc-apply")
        self._pending: Future[Lsn] | None = None
        self.confirmed = confirmed

    @property
    def busy(self) -> bool:
        return self._pending is not None and not self._pending.done()

    def check(self) -> None:
        """Raise the error of a background apply that already failed (without waiting)."""
        if self._pending is not None and self._pending.done():
            self.wait()

    def submit(self, batch: ChangeBatch) -> None:
        self.wait()
        self._pending = self._pool.submit(self._apply, batch, self.confirmed)

    def apply_now(self, batch: ChangeBatch) -> Lsn:
        self.confirmed = self._apply(batch, self.wait())
        return self.confirmed

    def wait(self) -> Lsn:
        if self._pending is not None:
            pending, self._pending = self._pending, None
            self.confirmed = pending.result()
        return self.confirmed

    def close(self) -> None:
        """Let a batch in flight finish (its error, if any, is not raised: another one is on its way)."""
        if self._pending is not None:
            try:
                self._pending.result()
            except BaseException as exc:  # the loop's own error is the one raised
                logger.error("a background apply failed while the stream was stopping: %s", exc)
            self._pending = None
        self._pool.shutdown(wait=True)


def _log_retry(state: RetryCallState) -> None:
    exc = state.outcome.exception() if state.outcome is not None else None
    wait = state.next_action.sleep if state.next_action is not None else 0.0
    logger.warning("retrying in %.1fs after: %s", wait, str(exc).splitlines()[0] if exc else "?")


class _ObservedLoad:
    """Forwards the loader's progress to the caller's sink, the health (beats) and the metrics."""

    def __init__(self, health: HealthState, metrics: Metrics | None, inner: ProgressSink | None) -> None:
        self._health = health
        self._metrics = metrics
        self._inner = inner
        self._done: dict[str, int] = {}

    def add_table(self, table: str, *, estimated_rows: int | None, chunks: int) -> None:
        self._health.beat()
        self._done[table] = 0
        if self._metrics is not None:
            self._metrics.snapshot_chunks_total.labels(table=table).set(chunks)
            self._metrics.snapshot_chunks_done.labels(table=table).set(0)
        if self._inner is not None:
            self._inner.add_table(table, estimated_rows=estimated_rows, chunks=chunks)

    def resumed(self, table: str, *, chunks_done: int, rows: int) -> None:
        self._health.beat()
        self._done[table] = chunks_done
        if self._metrics is not None:
            self._metrics.snapshot_chunks_done.labels(table=table).set(chunks_done)
        if self._inner is not None:
            self._inner.resumed(table, chunks_done=chunks_done, rows=rows)

    def chunk_done(self, table: str, *, rows: int, files: int, bytes: int) -> None:
        self._health.beat()
        self._done[table] = self._done.get(table, 0) + 1
        if self._metrics is not None:
            self._metrics.snapshot_rows.labels(table=table).inc(rows)
            self._metrics.snapshot_chunks_done.labels(table=table).set(self._done[table])
        if self._inner is not None:
            self._inner.chunk_done(table, rows=rows, files=files, bytes=bytes)

    def table_done(self, table: str) -> None:
        self._health.beat()
        if self._inner is not None:
            self._inner.table_done(table)

    def table_failed(self, table: str, error: str) -> None:
        if self._inner is not None:
            self._inner.table_failed(table, error)


class _SlotWatch:
    """A side thread on its own connection: slot lag / retained WAL / wal_status, and heartbeats.

    It only observes (metrics, a warning past ``source.max_retained_wal_bytes``) and writes the
    heartbeat message; it never drops or moves the slot. Its errors are logged and counted, never
    raised: the main loop finds a lost source by itself.
    """

    def __init__(
        self,
        config: Config,
        health: HealthState,
        metrics: Metrics | None,
        stop: threading.Event,
        *,
        enabled: bool = True,
    ) -> None:
        self._enabled = enabled  # watermark mode has no slot and writes nothing to the source
        self._src = config.source
        self._health = health
        self._metrics = metrics
        self._stop = stop
        self._done = threading.Event()
        self._thread: threading.Thread | None = None
        self._conn: psycopg.Connection[tuple[object, ...]] | None = None
        self._over_limit_logged = 0.0
        self._standby_warned = False
        if metrics is not None:
            metrics.slot_max_retained_wal.set(config.source.max_retained_wal_bytes)

    def start(self) -> None:
        if not self._enabled:
            return
        self._thread = threading.Thread(target=self._loop, name="cdc-slot-watch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._done.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._close()

    def _loop(self) -> None:
        check_every = self._src.slot_check_interval_seconds
        beat_every = self._src.heartbeat_interval_seconds
        next_check = time.monotonic()
        next_beat = time.monotonic() + beat_every if beat_every > 0 else float("inf")
        while not (self._done.is_set() or self._stop.is_set()):
            now = time.monotonic()
            if now >= next_check:
                next_check = now + check_every
                self._guard("slot_check", self._check)
            if now >= next_beat:
                next_beat = now + beat_every
                if self._health.phase is Phase.STREAMING:
                    self._guard("heartbeat", self._heartbeat)
            self._done.wait(max(0.05, min(next_check, next_beat) - time.monotonic()))

    def _guard(self, what: str, fn: Callable[[psycopg.Connection[tuple[object, ...]]], None]) -> None:
        try:
            if self._conn is None or self._conn.closed:
                self._conn = checks.connect(self._src.dsn, connect_timeout=self._src.connect_timeout_seconds)
            fn(self._conn)
        except (ReplicatorError, psycopg.Error) as exc:
            logger.debug("%s failed: %s", what, str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
            if self._metrics is not None:
                self._metrics.errors.labels(kind=f"{what}_failed").inc()
                if what == "slot_check":
                    self._metrics.slot_wal_status.state("unknown")
            self._close()

    def _close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except psycopg.Error:
                pass
            self._conn = None

    def _check(self, conn: psycopg.Connection[tuple[object, ...]]) -> None:
        stats = checks.slot_stats(conn, self._src.slot)
        m = self._metrics
        if m is not None:
            m.slot_checks.inc()
            m.slot_wal_status.state(stats.wal_status if stats.wal_status in WAL_STATUSES else "unknown")
            if stats.lag_bytes is not None:
                m.lag_bytes.set(stats.lag_bytes)
            if stats.retained_wal_bytes is not None:
                m.slot_retained_wal.set(stats.retained_wal_bytes)
        limit = self._src.max_retained_wal_bytes
        retained = stats.retained_wal_bytes
        if limit > 0 and retained is not None and retained > limit:
            now = time.monotonic()
            if now - self._over_limit_logged > 600 or self._over_limit_logged == 0.0:
                self._over_limit_logged = now
                logger.warning(
                    "slot retains too much WAL slot=%s retained_bytes=%d max_retained_wal_bytes=%d "
                    "wal_status=%s: the daemon is behind or stopped; the slot is kept (it is never dropped "
                    "automatically): check the daemon, or raise source.max_retained_wal_bytes",
                    self._src.slot,
                    retained,
                    limit,
                    stats.wal_status,
                )
        elif self._over_limit_logged:
            self._over_limit_logged = 0.0
            logger.info(
                "slot retained WAL back under the limit slot=%s retained_bytes=%s", self._src.slot, retained
            )
        if stats.wal_status == "lost":
            logger.error(
                "replication slot %s was invalidated by the server (wal_status lost): changes were lost; "
                "a re-sync is needed: cdc-replicator --config FILE snapshot",
                self._src.slot,
            )

    def _heartbeat(self, conn: psycopg.Connection[tuple[object, ...]]) -> None:
        if checks.is_standby(conn):
            # a standby is read-only, and the daemon never connects to the primary
            if not self._standby_warned:
                self._standby_warned = True
                logger.warning(
                    "source.heartbeat_interval_seconds is set but the source is a standby: heartbeats are "
                    "skipped (the slot follows the primary's WAL through the idle confirm)"
                )
            return
        if self._src.heartbeat == "table":
            objects.heartbeat_table(conn)
            logger.debug("heartbeat written table=cdc_replicator.heartbeat")
        else:
            lsn = checks.emit_heartbeat(conn)
            logger.debug("heartbeat written lsn=%s", lsn)
        if self._metrics is not None:
            self._metrics.heartbeats.inc()
