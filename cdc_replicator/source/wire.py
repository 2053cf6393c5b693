"""The pgoutput wire messages as frozen dataclasses (protocol 1 + 2), and the tags that name them. Pure.

:mod:`cdc_replicator.source.pgoutput` parses bytes into these; :mod:`cdc_replicator.source.decoding`
turns them into model events. Fields keep the wire's values: LSNs are unsigned 64-bit integers,
timestamps signed microseconds since 2000-01-01 UTC (``cdc_replicator.model.pg_time_to_datetime``
converts them), and ``xid`` of a message that may be streamed is None outside a stream.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TypeAlias

from cdc_replicator.model import Value

__all__ = [
    "Begin",
    "Commit",
    "Delete",
    "Insert",
    "LogicalMessage",
    "Message",
    "MessageTag",
    "Origin",
    "Relation",
    "RelationColumn",
    "StreamAbort",
    "StreamCommit",
    "StreamStart",
    "StreamStop",
    "Truncate",
    "Tuple",
    "Type",
    "Update",
]

# One row as the server sent it, in the Relation's column order.
Tuple: TypeAlias = tuple[Value, ...]


class MessageTag(enum.IntEnum):
    """The first byte of each message this decoder understands."""

    BEGIN = ord("B")
    COMMIT = ord("C")
    ORIGIN = ord("O")
    RELATION = ord("R")
    TYPE = ord("Y")
    INSERT = ord("I")
    UPDATE = ord("U")
    DELETE = ord("D")
    TRUNCATE = ord("T")
    MESSAGE = ord("M")
    STREAM_START = ord("S")
    STREAM_STOP = ord("E")
    STREAM_COMMIT = ord("c")
    STREAM_ABORT = ord("A")


# ---- messages -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Begin:
    """A transaction starts. ``final_lsn`` is the LSN of its commit record (= Commit.commit_lsn)."""

    final_lsn: int
    commit_time: int  # microseconds since 2000-01-01 UTC
    xid: int


@dataclass(frozen=True, slots=True)
class Commit:
    """The transaction committed; ``end_lsn`` is just past its commit record (what may be confirmed)."""

    flags: int  # currently always 0
    commit_lsn: int
    end_lsn: int
    commit_time: int  # microseconds since 2000-01-01 UTC


@dataclass(frozen=True, slots=True)
class Origin:
    """The current transaction was replicated from ``name``, where it committed at ``commit_lsn``."""

    commit_lsn: int
    name: str


@dataclass(frozen=True, slots=True)
class RelationColumn:
    """One column of a Relation; ``flags`` bit 1 marks a replica identity (key) column."""

    flags: int
    name: str
    type_oid: int
    type_modifier: int  # atttypmod, -1 when the type has none

    @property
    def is_key(self) -> bool:
        return bool(self.flags & 1)


@dataclass(frozen=True, slots=True)
class Relation:
    """The layout of a table's tuples from now on.

    ``namespace`` is kept as sent: the server sends "" for ``pg_catalog``. ``replica_identity`` is
    ``relreplident``: 'd' default (primary key), 'n' nothing, 'f' full, 'i' index. With 'f' every
    column is flagged as a key column.
    """

    xid: int | None
    relation_id: int
    namespace: str
    name: str
    replica_identity: str
    columns: tuple[RelationColumn, ...]


@dataclass(frozen=True, slots=True)
class Type:
    """A non-builtin column type. ``namespace`` "" means ``pg_catalog``.

    For a domain, ``type_oid`` is the domain's OID but ``namespace``/``name`` name its base type.
    """

    xid: int | None
    type_oid: int
    namespace: str
    name: str


@dataclass(frozen=True, slots=True)
class Insert:
    """A new row."""

    xid: int | None
    relation_id: int
    new: Tuple


@dataclass(frozen=True, slots=True)
class Update:
    """A changed row.

    ``old_kind`` 'K': ``old`` holds the old key columns (the others None), sent when the key changed
    (or a key value is stored out of line); 'O': ``old`` is the whole old row (REPLICA IDENTITY FULL);
    None: no old row was sent. ``old`` and ``new`` always have the same width.
    """

    xid: int | None
    relation_id: int
    old_kind: str | None
    old: Tuple | None
    new: Tuple


@dataclass(frozen=True, slots=True)
class Delete:
    """A deleted row: its key ('K', other columns None) or the whole old row ('O')."""

    xid: int | None
    relation_id: int
    old_kind: str
    old: Tuple


@dataclass(frozen=True, slots=True)
class Truncate:
    """TRUNCATE of these relations. ``options`` bit 1: CASCADE, bit 2: RESTART IDENTITY."""

    xid: int | None
    options: int
    relation_ids: tuple[int, ...]

    @property
    def cascade(self) -> bool:
        return bool(self.options & 1)

    @property
    def restart_identity(self) -> bool:
        return bool(self.options & 2)


@dataclass(frozen=True, slots=True)
class LogicalMessage:
    """A ``pg_logical_emit_message`` record; ``flags`` bit 1 means transactional.

    A non-transactional message arrives outside any Begin/Commit pair. ``lsn`` is the *end* of the
    message's WAL record (the decoder passes ``endptr``), so it can equal the Commit's ``commit_lsn``.
    """

    xid: int | None
    flags: int
    lsn: int
    prefix: str
    content: bytes

    @property
    def transactional(self) -> bool:
        return bool(self.flags & 1)


@dataclass(frozen=True, slots=True)
class StreamStart:
    """A block of changes of in-progress transaction ``xid`` follows, up to Stream Stop."""

    xid: int
    first_segment: bool


@dataclass(frozen=True, slots=True)
class StreamStop:
    """The current block of streamed changes ends."""


@dataclass(frozen=True, slots=True)
class StreamCommit:
    """The streamed transaction ``xid`` committed; LSNs and time as in Commit."""

    xid: int
    flags: int
    commit_lsn: int
    end_lsn: int
    commit_time: int


@dataclass(frozen=True, slots=True)
class StreamAbort:
    """Streamed changes are void: the whole transaction when ``subxid == xid``, else that subtransaction.

    ``abort_lsn``/``abort_time`` are sent only by protocol 4 with ``streaming = parallel``.
    """

    xid: int
    subxid: int
    abort_lsn: int | None = None
    abort_time: int | None = None


Message: TypeAlias = (
    Begin
    | Commit
    | Origin
    | Relation
    | Type
    | Insert
    | Update
    | Delete
    | Truncate
    | LogicalMessage
    | StreamStart
    | StreamStop
    | StreamCommit
    | StreamAbort
)
