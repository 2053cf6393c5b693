"""What each Delta table is configured to be: properties at creation, partitioning, and the properties
an existing table follows — only where delta-rs can set them without raising the table's protocol.

delta-rs 1.6.6 sets table properties (``configuration``) only when it creates a table; an existing
table changes them with ``alter.set_table_properties``, which on a table at reader version 3 (table
features, e.g. ``timestampNtz``) also lists ``appendOnly``, ``invariants`` and the reader feature
``variantType`` — whatever the property — and Delta readers before 4.0 refuse such a table. So the
target file size follows the config only on tables below reader version 3; the change data feed is
switched on when asked (README "Delta protocol and readers" says what it costs there).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence

from deltalake import CommitProperties, DeltaTable

from cdc_replicator.errors import ConfigError
from cdc_replicator.model import TableId
from cdc_replicator.sink.feed import enable_feed, feed_enabled, feed_properties, note_feed_left_on
from cdc_replicator.sink.upkeep import retention_properties
from cdc_replicator.types.partitions import PartitionColumn

__all__ = ["TableProperties"]

logger = logging.getLogger(__name__)

_FILE_SIZE = "delta.targetFileSize"


class TableProperties:
    """The configured layout of every table of one sink, and what was already said or set per process.

    ``file_size``: ``[target] target_file_size`` (None: delta-rs'); ``file_sizes``: per-table
    overrides; ``retention_hours``: maintenance's retention per table (set at creation);
    ``change_data_feed``: the tables whose feed is on (None: leave the property alone — ``status``,
    ``verify``); ``partitions``: ``partition_by`` per table.
    """

    def __init__(
        self,
        *,
        file_size: int | None = None,
        file_sizes: Mapping[TableId, int] | None = None,
        retention_hours: Mapping[TableId, float] | None = None,
        change_data_feed: Iterable[TableId] | None = None,
        partitions: Mapping[TableId, Sequence[PartitionColumn]] | None = None,
    ) -> None:
        self._file_size = file_size
        self._file_sizes = {t: n for t, n in (file_sizes or {}).items() if n}
        self._retention = dict(retention_hours or {})
        self._feed = None if change_data_feed is None else frozenset(change_data_feed)
        self._parts = {t: tuple(p) for t, p in (partitions or {}).items() if p}
        self._sized: set[TableId] = set()  # tables whose delta.targetFileSize was checked
        self._feed_left_on: set[TableId] = set()  # said once per table

    # ---- what a table is to be ------------------------------------------------------------

    def target_size(self, table: TableId) -> int | None:
        """The table's data file size: its ``[[tables]]`` override, else ``[target]``'s (None: delta-rs')."""
        return self._file_sizes.get(table, self._file_size)

    def partitions(self, table: TableId) -> tuple[PartitionColumn, ...]:
        """``partition_by`` of ``table`` (README "Partitioning"); () when it is not partitioned."""
        return self._parts.get(table, ())

    def partition_columns(self, table: TableId) -> list[str]:
        """The Delta columns ``table`` is to be partitioned by ([] none)."""
        return [p.name for p in self.partitions(table)]

    def at_creation(self, table: TableId) -> dict[str, str | None] | None:
        """Table properties of a new table: file size, retention (other writers agree), the feed."""
        conf: dict[str, str | None] = {}
        if size := self.target_size(table):
            conf[_FILE_SIZE] = str(size)
        if (hours := self._retention.get(table)) is not None:
            conf.update(retention_properties(hours))
        conf.update(feed_properties(self._feed is not None and table in self._feed))
        return conf or None

    # ---- an existing table ----------------------------------------------------------------

    def check_partitioning(self, table: TableId, dt: DeltaTable, uri: str) -> None:
        """Refuse to write an existing table whose partition columns are not ``partition_by``'s.

        Delta cannot re-partition files in place: the table is written anew by a re-sync.
        """
        have = list(dt.metadata().partition_columns)
        want = self.partition_columns(table)
        if have != want:
            raise ConfigError(
                f"config: {table}: partition_by asks for partition columns [{', '.join(want)}] but its "
                f"Delta table at {uri} is partitioned by [{', '.join(have)}]",
                hint=f"re-sync the table to re-create it with the new partitioning: cdc-replicator "
                f"--config FILE snapshot --table {table} (or restore the old partition_by)",
            )

    def follow_feed(self, table: TableId, dt: DeltaTable) -> None:
        """Switch the change data feed on where the config asks and the table lacks it.

        Raises delta-rs' error; the caller says what failed. A feed the config does not ask for
        stays on (said once): turning it off is its owner's call.
        """
        if self._feed is None:
            return
        wanted, has = table in self._feed, feed_enabled(dt)
        if wanted and not has:
            enable_feed(dt, table)
        elif has and not wanted and table not in self._feed_left_on:
            self._feed_left_on.add(table)
            note_feed_left_on(table)

    def follow_file_size(self, table: TableId, dt: DeltaTable) -> None:
        """Once per process, set the table's ``delta.targetFileSize`` to the configured size if it
        differs: a merge takes its output file size from the table, not from a parameter.

        Raises delta-rs' error; the caller says what failed.
        """
        if table in self._sized:
            return
        want = self.target_size(table)
        if want and dt.metadata().configuration.get(_FILE_SIZE) != str(want):
            if dt.protocol().min_reader_version >= 3:
                logger.warning(
                    "target file size not changed: %s is at Delta reader version 3 (table features), "
                    "where changing a property would make it unreadable to Delta readers before 4.0; "
                    "loads and re-syncs write files of the new size, merges keep the table's; set "
                    "delta.targetFileSize with a Delta engine that keeps the protocol (e.g. Spark's "
                    "ALTER TABLE ... SET TBLPROPERTIES) table=%s bytes=%d",
                    table,
                    table,
                    want,
                )
                self._sized.add(table)
                return
            dt.alter.set_table_properties(
                {_FILE_SIZE: str(want)},
                commit_properties=CommitProperties(custom_metadata={"cdc.op": "file-size"}),
            )
            dt.update_incremental()
            logger.info("target file size set table=%s bytes=%d", table, want)
        self._sized.add(table)
