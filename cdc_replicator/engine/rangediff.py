"""Compare one key range of a table between the source and Delta: row digests, a range digest, the row diff. Pure.

Both sides come as Arrow tables typed as Delta stores them (the source side cast by the same code
as the stream's values), so equal values compare equal whatever their text form was. The range
digest is a hash over the sorted row digests: two equal ranges are passed over at that level; a
range whose digests differ is descended into, row by row (a range holds at most ``range_rows``
rows, so its rows fit in memory).

A Delta row written after the source snapshot (``_cdc_lsn`` above it) may hold a change the
snapshot cannot see: such keys are *changed since* and never counted as a difference here (the
caller re-checks the other candidates in a fresh snapshot before calling them different).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

__all__ = ["Key", "RangeDiff", "diff_range", "range_digest", "row_digests"]

Key = tuple[object, ...]

LSN_COLUMN = "_cdc_lsn"
DELETED_COLUMN = "_cdc_deleted"


@dataclass(frozen=True, slots=True)
class RangeDiff:
    """What one comparison of one key range found. Keys are tuples of key values, sorted."""

    source_rows: int
    lake_rows: int
    missing: tuple[Key, ...] = ()  # the source has them, Delta does not
    extra: tuple[Key, ...] = ()  # Delta has them, the source does not
    differing: tuple[Key, ...] = ()  # both have them, with other values
    changed_since: tuple[Key, ...] = ()  # Delta wrote them after the snapshot: not compared

    @property
    def equal(self) -> bool:
        return not (self.missing or self.extra or self.differing)

    @property
    def candidates(self) -> frozenset[Key]:
        return frozenset(self.missing) | frozenset(self.extra) | frozenset(self.differing)

    def restricted(self, keys: Iterable[Key]) -> RangeDiff:
        """Only the differences at ``keys`` (a re-check keeps what every round found)."""
        keep = frozenset(keys)
        return RangeDiff(
            self.source_rows,
            self.lake_rows,
            tuple(k for k in self.missing if k in keep),
            tuple(k for k in self.extra if k in keep),
            tuple(k for k in self.differing if k in keep),
            self.changed_since,
        )


def _keys(table: pa.Table, key: Sequence[str]) -> list[Key]:
    cols = [table.column(k).to_pylist() for k in key]
    return list(zip(*cols, strict=True)) if cols else []


def row_digests(table: pa.Table, columns: Sequence[str]) -> list[bytes]:
    """One 16-byte digest per row over ``columns`` (their Python values: NULL, NaN and -0.0 kept apart)."""
    if table.num_rows == 0:
        return []
    cols = [table.column(c).to_pylist() for c in columns]
    return [hashlib.blake2b(repr(row).encode(), digest_size=16).digest() for row in zip(*cols, strict=True)]


def range_digest(digests: Iterable[bytes]) -> bytes:
    """The digest of a set of rows: independent of their order."""
    h = hashlib.blake2b(digest_size=16)
    for d in sorted(digests):
        h.update(d)
    return h.digest()


def _sortable(k: Key) -> tuple[tuple[bool, str], ...]:
    return tuple((v is None, repr(v)) for v in k)


def diff_range(
    source: pa.Table,
    lake: pa.Table,
    *,
    key: Sequence[str],
    columns: Sequence[str],
    snapshot_lsn: int | None,
) -> RangeDiff:
    """Compare the rows of one key range.

    ``source``: the source's rows (``columns``, typed as in Delta). ``lake``: Delta's rows of the
    range with at least ``columns`` and ``_cdc_lsn`` (and ``_cdc_deleted`` for a soft-delete
    table: such rows count as absent). ``snapshot_lsn``: Delta rows whose ``_cdc_lsn`` is above
    it changed after the source was read and are set apart (None: compare every row).
    """
    newer: set[Key] = set()
    if snapshot_lsn is not None and lake.num_rows:
        late = lake.filter(pc.greater(lake.column(LSN_COLUMN), pa.scalar(snapshot_lsn, pa.int64())))
        newer = set(_keys(late, key))
    if DELETED_COLUMN in lake.column_names and lake.num_rows:
        lake = lake.filter(pc.invert(pc.fill_null(lake.column(DELETED_COLUMN), False)))
    src_digests = row_digests(source, columns)
    lake_digests = row_digests(lake, columns)
    if source.num_rows == lake.num_rows and range_digest(src_digests) == range_digest(lake_digests):
        return RangeDiff(source.num_rows, lake.num_rows)
    src = dict(zip(_keys(source, key), src_digests, strict=True))
    dst = dict(zip(_keys(lake, key), lake_digests, strict=True))
    missing = [k for k in src if k not in dst and k not in newer]
    extra = [k for k in dst if k not in src and k not in newer]
    differing = [k for k, d in src.items() if k in dst and dst[k] != d and k not in newer]
    changed = [k for k in newer if k in src or k in dst]
    return RangeDiff(
        source.num_rows,
        lake.num_rows,
        tuple(sorted(missing, key=_sortable)),
        tuple(sorted(extra, key=_sortable)),
        tuple(sorted(differing, key=_sortable)),
        tuple(sorted(changed, key=_sortable)),
    )
