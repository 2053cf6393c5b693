"""LogicalSource: replication → pgoutput → decoding, behind the Source protocol.

A reader thread owns the walsender connection: it reads frames, decodes them into model events,
answers keepalives and sends standby status (flush = what the caller confirmed, never more), and
hands events to the caller through a bounded queue. While the queue is full it keeps sending
status, so a slow Delta merge never makes the server drop the connection.

Streamed in-progress transactions (protocol 2) are spilled to disk per transaction as raw
messages and replayed as one ordinary transaction when their Stream Commit arrives; aborted
subtransactions are dropped at replay. Memory stays bounded whatever the transaction size.
"""

from __future__ import annotations

import logging
import os
import queue
import shutil
import struct
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from cdc_replicator.errors import DecodeError, ReplicatorError, SourceUnavailable
from cdc_replicator.model import (
    Begin,
    ColumnSelection,
    Commit,
    Keepalive,
    Lsn,
    SourceEvent,
    TableId,
    pg_time_to_datetime,
)
from cdc_replicator.source import pgoutput as wire
from cdc_replicator.source.decoding import Decoder
from cdc_replicator.source.replication import PrimaryKeepalive, ReplicationConnection, quote_ident

__all__ = ["LogicalSource"]

logger = logging.getLogger(__name__)

_CHUNK = 512  # events handed over at once
_SPILL_HEADER = struct.Struct("!I")  # payload length


@dataclass(slots=True)
class _Spill:
    """One streamed transaction on disk. ``first`` maps a subtransaction to (offset, count) before it."""

    path: Path
    file: BinaryIO
    first: dict[int, tuple[int, int]] = field(default_factory=dict)
    messages: int = 0


class _Stopped(Exception):
    pass


