"""Specification of the logical stream loop on a scripted source and an in-memory sink.

The real stage code runs (batcher, applier thread, checkpointer, schema follower, state store on
sqlite); only the replication slot and Delta are replaced. Every confirm the loop sends is checked
when it arrives: each table a transaction ending at or before it touched must already hold it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from cdc_replicator.engine.apply import Applier
from cdc_replicator.engine.batching import Batcher, BatchLimits
from cdc_replicator.engine.checkpoint import Checkpointer
from cdc_replicator.engine.contracts import Contract
from cdc_replicator.engine.observe import Observer
from cdc_replicator.engine.relations import SchemaFollower
from cdc_replicator.engine.stream import StreamLoop
from cdc_replicator.errors import SinkError
from cdc_replicator.model import (
    Begin,
    Column,
    Commit,
    Keepalive,
    Lsn,
    PartialTxn,
    Position,
    RelationChanged,
    RowChange,
    TableId,
    TablePosition,
    TableSchema,
)
from cdc_replicator.service.health import HealthState
from cdc_replicator.sink.memory import MemorySink
from cdc_replicator.store.state import StateStore
from tests.support.events import INT8, TEXT, FakeClock, begin, commit, end_of, insert, schema, update
from tests.support.scripted import Call, Idle, Item, ScriptedSource

A = TableId("public", "a")
B = TableId("public", "b")
SA = schema(A, ("id", INT8), ("v", TEXT))
SB = schema(B, ("id", INT8), ("v", TEXT))
SA_WIDER = TableSchema(A, (*SA.columns, Column("w", TEXT)))  # ADD COLUMN w text
LOADED = Lsn(50)  # where the initial load left every table
SLOT = "spec"
LIMITS = BatchLimits(max_rows=1_000_000, max_bytes=1 << 30, max_seconds=1.0)  # a batch closes on Idle()


def tx(commit_lsn: int, *items: RowChange | RelationChanged) -> list[Item]:
    return [begin(commit_lsn), *items, commit(commit_lsn)]


class Rig:
    """One pipeline's parts around a memory sink that outlives restarts (as Delta does)."""

    def __init__(
        self,
        tmp_path: Path,
        *,
        before_apply: Callable[[TableId, Position], None] | None = None,
        contracts: dict[TableId, Contract] | None = None,
    ) -> None:
        self.sink = MemorySink(before_apply)
        for s in (SA, SB):
            self.sink.load(s, {}, TablePosition(LOADED))
        self.state = StateStore(f"sqlite:///{tmp_path / 'state.db'}")
        self.state.begin_load(SLOT, "spec-system")
        self.state.finish_load(SLOT, LOADED)
        self.contracts = contracts or {A: "evolve", B: "evolve"}
        self.paused: list[TableId] = []
        self.script: list[Item] = []
        self.source: ScriptedSource | None = None
        self.checkpointer: Checkpointer | None = None

    def run(self, script: Sequence[Item], *, start: Lsn = LOADED) -> ScriptedSource:
        """Stream ``script`` from ``start`` until it ends (the loop then drains and returns)."""
        self.script = list(script)
        stop = threading.Event()
        clock = FakeClock()
        positions = {t: p for t in (A, B) if (p := self.sink.position(t)) is not None}
        self.checkpointer = ck = Checkpointer(start)
        follower = SchemaFollower(
            slot=SLOT,
            contracts=self.contracts,
            sink=self.sink,
            offsets=self.sink,
            history=self.state,
            checkpointer=ck,
            load_domains=dict,
            on_pause=lambda t, _reason: self.paused.append(t),
        )
        follower.start({A: SA, B: SB})
        self.source = ScriptedSource(
            script, stop=stop, clock=clock, start=start, relations=(SA, SB), on_confirm=self.check_durable
        )
        observer = Observer(HealthState((A, B)))
        loop = StreamLoop(
            source=self.source,
            batcher=Batcher(LIMITS, {}, positions, start=start, clock=clock),
            applier=Applier(self.sink, parallel=2, on_commit=observer.table_committed),
            checkpointer=ck,
            schemas=follower,
            record_applied=lambda lsn: self.state.record_applied(SLOT, lsn),
            observer=observer,
            stop=stop,
        )
        loop.run()
        return self.source

    def check_durable(self, upto: Lsn) -> None:
        """Every table a transaction ending at or before ``upto`` touched holds that transaction."""
        touched: set[TableId] = set()
        for item in self.script:
            if isinstance(item, Begin):
                touched = set()
            elif isinstance(item, RowChange):
                touched.add(item.table)
            elif isinstance(item, Commit) and item.end_lsn <= upto:
                for t in touched:
                    held = self.sink.position(t)
                    assert held is not None and held.lsn >= item.end_lsn, (
                        f"confirmed {upto} while {t} holds only {held}: transaction {item.commit_lsn} not in it"
                    )

    def rows(self, table: TableId) -> dict[bytes, dict[str, object]]:
        return {
            k[0]: {c: v for c, v in r.items() if c != "_cdc_lsn"} for k, r in self.sink.rows(table).items()
        }  # type: ignore[misc]


