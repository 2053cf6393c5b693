"""What the engine reports, in one place: the health state, the Prometheus metrics and an optional callback.

The loops call an ``Observer`` instead of touching ``HealthState`` and ``Metrics`` field by field;
it never decides anything. Thread-safe (health and metrics are), so the applier's workers may beat.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from cdc_replicator.engine.apply import BatchApplied, TableApplied
from cdc_replicator.model import Begin, ChangeBatch, Lsn, TableId, WatermarkPosition
from cdc_replicator.service.health import HealthState
from cdc_replicator.service.metrics import Metrics
from cdc_replicator.sink import ApplyResult

__all__ = ["BatchReport", "Observer"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class BatchReport:
    """What one applied batch did; handed to the optional callback (the demo)."""

    batch_id: int
    end: Lsn
    transactions: int
    changes: Mapping[TableId, int]
    seconds: float


class Observer:
    """Feeds the health state and the metrics; ``on_batch`` hears of every applied batch."""

    def __init__(
        self,
        health: HealthState,
        metrics: Metrics | None = None,
        on_batch: Callable[[BatchReport], None] | None = None,
    ) -> None:
        self.health = health
        self.metrics = metrics
        self._on_batch = on_batch

    def beat(self) -> None:
        self.health.beat()

    def idle_beat(self) -> None:
        """An idle turn is progress only while the source is heard from (not a wait on a dead path)."""
        if self.health.source_heard():
            self.health.beat()

    def txn_received(self, begin: Begin) -> None:
        self.health.txn_received(begin.commit_time, begin.commit_lsn)

    def table_committed(self, done: TableApplied, batch: ChangeBatch) -> None:
        """One table's commit of ``batch`` (called from the applier's worker thread)."""
        self.health.beat()
        table, result, seconds = done.table, done.result, done.seconds
        self.health.set_committed(table, batch.end)
        m = self.metrics
        if m is None or result is None:
            return
        name = str(table)
        m.merge_duration.labels(table=name).observe(seconds)
        m.changes_applied.labels(table=name, op="insert").inc(result.inserted)
        m.changes_applied.labels(table=name, op="update").inc(result.updated)
        m.changes_applied.labels(table=name, op="delete").inc(result.deleted)
        if result.truncated:
            m.truncates.labels(table=name).inc()
        if result.toast_read:
            m.toast_read.labels(table=name).inc(result.toast_read)
        if result.toast_unknown:
            m.toast_unknown.labels(table=name).inc(result.toast_unknown)

    def batch_applied(self, done: BatchApplied, seconds: float) -> None:
        """Every table of a batch committed (and what could be confirmed was)."""
        batch = done.batch
        self.health.applied(complete=batch.partial is None, upto=batch.end)
        m = self.metrics
        if m is not None:
            m.batches.inc()
            m.batch_duration.observe(seconds)
            m.transactions.inc(batch.transactions)
        changes = {t: p.changes for t, p in batch.tables.items()}
        logger.debug(
            "batch applied batch=%d end=%s txns=%d tables=%d changes=%d seconds=%.3f",
            batch.batch_id,
            batch.end,
            batch.transactions,
            len(batch.tables),
            sum(changes.values()),
            seconds,
        )
        if self._on_batch is not None:
            self._on_batch(BatchReport(batch.batch_id, batch.end, batch.transactions, changes, seconds))

    def confirmed(self, lsn: Lsn) -> None:
        if self.metrics is not None:
            self.metrics.confirmed_lsn.set(lsn.value)

    # ---- watermark mode ----------------------------------------------------------------------

    def replica_lag(self, seconds: float | None) -> None:
        if self.metrics is not None and seconds is not None:
            self.metrics.replica_lag.set(max(0.0, seconds))

    def page_committed(
        self,
        table: TableId,
        position: WatermarkPosition,
        *,
        rows: int,
        late: bool,
        result: ApplyResult | None,
        seconds: float,
    ) -> None:
        """One page of a poll in Delta: ``result`` None when it was appended (a first load)."""
        self.health.set_committed(table, position)
        m = self.metrics
        if m is None:
            return
        name = str(table)
        m.merge_duration.labels(table=name).observe(seconds)
        if late:
            m.watermark_late_rows.labels(table=name).inc(rows)
        if result is None:
            m.snapshot_rows.labels(table=name).inc(rows)
        else:
            m.changes_applied.labels(table=name, op="insert").inc(result.inserted)
            m.changes_applied.labels(table=name, op="update").inc(result.updated)
            m.changes_applied.labels(table=name, op="delete").inc(result.deleted)
        m.batches.inc()

    def reconciled(self, table: TableId, *, deleted: int, copied: int) -> None:
        if self.metrics is not None:
            self.metrics.reconciled_deletes.labels(table=str(table)).inc(deleted)
            self.metrics.reconciled_missing.labels(table=str(table)).inc(copied)
