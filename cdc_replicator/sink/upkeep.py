"""Decide what a maintenance pass of one Delta table does, and when a table is due. Pure: no I/O.

A pass is a fixed order of steps, each decided from the table's layout: set the retention
properties (when they differ, and only where that keeps the table's protocol), compact (or z-order) when there are too many small files, write a
checkpoint (and drop expired log entries) when enough commits came since the last one, vacuum.
``sink.maintenance`` carries the steps out.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

__all__ = [
    "DELETED_FILE_RETENTION",
    "LOG_RETENTION",
    "MaintenanceSettings",
    "Step",
    "TableLayout",
    "due",
    "plan_pass",
    "retention_differs",
    "retention_interval",
    "retention_properties",
    "small_files",
]

DELETED_FILE_RETENTION: Final = "delta.deletedFileRetentionDuration"
LOG_RETENTION: Final = "delta.logRetentionDuration"


class Step(StrEnum):
    """The steps of a pass, in the order they run (also the ``step`` label of the metrics)."""

    PROPERTIES = "properties"
    COMPACT = "compact"
    ZORDER = "zorder"
    CHECKPOINT = "checkpoint"
    VACUUM = "vacuum"


@dataclass(frozen=True, slots=True)
class MaintenanceSettings:
    """One table's maintenance settings, per-table overrides already resolved.

    ``zorder_columns``: z-order by these (the primary key) instead of a plain compaction; empty:
    compact only.
    """

    retention_hours: float
    interval_seconds: float
    target_file_size: int
    compact_min_files: int = 8
    checkpoint_min_commits: int = 10
    zorder_columns: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class TableLayout:
    """What a pass decides on: the live files' sizes, the version, the table's properties.

    ``checkpointed``: the version of the last checkpoint this process wrote (None: none known).
    ``table_features``: the table is at reader version 3 (table features, e.g. ``timestampNtz``).
    There delta-rs 1.6.6's ``alter.set_table_properties`` also lists the reader feature
    ``variantType`` (and ``appendOnly``, ``invariants``) — whatever the property — and readers
    without it (Delta < 4.0) refuse the table, so a pass never sets properties on such a table.
    """

    file_sizes: tuple[int, ...]
    version: int
    properties: tuple[tuple[str, str], ...]
    checkpointed: int | None = None
    table_features: bool = False


def retention_interval(hours: float) -> str:
    """A Delta interval of ``hours``: whole hours as hours, else whole seconds (at least one).

    delta-rs reads the number of an interval as an integer, so 0.5 hours is written as 1800 seconds.
    """
    if hours > 0 and float(hours).is_integer():
        return f"interval {int(hours)} hours"
    return f"interval {max(1, math.ceil(hours * 3600))} seconds"


def retention_properties(hours: float) -> tuple[tuple[str, str], ...]:
    """The table properties that make other writers keep removed files and log entries as long."""
    interval = retention_interval(hours)
    return ((DELETED_FILE_RETENTION, interval), (LOG_RETENTION, interval))


def small_files(file_sizes: Sequence[int], target_file_size: int) -> int:
    """Files below half the target size: what a compaction would bin-pack."""
    return sum(1 for size in file_sizes if size < target_file_size // 2)


def retention_differs(layout: TableLayout, settings: MaintenanceSettings) -> bool:
    """The table's retention properties are not the configured ones."""
    have = dict(layout.properties)
    return any(have.get(k) != v for k, v in retention_properties(settings.retention_hours))


def plan_pass(layout: TableLayout, settings: MaintenanceSettings) -> tuple[Step, ...]:
    """The steps of one pass over a table with ``layout``, in order; vacuum always runs."""
    steps: list[Step] = []
    if retention_differs(layout, settings) and not layout.table_features:
        steps.append(Step.PROPERTIES)
    if small_files(layout.file_sizes, settings.target_file_size) > settings.compact_min_files:
        steps.append(Step.ZORDER if settings.zorder_columns else Step.COMPACT)
    if layout.checkpointed is None:
        checkpoint = layout.version > 0  # once per process: the first pass does not know the last one
    else:
        checkpoint = layout.version - layout.checkpointed >= settings.checkpoint_min_commits
    if checkpoint:
        steps.append(Step.CHECKPOINT)
    steps.append(Step.VACUUM)
    return tuple(steps)


def due(last_pass: float | None, interval_seconds: float, now: float) -> bool:
    """A table is due when it never had a pass in this process, or its interval has passed."""
    return last_pass is None or now - last_pass >= interval_seconds
