"""Sources of change events and the contract every source keeps."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

from cdc_replicator.model import Lsn, SourceEvent

__all__ = ["Source"]


class Source(Protocol):
    """Emits change events in commit order and takes confirmations back.

    Ordering: transactions arrive whole (Begin, changes, Commit) in commit order; within one, in
    change order. Durability: ``confirm(upto)`` tells the source that every transaction ending at or
    before ``upto`` is durably applied; the source may then release them. It is never called with a
    position that is not yet durable. Threads: ``events`` and ``confirm`` are called from one thread.
    """

    def events(self, idle_timeout: float) -> Iterator[SourceEvent | None]:
        """Yield events; yield None when nothing arrived for ``idle_timeout`` seconds."""
        ...

    def confirm(self, upto: Lsn) -> None:
        """Everything ending at or before ``upto`` is durably applied."""
        ...

    def close(self) -> None:
        """Stop reading and release the connection; pending confirmations are sent first."""
        ...
