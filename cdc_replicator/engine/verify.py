"""``cdc-replicator verify``: prove each Delta table equals its source, range by range, while the daemon streams.

For each key range (``[verify] range_rows`` rows, planned from a sample of the keys as loads are):
1. the source range is read in a fresh REPEATABLE READ snapshot, with the WAL position S it sees;
2. logical mode: wait (``[verify] wait_seconds``) until the table's Delta position, or the slot's
   confirmed position (confirmed only once every table has committed what came before), is at or
   beyond S, so Delta holds every transaction the snapshot sees; then Delta's range is read;
3. ``engine.rangediff`` compares the two in Delta's types. Delta rows written after S
   (``_cdc_lsn`` above it) are changed since and set apart; every other difference is re-checked
   in ``recheck_rounds`` fresh snapshots and reported only if every round finds it.
Watermark mode has no WAL position to wait for: Delta rows committed after the snapshot (their
``_cdc_lsn`` is the commit sequence number, above the one the table held when the snapshot was
taken) are set apart, and each re-check waits one poll interval so that the polls reach rows they
had not read yet.

Reads are paced to ``[verify] max_rows_per_second`` (both sides together).
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

from cdc_replicator.config import Config, VerifyConfig
from cdc_replicator.engine import partitioning
from cdc_replicator.engine.rangediff import Key, RangeDiff, diff_range
from cdc_replicator.engine.resync import request_resync
from cdc_replicator.errors import ConfigError, LakeBehind, ReplicatorError, SlotInUse, SourceError
from cdc_replicator.model import KeyRange, Lsn, TableId, TableSchema, VerifyResult
from cdc_replicator.sink.delta import DeltaSink
from cdc_replicator.sink.plan import typed_columns
from cdc_replicator.source import checks
from cdc_replicator.source.ranges import SnapshotReader
from cdc_replicator.store.state import StateStore

__all__ = ["TableVerdict", "Verifier", "VerifyInterrupted", "run_verify"]

logger = logging.getLogger(__name__)

# more keys than this are repaired by a live re-sync of the whole table (one message holds the keys)
MAX_REPAIR_KEYS = 100_000


class VerifyInterrupted(ReplicatorError):
    """Stopped on request (Ctrl-C / SIGTERM) before every table was compared: nothing is claimed."""

    exit_code = 130


@dataclass(frozen=True, slots=True)
class TableVerdict:
    """What verifying one table found. Keys are key values only, never other column values."""

    table: str
    rows: int  # source rows compared
    ranges: int
    missing: tuple[Key, ...]
    extra: tuple[Key, ...]
    differing: tuple[Key, ...]
    changed_since: int  # rows the stream changed after a snapshot (set apart, not compared)
    seconds: float
    differing_ranges: tuple[KeyRange, ...] = ()

    @property
    def equal(self) -> bool:
        return not (self.missing or self.extra or self.differing)

    @property
    def differences(self) -> int:
        return len(self.missing) + len(self.extra) + len(self.differing)


class Verifier:
    """Compares tables of one configuration. Not thread-safe; ``stop`` ends it between ranges."""

    def __init__(
        self,
        *,
        reader: SnapshotReader,
        sink: DeltaSink,
        settings: VerifyConfig,
        slot: str | None,
        stop: threading.Event,
        publication: str = "",
        poll_interval: float = 0.0,
        deleted_column: Mapping[TableId, str] | None = None,
        sleep: Callable[[float], object] = time.sleep,
    ) -> None:
        self._deleted = dict(deleted_column or {})  # watermark mode: a non-NULL value = deleted
        self._reader = reader
        self._sink = sink
        self._cfg = settings
        self._slot = slot  # None: watermark mode
        self._publication = publication
        self._stop = stop
        self._poll_interval = poll_interval
        self._sleep = sleep
        self._budget_start = time.monotonic()
        self._budget_rows = 0

    def table(self, schema: TableSchema) -> TableVerdict:
        """Compare every range of ``schema``'s table."""
        started = time.monotonic()
        ranges = self._reader.plan(schema, range_rows=self._cfg.range_rows)
        rows = changed = 0
        missing: list[Key] = []
        extra: list[Key] = []
        differing: list[Key] = []
        bad: list[KeyRange] = []
        for r in ranges:
            if self._stop.is_set():
                break
            diff = self._confirmed(schema, r)
            rows += diff.source_rows
            changed += len(diff.changed_since)
            if not diff.equal:
                missing += diff.missing
                extra += diff.extra
                differing += diff.differing
                bad.append(r)
        seconds = time.monotonic() - started
        verdict = TableVerdict(
            str(schema.table),
            rows,
            len(ranges),
            tuple(missing),
            tuple(extra),
            tuple(differing),
            changed,
            seconds,
            tuple(bad),
        )
        logger.info(
            "verified table=%s rows=%d ranges=%d missing=%d extra=%d differing=%d changed_since=%d seconds=%.2f",
            schema.table,
            rows,
            len(ranges),
            len(missing),
            len(extra),
            len(differing),
            changed,
            seconds,
        )
        return verdict

    def _confirmed(self, schema: TableSchema, r: KeyRange) -> RangeDiff:
        """One range: compared once, then its candidates re-checked in fresh snapshots."""
        diff = self._compare(schema, r)
        for _ in range(self._cfg.recheck_rounds):
            if diff.equal or self._stop.is_set():
                break
            if self._slot is None and self._poll_interval:
                self._sleep(self._poll_interval)  # watermark mode: let a poll reach what it had not read
            again = self._compare(schema, r)
            # what every round found, as the latest round sees it; the counts stay the first round's
            kept = again.restricted(diff.candidates)
            diff = RangeDiff(
                diff.source_rows,
                diff.lake_rows,
                kept.missing,
                kept.extra,
                kept.differing,
                tuple(dict.fromkeys(diff.changed_since + again.changed_since)),
            )
        return diff

    def _compare(self, schema: TableSchema, r: KeyRange) -> RangeDiff:
        table = schema.table
        seq_before = self._sink.watermark_seq(table) if self._slot is None else 0
        at = self._reader.begin()
        raw = self._reader.read(schema, r)
        source = pa.table(dict(zip(schema.column_names, typed_columns(schema, raw), strict=True)))
        gone = self._deleted.get(table)
        if gone and source.num_rows:  # marked deleted: absent from Delta (or soft-deleted there)
            source = source.filter(pc.is_null(source.column(gone)))
        if self._slot is not None:
            self._wait_passed(schema, at)
            bound = at.value
        else:
            bound = seq_before
        lake = self._sink.rows_in_range(schema, r)
        lake = lake.cast(_lake_schema(source.schema, lake.schema)) if lake.num_rows else lake
        self._pace(source.num_rows + lake.num_rows)
        return diff_range(source, lake, key=schema.key, columns=schema.column_names, snapshot_lsn=bound)

    def _wait_passed(self, schema: TableSchema, at: Lsn) -> None:
        """Until Delta holds every transaction the snapshot at ``at`` sees (bounded).

        Delta's own position at or beyond ``at``, or the slot's confirmed position (the daemon
        confirms only what every table has committed), or, with no daemon streaming, no row change
        of the publication left in the slot before ``at``.
        """
        assert self._slot is not None
        deadline = time.monotonic() + self._cfg.wait_seconds
        peeked = nudged = False
        nudge_at = time.monotonic() + 1.0  # a streaming daemon usually gets there by itself
        while True:
            pos = self._sink.position(schema.table)
            if pos is not None and pos.lsn >= at:
                return
            flushed, active = self._reader.slot_flushed(self._slot)
            if pos is not None and flushed is not None and flushed >= at:
                return
            if pos is not None and flushed is not None and not active and not peeked:
                try:
                    if not self._reader.changes_pending(self._slot, self._publication, at):
                        return
                    peeked = True  # the stopped daemon has changes to apply: Delta is behind
                except SlotInUse:
                    pass  # the daemon took the slot meanwhile: its confirmed position will do
            if active and not nudged and pos is not None and time.monotonic() > nudge_at:
                self._reader.nudge()  # an idle daemon confirms past the snapshot once WAL is flushed
                nudged = True
            if time.monotonic() >= deadline or self._stop.is_set():
                held = "no position" if pos is None else f"position {pos.lsn}"
                raise LakeBehind(
                    f"verify of {schema.table}: Delta ({held}; slot confirmed {flushed}) did not reach the "
                    f"source snapshot at {at} within {self._cfg.wait_seconds:g} s",
                    hint="verify compares what the daemon has applied: start the daemon (cdc-replicator "
                    "--config FILE run) and let it catch up, or raise verify.wait_seconds",
                )
            self._sleep(0.2)

    def rewrite(self, schema: TableSchema, ranges: Sequence[KeyRange]) -> int:
        """Daemon stopped (logical mode): overwrite each range with the source's rows, read in a fresh
        snapshot that Delta has passed, every row at that snapshot's LSN. Returns the rows written.

        The stopped daemon resumes from its own positions: its older changes never overwrite these
        rows (the merges are sequenced by ``_cdc_lsn``) and its newer ones apply as usual.
        """
        written = 0
        assert self._slot is not None
        for r in ranges:
            at = self._reader.begin()
            raw = self._reader.read(schema, r)
            self._wait_passed(schema, at)
            if self._reader.slot_flushed(self._slot)[1]:
                raise SourceError(
                    f"verify --repair of {schema.table}: the daemon started while verify rewrote ranges",
                    hint="run verify --repair again: with the daemon streaming it repairs through the daemon",
                )
            done = self._sink.load_chunk(
                schema,
                raw.to_batches(),
                r,
                row_lsn=at.value,
                loaded_at=datetime.now(UTC),
                metadata={"cdc.op": "verify-repair"},
            )
            self._pace(raw.num_rows)
            written += done.rows
        return written

    def _pace(self, rows: int) -> None:
        """Keep the reads at or below ``max_rows_per_second`` (0: no limit)."""
        limit = self._cfg.max_rows_per_second
        if not limit:
            return
        self._budget_rows += rows
        ahead = self._budget_rows / limit - (time.monotonic() - self._budget_start)
        if ahead > 0:
            self._sleep(ahead)


