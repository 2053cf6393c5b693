"""Specification of plan_start (how the daemon starts, and when it refuses to guess) and of the flush rule.

Every refusal is a ReplicatorError with an exit code, a message naming the slot/tables/LSNs
involved and a hint an operator can act on (usually the re-sync command).
"""

from __future__ import annotations

from collections.abc import Mapping

import pyarrow as pa
import pytest

from cdc_replicator.engine.checkpoint import (
    Checkpointer,
    Recorded,
    SlotState,
    StartKind,
    StartPlan,
    plan_start,
)
from cdc_replicator.errors import PositionMismatch, ReplicatorError, SlotInvalidated, SourceError
from cdc_replicator.model import ChangeBatch, Lsn, PartialTxn, TableId, TablePatch, TablePosition, TableSchema

SLOT = "cdc_orders"
SYSTEM_ID = "7301234567890123456"
RESYNC = "cdc-replicator --config FILE snapshot"

ORDERS = TableId("public", "orders")
ITEMS = TableId("sales", "items")


def lsn(text: str) -> Lsn:
    return Lsn.parse(text)


def slot(
    confirmed: str = "0/3000", *, invalidated: bool = False, wal_status: str | None = "reserved"
) -> SlotState:
    return SlotState(lsn(confirmed), invalidated, wal_status)


def recorded(
    load_state: str = "done",
    *,
    applied: str | None = None,
    consistent_point: str | None = "0/1000",
    system_id: str | None = SYSTEM_ID,
) -> Recorded:
    return Recorded(
        load_state,
        None if applied is None else lsn(applied),
        None if consistent_point is None else lsn(consistent_point),
        system_id,
    )


def at(text: str, partial: PartialTxn | None = None) -> TablePosition:
    return TablePosition(lsn(text), partial)


def plan(
    *,
    slot_state: SlotState | None,
    rec: Recorded | None,
    tables: Mapping[TableId, TablePosition | None],
    system_id: str = SYSTEM_ID,
) -> StartPlan:
    return plan_start(slot_name=SLOT, slot=slot_state, recorded=rec, tables=tables, system_id=system_id)


def refused(
    error: type[ReplicatorError],
    *,
    slot_state: SlotState | None,
    rec: Recorded | None,
    tables: Mapping[TableId, TablePosition | None],
    system_id: str = SYSTEM_ID,
) -> ReplicatorError:
    with pytest.raises(error) as info:
        plan(slot_state=slot_state, rec=rec, tables=tables, system_id=system_id)
    return info.value


def assert_actionable(err: ReplicatorError) -> None:
    """Not retryable, exits 4 (position problems), and says what to run."""
    assert isinstance(err, SourceError)
    assert err.exit_code == 4
    assert err.retryable is False
    assert RESYNC in err.hint
    assert f"hint: {err.hint}" in str(err)


# ---- starting from nothing ---------------------------------------------------------------------


def test_a_fresh_start_without_slot_or_positions_is_an_initial_load() -> None:
    result = plan(slot_state=None, rec=None, tables={ORDERS: None, ITEMS: None})

    assert result == StartPlan(StartKind.INITIAL_LOAD)


def test_a_load_cut_short_before_the_slot_existed_loads_again() -> None:
    rec = recorded("loading", consistent_point=None)

    result = plan(slot_state=None, rec=rec, tables={ORDERS: at("0/1000"), ITEMS: None})

    assert result.kind is StartKind.INITIAL_LOAD


def test_a_missing_slot_while_tables_hold_positions_is_a_mismatch_naming_the_tables() -> None:
    err = refused(
        PositionMismatch,
        slot_state=None,
        rec=recorded(applied="0/2000"),
        tables={ORDERS: at("0/2000"), ITEMS: at("0/1800")},
    )

    assert_actionable(err)
    assert repr(SLOT) in err.message
    assert "does not exist" in err.message
    assert "public.orders at 0/2000" in err.message
    assert "sales.items at 0/1800" in err.message


# ---- the slot is unusable or not ours ----------------------------------------------------------


def test_an_invalidated_slot_is_refused_with_slot_invalidated() -> None:
    err = refused(
        SlotInvalidated,
        slot_state=slot("0/3000", invalidated=True, wal_status="lost"),
        rec=recorded(applied="0/3000"),
        tables={ORDERS: at("0/3000")},
    )

    assert_actionable(err)
    assert repr(SLOT) in err.message
    assert "lost" in err.message
    assert "max_slot_wal_keep_size" in err.hint


