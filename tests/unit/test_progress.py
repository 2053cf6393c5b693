"""Specification of LoadProgress: what the snapshot shows on a terminal, logs elsewhere, sums up at the end.

Time is a ``FakeClock`` moved by hand and output goes to an ``io.StringIO``; ``tick()`` does once what
the display thread does every interval, so no test waits for the thread except the thread tests.
"""

from __future__ import annotations

import io
import logging
import re
import threading
from dataclasses import replace

import pytest

from cdc_replicator.cli.progress import LoadProgress
from cdc_replicator.cli.progress_text import (
    UNKNOWN,
    TableProgress,
    TableStatus,
    TableSummary,
    eta_seconds,
    format_bytes,
    format_duration,
    format_eta,
    format_rate,
    percent_done,
    render_line,
    render_lines,
    render_summary,
)
from tests.support.events import FakeClock

LOGGER = "cdc_replicator.cli.progress"
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def terminal(clock: FakeClock, **kw: float) -> tuple[LoadProgress, io.StringIO]:
    out = io.StringIO()
    return LoadProgress(stream=out, interactive=True, clock=clock, **kw), out


def not_a_terminal(clock: FakeClock, **kw: float) -> tuple[LoadProgress, io.StringIO]:
    out = io.StringIO()
    return LoadProgress(stream=out, interactive=False, clock=clock, **kw), out


def state(**kw: object) -> TableProgress:
    values: dict[str, object] = {
        "table": "public.orders",
        "status": TableStatus.LOADING,
        "estimated_rows": 1000,
        "chunks": 10,
        "chunks_done": 5,
        "rows": 500,
        "rows_resumed": 0,
        "files": 5,
        "bytes": 5000,
        "seconds": 10.0,
    } | kw
    return TableProgress(**values)  # type: ignore[arg-type]


def last_frame(out: io.StringIO) -> list[str]:
    """The lines of the last redraw, ANSI codes removed."""
    frames = re.split(r"\x1b\[\d+F", out.getvalue())
    return [ANSI.sub("", line) for line in frames[-1].splitlines()]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(autouse=True)
def terminal_size(monkeypatch: pytest.MonkeyPatch) -> None:
    """shutil.get_terminal_size reads these first: every display test sees a 100x30 terminal."""
    monkeypatch.setenv("COLUMNS", "100")
    monkeypatch.setenv("LINES", "30")


