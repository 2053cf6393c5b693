"""Parse pgoutput messages (bytes) into the dataclasses of ``source.wire``. Pure: no I/O.

Covers the logical replication message formats of protocol version 1 and version 2 (streaming of
in-progress transactions), as PostgreSQL's ``src/backend/replication/logical/proto.c`` writes them.
Protocol 4 Stream Abort (``streaming = parallel``) is accepted too; two-phase messages (protocol 3)
are not, and raise :class:`DecodeError` like any unknown tag.

Integers are big-endian. LSNs are unsigned 64-bit; timestamps are signed microseconds since
2000-01-01 UTC, kept raw (``cdc_replicator.model.pg_time_to_datetime`` converts them).

In-stream xid rule (``parse(..., in_stream=True)``, between Stream Start and Stream Stop): Relation,
Type, Insert, Update, Delete, Truncate and Logical Message carry an Int32 xid right after the tag.
Origin does not, even when the server sends it inside a stream. Observed on PostgreSQL 15: the xid of
a row change, Relation, Type or Truncate is the xid of the *subtransaction* that made the change
(it differs from the Stream Start xid after a SAVEPOINT), while a Logical Message carries the
top-level xid. So group streamed changes by the Stream Start xid, not by the change xid. A Stream
Abort whose ``subxid`` differs from its ``xid`` (sent between stream blocks) voids the streamed
changes from the first one carrying ``subxid`` onwards, which is what PostgreSQL's own apply worker
discards.

Memoryview payloads are copied to bytes once: slicing bytes and then building values is faster than
slicing the view and copying each value (measured ~10% per message), and no value aliases the
caller's buffer.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Final, NoReturn, TypeAlias

from cdc_replicator.errors import DecodeError
from cdc_replicator.model import PG_EPOCH, UNCHANGED, Value
from cdc_replicator.source.wire import (
    Begin,
    Commit,
    Delete,
    Insert,
    LogicalMessage,
    Message,
    MessageTag,
    Origin,
    Relation,
    RelationColumn,
    StreamAbort,
    StreamCommit,
    StreamStart,
    StreamStop,
    Truncate,
    Tuple,
    Type,
    Update,
)

__all__ = ["parse"]

# ---- reading --------------------------------------------------------------------------------

# Each message parser gets the payload, the position after the tag (and in-stream xid), the payload
# length and the in-stream xid (None outside a stream).
_Parser: TypeAlias = Callable[[bytes, int, int, int | None], Message]

_HINT: Final = (
    "the payload is not a complete pgoutput message of protocol 1 or 2; check proto_version, "
    "and that in_stream matches Stream Start/Stop"
)
_INT_NAMES: Final = {1: "Int8", 2: "Int16", 4: "Int32", 8: "Int64"}
_MICRO: Final = timedelta(microseconds=1)

_U16 = struct.Struct("!H").unpack_from
_U32 = struct.Struct("!I").unpack_from
_I32 = struct.Struct("!i").unpack_from
_U32_U8 = struct.Struct("!IB").unpack_from
_U8_U64 = struct.Struct("!BQ").unpack_from
_U64 = struct.Struct("!Q").unpack_from
_I32_U8 = struct.Struct("!iB").unpack_from
_COLUMN_TAIL = struct.Struct("!Ii").unpack_from
_BEGIN = struct.Struct("!QqI").unpack_from
_COMMIT = struct.Struct("!BQQq").unpack_from
_STREAM_START = struct.Struct("!IB").unpack_from
_STREAM_COMMIT = struct.Struct("!IBQQq").unpack_from
_STREAM_ABORT = struct.Struct("!II").unpack_from
_STREAM_ABORT_4 = struct.Struct("!IIQq").unpack_from

# Tuple column kinds and row markers (bytes of the wire format).
_COL_TEXT: Final = ord("t")
_COL_BINARY: Final = ord("b")
_COL_NULL: Final = ord("n")
_COL_UNCHANGED: Final = ord("u")
_ROW_NEW: Final = ord("N")
_ROW_KEY: Final = ord("K")
_ROW_OLD: Final = ord("O")
_REPLICA_IDENTITIES: Final = frozenset("dnfi")

# Tags that exist in the protocol but that this decoder does not take (two-phase, protocol 3).
_UNSUPPORTED: Final = {
    ord("b"): "Begin Prepare",
    ord("P"): "Prepare",
    ord("K"): "Commit Prepared",
    ord("r"): "Rollback Prepared",
    ord("p"): "Stream Prepare",
}


# the wire timestamps a datetime can hold (years 1 to 9999): a commit time outside them is garbage
_MIN_MICROS: Final = (datetime(1, 1, 1, tzinfo=UTC) - PG_EPOCH) // _MICRO
_MAX_MICROS: Final = (datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC) - PG_EPOCH) // _MICRO


def _timestamp(micros: int, what: str, pos: int) -> int:
    """``micros`` (the timestamp field at ``pos``) if a datetime can hold it, else a DecodeError."""
    if not _MIN_MICROS <= micros <= _MAX_MICROS:
        raise DecodeError(f"{what} {micros} is outside the years 1 to 9999", offset=pos, hint=_HINT)
    return micros


def _truncated(size: int, what: str, pos: int) -> DecodeError:
    return DecodeError(f"truncated {_INT_NAMES[size]} ({what})", offset=pos, hint=_HINT)


def _fixed_error(name: str, fields: tuple[tuple[str, int], ...], pos: int, end: int) -> NoReturn:
    """Raise for a fixed-size message whose length is wrong: the first field cut short, or garbage."""
    for field_name, size in fields:
        if pos + size > end:
            raise _truncated(size, f"{name} {field_name}", pos)
        pos += size
    raise _trailing(name, pos, end)


def _trailing(name: str, pos: int, end: int) -> DecodeError:
    return DecodeError(f"{end - pos} trailing bytes after a complete {name} message", offset=pos, hint=_HINT)


def _string(buf: bytes, pos: int, end: int, what: str) -> tuple[str, int]:
    """Read a NUL-terminated UTF-8 string at ``pos``; return it and the position past the NUL."""
    nul = buf.find(0, pos, end)
    if nul < 0:
        raise DecodeError(f"{what}: string has no NUL terminator", offset=pos, hint=_HINT)
    try:
        text = buf[pos:nul].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DecodeError(f"{what}: string is not valid UTF-8", offset=pos + exc.start, hint=_HINT) from exc
    return text, nul + 1


def _tuple(buf: bytes, pos: int, end: int) -> tuple[Tuple, int]:
    """Read TupleData at ``pos``; return the values and the position past them."""
    if pos + 2 > end:
        raise _truncated(2, "tuple column count", pos)
    (ncols,) = _U16(buf, pos)
    pos += 2
    values: list[Value] = []
    append = values.append
    for _ in range(ncols):
        if pos >= end:
            raise DecodeError(
                f"truncated tuple: {ncols - len(values)} of {ncols} columns missing", offset=pos, hint=_HINT
            )
        kind = buf[pos]
        if kind == _COL_TEXT or kind == _COL_BINARY:
            if pos + 5 > end:
                raise _truncated(4, "column value length", pos + 1)
            (length,) = _I32(buf, pos + 1)
            pos += 5
            stop = pos + length
            if length < 0 or stop > end:
                raise DecodeError(
                    f"column value of {length} bytes overruns the message ({end - pos} bytes left)",
                    offset=pos - 4,
                    hint=_HINT,
                )
            append(buf[pos:stop])
            pos = stop
        elif kind == _COL_NULL:
            append(None)
            pos += 1
        elif kind == _COL_UNCHANGED:
            append(UNCHANGED)
            pos += 1
        else:
            raise DecodeError(
                f"unknown tuple column kind 0x{kind:02x} ({chr(kind)!r})", offset=pos, hint=_HINT
            )
    return tuple(values), pos


def _row_marker(buf: bytes, pos: int, end: int, what: str) -> int:
    if pos >= end:
        raise _truncated(1, what, pos)
    return buf[pos]


# ---- one function per message; each gets the position after the tag (and the in-stream xid) ----

_BEGIN_FIELDS: Final = (("final_lsn", 8), ("commit_time", 8), ("xid", 4))
_COMMIT_FIELDS: Final = (("flags", 1), ("commit_lsn", 8), ("end_lsn", 8), ("commit_time", 8))
_STREAM_START_FIELDS: Final = (("xid", 4), ("first_segment", 1))
_STREAM_COMMIT_FIELDS: Final = (("xid", 4),) + _COMMIT_FIELDS
_STREAM_ABORT_FIELDS: Final = (("xid", 4), ("subxid", 4))


def _begin(buf: bytes, pos: int, end: int, xid: int | None) -> Begin:
    if end - pos != 20:
        _fixed_error("Begin", _BEGIN_FIELDS, pos, end)
    final_lsn, commit_time, begin_xid = _BEGIN(buf, pos)
    return Begin(final_lsn, _timestamp(commit_time, "Begin commit_time", pos + 8), begin_xid)


def _commit(buf: bytes, pos: int, end: int, xid: int | None) -> Commit:
    if end - pos != 25:
        _fixed_error("Commit", _COMMIT_FIELDS, pos, end)
    flags, commit_lsn, end_lsn, commit_time = _COMMIT(buf, pos)
    return Commit(flags, commit_lsn, end_lsn, _timestamp(commit_time, "Commit commit_time", pos + 17))


def _origin(buf: bytes, pos: int, end: int, xid: int | None) -> Origin:
    if pos + 8 > end:
        raise _truncated(8, "Origin commit_lsn", pos)
    (lsn,) = _U64(buf, pos)
    name, pos = _string(buf, pos + 8, end, "Origin name")
    if pos != end:
        raise _trailing("Origin", pos, end)
    return Origin(lsn, name)


def _relation(buf: bytes, pos: int, end: int, xid: int | None) -> Relation:
    if pos + 4 > end:
        raise _truncated(4, "Relation relation_id", pos)
    (relation_id,) = _U32(buf, pos)
    namespace, pos = _string(buf, pos + 4, end, "Relation namespace")
    name, pos = _string(buf, pos, end, "Relation name")
    if pos + 1 > end:
        raise _truncated(1, "Relation replica_identity", pos)
    replica_identity = chr(buf[pos])
    if replica_identity not in _REPLICA_IDENTITIES:
        raise DecodeError(
            f"unknown replica identity {replica_identity!r} in Relation", offset=pos, hint=_HINT
        )
    if pos + 3 > end:
        raise _truncated(2, "Relation column count", pos + 1)
    (ncols,) = _U16(buf, pos + 1)
    pos += 3
    columns: list[RelationColumn] = []
    for _ in range(ncols):
        if pos + 1 > end:
            raise _truncated(1, "Relation column flags", pos)
        flags = buf[pos]
        column_name, pos = _string(buf, pos + 1, end, "Relation column name")
        if pos + 8 > end:
            if pos + 4 > end:
                raise _truncated(4, "Relation column type_oid", pos)
            raise _truncated(4, "Relation column type_modifier", pos + 4)
        type_oid, type_modifier = _COLUMN_TAIL(buf, pos)
        pos += 8
        columns.append(RelationColumn(flags, column_name, type_oid, type_modifier))
    if pos != end:
        raise _trailing("Relation", pos, end)
    return Relation(xid, relation_id, namespace, name, replica_identity, tuple(columns))


def _type(buf: bytes, pos: int, end: int, xid: int | None) -> Type:
    if pos + 4 > end:
        raise _truncated(4, "Type type_oid", pos)
    (type_oid,) = _U32(buf, pos)
    namespace, pos = _string(buf, pos + 4, end, "Type namespace")
    name, pos = _string(buf, pos, end, "Type name")
    if pos != end:
        raise _trailing("Type", pos, end)
    return Type(xid, type_oid, namespace, name)


def _insert(buf: bytes, pos: int, end: int, xid: int | None) -> Insert:
    if pos + 5 > end:
        if pos + 4 > end:
            raise _truncated(4, "Insert relation_id", pos)
        raise _truncated(1, "Insert new-tuple marker", pos + 4)
    relation_id, marker = _U32_U8(buf, pos)
    if marker != _ROW_NEW:
        raise DecodeError(
            f"Insert: expected new-tuple marker 'N', got 0x{marker:02x}", offset=pos + 4, hint=_HINT
        )
    new, pos = _tuple(buf, pos + 5, end)
    if pos != end:
        raise _trailing("Insert", pos, end)
    return Insert(xid, relation_id, new)


def _update(buf: bytes, pos: int, end: int, xid: int | None) -> Update:
    if pos + 4 > end:
        raise _truncated(4, "Update relation_id", pos)
    (relation_id,) = _U32(buf, pos)
    pos += 4
    marker = _row_marker(buf, pos, end, "Update tuple marker")
    old_kind: str | None = None
    old: Tuple | None = None
    if marker == _ROW_KEY or marker == _ROW_OLD:
        old_kind = chr(marker)
        old, pos = _tuple(buf, pos + 1, end)
        marker = _row_marker(buf, pos, end, "Update new-tuple marker")
    if marker != _ROW_NEW:
        raise DecodeError(
            f"Update: expected tuple marker 'K', 'O' or 'N', got 0x{marker:02x}", offset=pos, hint=_HINT
        )
    new_at = pos + 1
    new, pos = _tuple(buf, new_at, end)
    if pos != end:
        raise _trailing("Update", pos, end)
    if old is not None and len(old) != len(new):
        raise DecodeError(
            f"Update: column count mismatch, old tuple has {len(old)} columns, new tuple {len(new)}",
            offset=new_at,
            hint=_HINT,
        )
    return Update(xid, relation_id, old_kind, old, new)


def _delete(buf: bytes, pos: int, end: int, xid: int | None) -> Delete:
    if pos + 5 > end:
        if pos + 4 > end:
            raise _truncated(4, "Delete relation_id", pos)
        raise _truncated(1, "Delete tuple marker", pos + 4)
    relation_id, marker = _U32_U8(buf, pos)
    if marker != _ROW_KEY and marker != _ROW_OLD:
        raise DecodeError(
            f"Delete: expected tuple marker 'K' or 'O', got 0x{marker:02x}", offset=pos + 4, hint=_HINT
        )
    old, pos = _tuple(buf, pos + 5, end)
    if pos != end:
        raise _trailing("Delete", pos, end)
    return Delete(xid, relation_id, chr(marker), old)


def _truncate(buf: bytes, pos: int, end: int, xid: int | None) -> Truncate:
    if pos + 5 > end:
        if pos + 4 > end:
            raise _truncated(4, "Truncate relation count", pos)
        raise _truncated(1, "Truncate options", pos + 4)
    count, options = _I32_U8(buf, pos)
    pos += 5
    stop = pos + 4 * count
    if count < 0 or stop > end:
        raise DecodeError(
            f"Truncate: {count} relation ids do not fit in the {end - pos} bytes left",
            offset=pos - 5,
            hint=_HINT,
        )
    if stop != end:
        raise _trailing("Truncate", stop, end)
    relation_ids: tuple[int, ...] = struct.unpack_from(f"!{count}I", buf, pos)
    return Truncate(xid, options, relation_ids)


def _message(buf: bytes, pos: int, end: int, xid: int | None) -> LogicalMessage:
    if pos + 9 > end:
        if pos + 1 > end:
            raise _truncated(1, "Message flags", pos)
        raise _truncated(8, "Message lsn", pos + 1)
    flags, lsn = _U8_U64(buf, pos)
    prefix, pos = _string(buf, pos + 9, end, "Message prefix")
    if pos + 4 > end:
        raise _truncated(4, "Message content length", pos)
    (length,) = _I32(buf, pos)
    pos += 4
    if length < 0 or pos + length > end:
        raise DecodeError(
            f"Message content of {length} bytes overruns the message ({end - pos} bytes left)",
            offset=pos - 4,
            hint=_HINT,
        )
    if pos + length != end:
        raise _trailing("Message", pos + length, end)
    return LogicalMessage(xid, flags, lsn, prefix, buf[pos:end])


def _stream_start(buf: bytes, pos: int, end: int, xid: int | None) -> StreamStart:
    if end - pos != 5:
        _fixed_error("Stream Start", _STREAM_START_FIELDS, pos, end)
    stream_xid, first = _STREAM_START(buf, pos)
    if first > 1:
        raise DecodeError(
            f"Stream Start: first_segment is {first}, expected 0 or 1", offset=pos + 4, hint=_HINT
        )
    return StreamStart(stream_xid, first == 1)


_STREAM_STOP: Final = StreamStop()


def _stream_stop(buf: bytes, pos: int, end: int, xid: int | None) -> StreamStop:
    if pos != end:
        raise _trailing("Stream Stop", pos, end)
    return _STREAM_STOP


def _stream_commit(buf: bytes, pos: int, end: int, xid: int | None) -> StreamCommit:
    if end - pos != 29:
        _fixed_error("Stream Commit", _STREAM_COMMIT_FIELDS, pos, end)
    stream_xid, flags, commit_lsn, end_lsn, commit_time = _STREAM_COMMIT(buf, pos)
    at = pos + 21
    return StreamCommit(
        stream_xid, flags, commit_lsn, end_lsn, _timestamp(commit_time, "Stream Commit commit_time", at)
    )


def _stream_abort(buf: bytes, pos: int, end: int, xid: int | None) -> StreamAbort:
    size = end - pos
    if size == 8:
        return StreamAbort(*_STREAM_ABORT(buf, pos))
    if size == 24:
        abort_xid, subxid, abort_lsn, abort_time = _STREAM_ABORT_4(buf, pos)
        return StreamAbort(
            abort_xid, subxid, abort_lsn, _timestamp(abort_time, "Stream Abort abort_time", pos + 16)
        )
    if size < 8:
        _fixed_error("Stream Abort", _STREAM_ABORT_FIELDS, pos, end)
    if size < 24:
        raise DecodeError(
            f"{size - 8} trailing bytes after a protocol 2 Stream Abort, "
            "too few for the protocol 4 abort_lsn and abort_time",
            offset=pos + 8,
            hint=_HINT,
        )
    raise _trailing("Stream Abort", pos + 24, end)


# Tag → (parser, whether an in-stream message carries an Int32 xid after the tag).
_DISPATCH: Final[dict[int, tuple[_Parser, bool]]] = {
    MessageTag.BEGIN: (_begin, False),
    MessageTag.COMMIT: (_commit, False),
    MessageTag.ORIGIN: (_origin, False),
    MessageTag.RELATION: (_relation, True),
    MessageTag.TYPE: (_type, True),
    MessageTag.INSERT: (_insert, True),
    MessageTag.UPDATE: (_update, True),
    MessageTag.DELETE: (_delete, True),
    MessageTag.TRUNCATE: (_truncate, True),
    MessageTag.MESSAGE: (_message, True),
    MessageTag.STREAM_START: (_stream_start, False),
    MessageTag.STREAM_STOP: (_stream_stop, False),
    MessageTag.STREAM_COMMIT: (_stream_commit, False),
    MessageTag.STREAM_ABORT: (_stream_abort, False),
}


def _unknown_tag(tag: int) -> DecodeError:
    shown = f"0x{tag:02x} ({chr(tag)!r})"
    known = _UNSUPPORTED.get(tag)
    if known is not None:
        return DecodeError(
            f"unsupported pgoutput message {known} (tag {shown})",
            offset=0,
            hint="two-phase messages are not supported: create the slot without two_phase",
        )
    return DecodeError(f"unknown pgoutput message tag {shown}", offset=0, hint=_HINT)


def parse(payload: bytes | memoryview, *, in_stream: bool = False) -> Message:
    """Decode one pgoutput message (the payload of an XLogData, or one row of the slot SQL functions).

    Pass ``in_stream=True`` between Stream Start and Stream Stop: Relation, Type, Insert, Update,
    Delete, Truncate and Logical Message then carry the xid that their ``xid`` field reports; outside
    a stream that field is None. Raises :class:`DecodeError` (with the byte offset) for any payload
    that is not exactly one well-formed message.
    """
    buf = payload if type(payload) is bytes else bytes(payload)
    end = len(buf)
    if end == 0:
        raise DecodeError("empty pgoutput message", offset=0, hint=_HINT)
    tag = buf[0]
    entry = _DISPATCH.get(tag)
    if entry is None:
        raise _unknown_tag(tag)
    parser, streamable = entry
    if in_stream and streamable:
        if end < 5:
            raise _truncated(4, f"{MessageTag(tag).name.title()} in-stream xid", 1)
        (xid,) = _U32(buf, 1)
        return parser(buf, 5, end, xid)
    return parser(buf, 1, end, None)
