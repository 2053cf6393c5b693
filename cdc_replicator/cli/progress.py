"""Progress of table loads: a live display on a terminal, log lines elsewhere, a summary at the end.

Threads: every method of ``LoadProgress`` may be called from any thread, and chunks may finish in
any order. Between ``start()`` and ``stop()`` one small daemon thread redraws the display (terminal)
or writes progress log lines (elsewhere). The text itself comes from ``progress_text`` (pure).
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Self, TextIO

from cdc_replicator.cli.progress_text import (
    TableProgress,
    TableStatus,
    TableSummary,
    render_lines,
    render_summary,
)

# Re-exported with LoadProgress: the values it returns and the renderer of its summary().
__all__ = ["LoadProgress", "TableProgress", "TableStatus", "TableSummary", "render_summary"]

logger = logging.getLogger(__name__)

_CURSOR_UP_LINES = "\x1b[{n}F"  # to the start of the line n lines up
_CLEAR_LINE = "\x1b[2K"


@dataclass(slots=True)
class _Entry:
    """One table's progress (``seconds`` not yet set) and its clock; guarded by ``LoadProgress._lock``."""

    progress: TableProgress
    started: float
    finished: float | None = None

    def at(self, now: float) -> TableProgress:
        """The progress as of ``now``: ``seconds`` runs from the start until the table finished."""
        end = now if self.finished is None else self.finished
        return replace(self.progress, seconds=max(0.0, end - self.started))


