"""Every Prometheus metric, defined once: ``cdc_`` prefix, base units, ``table`` labels where useful.

A ``Metrics`` owns its own registry (no global state: tests build as many as they like) and is
rendered in the text exposition format by ``render()``. Gauges that describe *now* (lag, liveness)
are read from the ``HealthState`` at scrape time instead of being pushed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Enum,
    Gauge,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from cdc_replicator import __version__
from cdc_replicator.model import Lsn, TableId, VerifyResult
from cdc_replicator.service.health import HealthState, Phase, TableState

__all__ = ["CONTENT_TYPE_LATEST", "WAL_STATUSES", "Metrics"]

logger = logging.getLogger(__name__)

# pg_replication_slots.wal_status values, plus ours for "no slot" and "could not read it"
WAL_STATUSES = ("reserved", "extended", "unreserved", "lost", "missing", "unknown")

# the *_created series double every counter's cardinality and no alert uses them
disable_created_metrics()  # type: ignore[no-untyped-call]

_SECONDS_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


class Metrics:
    """The daemon's metrics; ``health`` feeds the gauges computed at scrape time."""

    def __init__(self, health: HealthState, tables: Iterable[TableId] = ()) -> None:
        self.registry = r = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        Info("cdc_build", "cdc-replicator version.", registry=r).info({"version": __version__})

        # ---- stream -------------------------------------------------------------------------
        self.changes_applied = Counter(
            "cdc_changes_applied",
            "Rows merged into Delta by operation (a key's changes within one batch count once: the last).",
            ["table", "op"],
            registry=r,
        )
        self.toast_read = Counter(
            "cdc_toast_rows_read_from_source",
            "Rows whose unchanged TOAST values were read from the source by key (Delta had no row to keep them from).",
            ["table"],
            registry=r,
        )
        self.toast_unknown = Counter(
            "cdc_toast_rows_unknown",
            "Rows left out because their unchanged TOAST values could not be known (no Delta row, gone at the source).",
            ["table"],
            registry=r,
        )
        self.truncates = Counter(
            "cdc_truncates_applied", "TRUNCATEs applied to a Delta table.", ["table"], registry=r
        )
        self.batches = Counter(
            "cdc_batches_applied", "Batches applied (every touched table committed).", registry=r
        )
        self.batch_duration = Histogram(
            "cdc_batch_duration_seconds",
            "Time to apply one batch to every table it touched and confirm it.",
            buckets=_SECONDS_BUCKETS,
            registry=r,
        )
        self.merge_duration = Histogram(
            "cdc_merge_duration_seconds",
            "Time of one Delta commit (MERGE, overwrite or delete) of one table's changes.",
            ["table"],
            buckets=_SECONDS_BUCKETS,
            registry=r,
        )
        self.transactions = Counter(
            "cdc_transactions_applied", "Source transactions applied (whole ones).", registry=r
        )
        self.committed_lsn = Gauge(
            "cdc_table_committed_lsn",
            "The position each Delta table holds: the source LSN (as a number) of its last commit.",
            ["table"],
            registry=r,
        )
        self.confirmed_lsn = Gauge(
            "cdc_confirmed_lsn", "The LSN last confirmed to the replication slot (as a number).", registry=r
        )
        self.heartbeats = Counter(
            "cdc_heartbeats",
            "Heartbeat messages written to the source (source.heartbeat_interval_seconds).",
            registry=r,
        )

        # ---- lag and the slot -----------------------------------------------------------------
        lag = Gauge(
            "cdc_replication_lag_seconds",
            "Now minus the commit time of the oldest source transaction received but not yet in Delta "
            "(0 when everything received is applied).",
            registry=r,
        )
        lag.set_function(health.lag_seconds)
        self.lag_bytes = Gauge(
            "cdc_replication_lag_bytes",
            "Server WAL position minus the slot's confirmed flush LSN, at the last slot check.",
            registry=r,
        )
        self.slot_retained_wal = Gauge(
            "cdc_slot_retained_wal_bytes",
            "WAL the slot keeps on the server (server WAL position minus the slot's restart LSN).",
            registry=r,
        )
        self.slot_max_retained_wal = Gauge(
            "cdc_slot_max_retained_wal_bytes",
            "The configured warning threshold of retained WAL (source.max_retained_wal_bytes; 0 = none).",
            registry=r,
        )
        self.slot_wal_status = Enum(
            "cdc_slot_wal_status",
            "The slot's wal_status (pg_replication_slots): 'lost' means it was invalidated.",
            states=list(WAL_STATUSES),
            registry=r,
        )
        self.slot_wal_status.state("unknown")
        self.slot_checks = Counter("cdc_slot_checks", "Slot and WAL position checks run.", registry=r)

        # ---- watermark mode --------------------------------------------------------------------
        self.replica_lag = Gauge(
            "cdc_replica_lag_seconds",
            "Watermark mode on a replica: now() - pg_last_xact_replay_timestamp() at the last poll.",
            registry=r,
        )
        self.watermark_late_rows = Counter(
            "cdc_watermark_late_rows",
            "Rows found behind the watermark (their transaction committed after a poll had passed them).",
            ["table"],
            registry=r,
        )

        self.reconciled_deletes = Counter(
            "cdc_reconcile_deletes",
            "Rows deleted from Delta because the database no longer has their key (reconciliation).",
            ["table"],
            registry=r,
        )
        self.reconciled_missing = Counter(
            "cdc_reconcile_missing_rows",
            "Rows the database has and Delta lacked, found by reconciliation (missed by polling: "
            "e.g. committed later than the look-back window, or a cursor that did not move).",
            ["table"],
            registry=r,
        )

        # ---- snapshot ------------------------------------------------------------------------
        self.snapshot_rows = Counter(
            "cdc_snapshot_rows",
            "Rows copied by table loads (initial loads and re-syncs).",
            ["table"],
            registry=r,
        )
        self.snapshot_chunks_total = Gauge(
            "cdc_snapshot_chunks", "Chunks of the table's current or last load.", ["table"], registry=r
        )
        self.snapshot_chunks_done = Gauge(
            "cdc_snapshot_chunks_done", "Chunks of that load already in Delta.", ["table"], registry=r
        )

        # ---- lake maintenance (set by each pass: engine.maintain) ------------------------------
        self.lake_files = Gauge(
            "cdc_lake_files", "Data files the table's current version references.", ["table"], registry=r
        )
        self.lake_bytes = Gauge(
            "cdc_lake_bytes", "Bytes of the data files the current version references.", ["table"], registry=r
        )
        self.lake_unvacuumed_bytes = Gauge(
            "cdc_lake_unvacuumed_bytes",
            "Bytes on storage the current version no longer references (removed, within the retention); "
            "local lakes only.",
            ["table"],
            registry=r,
        )
        self.maintenance_last = Gauge(
            "cdc_maintenance_last_timestamp_seconds",
            "When the table's last maintenance pass finished (Unix time).",
            ["table"],
            registry=r,
        )
        self.maintenance_duration = Gauge(
            "cdc_maintenance_duration_seconds",
            "How long the table's last maintenance pass took.",
            ["table"],
            registry=r,
        )
        self.maintenance_steps = Counter(
            "cdc_maintenance_steps",
            "Maintenance steps run, by step (properties, compact, zorder, checkpoint, vacuum) and outcome.",
            ["table", "step", "outcome"],
            registry=r,
        )

        # ---- verify (its own process: read from the state store at scrape time) ----------------
        self.verify_last = Gauge(
            "cdc_verify_last_timestamp_seconds",
            "When the last `cdc-replicator verify` of the table finished (Unix time).",
            ["table"],
            registry=r,
        )
        self.verify_ranges = Gauge(
            "cdc_verify_ranges_checked",
            "Key ranges the last verify of the table compared.",
            ["table"],
            registry=r,
        )
        self.verify_rows = Gauge(
            "cdc_verify_rows_checked",
            "Source rows the last verify of the table compared.",
            ["table"],
            registry=r,
        )
        self.verify_differences = Gauge(
            "cdc_verify_differences",
            "Rows the last verify found missing, extra or differing in Delta (0: equal).",
            ["table"],
            registry=r,
        )
        self.verify_results: Callable[[], Sequence[VerifyResult]] | None = None

        # ---- state and errors ----------------------------------------------------------------
        self.errors = Counter(
            "cdc_errors", "Errors by kind (the error class), retried or fatal.", ["kind"], registry=r
        )
        self.retries = Counter(
            "cdc_retries", "Reconnect attempts after a retryable error, by kind.", ["kind"], registry=r
        )
        self.retry_wait = Gauge(
            "cdc_retry_wait_seconds",
            "The last reconnect back-off wait (it starts again from 0.5 s after a healthy stream).",
            registry=r,
        )
        self.table_state = Enum(
            "cdc_table_state",
            "Each table's state.",
            ["table"],
            states=[s.value for s in TableState],
            registry=r,
        )
        self.paused_tables = Gauge("cdc_paused_tables", "Tables whose changes are held back.", registry=r)
        phase = Enum("cdc_phase", "What the main loop is doing.", states=[p.value for p in Phase], registry=r)
        self._phase = phase
        self._health = health
        alive = Gauge("cdc_alive", "1 while the main loop makes progress or waits on purpose.", registry=r)
        alive.set_function(lambda: 1.0 if health.alive() else 0.0)
        since = Gauge(
            "cdc_seconds_since_progress", "Seconds since the main loop last made progress.", registry=r
        )
        since.set_function(health.seconds_since_beat)
        connected = Gauge("cdc_source_connected", "1 while connected to the source.", registry=r)
        connected.set_function(lambda: 1.0 if health.readiness().body["connected"] else 0.0)
        for t in tables:
            self.table_state.labels(table=str(t)).state(TableState.PENDING.value)
            self.committed_lsn.labels(table=str(t))
            self.snapshot_rows.labels(table=str(t))

    def render(self) -> bytes:
        """The exposition text (the phase and table states are refreshed from the health first)."""
        self._phase.state(self._health.phase.value)
        paused = 0
        for table, (state, _reason, committed) in self._health.table_states().items():
            self.table_state.labels(table=str(table)).state(state.value)
            if committed is not None:  # an LSN, or a polled table's commit sequence number
                value = committed.value if isinstance(committed, Lsn) else committed.seq
                self.committed_lsn.labels(table=str(table)).set(value)
            paused += state is TableState.PAUSED
        self.paused_tables.set(paused)
        self._refresh_verify()
        return generate_latest(self.registry)

    def _refresh_verify(self) -> None:
        if self.verify_results is None:
            return
        try:
            results = self.verify_results()
        except Exception as exc:  # a scrape never fails for it: the other metrics still matter
            logger.warning("reading the last verify results failed: %s", type(exc).__name__)
            return
        for v in results:
            self.verify_last.labels(table=v.table).set(v.finished_at.timestamp())
            self.verify_ranges.labels(table=v.table).set(v.ranges)
            self.verify_rows.labels(table=v.table).set(v.rows)
            self.verify_differences.labels(table=v.table).set(v.differences)