def test_a_different_source_cluster_is_a_mismatch_naming_both_system_ids() -> None:
    err = refused(
        PositionMismatch,
        slot_state=slot("0/3000"),
        rec=recorded(applied="0/3000"),
        tables={ORDERS: at("0/3000")},
        system_id="7399999999999999999",
    )

    assert_actionable(err)
    assert "7399999999999999999" in err.message
    assert SYSTEM_ID in err.message
    assert "source.dsn" in err.hint


def test_a_different_source_cluster_is_refused_even_without_a_slot() -> None:
    err = refused(PositionMismatch, slot_state=None, rec=recorded(), tables={ORDERS: None}, system_id="other")

    assert "different PostgreSQL cluster" in err.message


def test_a_record_without_system_id_does_not_block_the_start() -> None:
    result = plan(
        slot_state=slot("0/3000"),
        rec=recorded(applied="0/3000", system_id=None),
        tables={ORDERS: at("0/3000")},
    )

    assert result == StartPlan(StartKind.STREAM, lsn("0/3000"))


def test_a_slot_without_positions_or_state_record_may_belong_to_someone_else() -> None:
    err = refused(PositionMismatch, slot_state=slot("0/3000"), rec=None, tables={ORDERS: None})

    assert_actionable(err)
    assert "another consumer" in err.message
    assert f"select pg_drop_replication_slot('{SLOT}');" in err.hint
    assert "source.slot" in err.hint


def test_a_slot_whose_tables_lost_their_positions_is_a_mismatch() -> None:
    err = refused(
        PositionMismatch, slot_state=slot("0/3000"), rec=recorded(applied="0/3000"), tables={ORDERS: None}
    )

    assert_actionable(err)
    assert "no Delta table holds a position" in err.message


# ---- our own initial load was interrupted ------------------------------------------------------


@pytest.mark.parametrize("confirmed", ["0/900", "0/1000"], ids=["below", "at"])
def test_a_load_cut_short_with_the_slot_at_or_below_its_consistent_point_reloads(confirmed: str) -> None:
    rec = recorded("loading", consistent_point="0/1000")

    result = plan(slot_state=slot(confirmed), rec=rec, tables={ORDERS: at("0/1000"), ITEMS: None})

    assert result == StartPlan(StartKind.RELOAD)


def test_a_load_cut_short_before_the_consistent_point_was_recorded_reloads() -> None:
    rec = recorded("loading", consistent_point=None)

    assert plan(slot_state=slot("0/5000"), rec=rec, tables={ORDERS: None}).kind is StartKind.RELOAD


def test_a_load_cut_short_with_the_slot_moved_beyond_its_consistent_point_is_a_mismatch() -> None:
    err = refused(
        PositionMismatch,
        slot_state=slot("0/1008"),
        rec=recorded("loading", consistent_point="0/1000"),
        tables={ORDERS: at("0/1000"), ITEMS: None},
    )

    assert_actionable(err)
    assert "0/1008" in err.message and "0/1000" in err.message
    assert "another consumer" in err.message


# ---- positions disagree ------------------------------------------------------------------------


def test_tables_without_a_position_while_others_stream_are_listed() -> None:
    users = TableId("public", "users")
    err = refused(
        PositionMismatch,
        slot_state=slot("0/3000"),
        rec=recorded(applied="0/3000"),
        tables={ORDERS: at("0/3000"), users: None, ITEMS: None},
    )

    assert_actionable(err)
    assert "public.users, sales.items" in err.message
    assert "public.orders" not in err.message


def test_a_slot_confirmed_beyond_what_was_applied_is_a_mismatch_listing_the_tables_behind() -> None:
    err = refused(
        PositionMismatch,
        slot_state=slot("0/5000"),
        rec=recorded(applied="0/4000"),
        tables={ORDERS: at("0/6000"), ITEMS: at("0/3000")},
    )

    assert_actionable(err)
    assert "0/5000" in err.message
    assert "(0/4000)" in err.message, "the message names the durably applied position"
    assert err.message.endswith("Tables that need a re-sync: sales.items")


def test_without_an_applied_record_the_oldest_table_position_is_what_was_applied() -> None:
    err = refused(
        PositionMismatch,
        slot_state=slot("0/5000"),
        rec=recorded(applied=None),
        tables={ORDERS: at("0/4800"), ITEMS: at("0/4000")},
    )

    assert "(0/4800)" not in err.message
    assert "(0/4000)" in err.message
    assert "public.orders, sales.items" in err.message


