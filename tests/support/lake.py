"""Read Delta tables and their source tables as comparable, sorted rows (metadata columns dropped)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow as pa
from deltalake import DeltaTable
from deltalake.exceptions import CommitFailedError, TableNotFoundError
from psycopg import sql

from tests.support.pg import PgDatabase

__all__ = ["delta_rows", "diff_tables", "source_rows", "table_path"]


def retrying(write: Callable[[], object]) -> None:
    """A write behind the daemon's back, run again when it met one of the daemon's commits (a batch,
    or a maintenance pass: the daemon compacts a table right after it starts) — as any other writer
    of a shared Delta table re-runs a transaction that lost its commit."""
    for attempt in range(20):
        try:
            write()
            return
        except CommitFailedError:
            if attempt == 19:
                raise
            time.sleep(0.2)


def table_path(lake: Path, table: str) -> Path:
    schema, _, name = table.rpartition(".")
    return lake / (schema or "public") / name


def _norm(v: Any) -> Any:
    if isinstance(v, float) and math.isnan(v):
        return "NaN"
    if isinstance(v, Decimal):
        return v.normalize() if v.is_finite() else str(v)
    if isinstance(v, datetime) and v.tzinfo is not None:
        return v.astimezone(UTC)
    if isinstance(v, memoryview):
        return bytes(v)
    return v


def _key(row: tuple[Any, ...]) -> tuple[str, ...]:
    return tuple(repr(v) for v in row)


def delta_rows(lake: Path, table: str) -> tuple[list[str], list[tuple[Any, ...]]]:
    """Column names and rows of the Delta table, without ``_cdc_*`` columns, sorted."""
    data = DeltaTable(str(table_path(lake, table))).to_pyarrow_table()
    cols = [c for c in data.column_names if not c.startswith("_cdc_")]
    data = data.select(cols)
    # string_view → string so to_pylist gives str everywhere
    data = data.cast(
        pa.schema(
            [
                pa.field(f.name, pa.string() if pa.types.is_string_view(f.type) else f.type)
                for f in data.schema
            ]
        )
    )
    rows = [tuple(_norm(r[c]) for c in cols) for r in data.to_pylist()]
    return cols, sorted(rows, key=_key)


def source_rows(
    db: PgDatabase, table: str, cols: list[str], text_cols: set[str], where: str | None = None
) -> list[tuple[Any, ...]]:
    """The source table's rows, with ``text_cols`` read as their text form (as Delta stores them).

    ``where``: a condition (test-written SQL) the rows must meet, e.g. ``deleted_at is null``.
    """
    schema, _, name = table.rpartition(".")
    items = [
        # the output function's text (what the stream carries), not ::text (char(n) loses padding)
        sql.SQL("case when {0} is null then null else format('%s', {0}) end").format(sql.Identifier(c))
        if c in text_cols
        else sql.Identifier(c)
        for c in cols
    ]
    q = sql.SQL("select {} from {} where {}").format(
        sql.SQL(", ").join(items), sql.Identifier(schema or "public", name), sql.SQL(where or "true")
    )
    rows = [tuple(_norm(v) for v in r) for r in db.query(q)]
    return sorted(rows, key=_key)


def source_columns(db: PgDatabase, table: str) -> list[str]:
    schema, _, name = table.rpartition(".")
    rows = db.query(
        "select column_name from information_schema.columns where table_schema = %s and table_name = %s "
        "order by ordinal_position",
        (schema or "public", name),
    )
    return [str(r[0]) for r in rows]


def diff_tables(
    db: PgDatabase, lake: Path, table: str, where: str | None = None, *, source_columns_only: bool = False
) -> str | None:
    """None when the Delta table equals its source row for row; else a short description.

    ``source_columns_only``: compare the columns the source has now (Delta may keep dropped ones).
    """
    try:
        cols, lake_rows = delta_rows(lake, table)
    except TableNotFoundError:
        return f"{table}: no Delta table yet"
    if source_columns_only:
        have = set(source_columns(db, table))
        keep = [i for i, c in enumerate(cols) if c in have]
        if len(keep) != len(have):
            return f"{table}: delta lacks columns {sorted(have - set(cols))}"
        cols = [cols[i] for i in keep]
        lake_rows = sorted((tuple(r[i] for i in keep) for r in lake_rows), key=_key)
    dt = DeltaTable(str(table_path(lake, table)))
    arrow = dt.schema().to_arrow()
    text_cols = {
        f.name
        for f in (arrow.field(i) for i in range(len(arrow.names)))
        if f.name in cols and ("string" in str(f.type) or "utf8" in str(f.type).lower())
    }
    src = source_rows(db, table, cols, text_cols, where)
    if lake_rows == src:
        return None
    lk, sk = {_key(r) for r in lake_rows}, {_key(r) for r in src}
    only_lake = [r for r in lake_rows if _key(r) not in sk][:3]
    only_src = [r for r in src if _key(r) not in lk][:3]
    return (
        f"{table}: delta has {len(lake_rows)} rows, source {len(src)}; "
        f"only in delta (first 3): {only_lake}; only in source (first 3): {only_src}"
    )
