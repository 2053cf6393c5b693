"""Delta I/O: create tables, apply a patch as one MERGE, with the source position in the same commit.

``DeltaSink`` is the ``LoadSink`` and ``OffsetStore`` of ``sink``: positions are written and read
by ``sink.offsets`` in the same commit as the data, so data and position never disagree.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Concatenate, ParamSpec, TypeVar

import pyarrow as pa
import pyarrow.compute as pc
from deltalake import CommitProperties, DeltaTable, Field, QueryBuilder, write_deltalake
from deltalake.exceptions import DeltaError, TableNotFoundError

from cdc_replicator.errors import ReplicatorError, SinkError
from cdc_replicator.model import (
    KeyRange,
    Lsn,
    Op,
    Position,
    TableId,
    TablePatch,
    TablePosition,
    TableSchema,
    WatermarkPosition,
)
from cdc_replicator.sink import ApplyResult, ChunkWritten, ToastReader
from cdc_replicator.sink.maintenance import LakeHealth, MaintenanceResult, lake_health, maintain_table
from cdc_replicator.sink.merge import keys_present, merge, rows_at
from cdc_replicator.sink.offsets import (
    app_id,
    commit_properties,
    read_position,
    read_sequence,
    read_watermark,
)
from cdc_replicator.sink.plan import (
    fill_toast,
    flagged_keys,
    moved_keys,
    partition_arrays,
    plan_merge,
    quote,
    range_predicate,
    target_schema,
    toast_gaps,
    typed_columns,
)
from cdc_replicator.sink.properties import TableProperties
from cdc_replicator.sink.storage import storage_error
from cdc_replicator.sink.upkeep import MaintenanceSettings
from cdc_replicator.types import arrow_type
from cdc_replicator.types.partitions import PartitionColumn

__all__ = ["DeltaSink"]

logger = logging.getLogger(__name__)

_TS_UTC = pa.timestamp("us", tz="UTC")

_P = ParamSpec("_P")
_R = TypeVar("_R")
_S = TypeVar("_S", TablePatch, TableSchema)


def _one_writer(
    method: Callable[Concatenate[DeltaSink, _S, _P], _R],
) -> Callable[Concatenate[DeltaSink, _S, _P], _R]:
    """Hold the table's writer lock while ``method`` writes it: maintenance takes the same lock."""

    @functools.wraps(method)
    def locked(self: DeltaSink, subject: _S, /, *args: _P.args, **kw: _P.kwargs) -> _R:
        table = subject.schema.table if isinstance(subject, TablePatch) else subject.table
        with self.writer_lock(table):
            return method(self, subject, *args, **kw)

    return locked