TWO_TABLES = [
    *tx(100, insert(A, b"1", b"a1"), insert(B, b"1", b"b1")),
    Idle(),
    *tx(200, update(A, b"1", b"a2"), insert(B, b"2", b"b2")),
    Idle(),
]


# ---- the flush rule ----------------------------------------------------------------------------


def test_a_batch_is_confirmed_only_once_every_table_it_touched_has_committed(tmp_path: Path) -> None:
    def crash_on_b(table: TableId, _position: Position) -> None:
        if table == B:
            raise SinkError("disk full (scripted)")

    rig = Rig(tmp_path, before_apply=crash_on_b)

    with pytest.raises(SinkError, match="disk full"):
        rig.run(TWO_TABLES)

    assert rig.source is not None and rig.source.confirms == []
    assert rig.sink.position(A) == TablePosition(end_of(100))  # A committed its part of batch 1
    assert rig.sink.position(B) == TablePosition(LOADED)
    rec = rig.state.slot(SLOT)
    assert rec is not None and rec.applied_lsn == LOADED  # nothing new recorded either


def test_after_a_crash_between_two_table_commits_a_restart_converges_and_applies_nothing_twice(
    tmp_path: Path,
) -> None:
    crashed: list[TableId] = []

    def crash_once_on_b(table: TableId, _position: Position) -> None:
        if table == B and not crashed:
            crashed.append(table)
            raise SinkError("killed between two table commits (scripted)")

    rig = Rig(tmp_path, before_apply=crash_once_on_b)
    with pytest.raises(SinkError):
        rig.run(TWO_TABLES)

    source = rig.run(TWO_TABLES, start=LOADED)  # the slot was never confirmed: the stream replays

    assert rig.rows(A) == {b"1": {"id": b"1", "v": b"a2"}}
    assert rig.rows(B) == {b"1": {"id": b"1", "v": b"b1"}, b"2": {"id": b"2", "v": b"b2"}}
    assert source.confirms == [end_of(100), end_of(200)]
    a_commits = [p for t, p in rig.sink.commits if t == A]
    assert a_commits == [TablePosition(end_of(100)), TablePosition(end_of(200))]  # batch 1 once, not twice
    rec = rig.state.slot(SLOT)
    assert rec is not None and rec.applied_lsn == end_of(200)  # recorded before it was confirmed


def test_an_idle_stream_confirms_the_servers_position_once_nothing_is_in_flight(tmp_path: Path) -> None:
    rig = Rig(tmp_path)

    source = rig.run([*tx(100, insert(A, b"1", b"x")), Idle(), Keepalive(Lsn(5000))])

    assert source.confirms == [end_of(100), Lsn(5000)]


# ---- pipelined apply ---------------------------------------------------------------------------


