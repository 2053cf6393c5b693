"""Lake maintenance in the daemon: each streaming table gets a pass at its interval, between its writes.

A ``Maintainer`` is one background thread. It looks at the tables in turn; a table is due when its
interval has passed since its last pass in this process (the first pass comes right after the
start). A pass holds the table's writer lock (``DeltaSink.writer_lock``), which every write of the
stream also takes, so a maintenance commit never races the stream's: the table's next batch waits
for the pass, and the other tables of that batch with it. While a pass holds the lock it beats the
health (it is progress, not a stall). A failed pass is logged with its hint, counted, and tried
again at the next interval; it never stops the stream (a storage fault the stream hits too is the
stream's to report).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping

from cdc_replicator.config import Config
from cdc_replicator.errors import MaintenanceFailed, ReplicatorError
from cdc_replicator.model import TableId
from cdc_replicator.service.health import HealthState
from cdc_replicator.service.metrics import Metrics
from cdc_replicator.sink.delta import DeltaSink
from cdc_replicator.sink.maintenance import MaintenanceResult
from cdc_replicator.sink.upkeep import MaintenanceSettings, Step, due

__all__ = ["Maintainer", "maintain_now", "record", "settings_for"]

logger = logging.getLogger(__name__)

_BEAT_SECONDS = 1.0
_TURN_SECONDS = 1.0


def settings_for(cfg: Config) -> dict[TableId, MaintenanceSettings]:
    """Each configured table's maintenance settings: its [[tables]] overrides, else [maintenance]'s."""
    m = cfg.maintenance
    return {
        t.name: MaintenanceSettings(
            retention_hours=t.retention_hours or m.retention_hours,
            interval_seconds=t.interval_seconds or m.interval_seconds,
            target_file_size=t.target_file_size or cfg.target.target_file_size,
            compact_min_files=m.compact_min_files,
            checkpoint_min_commits=m.checkpoint_min_commits,
        )
        for t in cfg.tables
    }


@contextlib.contextmanager
def _beating(health: HealthState) -> Iterator[None]:
    """Beat ``health`` every second until the block ends (a pass that holds a table is progress)."""
    done = threading.Event()

    def beat() -> None:
        while not done.wait(_BEAT_SECONDS):
            health.beat()

    t = threading.Thread(target=beat, name="cdc-maint-beat", daemon=True)
    t.start()
    try:
        yield
    finally:
        done.set()
        t.join()


def record(metrics: Metrics | None, result: MaintenanceResult) -> None:
    """A finished pass in the per-table metrics."""
    if metrics is None:
        return
    t = str(result.table)
    metrics.lake_files.labels(table=t).set(result.files_after)
    metrics.lake_bytes.labels(table=t).set(result.bytes_after)
    if result.unvacuumed_bytes is not None:
        metrics.lake_unvacuumed_bytes.labels(table=t).set(result.unvacuumed_bytes)
    metrics.maintenance_last.labels(table=t).set(time.time())
    metrics.maintenance_duration.labels(table=t).set(result.seconds)
    for step in result.steps:
        metrics.maintenance_steps.labels(table=t, step=step.value, outcome="ok").inc()


class Maintainer:
    """Runs maintenance passes in a thread of its own until ``stop``; ``start``/``close`` from one thread.

    ``ready(table)``: whether the table may be maintained now (it is streaming: a table being
    loaded is left alone, its parallel chunk writes do not take the writer lock).
    """

    def __init__(
        self,
        sink: DeltaSink,
        settings: Mapping[TableId, MaintenanceSettings],
        *,
        health: HealthState,
        metrics: Metrics | None,
        ready: Callable[[TableId], bool],
        stop: threading.Event,
    ) -> None:
        self._sink = sink
        self._settings = dict(settings)
        self._health = health
        self._metrics = metrics
        self._ready = ready
        self._stop = stop
        self._closed = threading.Event()
        self._last: dict[TableId, float | None] = dict.fromkeys(self._settings)
        self._checkpointed: dict[TableId, int | None] = dict.fromkeys(self._settings)
        self._keys: dict[TableId, tuple[str, ...]] = {}
        self._zorder = False
        self._thread: threading.Thread | None = None

    def zorder_by(self, keys: Mapping[TableId, tuple[str, ...]]) -> None:
        """Z-order compacted tables by these primary keys ([maintenance] zorder; known after preflight)."""
        self._keys = dict(keys)
        self._zorder = True

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="cdc-maint", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop after the pass in progress (if any) and wait for the thread."""
        self._closed.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _stopping(self) -> bool:
        return self._closed.is_set() or self._stop.is_set()

    def _run(self) -> None:
        while not self._stopping():
            for table, settings in self._settings.items():
                if self._stopping():
                    return
                if due(self._last[table], settings.interval_seconds, time.monotonic()) and self._ready(table):
                    self.run_pass(table)
            self._closed.wait(_TURN_SECONDS)  # a due table that is not ready (loading) waits a turn

    def run_pass(self, table: TableId) -> MaintenanceResult | None:
        """One pass over ``table`` now; a failure is logged and counted, never raised."""
        settings = self._settings[table]
        if self._zorder and (keys := self._keys.get(table)):
            settings = MaintenanceSettings(
                settings.retention_hours,
                settings.interval_seconds,
                settings.target_file_size,
                settings.compact_min_files,
                settings.checkpoint_min_commits,
                keys,
            )
        self._last[table] = time.monotonic()
        try:
            with self._sink.writer_lock(table), _beating(self._health):
                result = self._sink.maintain(table, settings, checkpointed=self._checkpointed[table])
        except ReplicatorError as exc:
            step = exc.step if isinstance(exc, MaintenanceFailed) else "open"
            if self._metrics is not None:
                self._metrics.maintenance_steps.labels(table=str(table), step=step, outcome="failed").inc()
            logger.warning(
                "maintenance failed, retried in %.0fs table=%s step=%s: %s%s",
                settings.interval_seconds,
                table,
                step,
                exc.message,
                f"; hint: {exc.hint}" if exc.hint else "",
            )
            return None
        except Exception as exc:  # never the stream's end: the next interval tries again
            if self._metrics is not None:
                self._metrics.maintenance_steps.labels(
                    table=str(table), step="unknown", outcome="failed"
                ).inc()
            logger.warning("maintenance failed, retried next interval table=%s: %r", table, exc)
            return None
        if result is None:
            self._last[table] = None  # no table yet: look again soon
            return None
        if Step.CHECKPOINT in result.steps:
            self._checkpointed[table] = result.version
        record(self._metrics, result)
        logger.info("maintenance pass %s", result.summary())
        return result


def maintain_now(
    cfg: Config, tables: tuple[TableId, ...], *, report: Callable[[TableId, str], None]
) -> tuple[ReplicatorError, ...]:
    """One pass over each of ``tables`` now (``cdc-replicator maintain``); the failures, after every table.

    ``report(table, line)`` gets one line per table. Run with the daemon stopped, or beside it:
    then delta-rs' conflict check decides who wins a commit, and the loser (a pass here, or the
    daemon's merge, which re-plans from the new version) tries again.
    """
    settings = settings_for(cfg)
    sink = DeltaSink(
        cfg.target.uri,
        slot=cfg.source.slot,
        storage_options=dict(cfg.target.storage_options),
        target_file_size=cfg.target.target_file_size,
        retention_hours={t: s.retention_hours for t, s in settings.items()},
    )
    failed: list[ReplicatorError] = []
    for table in tables:
        try:
            result = sink.maintain(table, settings[table])
        except ReplicatorError as exc:
            report(table, f"{table}: failed: {exc.message}")
            failed.append(exc)
            continue
        report(table, f"{table}: no Delta table yet" if result is None else result.summary())
    return tuple(failed)
