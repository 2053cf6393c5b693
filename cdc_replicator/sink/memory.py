"""An in-memory ``Sink`` and ``OffsetStore``: the Delta sink's semantics on dicts, for the engine's unit specs.

Rows are kept as the stream carries them (PostgreSQL text as bytes, keyed by the key columns), with
the same rules as ``DeltaSink``: rows and position change together under one lock (one "commit"),
a position the table already covers is a no-op and never moves backwards, a row never takes a
change older than its ``_cdc_lsn``, unchanged TOAST values keep the row's (or the moved-from row's)
value, TRUNCATE empties first, a re-sync cleanup removes the rows it did not rewrite.

``before_apply`` is called before each commit, outside the lock: a spec can block there (to hold
a merge in flight) or raise (a crash between two table commits).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from cdc_replicator.errors import SinkError
from cdc_replicator.model import (
    MOVED_PREFIX,
    UNCHANGED_PREFIX,
    Op,
    Position,
    TableId,
    TablePatch,
    TablePosition,
    TableSchema,
    WatermarkPosition,
)
from cdc_replicator.sink import ApplyResult

__all__ = ["MemorySink", "Row"]

Row = dict[str, object]  # column name -> bytes | None, plus "_cdc_lsn" -> int
Key = tuple[object, ...]


@dataclass(slots=True)
class _Table:
    schema: TableSchema
    rows: dict[Key, Row] = field(default_factory=dict)
    position: Position | None = None
    version: int = 0


class MemorySink:
    """Tables in memory; ``commits`` lists every commit in order as (table, position)."""

    def __init__(self, before_apply: Callable[[TableId, Position], None] | None = None) -> None:
        self._before = before_apply
        self._lock = threading.Lock()
        self._tables: dict[TableId, _Table] = {}
        self.commits: list[tuple[TableId, Position]] = []

    # ---- set-up and assertions (not part of the protocols) ----------------------------------

    def load(self, schema: TableSchema, rows: Mapping[Key, Row], position: Position) -> None:
        """A loaded table: ``rows`` by key, holding ``position``."""
        with self._lock:
            self._tables[schema.table] = _Table(schema, {k: dict(v) for k, v in rows.items()}, position)

    def rows(self, table: TableId) -> dict[Key, Row]:
        with self._lock:
            return {k: dict(v) for k, v in self._tables[table].rows.items()}

    def columns(self, table: TableId) -> tuple[str, ...]:
        with self._lock:
            return self._tables[table].schema.column_names

    # ---- OffsetStore ----------------------------------------------------------------------------

    def position(self, table: TableId) -> TablePosition | None:
        with self._lock:
            t = self._tables.get(table)
            return t.position if t is not None and isinstance(t.position, TablePosition) else None

    def watermark(self, table: TableId) -> WatermarkPosition | None:
        with self._lock:
            t = self._tables.get(table)
            return t.position if t is not None and isinstance(t.position, WatermarkPosition) else None

    def watermark_seq(self, table: TableId) -> int:
        wm = self.watermark(table)
        return 0 if wm is None else wm.seq

    # ---- Sink -------------------------------------------------------------------------------------

    def exists(self, table: TableId) -> bool:
        with self._lock:
            return table in self._tables

    def apply(
        self,
        patch: TablePatch,
        position: Position,
        *,
        batch_id: int = 0,
        metadata: Mapping[str, str] | None = None,
    ) -> ApplyResult | None:
        table = patch.schema.table
        if self._before is not None:
            self._before(table, position)
        with self._lock:
            t = self._tables.get(table)
            if t is None:
                raise SinkError(f"the table {table} does not exist in the memory sink")
            held = t.position
            if isinstance(position, TablePosition) and isinstance(held, TablePosition):
                if held.covers(position):
                    return None
                if held.lsn > position.lsn:
                    position = TablePosition(held.lsn, position.partial)
            elif isinstance(position, WatermarkPosition) and isinstance(held, WatermarkPosition):
                if held.seq >= position.seq:
                    return None
            counts = _merge(t, patch)
            t.position = position
            t.version += 1
            self.commits.append((table, position))
            inserted, updated, deleted, unknown = counts
            return ApplyResult(
                table, t.version, inserted, updated, deleted, patch.truncate, toast_unknown=unknown
            )

    def evolve(self, schema: TableSchema) -> list[str]:
        with self._lock:
            t = self._tables[schema.table]
            added = [c for c in schema.column_names if c not in t.schema.column_names]
            kept = [c for c in t.schema.columns if c.name not in schema.column_names]
            t.schema = TableSchema(schema.table, (*schema.columns, *kept), schema.replica_identity)
            return [f"added {c}" for c in added]


def _merge(t: _Table, patch: TablePatch) -> tuple[int, int, int, int]:
    """Apply the patch's rows to ``t`` as the sequenced MERGE does; (inserted, updated, deleted, unknown).

    A row whose unchanged TOAST value has no row to come from is left out (``unknown``), as
    ``DeltaSink`` does when the source cannot give it either.
    """
    if patch.truncate:
        t.rows.clear()
    cols = patch.rows.to_pydict()
    key = patch.schema.key
    moved = [MOVED_PREFIX + k for k in key]
    has_moved = all(m in cols for m in moved)
    # the old key's row, for values that stayed unchanged while the key moved: read before the merge
    before = dict(t.rows)
    inserted = updated = deleted = unknown = 0
    touched: set[Key] = set()
    for i in range(patch.rows.num_rows):
        k = tuple(cols[c][i] for c in key)
        touched.add(k)
        lsn = int(cols["_cdc_lsn"][i])
        current = t.rows.get(k)
        if current is not None and int(str(current["_cdc_lsn"])) > lsn:
            continue  # never an older change over a newer one
        if cols["_cdc_op"][i] == Op.DELETE.value:
            if current is not None:
                del t.rows[k]
                deleted += 1
            continue
        old = current
        if old is None and has_moved and cols[moved[0]][i] is not None:
            old = before.get(tuple(cols[m][i] for m in moved))
        row: Row = {c: cols[c][i] for c in patch.schema.column_names}
        if old is None and any(cols[UNCHANGED_PREFIX + c][i] for c in patch.unchanged_columns):
            unknown += 1  # no row to keep the value from and no source to read it: left out, never NULL
            continue
        for c in patch.unchanged_columns:
            if cols[UNCHANGED_PREFIX + c][i] and old is not None:
                row[c] = old.get(c)
        row["_cdc_lsn"] = lsn
        t.rows[k] = row
        if current is None:
            inserted += 1
        else:
            updated += 1
    if patch.cleanup_below:
        for k in [
            k for k, r in t.rows.items() if k not in touched and int(str(r["_cdc_lsn"])) < patch.cleanup_below
        ]:
            del t.rows[k]
            deleted += 1
    return inserted, updated, deleted, unknown
