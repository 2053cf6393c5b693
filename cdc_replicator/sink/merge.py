"""The MERGE of one patch into one Delta table: sequenced clauses, TOAST, TRUNCATE and re-sync cleanup."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from deltalake import CommitProperties, DeltaTable

from cdc_replicator.model import TablePatch, TableSchema
from cdc_replicator.sink.plan import MergePlan, quote

__all__ = ["keys_present", "merge", "rows_at"]


def merge(dt: DeltaTable, plan: MergePlan, props: CommitProperties, patch: TablePatch) -> dict[str, Any]:
    """One sequenced MERGE. A TRUNCATE on a soft-delete table marks every other row deleted."""
    predicate = plan.predicate
    if patch.truncate or patch.cleanup_below:  # every row is concerned: no key range
        predicate = " AND ".join(f"t.{quote(k)} = s.{quote(k)}" for k in patch.schema.key)
    merger = dt.merge(
        plan.source, predicate=predicate, source_alias="s", target_alias="t", commit_properties=props
    )
    if plan.delete_predicate is not None:
        merger = merger.when_matched_delete(plan.delete_predicate)
    else:
        soft_updates = plan.soft_delete_updates or {}
        merger = merger.when_matched_update(soft_updates, "s._cdc_op = 'd' AND s._cdc_lsn >= t._cdc_lsn")
    merger = merger.when_matched_update(plan.updates, plan.update_predicate).when_not_matched_insert(
        plan.inserts, plan.insert_predicate
    )
    if patch.truncate:
        at = (patch.truncate_time or datetime.now(UTC)).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        merger = merger.when_not_matched_by_source_update(
            {
                "_cdc_deleted": "true",
                "_cdc_op": "'d'",
                "_cdc_lsn": str(int(patch.truncate_lsn)),
                "_cdc_committed_at": f"arrow_cast('{at}', 'Timestamp(Microsecond, Some(\"UTC\"))')",
            },
            "t._cdc_deleted IS DISTINCT FROM true",
        )
    if patch.cleanup_below and not patch.truncate:
        # the end of a live re-sync: every row still present at the source was rewritten (or
        # changed by the stream) since the first low watermark; an older row is gone at the source
        stale = f"t._cdc_lsn < {int(patch.cleanup_below)}"
        if plan.delete_predicate is not None:
            merger = merger.when_not_matched_by_source_delete(stale)
        else:
            merger = merger.when_not_matched_by_source_update(
                {"_cdc_deleted": "true", "_cdc_op": "'d'"},
                f"{stale} AND t._cdc_deleted IS DISTINCT FROM true",
            )
    return dict(merger.execute())


def rows_at(dt: DeltaTable, schema: TableSchema, keys: pa.Table) -> pa.Table:
    """The table's current rows at ``keys`` (filtered on the first key column, then exactly)."""
    first = schema.key[0]
    ds = dt.to_pyarrow_dataset()
    found = ds.to_table(filter=pc.field(first).isin(keys.column(first)))
    if len(schema.key) > 1:
        wanted = {tuple(r.values()) for r in keys.to_pylist()}
        mask = [tuple(r[k] for k in schema.key) in wanted for r in found.select(list(schema.key)).to_pylist()]
        found = found.filter(pa.array(mask, pa.bool_()))
    return found


def keys_present(dt: DeltaTable, schema: TableSchema, keys: pa.Table) -> pa.Table:
    """The key columns of the table's rows whose first key column is among ``keys``' (a superset
    of the rows at ``keys``: callers match every key column). Reads only the key columns of the
    files in the keys' range of the first key column; the keys are matched in memory.
    """
    first = schema.key[0]
    wanted = keys.column(first)
    if isinstance(wanted, pa.ChunkedArray):
        wanted = wanted.combine_chunks()
    ds = dt.to_pyarrow_dataset()
    bounds = pc.min_max(wanted)
    in_range = (pc.field(first) >= bounds["min"]) & (pc.field(first) <= bounds["max"])
    found = ds.to_table(columns=list(schema.key), filter=in_range)
    return found.filter(pc.is_in(found.column(first), value_set=wanted))
