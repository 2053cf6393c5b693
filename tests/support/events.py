"""Build source events for the pure stages (batching, planning) in a few readable lines.

Values are PostgreSQL text forms as bytes (``b"1"``), None for NULL, ``UNCHANGED`` for unchanged TOAST.
A transaction is written ``txn(100, insert(T, b"1", b"x"), ...)``: Begin, the changes, Commit, with
``commit_lsn`` 100 and ``end_lsn`` 100 + 8 unless given.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta

from cdc_replicator.engine.batching import Batcher
from cdc_replicator.model import (
    Begin,
    ChangeBatch,
    Column,
    Commit,
    Lsn,
    Op,
    RelationChanged,
    RowChange,
    TableId,
    TableSchema,
    Truncate,
    Value,
)

__all__ = [
    "INT4",
    "INT8",
    "TEXT",
    "FakeClock",
    "begin",
    "commit",
    "commit_time",
    "delete",
    "end_of",
    "feed",
    "insert",
    "schema",
    "truncate",
    "txn",
    "update",
]

INT8, INT4, TEXT = 20, 23, 25
T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)

Event = Begin | RowChange | Truncate | Commit | RelationChanged


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def schema(table: TableId, *columns: tuple[str, int], key: Sequence[str] = ("id",)) -> TableSchema:
    """``schema(T, ("id", INT8), ("doc", TEXT))``: key columns flagged by name."""
    return TableSchema(table, tuple(Column(name, oid, -1, name in key) for name, oid in columns))


def commit_time(commit_lsn: int) -> datetime:
    """The commit time the helpers give the transaction committed at ``commit_lsn``."""
    return T0 + timedelta(seconds=commit_lsn)


def end_of(commit_lsn: int) -> Lsn:
    """The end LSN ``txn``/``commit`` give a transaction by default."""
    return Lsn(commit_lsn + 8)


def begin(commit_lsn: int, xid: int = 700) -> Begin:
    return Begin(xid, Lsn(commit_lsn), commit_time(commit_lsn))


def commit(commit_lsn: int, end_lsn: int | None = None) -> Commit:
    end = end_of(commit_lsn) if end_lsn is None else Lsn(end_lsn)
    return Commit(Lsn(commit_lsn), end, commit_time(commit_lsn))


def insert(table: TableId, *new: Value) -> RowChange:
    return RowChange(table, Op.INSERT, new)


def update(table: TableId, *new: Value, old: tuple[Value, ...] | None = None) -> RowChange:
    return RowChange(table, Op.UPDATE, new, old)


def delete(table: TableId, *old: Value) -> RowChange:
    """``old`` is the whole old tuple as pgoutput sends it: the key, None for the other columns."""
    return RowChange(table, Op.DELETE, None, old)


def truncate(*tables: TableId) -> Truncate:
    return Truncate(tables)


def txn(
    commit_lsn: int, *changes: RowChange | Truncate, end_lsn: int | None = None, xid: int = 700
) -> list[Event]:
    return [begin(commit_lsn, xid), *changes, commit(commit_lsn, end_lsn)]


def feed(batcher: Batcher, *events: Event | Iterable[Event]) -> list[ChangeBatch]:
    """Add events (or lists of them) in order; return the batches that closed on the way."""
    out: list[ChangeBatch] = []
    for item in events:
        for ev in [item] if isinstance(item, Event) else item:
            batch = batcher.add(ev)
            if batch is not None:
                out.append(batch)
    return out
