"""Delta I/O of one maintenance pass over one table: properties, compaction, checkpoint, vacuum.

``sink.upkeep`` decides the steps; this module runs them with delta-rs and measures the table
before and after. A pass never touches a table's positions: its commits carry no app transaction
(the txn versions are checked unchanged after every step), and the newest watermark of a polled
table is copied into each maintenance commit's metadata, so that it stays in the recent history
when the log entries that first carried it expire.

The caller keeps one writer per table: in the daemon a pass holds the table's lock, which the
stream's commits also take (``DeltaSink.maintain``).
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

import pyarrow as pa
import pyarrow.compute as pc
from deltalake import CommitProperties, DeltaTable
from deltalake.exceptions import DeltaError

from cdc_replicator.errors import MaintenanceFailed
from cdc_replicator.model import TableId
from cdc_replicator.sink.offsets import WATERMARK_KEY, read_watermark
from cdc_replicator.sink.storage import storage_error
from cdc_replicator.sink.upkeep import (
    MaintenanceSettings,
    Step,
    TableLayout,
    plan_pass,
    retention_differs,
    retention_properties,
)

__all__ = ["LakeHealth", "MaintenanceResult", "lake_health", "maintain_table"]

logger = logging.getLogger(__name__)

_OP: Final = "cdc.op"
_HISTORY: Final = 200  # commits searched for the last maintenance commit
_HINTS: Final = {
    Step.PROPERTIES: "check that the lake is writable; the daemon retries next interval",
    Step.COMPACT: "a concurrent writer (another process) may have won the commit; retried next interval",
    Step.ZORDER: "a concurrent writer may have won the commit, or memory ran short "
    "(set [maintenance] zorder = false); retried next interval",
    Step.CHECKPOINT: "check that the lake is writable; retried next interval",
    Step.VACUUM: "check that the lake is writable and that nothing else deletes its files; "
    "retried next interval",
}


@dataclass(frozen=True, slots=True)
class MaintenanceResult:
    """One pass: what ran, the live files and bytes before and after, what the vacuum deleted.

    ``unvacuumed_bytes``: bytes still on storage that the current version no longer references
    (removed files within the retention); None where storage is not a local path (not listed).
    """

    table: TableId
    steps: tuple[Step, ...]
    version: int
    files_before: int
    bytes_before: int
    files_after: int
    bytes_after: int
    vacuumed_files: int
    unvacuumed_bytes: int | None
    seconds: float

    def summary(self) -> str:
        """One line for the log and ``cdc-replicator maintain``."""
        ran = ",".join(s.value for s in self.steps) or "none"
        left = "unknown" if self.unvacuumed_bytes is None else str(self.unvacuumed_bytes)
        return (
            f"{self.table}: files {self.files_before} -> {self.files_after}, "
            f"bytes {self.bytes_before} -> {self.bytes_after}, vacuumed {self.vacuumed_files} files, "
            f"unvacuumed bytes {left}, version {self.version}, steps {ran}, {self.seconds:.2f}s"
        )


@dataclass(frozen=True, slots=True)
class LakeHealth:
    """A table's size now (for ``status``): live files and bytes, unvacuumed bytes, last maintenance.

    ``last_maintenance``: when the newest maintenance commit within the recent history was made
    (None: none there; a pass that found nothing to do commits nothing).
    """

    files: int
    bytes: int
    unvacuumed_bytes: int | None
    last_maintenance: datetime | None


def lake_health(dt: DeltaTable, root: str) -> LakeHealth:
    """Measure ``dt``: the log's live files, one storage listing for the unvacuumed bytes."""
    files, size = _live(dt)
    when = None
    for entry in dt.history(_HISTORY):
        op = entry.get(_OP)
        ts = entry.get("timestamp")
        if isinstance(op, str) and op.startswith("maintenance") and isinstance(ts, int | float):
            when = datetime.fromtimestamp(ts / 1000, UTC)
            break
    return LakeHealth(files, size, unvacuumed_bytes(dt, root), when)


def _live(dt: DeltaTable) -> tuple[int, int]:
    actions = pa.table(dt.get_add_actions(flatten=True))
    if actions.num_rows == 0:
        return 0, 0
    return actions.num_rows, int(pc.sum(actions.column("size_bytes")).as_py() or 0)


def _file_sizes(dt: DeltaTable) -> tuple[int, ...]:
    actions = pa.table(dt.get_add_actions(flatten=True))
    return tuple(int(s) for s in actions.column("size_bytes").to_pylist()) if actions.num_rows else ()


def unvacuumed_bytes(dt: DeltaTable, root: str) -> int | None:
    """Bytes of the files on storage the current version does not reference (one storage listing).

    Only for a local table (``root`` a path): an object store would need a HEAD per file.
    """
    if "://" in root and not root.startswith("file://"):
        return None
    base = root.removeprefix("file://")
    stale = dt.vacuum(retention_hours=0, dry_run=True, enforce_retention_duration=False, full=True)
    total = 0
    for rel in stale:
        try:
            total += os.stat(os.path.join(base, rel)).st_size
        except FileNotFoundError:  # deleted meanwhile
            continue
    return total


_KEPT_PROPERTIES: set[str] = set()  # tables whose properties a pass leaves alone, said once each


