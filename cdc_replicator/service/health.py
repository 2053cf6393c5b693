"""What the daemon is doing, as one thread-safe value: written by the pipeline, read by the endpoint.

Liveness (``/healthz``): the main loop beats on every turn (an event, a chunk of a load, a second of
a retry back-off; an idle turn only while the source is heard from). It is *wedged* when no beat
came for ``liveness_timeout`` seconds; waiting on purpose (a back-off, an idle stream whose
walsender still answers) beats, a loop waiting on a dead socket does not.

Readiness (``/readyz``): ready only while streaming, connected to the source, hearing from it
(``watch_source``: no message for more than three quarters of ``source.wal_receiver_timeout_seconds``
is a path that looks dead, and ``connected`` turns false), with no table paused or failed. Each
reason it is not ready is listed, per table where it belongs.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from cdc_replicator.model import Lsn, TableId, WatermarkPosition

__all__ = ["HealthState", "Phase", "TableState"]


class Phase(StrEnum):
    """Where the main loop is."""

    STARTING = "starting"  # checks, slot and publication set-up
    LOADING = "loading"  # an initial load
    STREAMING = "streaming"
    RETRYING = "retrying"  # waiting to reconnect after a retryable error
    STOPPING = "stopping"
    FAILED = "failed"  # a fatal error: the process is about to exit


class TableState(StrEnum):
    PENDING = "pending"  # not loaded yet
    SNAPSHOTTING = "snapshotting"
    STREAMING = "streaming"
    PAUSED = "paused"  # its changes are held back (a contract decision); nothing lost
    FAILED = "failed"


_NOT_READY_TABLE = frozenset({TableState.PAUSED, TableState.FAILED})
_WAITING_FOR_SOURCE = "source unavailable, retrying"


@dataclass(slots=True)
class _Table:
    state: TableState = TableState.PENDING
    reason: str | None = None
    committed: Lsn | WatermarkPosition | None = None  # a logical table's LSN, a polled table's watermark


@dataclass(frozen=True, slots=True)
class Readiness:
    ready: bool
    body: dict[str, Any] = field(default_factory=dict)


class HealthState:
    """Thread-safe; every method is cheap (a lock and a few assignments)."""

    def __init__(
        self,
        tables: Mapping[TableId, object] | tuple[TableId, ...] = (),
        *,
        liveness_timeout: float = 120.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._lock = threading.Lock()
        self._clock = clock
        self._timeout = liveness_timeout
        self._beat = clock()
        self._phase = Phase.STARTING
        self._connected = False
        self._error: str | None = None
        self._waiting_for = _WAITING_FOR_SOURCE
        self._tables: dict[TableId, _Table] = {t: _Table() for t in tables}
        # (commit LSN, commit time) of each transaction received and not yet applied, oldest first
        self._pending: deque[tuple[int, datetime]] = deque()
        self._listeners: list[Callable[[Phase, str | None], None]] = []
        self._heard: Callable[[], float] | None = None  # monotonic time the source was last heard
        self._silence_timeout = 0.0

    def add_listener(self, fn: Callable[[Phase, str | None], None]) -> None:
        """``fn(phase, error)`` is called (in the pipeline's thread) on every phase change."""
        self._listeners.append(fn)

    # ---- written by the pipeline ----------------------------------------------------------------

    def beat(self) -> None:
        self._beat = self._clock()  # one float store: atomic under the GIL, no lock on the hot path

    def set_phase(self, phase: Phase, *, error: str | None = None, waiting_for: str | None = None) -> None:
        """``waiting_for`` (RETRYING): what the retry waits for, as /readyz says it (default: the source)."""
        with self._lock:
            changed = (phase, error) != (self._phase, self._error)
            self._phase = phase
            self._error = error
            if phase is Phase.RETRYING:
                self._waiting_for = waiting_for or _WAITING_FOR_SOURCE
            if phase in (Phase.RETRYING, Phase.FAILED, Phase.STOPPING):
                self._connected = False
            self._beat = self._clock()
        if changed:
            for fn in self._listeners:
                fn(phase, error)

    def watch_source(self, last_heard: Callable[[], float] | None, timeout: float = 0.0) -> None:
        """While streaming: ``last_heard()`` is when the source last sent anything; None stops watching.

        ``timeout`` is ``source.wal_receiver_timeout_seconds`` (0: silence is never held against it).
        """
        with self._lock:
            self._heard = last_heard if timeout > 0 else None
            self._silence_timeout = timeout

    def source_silence(self) -> float | None:
        """Seconds since the source was last heard from; None when not watched."""
        heard = self._heard
        return None if heard is None else max(0.0, self._clock() - heard())

    def source_heard(self) -> bool:
        """False once the watched source has been silent for the whole timeout (a dead path)."""
        silence = self.source_silence()
        return silence is None or silence < self._silence_timeout

    def _silent_too_long(self) -> str | None:
        silence = self.source_silence()
        bound = 0.75 * self._silence_timeout
        if silence is None or silence <= bound:
            return None
        return (
            f"no message from the source for {silence:.0f}s (more than {bound:g}s; "
            f"source.wal_receiver_timeout_seconds = {self._silence_timeout:g}): the network path looks dead"
        )

    def set_connected(self, connected: bool) -> None:
        with self._lock:
            self._connected = connected

    def set_table(self, table: TableId, state: TableState, reason: str | None = None) -> None:
        with self._lock:
            t = self._tables.setdefault(table, _Table())
            t.state, t.reason = state, reason

    def set_committed(self, table: TableId, position: Lsn | WatermarkPosition) -> None:
        with self._lock:
            self._tables.setdefault(table, _Table()).committed = position

    def txn_received(self, commit_time: datetime, commit_lsn: Lsn = Lsn.ZERO) -> None:
        """A transaction arrived from the source (its Begin); it is pending until a batch applies it.

        One entry per transaction (at most two batches of them are pending): the apply thread pops
        while the stream loop appends, both atomic deque operations.
        """
        self._pending.append((commit_lsn.value, commit_time))

    def applied(self, *, complete: bool, upto: Lsn | None = None) -> None:
        """A batch ending at ``upto`` was applied: the transactions that commit before it are done.

        ``complete``: no transaction is left half-applied (the head of a large one stays pending).
        Without ``upto`` every transaction received so far is done. Batches apply in a background
        thread while later transactions arrive, hence the LSN. (deque appends and pops are atomic.)
        """
        if not complete:
            return
        pending = self._pending
        if upto is None:
            pending.clear()
            return
        while pending and pending[0][0] < upto.value:
            pending.popleft()

    # ---- read by the endpoint, the watchdog and the metrics ------------------------------------

    @property
    def phase(self) -> Phase:
        return self._phase

    def alive(self) -> bool:
        if self._phase is Phase.FAILED:
            return False
        return self._clock() - self._beat < self._timeout

    def seconds_since_beat(self) -> float:
        return max(0.0, self._clock() - self._beat)

    def lag_seconds(self) -> float:
        """Now − commit time of the oldest transaction received and not yet in Delta (0 when none)."""
        try:
            since = self._pending[0][1]
        except IndexError:
            return 0.0
        return max(0.0, (datetime.now(UTC) - since).total_seconds())

    def table_states(self) -> dict[TableId, tuple[TableState, str | None, Lsn | WatermarkPosition | None]]:
        with self._lock:
            return {t: (v.state, v.reason, v.committed) for t, v in self._tables.items()}

    def liveness(self) -> dict[str, Any]:
        return {
            "alive": self.alive(),
            "phase": self._phase.value,
            "seconds_since_progress": round(self.seconds_since_beat(), 3),
            "liveness_timeout_seconds": self._timeout,
        }

    def readiness(self) -> Readiness:
        with self._lock:
            reasons: list[str] = []
            if self._phase is not Phase.STREAMING:
                what = {
                    Phase.STARTING: "starting: checking the source",
                    Phase.LOADING: "initial load in progress",
                    Phase.RETRYING: self._waiting_for,
                    Phase.STOPPING: "stopping",
                    Phase.FAILED: "failed",
                }[self._phase]
                reasons.append(what + (f": {self._error}" if self._error else ""))
            elif not self._connected:
                reasons.append("not connected to the source")
            silent = self._silent_too_long() if self._phase is Phase.STREAMING else None
            if silent is not None:
                reasons.append(silent)
            tables: dict[str, dict[str, Any]] = {}
            for tid, t in self._tables.items():
                ok = t.state is TableState.STREAMING
                entry: dict[str, Any] = {"ready": ok, "state": t.state.value}
                if t.reason:
                    entry["reason"] = t.reason
                if isinstance(t.committed, Lsn):
                    entry["committed_lsn"] = str(t.committed)
                elif isinstance(t.committed, WatermarkPosition):
                    # the field /readyz has always had: a polled table's commit sequence number, in LSN form
                    entry["committed_lsn"] = str(Lsn(t.committed.seq))
                tables[str(tid)] = entry
            bad = [name for name, e in tables.items() if e["state"] in _NOT_READY_TABLE]
            if bad:
                reasons.append(f"tables not ready: {', '.join(sorted(bad))}")
            ready = not reasons and all(e["ready"] for e in tables.values())
            if not ready and not reasons:
                reasons.append("some tables are not streaming yet")
            body: dict[str, Any] = {
                "ready": ready,
                "phase": self._phase.value,
                "connected": self._connected and silent is None,
                "reasons": reasons,
                "tables": tables,
            }
            return Readiness(ready, body)