# ---- pure helpers ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rate", "text"),
    [
        (0, "0 rows/s"),
        (950.4, "950 rows/s"),
        (999.6, "1.0k rows/s"),
        (45_240, "45.2k rows/s"),
        (999_960, "1.0M rows/s"),
        (1_300_000, "1.3M rows/s"),
        (2.5e9, "2.5G rows/s"),
    ],
)
def test_rates_are_written_with_a_unit_and_one_decimal(rate: float, text: str) -> None:
    assert format_rate(rate) == text


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (0, "0 B"),
        (1023, "1023 B"),
        (1536, "1.5 KiB"),
        (1024 * 1024 - 1, "1.0 MiB"),
        (12 * 1024**2, "12.0 MiB"),
        (int(3.2 * 1024**3), "3.2 GiB"),
        (5 * 1024**4, "5.0 TiB"),
    ],
)
def test_sizes_are_written_in_binary_units(n: int, text: str) -> None:
    assert format_bytes(n) == text


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0s"), (6.2, "7s"), (59, "59s"), (65, "1m05s"), (3599, "59m59s"), (7380, "2h03m"), (-3, "0s")],
)
def test_durations_are_written_in_the_two_largest_units(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


def test_an_unknown_eta_is_written_as_a_dash() -> None:
    assert format_eta(None) == UNKNOWN == "—"
    assert format_eta(65) == "1m05s"


def test_the_eta_is_the_remaining_estimated_rows_at_the_current_rate() -> None:
    assert eta_seconds(rows=400, estimated_rows=1000, rows_per_second=20) == 30


@pytest.mark.parametrize(
    ("rows", "estimated", "rate"),
    [(400, None, 20.0), (400, 0, 20.0), (400, 1000, 0.0), (1000, 1000, 20.0), (1500, 1000, 20.0)],
    ids=["no estimate", "zero estimate", "no rate yet", "estimate reached", "estimate exceeded"],
)
def test_the_eta_is_unknown_without_an_estimate_a_rate_or_rows_left(
    rows: int, estimated: int | None, rate: float
) -> None:
    assert eta_seconds(rows=rows, estimated_rows=estimated, rows_per_second=rate) is None


def test_percent_is_of_the_estimate_and_stays_below_100_until_done() -> None:
    common = {"estimated_rows": 1000, "chunks_done": 1, "chunks": 4}

    assert percent_done(rows=250, done=False, **common) == 25.0
    assert percent_done(rows=995, done=False, **common) == 99.0
    assert percent_done(rows=5000, done=False, **common) == 99.0
    assert percent_done(rows=10, done=True, **common) == 100.0


def test_percent_without_an_estimate_counts_chunks() -> None:
    assert percent_done(rows=7, estimated_rows=None, chunks_done=1, chunks=4, done=False) == 25.0
    assert percent_done(rows=7, estimated_rows=None, chunks_done=4, chunks=4, done=False) == 99.0
    assert percent_done(rows=0, estimated_rows=None, chunks_done=0, chunks=0, done=False) == 0.0


def test_a_line_shows_table_bar_percent_rows_rate_chunks_and_eta() -> None:
    line = render_line(state(rows=500, seconds=10.0, estimated_rows=1000), 100)

    assert line.startswith("public.orders  [")
    assert "]   50%" in line
    assert "500 rows" in line
    assert "50 rows/s" in line
    assert "chunks 5/10" in line
    assert line.endswith("ETA 10s")


def test_a_finished_line_shows_its_time_and_a_failed_one_its_error_on_one_line() -> None:
    done = render_line(state(status=TableStatus.DONE, seconds=65.0), 100)
    failed = render_line(state(status=TableStatus.FAILED, error="copy failed\n  hint: \x1b[2Jretry"), 200)

    assert "100%" in done and done.endswith("done in 1m05s")
    assert failed.endswith("FAILED: copy failed   hint:  [2Jretry")
    assert "\x1b" not in failed and "\n" not in failed


@pytest.mark.parametrize("width", [200, 100, 80, 60, 40, 20])
def test_a_line_never_exceeds_the_width(width: int) -> None:
    long = state(table="analytics." + "x" * 80, rows=12_345_678_901, error="e" * 300)
    for status in TableStatus:
        line = render_line(replace(long, status=status), width)

        assert len(line) <= width


def test_lines_of_different_tables_align_their_columns() -> None:
    states = [
        state(table="public.orders", rows=5, chunks=24, chunks_done=3),
        state(table="analytics.page_views", rows=12_000_000, chunks=400, chunks_done=130),
        state(table="public.x", status=TableStatus.DONE),
    ]
    for width in (120, 79):
        lines = render_lines(states, width, 10)

        assert len({line.index("%") for line in lines}) == 1
        assert len({line.index("chunks") for line in lines}) == 1


def test_a_display_taller_than_the_terminal_hides_finished_tables_first() -> None:
    states = [
        state(table="t1", status=TableStatus.DONE),
        state(table="t2"),
        state(table="t3", status=TableStatus.DONE),
        state(table="t4", status=TableStatus.FAILED, error="boom"),
        state(table="t5"),
    ]

    lines = render_lines(states, 100, 3)

    assert [line.split()[0] for line in lines[:2]] == ["t2", "t4"]
    assert lines[2] == "… 3 more tables (1 loading, 2 done)"


# ---- the display and the logs ------------------------------------------------------------------


def test_percent_clamps_below_100_while_loading_and_is_100_once_done(clock: FakeClock) -> None:
    progress, out = terminal(clock)
    progress.add_table("public.orders", estimated_rows=100, chunks=3)
    clock.advance(1)
    for _ in range(3):
        progress.chunk_done("public.orders", rows=60, files=1, bytes=10)  # the estimate was low

    progress.tick()
    (loading,) = progress.tables()
    assert loading.percent == 99.0
    assert " 99%" in last_frame(out)[0]

    progress.table_done("public.orders")
    progress.tick()
    assert progress.tables()[0].percent == 100.0
    assert "100%" in last_frame(out)[0]


def test_resumed_chunks_count_as_done_but_not_in_rows_per_second(clock: FakeClock) -> None:
    progress, _ = terminal(clock)
    progress.add_table("public.orders", estimated_rows=2_000_000, chunks=20)
    progress.resumed("public.orders", chunks_done=10, rows=1_000_000)
    clock.advance(10)
    progress.chunk_done("public.orders", rows=100_000, files=1, bytes=1)

    (s,) = progress.tables()

    assert (s.chunks_done, s.rows, s.rows_resumed) == (11, 1_100_000, 1_000_000)
    assert s.rows_per_second == 10_000
    assert s.percent == 55.0
    assert s.eta_seconds == 90  # 900,000 rows left at 10,000 rows/s
    (summary,) = progress.summary()
    assert (summary.rows, summary.rows_per_second) == (1_100_000, 10_000)


def test_the_eta_is_unknown_without_an_estimate(clock: FakeClock) -> None:
    progress, out = terminal(clock)
    progress.add_table("public.events", estimated_rows=None, chunks=4)
    clock.advance(5)
    progress.chunk_done("public.events", rows=1000, files=1, bytes=1)

    progress.tick()

    assert progress.tables()[0].eta_seconds is None
    assert last_frame(out)[0].endswith("ETA —")


def test_the_terminal_display_redraws_its_lines_in_place(clock: FakeClock) -> None:
    progress, out = terminal(clock)
    progress.add_table("public.orders", estimated_rows=100, chunks=2)
    progress.add_table("public.customers", estimated_rows=100, chunks=2)

    progress.tick()
    first = out.getvalue()
    progress.tick()
    second = out.getvalue()[len(first) :]

    assert "\x1b[" not in first.replace("\x1b[2K", "")  # nothing drawn yet: no cursor movement
    assert first.count("\x1b[2K") == 2 and first.count("\n") == 2
    assert second.startswith("\x1b[2F\x1b[2Kpublic.orders")
    assert second.count("\n") == 2


def test_terminal_lines_fit_the_terminal_width(clock: FakeClock, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "50")
    progress, out = terminal(clock)
    progress.add_table("analytics.page_views_with_a_very_long_name", estimated_rows=10**9, chunks=999)
    progress.chunk_done("analytics.page_views_with_a_very_long_name", rows=10**8, files=1, bytes=1)

    progress.tick()

    assert all(len(line) < 50 for line in last_frame(out))


def test_a_second_table_failure_or_done_does_not_change_the_first_outcome(clock: FakeClock) -> None:
    progress, _ = terminal(clock)
    progress.add_table("public.orders", estimated_rows=None, chunks=1)
    progress.table_failed("public.orders", "source went away")
    clock.advance(5)

    progress.table_done("public.orders")

    (s,) = progress.summary()
    assert (s.state, s.error, s.seconds) == (TableStatus.FAILED, "source went away", 0.0)


def test_events_for_a_table_never_added_are_refused(clock: FakeClock) -> None:
    progress, _ = terminal(clock)
    progress.add_table("public.orders", estimated_rows=None, chunks=1)

    with pytest.raises(ValueError, match="public.nope is not in the progress"):
        progress.chunk_done("public.nope", rows=1, files=1, bytes=1)
    with pytest.raises(ValueError, match="added to the progress twice"):
        progress.add_table("public.orders", estimated_rows=None, chunks=1)


def test_off_a_terminal_each_loading_table_is_logged_every_log_interval(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    progress, out = not_a_terminal(clock, log_interval=10)
    progress.add_table("public.orders", estimated_rows=1000, chunks=4)
    progress.add_table("public.events", estimated_rows=None, chunks=4)
    clock.advance(9)
    progress.chunk_done("public.orders", rows=250, files=1, bytes=1)
    progress.chunk_done("public.events", rows=90, files=1, bytes=1)

    progress.tick()
    assert caplog.messages == []  # 9 s: not yet

    clock.advance(1)
    progress.tick()
    progress.tick()  # again at once: nothing new
    assert caplog.messages == [
        "snapshot progress table=public.orders rows=250 rows_per_s=25 chunks=1/4 pct=25.0 eta_s=30",
        "snapshot progress table=public.events rows=90 rows_per_s=9 chunks=1/4 pct=25.0 eta_s=unknown",
    ]
    assert out.getvalue() == ""


def test_off_a_terminal_a_finished_table_logs_one_line_and_no_ansi_code_is_ever_written(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    progress, out = not_a_terminal(clock, log_interval=1)
    progress.add_table("public.orders", estimated_rows=100, chunks=1)
    progress.add_table("public.bad", estimated_rows=100, chunks=1)
    clock.advance(4)
    progress.chunk_done("public.orders", rows=100, files=2, bytes=2048)

    progress.table_done("public.orders")
    progress.table_failed("public.bad", "copy failed")
    clock.advance(5)
    progress.tick()
    progress.stop()

    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        (
            "INFO",
            "snapshot table done table=public.orders rows=100 seconds=4.0 rows_per_s=25 chunks=1/1 "
            "files=2 bytes=2048",
        ),
        ("WARNING", "snapshot table failed table=public.bad rows=0 seconds=4.0 chunks=0/1 error=copy failed"),
    ]
    assert out.getvalue() == ""
    assert not any("\x1b" in m for m in caplog.messages)


def test_stop_off_a_terminal_logs_the_tables_still_loading(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    progress, _ = not_a_terminal(clock)
    progress.add_table("public.orders", estimated_rows=None, chunks=2)

    progress.stop()
    progress.stop()  # idempotent

    assert caplog.messages == [
        "snapshot progress table=public.orders rows=0 rows_per_s=0 chunks=0/2 pct=0.0 eta_s=unknown"
    ]


def test_on_a_terminal_finished_tables_log_only_at_debug_level(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    progress, _ = terminal(clock)
    progress.add_table("public.orders", estimated_rows=None, chunks=1)

    progress.table_done("public.orders")

    assert caplog.messages == []


def test_interactive_defaults_to_whether_the_stream_is_a_terminal() -> None:
    assert LoadProgress(stream=io.StringIO()).interactive is False


# ---- the summary -------------------------------------------------------------------------------


def test_the_summary_has_one_row_per_table_and_a_total(clock: FakeClock) -> None:
    progress, _ = terminal(clock)
    progress.add_table("public.orders", estimated_rows=None, chunks=2)
    progress.add_table("public.customers", estimated_rows=None, chunks=1)
    progress.add_table("public.bad", estimated_rows=None, chunks=1)
    progress.resumed("public.orders", chunks_done=1, rows=1_000_000)
    clock.advance(10)
    progress.chunk_done("public.customers", rows=5_000, files=1, bytes=1024)
    progress.table_done("public.customers")
    progress.table_failed("public.bad", "source went away")
    clock.advance(10)
    progress.chunk_done("public.orders", rows=200_000, files=3, bytes=3 * 1024**2)
    progress.table_done("public.orders")

    summaries = progress.summary()
    text = render_summary(summaries, wall_seconds=progress.wall_seconds())

    assert summaries == [
        TableSummary("public.orders", 1_200_000, 20.0, 10_000.0, 3, 3 * 1024**2, TableStatus.DONE, 1_000_000),
        TableSummary("public.customers", 5_000, 10.0, 500.0, 1, 1024, TableStatus.DONE),
        TableSummary("public.bad", 0, 10.0, 0.0, 0, 0, TableStatus.FAILED, error="source went away"),
    ]
    lines = text.splitlines()
    assert lines[0].split() == ["table", "state", "rows", "time", "rate", "files", "size"]
    assert lines[2].split() == [
        "public.orders",
        "done",
        "1,200,000",
        "20s",
        "10.0k",
        "rows/s",
        "3",
        "3.0",
        "MiB",
    ]
    # rows this run loaded (205,000) over the wall time (20 s)
    assert lines[6] == ("total             2 done, 1 failed  1,205,000   20s  10.2k rows/s      4  3.0 MiB")
    assert lines[-2:] == ["failed:", "  public.bad: source went away"]
    # numbers are right-aligned: the total lines up with the rows above it
    assert lines[2].index("1,200,000") + len("1,200,000") == lines[6].index("1,205,000") + len("1,205,000")


def test_the_summary_total_time_without_a_wall_time_is_the_longest_table() -> None:
    summaries = [
        TableSummary("a", 100, 10.0, 10.0, 1, 1, TableStatus.DONE),
        TableSummary("b", 300, 30.0, 10.0, 1, 1, TableStatus.DONE),
    ]

    total = render_summary(summaries).splitlines()[-1].split()

    assert total[:6] == ["total", "2", "done", "400", "30s", "13"]


def test_an_empty_summary_still_renders() -> None:
    assert render_summary([]).splitlines()[-1].split()[:4] == ["total", "0", "tables", "0"]


# ---- the thread --------------------------------------------------------------------------------


def test_chunks_finishing_on_many_threads_are_all_counted(clock: FakeClock) -> None:
    progress, out = terminal(clock, interval=0.001)
    tables = [f"public.t{i}" for i in range(4)]
    for t in tables:
        progress.add_table(t, estimated_rows=None, chunks=2000)
    barrier = threading.Barrier(8)

    def worker(n: int) -> None:
        barrier.wait()
        for i in range(1000):
            progress.chunk_done(tables[(n + i) % 4], rows=3, files=1, bytes=7)
            if i % 100 == 0:
                progress.tick()  # readers race the writers too

    with progress:
        workers = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
        for w in workers:
            w.start()
        for w in workers:
            w.join(timeout=30)
            assert not w.is_alive()

    assert [(s.chunks_done, s.rows, s.files, s.bytes) for s in progress.tables()] == [
        (2000, 6000, 2000, 14000)
    ] * 4
    assert "chunks 2000/2000" in last_frame(out)[0]


def test_the_thread_redraws_until_stopped_then_draws_the_final_state(clock: FakeClock) -> None:
    progress, out = terminal(clock, interval=0.001)
    progress.add_table("public.orders", estimated_rows=None, chunks=1)

    progress.start()
    redrawn = threading.Event()
    for _ in range(5000):
        if out.getvalue().count("\x1b[2K") >= 2:
            redrawn.set()
            break
        redrawn.wait(0.001)
    progress.table_done("public.orders")
    progress.stop()

    assert redrawn.is_set()
    assert last_frame(out)[0].endswith("done in 0s")
    with pytest.raises(RuntimeError, match="started only once"):
        progress.start()
