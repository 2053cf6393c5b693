"""Read the demo's Delta tables while the replicator writes them: row counts and the newest commit time.

Main thread only. Progress reads come from the Delta log's file statistics (cheap, no data read);
the final check counts rows with a fresh reader.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from deltalake import DeltaTable
from deltalake.exceptions import TableNotFoundError

from cdc_replicator.model import TableId

__all__ = ["Lake", "TableStats"]


@dataclass(frozen=True, slots=True)
class TableStats:
    """A Delta table's row count and the newest source commit time it holds, from its log's file stats."""

    rows: int
    newest_commit: datetime | None


class Lake:
    """Reads the demo's Delta tables (main thread only) while the replicator writes them."""

    def __init__(self, root: Path) -> None:
        self._root = root
        self._open: dict[TableId, Any] = {}  # TableId -> DeltaTable

    def path(self, table: TableId) -> Path:
        return self._root / table.schema / table.name

    def stats(self, table: TableId) -> TableStats | None:
        """None while the table does not exist yet (the initial load has not reached it)."""
        dt = self._open.get(table)
        if dt is None:
            try:
                dt = DeltaTable(str(self.path(table)))
            except TableNotFoundError:
                return None
            self._open[table] = dt
        else:
            dt.update_incremental()
        actions = pa.table(dt.get_add_actions(flatten=True))
        if actions.num_rows == 0:
            return TableStats(0, None)
        counts = actions.column("num_records")
        rows = (
            int(pc.sum(counts).as_py() or 0)
            if counts.null_count == 0
            else int(dt.to_pyarrow_dataset().count_rows())
        )
        newest: datetime | None = None
        if "max._cdc_committed_at" in actions.column_names:
            newest = pc.max(actions.column("max._cdc_committed_at")).as_py()
        return TableStats(rows, newest)

    def exact_rows(self, table: TableId) -> int | None:
        """Rows in the latest version, counted by a fresh reader (the final check)."""
        try:
            return int(DeltaTable(str(self.path(table))).to_pyarrow_dataset().count_rows())
        except TableNotFoundError:
            return None
