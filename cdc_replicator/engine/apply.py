"""Apply batches to the sink: one batch in flight in a background thread, its tables side by side.

A merge spends most of its time in delta-rs with the GIL released: while batch n merges, the
stream loop decodes and batches n+1. Each table of a batch is its own commit with its own
position, so they merge side by side (a pool of ``parallel`` threads). The applier only applies
(and reports each table's commit to the metrics): it returns what was committed
(``BatchApplied``), and the loop — the thread that owns the source — records and confirms it
(``engine.stream``). A failure of any table is raised after every table of
the batch has finished, so none is left running behind a retry.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from cdc_replicator.model import ChangeBatch, TableId, TablePatch
from cdc_replicator.service import failpoints
from cdc_replicator.sink import ApplyResult, Sink

__all__ = ["Applier", "ApplyFailed", "BatchApplied", "TableApplied"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class TableApplied:
    """One table's commit of a batch; ``result`` None: the table already held it (a replay)."""

    table: TableId
    result: ApplyResult | None
    seconds: float


@dataclass(frozen=True, slots=True)
class BatchApplied:
    """Every table of ``batch`` committed, with the batch's position."""

    batch: ChangeBatch
    tables: tuple[TableApplied, ...]
    seconds: float


class ApplyFailed(Exception):
    """A table of ``batch`` failed (``error``); ``committed`` lists the tables that did commit."""

    def __init__(self, batch: ChangeBatch, committed: tuple[TableApplied, ...], error: BaseException) -> None:
        super().__init__(f"applying batch {batch.batch_id} failed: {error}")
        self.batch = batch
        self.committed = committed
        self.error = error


class Applier:
    """Applies batches in order, at most one in flight. ``submit``/``poll``/``wait``/``close``: one thread.

    ``on_commit`` is called after each table commit, from the worker thread (health beats and the
    per-table metrics, so that they move with the commit and a long batch still shows progress);
    it must only observe: what the commit means for the source is decided on the loop's thread.
    """

    def __init__(
        self,
        sink: Sink,
        *,
        parallel: int = 4,
        on_commit: Callable[[TableApplied, ChangeBatch], None] = lambda _t, _b: None,
    ) -> None:
        self._sink = sink
        self._on_commit = on_commit
        self._batches = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cdc-apply")
        self._tables = ThreadPoolExecutor(max_workers=max(1, parallel), thread_name_prefix="cdc-merge")
        self._pending: Future[BatchApplied] | None = None

    @property
    def in_flight(self) -> bool:
        """A batch was submitted and its result not taken yet."""
        return self._pending is not None

    @property
    def busy(self) -> bool:
        """A batch is still being applied."""
        return self._pending is not None and not self._pending.done()

    def submit(self, batch: ChangeBatch) -> None:
        """Start applying ``batch``; the previous result must have been taken (``wait``/``poll``)."""
        if self._pending is not None:
            raise RuntimeError("a batch is still in flight: take its result first")
        self._pending = self._batches.submit(self._apply, batch)

    def poll(self) -> BatchApplied | None:
        """The finished batch's result, without waiting (None: none finished); raises ``ApplyFailed``."""
        if self._pending is None or not self._pending.done():
            return None
        return self.wait()

    def wait(self) -> BatchApplied | None:
        """Wait for the batch in flight; its result (None: nothing was in flight); raises ``ApplyFailed``."""
        if self._pending is None:
            return None
        pending, self._pending = self._pending, None
        return pending.result()

    def close(self) -> None:
        """Let a batch in flight finish (its result is dropped: nothing confirms it) and stop the threads."""
        if self._pending is not None:
            try:
                self._pending.result()
            except BaseException as exc:  # the loop's own error is the one raised; this batch is redone
                logger.error("a background apply failed while the stream was stopping: %s", exc)
            self._pending = None
        self._batches.shutdown(wait=True)
        self._tables.shutdown(wait=True)

    # ---- the worker side --------------------------------------------------------------------

    def _apply(self, batch: ChangeBatch) -> BatchApplied:
        started = time.monotonic()
        patches = list(batch.tables.values())
        done: tuple[TableApplied, ...]
        if len(patches) == 1:
            try:
                done = (self._apply_table(patches[0], batch),)
            except Exception as exc:
                raise ApplyFailed(batch, (), exc) from exc
        else:
            futures = [self._tables.submit(self._apply_table, p, batch) for p in patches]
            errors = [f.exception() for f in futures]  # waits for every table
            done = tuple(f.result() for f, e in zip(futures, errors, strict=True) if e is None)
            first = next((e for e in errors if e is not None), None)
            if first is not None:
                raise ApplyFailed(batch, done, first) from first
        return BatchApplied(batch, done, time.monotonic() - started)

    def _apply_table(self, patch: TablePatch, batch: ChangeBatch) -> TableApplied:
        t0 = time.monotonic()
        result = self._sink.apply(patch, batch.position, batch_id=batch.batch_id)
        failpoints.hit("after_table_commit")
        done = TableApplied(patch.schema.table, result, time.monotonic() - t0)
        self._on_commit(done, batch)
        return done
