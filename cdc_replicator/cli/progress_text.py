"""Load progress as text: its values, number formats, the display's lines and the end summary.

Pure: values in, text out; no clock, no stream and no thread (``progress.LoadProgress`` holds the
state and draws). ``format_*``, ``percent_done`` and ``eta_seconds`` work on numbers;
``render_line`` and ``render_lines`` build the live display, ``render_summary`` the closing table.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

__all__ = [
    "UNKNOWN",
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

UNKNOWN = "—"  # shown where a value (an ETA) cannot be estimated

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
    ``seconds`` is the table's time so far (until it finished, for a finished table). The counts
    start at zero.
    """

    table: str
    status: TableStatus
    estimated_rows: int | None
    chunks: int
    chunks_done: int = 0
    rows: int = 0
    rows_resumed: int = 0
    files: int = 0
    bytes: int = 0
    seconds: float = 0.0
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


def _counted(statuses: Sequence[TableStatus]) -> str:
    """``"2 loading, 1 failed"``: how many of each status, in ``TableStatus`` order; none of one: left out."""
    return ", ".join(f"{statuses.count(status)} {status}" for status in TableStatus if status in statuses)


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
        counts = _counted([s.status for s in hidden])
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
    states = _counted([s.state for s in summaries])
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
