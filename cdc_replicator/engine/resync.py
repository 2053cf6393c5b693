"""Live re-sync of tables while the daemon streams: DBLog-style watermark chunks inside the stream.

For each chunk of a table (the next ``chunk_rows`` keys after the last one done):
1. a low watermark (LW) is written into the WAL with ``pg_logical_emit_message``;
2. the chunk is read with a plain SELECT (its own snapshot, somewhere after LW);
3. a high watermark (HW) is written.
While the stream is between LW and HW, every key it changes is dropped from the chunk: the
stream's own change is as new or newer; a TOAST value it sent as unchanged is taken from the
chunk's row (``engine.window``: Delta may not have the row, the chunk does). At HW, what is left of the chunk is injected into the
stream as upserts in HW's transaction, so it lands exactly at HW's position and the sequenced merge
orders it against everything else. The other tables keep streaming; the table never pauses.

When the last chunk is in, rows the re-sync never rewrote and the stream never changed since the
first LW (``_cdc_lsn`` below it) no longer exist at the source: the same MERGE removes them.

A re-sync of some *keys* (``verify --repair``: the keys found different) reads those keys in each
chunk instead of the next key range; a listed key the chunk's read does not find, and that the
stream did not change in the window, is gone at the source: a delete is injected at HW with the
chunk's rows. No cleanup follows. Its keys live only in the daemon's memory: a restart ends it as
failed (run ``verify --repair`` again).

Progress is saved in the state store only after the batch holding the chunk is committed to
Delta, so a restart continues from a chunk that is really applied (an earlier save could make the
final cleanup remove rows of a chunk that never landed).

After a restart the replayed stream may carry the old LW/HW of the chunk number the restored
re-sync reads again; the new chunk is then injected at the old, earlier HW. That is still right:
the chunk was read after that point and every change after it replays after the injection (so
each key ends at the stream's last value), and a wider window only leaves more keys to the stream.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace

import psycopg
from psycopg import sql

from cdc_replicator.engine.window import pass_window
from cdc_replicator.errors import ReplicatorError
from cdc_replicator.model import (
    Lsn,
    Op,
    ResyncCleanup,
    RowChange,
    SourceMessage,
    TableId,
    TableSchema,
    Truncate,
    Value,
)
from cdc_replicator.service import failpoints
from cdc_replicator.source import checks, pgerrors
from cdc_replicator.source.decoding import MESSAGE_PREFIX
from cdc_replicator.source.snapshot import key_type_names, output_text
from cdc_replicator.store.state import ResyncRecord, StateStore
from cdc_replicator.types import TEXT_TYPE_OIDS

__all__ = ["Resyncer", "request_resync"]

logger = logging.getLogger(__name__)


def _emit(conn: psycopg.Connection[tuple[object, ...]], payload: Mapping[str, object]) -> None:
    conn.execute(
        "select pg_logical_emit_message(true, %s, %s)", (MESSAGE_PREFIX, json.dumps(payload, sort_keys=True))
    )


def request_resync(
    conn: psycopg.Connection[tuple[object, ...]],
    tables: Sequence[TableId],
    *,
    keys: Mapping[TableId, Sequence[tuple[str, ...]]] | None = None,
) -> str:
    """Ask the running daemon (through its own stream) to re-sync ``tables``; returns the request id.

    ``keys``: re-sync only these keys of a table (PostgreSQL text forms, in key-column order).
    """
    request = uuid.uuid4().hex
    payload: dict[str, object] = {"op": "resync", "request": request, "tables": [str(t) for t in tables]}
    if keys:
        payload["keys"] = {str(t): [list(k) for k in ks] for t, ks in keys.items()}
    _emit(conn, payload)
    return request


_KEYED = "keys"  # the detail of a running re-sync of listed keys (not restored after a restart)
_KEYS_PER_CHUNK = 1000  # listed keys read per chunk (one VALUES list)


@dataclass(slots=True)
class _Chunk:
    no: int
    rows: dict[tuple[Value, ...], tuple[Value, ...]]
    last_key: tuple[str, ...] | None
    last: bool  # fewer rows than asked: the table ends here
    window: bool = False
    absent: set[tuple[Value, ...]] = field(default_factory=set)  # listed keys the read did not find


@dataclass(slots=True)
class _Table:
    schema: TableSchema
    request: str
    low_watermark: Lsn | None = None
    next_key: tuple[str, ...] | None = None
    chunks: int = 0
    rows: int = 0
    chunk: _Chunk | None = None
    key_types: dict[str, str] = field(default_factory=dict)
    keys: tuple[tuple[str, ...], ...] | None = None  # a re-sync of these keys only

    def record(self, state: str, detail: str | None = None) -> ResyncRecord:
        return ResyncRecord(
            self.schema.table,
            self.request,
            self.low_watermark,
            self.next_key,
            self.chunks,
            self.rows,
            state,
            detail if detail is not None or self.keys is None or state != "running" else _KEYED,
        )


class Resyncer:
    """Drives the live re-syncs of one daemon. Called from the stream thread only."""

    def __init__(
        self,
        *,
        dsn: str,
        slot: str,
        state: StateStore,
        schemas: Mapping[TableId, TableSchema],
        chunk_rows: int,
        connect_timeout: float = 10.0,
        silence_timeout: float = 0.0,
        is_paused: Callable[[TableId], bool] = lambda _t: False,
    ) -> None:
        self._is_paused = is_paused  # a table held back by a schema change cannot be re-synced live
        self._dsn = dsn
        self._slot = slot
        self._state = state
        self._schemas = dict(schemas)
        self._chunk_rows = max(1, chunk_rows)
        self._connect_timeout = connect_timeout
        self._silence_timeout = silence_timeout
        self._active: dict[TableId, _Table] = {}
        self._pending: list[tuple[Lsn, ResyncRecord]] = []  # saved once a batch ending after Lsn commits
        self._conn: psycopg.Connection[tuple[object, ...]] | None = None

    # ---- lifecycle ---------------------------------------------------------------------------

    def restore(self) -> None:
        """Continue the re-syncs a previous run left running, from their last committed chunk."""
        for rec in self._state.resyncs(self._slot):
            schema = self._schemas.get(rec.table)
            if rec.state != "running" or schema is None:
                continue
            if rec.detail == _KEYED:  # its keys were in memory only
                self._state.save_resync(
                    self._slot,
                    replace(
                        rec, state="failed", detail="interrupted by a restart: run verify --repair again"
                    ),
                )
                continue
            self._active[rec.table] = _Table(
                schema,
                rec.request,
                rec.low_watermark,
                rec.next_key,
                rec.chunks,
                rec.rows,
                key_types=self._key_types(schema),
            )
            logger.info("live re-sync continues table=%s chunks_done=%d", rec.table, rec.chunks)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    @property
    def active(self) -> bool:
        return bool(self._active)

    @property
    def idle(self) -> bool:
        """No re-sync running and none waiting for its rows to commit: ``committed`` has nothing to do."""
        return not self._active and not self._pending

    def _connection(self) -> psycopg.Connection[tuple[object, ...]]:
        if self._conn is None or self._conn.closed:
            self._conn = checks.connect(
                self._dsn, connect_timeout=self._connect_timeout, silence_timeout=self._silence_timeout
            )
        return self._conn

    def _key_types(self, schema: TableSchema) -> dict[str, str]:
        return key_type_names(self._connection(), schema)

    # ---- the stream ----------------------------------------------------------------------------

    def on_message(self, msg: SourceMessage, commit_lsn: Lsn) -> list[RowChange | ResyncCleanup]:
        """Handle one of our messages, seen inside the transaction committed at ``commit_lsn``."""
        try:
            payload = json.loads(msg.content.decode())
        except (UnicodeDecodeError, ValueError):
            logger.warning("ignoring an unreadable cdc-replicator message")
            return []
        op = payload.get("op")
        if op == "resync":
            keys = payload.get("keys") or {}
            self._start(
                str(payload.get("request")),
                [str(t) for t in payload.get("tables", [])],
                {str(t): tuple(tuple(str(v) for v in k) for k in ks) for t, ks in keys.items()},
            )
            return []
        table = self._active.get(TableId.parse(str(payload.get("table", ""))))
        if table is None or table.request != payload.get("request") or table.chunk is None:
            return []  # a watermark of a chunk lost in a restart, or of a finished re-sync
        if table.chunk.no != payload.get("chunk"):
            return []
        if op == "lw":
            table.chunk.window = True
            if table.low_watermark is None:
                table.low_watermark = commit_lsn
            return []
        if op == "hw":
            return self._inject(table, commit_lsn)
        return []

    def on_change(self, ev: RowChange) -> RowChange:
        """A change the stream carries, as it must be applied: inside an open chunk window its keys
        leave the chunk and its unchanged TOAST values come from the chunk (``engine.window``)."""
        table = self._active.get(ev.table)
        if table is None or table.chunk is None or not table.chunk.window:
            return ev
        kpos = table.schema.key_positions
        for row in (ev.new, ev.old):
            if row is not None:
                table.chunk.absent.discard(tuple(row[i] for i in kpos))
        return pass_window(table.chunk.rows, ev, kpos)

    def on_truncate(self, ev: Truncate) -> None:
        """A TRUNCATE the stream carries: an open chunk window of its tables loses every row."""
        for t in ev.tables:
            table = self._active.get(t)
            if table is not None and table.chunk is not None and table.chunk.window:
                table.chunk.rows.clear()

    def step(self) -> None:
        """Start the next chunk of every re-sync that has none in flight.

        A read that waiting can heal is raised (the daemon reconnects and reads the chunk again);
        any other failure ends only that re-sync, recorded as failed with its fix (the stream and
        the other tables go on, and a restart does not try it again).
        """
        for table in list(self._active.values()):
            if table.chunk is None:
                try:
                    self._read_chunk(table)
                except ReplicatorError as exc:
                    if exc.retryable:
                        raise
                    self._fail(table, exc)

    def _fail(self, table: _Table, exc: ReplicatorError) -> None:
        del self._active[table.schema.table]
        # progress of its earlier chunks waiting for their commit must not record it running again
        self._pending = [(at, r) for at, r in self._pending if r.table != table.schema.table]
        detail = exc.message + (f" (fix: {exc.hint})" if exc.hint else "")
        self._state.save_resync(self._slot, table.record("failed", detail))
        logger.error("live re-sync failed table=%s: %s", table.schema.table, detail)

    def committed(self, end: Lsn) -> None:
        """Every transaction ending at or before ``end`` is in Delta: save what they covered."""
        keep: list[tuple[Lsn, ResyncRecord]] = []
        for at, rec in self._pending:
            if at < end:
                self._state.save_resync(self._slot, rec)
                if rec.state == "done":
                    logger.info(
                        "live re-sync done table=%s chunks=%d rows=%d", rec.table, rec.chunks, rec.rows
                    )
            else:
                keep.append((at, rec))
        self._pending = keep

    # ---- internals -------------------------------------------------------------------------------

    def _start(
        self, request: str, names: list[str], keys: Mapping[str, tuple[tuple[str, ...], ...]] | None = None
    ) -> None:
        for name in names:
            tid = TableId.parse(name)
            schema = self._schemas.get(tid)
            if schema is None:
                logger.warning("live re-sync request for %s ignored: not a configured table", name)
                continue
            current = self._active.get(tid)
            if current is not None and current.request == request:
                continue  # the same request seen again after a restart
            done = [r for r in self._state.resyncs(self._slot) if r.table == tid and r.request == request]
            if done and done[0].state != "running":
                continue
            if self._is_paused(tid):
                rec = _Table(schema, request).record(
                    "failed",
                    "the table is paused by a schema change: stop the daemon, then run snapshot --table",
                )
                self._state.save_resync(self._slot, rec)
                logger.error(
                    "live re-sync of %s refused: the table is paused (stop the daemon, then snapshot)", tid
                )
                continue
            if not any(c.is_key for c in schema.columns) or (
                schema.replica_identity == "f" and all(c.is_key for c in schema.columns)
            ):
                rec = _Table(schema, request).record("failed", "a live re-sync needs a primary key")
                self._state.save_resync(self._slot, rec)
                logger.error(
                    "live re-sync of %s refused: it has no primary key (stop the daemon and run snapshot)",
                    tid,
                )
                continue
            table = _Table(
                schema, request, key_types=self._key_types(schema), keys=(keys or {}).get(str(tid))
            )
            self._active[tid] = table
            self._state.save_resync(self._slot, table.record("running"))
            logger.info("live re-sync started table=%s request=%s", tid, request)

    def _read_chunk(self, table: _Table) -> None:
        if table.keys is not None:
            self._read_keys(table)
            return
        schema = table.schema
        no = table.chunks + 1
        key_cols = [c for c in schema.columns if c.is_key]
        keys = sql.SQL(", ").join(
            sql.SQL('{} collate "C"').format(sql.Identifier(c.name))
            if c.type_oid in TEXT_TYPE_OIDS
            else sql.Identifier(c.name)
            for c in key_cols
        )
        where: sql.Composable = sql.SQL("true")
        if table.next_key is not None:
            lits = sql.SQL(", ").join(
                sql.SQL('{}::{} collate "C"' if c.type_oid in TEXT_TYPE_OIDS else "{}::{}").format(
                    sql.Literal(v), sql.SQL(table.key_types[c.name])
                )
                for c, v in zip(key_cols, table.next_key, strict=True)
            )
            where = sql.SQL("({}) > ({})").format(keys, lits)
        # the stream's text form (so window keys match), aliased: "order by id" would otherwise sort
        # by the output column of the same name
        cols = sql.SQL(", ").join(
            sql.SQL("{} as {}").format(output_text(c.name, c.type_oid), sql.Identifier(f"__c{i}"))
            for i, c in enumerate(schema.columns)
        )
        query = sql.SQL("select {} from {} where {} order by {} limit {}").format(
            cols,
            sql.Identifier(schema.table.schema, schema.table.name),
            where,
            keys,
            sql.Literal(self._chunk_rows),
        )
        payload = {"request": table.request, "table": str(schema.table), "chunk": no}
        conn = self._connection()
        try:
            _emit(conn, {"op": "lw", **payload})
            rows = conn.execute(query).fetchall()
            failpoints.hit("resync_window")  # between the chunk's read and its HW (tests widen it)
            _emit(conn, {"op": "hw", **payload})
        except psycopg.Error as exc:
            self.close()
            raise pgerrors.from_exception(
                exc, context=f"live re-sync of {schema.table}: reading chunk {no} failed"
            ) from exc
        kpos = schema.key_positions
        data: dict[tuple[Value, ...], tuple[Value, ...]] = {}
        for r in rows:
            values = tuple(None if v is None else str(v).encode() for v in r)
            data[tuple(values[i] for i in kpos)] = values
        last_key = tuple(str(rows[-1][i]) for i in kpos) if rows else table.next_key
        table.chunk = _Chunk(no, data, last_key, last=len(rows) < self._chunk_rows)

    def _read_keys(self, table: _Table) -> None:
        """The next chunk of a re-sync of listed keys: those keys' rows, and which of them are gone."""
        schema = table.schema
        assert table.keys is not None
        no = table.chunks + 1
        size = min(self._chunk_rows, _KEYS_PER_CHUNK)
        wanted = table.keys[(no - 1) * size : no * size]
        key_cols = [c for c in schema.columns if c.is_key]
        kpos = schema.key_positions
        values = sql.SQL(", ").join(
            sql.SQL("({})").format(
                sql.SQL(", ").join(
                    sql.SQL("{}::{}").format(sql.Literal(v), sql.SQL(table.key_types[c.name]))
                    for c, v in zip(key_cols, k, strict=True)
                )
            )
            for k in wanted
        )
        names = sql.SQL(", ").join(sql.Identifier(c.name) for c in key_cols)
        # the listed keys in the stream's text form, so that window changes and deletes match them
        normal = sql.SQL("select {} from (values {}) as v({})").format(
            sql.SQL(", ").join(output_text(c.name, c.type_oid) for c in key_cols), values, names
        )
        cols = sql.SQL(", ").join(
            sql.SQL("{} as {}").format(output_text(c.name, c.type_oid), sql.Identifier(f"__c{i}"))
            for i, c in enumerate(schema.columns)
        )
        query = sql.SQL("select {} from {} where ({}) in ({})").format(
            cols, sql.Identifier(schema.table.schema, schema.table.name), names, values
        )
        payload = {"request": table.request, "table": str(schema.table), "chunk": no}
        conn = self._connection()
        try:
            listed = conn.execute(normal).fetchall() if wanted else []
            _emit(conn, {"op": "lw", **payload})
            rows = conn.execute(query).fetchall() if wanted else []
            _emit(conn, {"op": "hw", **payload})
        except psycopg.Error as exc:
            self.close()
            raise pgerrors.from_exception(
                exc, context=f"live re-sync of {schema.table}: reading keys of chunk {no} failed"
            ) from exc
        data: dict[tuple[Value, ...], tuple[Value, ...]] = {}
        for r in rows:
            row = tuple(None if v is None else str(v).encode() for v in r)
            data[tuple(row[i] for i in kpos)] = row
        absent: set[tuple[Value, ...]] = set()
        for r in listed:
            key: tuple[Value, ...] = tuple(None if v is None else str(v).encode() for v in r)
            if key not in data:
                absent.add(key)
        last = no * size >= len(table.keys)
        chunk = _Chunk(no, data, table.next_key, last=last, absent=absent)
        table.chunk = chunk

    def _inject(self, table: _Table, commit_lsn: Lsn) -> list[RowChange | ResyncCleanup]:
        chunk = table.chunk
        assert chunk is not None
        out: list[RowChange | ResyncCleanup] = [
            RowChange(table.schema.table, Op.SNAPSHOT, values) for values in chunk.rows.values()
        ]
        if chunk.absent:  # listed keys gone at the source (a re-sync of keys)
            kpos = table.schema.key_positions
            width = len(table.schema.columns)
            for key in sorted(chunk.absent):
                by_pos = dict(zip(kpos, key, strict=True))
                old = tuple(by_pos.get(i) for i in range(width))
                out.append(RowChange(table.schema.table, Op.DELETE, None, old))
        table.chunks = chunk.no
        table.rows += len(chunk.rows)
        table.next_key = chunk.last_key
        table.chunk = None
        if chunk.last:
            below = table.low_watermark or commit_lsn
            if table.keys is None:
                out.append(ResyncCleanup(table.schema.table, below))
            self._pending.append((commit_lsn, table.record("done")))
            del self._active[table.schema.table]
        else:
            self._pending.append((commit_lsn, replace(table.record("running"))))
        return out
