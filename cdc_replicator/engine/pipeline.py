"""The composition root: wires the stages for one configured pipeline, retries, and plans each start.

Flow: source → batching → apply → confirm (``engine.stream``, logical mode) or polling → apply
(``engine.polling``, watermark mode); loads in ``engine.snapshot``. This module decides how a run
starts (``checkpoint.plan_start``: stream, or load first), builds the parts and retries what can be
retried; it holds no stream logic of its own.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence

from cdc_replicator.config import Config, redact_dsn
from cdc_replicator.engine import partitioning
from cdc_replicator.engine.apply import Applier
from cdc_replicator.engine.backoff import SLOT_IN_USE_POLL_SECONDS, Backoff
from cdc_replicator.engine.batching import Batcher, BatchLimits
from cdc_replicator.engine.checkpoint import Checkpointer, Recorded, SlotState, StartKind, plan_start
from cdc_replicator.engine.loader import LoadResult, ProgressSink
from cdc_replicator.engine.maintain import Maintainer, settings_for
from cdc_replicator.engine.observe import BatchReport, Observer
from cdc_replicator.engine.polling import PollingLoop
from cdc_replicator.engine.relations import SchemaFollower
from cdc_replicator.engine.resync import Resyncer
from cdc_replicator.engine.slotwatch import SlotWatch
from cdc_replicator.engine.snapshot import Loads, narrowed
from cdc_replicator.engine.stream import StreamLoop
from cdc_replicator.errors import (
    ConfigError,
    ReplicatorError,
    SinkError,
    SlotInUse,
    SourceError,
    StateStoreError,
    StorageFull,
)
from cdc_replicator.model import Lsn, TableId, TableSchema
from cdc_replicator.service.health import HealthState, Phase, TableState
from cdc_replicator.service.metrics import Metrics
from cdc_replicator.sink.delta import DeltaSink
from cdc_replicator.source import checks, objects
from cdc_replicator.source.logical import LogicalSource
from cdc_replicator.source.refetch import SourceRows
from cdc_replicator.source.watermark import WatermarkSource
from cdc_replicator.store.state import StateStore, migrations_dir

__all__ = ["BatchReport", "Replicator"]

logger = logging.getLogger(__name__)

_MERGE_THREADS = 4  # tables of one batch merged side by side (delta-rs releases the GIL)


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
        self._obs = Observer(health or HealthState(config.table_ids), metrics, on_batch)
        self._health = self._obs.health
        self._metrics = metrics
        self._selections = config.selections
        self._slot = config.source.slot
        self._tables = config.table_ids
        # unchanged TOAST values of rows Delta lost are read from the source by key
        self._source_rows = SourceRows(
            config.source.dsn,
            connect_timeout=config.source.connect_timeout_seconds,
            silence_timeout=config.source.wal_receiver_timeout_seconds,
        )
        self._sink = DeltaSink(
            config.target.uri,
            slot=self._slot,
            storage_options=dict(config.target.storage_options),
            soft_delete=[t.name for t in config.tables if t.soft_delete],
            target_file_size=config.target.target_file_size,
            file_sizes={t.name: t.target_file_size for t in config.tables if t.target_file_size},
            toast_reader=self._source_rows,
            partitions=partitioning.partitions_of(config),
            retention_hours={t: s.retention_hours for t, s in settings_for(config).items()},
            change_data_feed=[t.name for t in config.tables if t.change_data_feed],
        )
        self._state = StateStore(config.state.url)
        if metrics is not None:  # `verify` runs in its own process and leaves its results here
            state, slot = self._state, self._slot
            metrics.verify_results = lambda: state.verifies(slot)
        self._loads = Loads(
            config=config, sink=self._sink, state=self._state, observer=self._obs, stop=self._stop
        )
        self._backoff = Backoff()
        self._last_heard: Callable[[], float] | None = None  # the stream's, while one runs
        self._maintainer: Maintainer | None = None
        if config.maintenance.enabled:  # lake maintenance between each table's batches
            health_ = self._health
            self._maintainer = Maintainer(
                self._sink,
                settings_for(config),
                health=health_,
                metrics=metrics,
                ready=lambda t: health_.table_states().get(t, (None,))[0] is TableState.STREAMING,
                stop=self._stop,
            )

    def close(self) -> None:
        self._source_rows.close()
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
        src = self._cfg.source
        give_up = src.retry_give_up_seconds
        backoff = self._backoff = Backoff(cap=src.retry_max_seconds, reset_after=src.retry_reset_seconds)
        watch = SlotWatch(self._cfg, self._health, self._metrics, self._stop, enabled=src.mode == "logical")
        watch.start()
        if self._maintainer is not None:
            self._maintainer.start()
        try:
            while not self._stop.is_set():
                try:
                    self._health.set_phase(Phase.STARTING)
                    if src.mode == "watermark":
                        self._poll(once=once)
                    else:
                        self._run_logical()
                    return
                except ReplicatorError as exc:
                    if not exc.retryable:
                        raise
                    now = time.monotonic()
                    heard = self._last_heard() if self._last_heard is not None else None
                    self._last_heard = None
                    poll = SLOT_IN_USE_POLL_SECONDS if isinstance(exc, SlotInUse) else None
                    wait = backoff.failed(now, heard=heard, cap=poll)
                    if give_up > 0 and backoff.failing_for(now) >= give_up:
                        raise
                    self._before_retry(exc, wait, backoff.failures)
                    self._sleep(wait)
        except ReplicatorError as exc:
            if self._metrics is not None:
                self._metrics.errors.labels(kind=type(exc).__name__).inc()
            self._health.set_phase(Phase.FAILED, error=exc.message)
            for t in self._tables:
                self._set_table(t, TableState.FAILED, exc.message)
            raise
        finally:
            watch.stop()
            if self._maintainer is not None:
                self._maintainer.close()
            if self._health.phase is not Phase.FAILED:
                self._health.set_phase(Phase.STOPPING)

    def snapshot(
        self,
        tables: Sequence[TableId] | None = None,
        *,
        parallel: int | None = None,
        progress: ProgressSink | None = None,
    ) -> list[LoadResult]:
        """Load tables while the daemon is stopped (or re-sync some live while it runs): ``engine.snapshot``."""
        wanted = list(tables) if tables else list(self._tables)
        unknown = [str(t) for t in wanted if t not in self._tables]
        if unknown:
            raise ConfigError(
                f"config: {', '.join(unknown)} is not a configured table",
                hint="add it to [[tables]] first (the daemon must know the tables it streams)",
            )
        if self._cfg.source.mode == "watermark":
            source = self._watermark_source()
            try:
                self._polling(source).resync(wanted)
            finally:
                source.close()
            return []
        return self._loads.snapshot(tables, parallel=parallel, progress=progress)

    # ---- retries -------------------------------------------------------------------------------

    def _before_retry(self, exc: ReplicatorError, wait: float, in_a_row: int) -> None:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        waiting_for = None
        if isinstance(exc, SinkError | StateStoreError):  # not the source: say what, and how to fix it
            if isinstance(exc, StateStoreError):
                waiting_for = "state store unavailable, retrying"
            elif isinstance(exc, StorageFull):
                waiting_for = "lake storage full, retrying"
            else:
                waiting_for = "Delta write failed, retrying"
            if exc.hint:
                first = f"{exc.message}; fix: {exc.hint}"
        logger.warning("retrying in %.1fs (failure %d in a row) after: %s", wait, in_a_row, first)
        kind = type(exc).__name__
        if self._metrics is not None:
            self._metrics.errors.labels(kind=kind).inc()
            self._metrics.retries.labels(kind=kind).inc()
            self._metrics.retry_wait.set(wait)
        self._health.set_phase(Phase.RETRYING, error=first, waiting_for=waiting_for)

    def _sleep(self, seconds: float) -> None:
        """A back-off wait: waiting on purpose, so the health keeps beating."""
        deadline = time.monotonic() + seconds
        while not self._stop.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self._health.beat()
            self._stop.wait(min(1.0, left))

    def _set_table(self, table: TableId, state: TableState, reason: str | None = None) -> None:
        """A table's state: in the health (endpoint, metrics) and, on a change, in the state store."""
        before = self._health.table_states().get(table)
        self._health.set_table(table, state, reason)
        if before is None or before[0] is not state or before[1] != reason:
            try:
                self._state.table_status(self._slot, table, state.value, error=reason)
            except Exception as exc:
                logger.warning("could not record the state of %s: %s", table, exc)

    # ---- logical mode ----------------------------------------------------------------------------

    def _run_logical(self) -> None:
        """One attempt: check the source, plan the start (load first if needed), then stream."""
        src = self._cfg.source
        with checks.connect(
            src.dsn,
            connect_timeout=src.connect_timeout_seconds,
            silence_timeout=src.wal_receiver_timeout_seconds,
        ) as conn:
            schemas = checks.preflight(conn, self._tables, self._selections)
            partitioning.check_catalog(self._cfg, schemas)
            if self._maintainer is not None and self._cfg.maintenance.zorder:
                self._maintainer.zorder_by({t: s.key for t, s in schemas.items()})
            checks.ensure_publication(
                conn, src.publication, self._tables, narrowed(schemas, self._selections)
            )
            if src.heartbeat == "table" and src.heartbeat_interval_seconds > 0:
                objects.apply_source_migrations(conn, migrations_dir("source"))
            self._health.set_connected(True)
            system_id = self._loads.system_id()
            info = checks.slot_info(conn, self._slot)
            if info is not None and info.plugin != "pgoutput":
                raise SourceError(
                    f"replication slot {self._slot!r} uses plugin {info.plugin!r}, not pgoutput",
                    hint="choose another source.slot, or drop that slot if it is unused",
                )
            rec = self._state.slot(self._slot)
            partitioning.check_lake(self._cfg, self._sink)  # before anything reads or writes a table
            plan = plan_start(
                slot_name=self._slot,
                slot=None
                if info is None
                else SlotState(info.confirmed_flush or Lsn.ZERO, info.invalidated, info.wal_status),
                recorded=None
                if rec is None
                else Recorded(rec.load_state, rec.applied_lsn, rec.consistent_point, rec.system_id),
                tables={t: self._sink.position(t) for t in self._tables},
                system_id=system_id,
            )
            start = plan.start
            if plan.kind is not StartKind.STREAM:
                logger.info("initial load needed reason=%s slot=%s", plan.kind.value, self._slot)
                self._health.set_phase(Phase.LOADING)
                for t in self._tables:
                    self._set_table(t, TableState.SNAPSHOTTING)
                start, _ = self._loads.full_load(conn, schemas, system_id)
        self._stream(schemas, start)

    def _stream(self, schemas: dict[TableId, TableSchema], start: Lsn) -> None:
        """Build the stream's parts and run it from ``start`` until stopped or the source fails."""
        src, b = self._cfg.source, self._cfg.batch
        positions = {t: p for t in self._tables if (p := self._sink.position(t)) is not None}
        checkpointer = Checkpointer(start)  # pauses are decided again as the stream replays
        schema_follower = SchemaFollower(
            slot=self._slot,
            contracts={t.name: t.contract for t in self._cfg.tables},
            sink=self._sink,
            offsets=self._sink,
            history=self._state,
            checkpointer=checkpointer,
            load_domains=self._load_domains,
            on_pause=lambda t, reason: self._set_table(t, TableState.PAUSED, reason),
        )
        schema_follower.start(schemas)
        resync = Resyncer(
            dsn=src.dsn,
            slot=self._slot,
            state=self._state,
            schemas=schemas,
            chunk_rows=min(self._cfg.snapshot.chunk_rows, max(1, b.max_rows // 2), 20_000),
            connect_timeout=src.connect_timeout_seconds,
            silence_timeout=src.wal_receiver_timeout_seconds,
            is_paused=checkpointer.is_paused,
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
            receiver_timeout=src.wal_receiver_timeout_seconds,
        )
        loop = StreamLoop(
            source=source,
            batcher=Batcher(
                BatchLimits(b.max_rows, b.max_bytes, b.max_seconds),
                {},
                positions,
                start=start,
                clock=time.monotonic,
            ),
            applier=Applier(self._sink, parallel=_MERGE_THREADS, on_commit=self._obs.table_committed),
            checkpointer=checkpointer,
            schemas=schema_follower,
            record_applied=lambda lsn: self._state.record_applied(self._slot, lsn),
            observer=self._obs,
            stop=self._stop,
            resync=resync,
        )
        try:
            source.open()
            logger.info("streaming slot=%s from=%s dsn=%s", self._slot, start, redact_dsn(src.dsn))
            self._health.set_connected(True)
            self._health.set_phase(Phase.STREAMING)
            self._health.watch_source(source.last_heard, src.wal_receiver_timeout_seconds)
            self._backoff.streaming(time.monotonic())
            self._last_heard = source.last_heard
            for t in self._tables:
                if t in positions:
                    self._health.set_committed(t, positions[t].lsn)
                self._set_table(t, TableState.STREAMING)
            resync.restore()
            confirmed = loop.run()
        finally:
            self._health.watch_source(None)
            self._health.set_connected(False)
            source.close()
            resync.close()
            self._source_rows.close()
        logger.info("stream stopped slot=%s confirmed=%s", self._slot, confirmed)

    def _load_domains(self) -> dict[int, tuple[int, int]]:
        src = self._cfg.source
        with checks.connect(
            src.dsn,
            connect_timeout=src.connect_timeout_seconds,
            silence_timeout=src.wal_receiver_timeout_seconds,
        ) as conn:
            return checks.load_domains(conn)

    # ---- watermark mode ------------------------------------------------------------------------------

    def _watermark_source(self) -> WatermarkSource:
        return WatermarkSource(
            self._cfg.source.dsn,
            connect_timeout=self._cfg.source.connect_timeout_seconds,
            statement_timeout=self._cfg.watermark.statement_timeout_seconds,
            silence_timeout=self._cfg.source.wal_receiver_timeout_seconds,
        )

    def _polling(self, source: WatermarkSource) -> PollingLoop:
        return PollingLoop(
            config=self._cfg,
            source=source,
            sink=self._sink,
            state=self._state,
            observer=self._obs,
            stop=self._stop,
            set_table=self._set_table,
        )

    def _poll(self, *, once: bool) -> None:
        """One attempt of ``run`` in watermark mode: poll every table in turn until stopped."""
        source = self._watermark_source()
        self._backoff.streaming(time.monotonic())  # a failure after a while of polling is a first one
        try:
            partitioning.check_lake(self._cfg, self._sink)
            self._polling(source).run(once=once)
        finally:
            self._health.set_connected(False)
            source.close()
