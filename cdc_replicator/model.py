"""Value types shared by every stage: positions, tables, changes and batches. Imports nothing from the package."""

from __future__ import annotations

import enum
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar, Final

import pyarrow as pa

__all__ = [
    "VerifyResult",
    "MOVED_PREFIX",
    "UNCHANGED",
    "UNCHANGED_PREFIX",
    "Begin",
    "ChangeBatch",
    "ColumnSelection",
    "Column",
    "Commit",
    "Keepalive",
    "KeyRange",
    "Lsn",
    "Op",
    "Page",
    "PartialTxn",
    "PendingRange",
    "Poll",
    "Position",
    "RelationChanged",
    "ResyncCleanup",
    "SourceMessage",
    "RowChange",
    "SourceEvent",
    "TableId",
    "TablePatch",
    "TablePosition",
    "TableSchema",
    "Truncate",
    "Unchanged",
    "Value",
    "WatermarkPosition",
    "WatermarkTable",
    "XidSnapshot",
    "pg_time_to_datetime",
]

_LSN_RE = re.compile(r"^([0-9A-Fa-f]{1,8})/([0-9A-Fa-f]{1,8})$")
PG_EPOCH: Final = datetime(2000, 1, 1, tzinfo=UTC)


def pg_time_to_datetime(micros: int) -> datetime:
    """Convert a wire timestamp (microseconds since 2000-01-01 UTC) to an aware datetime."""
    return PG_EPOCH + timedelta(microseconds=micros)


@dataclass(frozen=True, slots=True, order=True)
class Lsn:
    """A WAL position. ``Lsn.parse("16/B374D848")`` and ``str(lsn)`` round-trip."""

    value: int

    ZERO: ClassVar[Lsn]

    @classmethod
    def parse(cls, text: str) -> Lsn:
        m = _LSN_RE.match(text.strip())
        if m is None:
            raise ValueError(f"not an LSN: {text!r} (expected the form 16/B374D848)")
        return cls((int(m.group(1), 16) << 32) | int(m.group(2), 16))

    def __str__(self) -> str:
        return f"{self.value >> 32:X}/{self.value & 0xFFFFFFFF:X}"

    def __int__(self) -> int:
        return self.value


Lsn.ZERO = Lsn(0)


@dataclass(frozen=True, slots=True, order=True)
class TableId:
    """A source table, schema-qualified."""

    schema: str
    name: str

    @classmethod
    def parse(cls, text: str) -> TableId:
        schema, dot, name = text.partition(".")
        if not dot:
            return cls("public", text)
        if not schema or not name or "." in name:
            raise ValueError(f"not a table name: {text!r} (expected schema.table)")
        return cls(schema, name)

    def __str__(self) -> str:
        return f"{self.schema}.{self.name}"


@dataclass(frozen=True, slots=True)
class Column:
    """One source column as the catalog or a pgoutput Relation message describes it."""

    name: str
    type_oid: int
    type_modifier: int = -1
    is_key: bool = False


@dataclass(frozen=True, slots=True)
class TableSchema:
    """A source table's columns in attribute order, its key columns and replica identity."""

    table: TableId
    columns: tuple[Column, ...]
    replica_identity: str = "d"  # d default (pk), f full, i index, n nothing
    # derived once (the batcher asks for the key positions of every change)
    key: tuple[str, ...] = field(init=False, repr=False, compare=False)
    key_positions: tuple[int, ...] = field(init=False, repr=False, compare=False)
    column_names: tuple[str, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "key", tuple(c.name for c in self.columns if c.is_key))
        object.__setattr__(self, "key_positions", tuple(i for i, c in enumerate(self.columns) if c.is_key))
        object.__setattr__(self, "column_names", tuple(c.name for c in self.columns))


@dataclass(frozen=True, slots=True)
class ColumnSelection:
    """Which columns of a table are replicated: ``only`` these (empty = all), minus ``excluded``."""

    only: frozenset[str] = frozenset()
    excluded: frozenset[str] = frozenset()

    @property
    def everything(self) -> bool:
        return not self.only and not self.excluded

    def keeps(self, name: str) -> bool:
        return (not self.only or name in self.only) and name not in self.excluded

    def apply(self, schema: TableSchema) -> TableSchema:
        return TableSchema(
            schema.table, tuple(c for c in schema.columns if self.keeps(c.name)), schema.replica_identity
        )


class Op(enum.StrEnum):
    """What a change does to a row; the value is what ``_cdc_op`` holds in Delta."""

    SNAPSHOT = "r"
    INSERT = "c"
    UPDATE = "u"
    DELETE = "d"


class Unchanged(enum.Enum):
    """Marker for a TOASTed column that pgoutput sent as 'unchanged': keep the value the target has."""

    TOKEN = 0

    def __repr__(self) -> str:
        return "UNCHANGED"


UNCHANGED: Final = Unchanged.TOKEN

# A column value as the stream carries it: PostgreSQL's text output (bytes), NULL, or unchanged TOAST.
Value = bytes | None | Unchanged