@pytest.mark.parametrize(
    ("confirmed", "applied", "orders", "items"),
    [
        ("0/3000", "0/3000", "0/3000", "0/3000"),  # all equal
        ("0/2000", "0/3000", "0/3000", "0/3000"),  # slot behind: replay, tables skip what they hold
        ("0/5000", "0/5000", "0/5000", "0/1000"),  # an idle table far behind, the state store covers it
        ("0/4000", None, "0/4000", "0/4000"),  # no applied record, the tables cover it
    ],
    ids=["equal", "slot-behind", "idle-table", "no-applied-record"],
)
def test_a_slot_at_or_behind_the_applied_position_streams_from_its_confirmed_flush(
    confirmed: str, applied: str | None, orders: str, items: str
) -> None:
    result = plan(
        slot_state=slot(confirmed),
        rec=recorded(applied=applied),
        tables={ORDERS: at(orders), ITEMS: at(items)},
    )

    assert result == StartPlan(StartKind.STREAM, lsn(confirmed))


def test_a_table_inside_a_cut_transaction_streams_from_the_slot() -> None:
    tables = {ORDERS: at("0/3000", PartialTxn(lsn("0/3100"), 500)), ITEMS: at("0/3000")}

    result = plan(slot_state=slot("0/3000"), rec=recorded(applied="0/3000"), tables=tables)

    assert result == StartPlan(StartKind.STREAM, lsn("0/3000"))


def test_streaming_without_a_state_record_relies_on_the_table_positions() -> None:
    result = plan(slot_state=slot("0/3000"), rec=None, tables={ORDERS: at("0/3000")})

    assert result == StartPlan(StartKind.STREAM, lsn("0/3000"))


def test_every_position_error_is_a_source_error_that_the_daemon_does_not_retry() -> None:
    assert issubclass(PositionMismatch, SourceError) and issubclass(SlotInvalidated, SourceError)
    assert (PositionMismatch.exit_code, SlotInvalidated.exit_code) == (4, 4)
    assert not PositionMismatch.retryable and not SlotInvalidated.retryable


# ---- the flush rule ----------------------------------------------------------------------------


def batch(batch_id: int, end: str, *tables: TableId) -> ChangeBatch:
    return ChangeBatch(
        tables={t: TablePatch(TableSchema(t, ()), pa.table({})) for t in tables},
        end=lsn(end),
        batch_id=batch_id,
    )


def test_a_batch_may_be_confirmed_once_every_table_it_touched_has_committed() -> None:
    ck = Checkpointer(lsn("0/100"))
    ck.submitted(batch(1, "0/200", ORDERS, ITEMS))

    ck.committed(1, ORDERS)
    assert ck.flushable() is None  # items still merging

    ck.committed(1, ITEMS)
    assert ck.flushable() == lsn("0/200")


def test_a_batch_confirms_only_after_every_earlier_batch_committed() -> None:
    ck = Checkpointer(lsn("0/100"))
    ck.submitted(batch(1, "0/200", ORDERS))
    ck.submitted(batch(2, "0/300", ITEMS))

    ck.committed(2, ITEMS)
    assert ck.flushable() is None

    ck.committed(1, ORDERS)
    assert ck.flushable() == lsn("0/300")


def test_a_table_the_batch_did_not_touch_never_holds_the_confirm_back() -> None:
    ck = Checkpointer(lsn("0/100"))
    ck.submitted(batch(1, "0/200", ORDERS))  # items has nothing pending
    ck.committed(1, ORDERS)

    assert ck.flushable() == lsn("0/200")


def test_a_pause_caps_what_may_be_confirmed_and_idle_confirms_too() -> None:
    ck = Checkpointer(lsn("0/100"))
    ck.pause(ITEMS, lsn("0/180"), "schema change")
    ck.submitted(batch(1, "0/200", ORDERS))
    ck.committed(1, ORDERS)

    assert ck.flushable() == lsn("0/180")
    ck.confirmed(lsn("0/180"))
    assert ck.idle(lsn("0/900")) is None  # the cap holds for an idle stream as well
    assert ck.is_paused(ITEMS) and ck.pauses[ITEMS].reason == "schema change"


def test_an_idle_confirm_waits_for_the_batch_in_flight_and_nothing_moves_back() -> None:
    ck = Checkpointer(lsn("0/500"))
    ck.submitted(batch(1, "0/600", ORDERS))
    assert ck.idle(lsn("0/700")) is None

    ck.committed(1, ORDERS)
    assert ck.flushable() == lsn("0/600")
    ck.confirmed(lsn("0/600"))
    assert ck.idle(lsn("0/700")) == lsn("0/700")
    ck.confirmed(lsn("0/700"))
    assert ck.idle(lsn("0/650")) is None  # never backwards