def _lake_schema(source: pa.Schema, lake: pa.Schema) -> pa.Schema:
    """Delta's read types (e.g. string_view) as the source's, its other columns as they are."""
    return pa.schema([source.field(f.name) if f.name in source.names else f for f in lake])


def run_verify(
    cfg: Config,
    tables: Sequence[TableId] | None,
    *,
    repair: bool,
    stop: threading.Event,
    report: Callable[[TableVerdict, TableSchema, str], None],
) -> list[TableVerdict]:
    """Verify ``tables`` (None: every configured table); with ``repair``, fix what differs and verify again.

    ``report`` gets each verdict as it is known (``label``: "" or " (after repair)"). Returns the
    final verdict of every table. Source errors propagate (exit 3).
    """
    src = cfg.source
    wanted = list(tables) if tables else list(cfg.table_ids)
    logical = src.mode == "logical"
    sink = DeltaSink(
        cfg.target.uri,
        slot=src.slot,
        storage_options=dict(cfg.target.storage_options),
        soft_delete=[t.name for t in cfg.tables if t.soft_delete],
        partitions=partitioning.partitions_of(cfg),
    )
    reader = SnapshotReader(src.dsn, connect_timeout=src.connect_timeout_seconds)
    try:
        schemas = reader.schemas(wanted, cfg.selections)
        verifier = Verifier(
            reader=reader,
            sink=sink,
            settings=cfg.verify,
            slot=src.slot if logical else None,
            stop=stop,
            publication=src.publication,
            poll_interval=0.0 if logical else cfg.watermark.poll_interval_seconds,
            deleted_column={t.name: t.delete_column for t in cfg.tables if t.delete_column},
        )
        out: list[TableVerdict] = []
        for tid in wanted:
            schema = schemas[tid]
            verdict = _unless_stopped(verifier.table(schema), stop)
            report(verdict, schema, "")
            if repair and not verdict.equal:
                _repair(cfg, reader, verifier, schema, verdict, stop)
                verdict = _unless_stopped(verifier.table(schema), stop)
                report(verdict, schema, " (after repair)")
            _record(cfg, verdict)
            out.append(verdict)
        return out
    finally:
        reader.close()


