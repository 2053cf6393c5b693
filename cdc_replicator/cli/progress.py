"""Progress of table loads: a live display on a terminal, log lines elsewhere, a summary at the end.

Threads: every method of ``LoadProgress`` may be called from any thread, and chunks may finish in
any order. Between ``start()`` and ``stop()`` one small daemon thread redraws the display (terminal)
or writes progress log lines (elsewhere). The helpers ``format_*``, ``percent_done``,
``eta_seconds``, ``render_line``, ``render_lines`` and ``render_summary`` are pure: values in, text
out, no clock and no stream.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from types import TracebackType
from typing import TextIO

__all__ = [
    "UNKNOWN",
    "LoadProgress",
    "TableProgress",
    "TableStatus",
    "TableSummary",
    "eta_seconds",
    "format_bytes",
    "format_duration",
    "format_eta",
    "format_rate",
    "percent_done",
    "render_line",
    "render_lines",
    "render_summary",
]

logger = logging.getLogger(__name__)

UNKNOWN = "—"  # shown where a value (an ETA) cannot be estimated

_CURSOR_UP_LINES = "\x1b[{n}F"  # to the start of the line n lines up
_CLEAR_LINE = "\x1b[2K"
_MIN_BAR = 12  # a bar narrower than this (brackets included) is dropped
_MAX_BAR = 32
_CHUNKS_COL = len("chunks 999/999")
_TAIL_COL = len("done in 59m59s")  # room kept for the ETA, "done in …" or the start of "FAILED: …"
_MIN_NAME = 8  # a table name is cut (with "…") down to this width before the line is cut


class TableStatus(StrEnum):
    LOADING = "loading"
    DONE = "done"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class TableProgress:
    """One table's load at one moment.

    ``rows`` and ``chunks_done`` include what an earlier run already loaded (``rows_resumed``);
    ``seconds`` is the table's time so far (until it finished, for a finished table).
    """

    table: str
    status: TableStatus
    estimated_rows: int | None
    chunks: int
    chunks_done: int
    rows: int
    rows_resumed: int
    files: int
    bytes: int
    seconds: float
    error: str | None = None

    @property
    def rows_per_second(self) -> float:
        """Rows this run loaded per second of the table's time; resumed rows are excluded."""
        return _rate(self.rows - self.rows_resumed, self.seconds)

    @property
    def percent(self) -> float:
        return percent_done(
            rows=self.rows,
            estimated_rows=self.estimated_rows,
            chunks_done=self.chunks_done,
            chunks=self.chunks,
            done=self.status is TableStatus.DONE,
        )

    @property
    def eta_seconds(self) -> float | None:
        """Seconds left while loading, None when unknown or when the table has finished."""
        if self.status is not TableStatus.LOADING:
            return None
        return eta_seconds(
            rows=self.rows, estimated_rows=self.estimated_rows, rows_per_second=self.rows_per_second
        )


@dataclass(frozen=True, slots=True)
class TableSummary:
    """How one table's load went. ``rows`` includes ``rows_resumed``; ``rows_per_second`` does not."""

    table: str
    rows: int
    seconds: float
    rows_per_second: float
    files: int
    bytes: int
    state: TableStatus
    rows_resumed: int = 0
    error: str | None = None


# ---- pure helpers ------------------------------------------------------------------------------


def _rate(rows: int, seconds: float) -> float:
    return rows / seconds if seconds > 0 else 0.0


def _scaled(value: float, base: float, units: Sequence[str]) -> tuple[float, str]:
    """``value`` in the largest unit that keeps it below ``base`` once rounded to one decimal."""
    for unit in units[:-1]:
        if abs(value) < base - 0.05:
            return value, unit
        value /= base
    return value, units[-1]


def format_rate(rows_per_second: float) -> str:
    """``"950 rows/s"``, ``"45.2k rows/s"``, ``"1.3M rows/s"``."""
    if rows_per_second < 999.5:
        return f"{rows_per_second:.0f} rows/s"
    value, unit = _scaled(rows_per_second / 1000, 1000, ("k", "M", "G"))
    return f"{value:.1f}{unit} rows/s"


def format_bytes(n: int) -> str:
    """Binary units: ``"512 B"``, ``"1.5 KiB"``, ``"3.2 GiB"``."""
    if n < 1024:
        return f"{n} B"
    value, unit = _scaled(n / 1024, 1024, ("KiB", "MiB", "GiB", "TiB", "PiB"))
    return f"{value:.1f} {unit}"


def format_duration(seconds: float) -> str:
    """``"7s"``, ``"1m05s"``, ``"2h03m"`` (whole seconds, rounded up from the first fraction)."""
    s = max(0, int(seconds + 0.999))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def format_eta(seconds: float | None) -> str:
    """``format_duration``, or ``UNKNOWN`` ("—") for None."""
    return UNKNOWN if seconds is None else format_duration(seconds)


