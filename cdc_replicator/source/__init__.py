"""Sources of change events, and the contracts they keep: ``Source`` (a stream) and ``PollingSource``.

``LogicalSource`` (``source.logical``) streams a pgoutput replication slot; ``WatermarkSource``
(``source.watermark``) polls tables of a (read replica) database with high-watermark queries.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from typing import Protocol

from cdc_replicator.model import (
    Lsn,
    Page,
    Poll,
    SourceEvent,
    TableId,
    TableSchema,
    WatermarkPosition,
    WatermarkTable,
)

__all__ = ["PollingSource", "Source"]


class Source(Protocol):
    """A stream of change events in commit order that takes confirmations back.

    Ordering: transactions arrive whole (Begin, changes, Commit) in commit order; within one, in
    change order; a Relation message comes before the first change in its layout. Replay: after a
    restart from ``start`` every transaction that ends after it comes again, the same way (the
    consumer skips what it already holds). Durability: ``confirm(upto)`` says every transaction
    ending at or before ``upto`` is durably applied; the source may then release them; it is never
    called with a position that is not durable yet, and never moves back. Threads: ``open``,
    ``events``, ``confirm`` and ``close`` are called from one thread, the one that owns the source.
    """

    def open(self) -> None:
        """Connect and start streaming; raises what the server said."""
        ...

    def events(self, idle_timeout: float) -> Iterator[SourceEvent | None]:
        """Yield events; yield None when nothing arrived for ``idle_timeout`` seconds."""
        ...

    def confirm(self, upto: Lsn) -> None:
        """Everything ending at or before ``upto`` is durably applied."""
        ...

    def close(self) -> None:
        """Stop reading and release the connection; pending confirmations are sent first."""
        ...


class PollingSource(Protocol):
    """Tables read by high-watermark queries (watermark mode): nothing is written to the database.

    Ordering: one poll reads one table in one snapshot: the pending ranges' late rows first, then
    the rows after the watermark in (cursor, key) order, page by page. Idempotency: reading a range
    again returns the same rows or newer versions of them (the sink's merge makes a re-read safe).
    Threads: one caller thread.
    """

    def describe(self, table: TableId, cursor: Sequence[str], delete_column: str) -> TableSchema:
        """The table's schema; checks its primary key and that the named columns exist."""
        ...

    def is_replica(self) -> bool: ...

    def poll(self, t: WatermarkTable, position: WatermarkPosition) -> AbstractContextManager[Poll]:
        """One poll of ``t`` after ``position``; its pages are read inside the ``with`` block."""
        ...

    def key_page(self, t: WatermarkTable, lo: tuple[str, ...] | None, limit: int) -> list[tuple[str, ...]]:
        """Up to ``limit`` primary keys (text forms) at or after ``lo``, in key order."""
        ...

    def rows_by_key(
        self, t: WatermarkTable, keys: Sequence[tuple[str, ...]], *, upto: tuple[str, ...] | None = None
    ) -> Page:
        """The current rows with these keys; ``upto``: only rows at or below this watermark."""
        ...

    def close(self) -> None: ...
