"""Read a Delta table with DuckDB's delta extension (delta-kernel-rs): a second, independent reader.

The extension file is the one the ``duckdb-extension-delta`` wheel ships (no download at test time).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import duckdb
import duckdb_extension_delta

__all__ = ["duckdb_rows"]


def duckdb_rows(table: Path, columns: str, order_by: str) -> list[tuple[Any, ...]]:
    """``select columns from delta_scan(table) order by order_by`` as tuples (trusted SQL fragments)."""
    ext = Path(duckdb_extension_delta.__file__).parent / "extensions" / f"v{duckdb.__version__}"
    con = duckdb.connect(config={"allow_unsigned_extensions": "true"})
    try:
        con.execute(f"load '{ext / 'delta.duckdb_extension'}'")
        query = f"select {columns} from delta_scan('{table}') order by {order_by}"  # noqa: S608
        return [tuple(r) for r in con.execute(query).fetchall()]
    finally:
        con.close()