class LogicalSource:
    """Streams a pgoutput slot. ``events``/``confirm``/``close`` are for one caller thread."""

    def __init__(
        self,
        dsn: str,
        *,
        slot: str,
        publication: str,
        keys: Mapping[TableId, tuple[str, ...]],
        start: Lsn,
        selections: Mapping[TableId, ColumnSelection] | None = None,
        streaming: bool = False,
        status_interval: float = 10.0,
        connect_timeout: float = 10.0,
        spill_dir: str | None = None,
        queue_chunks: int = 64,
    ) -> None:
        self._dsn = dsn
        self._slot = slot
        self._publication = publication
        self._decoder = Decoder(keys, selections)
        self._start = start
        self._streaming = streaming
        self._status_interval = status_interval
        self._connect_timeout = connect_timeout
        self._queue: queue.Queue[list[SourceEvent] | BaseException] = queue.Queue(maxsize=queue_chunks)
        self._lock = threading.Lock()
        self._flush = start
        self._flush_sent = Lsn.ZERO
        self._received = start
        self._stop = threading.Event()
        self._spill_root = Path(tempfile.mkdtemp(prefix="cdc-spill-", dir=spill_dir))
        self._spills: dict[int, _Spill] = {}
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._conn: ReplicationConnection | None = None

    # ---- caller side -----------------------------------------------------------------------

    def open(self) -> None:
        """Connect and start streaming; raises what START_REPLICATION raised."""
        self._thread = threading.Thread(target=self._run, name="cdc-replication-reader", daemon=True)
        self._thread.start()
        self._ready.wait(self._connect_timeout + 30)
        if not self._ready.is_set():
            raise SourceUnavailable("the replication stream did not start in time", retryable=True)
        # surface a start error right away
        try:
            item = self._queue.get_nowait()
        except queue.Empty:
            return
        if isinstance(item, BaseException):
            raise item
        self._pending = item

    _pending: list[SourceEvent] | None = None

    def events(self, idle_timeout: float) -> Iterator[SourceEvent | None]:
        if self._pending:
            pending, self._pending = self._pending, None
            yield from pending
        while True:
            try:
                item = self._queue.get(timeout=idle_timeout)
            except queue.Empty:
                yield None
                continue
            if isinstance(item, BaseException):
                raise item
            yield from item

    def confirm(self, upto: Lsn) -> None:
        with self._lock:
            if upto > self._flush:
                self._flush = upto

    @property
    def confirmed(self) -> Lsn:
        with self._lock:
            return self._flush

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        shutil.rmtree(self._spill_root, ignore_errors=True)

    # ---- reader thread ---------------------------------------------------------------------

    def _options(self) -> dict[str, str]:
        opts = {
            "proto_version": "2" if self._streaming else "1",
            "publication_names": quote_ident(self._publication),
            "messages": "true",
        }
        if self._streaming:
            opts["streaming"] = "on"
        return opts

    def _run(self) -> None:
        conn: ReplicationConnection | None = None
        try:
            conn = ReplicationConnection(self._dsn, connect_timeout=self._connect_timeout)
            conn.start(self._slot, self._start, self._options())
            self._conn = conn
            logger.info(
                "replication started slot=%s from=%s streaming=%s", self._slot, self._start, self._streaming
            )
            self._ready.set()
            self._loop(conn)
        except _Stopped:
            pass
        except BaseException as exc:
            if not isinstance(exc, ReplicatorError):
                logger.debug("reader thread failed", exc_info=True)
            self._ready.set()
            self._deliver_error(exc)
        finally:
            if conn is not None:
                try:
                    self._send_status(conn, force=True)
                except ReplicatorError:
                    pass
                conn.close()
            for spill in self._spills.values():
                spill.file.close()
            self._spills.clear()

    def _deliver_error(self, exc: BaseException) -> None:
        while not self._stop.is_set():
            try:
                self._queue.put(exc, timeout=0.5)
                return
            except queue.Full:
                continue

    def _loop(self, conn: ReplicationConnection) -> None:
        out: list[SourceEvent] = []
        in_stream = False
        stream_xid = 0
        last_status = time.monotonic()
        while not self._stop.is_set():
            now = time.monotonic()
            if now - last_status >= min(1.0, self._status_interval) and self._status_due(now - last_status):
                self._send_status(conn)
                last_status = now
            frame = conn.read(timeout=0.0 if out else 0.2)
            if frame is None:
                if out:
                    self._put(conn, out)
                    out = []
                continue
            if isinstance(frame, PrimaryKeepalive):
                if frame.wal_end > self._received:
                    self._received = frame.wal_end
                if out and isinstance(out[-1], Keepalive):
                    out[-1] = Keepalive(frame.wal_end)
                else:
                    out.append(Keepalive(frame.wal_end))
                if frame.reply_requested:
                    self._send_status(conn, force=True)
                    last_status = time.monotonic()
                continue
            if frame.wal_end.value > self._received.value:
                self._received = frame.wal_end
            msg = wire.parse(frame.payload, in_stream=in_stream)
            if isinstance(msg, wire.StreamStart):
                in_stream, stream_xid = True, msg.xid
                if msg.xid not in self._spills:
                    self._spills[msg.xid] = self._new_spill(msg.xid)
                continue
            if isinstance(msg, wire.StreamStop):
                in_stream = False
                continue
            if in_stream:
                self._spill(stream_xid, msg, frame.payload)
                continue
            if isinstance(msg, wire.StreamCommit):
                out = self._replay(conn, msg, out)
                continue
            if isinstance(msg, wire.StreamAbort):
                self._abort(msg)
                continue
            out.extend(self._decoder.decode(msg))
            if len(out) >= _CHUNK:
                self._put(conn, out)
                out = []

    def _status_due(self, since: float) -> bool:
        with self._lock:
            changed = self._flush != self._flush_sent
        return changed or since >= self._status_interval

    def _send_status(self, conn: ReplicationConnection, *, force: bool = False) -> None:
        with self._lock:
            flush = self._flush
        write = max(self._received, flush)
        conn.send_status(write=write, flush=flush, apply=flush)
        self._flush_sent = flush

    def _put(self, conn: ReplicationConnection, events: list[SourceEvent]) -> None:
        """Hand events over; while the caller is busy, keep the server's timeout at bay."""
        last = time.monotonic()
        while True:
            if self._stop.is_set():
                raise _Stopped
            try:
                self._queue.put(events, timeout=0.5)
                return
            except queue.Full:
                if time.monotonic() - last >= min(self._status_interval, 5.0):
                    self._send_status(conn)
                    last = time.monotonic()
                # read (and answer) keepalives the server sent meanwhile is not possible without
                # losing order; status updates alone keep wal_sender_timeout from firing.

    # ---- streamed transactions --------------------------------------------------------------

    def _new_spill(self, xid: int) -> _Spill:
        path = self._spill_root / f"xid-{xid}.spill"
        return _Spill(path, open(path, "w+b"))

    def _spill(self, xid: int, msg: wire.Message, payload: memoryview) -> None:
        spill = self._spills.get(xid)
        if spill is None:
            spill = self._spills[xid] = self._new_spill(xid)
        sub = getattr(msg, "xid", None)
        if sub is not None and sub != xid and sub not in spill.first:
            spill.first[sub] = (spill.file.tell(), spill.messages)
        spill.file.write(_SPILL_HEADER.pack(len(payload)))
        spill.file.write(payload)
        spill.messages += 1

    def _abort(self, msg: wire.StreamAbort) -> None:
        spill = self._spills.get(msg.xid)
        if spill is None:
            return
        if msg.subxid == msg.xid:
            spill.file.close()
            os.unlink(spill.path)
            del self._spills[msg.xid]
            return
        # As PostgreSQL's own apply worker does: everything from the aborted subtransaction's first
        # change on belongs to it or to its children (the abort is decoded before any later change).
        at = spill.first.get(msg.subxid)
        if at is None:
            return
        offset, count = at
        spill.file.seek(offset)
        spill.file.truncate()
        spill.messages = count
        spill.first = {x: v for x, v in spill.first.items() if v[0] < offset}

    def _replay(
        self, conn: ReplicationConnection, msg: wire.StreamCommit, out: list[SourceEvent]
    ) -> list[SourceEvent]:
        spill = self._spills.pop(msg.xid, None)
        if spill is not None:
            spill.file.seek(0, os.SEEK_END)
        at = pg_time_to_datetime(msg.commit_time)
        out.append(Begin(msg.xid, Lsn(msg.commit_lsn), at))
        self._decoder.start_transaction()
        if spill is not None:
            f = spill.file
            f.flush()
            f.seek(0)
            for _ in range(spill.messages):
                header = f.read(_SPILL_HEADER.size)
                if len(header) != _SPILL_HEADER.size:
                    raise DecodeError(f"spill file of xid {msg.xid} is truncated")
                (n,) = _SPILL_HEADER.unpack(header)
                payload = f.read(n)
                out.extend(self._decoder.decode(wire.parse(payload, in_stream=True)))
                if len(out) >= _CHUNK:
                    self._put(conn, out)
                    out = []
            f.close()
            os.unlink(spill.path)
        out.append(Commit(Lsn(msg.commit_lsn), Lsn(msg.end_lsn), at))
        return out
