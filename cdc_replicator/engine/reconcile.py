"""Reconciliation (watermark mode): compare one key range between the database and Delta, and fix Delta.

Polling cannot see hard deletes, nor rows whose cursor went backwards or that committed later than
the look-back window. Range by range (``[watermark] reconcile_range_rows`` keys), keys Delta has
and the database does not (checked again in a fresh snapshot) are deleted; rows the database has
below the watermark and Delta lacks are copied. Both in one commit with the table's watermark.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

import pyarrow as pa
import pyarrow.compute as pc

from cdc_replicator.engine.observe import Observer
from cdc_replicator.engine.watermarks import page_rows
from cdc_replicator.model import (
    KeyRange,
    Op,
    TableId,
    TablePatch,
    TableSchema,
    WatermarkPosition,
    WatermarkTable,
)
from cdc_replicator.sink import Lake
from cdc_replicator.source import PollingSource
from cdc_replicator.source.watermark import RECONCILE_DELETE_KEY_OIDS
from cdc_replicator.types import cast_text

__all__ = ["Reconciler", "diff_keys"]

logger = logging.getLogger(__name__)

Key = tuple[str, ...]


def diff_keys(source: pa.Table, lake: pa.Table, names: Sequence[str]) -> tuple[pa.Table, pa.Table]:
    """Pure: (keys only the lake has, keys only the source has), both typed as ``source``."""
    lake = lake.cast(source.schema) if lake.schema != source.schema else lake
    keys = list(names)
    return lake.join(source, keys=keys, join_type="left anti"), source.join(
        lake, keys=keys, join_type="left anti"
    )


class Reconciler:
    """One range per ``step``; the caller paces the steps (``reconcile_max_rows_per_second``)."""

    def __init__(
        self,
        *,
        source: PollingSource,
        sink: Lake,
        observer: Observer,
        range_rows: int,
        record: Callable[[TableId, WatermarkPosition], None],
    ) -> None:
        self._source = source
        self._sink = sink
        self._obs = observer
        self._size = range_rows
        self._record = record

    def step(
        self, wt: WatermarkTable, position: WatermarkPosition, lo: Key | None
    ) -> tuple[WatermarkPosition, Key | None, int]:
        """Reconcile the keys ``[lo, next)``: the new position, where the next range starts (None:
        the pass is complete) and how many keys were read."""
        schema = wt.schema
        keys = self._source.key_page(wt, lo, self._size + 1)
        nxt = keys[self._size] if len(keys) > self._size else None
        keys = keys[: self._size]
        key_cols = [c for c in schema.columns if c.is_key]
        src = pa.table(
            {
                c.name: cast_text(pa.array([k[i] for k in keys], pa.string()), c.type_oid, c.type_modifier)
                for i, c in enumerate(key_cols)
            }
        )
        lake = self._sink.keys_in_range(schema, KeyRange(lo, nxt))
        extra, missing = diff_keys(src, lake, schema.key)
        read = len(keys) + lake.num_rows
        if extra.num_rows == 0 and missing.num_rows == 0:
            return position, nxt, read
        gone = self._gone(wt, extra)
        found = None
        if missing.num_rows and position.read is not None:
            # only rows polling has already passed: newer ones are the next poll's
            wanted = [tuple(str(v) for v in r.values()) for r in missing.to_pylist()]
            found = self._source.rows_by_key(wt, wanted, upto=position.read).rows
        position = self._fix(wt, position, gone, found)
        copied = 0 if found is None else found.num_rows
        self._obs.reconciled(schema.table, deleted=len(gone), copied=copied)
        logger.warning(
            "reconciliation fixed table=%s range_from=%s deleted=%d copied=%d",
            schema.table,
            ",".join(lo) if lo else "start",
            len(gone),
            copied,
        )
        return position, nxt, read

    def _gone(self, wt: WatermarkTable, extra: pa.Table) -> list[Key]:
        """The keys only the lake has that a fresh read of the database confirms are gone."""
        schema = wt.schema
        names = list(schema.key)
        as_text = [
            tuple(str(v) for v in row)
            for row in zip(*[pc.cast(extra.column(n), pa.string()).to_pylist() for n in names], strict=True)
        ]
        if not as_text:
            return []
        still = self._source.rows_by_key(wt, as_text)
        present = set(zip(*[still.rows.column(n).to_pylist() for n in names], strict=True))
        gone = [k for k in as_text if tuple(v.encode() for v in k) not in present]
        if gone and not all(c.type_oid in RECONCILE_DELETE_KEY_OIDS for c in schema.columns if c.is_key):
            # the keys are compared in Arrow's text form: exact only for integer and text keys
            logger.warning(
                "reconciliation found %d key(s) of %s gone from the database but deletes them only for "
                "integer or text keys: use a delete_column, or re-sync the table",
                len(gone),
                schema.table,
            )
            return []
        return gone

    def _fix(
        self, wt: WatermarkTable, position: WatermarkPosition, gone: list[Key], found: pa.Table | None
    ) -> WatermarkPosition:
        """Delete ``gone`` and copy ``found`` in one commit with the next watermark sequence number."""
        schema = wt.schema
        seq = position.seq + 1
        new = WatermarkPosition(position.read, position.pending, seq)
        at = datetime.now(UTC)
        parts = []
        if found is not None and found.num_rows:
            parts.append(page_rows(found, wt.delete_column, seq=seq, read_at=at))
        if gone:
            parts.append(_delete_rows(schema, gone, seq=seq, at=at))
        if not parts:
            return position
        data = pa.concat_tables(parts)
        self._sink.apply(
            TablePatch(schema, data, changes=data.num_rows), new, metadata={"cdc.op": "reconcile"}
        )
        self._record(schema.table, new)
        return new


def _delete_rows(schema: TableSchema, keys: list[Key], *, seq: int, at: datetime) -> pa.Table:
    n = len(keys)
    names = list(schema.key)
    cols: dict[str, pa.Array] = {}
    for c in schema.columns:
        if c.is_key:
            cols[c.name] = pa.array([k[names.index(c.name)] for k in keys], pa.string()).cast(pa.binary())
        else:
            cols[c.name] = pa.nulls(n, pa.binary())
    cols["_cdc_lsn"] = pa.repeat(pa.scalar(seq, pa.int64()), n)
    cols["_cdc_op"] = pa.repeat(pa.scalar(Op.DELETE.value, pa.string()), n)
    cols["_cdc_committed_at"] = pa.repeat(pa.scalar(at, pa.timestamp("us", tz="UTC")), n)
    return pa.table(cols)
