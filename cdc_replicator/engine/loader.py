"""Chunked, parallel, resumable table loads: plan key ranges, copy them with N connections, write each
as one Delta commit, and record each finished chunk so a re-run skips it.

A new load empties the table first and its chunks append (concurrent appends never conflict). A
resumed load cannot know whether the chunk it was writing at the crash got in, so its remaining
chunks each replace their key range: redoing one is a no-op.

Consistency: a fresh load reads every chunk in one snapshot (exported by the replication slot, shared
by all connections, as ``pg_dump -j`` does). A resumed load reads its remaining chunks in a newer
snapshot; that stays correct because each row carries the LSN of the snapshot it was read in, the
table's position is the oldest one, and streamed changes are applied with the sequenced merge (a
change older than a row's ``_cdc_lsn`` never overwrites it).
"""

from __future__ import annotations

import logging
import queue
import threading
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

import psycopg
from psycopg import sql
from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_exponential

from cdc_replicator.errors import ReplicatorError, StorageFull
from cdc_replicator.model import KeyRange, Lsn, TableId, TableSchema
from cdc_replicator.service import failpoints
from cdc_replicator.sink import ChunkWritten, LoadSink
from cdc_replicator.source import checks
from cdc_replicator.source.snapshot import (
    arrow_copy_available,
    copy_table,
    copy_table_arrow,
    estimate_rows,
    key_type_names,
    plan_ranges,
    range_condition,
)
from cdc_replicator.store.state import StateStore

__all__ = ["LoadResult", "Loader", "ProgressSink"]

logger = logging.getLogger(__name__)


class ProgressSink(Protocol):
    """What the loader reports (``progress.LoadProgress`` implements it). Called from worker threads."""

    def add_table(self, table: str, *, estimated_rows: int | None, chunks: int) -> None: ...
    def resumed(self, table: str, *, chunks_done: int, rows: int) -> None: ...
    def chunk_done(self, table: str, *, rows: int, files: int, bytes: int) -> None: ...
    def table_done(self, table: str) -> None: ...
    def table_failed(self, table: str, error: str) -> None: ...


class _Silent:
    def add_table(self, table: str, *, estimated_rows: int | None, chunks: int) -> None:
        pass

    def resumed(self, table: str, *, chunks_done: int, rows: int) -> None:
        pass

    def chunk_done(self, table: str, *, rows: int, files: int, bytes: int) -> None:
        pass

    def table_done(self, table: str) -> None:
        pass

    def table_failed(self, table: str, error: str) -> None:
        pass


@dataclass(frozen=True, slots=True)
class LoadResult:
    table: TableId
    rows: int
    chunks: int


@dataclass(frozen=True, slots=True)
class _Work:
    schema: TableSchema
    chunk_no: int
    key_range: KeyRange
    append: bool


