"""What the demo prints: the header, the progress block, the final check and how to query the lake.

Pure: values in, lines out; no clock and no stream (``run`` echoes them). Symbols fall back to
ASCII when the terminal's encoding cannot show them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from cdc_replicator.demo.lake import TableStats
from cdc_replicator.demo.shop import DATABASE, TABLES
from cdc_replicator.model import TableId

__all__ = [
    "Check",
    "Symbols",
    "format_check",
    "format_header",
    "format_progress",
    "format_query_help",
    "symbols_for",
]


@dataclass(frozen=True, slots=True)
class Symbols:
    ok: str
    bad: str
    ellipsis: str
    arrow: str


_UNICODE: Final = Symbols("✓", "✗", "…", "→")
_ASCII: Final = Symbols("OK", "MISMATCH", "...", "->")


def symbols_for(encoding: str | None) -> Symbols:
    """The Unicode symbols when ``encoding`` can show them all, else ASCII words."""
    try:
        "".join((_UNICODE.ok, _UNICODE.bad, _UNICODE.ellipsis, _UNICODE.arrow)).encode(encoding or "ascii")
    except (UnicodeEncodeError, LookupError):
        return _ASCII
    return _UNICODE


_NAME_WIDTH: Final = max(len(str(t)) for t in TABLES)


def format_header(
    *,
    version: int,
    address: str,
    startup: float,
    rows: Mapping[TableId, int],
    lake: Path,
    state_db: Path,
    seconds: float,
    sym: Symbols,
) -> list[str]:
    """What runs where, printed once the server is up and the sample tables are filled."""
    sizes = ", ".join(f"{t.name} {rows[t]:,}" for t in TABLES)
    stop = f"Stops by itself after {seconds:g}s, or press Ctrl-C." if seconds > 0 else "Press Ctrl-C to stop."
    return [
        f"PostgreSQL {version} is up on {address} after {startup:.1f}s (a throwaway: removed on exit).",
        "",
        f"  source  database {DATABASE!r}, rows: {sizes}",
        f"  lake    {lake}/public/<table>  (Delta tables)",
        f"  state   {state_db}",
        "",
        "A workload thread writes new orders with their items, moves orders along "
        f"new {sym.arrow} paid {sym.arrow} shipped {sym.arrow} delivered,",
        "cancels (deletes) some and adds customers: a few to a few hundred changes per second.",
        "cdc-replicator loads the three tables into Delta, then applies the change stream about once a second.",
        f"Lag = how long ago the newest change now in Delta was committed. {stop}",
        "",
    ]


def format_progress(
    elapsed: float,
    applied: Mapping[TableId, int],
    stats: Mapping[TableId, TableStats | None],
    lag: float | None,
    sym: Symbols,
) -> list[str]:
    """One line per table: changes applied so far and rows now in Delta; the lag on the last line."""
    lines = []
    for i, table in enumerate(TABLES):
        clock = f"{elapsed:5.0f}s" if i == 0 else " " * 6
        st = stats.get(table)
        rows = f"{st.rows:>9,} rows in Delta" if st is not None else f"{'loading' + sym.ellipsis:>23}"
        line = f"{clock}  {str(table):<{_NAME_WIDTH}}  {applied.get(table, 0):>8,} changes applied  {rows}"
        if i == len(TABLES) - 1 and lag is not None:
            line += f"   lag {lag:.1f}s"
        lines.append(line)
    return lines


@dataclass(frozen=True, slots=True)
class Check:
    """One table's final check: its rows in the source and in Delta (None: no Delta table)."""

    table: TableId
    source_rows: int
    delta_rows: int | None

    @property
    def ok(self) -> bool:
        return self.delta_rows == self.source_rows


def format_check(check: Check, sym: Symbols) -> str:
    name = f"{str(check.table):<{_NAME_WIDTH}}"
    if check.ok:
        return f"  {name}  Delta rows = source rows = {check.source_rows:,}  {sym.ok}"
    delta = "no table" if check.delta_rows is None else f"{check.delta_rows:,}"
    return f"  {name}  Delta rows {delta} != source rows {check.source_rows:,}  {sym.bad}"


def format_query_help(orders: Path) -> list[str]:
    """How to read the lake, with ``orders`` (the orders table's path) in every example."""
    return [
        "Query the result (the lake stays; each table also has _cdc_lsn, _cdc_op, _cdc_committed_at):",
        "",
        "    from deltalake import DeltaTable",
        f'    orders = DeltaTable("{orders}").to_pyarrow_table()',
        "    print(orders.num_rows, orders.column_names)",
        "",
        f'  polars:  pl.read_delta("{orders}")',
        f"""  duckdb:  duckdb.sql("from delta_scan('{orders}')").show()""",
    ]