class LoadProgress:
    """Progress of several tables loading in parallel, chunk by chunk.

    A table's time runs from ``add_table`` to ``table_done``/``table_failed``: call ``add_table``
    when its load begins. On a terminal (``interactive``) ``start()`` redraws one line per table
    every ``interval`` seconds; elsewhere it logs one line per loading table every
    ``log_interval`` seconds, plus one line as each table finishes, and writes nothing to
    ``stream``. Every method is thread-safe; ``tick()`` does once what the thread does each time.
    """

    def __init__(
        self,
        *,
        stream: TextIO | None = None,
        interactive: bool | None = None,
        interval: float = 0.5,
        log_interval: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``stream`` defaults to ``sys.stderr``; ``interactive`` to whether it is a terminal (not TERM=dumb)."""
        if interval <= 0 or log_interval <= 0:
            raise ValueError(f"progress intervals must be positive, got {interval=} {log_interval=}")
        self._stream = sys.stderr if stream is None else stream
        if interactive is None:
            interactive = self._stream.isatty() and os.environ.get("TERM") != "dumb"
        self._interactive = interactive
        self._interval = interval
        self._log_interval = log_interval
        self._clock = clock
        self._lock = threading.Lock()  # guards the tables and _last_log
        self._out_lock = threading.Lock()  # guards the stream and _drawn
        self._tables: dict[str, _Entry] = {}
        self._last_log = clock()
        self._drawn = 0  # lines of the display on screen, for the cursor to go back up
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._stopped = False

    @property
    def interactive(self) -> bool:
        return self._interactive

    # ---- events, from any thread

    def add_table(self, table: str, *, estimated_rows: int | None, chunks: int) -> None:
        """A table's load begins; ``estimated_rows`` may be None (unknown) or far off."""
        if chunks < 0:
            raise ValueError(f"table {table}: chunks must be >= 0, got {chunks}")
        with self._lock:
            if table in self._tables:
                raise ValueError(f"table {table} was added to the progress twice")
            begun = TableProgress(table, TableStatus.LOADING, estimated_rows=estimated_rows, chunks=chunks)
            self._tables[table] = _Entry(begun, started=self._clock())

    def chunk_done(self, table: str, *, rows: int, files: int, bytes: int) -> None:
        """One chunk of ``table`` is written; chunks may finish in any order, on any thread."""
        with self._lock:
            t = self._get(table)
            p = t.progress
            t.progress = replace(
                p,
                chunks_done=p.chunks_done + 1,
                rows=p.rows + rows,
                files=p.files + files,
                bytes=p.bytes + bytes,
            )

    def resumed(self, table: str, *, chunks_done: int, rows: int) -> None:
        """An earlier run already loaded ``chunks_done`` chunks of ``rows`` rows: done, but not in rows/s."""
        with self._lock:
            t = self._get(table)
            p = t.progress
            t.progress = replace(
                p,
                chunks_done=p.chunks_done + chunks_done,
                rows=p.rows + rows,
                rows_resumed=p.rows_resumed + rows,
            )

    def table_done(self, table: str) -> None:
        """``table`` is loaded. The first of table_done/table_failed counts; a later one is ignored."""
        self._finish(table, TableStatus.DONE, None)

    def table_failed(self, table: str, error: str) -> None:
        """``table``'s load failed with ``error`` (shown and logged: keep row values out of it)."""
        self._finish(table, TableStatus.FAILED, error)

    def _get(self, table: str) -> _Entry:
        try:
            return self._tables[table]
        except KeyError:
            raise ValueError(f"table {table} is not in the progress: call add_table first") from None

    def _finish(self, table: str, status: TableStatus, error: str | None) -> None:
        with self._lock:
            t = self._get(table)
            if t.progress.status is not TableStatus.LOADING:
                return
            t.progress = replace(t.progress, status=status, error=error)
            t.finished = self._clock()
            state = t.at(t.finished)
        _log_finished(state, interactive=self._interactive)

    # ---- reading

    def tables(self) -> list[TableProgress]:
        """Every table's progress now, in the order they were added."""
        now = self._clock()
        with self._lock:
            return [t.at(now) for t in self._tables.values()]

    def summary(self) -> list[TableSummary]:
        """How each table's load went (or goes, for one still loading), in the order they were added."""
        return [
            TableSummary(
                table=s.table,
                rows=s.rows,
                seconds=s.seconds,
                rows_per_second=s.rows_per_second,
                files=s.files,
                bytes=s.bytes,
                state=s.status,
                rows_resumed=s.rows_resumed,
                error=s.error,
            )
            for s in self.tables()
        ]

    def wall_seconds(self) -> float:
        """From the first table's start to the last one's end (or now, while one still loads)."""
        now = self._clock()
        with self._lock:
            tables = list(self._tables.values())
        if not tables:
            return 0.0
        ends = [now if t.finished is None else t.finished for t in tables]
        return max(0.0, max(ends) - min(t.started for t in tables))

    # ---- display

    def tick(self) -> None:
        """Redraw (terminal), or log the loading tables if ``log_interval`` has passed (elsewhere)."""
        if self._interactive:
            self._draw()
            return
        now = self._clock()
        with self._lock:
            due = now - self._last_log >= self._log_interval
            if due:
                self._last_log = now
        if due:
            self._log_loading()

    def start(self) -> Self:
        """Start the display thread (a daemon: it never keeps the process alive)."""
        with self._lock:
            if self._thread is not None or self._stopped:
                raise RuntimeError("a LoadProgress can be started only once")
            self._last_log = self._clock()
            self._thread = threading.Thread(target=self._run, name="load-progress", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the thread, then show the final state: a last redraw (terminal) or a log line per
        table still loading (elsewhere). Idempotent."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
            thread, self._thread = self._thread, None
        self._stopping.set()
        if thread is not None:
            thread.join()
        if self._interactive:
            self._draw()
        else:
            self._log_loading()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _run(self) -> None:
        period = self._interval if self._interactive else min(self._interval, self._log_interval)
        while not self._stopping.wait(period):
            try:
                self.tick()
            except Exception:  # a broken display must not go unnoticed, nor take the load down
                logger.warning("progress display stopped after an error", exc_info=True)
                return

    def _draw(self) -> None:
        states = self.tables()
        size = shutil.get_terminal_size()
        # one column spare: a line that fills the last column makes some terminals wrap early
        lines = render_lines(states, width=max(size.columns - 1, 20), height=max(size.lines - 1, 2))
        with self._out_lock:
            count = max(len(lines), self._drawn)
            if count == 0:
                return
            parts = [_CURSOR_UP_LINES.format(n=self._drawn)] if self._drawn else []
            parts += [f"{_CLEAR_LINE}{lines[i] if i < len(lines) else ''}\n" for i in range(count)]
            self._stream.write("".join(parts))
            self._stream.flush()
            self._drawn = count

    def _log_loading(self) -> None:
        for s in self.tables():
            if s.status is TableStatus.LOADING:
                eta = s.eta_seconds
                logger.info(
                    "snapshot progress table=%s rows=%d rows_per_s=%.0f chunks=%d/%d pct=%.1f eta_s=%s",
                    s.table,
                    s.rows,
                    s.rows_per_second,
                    s.chunks_done,
                    s.chunks,
                    s.percent,
                    "unknown" if eta is None else f"{eta:.0f}",
                )


def _log_finished(s: TableProgress, *, interactive: bool) -> None:
    """One line as a table finishes; at debug level on a terminal, where the display shows it and a
    log line would break the redraw."""
    if s.status is TableStatus.FAILED:
        logger.log(
            logging.DEBUG if interactive else logging.WARNING,
            "snapshot table failed table=%s rows=%d seconds=%.1f chunks=%d/%d error=%s",
            s.table,
            s.rows,
            s.seconds,
            s.chunks_done,
            s.chunks,
            s.error,
        )
        return
    logger.log(
        logging.DEBUG if interactive else logging.INFO,
        "snapshot table done table=%s rows=%d seconds=%.1f rows_per_s=%.0f chunks=%d/%d files=%d bytes=%d",
        s.table,
        s.rows,
        s.seconds,
        s.rows_per_second,
        s.chunks_done,
        s.chunks,
        s.files,
        s.bytes,
    )
