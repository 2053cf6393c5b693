"""Specification of what the demo prints (``cdc_replicator.demo.display``): pure lines, no server."""

from __future__ import annotations

from datetime import UTC, datetime

from cdc_replicator.demo.display import Check, format_check, format_progress, symbols_for
from cdc_replicator.demo.lake import TableStats
from cdc_replicator.demo.shop import ORDERS, TABLES


def test_a_terminal_that_cannot_show_the_check_mark_gets_ascii_words() -> None:
    assert symbols_for("utf-8").ok == "✓"
    assert symbols_for("ascii").ok == "OK"
    assert symbols_for(None).bad == "MISMATCH"
    assert symbols_for("no-such-codec").ellipsis == "..."


def test_the_check_line_says_equal_or_names_both_counts() -> None:
    sym = symbols_for("utf-8")

    assert format_check(Check(ORDERS, 3_028, 3_028), sym) == (
        "  public.orders       Delta rows = source rows = 3,028  ✓"
    )
    assert format_check(Check(ORDERS, 3_028, 3_000), sym) == (
        "  public.orders       Delta rows 3,000 != source rows 3,028  ✗"
    )
    assert format_check(Check(ORDERS, 3_028, None), sym).endswith(
        "Delta rows no table != source rows 3,028  ✗"
    )


def test_progress_shows_one_line_per_table_loading_until_its_delta_table_exists_and_the_lag_last() -> None:
    customers, orders, items = TABLES
    stats = {customers: TableStats(1_004, datetime(2024, 1, 1, tzinfo=UTC)), orders: None, items: None}

    lines = format_progress(2.0, {customers: 5}, stats, 0.3, symbols_for("utf-8"))

    assert lines == [
        "    2s  public.customers           5 changes applied      1,004 rows in Delta",
        "        public.orders              0 changes applied                 loading…",
        "        public.order_items         0 changes applied                 loading…   lag 0.3s",
    ]