def percent_done(
    *, rows: int, estimated_rows: int | None, chunks_done: int, chunks: int, done: bool
) -> float:
    """Percent of the estimated rows, from chunks when there is no estimate; at most 99 until done.

    Row estimates (``pg_class.reltuples``) can be far off, so 100 % means "finished", never "the
    estimate was reached".
    """
    if done:
        return 100.0
    if estimated_rows is not None and estimated_rows > 0:
        percent = 100 * rows / estimated_rows
    elif chunks > 0:
        percent = 100 * chunks_done / chunks
    else:
        percent = 0.0
    return max(0.0, min(percent, 99.0))


def eta_seconds(*, rows: int, estimated_rows: int | None, rows_per_second: float) -> float | None:
    """Seconds until ``estimated_rows`` at ``rows_per_second``; None without an estimate, without a
    rate yet, or once the rows exceed the estimate (which was then wrong)."""
    if estimated_rows is None or estimated_rows <= 0 or rows_per_second <= 0:
        return None
    remaining = estimated_rows - rows
    return remaining / rows_per_second if remaining > 0 else None


def _printable(text: str) -> str:
    """Control characters (a newline in an error, an escape in a table name) become spaces."""
    return "".join(c if c.isprintable() else " " for c in text)


def _fit(text: str, width: int) -> str:
    """``text`` cut to ``width`` columns, ending in "…" when it was cut."""
    if len(text) <= width:
        return text
    return text[: width - 1] + "…" if width > 0 else ""


def _bar(percent: float, width: int) -> str:
    inner = width - 2
    filled = int(percent / 100 * inner)
    return "[" + "█" * filled + "░" * (inner - filled) + "]"


def render_line(state: TableProgress, width: int, *, name_width: int | None = None) -> str:
    """One display line of at most ``width`` columns.

    ``name``, a bar (when there is room), percent, rows, rows/s, chunks done/total, then the ETA,
    ``done in …`` or ``FAILED: error``. ``name_width`` pads (or cuts) names so lines align.
    """
    name = _printable(state.table)
    name_col = len(name) if name_width is None else name_width
    if state.status is TableStatus.DONE:
        tail = f"done in {format_duration(state.seconds)}"
    elif state.status is TableStatus.FAILED:
        tail = f"FAILED: {_printable(state.error or '')}"
    else:
        tail = f"ETA {format_eta(state.eta_seconds)}"
    chunks = f"chunks {state.chunks_done}/{state.chunks}"
    stats = "  ".join(
        [
            f"{int(state.percent):>3d}%",
            f"{state.rows:>11,} rows",
            f"{format_rate(state.rows_per_second):>13}",
            f"{chunks:<{_CHUNKS_COL}}",
            tail,
        ]
    )
    # widths count _TAIL_COL, not the tail's own length, so the columns of all tables line up
    fixed = len(stats) - len(tail) + _TAIL_COL
    room = width - name_col - fixed - 4  # two spaces either side of the bar
    if room >= _MIN_BAR:
        line = f"{_fit(name, name_col):<{name_col}}  {_bar(state.percent, min(room, _MAX_BAR))}  {stats}"
    else:
        name_col = max(min(name_col, width - fixed - 2), min(_MIN_NAME, name_col))
        line = f"{_fit(name, name_col):<{name_col}}  {stats}"
    return _fit(line, width)