class DeltaSink:
    """One Delta table per source table under ``root``; positions live in the tables' commits.

    Contract: ``apply`` commits rows and position in one Delta commit, never moves a position
    backwards, and is a no-op for a position the table already holds. Single writer: two
    processes writing the same table make one of them fail with a SinkError.

    An unchanged TOAST value is kept from the Delta row (or the row a key moved from). Where Delta
    has no such row, it is read from the source by key (``toast_reader``); a row the source no
    longer has either is left out, logged and counted (``ApplyResult.toast_unknown``) — never
    written with NULL.
    """

    def __init__(
        self,
        root: str,
        *,
        slot: str,
        storage_options: Mapping[str, str] | None = None,
        soft_delete: Iterable[TableId] = (),
        target_file_size: int | None = None,
        file_sizes: Mapping[TableId, int] | None = None,
        toast_reader: ToastReader | None = None,
        partitions: Mapping[TableId, Sequence[PartitionColumn]] | None = None,
        retention_hours: Mapping[TableId, float] | None = None,
        change_data_feed: Iterable[TableId] | None = None,
    ) -> None:
        self._locks: dict[TableId, threading.RLock] = {}
        self._locks_guard = threading.Lock()
        self._toast = toast_reader  # where unchanged TOAST values come from when Delta lost the row
        self._root = root if "://" in root else os.path.abspath(root)
        self._slot = slot
        self._opts = dict(storage_options or {})
        self._soft = frozenset(soft_delete)
        self._tables: dict[TableId, DeltaTable] = {}
        # file sizes, retention, the feed, partition_by: what each table is configured to be
        self._layout = TableProperties(
            file_size=target_file_size,
            file_sizes=file_sizes,
            retention_hours=retention_hours,
            change_data_feed=change_data_feed,
            partitions=partitions,
        )

    # ---- addressing ----------------------------------------------------------------------

    def uri(self, table: TableId) -> str:
        sep = "/" if "://" in self._root else os.sep
        return f"{self._root.rstrip('/')}{sep}{table.schema}{sep}{table.name}"

    def app_id(self, table: TableId) -> str:
        return app_id(self._slot, table)

    def writer_lock(self, table: TableId) -> threading.RLock:
        """The table's one-writer lock in this process: held by every write and maintenance pass."""
        with self._locks_guard:
            return self._locks.setdefault(table, threading.RLock())

    def _props(self, table: TableId, pos: Position, extra: Mapping[str, str]) -> CommitProperties:
        return commit_properties(self.app_id(table), pos, extra)

    def _open(self, table: TableId) -> DeltaTable | None:
        dt = self._tables.get(table)
        if dt is not None:
            dt.update_incremental()
            return dt
        try:
            dt = DeltaTable(self.uri(table), storage_options=self._opts or None)
        except TableNotFoundError:
            return None
        except (DeltaError, OSError) as exc:
            where = self.uri(table)
            raise storage_error(
                exc, context=f"cannot open the Delta table of {table}", path=where
            ) or SinkError(f"cannot open the Delta table of {table} at {where}", retryable=True) from exc
        self._tables[table] = dt
        self._check_feed(table, dt)
        return dt

    def _check_feed(self, table: TableId, dt: DeltaTable) -> None:
        """Switch the change data feed on where the config asks and the table lacks it (once per open)."""
        try:
            self._layout.follow_feed(table, dt)
        except (DeltaError, OSError) as exc:
            self._tables.pop(table, None)
            context = f"enabling the change data feed of {table} failed"
            raise self._failed(table, context, exc) from exc

    def _failed(self, table: TableId, context: str, exc: BaseException) -> ReplicatorError:
        """The error of a failed Delta call on ``table``: a storage fault by errno, else a retryable SinkError."""
        return storage_error(exc, context=context, path=self.uri(table)) or SinkError(
            f"{context}: {exc}", retryable=True
        )

    # ---- positions -----------------------------------------------------------------------

    def position(self, table: TableId) -> TablePosition | None:
        """What the table durably holds, read from its Delta log; None if it has no position."""
        dt = self._open(table)
        return None if dt is None else read_position(dt, self.app_id(table))

    def watermark(self, table: TableId) -> WatermarkPosition | None:
        """A polled table's watermark, from its newest commit that carries one."""
        dt = self._open(table)
        return None if dt is None else read_watermark(dt, self.app_id(table))

    def watermark_seq(self, table: TableId) -> int:
        """A polled table's last commit sequence number (0: none)."""
        dt = self._open(table)
        return 0 if dt is None else read_sequence(dt, self.app_id(table))

    def exists(self, table: TableId) -> bool:
        return self._open(table) is not None

    # ---- initial / full loads ------------------------------------------------------------

    # ---- chunked loads (cdc-replicator snapshot) --------------------------------------------

    @_one_writer
    def begin_load(
        self, schema: TableSchema, *, fresh: bool, watermark: WatermarkPosition | None = None
    ) -> None:
        """Clear the table's position so a half-loaded table is never taken for a loaded one.

        ``fresh`` (or a missing table, or a schema that no longer matches) empties the table too;
        otherwise old rows stay visible until their key range is rewritten by its chunk.
        """
        table = schema.table
        tschema = self._target_schema(schema)
        dt = self._open(table)
        same = (
            dt is not None
            and [f.name for f in dt.schema().fields] == tschema.names
            and list(dt.metadata().partition_columns) == self.partition_columns(table)
        )
        # no position (version 0) until the load ends; a polled table records where it starts reading
        empty: Position = watermark if watermark is not None else TablePosition(Lsn.ZERO)
        props = self._props(table, empty, {"cdc.op": "load-begin"})
        try:
            if fresh or not same:
                self._write(table, tschema.empty_table(), props, mode="overwrite", new_schema=True)
            else:
                self._write(table, tschema.empty_table(), props, mode="append")
        except (DeltaError, OSError) as exc:
            where = self.uri(table)
            raise storage_error(
                exc, context=f"cannot prepare the Delta table of {table}", path=where
            ) or SinkError(f"cannot prepare the Delta table of {table} at {where}: {exc}") from exc
        self._tables.pop(table, None)

    # not under the writer lock: chunks of one table are written side by side by a parallel load;
    # maintenance skips a table that is not streaming, and an append never conflicts with it
    def load_chunk(
        self,
        schema: TableSchema,
        batches: Iterable[pa.RecordBatch],
        key_range: KeyRange,
        *,
        row_lsn: int,
        loaded_at: datetime,
        append: bool = False,
        native: bool = False,
        position: Position | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> ChunkWritten:
        """Write one chunk as a single commit that replaces its key range: a redo is a no-op.

        Streams: the batches go to the Parquet writer as they arrive (memory ≈ a few batches).
        ``native``: the batches come from a binary read (typed columns kept, text ones cast).
        ``row_lsn``: every row's ``_cdc_lsn`` (a load's snapshot LSN; a polled table's commit sequence number).
        ``append``: the chunk's rows cannot be in the table yet (a new load emptied it): a plain
        append, which never conflicts with the other chunks' commits.
        """
        table = schema.table
        soft = table in self._soft
        tschema = self._target_schema(schema)
        parts = self._layout.partitions(table)
        counted = [0, 0]  # rows, Arrow bytes (uncompressed data written)

        constants = [
            pa.scalar(row_lsn, pa.int64()),
            pa.scalar(Op.SNAPSHOT.value, pa.string()),
            pa.scalar(loaded_at, _TS_UTC),
        ]
        if soft:
            constants.append(pa.scalar(False, pa.bool_()))

        source_failed: list[ReplicatorError] = []  # the reader's own error, not delta-rs' wrapping of it

        def typed() -> Iterator[pa.RecordBatch]:
            chunks = iter(batches)
            while True:
                try:
                    chunk = next(chunks)
                except StopIteration:
                    return
                except ReplicatorError as exc:
                    source_failed.append(exc)
                    raise
                n = chunk.num_rows
                if n == 0:
                    continue
                notes: list[str] = []
                cols = [
                    c.combine_chunks() if isinstance(c, pa.ChunkedArray) else c
                    for c in typed_columns(schema, chunk, native=native, notes=notes)
                ]
                if parts:  # derived partition columns (day(c) …), vectorised over the chunk
                    derived = partition_arrays(dict(zip(schema.column_names, cols, strict=True)), parts)
                    cols += [
                        d.combine_chunks() if isinstance(d, pa.ChunkedArray) else d for d in derived.values()
                    ]
                _report(table, notes)
                # constant columns: pa.repeat fills them in C (a Python list of n datetimes
                # cost about a quarter of the load's CPU)
                meta: list[pa.Array] = [pa.repeat(value, n) for value in constants]
                batch = pa.RecordBatch.from_arrays([*cols, *meta], schema=tschema)
                counted[0] += n
                counted[1] += batch.nbytes
                yield batch

        reader = pa.RecordBatchReader.from_batches(tschema, typed())
        predicate = range_predicate(schema, key_range)
        token = f"{table}#{uuid.uuid4().hex}"
        if position is not None:  # the chunk also records the table's position (watermark catch-up)
            props = self._props(
                table, position, {"cdc.op": "load-chunk", "cdc.chunk": token, **(metadata or {})}
            )
        else:
            props = CommitProperties(custom_metadata={"cdc.op": "load-chunk", "cdc.chunk": token})
        try:
            self._write(
                table,
                reader,
                props,
                mode="append" if append else "overwrite",
                predicate=predicate,
                file_size=self._layout.target_size(table),
            )
        except (DeltaError, OSError) as exc:
            if source_failed:  # reading failed, not writing: the source's error says what to do
                raise source_failed[0]  # noqa: B904 - its own cause chain is the one to show
            where = self.uri(table)
            raise storage_error(exc, context=f"writing a chunk of {table} failed", path=where) or SinkError(
                f"writing a chunk of {table} to {where} failed: {exc}", retryable=True
            ) from exc
        return ChunkWritten(counted[0], self._files_added(table, token), counted[1])

    def _files_added(self, table: TableId, token: str) -> int:
        """Files the commit tagged ``token`` added (read back from the recent history)."""
        try:
            dt = DeltaTable(self.uri(table), storage_options=self._opts or None)
            for entry in dt.history(50):
                if entry.get("cdc.chunk") == token:
                    return int((entry.get("operationMetrics") or {}).get("num_added_files", 0) or 0)
        except (DeltaError, OSError, ValueError):
            pass
        return 0

    @_one_writer
    def finish_load(self, schema: TableSchema, position: Lsn) -> None:
        """Record the load's position: from here on the table holds everything before it."""
        table = schema.table
        tschema = self._target_schema(schema)
        props = self._props(table, TablePosition(position), {"cdc.op": "load-end"})
        try:
            self._write(table, tschema.empty_table(), props, mode="append")
        except (DeltaError, OSError) as exc:
            context = f"recording the load position of {table} failed"
            raise self._failed(table, context, exc) from exc
        self._tables.pop(table, None)

    def _write(
        self,
        table: TableId,
        data: pa.Table | pa.RecordBatchReader,
        props: CommitProperties,
        *,
        mode: str,
        new_schema: bool = False,
        predicate: str | None = None,
        file_size: int | None = None,
    ) -> None:
        """The one ``write_deltalake`` call: ``append``, or ``overwrite`` (of ``predicate``'s rows, or all).

        ``new_schema`` replaces the table's schema and sets its configuration (a load starting).
        """
        target = self.uri(table)
        opts = self._opts or None
        if mode == "append":
            write_deltalake(
                target,
                data,
                mode="append",
                storage_options=opts,
                target_file_size=file_size,
                commit_properties=props,
            )
        elif new_schema:
            write_deltalake(
                target,
                data,
                mode="overwrite",
                schema_mode="overwrite",
                partition_by=self.partition_columns(table),  # [] un-partitions a re-synced table
                storage_options=opts,
                configuration=self._layout.at_creation(table),
                commit_properties=props,
            )
        else:
            write_deltalake(
                target,
                data,
                mode="overwrite",
                predicate=predicate,
                storage_options=opts,
                target_file_size=file_size,
                commit_properties=props,
            )

    def _target_schema(self, schema: TableSchema) -> pa.Schema:
        table = schema.table
        return target_schema(
            schema, soft_delete=table in self._soft, partitions=self._layout.partitions(table)
        )

    def partition_columns(self, table: TableId) -> list[str]:
        """The Delta columns ``table`` is to be partitioned by (``partition_by``; [] none)."""
        return self._layout.partition_columns(table)

    def check_partitioning(self, table: TableId) -> None:
        """Refuse to write an existing table whose partition columns are not ``partition_by``'s."""
        dt = self._open(table)
        if dt is not None:
            self._layout.check_partitioning(table, dt, self.uri(table))

    def _follow_file_size(self, table: TableId, dt: DeltaTable) -> None:
        try:
            self._layout.follow_file_size(table, dt)
        except (DeltaError, OSError) as exc:
            self._tables.pop(table, None)
            context = f"setting the target file size of {table} failed"
            raise self._failed(table, context, exc) from exc

    # ---- streaming -----------------------------------------------------------------------

    @_one_writer
    def apply(
        self,
        patch: TablePatch,
        position: Position,
        *,
        batch_id: int = 0,
        metadata: Mapping[str, str] | None = None,
    ) -> ApplyResult | None:
        """Commit the patch and ``position`` together; None when the table already held it."""
        table = patch.schema.table
        dt = self._open(table)
        if dt is None:
            raise SinkError(
                f"the Delta table of {table} does not exist at {self.uri(table)}",
                hint="it is created by the initial load; re-sync with: cdc-replicator --config FILE snapshot",
            )
        if isinstance(position, WatermarkPosition):
            if read_sequence(dt, self.app_id(table)) >= position.seq:
                return None
        else:
            held = self.position(table)
            if held is not None and held.covers(position):
                return None
            if held is not None and held.lsn > position.lsn:
                position = TablePosition(held.lsn, position.partial)  # never move a position backwards
        self._follow_file_size(table, dt)  # before ``before`` below: a no-op merge is told by the version
        soft = table in self._soft
        old_keys = moved_keys(patch)
        moved_rows = None if old_keys is None or patch.truncate else rows_at(dt, patch.schema, old_keys)
        patch, toast_read, toast_unknown = self._fill_toast_gaps(dt, patch, moved_rows)
        plan = plan_merge(
            patch,
            soft_delete=soft,
            moved_rows=moved_rows,
            target=self._arrow_schema(dt),
            partitions=self._layout.partitions(table),
        )
        _report(table, plan.notes)
        props = self._props(table, position, {"cdc.batch": str(batch_id), **(metadata or {})})
        before = dt.version()
        try:
            if patch.truncate and not soft:
                self._write(table, plan.upsert_rows, props, mode="overwrite")
                self._tables.pop(table, None)
                n = plan.upsert_rows.num_rows
                return ApplyResult(table, before + 1, n, 0, 0, True, toast_read, toast_unknown)
            metrics = merge(dt, plan, props, patch)
            dt.update_incremental()
            if dt.version() == before:
                # delta-rs does not commit a merge that changes no file; record the position anyway
                self._write(table, plan.upsert_rows.schema.empty_table(), props, mode="append")
                dt.update_incremental()
        except (DeltaError, OSError) as exc:
            self._tables.pop(table, None)
            context = f"merge into {table} up to {_describe(position)} failed"
            raise storage_error(exc, context=context, path=self.uri(table)) or SinkError(
                f"{context}: {exc}",
                hint="the daemon retries; if another process writes this table, stop it",
                retryable=True,
            ) from exc
        return ApplyResult(
            table,
            dt.version(),
            int(metrics.get("num_target_rows_inserted", 0)),
            int(metrics.get("num_target_rows_updated", 0)),
            int(metrics.get("num_target_rows_deleted", 0)),
            patch.truncate,
            toast_read,
            toast_unknown,
        )

    def _fill_toast_gaps(
        self, dt: DeltaTable, patch: TablePatch, moved_rows: pa.Table | None
    ) -> tuple[TablePatch, int, int]:
        """Unchanged TOAST values Delta cannot give (no row, or no moved-from row): from the source.

        Returns the patch to merge, the rows filled from the source and the rows left out (the
        source no longer has them either: a later change in the stream deletes or moves them).
        """
        schema = patch.schema
        flagged = flagged_keys(patch)
        present = None
        if flagged is not None and not patch.truncate:  # after a TRUNCATE no old row is left
            try:
                present = keys_present(dt, schema, flagged)
            except (DeltaError, OSError) as exc:
                raise SinkError(
                    f"reading the rows of {schema.table} whose TOAST values stay unchanged failed: {exc}",
                    retryable=True,
                ) from exc
        gaps = toast_gaps(patch, present, moved_rows)
        if gaps is None:
            return patch, 0, 0
        table = schema.table
        if self._toast is None:
            found = gaps.schema.empty_table()
        else:
            found = self._toast.read(schema, gaps, patch.unchanged_columns)
        patch, unknown = fill_toast(patch, gaps, found)
        read = gaps.num_rows - unknown
        if read:
            logger.info("unchanged toast values read from the source table=%s rows=%d", table, read)
        if unknown and self._toast is None:
            logger.warning(
                "unchanged toast value unknown: Delta has no row to keep it from and no source to read "
                "it from; the row is left out (re-sync it: cdc-replicator --config FILE snapshot --table "
                "%s) table=%s rows=%d",
                table,
                table,
                unknown,
            )
        elif unknown:
            logger.warning(
                "unchanged toast value unknown: Delta has no row to keep it from and the source no "
                "longer has the row; the row is left out (a later change of the stream deletes or moves "
                "it; if it stays missing, run: cdc-replicator --config FILE snapshot --table %s) "
                "table=%s rows=%d",
                table,
                table,
                unknown,
            )
        return patch, read, unknown

    @staticmethod
    def _arrow_schema(dt: DeltaTable) -> pa.Schema:
        return pa.schema(dt.schema().to_arrow())

    @_one_writer
    def evolve(self, schema: TableSchema) -> list[str]:
        """Let the Delta table hold rows of ``schema``: add its missing columns, widen grown types.

        Idempotent (a replay after a crash finds nothing left to do). Adding columns is a metadata
        commit; a wider type rewrites the table once (streamed, in one overwrite commit; the
        table's positions are kept). Columns ``schema`` lacks stay in Delta. Returns what was done.
        """
        table = schema.table
        dt = self._open(table)
        if dt is None:
            raise SinkError(f"the Delta table of {table} does not exist at {self.uri(table)}")
        want = self._target_schema(schema)
        have = self._arrow_schema(dt)
        missing = [f for f in want if f.name not in have.names]
        wider = {f.name: f for f in want if f.name in have.names and have.field(f.name).type != f.type}
        done: list[str] = []
        try:
            if wider:
                new = pa.schema([wider.get(f.name, f) for f in have] + missing)
                dataset = dt.to_pyarrow_dataset()

                def cast() -> Iterator[pa.RecordBatch]:
                    for b in dataset.to_batches():
                        cols = [
                            b.column(f.name).cast(f.type)
                            if f.name in b.schema.names
                            else pa.nulls(b.num_rows, f.type)
                            for f in new
                        ]
                        yield pa.RecordBatch.from_arrays(cols, schema=new)

                write_deltalake(
                    self.uri(table),
                    pa.RecordBatchReader.from_batches(new, cast()),
                    mode="overwrite",
                    schema_mode="overwrite",
                    storage_options=self._opts or None,
                    target_file_size=self._layout.target_size(table),
                    commit_properties=CommitProperties(custom_metadata={"cdc.op": "evolve-widen"}),
                )
                done += [f"widened {n} to {f.type}" for n, f in wider.items()]
                done += [f"added {f.name} {f.type}" for f in missing]
            elif missing:
                dt.alter.add_columns(
                    [Field.from_arrow(f) for f in missing],
                    commit_properties=CommitProperties(custom_metadata={"cdc.op": "evolve-add"}),
                )
                done += [f"added {f.name} {f.type}" for f in missing]
        except (DeltaError, OSError) as exc:
            self._tables.pop(table, None)
            context = f"evolving the Delta table of {table} failed"
            raise self._failed(table, context, exc) from exc
        self._tables.pop(table, None)
        return done

    def maintain(
        self, table: TableId, settings: MaintenanceSettings, *, checkpointed: int | None = None
    ) -> MaintenanceResult | None:
        """One maintenance pass over ``table`` between its writes (None: the table does not exist yet).

        Holds the table's writer lock: the stream's next commit of the table waits for the pass.
        """
        with self.writer_lock(table):
            try:
                dt = DeltaTable(self.uri(table), storage_options=self._opts or None)
            except TableNotFoundError:
                return None
            except (DeltaError, OSError) as exc:
                where = self.uri(table)
                raise storage_error(
                    exc, context=f"cannot open the Delta table of {table}", path=where
                ) or SinkError(f"cannot open the Delta table of {table} at {where}", retryable=True) from exc
            app = self.app_id(table)
            apps = (app, f"{app}#partial-lsn", f"{app}#partial-seq")
            return maintain_table(
                dt, table, settings, apps=apps, root=self.uri(table), checkpointed=checkpointed
            )

    def lake_health(self, table: TableId) -> LakeHealth | None:
        """The table's live files and bytes, unvacuumed bytes, last maintenance (None: no table)."""
        dt = self._open(table)
        if dt is None:
            return None
        try:
            return lake_health(dt, self.uri(table))
        except (DeltaError, OSError) as exc:
            raise SinkError(f"measuring the Delta table of {table} failed: {exc}", retryable=True) from exc

    def keys_in_range(self, schema: TableSchema, key_range: KeyRange) -> pa.Table:
        """The key columns of the table's rows in ``key_range`` (typed as Delta stores them)."""
        table = schema.table
        dt = self._open(table)
        cols = ", ".join(quote(k) for k in schema.key)
        if dt is None:
            return pa.table(
                {
                    c.name: pa.array([], arrow_type(c.type_oid, c.type_modifier))
                    for c in schema.columns
                    if c.is_key
                }
            )
        where = range_predicate(schema, key_range) or "true"
        if table in self._soft:  # a row marked deleted is not there any more
            where = f'({where}) AND ("_cdc_deleted" IS NULL OR NOT "_cdc_deleted")'
        reader = QueryBuilder().register("t", dt).execute(f"select {cols} from t where {where}")  # noqa: S608
        return pa.table(reader.read_all())

    def rows_in_range(self, schema: TableSchema, key_range: KeyRange) -> pa.Table:
        """The rows of ``key_range`` (pruned by the key predicate): ``schema``'s columns, ``_cdc_lsn``
        and, for a soft-delete table, ``_cdc_deleted``; an empty table when there is no Delta table."""
        table = schema.table
        dt = self._open(table)
        soft = table in self._soft
        want = target_schema(schema, soft_delete=soft)
        names = [*schema.column_names, "_cdc_lsn", *(["_cdc_deleted"] if soft else [])]
        if dt is None:
            return pa.table({n: pa.array([], want.field(n).type) for n in names})
        have = set(self._arrow_schema(dt).names)
        cols = ", ".join(quote(n) if n in have else f"NULL AS {quote(n)}" for n in names)
        where = range_predicate(schema, key_range) or "true"
        try:
            reader = QueryBuilder().register("t", dt).execute(f"select {cols} from t where {where}")  # noqa: S608
            return pa.table(reader.read_all())
        except (DeltaError, OSError) as exc:
            raise SinkError(f"reading a key range of {table} from {self.uri(table)} failed: {exc}") from exc

    def last_commit(self, table: TableId) -> tuple[int, datetime | None] | None:
        """The table's current version and when it was committed (None: no table)."""
        dt = self._open(table)
        if dt is None:
            return None
        history = dt.history(1)
        ts = history[0].get("timestamp") if history else None
        when = datetime.fromtimestamp(int(ts) / 1000, UTC) if isinstance(ts, int | float) else None
        return dt.version(), when

    def row_count(self, table: TableId) -> int | None:
        """Rows in the table's current version, from the log's file statistics (None: no table)."""
        dt = self._open(table)
        if dt is None:
            return None
        actions = dt.get_add_actions(flatten=True)
        return int(pc.sum(pa.table(actions).column("num_records")).as_py() or 0)


def _report(table: TableId, notes: Sequence[str]) -> None:
    """Log values stored differently by design (README, type map), so that it is never silent."""
    for note in notes:
        column, _, what = note.partition(": ")
        logger.warning("%s, as the type map says table=%s column=%s", what, table, column)


def _describe(position: Position) -> str:
    return f"watermark #{position.seq}" if isinstance(position, WatermarkPosition) else str(position.lsn)
