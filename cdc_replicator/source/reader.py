"""The replication reader: read frames, decode them, answer keepalives and hand events over.

A :class:`Reader` owns the walsender connection while it runs: it reads frames, parses and decodes
them into model events, answers keepalives and sends standby status (flush = what the caller
confirmed, never more), and hands events to the caller through a bounded queue, in chunks. While
the queue is full it keeps sending status, so a slow Delta merge never makes the server drop the
connection.

Streamed in-progress transactions (protocol 2) are spilled to disk per transaction as raw
messages and replayed as one ordinary transaction when their Stream Commit arrives; an aborted
subtransaction's messages are cut from the spill file when its Stream Abort arrives. Memory stays bounded whatever the transaction size.

:class:`~cdc_replicator.source.logical.LogicalSource` hosts the reader in a thread, or in a child
process started with ``spawn`` whose entry point is :func:`reader_process`: the reader is pickled
into it before it runs (it holds no connection until then), and the queue, the stop event and the
shared flush position are inherited.
"""

from __future__ import annotations

import ctypes
import logging
import os
import queue
import signal
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from cdc_replicator.errors import DecodeError, ReplicatorError, SourceUnavailable
from cdc_replicator.model import Begin, Commit, Keepalive, Lsn, SourceEvent, pg_time_to_datetime
from cdc_replicator.service import failpoints
from cdc_replicator.service.log import setup_logging
from cdc_replicator.service.runtime import tune_gc
from cdc_replicator.source import pgoutput, wire
from cdc_replicator.source.decoding import Decoder
from cdc_replicator.source.ipc import encode_events
from cdc_replicator.source.replication import PrimaryKeepalive, ReplicationConnection, quote_ident

__all__ = ["Reader", "reader_process"]

logger = logging.getLogger(__name__)

_STARTED = "started"  # the first item a reader hands over once START_REPLICATION succeeded
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


class _PathDead(Exception):
    """Nothing came from the walsender for the whole timeout; ``error`` is what the caller gets."""

    def __init__(self, error: ReplicatorError) -> None:
        super().__init__(error.message)
        self.error = error