def test_the_next_batch_is_read_while_one_merges_and_batches_commit_and_confirm_in_order(
    tmp_path: Path,
) -> None:
    merging, release = threading.Event(), threading.Event()

    def hold_the_first_batch(_table: TableId, position: Position) -> None:
        if position == TablePosition(end_of(100)):
            merging.set()
            assert release.wait(10), "the merge was never released"

    rig = Rig(tmp_path, before_apply=hold_the_first_batch)
    seen: dict[str, object] = {}

    def while_the_first_batch_merges() -> None:
        assert merging.wait(10)
        assert rig.source is not None
        seen["played"] = rig.source.played
        seen["commits"] = list(rig.sink.commits)
        seen["confirms"] = list(rig.source.confirms)
        release.set()

    source = rig.run(
        [
            *tx(100, insert(A, b"1", b"x")),
            Idle(),  # batch 1 closes and starts merging (held)
            *tx(200, insert(A, b"2", b"y"), insert(A, b"3", b"z")),
            Idle(),  # batch 2 is due, but batch 1 still merges: it stays open ...
            *tx(300, update(A, b"2", b"y2")),  # ... and takes this transaction too
            Call(while_the_first_batch_merges),
            Idle(),
        ]
    )

    assert seen["commits"] == [] and seen["confirms"] == []  # batch 1 was still merging ...
    assert isinstance(seen["played"], int) and seen["played"] >= 3 + 4 + 3  # ... while batch 2 was read
    assert [p for _t, p in rig.sink.commits] == [TablePosition(end_of(n)) for n in (100, 300)]
    assert source.confirms == [end_of(100), end_of(300)]
    assert rig.rows(A)[b"2"]["v"] == b"y2"


# ---- schema changes and pauses -------------------------------------------------------------------


def test_a_paused_table_caps_the_confirm_while_the_other_tables_stream_on(tmp_path: Path) -> None:
    rig = Rig(tmp_path, contracts={A: "freeze", B: "evolve"})

    source = rig.run(
        [
            *tx(100, insert(A, b"1", b"a"), insert(B, b"1", b"b")),
            Idle(),
            *tx(
                200,
                insert(A, b"2", b"a"),  # before the change: A takes it
                RelationChanged(1000, SA_WIDER, seq=1),  # ADD COLUMN under freeze: A pauses here
                insert(A, b"3", b"a", b"w"),  # after it: held back
                insert(B, b"2", b"b"),
            ),
            Idle(),
            *tx(300, insert(B, b"3", b"b")),
            Idle(),
            Keepalive(Lsn(9000)),  # an idle confirm is capped too
        ]
    )

    assert rig.paused == [A]
    assert set(rig.rows(A)) == {b"1", b"2"}
    assert set(rig.rows(B)) == {b"1", b"2", b"3"}
    assert source.confirms == [end_of(100)]  # never past the last transaction before A's change
    assert rig.sink.position(A) == TablePosition(end_of(100), PartialTxn(Lsn(200), 1))
    assert rig.checkpointer is not None and rig.checkpointer.pauses[A].cap == end_of(100)


def test_a_schema_change_in_the_middle_of_a_batch_applies_the_rows_of_the_old_layout_first(
    tmp_path: Path,
) -> None:
    rig = Rig(tmp_path)

    source = rig.run(
        [
            *tx(100, insert(A, b"1", b"x")),
            *tx(
                200,
                insert(A, b"2", b"y"),
                RelationChanged(1000, SA_WIDER, seq=1),  # ADD COLUMN w: evolve
                insert(A, b"3", b"z", b"w3"),
            ),
            Idle(),
        ]
    )

    positions = [p for t, p in rig.sink.commits if t == A]
    # the old layout's rows (txn 100 and the head of txn 200) in one commit, cut at the change ...
    assert positions == [TablePosition(end_of(100), PartialTxn(Lsn(200), 1)), TablePosition(end_of(200))]
    assert "w" in rig.sink.columns(A)  # ... the table evolved between the two ...
    assert rig.rows(A) == {  # ... and the new layout's rows carry the new column
        b"1": {"id": b"1", "v": b"x"},
        b"2": {"id": b"2", "v": b"y"},
        b"3": {"id": b"3", "v": b"z", "w": b"w3"},
    }
    assert source.confirms == [end_of(100), end_of(200)]  # the cut batch ends where txn 100 did
    history = rig.state.schema_history(SLOT, A)
    assert [h.decision for h in history] == ["load", "evolve"]