@dataclass(frozen=True, slots=True, order=True)
class PartialTxn:
    """Inside one large transaction: its changes up to ``seq`` (inclusive) are applied."""

    commit_lsn: Lsn
    seq: int


@dataclass(frozen=True, slots=True)
class TablePosition:
    """What a Delta table durably holds: every transaction ending at or before ``lsn``, plus ``partial``.

    ``lsn`` is the end LSN of the last fully applied transaction: a transaction whose commit LSN is
    below it is already in the table.
    """

    lsn: Lsn
    partial: PartialTxn | None = None

    def holds(self, commit_lsn: Lsn, seq: int) -> bool:
        """True when the change ``seq`` of the transaction committed at ``commit_lsn`` is applied."""
        if commit_lsn < self.lsn:
            return True
        p = self.partial
        return p is not None and p.commit_lsn == commit_lsn and seq <= p.seq

    def covers(self, other: TablePosition) -> bool:
        """True when everything a batch ending at ``other`` carries is already held."""
        if other.partial is None:
            return self.lsn >= other.lsn
        p = other.partial
        return self.holds(p.commit_lsn, p.seq) and self.lsn >= other.lsn


@dataclass(frozen=True, slots=True)
class XidSnapshot:
    """``pg_current_snapshot()``: xids below ``xmin`` are finished, ``xip`` were in progress."""

    xmin: int
    xmax: int
    xip: tuple[int, ...]

    @classmethod
    def parse(cls, text: str) -> XidSnapshot:
        xmin, xmax, xip = text.split(":")
        return cls(int(xmin), int(xmax), tuple(int(x) for x in xip.split(",") if x))

    def finished(self, xid: int) -> bool:
        """True when transaction ``xid`` (older than this snapshot's xmax) is no longer running."""
        return xid < self.xmin or (xid < self.xmax and xid not in self.xip)