class Reader:
    """Streams one slot from ``start`` into ``handover`` until ``stop`` is set; ``run`` is its whole life.

    ``handover`` (a ``queue.Queue`` or a ``multiprocessing`` queue) receives a start marker once the
    stream started, then chunks of events (lists; encoded with ``ipc.encode_events`` when
    ``process``), or one exception when the reader fails. ``flush`` is the position the caller
    confirmed, as a 64-bit word the caller writes and the reader only reads (no lock: a lock the
    reader held when it was killed would block the caller's confirm forever). Spill files go to
    ``spill_root``, which the caller owns.
    """

    def __init__(
        self,
        dsn: str,
        *,
        slot: str,
        publication: str,
        decoder: Decoder,
        start: Lsn,
        streaming: bool,
        status_interval: float,
        connect_timeout: float,
        spill_root: Path,
        handover: Any,
        stop: Any,
        flush: ctypes.c_uint64,
        process: bool,
        receiver_timeout: float = 0.0,
        heard: ctypes.c_double | None = None,
    ) -> None:
        self._dsn = dsn
        self._slot = slot
        self._publication = publication
        self._decoder = decoder
        self._start = start
        self._streaming = streaming
        self._status_interval = status_interval
        self._connect_timeout = connect_timeout
        self._spill_root = spill_root
        self._queue = handover
        self._stop = stop
        self._shared_flush = flush
        self._process = process
        self._flush_sent = Lsn.ZERO
        self._received = start
        self._spills: dict[int, _Spill] = {}
        self._timeout = receiver_timeout
        self._heard = heard if heard is not None else ctypes.c_double(0.0)
        self._last_heard = 0.0
        self._pinged = False

    def _flush_position(self) -> Lsn:
        """What the caller confirmed."""
        return Lsn(self._shared_flush.value)

    def _options(self) -> dict[str, str]:
        opts = {
            "proto_version": "2" if self._streaming else "1",
            "publication_names": quote_ident(self._publication),
            "messages": "true",
        }
        if self._streaming:
            opts["streaming"] = "on"
        return opts

    def run(self) -> None:
        """Connect, stream until stopped, then send a last status and close; every error is handed over."""
        conn: ReplicationConnection | None = None
        try:
            conn = ReplicationConnection(
                self._dsn, connect_timeout=self._connect_timeout, silence_timeout=self._timeout
            )
            conn.start(self._slot, self._start, self._options())
            self._hear(time.monotonic())
            logger.info(
                "replication started slot=%s from=%s streaming=%s reader=%s",
                self._slot,
                self._start,
                self._streaming,
                "process" if self._process else "thread",
            )
            self._queue.put(_STARTED)
            self._loop(conn)
        except _Stopped:
            pass
        except _PathDead as dead:
            if conn is not None:
                conn.abandon()  # a last status or a copy end would only wait on the dead path
                conn = None
            self._deliver_error(dead.error)
        except BaseException as exc:
            if not isinstance(exc, ReplicatorError):
                logger.debug("reader failed", exc_info=True)
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
        if self._process and not isinstance(exc, ReplicatorError):  # it must survive pickling
            exc = ReplicatorError(f"the replication reader failed: {type(exc).__name__}: {exc}")
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
                elif self._timeout > 0:
                    self._check_silence(conn)
                continue
            self._last_heard = self._heard.value = now
            self._pinged = False
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
            msg = pgoutput.parse(frame.payload, in_stream=in_stream)
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

    def _hear(self, now: float) -> None:
        """Count ``now`` as heard from the walsender (start, or the end of a wait on our side)."""
        self._last_heard = self._heard.value = now
        self._pinged = False

    def _check_silence(self, conn: ReplicationConnection) -> None:
        """``source.wal_receiver_timeout_seconds``: ping at half of it, give the path up at all of it.

        As PostgreSQL's walreceiver does (WALRCV_WAKEUP_PING): a status update that requests a reply
        makes a live walsender answer with a keepalive at once, so silence past it is a dead path.
        """
        silent = time.monotonic() - self._last_heard
        if silent >= self._timeout:
            logger.warning(
                "no message from the walsender for %.1fs (source.wal_receiver_timeout_seconds = %g): "
                "closing the replication connection",
                silent,
                self._timeout,
            )
            raise _PathDead(
                SourceUnavailable(
                    f"no message from the walsender for {silent:.0f}s, although a reply was requested: the "
                    f"network path looks dead (half-open: no reset, no answer); the replication connection "
                    f"was closed (source.wal_receiver_timeout_seconds = {self._timeout:g})",
                    hint="the daemon reconnects; on a link that is merely slow or a walsender that is busy "
                    "for long, raise source.wal_receiver_timeout_seconds (0 disables the check)",
                )
            )
        if silent >= self._timeout / 2 and not self._pinged:
            self._pinged = True
            logger.debug("no message from the walsender for %.1fs: requesting a reply", silent)
            self._send_status(conn, reply=True)

    def _status_due(self, since: float) -> bool:
        changed = self._flush_position() != self._flush_sent
        return changed or since >= self._status_interval

    def _send_status(self, conn: ReplicationConnection, *, force: bool = False, reply: bool = False) -> None:
        flush = self._flush_position()
        write = max(self._received, flush)
        conn.send_status(write=write, flush=flush, apply=flush, reply=reply)
        self._flush_sent = flush

    def _put(self, conn: ReplicationConnection, events: list[SourceEvent]) -> None:
        """Hand events over; while the caller is busy, keep the server's timeout at bay."""
        last = time.monotonic()
        item: object = encode_events(events) if self._process else events
        while True:
            if self._stop.is_set():
                raise _Stopped
            try:
                self._queue.put(item, timeout=0.5)
                # waiting on the caller is no silence of the path: the clock starts again
                self._hear(time.monotonic())
                return
            except queue.Full:
                self._heard.value = time.monotonic()  # alive, waiting on the caller (health stays true)
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
                out.extend(self._decoder.decode(pgoutput.parse(payload, in_stream=True)))
                if len(out) >= _CHUNK:
                    self._put(conn, out)
                    out = []
            f.close()
            os.unlink(spill.path)
        out.append(Commit(Lsn(msg.commit_lsn), Lsn(msg.end_lsn), at))
        return out


def reader_process(reader: Reader, parent: int, logging_setup: tuple[str, str]) -> None:
    """The child process: read and decode until the parent says stop (or dies)."""
    try:  # die with the parent: a killed daemon must not leave the slot held by an orphan
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:
        os._exit(0)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops the reader through the event
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    setup_logging(*logging_setup)
    tune_gc()
    failpoints.hit("reader_start")
    try:
        reader.run()
    finally:
        reader._queue.close()
        reader._queue.join_thread()  # every chunk put is in the pipe before the process ends
    os._exit(0)
