"""Where changes land, and the contracts every sink keeps: ``Sink``, ``LoadSink``, ``OffsetStore``.

A table's position is committed *with* its data (one commit holds both), so the sink is also the
offset store: what ``OffsetStore`` returns is exactly what the tables durably hold. ``DeltaSink``
(``sink.delta``) is the real one; ``MemorySink`` (``sink.memory``) keeps tables in memory for the
engine's unit specs.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

import pyarrow as pa

from cdc_replicator.model import (
    KeyRange,
    Lsn,
    Position,
    TableId,
    TablePatch,
    TablePosition,
    TableSchema,
    WatermarkPosition,
)

__all__ = ["ApplyResult", "ChunkWritten", "Lake", "LoadSink", "OffsetStore", "Sink", "ToastReader"]


@dataclass(frozen=True, slots=True)
class ApplyResult:
    """What one commit of one table did."""

    table: TableId
    version: int
    inserted: int
    updated: int
    deleted: int
    truncated: bool
    toast_read: int = 0  # rows whose unchanged TOAST values were read from the source (Delta had no row)
    toast_unknown: int = 0  # rows left out: their unchanged TOAST values could not be known


class ToastReader(Protocol):
    """Reads rows' current values at the source by key: TOAST values the stream did not send.

    The sink asks it only for rows Delta has no row to keep those values from (a row lost behind
    the daemon's back, or moved from such a row). What it returns is at least as new as the change
    being applied (that change committed before it was streamed); a later change of those values
    carries them and is applied after. Threads: any (a batch's tables are applied side by side).
    """

    def read(self, schema: TableSchema, keys: pa.Table, columns: Sequence[str]) -> pa.Table:
        """The source's rows at ``keys`` (the key columns, PostgreSQL text as ``binary``): the key
        columns and ``columns``, in the same text form; a key the source no longer has is absent.
        Raises a ``SourceError`` when the source cannot be read."""
        ...


@dataclass(frozen=True, slots=True)
class ChunkWritten:
    """One chunk of a load in the table: rows, files added, and the (uncompressed) bytes written."""

    rows: int
    files: int
    bytes: int


class OffsetStore(Protocol):
    """Each table's position, read back from its own commits.

    Durability: a position returned here was committed in the same commit as the data it covers,
    so after any crash it says exactly what the table holds. Threads: any.
    """

    def position(self, table: TableId) -> TablePosition | None:
        """The logical stream's position of ``table``; None: no position (not loaded, or a load runs)."""
        ...

    def watermark(self, table: TableId) -> WatermarkPosition | None:
        """The watermark of a polled ``table`` (watermark mode), from the newest commit that carries
        one; None: no such commit (no table, or none among the recent commits)."""
        ...

    def watermark_seq(self, table: TableId) -> int:
        """A polled table's last commit sequence number (0: none); new commits must go above it."""
        ...


class Sink(Protocol):
    """Applies one table's patch with its position, as one atomic commit.

    Atomicity: rows and ``position`` land in one commit (both or neither), so a crash at any
    instant leaves the table at its old position or its new one. Idempotency: a position the table
    already covers is a no-op (returns None), and positions never move backwards, so replaying any
    suffix of the stream yields the same table. Ordering: within a patch the rows are the last
    change per key; a row never takes a change older (``_cdc_lsn``) than the one it holds.
    Durability: when ``apply`` returns, the commit is durable. Threads: calls for *different*
    tables may run at the same time (the tables of a batch are applied side by side); the caller
    never runs two calls for one table at once.
    """

    def exists(self, table: TableId) -> bool:
        """Whether the table exists in the sink (it is created by a load)."""
        ...

    def apply(
        self,
        patch: TablePatch,
        position: Position,
        *,
        batch_id: int = 0,
        metadata: Mapping[str, str] | None = None,
    ) -> ApplyResult | None:
        """Commit the patch and ``position`` together; None when the table already held it."""
        ...

    def evolve(self, schema: TableSchema) -> list[str]:
        """Let the table hold rows of ``schema`` (add columns, widen types); idempotent. Returns what changed."""
        ...


class LoadSink(Sink, Protocol):
    """A sink that also takes table loads (chunked, resumable) and answers reads the polling loop needs.

    A load clears the table's position first (``begin_load``), writes chunks (each one commit; a
    chunk written again replaces its key range, so a redo is a no-op) and records the position at
    the end (``finish_load``). Threads: chunks of one table may be written side by side.
    """

    def begin_load(
        self, schema: TableSchema, *, fresh: bool, watermark: WatermarkPosition | None = None
    ) -> None:
        """Clear the position (``watermark``: record this one instead); ``fresh`` empties the table too."""
        ...

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
        """Write one chunk as a single commit (with ``position`` when given)."""
        ...

    def finish_load(self, schema: TableSchema, position: Lsn) -> None:
        """Record the load's position: the table holds everything before it."""
        ...

    def row_count(self, table: TableId) -> int | None:
        """Rows in the table now (None: no table)."""
        ...

    def keys_in_range(self, schema: TableSchema, key_range: KeyRange) -> pa.Table:
        """The key columns of the table's rows in ``key_range``."""
        ...


class Lake(LoadSink, OffsetStore, Protocol):
    """A ``LoadSink`` that is its own ``OffsetStore`` (positions live in the tables' commits): ``DeltaSink``."""