@dataclass(frozen=True, slots=True)
class PendingRange:
    """A poll's range that late rows may still land in: (``after``, ``upto``] of (cursor..., key...)."""

    after: tuple[str, ...] | None  # None: from the start of the table
    upto: tuple[str, ...]
    snapshot: XidSnapshot
    at: float  # wall-clock seconds of the poll

    def to_json(self) -> dict[str, Any]:
        s = self.snapshot
        return {
            "after": self.after,
            "upto": self.upto,
            "xmin": s.xmin,
            "xmax": s.xmax,
            "xip": s.xip,
            "at": self.at,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> PendingRange:
        after = d.get("after")
        return cls(
            tuple(after) if after is not None else None,
            tuple(d["upto"]),
            XidSnapshot(int(d["xmin"]), int(d["xmax"]), tuple(int(x) for x in d["xip"])),
            float(d["at"]),
        )


@dataclass(frozen=True, slots=True)
class WatermarkPosition:
    """What a polled table (watermark mode) holds: every row up to ``read`` (cursor..., key...) is
    applied; rows may still land late in the ``pending`` ranges, which polls keep watching.

    ``seq`` orders the table's commits (strictly increasing; the Delta transaction version).
    Its JSON form travels in the table's commit metadata and in the state store.
    """

    read: tuple[str, ...] | None = None
    pending: tuple[PendingRange, ...] = ()
    seq: int = 0

    def to_json(self) -> str:
        return json.dumps(
            {"read": self.read, "pending": [p.to_json() for p in self.pending], "seq": self.seq},
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, text: str) -> WatermarkPosition:
        d = json.loads(text)
        read = d.get("read")
        return cls(
            tuple(read) if read is not None else None,
            tuple(PendingRange.from_json(p) for p in d.get("pending", [])),
            int(d.get("seq", 0)),
        )


# What a table holds: a logical stream's position, or a polled table's watermark.
Position = TablePosition | WatermarkPosition


# ---- what a polling source reads (watermark mode) ------------------------------------------------


@dataclass(frozen=True, slots=True)
class WatermarkTable:
    """One polled table: its schema (key from the catalog), cursor columns and options."""

    schema: TableSchema
    cursor: tuple[str, ...]
    delete_column: str = ""
    page_size: int = 10_000
    soft_delete: bool = False

    @property
    def order(self) -> tuple[str, ...]:
        """Cursor columns, then the key columns not already among them."""
        return self.cursor + tuple(k for k in self.schema.key if k not in self.cursor)


@dataclass(frozen=True, slots=True)
class Page:
    """Rows read from one table as PostgreSQL text (``binary`` columns) plus ``_cdc_*`` columns."""

    rows: pa.Table
    last: tuple[str, ...] | None  # (cursor..., key...) of the last row of a forward page
    late: bool  # rows found behind the watermark


@dataclass(frozen=True, slots=True)
class Poll:
    """One poll of one table in one snapshot: the snapshot, and its pages (late rows first)."""

    snapshot: XidSnapshot
    wal_position: Lsn  # the database's WAL position the snapshot reflects (replay position on a replica)
    replica_lag_seconds: float | None
    pages: Iterator[Page]


@dataclass(frozen=True, slots=True)
class KeyRange:
    """A chunk of a table: keys (in key-column order, PostgreSQL text forms) with lo <= key < hi.

    ``None`` bounds are open. For a table without a primary key the chunk is a range of heap pages
    (``pages``: first page, first page after) and ``lo``/``hi`` are unused.
    """

    lo: tuple[str, ...] | None = None
    hi: tuple[str, ...] | None = None
    pages: tuple[int, int | None] | None = None

    @property
    def whole(self) -> bool:
        return self.lo is None and self.hi is None and self.pages is None


# ---- events a source emits, in commit order -------------------------------------------------


@dataclass(frozen=True, slots=True)
class Begin:
    """A transaction starts; ``commit_lsn`` is the LSN of its commit record."""

    xid: int
    commit_lsn: Lsn
    commit_time: datetime


@dataclass(frozen=True, slots=True)
class RelationChanged:
    """The layout of a table's tuples from now on (sent before the first change that uses it)."""

    relation_id: int
    schema: TableSchema
    seq: int = 0  # row changes of the open transaction before it: the next one is seq + 1


@dataclass(frozen=True, slots=True)
class RowChange:
    """One row-level change inside the current transaction, values aligned with the table's columns.

    ``new`` is the row after the change (None for a delete); ``old`` the old key or the whole old
    row (REPLICA IDENTITY FULL) when the server sent one, else None.
    """

    table: TableId
    op: Op
    new: tuple[Value, ...] | None
    old: tuple[Value, ...] | None = None
    seq: int = 0  # ordinal among ALL row changes of the transaction as sent (0: let the batcher count)


@dataclass(frozen=True, slots=True)
class Truncate:
    """TRUNCATE of these tables inside the current transaction."""

    tables: tuple[TableId, ...]
    seq: int = 0


@dataclass(frozen=True, slots=True)
class Commit:
    """The transaction opened by the last Begin committed; ``end_lsn`` is just past its commit record."""

    commit_lsn: Lsn
    end_lsn: Lsn
    commit_time: datetime


@dataclass(frozen=True, slots=True)
class SourceMessage:
    """A logical decoding message of ours (prefix ``cdc-replicator``), in stream order."""

    content: bytes
    transactional: bool


@dataclass(frozen=True, slots=True)
class ResyncCleanup:
    """Inside a transaction: rows of ``table`` not written since ``below`` no longer exist at the source."""

    table: TableId
    below: Lsn


@dataclass(frozen=True, slots=True)
class Keepalive:
    """The server has sent everything before ``wal_end``; nothing in flight may be confirmed up to it."""

    wal_end: Lsn


SourceEvent = Begin | RelationChanged | RowChange | Truncate | Commit | Keepalive | SourceMessage


# ---- batches -----------------------------------------------------------------------------------

# extra columns of a TablePatch's rows (see TablePatch): "keep the target's value" flags, the old key of a moved row
UNCHANGED_PREFIX: Final = "__unchanged__"
MOVED_PREFIX: Final = "__moved_from__"


@dataclass(frozen=True, slots=True)
class TablePatch:
    """The collapsed changes of one table in one batch.

    ``rows`` holds the last change per key in stream order: the source columns as PostgreSQL text
    (Arrow ``binary``), ``_cdc_lsn`` (int64 commit LSN), ``_cdc_op``, ``_cdc_committed_at`` and,
    for each name in ``unchanged_columns``, a bool column ``__unchanged__<name>`` that is true where
    the target must keep its value. When a row's key moved (an UPDATE of the key) while such a value
    stayed unchanged, ``__moved_from__<key>`` columns hold its old key: the value is the old row's.
    ``truncate`` means: empty the table, then apply ``rows``.
    """

    schema: TableSchema
    rows: pa.Table
    truncate: bool = False
    unchanged_columns: tuple[str, ...] = ()
    changes: int = 0  # changes received before collapsing
    truncate_lsn: int = 0  # commit LSN and time of the (last) TRUNCATE, when ``truncate``
    truncate_time: datetime | None = None
    cleanup_below: int = 0  # a live re-sync ended: rows not in ``rows`` with an older _cdc_lsn are gone


@dataclass(frozen=True, slots=True)
class ChangeBatch:
    """Whole transactions in commit order (and possibly the head of one large transaction).

    After the batch is applied, each touched table holds ``TablePosition(end, partial)``. ``end``
    is the end LSN of the last complete transaction in the batch and is what may be confirmed.
    """

    tables: Mapping[TableId, TablePatch]
    end: Lsn
    partial: PartialTxn | None = None
    transactions: int = 0
    last_commit_time: datetime | None = None
    batch_id: int = 0
    metadata: Mapping[str, str] = field(default_factory=dict)

    @property
    def position(self) -> TablePosition:
        return TablePosition(self.end, self.partial)


@dataclass(frozen=True, slots=True)
class VerifyResult:
    """The last ``cdc-replicator verify`` of one table (kept in the state store, exported by the daemon)."""

    table: str
    finished_at: datetime
    rows: int
    ranges: int
    differences: int  # missing + extra + differing rows; 0: equal
    seconds: float
