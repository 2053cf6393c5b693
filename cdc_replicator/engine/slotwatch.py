"""A side thread on its own connection: the slot's lag, retained WAL and wal_status, and heartbeats.

It only observes (metrics, a warning past ``source.max_retained_wal_bytes``) and writes the
heartbeat; it never drops or moves the slot. Its errors are logged and counted, never raised: the
main loop finds a lost source by itself.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import psycopg

from cdc_replicator.config import Config
from cdc_replicator.errors import ReplicatorError
from cdc_replicator.service.health import HealthState, Phase
from cdc_replicator.service.metrics import WAL_STATUSES, Metrics
from cdc_replicator.source import checks, objects

__all__ = ["SlotWatch"]

logger = logging.getLogger(__name__)


class SlotWatch:
    """Watches the slot every ``source.slot_check_interval_seconds``; heartbeats while streaming."""

    def __init__(
        self,
        config: Config,
        health: HealthState,
        metrics: Metrics | None,
        stop: threading.Event,
        *,
        enabled: bool = True,
    ) -> None:
        self._enabled = enabled  # watermark mode has no slot and writes nothing to the source
        self._src = config.source
        self._health = health
        self._metrics = metrics
        self._stop = stop
        self._done = threading.Event()
        self._thread: threading.Thread | None = None
        self._conn: psycopg.Connection[tuple[object, ...]] | None = None
        self._over_limit_logged = 0.0
        self._standby_warned = False
        if metrics is not None:
            metrics.slot_max_retained_wal.set(config.source.max_retained_wal_bytes)

    def start(self) -> None:
        if not self._enabled:
            return
        self._thread = threading.Thread(target=self._loop, name="cdc-slot-watch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._done.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._close()

    def _loop(self) -> None:
        check_every = self._src.slot_check_interval_seconds
        beat_every = self._src.heartbeat_interval_seconds
        next_check = time.monotonic()
        next_beat = time.monotonic() + beat_every if beat_every > 0 else float("inf")
        while not (self._done.is_set() or self._stop.is_set()):
            now = time.monotonic()
            if now >= next_check:
                next_check = now + check_every
                self._guard("slot_check", self._check)
            if now >= next_beat:
                next_beat = now + beat_every
                if self._health.phase is Phase.STREAMING:
                    self._guard("heartbeat", self._heartbeat)
            self._done.wait(max(0.05, min(next_check, next_beat) - time.monotonic()))

    def _guard(self, what: str, fn: Callable[[psycopg.Connection[tuple[object, ...]]], None]) -> None:
        try:
            if self._conn is None or self._conn.closed:
                self._conn = checks.connect(
                    self._src.dsn,
                    connect_timeout=self._src.connect_timeout_seconds,
                    silence_timeout=self._src.wal_receiver_timeout_seconds,
                )
            fn(self._conn)
        except (ReplicatorError, psycopg.Error) as exc:
            logger.debug("%s failed: %s", what, str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
            if self._metrics is not None:
                self._metrics.errors.labels(kind=f"{what}_failed").inc()
                if what == "slot_check":
                    self._metrics.slot_wal_status.state("unknown")
            self._close()

    def _close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except psycopg.Error:
                pass
            self._conn = None

    def _check(self, conn: psycopg.Connection[tuple[object, ...]]) -> None:
        stats = checks.slot_stats(conn, self._src.slot)
        m = self._metrics
        if m is not None:
            m.slot_checks.inc()
            m.slot_wal_status.state(stats.wal_status if stats.wal_status in WAL_STATUSES else "unknown")
            if stats.lag_bytes is not None:
                m.lag_bytes.set(stats.lag_bytes)
            if stats.retained_wal_bytes is not None:
                m.slot_retained_wal.set(stats.retained_wal_bytes)
        limit = self._src.max_retained_wal_bytes
        retained = stats.retained_wal_bytes
        if limit > 0 and retained is not None and retained > limit:
            now = time.monotonic()
            if now - self._over_limit_logged > 600 or self._over_limit_logged == 0.0:
                self._over_limit_logged = now
                logger.warning(
                    "slot retains too much WAL slot=%s retained_bytes=%d max_retained_wal_bytes=%d "
                    "wal_status=%s: the daemon is behind or stopped; the slot is kept (it is never dropped "
                    "automatically): check the daemon, or raise source.max_retained_wal_bytes",
                    self._src.slot,
                    retained,
                    limit,
                    stats.wal_status,
                )
        elif self._over_limit_logged:
            self._over_limit_logged = 0.0
            logger.info(
                "slot retained WAL back under the limit slot=%s retained_bytes=%s", self._src.slot, retained
            )
        if stats.wal_status == "lost":
            logger.error(
                "replication slot %s was invalidated by the server (wal_status lost): changes were lost; "
                "a re-sync is needed: cdc-replicator --config FILE snapshot",
                self._src.slot,
            )

    def _heartbeat(self, conn: psycopg.Connection[tuple[object, ...]]) -> None:
        if checks.is_standby(conn):
            # a standby is read-only, and the daemon never connects to the primary
            if not self._standby_warned:
                self._standby_warned = True
                logger.warning(
                    "source.heartbeat_interval_seconds is set but the source is a standby: heartbeats are "
                    "skipped (the slot follows the primary's WAL through the idle confirm)"
                )
            return
        if self._src.heartbeat == "table":
            objects.heartbeat_table(conn)
            logger.debug("heartbeat written table=cdc_replicator.heartbeat")
        else:
            lsn = checks.emit_heartbeat(conn)
            logger.debug("heartbeat written lsn=%s", lsn)
        if self._metrics is not None:
            self._metrics.heartbeats.inc()
