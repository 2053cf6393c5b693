"""The change data feed of a Delta table: the table property at creation, and switching it on later.

With ``delta.enableChangeDataFeed = true`` delta-rs writes, in the same commit as the data, the
rows each merge, overwrite or delete changed (``_change_data/`` files, or the added files of an
append), which ``DeltaTable.load_cdf`` and Spark's ``readChangeFeed`` read back.

Protocol (delta-rs 1.6.6, measured): a new table goes from writer version 2 to 4, or, at (3, 7)
(a ``timestampNtz`` column), gets the ``changeDataFeed`` writer feature. Switching it on for an
existing (3, 7) table with ``alter.set_table_properties`` also lists ``appendOnly``,
``invariants`` and ``variantType`` (a reader feature) — delta-rs does that for any property set on
a table-features table; readers that do not know ``variantType`` (Delta < 4.0) refuse the table.
"""

from __future__ import annotations

import logging
from typing import Final

from deltalake import CommitProperties, DeltaTable

from cdc_replicator.model import TableId

__all__ = ["FEED_PROPERTY", "enable_feed", "feed_enabled", "feed_properties", "note_feed_left_on"]

logger = logging.getLogger(__name__)

FEED_PROPERTY: Final = "delta.enableChangeDataFeed"


def feed_properties(enabled: bool) -> dict[str, str]:
    """The table properties a new table gets for the feed (none when it is off)."""
    return {FEED_PROPERTY: "true"} if enabled else {}


def feed_enabled(dt: DeltaTable) -> bool:
    """Whether delta-rs writes the change data feed of this table."""
    return dt.metadata().configuration.get(FEED_PROPERTY, "false").strip().lower() == "true"


def enable_feed(dt: DeltaTable, table: TableId) -> int:
    """Switch the feed on for an existing table (one metadata commit); returns the version it starts at.

    The feed holds changes from that version on: ``load_cdf`` from an earlier version fails with
    "does not have change data enabled".
    """
    dt.alter.set_table_properties(
        feed_properties(True),
        commit_properties=CommitProperties(custom_metadata={"cdc.op": "enable-change-data-feed"}),
    )
    dt.update_incremental()
    version = dt.version()
    protocol = dt.protocol()
    logger.info(
        "change data feed enabled table=%s starts_at_version=%d reader=%d writer=%d",
        table,
        version,
        protocol.min_reader_version,
        protocol.min_writer_version,
    )
    return version


def note_feed_left_on(table: TableId) -> None:
    """The config says no feed, the table has one: it stays on (turning it off is the owner's call)."""
    logger.warning(
        "change data feed stays on: the table has delta.enableChangeDataFeed = true and the config's "
        "change_data_feed is false; the daemon never switches a feed off, as jobs reading it would miss "
        "changes without an error (to stop it, set the table property to false with a Delta writer, "
        "e.g. DeltaTable(uri).alter.set_table_properties({'delta.enableChangeDataFeed': 'false'}), "
        "with the daemon stopped) table=%s",
        table,
    )