class Loader:
    """Loads tables into Delta; one instance per load. ``run`` blocks until done, failed or stopped."""

    def __init__(
        self,
        *,
        dsn: str,
        sink: LoadSink,
        state: StateStore,
        slot: str,
        parallel: int,
        chunk_rows: int,
        stop: threading.Event,
        progress: ProgressSink | None = None,
        connect_timeout: float = 10.0,
        silence_timeout: float = 0.0,
        arrow_copy: bool = True,
    ) -> None:
        self._dsn = dsn
        self._sink = sink
        self._state = state
        self._slot = slot
        self._parallel = max(1, parallel)
        self._chunk_rows = max(1, chunk_rows)
        self._stop = stop
        self._progress: ProgressSink = progress or _Silent()
        self._connect_timeout = connect_timeout
        self._silence_timeout = silence_timeout
        self._lock = threading.Lock()
        self._arrow = arrow_copy and arrow_copy_available()

    def run(
        self,
        schemas: Sequence[TableSchema],
        *,
        position: Lsn,
        snapshot: str | None,
        snapshot_lsn: Lsn,
        fresh: bool,
    ) -> list[LoadResult]:
        """Load ``schemas``; each table ends at ``position``. Chunks are read in ``snapshot``.

        ``fresh``: ignore earlier progress; otherwise a load recorded for the same position
        resumes with its pending chunks. A table that is not resumed is emptied and loaded anew.
        """
        work: list[_Work] = []
        remaining: dict[TableId, int] = {}
        totals: dict[TableId, int] = {}
        # planning samples and counts whole tables, which may send nothing back for minutes
        planning = 0.0 if self._silence_timeout <= 0 else max(10 * self._silence_timeout, 600.0)
        with checks.connect(
            self._dsn, connect_timeout=self._connect_timeout, silence_timeout=planning
        ) as conn:
            for schema in schemas:
                table = schema.table
                rec = None if fresh else self._state.load(self._slot, table)
                resumable = rec is not None and rec.state == "running" and rec.position == position
                estimated, _ = estimate_rows(conn, schema)
                if resumable and rec is not None:
                    pending = self._state.pending_chunks(self._slot, table)
                    if pending and pending[0][1].pages is not None:  # page chunks cannot be replaced
                        self._state.reset_chunks(self._slot, table)
                        pending = self._state.pending_chunks(self._slot, table)
                        self._sink.begin_load(schema, fresh=True)
                        resumed_rows = None
                    else:
                        resumed_rows = (rec.chunks_done, rec.rows_done)
                    chunks = rec.chunks
                    logger.info("load resumed table=%s pending_chunks=%d of %d", table, len(pending), chunks)
                else:
                    ranges = plan_ranges(conn, schema, target_rows=self._chunk_rows)
                    self._state.start_load(self._slot, table, uuid.uuid4().hex, position, ranges)
                    self._sink.begin_load(schema, fresh=True)
                    pending = list(enumerate(ranges))
                    chunks = len(ranges)
                    resumed_rows = None
                    logger.info("load planned table=%s chunks=%d estimated_rows=%d", table, chunks, estimated)
                self._progress.add_table(
                    str(table), estimated_rows=estimated if estimated >= 0 else None, chunks=chunks
                )
                if resumed_rows is not None:
                    self._progress.resumed(str(table), chunks_done=resumed_rows[0], rows=resumed_rows[1])
                remaining[table] = len(pending)
                totals[table] = 0
                # a new load emptied the table: its chunks append (concurrent appends never conflict);
                # a resumed chunk may already be in, so it replaces its key range instead
                work += [_Work(schema, no, r, r.pages is not None or not resumable) for no, r in pending]
            key_types = {s.table: key_type_names(conn, s) for s in schemas}
        # tables with nothing left to copy (empty plan, or a resumed load whose chunks were all in)
        for schema in schemas:
            if remaining[schema.table] == 0:
                self._finish(schema, position)
        self._copy_all(work, remaining, totals, key_types, position, snapshot, snapshot_lsn)
        return [
            LoadResult(s.table, totals[s.table], len([w for w in work if w.schema.table == s.table]))
            for s in schemas
        ]

    # ---- workers ----------------------------------------------------------------------------

    def _copy_all(
        self,
        work: list[_Work],
        remaining: dict[TableId, int],
        totals: dict[TableId, int],
        key_types: dict[TableId, dict[str, str]],
        position: Lsn,
        snapshot: str | None,
        snapshot_lsn: Lsn,
    ) -> None:
        todo: queue.Queue[_Work] = queue.Queue()
        for w in work:
            todo.put(w)
        failures: list[BaseException] = []
        loaded_at = datetime.now(UTC)

        def worker() -> None:
            conn: psycopg.Connection[tuple[object, ...]] | None = None
            try:
                while not self._stop.is_set() and not failures:
                    try:
                        w = todo.get_nowait()
                    except queue.Empty:
                        return
                    where = range_condition(w.schema, key_types[w.schema.table], w.key_range)
                    conn, written = self._copy_chunk(conn, w, where, snapshot, snapshot_lsn.value, loaded_at)
                    failpoints.hit("after_chunk_write")
                    self._state.chunk_done(self._slot, w.schema.table, w.chunk_no, written.rows, snapshot_lsn)
                    failpoints.hit("after_chunk_done")
                    self._chunk_done(w.schema, written, remaining, totals, position)
            except BaseException as exc:  # handed to the caller
                failures.append(exc)
            finally:
                if conn is not None:
                    conn.close()

        threads = [
            threading.Thread(target=worker, name=f"cdc-load-{i}", daemon=True) for i in range(self._parallel)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if failures:
            for table, left in remaining.items():
                if left:
                    self._progress.table_failed(str(table), str(failures[0]).splitlines()[0])
            raise failures[0]
        if self._stop.is_set() and any(remaining.values()):
            raise LoadInterrupted(
                "the load was stopped; finished chunks are kept",
                hint="run the same command again to resume where it stopped",
            )

    def _copy_chunk(
        self,
        conn: psycopg.Connection[tuple[object, ...]] | None,
        w: _Work,
        where: sql.Composable,
        snapshot: str | None,
        row_lsn: int,
        loaded_at: datetime,
    ) -> tuple[psycopg.Connection[tuple[object, ...]] | None, ChunkWritten]:
        """Read one chunk and write it as one commit; a dropped connection is retried (the range
        overwrite makes a redo safe). Returns the connection to go on with."""
        for attempt in _retrying():
            with attempt:
                if conn is None or conn.closed:
                    conn = checks.connect(
                        self._dsn,
                        connect_timeout=self._connect_timeout,
                        silence_timeout=self._silence_timeout,
                    )
                try:
                    failpoints.hit("chunk_read")
                    rows = (
                        copy_table_arrow(
                            self._dsn,
                            w.schema,
                            snapshot=snapshot,
                            where=where,
                            connect_timeout=self._connect_timeout,
                            silence_timeout=self._silence_timeout,
                        )
                        if self._arrow
                        else copy_table(conn, w.schema, snapshot=snapshot, where=where)
                    )
                    written = self._sink.load_chunk(
                        w.schema,
                        rows,
                        w.key_range,
                        row_lsn=row_lsn,
                        loaded_at=loaded_at,
                        append=w.append,
                        native=self._arrow,
                    )
                except ReplicatorError:
                    conn.close()
                    conn = None
                    raise
        return conn, written

    def _chunk_done(
        self,
        schema: TableSchema,
        written: ChunkWritten,
        remaining: dict[TableId, int],
        totals: dict[TableId, int],
        position: Lsn,
    ) -> None:
        table = schema.table
        self._progress.chunk_done(str(table), rows=written.rows, files=written.files, bytes=written.bytes)
        with self._lock:
            totals[table] += written.rows
            remaining[table] -= 1
            last = remaining[table] == 0
        if last:
            self._finish(schema, position)

    def _finish(self, schema: TableSchema, position: Lsn) -> None:
        self._sink.finish_load(schema, position)
        failpoints.hit("after_table_load")
        self._state.finish_table_load(self._slot, schema.table)
        self._progress.table_done(str(schema.table))
        logger.info("table loaded table=%s position=%s", schema.table, position)


class LoadInterrupted(ReplicatorError):
    """Stopped on request (Ctrl-C / SIGTERM) before every chunk was in; resumable."""

    exit_code = 130


def _retrying() -> Retrying:
    """A chunk whose connection dropped is read again (the range overwrite makes that safe).

    A full lake is not retried chunk by chunk: the load stops at once with the fix (the daemon's own
    back-off waits for space, saying why in /readyz; a ``snapshot`` command resumes when run again).
    """
    return Retrying(
        retry=retry_if_exception(
            lambda e: isinstance(e, ReplicatorError) and e.retryable and not isinstance(e, StorageFull)
        ),
        wait=wait_exponential(multiplier=0.5, max=10),
        stop=stop_after_attempt(5),
        before_sleep=lambda st: logger.warning(
            "chunk retry after: %s", st.outcome.exception() if st.outcome else "?"
        ),
        reraise=True,
    )
