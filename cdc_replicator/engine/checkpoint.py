"""Pure position rules: where to start, when to refuse, and what may be confirmed to the source.

The flush rule (invariant 2): the LSN confirmed to PostgreSQL is the end of the last batch whose
touched tables have all committed; a table the batch did not touch has nothing pending. A table's
own position is only the rule for skipping what it already holds after a restart.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass

from cdc_replicator.errors import PositionMismatch, SlotInvalidated
from cdc_replicator.model import Lsn, TableId, TablePosition

__all__ = ["SlotState", "StartKind", "StartPlan", "Recorded", "plan_start"]

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
