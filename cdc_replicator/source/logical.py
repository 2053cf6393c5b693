"""LogicalSource: replication → pgoutput → decoding, behind the Source protocol.

A reader owns the walsender connection: it reads frames, decodes them into model events, answers
keepalives and sends standby status (flush = what the caller confirmed, never more), and hands
events to the caller through a bounded queue. While the queue is full it keeps sending status, so a
slow Delta merge never makes the server drop the connection.

The reader runs in a child process by default (``reader="process"``): reading and decoding is about
two thirds of the Python work per change, and in a thread of the daemon it shares one GIL with the
batching and merging; a process gets its own. Events cross as compact tuples in chunks (pickling the
dataclasses costs more than decoding them), the confirmed position as a shared integer. The child
dies with its parent (PR_SET_PDEATHSIG) and ignores SIGINT/SIGTERM: the parent stops it.
``reader="thread"`` keeps everything in one process.

Streamed in-progress transactions (protocol 2) are spilled to disk per transaction as raw
messages and replayed as one ordinary transaction when their Stream Commit arrives; aborted
subtransactions are dropped at replay. Memory stays bounded whatever the transaction size.
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
import os
import queue
import shutil
import signal
import struct
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Literal, cast

from cdc_replicator.errors import DecodeError, ReplicatorError, SourceUnavailable
from cdc_replicator.model import (
    Begin,
    ColumnSelection,
    Commit,
    Keepalive,
    Lsn,
    Op,
    RowChange,
    SourceEvent,
    TableId,
    pg_time_to_datetime,
)
from cdc_replicator.service import failpoints
from cdc_replicator.service.log import current_logging, setup_logging
from cdc_replicator.service.runtime import tune_gc
from cdc_replicator.source import pgoutput, wire
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


class _ReaderGone(Exception):
    """The reader process ended; ``args[0]`` is its exit code."""


_STARTED = "started"  # the first item a reader hands over once START_REPLICATION succeeded
_OPS: dict[str, Op] = {o.value: o for o in Op}


def _encode(events: list[SourceEvent]) -> list[object]:
    """Events as plain tuples (row changes, begins, commits) for the pipe; the rare kinds as they are."""
    out: list[object] = []
    append = out.append
    for e in events:
        kind = type(e)
        if kind is RowChange:
            append((0, e.table, e.op.value, e.new, e.old, e.seq))  # type: ignore[union-attr]
        elif kind is Begin:
            append((1, e.xid, e.commit_lsn.value, e.commit_time))  # type: ignore[union-attr]
        elif kind is Commit:
            append((2, e.commit_lsn.value, e.end_lsn.value, e.commit_time))  # type: ignore[union-attr]
        else:
            append(e)
    return out


def _decode(items: list[Any]) -> list[SourceEvent]:
    out: list[SourceEvent] = []
    append = out.append
    for x in items:
        if type(x) is tuple:
            code = x[0]
            if code == 0:
                append(RowChange(x[1], _OPS[x[2]], x[3], x[4], x[5]))
            elif code == 1:
                append(Begin(x[1], Lsn(x[2]), x[3]))
            else:
                append(Commit(Lsn(x[1]), Lsn(x[2]), x[3]))
        else:
            append(x)
    return out


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
        reader: Literal["process", "thread"] = "process",
    ) -> None:
        self._dsn = dsn
        self._slot = slot
        self._publication = publication
        self._decoder = Decoder(keys, selections)
        self._start = start
        self._streaming = streaming
        self._status_interval = status_interval
        self._connect_timeout = connect_timeout
        self._process = reader == "process"
        self._queue: Any
        self._stop: Any
        self._shared_flush: Any = None
        if self._process:
            ctx = multiprocessing.get_context("spawn")
            self._queue = ctx.Queue(maxsize=queue_chunks)
            self._stop = ctx.Event()
            # no lock: one aligned 64-bit word, written by the daemon, read by the reader (a lock the
            # reader held when it was killed would block the daemon's confirm forever)
            self._shared_flush = ctx.RawValue(ctypes.c_uint64, start.value)
        else:
            self._queue = queue.Queue(maxsize=queue_chunks)
            self._stop = threading.Event()
        self._lock = threading.Lock()
        self._flush = start
        self._flush_sent = Lsn.ZERO
        self._received = start
        self._spill_root = Path(tempfile.mkdtemp(prefix="cdc-spill-", dir=spill_dir))
        self._spills: dict[int, _Spill] = {}
        self._thread: threading.Thread | None = None
        self._child: Any = None
        self._conn: ReplicationConnection | None = None

    # ---- caller side -----------------------------------------------------------------------

    def open(self) -> None:
        """Connect and start streaming; raises what START_REPLICATION raised."""
        if self._process:
            ctx = multiprocessing.get_context("spawn")
            self._child = ctx.Process(
                target=_reader_process,
                args=(self, os.getpid(), current_logging()),
                name="cdc-replication-reader",
                daemon=True,
            )
            self._child.start()
        else:
            self._thread = threading.Thread(target=self._run, name="cdc-replication-reader", daemon=True)
            self._thread.start()
        deadline = time.monotonic() + self._connect_timeout + 30
        while True:  # the first item says whether the stream started
            try:
                item = self._next(0.5)
            except _ReaderGone as gone:
                raise ReplicatorError(
                    f"the replication reader process ended before streaming (exit code {gone.args[0]})",
                    hint='see the log above; to read in the daemon itself set [source] reader = "thread"',
                ) from None
            if item is not None:
                break
            if time.monotonic() > deadline:
                raise SourceUnavailable("the replication stream did not start in time", retryable=True)
        if isinstance(item, BaseException):
            raise item

    def __getstate__(self) -> dict[str, Any]:
        """What the reader process needs (the queue, the stop event and the shared position inherit)."""
        return {
            k: getattr(self, k)
            for k in (
                "_dsn",
                "_slot",
                "_publication",
                "_decoder",
                "_start",
                "_streaming",
                "_status_interval",
                "_connect_timeout",
                "_process",
                "_queue",
                "_stop",
                "_shared_flush",
                "_flush_sent",
                "_received",
                "_spill_root",
            )
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        for k, v in state.items():
            setattr(self, k, v)
        self._lock = threading.Lock()
        self._flush = self._start
        self._spills = {}
        self._thread = None
        self._child = None
        self._conn = None

    def events(self, idle_timeout: float) -> Iterator[SourceEvent | None]:
        while True:
            try:
                item = self._next(idle_timeout)
            except _ReaderGone as gone:
                raise SourceUnavailable(
                    f"the replication reader process ended (exit code {gone.args[0]})",
                    hint="see the log above for its error; the daemon reconnects",
                ) from None
            if item is None:
                yield None
                continue
            if isinstance(item, BaseException):
                raise item
            chunk = cast("list[Any]", item)
            yield from (_decode(chunk) if self._process else chunk)

    def _next(self, timeout: float) -> object | None:
        """The next item from the reader, None when none came within ``timeout``.

        Raises ``_ReaderGone`` when the reader process has ended and left nothing more: its last
        item (often an error) is in the pipe before it exits, so look once more first.
        """
        try:
            item: object = self._queue.get(timeout=timeout)
            return item
        except queue.Empty:
            pass
        if self._child is not None and not self._child.is_alive():
            try:
                last: object = self._queue.get(timeout=0.2)
                return last
            except queue.Empty:
                raise _ReaderGone(self._child.exitcode) from None
        return None

    def confirm(self, upto: Lsn) -> None:
        with self._lock:
            if upto > self._flush:
                self._flush = upto
                if self._shared_flush is not None:
                    self._shared_flush.value = upto.value

    @property
    def confirmed(self) -> Lsn:
        with self._lock:
            return self._flush

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        if self._child is not None:
            # the reader may be blocked handing over a chunk: take what it sends until it is gone
            deadline = time.monotonic() + 30
            while self._child.is_alive() and time.monotonic() < deadline:
                try:
                    self._queue.get(timeout=0.1)
                except queue.Empty:
                    pass
            if self._child.is_alive():
                self._child.kill()
            self._child.join(timeout=5)
            self._queue.close()
            self._queue.cancel_join_thread()
        shutil.rmtree(self._spill_root, ignore_errors=True)

    def _flush_position(self) -> Lsn:
        """What the caller confirmed (read by the reader)."""
        if self._shared_flush is not None:
            return Lsn(self._shared_flush.value)
        with self._lock:
            return self._flush

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

    def _status_due(self, since: float) -> bool:
        changed = self._flush_position() != self._flush_sent
        return changed or since >= self._status_interval

    def _send_status(self, conn: ReplicationConnection, *, force: bool = False) -> None:
        flush = self._flush_position()
        write = max(self._received, flush)
        conn.send_status(write=write, flush=flush, apply=flush)
        self._flush_sent = flush

    def _put(self, conn: ReplicationConnection, events: list[SourceEvent]) -> None:
        """Hand events over; while the caller is busy, keep the server's timeout at bay."""
        last = time.monotonic()
        item: object = _encode(events) if self._process else events
        while True:
            if self._stop.is_set():
                raise _Stopped
            try:
                self._queue.put(item, timeout=0.5)
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
                out.extend(self._decoder.decode(pgoutput.parse(payload, in_stream=True)))
                if len(out) >= _CHUNK:
                    self._put(conn, out)
                    out = []
            f.close()
            os.unlink(spill.path)
        out.append(Commit(Lsn(msg.commit_lsn), Lsn(msg.end_lsn), at))
        return out


def _reader_process(source: LogicalSource, parent: int, logging_setup: tuple[str, str]) -> None:
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
        source._run()
    finally:
        source._queue.close()
        source._queue.join_thread()  # every chunk put is in the pipe before the process ends
    os._exit(0)