def _vacuum_hours(dt: DeltaTable, settings: MaintenanceSettings) -> int | None:
    """The retention a vacuum applies: the table's property where the pass set it (None), else the
    configured hours rounded up (delta-rs takes whole hours; never earlier than asked).

    A table at reader version 3 keeps its own properties (``TableLayout.table_features``).
    """
    have = dict(dt.metadata().configuration)
    if all(have.get(k) == v for k, v in retention_properties(settings.retention_hours)):
        return None
    return math.ceil(settings.retention_hours)


def _txns(dt: DeltaTable, apps: tuple[str, ...]) -> tuple[int | None, ...]:
    return tuple(dt.transaction_version(a) for a in apps)


def maintain_table(
    dt: DeltaTable,
    table: TableId,
    settings: MaintenanceSettings,
    *,
    apps: tuple[str, ...],
    root: str,
    checkpointed: int | None = None,
) -> MaintenanceResult:
    """Run one pass over ``dt`` (a fresh handle the caller owns); raise ``MaintenanceFailed`` naming the step.

    ``apps``: the app ids whose txn versions the pass must leave as they are; ``root``: the
    table's URI (to measure unvacuumed bytes); ``checkpointed``: the version of the last checkpoint
    this process wrote.
    """
    started = time.monotonic()
    try:
        files_before, bytes_before = _live(dt)
        layout = TableLayout(
            _file_sizes(dt),
            dt.version(),
            tuple(sorted(dt.metadata().configuration.items())),
            checkpointed,
            table_features=dt.protocol().min_reader_version >= 3,
        )
        held = _txns(dt, apps)
        wm = read_watermark(dt, apps[0]) if apps else None
    except (DeltaError, OSError) as exc:
        context = f"maintenance of {table} failed reading its log"
        raise storage_error(exc, context=context, path=root) or MaintenanceFailed(
            f"{context}: {exc}",
            step="read",
            hint="check the table with cdc-replicator verify; retried next interval",
        ) from exc
    if layout.table_features and retention_differs(layout, settings) and root not in _KEPT_PROPERTIES:
        _KEPT_PROPERTIES.add(root)
        logger.warning(
            "retention properties not set: %s is at Delta reader version 3 (table features), where "
            "delta-rs would also add the reader feature variantType, which Delta readers before 4.0 "
            "refuse; vacuum applies retention_hours=%s itself, expired log entries follow the table's "
            "own delta.logRetentionDuration (set it, and delta.deletedFileRetentionDuration, with a "
            "Delta engine that keeps the protocol, e.g. Spark's ALTER TABLE ... SET TBLPROPERTIES)",
            table,
            settings.retention_hours,
        )
    steps = plan_pass(layout, settings)
    meta = {_OP: "maintenance"}
    if wm is not None:  # keep the newest watermark in the recent history (see the module doc)
        meta[WATERMARK_KEY] = wm.to_json()
    vacuumed = 0
    for step in steps:
        try:
            vacuumed += _run(dt, step, settings, meta)
            dt.update_incremental()
        except (DeltaError, OSError) as exc:
            context = f"maintenance of {table} failed at step {step.value}"
            raise storage_error(exc, context=context, path=root) or MaintenanceFailed(
                f"{context}: {exc}", step=step.value, hint=_HINTS[step]
            ) from exc
        now = _txns(dt, apps)
        if now != held:  # never expected: delta-rs keeps txns through optimize, checkpoints, vacuum
            raise MaintenanceFailed(
                f"maintenance step {step.value} of {table} changed its positions ({held} -> {now})",
                step=step.value,
                hint="stop the daemon and report it; then check the table with cdc-replicator verify",
                retryable=False,
            )
    files_after, bytes_after = _live(dt)
    try:
        left = unvacuumed_bytes(dt, root)
    except (DeltaError, OSError) as exc:
        logger.warning("could not measure the unvacuumed bytes of %s: %s", table, exc)
        left = None
    return MaintenanceResult(
        table,
        steps,
        dt.version(),
        files_before,
        bytes_before,
        files_after,
        bytes_after,
        vacuumed,
        left,
        time.monotonic() - started,
    )


def _run(dt: DeltaTable, step: Step, settings: MaintenanceSettings, meta: dict[str, str]) -> int:
    """Run one step; the number of files it deleted from storage (vacuum), else 0."""
    props = CommitProperties(custom_metadata={**meta, _OP: f"maintenance-{step.value}"})
    if step is Step.PROPERTIES:
        dt.alter.set_table_properties(
            dict(retention_properties(settings.retention_hours)), commit_properties=props
        )
    elif step is Step.COMPACT:
        dt.optimize.compact(target_size=settings.target_file_size, commit_properties=props)
    elif step is Step.ZORDER:
        dt.optimize.z_order(
            list(settings.zorder_columns), target_size=settings.target_file_size, commit_properties=props
        )
    elif step is Step.CHECKPOINT:
        dt.create_checkpoint()
        dt.cleanup_metadata()  # log entries older than delta.logRetentionDuration, before the checkpoint
    elif step is Step.VACUUM:
        # full: a listing of the table's files, not only the tombstones in the log: a checkpoint
        # drops the tombstones older than the retention, and cleanup_metadata the JSON commits
        # holding them, so a log-only vacuum never deletes the files they removed (seen in the
        # soak test: 52 such files). The retention (delta.deletedFileRetentionDuration, ours since
        # the properties step) applies to each file's modification time.
        removed = dt.vacuum(
            retention_hours=_vacuum_hours(dt, settings),
            dry_run=False,
            enforce_retention_duration=False,
            full=True,
            commit_properties=props,
        )
        return len(removed)
    return 0
