"""The watermark polling loop: every table at its interval; each page one commit with the table's new watermark.

A poll reads one table in one snapshot of the database (``PollingSource.poll``): the pending
ranges' late rows first, then the rows after the watermark, page by page. Each page is merged into
Delta with the table's new ``WatermarkPosition`` in the same commit, then copied to the state
store. The first poll of an empty table appends (a catch-up at load speed). Contracts are applied
at start: a table whose layout changed is evolved, or left unpolled (paused: nothing is read, so
nothing is lost). Reconciliation (``engine.reconcile``) takes one key range between polls.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import pyarrow as pa
import pyarrow.compute as pc

from cdc_replicator.config import Config, TableConfig, redact_dsn
from cdc_replicator.engine import partitioning
from cdc_replicator.engine.contracts import decide, schema_from_json, schema_to_json
from cdc_replicator.engine.observe import Observer
from cdc_replicator.engine.reconcile import Reconciler
from cdc_replicator.engine.watermarks import add_pending, may_be_late, page_rows, settle
from cdc_replicator.errors import ConfigError
from cdc_replicator.model import (
    KeyRange,
    Page,
    PendingRange,
    Poll,
    TableId,
    TablePatch,
    TableSchema,
    WatermarkPosition,
    WatermarkTable,
)
from cdc_replicator.service.health import Phase, TableState
from cdc_replicator.sink import ApplyResult, Lake
from cdc_replicator.source import PollingSource, checks
from cdc_replicator.store.state import StateStore

__all__ = ["PollingLoop"]

logger = logging.getLogger(__name__)

_OP = {"cdc.op": "watermark"}


@dataclass(slots=True)
class _Progress:
    """One poll of one table so far: what is committed, and what was read."""

    position: WatermarkPosition  # the last one committed
    read: tuple[str, ...] | None
    seq: int
    forward: bool = False  # a page after the watermark was committed (its position drops settled ranges)
    rows: int = 0
    late: int = 0


class PollingLoop:
    """Polls the configured tables until ``stop`` is set (or once, for ``run --once``)."""

    def __init__(
        self,
        *,
        config: Config,
        source: PollingSource,
        sink: Lake,
        state: StateStore,
        observer: Observer,
        stop: threading.Event,
        set_table: Callable[[TableId, TableState, str | None], None],
    ) -> None:
        self._cfg = config
        self._source = source
        self._sink = sink
        self._state = state
        self._obs = observer
        self._stop = stop
        self._set_table = set_table
        self._slot = config.source.slot
        self._selections = config.selections
        wm = config.watermark
        self._reconciler = Reconciler(
            source=source,
            sink=sink,
            observer=observer,
            range_rows=wm.reconcile_range_rows,
            record=self._record,
        )

    # ---- entry points ------------------------------------------------------------------------------

    def run(self, *, once: bool = False) -> None:
        tables = {tc.name: self._table(tc) for tc in self._cfg.tables}
        partitioning.check_catalog(self._cfg, {t: wt.schema for t, wt in tables.items()})
        paused = self._contracts(tables)
        logger.info(
            "watermark polling tables=%d replica=%s dsn=%s",
            len(tables),
            self._source.is_replica(),
            redact_dsn(self._cfg.source.dsn),
        )
        positions = {t: self._start_position(wt) for t, wt in tables.items()}
        self._obs.health.set_connected(True)
        self._obs.health.set_phase(Phase.STREAMING)
        for t in tables:
            self._set_table(t, TableState.PAUSED if t in paused else TableState.STREAMING, paused.get(t))
        active = {t: wt for t, wt in tables.items() if t not in paused}
        if once:
            for t, wt in active.items():
                if not self._stop.is_set():
                    positions[t] = self.poll(wt, positions[t])
            logger.info("watermark catch-up done tables=%d (run --once)", len(active))
            return
        self._schedule(active, positions)
        logger.info("watermark polling stopped")

    def resync(self, tables: Sequence[TableId]) -> None:
        """Empty these tables' Delta tables and watermarks, then catch up (stop the daemon first:
        its next poll would otherwise continue from its own position)."""
        for tc in self._cfg.tables:
            if tc.name not in tables:
                continue
            wt = self._table(tc)
            partitioning.check_catalog(self._cfg, {tc.name: wt.schema})
            self._begin(wt.schema)
            self._state.record_schema(
                self._slot, tc.name, decision="load", new_schema=schema_to_json(wt.schema)
            )
            logger.info("watermark re-sync table=%s", tc.name)
            done = self.poll(wt, WatermarkPosition())
            logger.info("watermark re-sync done table=%s read=%s", tc.name, ",".join(done.read or ()))

    # ---- set-up --------------------------------------------------------------------------------------

    def _table(self, tc: TableConfig) -> WatermarkTable:
        """The polled layout: the selected columns, which must include the cursor and delete column."""
        schema = checks.select_columns(
            self._source.describe(tc.name, tc.cursor, tc.delete_column), self._selections.get(tc.name)
        )
        needed = [c for c in (*tc.cursor, tc.delete_column) if c and c not in schema.column_names]
        if needed:
            raise ConfigError(
                f"config: {tc.name}: {', '.join(needed)} (cursor / delete_column) must be replicated, "
                "but the column selection leaves it out",
                hint="add it to columns, or remove it from exclude_columns",
            )
        page = tc.page_size or self._cfg.watermark.page_size
        return WatermarkTable(schema, tc.cursor, tc.delete_column, page, tc.soft_delete)

    def _contracts(self, tables: Mapping[TableId, WatermarkTable]) -> dict[TableId, str]:
        """Compare each table's layout now with the one its Delta table holds; evolve or pause.

        Polling reads the current layout only, so the decision is taken at start.
        """
        paused: dict[TableId, str] = {}
        for t, wt in tables.items():
            new = wt.schema
            saved = self._state.applied_schema(self._slot, t)
            if saved is None or not self._sink.exists(t):
                self._state.record_schema(self._slot, t, decision="load", new_schema=schema_to_json(new))
                continue
            decision = decide(self._cfg.table(t).contract, schema_from_json(saved), new)
            if not decision.changes:
                continue
            if decision.action == "pause":
                paused[t] = f"schema change: {decision.summary} ({decision.reason})"
                logger.error("table paused table=%s changes=[%s]: %s", t, decision.summary, decision.reason)
            elif decision.action == "evolve":
                done = self._sink.evolve(new)
                logger.warning(
                    "schema evolved table=%s changes=[%s] delta=[%s]", t, decision.summary, "; ".join(done)
                )
            self._state.record_schema(
                self._slot,
                t,
                decision={"pause": "pause", "evolve": "evolve"}.get(decision.action, "accept"),
                changes=decision.summary,
                old_schema=saved,
                new_schema=schema_to_json(new),
            )
        return paused

    def _begin(self, schema: TableSchema) -> None:
        """An empty table whose commit says 'nothing read yet' (also in the state store's copy), so
        a load cut short before its first page never resumes from an older watermark."""
        self._sink.begin_load(schema, fresh=True, watermark=WatermarkPosition())
        self._record(schema.table, WatermarkPosition())

    def _start_position(self, wt: WatermarkTable) -> WatermarkPosition:
        """The table's watermark from its newest Delta commit (else the state store's copy); create the table.

        Sequence numbers continue above what the table's log holds, whichever copy is used.
        """
        table = wt.schema.table
        if not self._sink.exists(table):
            self._begin(wt.schema)
            return WatermarkPosition()
        held = self._sink.watermark(table)
        if held is not None:
            return held
        floor = self._sink.watermark_seq(table)
        saved = self._state.table_statuses(self._slot).get(str(table))
        copy = saved.position if saved is not None else None
        if isinstance(copy, WatermarkPosition):
            return WatermarkPosition(copy.read, copy.pending, max(copy.seq, floor))
        logger.warning(
            "no watermark found for %s: reading the whole table again (merges make that safe)", table
        )
        return WatermarkPosition(seq=floor)

    # ---- the loop ------------------------------------------------------------------------------------

    def _schedule(
        self, tables: Mapping[TableId, WatermarkTable], positions: dict[TableId, WatermarkPosition]
    ) -> None:
        wm = self._cfg.watermark
        due = dict.fromkeys(tables, 0.0)
        interval = {tc.name: tc.poll_interval_seconds or wm.poll_interval_seconds for tc in self._cfg.tables}
        every = wm.reconcile_interval_seconds
        recon_due = dict.fromkeys(tables, time.monotonic() + every if every > 0 else float("inf"))
        recon_from: dict[TableId, tuple[str, ...] | None] = dict.fromkeys(tables)
        while not self._stop.is_set():
            now = time.monotonic()
            for t, wt in tables.items():
                if due[t] <= now and not self._stop.is_set():
                    positions[t] = self.poll(wt, positions[t])
                    due[t] = time.monotonic() + interval[t]
                if recon_due[t] <= time.monotonic() and not self._stop.is_set():
                    # one range per turn, so polls go on between ranges; rate-limited
                    positions[t], recon_from[t], keys = self._reconciler.step(wt, positions[t], recon_from[t])
                    pause = keys / wm.reconcile_max_rows_per_second
                    recon_due[t] = time.monotonic() + (pause if recon_from[t] is not None else every)
            self._obs.beat()
            wait = min(*due.values(), *recon_due.values()) - time.monotonic()
            if wait > 0:
                self._stop.wait(min(wait, 1.0))

    def poll(self, wt: WatermarkTable, position: WatermarkPosition) -> WatermarkPosition:
        """One poll of one table: late rows and new rows, each page one Delta commit with the new position."""
        table = wt.schema.table
        lookback = self._cfg.watermark.lookback_seconds
        polled_at = time.time()
        with self._source.poll(wt, position) as poll:
            self._obs.replica_lag(poll.replica_lag_seconds)
            settled = settle(position, poll.snapshot, now=polled_at, lookback=lookback)
            fresh = position.read is None and not position.pending and (self._sink.row_count(table) or 0) == 0
            progress = _Progress(position, position.read, position.seq)
            for page in poll.pages:
                self._obs.beat()
                new = self._next(progress, page, poll, settled, polled_at, lookback, start=position)
                self._commit_page(wt, page, new, fresh=fresh)
                progress.rows += page.rows.num_rows
                progress.late += page.rows.num_rows if page.late else 0
                progress.forward |= not page.late
                progress.position = new
        if not progress.forward and progress.position.pending != settled:
            # ranges settled (and late pages, if any, all read) without new rows: record it (an
            # empty commit), so a restart does not watch them again
            seq = max(progress.seq + 1, poll.wal_position.value)
            new = WatermarkPosition(progress.read, settled, seq)
            self._sink.apply(TablePatch(wt.schema, _empty_rows(wt.schema), changes=0), new, metadata=_OP)
            self._record(table, new)
            progress.position = new
        self._log_poll(table, progress)
        return progress.position

    @staticmethod
    def _next(
        progress: _Progress,
        page: Page,
        poll: Poll,
        settled: tuple[PendingRange, ...],
        polled_at: float,
        lookback: float,
        *,
        start: WatermarkPosition,
    ) -> WatermarkPosition:
        """The position the table holds once ``page`` is committed."""
        if not page.late and page.last is not None:
            progress.read = page.last
        progress.seq = max(progress.seq + 1, poll.wal_position.value)
        if page.late:
            # late pages come first; until all are read, every pending range stays recorded
            # (a crash now must re-read the ranges not reached yet)
            return WatermarkPosition(progress.read, start.pending, progress.seq)
        watch = settled
        read = progress.read
        if read is not None and read != start.read and (may_be_late(poll.snapshot) or lookback > 0):
            watch = add_pending(settled, PendingRange(start.read, read, poll.snapshot, polled_at))
        return WatermarkPosition(read, watch, progress.seq)

    def _commit_page(self, wt: WatermarkTable, page: Page, new: WatermarkPosition, *, fresh: bool) -> None:
        at = datetime.now(UTC)
        t0 = time.monotonic()
        result: ApplyResult | None = None
        if fresh and not page.late and not wt.soft_delete:
            rows = page.rows
            if wt.delete_column:
                rows = rows.filter(pc.is_null(rows.column(wt.delete_column)))
            self._sink.load_chunk(
                wt.schema,
                rows.to_batches(),
                KeyRange(),
                row_lsn=new.seq,
                loaded_at=at,
                append=True,
                position=new,
                metadata=_OP,
            )
        else:
            data = page_rows(page.rows, wt.delete_column, seq=new.seq, read_at=at)
            result = self._sink.apply(TablePatch(wt.schema, data, changes=data.num_rows), new, metadata=_OP)
        self._record(wt.schema.table, new)
        self._obs.page_committed(
            wt.schema.table,
            new,
            rows=page.rows.num_rows,
            late=page.late,
            result=result,
            seconds=time.monotonic() - t0,
        )

    def _record(self, table: TableId, position: WatermarkPosition) -> None:
        """A copy of the position in the state store (the Delta commit is the authority)."""
        try:
            self._state.table_status(self._slot, table, TableState.STREAMING.value, position=position)
        except Exception as exc:
            logger.warning("could not record the watermark of %s: %s", table, exc)

    @staticmethod
    def _log_poll(table: TableId, p: _Progress) -> None:
        if p.rows:
            logger.info(
                "watermark poll table=%s rows=%d late=%d read=%s pending=%d",
                table,
                p.rows,
                p.late,
                ",".join(p.read or ()),
                len(p.position.pending),
            )
        if p.late:
            logger.warning(
                "late rows table=%s rows=%d: committed after a poll had passed their cursor value; "
                "captured (source.mode watermark watches pending ranges)",
                table,
                p.late,
            )


def _empty_rows(schema: TableSchema) -> pa.Table:
    cols: dict[str, pa.Array] = {c.name: pa.array([], pa.binary()) for c in schema.columns}
    cols["_cdc_lsn"] = pa.array([], pa.int64())
    cols["_cdc_op"] = pa.array([], pa.string())
    cols["_cdc_committed_at"] = pa.array([], pa.timestamp("us", tz="UTC"))
    return pa.table(cols)