def _unless_stopped(verdict: TableVerdict, stop: threading.Event) -> TableVerdict:
    """A verdict of a table whose comparison ran to its end; a stop cut it short: say so instead."""
    if stop.is_set():
        raise VerifyInterrupted(
            f"verify was stopped while comparing {verdict.table}; nothing is claimed about it",
            hint="run the same command again",
        )
    return verdict


def _record(cfg: Config, verdict: TableVerdict) -> None:
    """Keep the result in the state store: the daemon exports it (it is another process)."""
    state = StateStore(cfg.state.url)
    try:
        state.record_verify(
            cfg.source.slot,
            VerifyResult(
                verdict.table,
                datetime.now(UTC),
                verdict.rows,
                verdict.ranges,
                verdict.differences,
                verdict.seconds,
            ),
        )
    finally:
        state.close()


def _repair(
    cfg: Config,
    reader: SnapshotReader,
    verifier: Verifier,
    schema: TableSchema,
    verdict: TableVerdict,
    stop: threading.Event,
) -> None:
    """Rewrite what differs, exactly once: through the running daemon's stream (a live re-sync of
    the keys found different), or, with the daemon stopped, as range chunks written here."""
    src = cfg.source
    if src.mode != "logical":
        raise ConfigError(
            "verify --repair works in logical mode only",
            hint="in watermark mode enable reconciliation ([watermark] reconcile_interval_seconds) or "
            "re-sync the table: stop the daemon, then cdc-replicator --config FILE snapshot --table "
            f"{schema.table}",
        )
    _flushed, active = reader.slot_flushed(src.slot)
    if not active:
        rows = verifier.rewrite(schema, verdict.differing_ranges)
        logger.info(
            "verify repair wrote table=%s ranges=%d rows=%d",
            schema.table,
            len(verdict.differing_ranges),
            rows,
        )
        return
    keys = [tuple(str(v) for v in k) for k in (*verdict.missing, *verdict.extra, *verdict.differing)]
    state = StateStore(cfg.state.url)
    try:
        with checks.connect(src.dsn, connect_timeout=src.connect_timeout_seconds) as conn:
            if len(keys) > MAX_REPAIR_KEYS:  # the whole table, in chunks, instead of one huge key list
                request = request_resync(conn, [schema.table])
            else:
                request = request_resync(conn, [schema.table], keys={schema.table: keys})
        logger.info("verify repair requested table=%s keys=%d request=%s", schema.table, len(keys), request)
        deadline = time.monotonic() + max(60.0, cfg.verify.wait_seconds) + len(keys) / 1000
        while not stop.is_set():
            recs = [r for r in state.resyncs(src.slot) if r.request == request]
            if recs and recs[0].state == "done":
                logger.info("verify repair done table=%s rows=%d", schema.table, recs[0].rows)
                return
            if recs and recs[0].state == "failed":
                raise SourceError(
                    f"verify --repair of {schema.table} failed: {recs[0].detail}",
                    hint="run verify --repair again; if it fails again, stop the daemon and run "
                    "verify --repair (it then rewrites the ranges itself)",
                )
            if time.monotonic() > deadline:
                raise LakeBehind(
                    f"verify --repair of {schema.table}: the daemon did not finish the re-sync of "
                    f"{len(keys)} key(s) in time",
                    hint="check the daemon's log and status; it goes on with the re-sync by itself",
                )
            stop.wait(0.3)
    finally:
        state.close()
