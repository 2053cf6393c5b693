"""LogicalSource: replication → pgoutput → decoding, behind the Source protocol.

The caller's side of a logical stream. It hosts a :class:`~cdc_replicator.source.reader.Reader`,
which owns the walsender connection, reads and decodes frames, answers keepalives and sends standby
status (flush = what the caller confirmed, never more), and hands events over through a bounded
queue; ``events`` takes them off it, ``confirm`` publishes the confirmed position to the reader.

The reader runs in a child process by default (``reader="process"``): reading and decoding is about
two thirds of the Python work per change, and in a thread of the daemon it shares one GIL with the
batching and merging; a process gets its own. Events cross as compact tuples in chunks
(:mod:`cdc_replicator.source.ipc`: pickling the dataclasses costs more than decoding them), the
confirmed position as a shared integer. The child dies with its parent (PR_SET_PDEATHSIG) and
ignores SIGINT/SIGTERM: the parent stops it. ``reader="thread"`` keeps everything in one process.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import queue
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal, cast

from cdc_replicator.errors import ReplicatorError, SourceUnavailable
from cdc_replicator.model import ColumnSelection, Lsn, SourceEvent, TableId
from cdc_replicator.service.log import current_logging
from cdc_replicator.source.decoding import Decoder
from cdc_replicator.source.ipc import decode_events
from cdc_replicator.source.reader import Reader, reader_process

__all__ = ["LogicalSource"]


_EARLY_DEATHS_RETRIED = 3


class _ReaderGone(Exception):
    """The reader process ended; ``args[0]`` is its exit code."""


class LogicalSource:
    """Streams a pgoutput slot. ``events``/``confirm``/``close`` are for one caller thread."""

    # Readers of this daemon killed by a signal before streaming, in a row: a few are a transient
    # loss (kill -9, the OOM killer) and retried; more mean reader processes cannot work here (stop).
    _early_deaths: ClassVar[int] = 0

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
        receiver_timeout: float = 0.0,
    ) -> None:
        self._connect_timeout = connect_timeout
        self._process = reader == "process"
        self._queue: Any
        self._stop: Any
        if self._process:
            ctx = multiprocessing.get_context("spawn")
            self._queue = ctx.Queue(maxsize=queue_chunks)
            self._stop = ctx.Event()
            # no lock: one aligned 64-bit word, written by the daemon, read by the reader (a lock the
            # reader held when it was killed would block the daemon's confirm forever)
            self._shared_flush = ctx.RawValue(ctypes.c_uint64, start.value)
            self._heard = ctx.RawValue(ctypes.c_double, time.monotonic())  # CLOCK_MONOTONIC: system-wide
        else:
            self._queue = queue.Queue(maxsize=queue_chunks)
            self._stop = threading.Event()
            self._shared_flush = ctypes.c_uint64(start.value)
            self._heard = ctypes.c_double(time.monotonic())
        self._flush = start  # what the caller confirmed; only the caller's thread touches it
        self._spill_root = Path(tempfile.mkdtemp(prefix="cdc-spill-", dir=spill_dir))
        self._reader = Reader(
            dsn,
            slot=slot,
            publication=publication,
            decoder=Decoder(keys, selections),
            start=start,
            streaming=streaming,
            status_interval=status_interval,
            connect_timeout=connect_timeout,
            spill_root=self._spill_root,
            handover=self._queue,
            stop=self._stop,
            flush=self._shared_flush,
            process=self._process,
            receiver_timeout=receiver_timeout,
            heard=self._heard,
        )
        self._thread: threading.Thread | None = None
        self._child: Any = None

    def open(self) -> None:
        """Connect and start streaming; raises what START_REPLICATION raised."""
        if self._process:
            ctx = multiprocessing.get_context("spawn")
            self._child = ctx.Process(
                target=reader_process,
                args=(self._reader, os.getpid(), current_logging()),
                name="cdc-replication-reader",
                daemon=True,
            )
            self._child.start()
            # The child holds the write end of the queue's pipe now; the daemon only reads. Closing its
            # own copy means a reader killed halfway through writing a chunk leaves an end of file
            # for the daemon to read, instead of half a message it would wait on for ever.
            self._queue._writer.close()
        else:
            self._thread = threading.Thread(
                target=self._reader.run, name="cdc-replication-reader", daemon=True
            )
            self._thread.start()
        deadline = time.monotonic() + self._connect_timeout + 30
        while True:  # the first item says whether the stream started
            try:
                item = self._next(0.5)
            except _ReaderGone as gone:
                code = gone.args[0]
                LogicalSource._early_deaths += 1
                if code is not None and code < 0 and LogicalSource._early_deaths <= _EARLY_DEATHS_RETRIED:
                    raise SourceUnavailable(
                        f"the replication reader process was killed by signal {-code} before streaming",
                        hint="the daemon starts a new one; if it repeats, look for the OOM killer in the kernel log",
                    ) from None
                raise ReplicatorError(
                    f"the replication reader process ended before streaming (exit code {code})",
                    hint='see the log above; to read in the daemon itself set [source] reader = "thread"',
                ) from None
            if item is not None:
                break
            if time.monotonic() > deadline:
                raise SourceUnavailable("the replication stream did not start in time", retryable=True)
        if isinstance(item, BaseException):
            raise item
        LogicalSource._early_deaths = 0

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
            yield from (decode_events(chunk) if self._process else chunk)

    def _next(self, timeout: float) -> object | None:
        """The next item from the reader, None when none came within ``timeout``.

        Raises ``_ReaderGone`` when the reader process has ended and left nothing more: its last
        item (often an error) is in the pipe before it exits, so look once more first. A reader
        killed while it wrote leaves an end of file, or half a chunk: that is gone too, never a
        chunk to decode.
        """
        try:
            item: object = self._queue.get(timeout=timeout)
            return item
        except queue.Empty:
            pass
        except (EOFError, OSError):  # every writer is gone (see open): mid-chunk, or between chunks
            if self._child is None:
                raise
            self._child.join(timeout=5)
            raise _ReaderGone(self._child.exitcode) from None
        if self._child is not None and not self._child.is_alive():
            try:
                last: object = self._queue.get(timeout=0.2)
                return last
            except queue.Empty:
                raise _ReaderGone(self._child.exitcode) from None
        return None

    def last_heard(self) -> float:
        """``time.monotonic()`` when the reader last heard from the walsender (or waited on us)."""
        return float(self._heard.value)

    def confirm(self, upto: Lsn) -> None:
        """Called from the thread that owns the source (the Source contract); the reader reads the word."""
        if upto > self._flush:
            self._flush = upto
            self._shared_flush.value = upto.value

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
                except (EOFError, OSError):  # it is gone (or going): nothing more will come
                    break
            if self._child.is_alive():
                self._child.kill()
            self._child.join(timeout=5)
            self._queue.close()
            self._queue.cancel_join_thread()
        shutil.rmtree(self._spill_root, ignore_errors=True)
