"""Pure position rules: where to start, when to refuse (``plan_start``), and what may be confirmed (``Checkpointer``).

The flush rule (invariant 2): the LSN confirmed to PostgreSQL is the end of the last batch whose
touched tables have all committed; a table the batch did not touch has nothing pending. A table's
own position is only the rule for skipping what it already holds after a restart.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from cdc_replicator.errors import PositionMismatch, SlotInvalidated
from cdc_replicator.model import ChangeBatch, Lsn, TableId, TablePosition

__all__ = ["Checkpointer", "Pause", "Recorded", "SlotState", "StartKind", "StartPlan", "plan_start"]

_RESYNC = "cdc-replicator --config FILE snapshot"


class StartKind(enum.Enum):
    INITIAL_LOAD = "initial_load"  # create the slot with a snapshot and load every table
    RELOAD = "reload"  # our own initial load was cut short: drop the slot and load again
    STREAM = "stream"  # resume streaming from the slot


@dataclass(frozen=True, slots=True)
class SlotState:
    """What the source says of the slot."""

    confirmed_flush: Lsn
    invalidated: bool
    wal_status: str | None = None


@dataclass(frozen=True, slots=True)
class Recorded:
    """What the state store says: the last position confirmed as fully applied, load progress."""

    load_state: str  # 'loading' | 'done'
    applied_lsn: Lsn | None
    consistent_point: Lsn | None
    system_id: str | None


@dataclass(frozen=True, slots=True)
class StartPlan:
    kind: StartKind
    start: Lsn = Lsn.ZERO


def plan_start(
    *,
    slot_name: str,
    slot: SlotState | None,
    recorded: Recorded | None,
    tables: Mapping[TableId, TablePosition | None],
    system_id: str,
) -> StartPlan:
    """Decide how to start, or raise: a position mismatch is a hard stop, never a guess."""
    held = {t: p for t, p in tables.items() if p is not None}
    empty = sorted(str(t) for t, p in tables.items() if p is None)
    if recorded is not None and recorded.system_id and recorded.system_id != system_id:
        raise PositionMismatch(
            f"the source is a different PostgreSQL cluster (system id {system_id}) than the one "
            f"these Delta tables were loaded from ({recorded.system_id})",
            hint=f"point source.dsn at the original cluster, or re-sync every table: {_RESYNC}",
        )
    if slot is None:
        if recorded is not None and recorded.load_state == "loading":
            return StartPlan(
                StartKind.INITIAL_LOAD
            )  # our load was cut short before or after creating the slot
        if not held:
            return StartPlan(StartKind.INITIAL_LOAD)
        raise PositionMismatch(
            f"replication slot {slot_name!r} does not exist, but the Delta tables hold positions "
            f"({_list(held)}): changes made since they were applied are gone",
            hint=f"re-sync every table (recreates the slot and reloads): {_RESYNC}",
        )
    if slot.invalidated:
        raise SlotInvalidated(
            f"replication slot {slot_name!r} is invalidated (wal_status {slot.wal_status or 'lost'}): "
            "the WAL it needed was removed, changes are lost",
            hint=f"re-sync every table: {_RESYNC}; raise max_slot_wal_keep_size to keep this from recurring",
        )
    if recorded is not None and recorded.load_state == "loading":
        if recorded.consistent_point is None or slot.confirmed_flush <= recorded.consistent_point:
            return StartPlan(StartKind.RELOAD)
        raise PositionMismatch(
            f"replication slot {slot_name!r} moved to {slot.confirmed_flush} while an initial load from "
            f"{recorded.consistent_point} was unfinished: another consumer uses the slot",
            hint=f"stop the other consumer or pick another source.slot, then: {_RESYNC}",
        )
    if not held:
        if recorded is None:
            raise PositionMismatch(
                f"replication slot {slot_name!r} exists but no Delta table holds a position and the state "
                "store has no record of creating it: it may belong to another consumer",
                hint=f"pick another source.slot, or drop it (select pg_drop_replication_slot('{slot_name}');) "
                f"or run: {_RESYNC}",
            )
        raise PositionMismatch(
            f"no Delta table holds a position for slot {slot_name!r} although the state store says they were "
            "loaded: the Delta tables were removed or source.slot changed",
            hint=f"re-sync every table: {_RESYNC}",
        )
    if empty:
        raise PositionMismatch(
            f"tables without data in Delta while the others stream: {', '.join(empty)} "
            "(added to the config, or their Delta table was removed)",
            hint=f"re-sync: {_RESYNC}",
        )
    floor = min(p.lsn for p in held.values())
    applied = recorded.applied_lsn if recorded is not None and recorded.applied_lsn is not None else Lsn.ZERO
    safe = max(floor, applied)
    if slot.confirmed_flush > safe:
        behind = sorted(str(t) for t, p in held.items() if p.lsn < slot.confirmed_flush)
        raise PositionMismatch(
            f"replication slot {slot_name!r} is confirmed up to {slot.confirmed_flush}, beyond what was "
            f"durably applied ({safe}): the slot was advanced or recreated by someone else, and the changes "
            f"in between would be lost. Tables that need a re-sync: {', '.join(behind)}",
            hint=f"re-sync: {_RESYNC}",
        )
    return StartPlan(StartKind.STREAM, slot.confirmed_flush)


def _list(held: Mapping[TableId, TablePosition]) -> str:
    return ", ".join(f"{t} at {p.lsn}" for t, p in sorted(held.items()))


# ---- the flush rule ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Pause:
    """A table held back by a schema change: nothing from ``cap`` on is confirmed while it lasts."""

    cap: Lsn  # the end of the last transaction before the change
    reason: str


@dataclass(slots=True)
class _InFlight:
    batch_id: int
    end: Lsn
    waiting: set[TableId] = field(default_factory=set)


class Checkpointer:
    """The one flush rule: which LSN may be confirmed to the source. Pure; driven by the loop's thread.

    - A batch handed to the sink (``submitted``) is in flight until every table it touches has
      committed (``committed``). What may be confirmed is the end of the last batch that, with every
      batch before it, is fully committed. A table the batch did not touch has nothing pending.
    - A batch cut inside a large transaction ends where the last complete transaction ended, so the
      head of a large transaction in flight never lets the confirm pass the transactions before it.
    - A paused table caps it at the end of the last transaction before its change (``pause``);
      pauses last until the next start, which decides again.
    - With nothing in flight and nothing buffered, everything the server sent before a keepalive is
      applied (``idle``), up to the same caps.
    - It never moves backwards; ``confirmed`` records what was sent.
    """

    def __init__(self, confirmed: Lsn) -> None:
        self._confirmed = confirmed
        self._done = confirmed  # end of the last batch that, with all before it, is committed
        self._in_flight: deque[_InFlight] = deque()
        self._pauses: dict[TableId, Pause] = {}

    # ---- pauses ------------------------------------------------------------------------------

    def pause(self, table: TableId, cap: Lsn, reason: str) -> None:
        self._pauses[table] = Pause(cap, reason)

    def is_paused(self, table: TableId) -> bool:
        return table in self._pauses

    @property
    def pauses(self) -> Mapping[TableId, Pause]:
        return MappingProxyType(self._pauses)

    # ---- batches -----------------------------------------------------------------------------

    def submitted(self, batch: ChangeBatch) -> None:
        """``batch`` was handed to the sink (batches are handed over in order)."""
        if self._in_flight and batch.batch_id <= self._in_flight[-1].batch_id:
            raise ValueError(f"batch {batch.batch_id} submitted after batch {self._in_flight[-1].batch_id}")
        self._in_flight.append(_InFlight(batch.batch_id, batch.end, set(batch.tables)))

    def committed(self, batch_id: int, table: TableId) -> None:
        """``table``'s commit of batch ``batch_id`` (data and position together) is durable."""
        for f in self._in_flight:
            if f.batch_id == batch_id:
                f.waiting.discard(table)
                return
        raise ValueError(f"batch {batch_id} is not in flight")

    # ---- what may be confirmed -------------------------------------------------------------------

    def flushable(self) -> Lsn | None:
        """The LSN to confirm now, or None when it would not move forward."""
        while self._in_flight and not self._in_flight[0].waiting:
            self._done = max(self._done, self._in_flight.popleft().end)
        return self._ahead(self._done)

    def idle(self, wal_end: Lsn) -> Lsn | None:
        """Nothing is in flight or buffered, and the server sent everything before ``wal_end``."""
        if self._in_flight:
            return None
        self._done = max(self._done, wal_end)
        return self._ahead(self._done)

    def confirmed(self, lsn: Lsn) -> None:
        """``lsn`` was recorded and sent to the source."""
        self._confirmed = max(self._confirmed, lsn)

    @property
    def last_confirmed(self) -> Lsn:
        return self._confirmed

    def _ahead(self, lsn: Lsn) -> Lsn | None:
        capped = min([lsn, *(p.cap for p in self._pauses.values())])
        return capped if capped > self._confirmed else None
