"""The logical stream loop: source events → batches → the sink → confirm, on the thread that owns the source.

Each event goes to the batcher (or to the schema follower, or the live re-sync); a batch that
closes goes to the applier, which merges it in a background thread while the loop decodes the
next one (one in flight). The result of a finished batch goes through the commit step, always in
this order and always on this thread (arroyo's ``CommitOffsets`` as the last step):

1. the checkpointer learns which tables committed and says what may be confirmed;
2. the live re-sync saves the chunks those commits covered;
3. the state store records the position (a later start can tell a slot moved by someone else);
4. the source is confirmed.

Anything that must see every earlier batch applied (a schema decision, a re-sync step, an idle
confirm, stopping) waits for the batch in flight first.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from cdc_replicator.engine.apply import Applier, ApplyFailed, BatchApplied
from cdc_replicator.engine.batching import Batcher
from cdc_replicator.engine.checkpoint import Checkpointer
from cdc_replicator.engine.observe import Observer
from cdc_replicator.engine.relations import SchemaFollower
from cdc_replicator.engine.resync import Resyncer
from cdc_replicator.model import (
    Begin,
    ChangeBatch,
    Commit,
    Keepalive,
    Lsn,
    RelationChanged,
    RowChange,
    SourceEvent,
    SourceMessage,
    Truncate,
)
from cdc_replicator.service import failpoints
from cdc_replicator.source import Source

__all__ = ["StreamLoop"]

logger = logging.getLogger(__name__)

IDLE_SECONDS = 0.2  # the source yields None after this long without an event: batch timers run


class StreamLoop:
    """Runs one stream until ``stop`` is set or the source fails; returns the last confirmed LSN."""

    def __init__(
        self,
        *,
        source: Source,
        batcher: Batcher,
        applier: Applier,
        checkpointer: Checkpointer,
        schemas: SchemaFollower,
        record_applied: Callable[[Lsn], None],
        observer: Observer,
        stop: threading.Event,
        resync: Resyncer | None = None,
    ) -> None:
        self._source = source
        self._batcher = batcher
        self._applier = applier
        self._ck = checkpointer
        self._schemas = schemas
        self._record_applied = record_applied
        self._obs = observer
        self._stop = stop
        self._resync = resync
        self._paused = checkpointer.pauses  # a read-only view: the checkpointer owns the pauses
        self._txn_commit = Lsn.ZERO  # commit LSN of the transaction being received
        batcher.hold_while(lambda: applier.busy)  # a due batch takes changes while the last one merges

    def run(self) -> Lsn:
        try:
            for ev in self._source.events(IDLE_SECONDS):
                if ev is None:
                    self._obs.idle_beat()
                else:
                    self._obs.beat()
                if self._stop.is_set():
                    self._drain()
                    break
                self._collect()
                self._on_event(ev)
                if self._resync is not None and self._resync.active:
                    self._wait()
                    self._resync.step()
        finally:
            self._applier.close()
        return self._ck.last_confirmed

    # ---- events ----------------------------------------------------------------------------------

    def _on_event(self, ev: SourceEvent | None) -> None:
        if isinstance(ev, RowChange):  # the hot path first
            if ev.table in self._paused:
                return  # held back: the slot keeps it until the table resumes
            if self._resync is not None:
                ev = self._resync.on_change(ev)  # inside a chunk window, TOAST gaps come from the chunk
            self._hand_over(self._batcher.add(ev))
        elif isinstance(ev, Begin):
            self._txn_commit = ev.commit_lsn
            self._obs.txn_received(ev)
            self._hand_over(self._batcher.add(ev))
        elif isinstance(ev, Commit):
            self._hand_over(self._batcher.add(ev))
        elif ev is None:
            self._hand_over(self._batcher.poll())
        elif isinstance(ev, Truncate):
            self._truncate(ev)
        elif isinstance(ev, Keepalive):
            self._keepalive(ev)
        elif isinstance(ev, RelationChanged):
            self._wait()
            self._schemas.on_relation(ev, self._txn_commit, self._batcher, self._apply_now)
        elif isinstance(ev, SourceMessage):
            self._message(ev)

    def _truncate(self, ev: Truncate) -> None:
        if self._paused.keys() & set(ev.tables):
            kept = tuple(t for t in ev.tables if t not in self._paused)
            if not kept:
                return
            ev = Truncate(kept, ev.seq)
        if self._resync is not None:
            self._resync.on_truncate(ev)
        self._hand_over(self._batcher.add(ev))

    def _keepalive(self, ev: Keepalive) -> None:
        # keepalives can arrive back to back (a server shutting down waits for our flush): the
        # batch timer must run on them too, or nothing would ever close
        self._hand_over(self._batcher.poll())
        if self._batcher.idle and not self._applier.busy:
            self._wait()
            # everything sent before the keepalive is applied: let the slot move on
            self._confirm(self._ck.idle(ev.wal_end))

    def _message(self, ev: SourceMessage) -> None:
        self._wait()
        if self._resync is None:
            return
        for injected in self._resync.on_message(ev, self._txn_commit):
            if injected.table in self._paused:
                continue  # a paused table takes nothing, re-sync rows included
            self._hand_over(self._batcher.add(injected))

    # ---- batches -----------------------------------------------------------------------------------

    def _hand_over(self, batch: ChangeBatch | None) -> None:
        """Apply ``batch`` in the background (after committing the one in flight)."""
        if batch is None:
            return
        self._wait()
        self._ck.submitted(batch)
        self._applier.submit(batch)

    def _apply_now(self, batch: ChangeBatch) -> None:
        self._hand_over(batch)
        self._wait()

    def _collect(self) -> None:
        """Commit the batch in flight if it finished."""
        if self._applier.in_flight and not self._applier.busy:
            self._wait()

    def _wait(self) -> None:
        """Wait for the batch in flight and commit it; a failed one is committed as far as it got, then raised."""
        try:
            done = self._applier.wait()
        except ApplyFailed as failed:
            for t in failed.committed:
                self._ck.committed(failed.batch.batch_id, t.table)
            self._confirm(self._ck.flushable())  # the checkpointer alone decides: nothing of this batch
            raise failed.error  # noqa: B904 - the table's own error (and its cause) is the one to report
        if done is not None:
            self._commit(done)

    def _drain(self) -> None:
        """Stopping: apply and confirm what is buffered, then return."""
        last = self._batcher.flush()
        if last is not None:
            self._apply_now(last)
        self._wait()

    # ---- the commit step ------------------------------------------------------------------------------

    def _commit(self, done: BatchApplied) -> None:
        started = time.monotonic()
        batch = done.batch
        for t in done.tables:
            self._ck.committed(batch.batch_id, t.table)
        self._batcher.adapt(done.seconds)  # the next batch's time limit follows merge cost
        if self._resync is not None:
            self._resync.committed(batch.end)
        failpoints.hit("before_confirm")  # every table of the batch committed, nothing confirmed yet
        self._confirm(self._ck.flushable())
        self._obs.batch_applied(done, done.seconds + time.monotonic() - started)

    def _confirm(self, lsn: Lsn | None) -> None:
        """Record ``lsn`` in the state store, then confirm it to the source."""
        if lsn is None:
            return
        self._record_applied(lsn)
        self._source.confirm(lsn)
        self._ck.confirmed(lsn)
        self._obs.confirmed(lsn)
