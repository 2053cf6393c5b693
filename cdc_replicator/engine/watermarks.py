"""Pure rules of watermark positions: when pending ranges settle, how they stay bounded, pages → patch rows.

A poll reads rows after the table's watermark in one snapshot. A transaction that was running then
may still commit rows *behind* the watermark (it took its cursor value, e.g. ``now()``, before the
poll), so the range the poll read stays pending until every such transaction has finished; polls
re-read pending ranges for rows written by those transactions.
"""

from __future__ import annotations

from datetime import datetime

import pyarrow as pa
import pyarrow.compute as pc

from cdc_replicator.model import Op, PendingRange, WatermarkPosition, XidSnapshot

__all__ = ["MAX_PENDING", "add_pending", "may_be_late", "page_rows", "settle"]

_TS_UTC = pa.timestamp("us", tz="UTC")
MAX_PENDING = 8  # pending ranges kept apart; older ones are merged (each is re-read every poll)


def settle(
    position: WatermarkPosition, snap: XidSnapshot, *, now: float, lookback: float
) -> tuple[PendingRange, ...]:
    """The pending ranges still to watch. A range is settled once every transaction that may have
    been running at its poll — every xid below its snapshot's xmax — has finished (the current
    snapshot's xmin has passed it) and ``lookback`` seconds have passed since it.

    The snapshot's xip list is not used: on a hot standby PostgreSQL reports running transactions
    only as subtransactions, so xip is empty there, and a row written in a subtransaction carries
    an xid that xip never lists. ``[xmin, xmax)`` covers both."""
    return tuple(p for p in position.pending if not (snap.xmin >= p.snapshot.xmax and now - p.at >= lookback))


def may_be_late(snap: XidSnapshot) -> bool:
    """Whether a range read in this snapshot can still receive rows: a transaction may be running."""
    return snap.xmin < snap.xmax


def add_pending(
    pending: tuple[PendingRange, ...], new: PendingRange, *, limit: int = MAX_PENDING
) -> tuple[PendingRange, ...]:
    """``pending`` plus ``new``; past ``limit`` entries the two oldest merge into one.

    Ranges are consecutive, so a merge covers both; it waits until the later xmax is passed,
    re-reads writers from the older xmin on and counts time from the older poll: it settles no
    earlier and watches no fewer rows than either part would, so merging never loses a late row. Without it, a
    transaction left open for hours would add a range per poll, each re-read every poll and all
    stored in every commit.
    """
    out = [*pending, new]
    while len(out) > limit:
        a, b = out[0], out[1]
        snap = XidSnapshot(
            min(a.snapshot.xmin, b.snapshot.xmin),
            max(a.snapshot.xmax, b.snapshot.xmax),
            tuple(sorted(set(a.snapshot.xip) | set(b.snapshot.xip))),
        )
        out[:2] = [PendingRange(a.after, b.upto, snap, min(a.at, b.at))]
    return tuple(out)


def page_rows(rows: pa.Table, delete_column: str, *, seq: int, read_at: datetime) -> pa.Table:
    """A page's rows as a TablePatch's rows: the source text columns plus ``_cdc_*``.

    Every row is an update (the merge inserts what is new); a non-NULL ``delete_column`` makes it a delete.
    """
    n = rows.num_rows
    ops = pa.repeat(pa.scalar(Op.UPDATE.value, pa.string()), n)
    if delete_column:
        ops = pc.if_else(pc.is_valid(rows.column(delete_column)), Op.DELETE.value, ops)
    rows = rows.append_column("_cdc_lsn", pa.repeat(pa.scalar(seq, pa.int64()), n))
    rows = rows.append_column("_cdc_op", ops)
    return rows.append_column("_cdc_committed_at", pa.repeat(pa.scalar(read_at, _TS_UTC), n))
