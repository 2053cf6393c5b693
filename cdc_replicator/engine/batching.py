"""Group whole transactions into ChangeBatches: commit order, last change per key, bounded size. Pure.

Rules (the ones a replay after a crash relies on):
- A batch closes only at a transaction boundary, when a row, byte or time limit is reached; a single
  transaction larger than ``max_rows`` (or ``max_bytes``) on its own is cut into several batches, each
  marked with ``PartialTxn(commit_lsn, seq)`` so a table can tell which of its changes it already
  holds. A transaction that fits is never cut, so a batch holds less than twice the limits.
- ``seq`` numbers the row changes of a transaction from 1 in stream order; the server sends a
  committed transaction the same way every time, so (commit LSN, seq) names a change across replays.
  The decoder assigns it counting changes of every relation, configured or not, so it does not
  shift when the table list changes between a crash and the restart.
- Per table, only the last change of each key survives (stream order, not per-change WAL LSN).
  An UPDATE that changes the key first deletes the old key. A column sent as "unchanged TOAST"
  takes the value of an earlier change of the same key in the batch, or stays marked so the merge
  keeps the target's value (where the target has no row, the sink reads it from the source). TRUNCATE drops what the table buffered and marks the patch.
- Changes that a table already holds (``TablePosition.holds``) are dropped on the way in.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime

import pyarrow as pa

from cdc_replicator.errors import DecodeError
from cdc_replicator.model import (
    MOVED_PREFIX,
    UNCHANGED,
    UNCHANGED_PREFIX,
    Begin,
    ChangeBatch,
    Commit,
    Lsn,
    Op,
    PartialTxn,
    RelationChanged,
    ResyncCleanup,
    RowChange,
    TableId,
    TablePatch,
    TablePosition,
    TableSchema,
    Truncate,
    Value,
)

__all__ = ["BatchLimits", "Batcher"]

_TS_UTC = pa.timestamp("us", tz="UTC")


@dataclass(frozen=True, slots=True)
class BatchLimits:
    max_rows: int = 100_000
    max_bytes: int = 256 * 1024 * 1024
    max_seconds: float = 2.0


MIN_SECONDS = 0.5  # the shortest time limit ``Batcher.adapt`` sets
MERGE_SHARE_INVERSE = 3.0  # a batch stays open for (at least) this many times its predecessor's apply


@dataclass(slots=True)
class _TableBuffer:
    schema: TableSchema
    rows: list[tuple[Value, ...]]  # one tuple per change; turned into columns once, by ``patch``
    ops: list[str] = field(default_factory=list)
    lsns: list[int] = field(default_factory=list)
    times: list[datetime] = field(default_factory=list)
    last: dict[tuple[Value, ...], int] = field(default_factory=dict)
    truncate: bool = False
    truncate_lsn: int = 0
    truncate_time: datetime | None = None
    cleanup_below: int = 0
    changes: int = 0
    unchanged: set[int] = field(default_factory=set)
    moved: dict[int, tuple[Value, ...]] = field(default_factory=dict)  # row → old key, when unchanged stays

    @classmethod
    def empty(cls, schema: TableSchema) -> _TableBuffer:
        return cls(schema, [])

    def clear(self) -> None:
        self.rows = []
        self.ops.clear()
        self.lsns.clear()
        self.times.clear()
        self.last.clear()
        self.unchanged.clear()
        self.moved.clear()

    def add(
        self,
        op: Op,
        key: tuple[Value, ...],
        values: tuple[Value, ...],
        lsn: int,
        at: datetime,
        prev: int | None = None,
        moved_from: tuple[Value, ...] | None = None,
    ) -> None:
        """Append a change; unchanged TOAST values come from ``prev`` (default: the key's last change).

        ``moved_from`` is the old key of an UPDATE that moved the row: values still unchanged after
        that are the old key's row's in the target, so the patch records the old key for the sink.
        """
        if prev is None:
            prev = self.last.get(key)
        if prev is not None and UNCHANGED in values:
            before = self.rows[prev]
            gone = self.ops[prev] == Op.DELETE
            values = tuple(before[i] if v is UNCHANGED and not gone else v for i, v in enumerate(values))
        idx = len(self.ops)
        if UNCHANGED in values:
            # the value still lives in the target row of the key this row moved from; through a chain
            # of moves or later updates inside the batch (k1 → k2, k2 updated, k2 → k3) that is k1
            origin = self.moved.get(prev) if prev is not None else None
            if origin is None:
                origin = moved_from
            if origin is not None:
                self.moved[idx] = origin
            self.unchanged.update(i for i, v in enumerate(values) if v is UNCHANGED)
        self.rows.append(values)
        self.ops.append(op.value)
        self.lsns.append(lsn)
        self.times.append(at)
        self.last[key] = idx
        self.changes += 1

    def patch(self) -> TablePatch:
        keep = sorted(self.last.values())
        names = self.schema.column_names
        arrays: dict[str, pa.Array] = {}
        unchanged_names: list[str] = []
        rows = self.rows
        columns = list(zip(*[rows[j] for j in keep], strict=True)) if keep else [()] * len(names)
        for i, name in enumerate(names):
            values = list(columns[i])
            if i in self.unchanged:
                flags = [v is UNCHANGED for v in values]
                if any(flags):
                    unchanged_names.append(name)
                    arrays[UNCHANGED_PREFIX + name] = pa.array(flags, pa.bool_())
                values = [None if v is UNCHANGED else v for v in values]
            arrays[name] = pa.array(values, pa.binary())
        moved: dict[str, pa.Array] = {}
        if any(j in self.moved for j in keep):
            for ki, kname in enumerate(self.schema.key):
                vals = [self.moved[j][ki] if j in self.moved else None for j in keep]
                moved[MOVED_PREFIX + kname] = pa.array(vals, pa.binary())
        rows = pa.table(
            {
                **{n: arrays[n] for n in names},
                "_cdc_lsn": pa.array([self.lsns[j] for j in keep], pa.int64()),
                "_cdc_op": pa.array([self.ops[j] for j in keep], pa.string()),
                "_cdc_committed_at": pa.array([self.times[j] for j in keep], _TS_UTC),
                **{UNCHANGED_PREFIX + n: arrays[UNCHANGED_PREFIX + n] for n in unchanged_names},
                **moved,
            }
        )
        return TablePatch(
            self.schema,
            rows,
            self.truncate,
            tuple(unchanged_names),
            self.changes,
            self.truncate_lsn,
            self.truncate_time,
            self.cleanup_below,
        )


class Batcher:
    """Feed it source events in order; it returns a ChangeBatch whenever one closes."""

    def __init__(
        self,
        limits: BatchLimits,
        schemas: Mapping[TableId, TableSchema],
        positions: Mapping[TableId, TablePosition] | None = None,
        *,
        start: Lsn = Lsn.ZERO,
        clock: Callable[[], float],
    ) -> None:
        self._limits = limits
        self._seconds = limits.max_seconds  # the time limit in force (``adapt``)
        self._schemas = dict(schemas)
        self._positions = dict(positions or {})
        self._clock = clock
        self._busy: Callable[[], bool] = _never  # the previous batch is still being applied
        self._buffers: dict[TableId, _TableBuffer] = {}
        self._rows = 0
        self._bytes = 0
        self._opened_at: float | None = None  # clock when the batch got its first transaction
        self._end: Lsn | None = None  # end of the last complete transaction in the open batch
        self._last_end = start  # end of the last complete transaction seen at all
        self._txns = 0
        self._last_commit_time: datetime | None = None
        self._partial: PartialTxn | None = None  # set while a cut transaction spans batches
        self._txn: Begin | None = None
        self._seq = 0
        self._txn_rows = 0  # rows and bytes of the open transaction since its Begin or last cut
        self._txn_bytes = 0
        self._skip: frozenset[TableId] = frozenset()
        self._batch_id = 0

    # ---- state ---------------------------------------------------------------------------

    @property
    def in_transaction(self) -> bool:
        return self._txn is not None

    @property
    def idle(self) -> bool:
        """Nothing is open and nothing is waiting to be applied."""
        return self._txn is None and self._end is None and not self._buffers

    @property
    def last_end(self) -> Lsn:
        """End LSN of the last complete transaction seen (everything before it has been added)."""
        return self._last_end

    def schema(self, table: TableId) -> TableSchema | None:
        return self._schemas.get(table)

    # ---- events ---------------------------------------------------------------------------

    def add(
        self, event: Begin | RowChange | Truncate | Commit | RelationChanged | ResyncCleanup
    ) -> ChangeBatch | None:
        if isinstance(event, RowChange):
            return self._change(event)
        if isinstance(event, Begin):
            if self._txn is not None:
                raise DecodeError(f"Begin of xid {event.xid} inside the open xid {self._txn.xid}")
            self._txn = event
            self._seq = 0
            self._txn_rows = 0
            self._txn_bytes = 0
            if self._opened_at is None:
                self._opened_at = self._clock()
            self._skip = frozenset(
                t
                for t, p in self._positions.items()
                if event.commit_lsn < p.lsn
                or (p.partial is not None and p.partial.commit_lsn == event.commit_lsn)
            )
            return None
        if isinstance(event, Commit):
            txn = self._require_txn("Commit")
            if event.commit_lsn != txn.commit_lsn:
                raise DecodeError(f"Commit at {event.commit_lsn} does not match Begin at {txn.commit_lsn}")
            self._txn = None
            self._partial = None
            self._end = event.end_lsn
            self._last_end = event.end_lsn
            self._txns += 1
            self._last_commit_time = event.commit_time
            if self._full() or self._expired():
                return self._close()
            return None
        if isinstance(event, Truncate):
            txn = self._require_txn("Truncate")
            self._seq = event.seq or self._seq + 1
            for table in event.tables:
                if table in self._skip and self._positions[table].holds(txn.commit_lsn, self._seq):
                    continue
                buf = self._buffer(table)
                self._rows -= len(buf.ops)
                buf.clear()
                buf.truncate = True
                buf.truncate_lsn = txn.commit_lsn.value
                buf.truncate_time = txn.commit_time
                buf.changes += 1
            return None
        if isinstance(event, RelationChanged):
            return self._relation(event)
        if isinstance(event, ResyncCleanup):
            self._require_txn("re-sync cleanup")
            self._buffer(event.table).cleanup_below = event.below.value
            return None
        raise TypeError(f"unexpected event {type(event).__name__}")

    def poll(self) -> ChangeBatch | None:
        """Close the batch on time when no transaction is open (call it when the source is quiet)."""
        if self._txn is None and self._end is not None and self._expired():
            return self._close()
        return None

    def flush(self) -> ChangeBatch | None:
        """Close whatever complete transactions are pending (shutdown, idle confirm)."""
        if self._txn is None and self._end is not None:
            return self._close()
        return None

    def close_table(self, table: TableId) -> ChangeBatch | None:
        """Close the batch now if it holds anything of ``table`` (cut inside the open transaction).

        Used before the table's layout changes and before it is paused: its buffered changes go
        out in a batch of their own, so its position never covers changes it did not take.
        """
        buf = self._buffers.get(table)
        if buf is None or not (buf.ops or buf.truncate or buf.cleanup_below):
            return None
        return self._cut(self._txn) if self._txn is not None else self._close()

    def discard_open_transaction(self) -> None:
        """Forget the open transaction (the stream broke); only valid when nothing of it was emitted."""
        self._txn = None

    # ---- internals ------------------------------------------------------------------------

    def _require_txn(self, what: str) -> Begin:
        if self._txn is None:
            raise DecodeError(f"{what} outside a transaction")
        return self._txn

    def _relation(self, event: RelationChanged) -> ChangeBatch | None:
        """A table's layout changes: the rows buffered in the old layout are closed into a batch
        first (cut inside the open transaction when there is one), so no batch mixes layouts."""
        schema = event.schema
        old = self._schemas.get(schema.table)
        buf = self._buffers.get(schema.table)
        batch = None
        if buf is not None and old is not None and old.columns != schema.columns:
            batch = self.close_table(schema.table)
        self._schemas[schema.table] = schema
        buf = self._buffers.get(schema.table)
        if buf is not None:
            buf.schema = schema
        return batch

    def _buffer(self, table: TableId) -> _TableBuffer:
        buf = self._buffers.get(table)
        if buf is None:
            schema = self._schemas.get(table)
            if schema is None:
                raise DecodeError(f"change for {table} before its schema is known")
            buf = self._buffers[table] = _TableBuffer.empty(schema)
        return buf

    def _change(self, ch: RowChange) -> ChangeBatch | None:
        txn = self._require_txn("row change")
        self._seq = ch.seq or self._seq + 1
        if ch.table in self._skip and self._positions[ch.table].holds(txn.commit_lsn, self._seq):
            return None
        buf = self._buffer(ch.table)
        kpos = buf.schema.key_positions
        width = len(buf.schema.columns)
        lsn = txn.commit_lsn.value
        at = txn.commit_time
        for row, what in ((ch.new, "row"), (ch.old, "old row")):
            if row is not None and len(row) != width:
                raise DecodeError(f"{what} of {ch.table} has {len(row)} columns, expected {width}")
        rows = 1
        if ch.op is Op.DELETE:
            old = ch.old
            if old is None:
                raise DecodeError(f"delete on {ch.table} without an old key")
            key = tuple(old[i] for i in kpos)
            buf.add(Op.DELETE, key, tuple(v if i in kpos else None for i, v in enumerate(old)), lsn, at)
            size = _size(key)
        else:
            new = ch.new
            if new is None:
                raise DecodeError(f"{ch.op.name.lower()} on {ch.table} without a new row")
            key = tuple(new[i] for i in kpos)
            moved: int | None = None  # the buffered change of the old key, when the key changes
            moved_from: tuple[Value, ...] | None = None
            if ch.op is Op.UPDATE and ch.old is not None:
                old_key = tuple(ch.old[i] for i in kpos)
                if old_key != key and UNCHANGED not in old_key:
                    moved, moved_from = buf.last.get(old_key), old_key
                    stub = tuple(ch.old[i] if i in kpos else None for i in range(width))
                    buf.add(Op.DELETE, old_key, stub, lsn, at)
                    rows += 1
            buf.add(ch.op, key, new, lsn, at, prev=moved, moved_from=moved_from)
            size = _size(new)
        size += 16 * width
        self._rows += rows
        self._bytes += size
        self._txn_rows += rows
        self._txn_bytes += size
        if self._txn_rows >= self._limits.max_rows or self._txn_bytes >= self._limits.max_bytes:
            return self._cut(txn)
        return None

    def _cut(self, txn: Begin) -> ChangeBatch:
        """Close a batch inside a large transaction: its changes so far become a partial position."""
        self._partial = PartialTxn(txn.commit_lsn, self._seq)
        batch = self._close()
        self._txn_rows = 0
        self._txn_bytes = 0
        self._opened_at = self._clock()
        return batch

    def _full(self) -> bool:
        return self._rows >= self._limits.max_rows or self._bytes >= self._limits.max_bytes

    def _expired(self) -> bool:
        if self._opened_at is None or self._clock() - self._opened_at < self._seconds:
            return False
        return not self._busy()  # due, but the previous batch still merges: keep reading into it

    def hold_while(self, busy: Callable[[], bool]) -> None:
        """A batch due on time stays open while ``busy()`` (the previous batch is still applied).

        Closing it could not start its merge any sooner (one batch in flight), and a closed batch
        stops the reading; kept open it takes the changes that arrive meanwhile, so one merge
        does the work of several (a copy-on-write merge costs about the same whatever its size)
        and the lag is the merge time, not a queue of closed batches. Rows and bytes limits
        still close it: memory stays bounded.
        """
        self._busy = busy

    def adapt(self, apply_seconds: float) -> None:
        """Let the time limit follow what applying a batch costs.

        A batch closes on time after ``MERGE_SHARE_INVERSE`` × the last batch's apply time (at
        least ``MIN_SECONDS``, at most ``max_seconds``): cheap merges make short batches and low
        lag; expensive ones (a catch-up, big files) make batches big enough that merging takes at
        most about a third of the time. Rows and bytes limits are not affected.
        """
        cap = self._limits.max_seconds
        self._seconds = min(cap, max(min(MIN_SECONDS, cap), MERGE_SHARE_INVERSE * apply_seconds))

    def _close(self) -> ChangeBatch:
        self._batch_id += 1
        # a batch holding only the head of a large transaction ends where the last complete one did
        end = self._end if self._end is not None else self._last_end
        tables = {t: b.patch() for t, b in self._buffers.items() if b.ops or b.truncate or b.cleanup_below}
        batch = ChangeBatch(
            tables=tables,
            end=end,
            partial=self._partial,
            transactions=self._txns,
            last_commit_time=self._last_commit_time,
            batch_id=self._batch_id,
        )
        self._buffers.clear()
        self._rows = 0
        self._bytes = 0
        self._opened_at = None
        self._end = None
        self._txns = 0
        return batch


def _never() -> bool:
    return False


def _size(values: tuple[Value, ...]) -> int:
    """Bytes of the values (NULL and unchanged count 0): the common all-bytes row in one C call."""
    try:
        return sum(map(len, values))  # type: ignore[arg-type]
    except TypeError:
        return sum(len(v) for v in values if isinstance(v, bytes))