def render_lines(states: Sequence[TableProgress], width: int, height: int) -> list[str]:
    """The whole display: one aligned line per table, at most ``height`` lines of ``width`` columns.

    When the tables do not fit, finished tables are hidden first; the last line counts what is hidden.
    """
    if not states or height <= 0:
        return []
    name_width = min(max(len(s.table) for s in states), max(_MIN_NAME, width // 3))
    shown = list(states)
    hidden: list[TableProgress] = []
    if len(states) > height:
        shown = [s for s in states if s.status is not TableStatus.DONE][: height - 1]
        kept = {id(s) for s in shown}
        hidden = [s for s in states if id(s) not in kept]
    lines = [render_line(s, width, name_width=name_width) for s in shown]
    if hidden:
        counts = ", ".join(
            f"{sum(1 for s in hidden if s.status is status)} {status}"
            for status in TableStatus
            if any(s.status is status for s in hidden)
        )
        lines.append(_fit(f"… {len(hidden)} more tables ({counts})", width))
    return lines


def render_summary(summaries: Sequence[TableSummary], *, wall_seconds: float | None = None) -> str:
    """An aligned table, one row per table and a total row, then the error of each failed table.

    The total's time is ``wall_seconds`` (tables load in parallel, so their times do not add up),
    else the longest table time; its rate counts only rows this run loaded.
    """
    header = ["table", "state", "rows", "time", "rate", "files", "size"]
    right = [False, False, True, True, True, True, True]
    body = [
        [
            _printable(s.table),
            str(s.state),
            f"{s.rows:,}",
            format_duration(s.seconds),
            format_rate(s.rows_per_second),
            f"{s.files:,}",
            format_bytes(s.bytes),
        ]
        for s in summaries
    ]
    total_seconds = (
        wall_seconds if wall_seconds is not None else max((s.seconds for s in summaries), default=0)
    )
    states = ", ".join(
        f"{sum(1 for s in summaries if s.state is status)} {status}"
        for status in TableStatus
        if any(s.state is status for s in summaries)
    )
    total = [
        "total",
        states or "0 tables",
        f"{sum(s.rows for s in summaries):,}",
        format_duration(total_seconds),
        format_rate(_rate(sum(s.rows - s.rows_resumed for s in summaries), total_seconds)),
        f"{sum(s.files for s in summaries):,}",
        format_bytes(sum(s.bytes for s in summaries)),
    ]
    widths = [max(len(row[i]) for row in [header, *body, total]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "  ".join(
            c.rjust(w) if r else c.ljust(w) for c, w, r in zip(cells, widths, right, strict=True)
        ).rstrip()

    rule = "-" * (sum(widths) + 2 * (len(widths) - 1))
    out = [line(header), rule, *(line(row) for row in body), rule, line(total)]
    failed = [s for s in summaries if s.state is TableStatus.FAILED]
    if failed:
        out += ["", "failed:"] + [f"  {_printable(s.table)}: {_printable(s.error or '')}" for s in failed]
    return "\n".join(out)


# ---- the stateful part -------------------------------------------------------------------------


@dataclass(slots=True)
class _Table:
    """Mutable counters of one table; guarded by ``LoadProgress._lock``."""

    table: str
    estimated_rows: int | None
    chunks: int
    started: float
    chunks_done: int = 0
    rows: int = 0
    rows_resumed: int = 0
    files: int = 0
    bytes: int = 0
    status: TableStatus = TableStatus.LOADING
    finished: float | None = None
    error: str | None = None

    def freeze(self, now: float) -> TableProgress:
        end = now if self.finished is None else self.finished
        return TableProgress(
            table=self.table,
            status=self.status,
            estimated_rows=self.estimated_rows,
            chunks=self.chunks,
            chunks_done=self.chunks_done,
            rows=self.rows,
            rows_resumed=self.rows_resumed,
            files=self.files,
            bytes=self.bytes,
            seconds=max(0.0, end - self.started),
            error=self.error,
        )


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
        self._tables: dict[str, _Table] = {}
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
            self._tables[table] = _Table(table, estimated_rows, chunks, started=self._clock())

    def chunk_done(self, table: str, *, rows: int, files: int, bytes: int) -> None:
        """One chunk of ``table`` is written; chunks may finish in any order, on any thread."""
        with self._lock:
            t = self._get(table)
            t.chunks_done += 1
            t.rows += rows
            t.files += files
            t.bytes += bytes

    def resumed(self, table: str, *, chunks_done: int, rows: int) -> None:
        """An earlier run already loaded ``chunks_done`` chunks of ``rows`` rows: done, but not in rows/s."""
        with self._lock:
            t = self._get(table)
            t.chunks_done += chunks_done
            t.rows += rows
            t.rows_resumed += rows

    def table_done(self, table: str) -> None:
        """``table`` is loaded. The first of table_done/table_failed counts; a later one is ignored."""
        self._finish(table, TableStatus.DONE, None)

    def table_failed(self, table: str, error: str) -> None:
        """``table``'s load failed with ``error`` (shown and logged: keep row values out of it)."""
        self._finish(table, TableStatus.FAILED, error)

    def _get(self, table: str) -> _Table:
        try:
            return self._tables[table]
        except KeyError:
            raise ValueError(f"table {table} is not in the progress: call add_table first") from None

    def _finish(self, table: str, status: TableStatus, error: str | None) -> None:
        with self._lock:
            t = self._get(table)
            if t.status is not TableStatus.LOADING:
                return
            t.status, t.error, t.finished = status, error, self._clock()
            state = t.freeze(t.finished)
        _log_finished(state, interactive=self._interactive)

    # ---- reading

    def tables(self) -> list[TableProgress]:
        """Every table's progress now, in the order they were added."""
        now = self._clock()
        with self._lock:
            return [t.freeze(now) for t in self._tables.values()]

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

    def start(self) -> LoadProgress:
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

    def __enter__(self) -> LoadProgress:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
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
