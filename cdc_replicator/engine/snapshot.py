"""Table loads: the initial load at the slot's snapshot, ``snapshot`` of some tables, live re-sync requests.

A full load (re)creates the slot with an exported snapshot and copies every table in it, so the
stream starts exactly where the copy ends. A load of some tables reads them in a temporary slot's
snapshot; each ends at that slot's consistent point, so the daemon, resuming from its own slot,
skips their older changes and applies the newer ones. While the daemon streams, ``snapshot
--table`` asks it (through its own stream) to re-sync live (``engine.resync``) and waits.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping, Sequence

import psycopg

from cdc_replicator.config import Config
from cdc_replicator.engine import partitioning
from cdc_replicator.engine.contracts import schema_to_json
from cdc_replicator.engine.loader import Loader, LoadInterrupted, LoadResult, ProgressSink
from cdc_replicator.engine.observe import Observer
from cdc_replicator.engine.resync import request_resync
from cdc_replicator.errors import SourceError
from cdc_replicator.model import ColumnSelection, Lsn, TableId, TableSchema
from cdc_replicator.service import failpoints
from cdc_replicator.service.health import HealthState
from cdc_replicator.service.metrics import Metrics
from cdc_replicator.sink.delta import DeltaSink
from cdc_replicator.source import checks
from cdc_replicator.source.replication import ReplicationConnection
from cdc_replicator.store.state import StateStore

__all__ = ["Loads", "narrowed"]

logger = logging.getLogger(__name__)


def narrowed(
    schemas: Mapping[TableId, TableSchema], selections: Mapping[TableId, ColumnSelection]
) -> dict[TableId, TableSchema]:
    """The tables replicated with a column selection (their publication lists those columns)."""
    return {t: schemas[t] for t, sel in selections.items() if not sel.everything and t in schemas}


class Loads:
    """Loads tables into the sink for one configured pipeline (logical mode)."""

    def __init__(
        self, *, config: Config, sink: DeltaSink, state: StateStore, observer: Observer, stop: threading.Event
    ) -> None:
        self._cfg = config
        self._sink = sink
        self._state = state
        self._obs = observer
        self._stop = stop
        self._slot = config.source.slot
        self._tables = config.table_ids
        self._selections = config.selections

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
        with checks.connect(
            src.dsn,
            connect_timeout=src.connect_timeout_seconds,
            silence_timeout=src.wal_receiver_timeout_seconds,
        ) as conn:
            schemas = checks.preflight(conn, self._tables, self._selections)
            partitioning.check_catalog(self._cfg, schemas)
            checks.ensure_publication(
                conn, src.publication, self._tables, narrowed(schemas, self._selections)
            )
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
            system_id = self.system_id()
            whole = tables is None or info is None or (rec is not None and rec.load_state == "loading")
            if whole:
                return self.full_load(conn, schemas, system_id, progress=progress, parallel=parallel)[1]
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
            progress=_ObservedLoad(self._obs.health, self._obs.metrics, progress),
            connect_timeout=self._cfg.source.connect_timeout_seconds,
            silence_timeout=self._cfg.source.wal_receiver_timeout_seconds,
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

    def system_id(self) -> str:
        repl = ReplicationConnection(
            self._cfg.source.dsn, connect_timeout=self._cfg.source.connect_timeout_seconds
        )
        try:
            return repl.identify_system().system_id
        finally:
            repl.close()

    def full_load(
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
