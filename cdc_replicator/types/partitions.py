"""Partition columns of a Delta table: ``partition_by`` parsed, checked against a schema, derived. Pure.

A partition column is a source column as it is (``region``) or a calendar transform of a date or
timestamp column — ``year(c)``, ``month(c)``, ``day(c)`` — which adds a derived column named
``<c>_<transform>``: ``c_year`` (int32), ``c_month`` (text ``YYYY-MM``), ``c_day`` (date). Days
and months of a ``timestamptz`` are those of UTC (the type map stores it in UTC); those of a
``timestamp`` are of its wall-clock value. A NULL source value gives a NULL partition value
(Delta's ``__HIVE_DEFAULT_PARTITION__`` directory). Derived values are computed with
``pyarrow.compute`` over whole arrays, never per row.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Final

import pyarrow as pa
import pyarrow.compute as pc

from cdc_replicator.model import TableSchema

__all__ = [
    "PartitionColumn",
    "Transform",
    "derive",
    "derived_fields",
    "partition_problems",
    "parse_partition",
]


class Transform(enum.StrEnum):
    """A calendar transform of a date/timestamp column; the value is the derived column's suffix."""

    YEAR = "year"
    MONTH = "month"
    DAY = "day"


_DERIVED_TYPE: Final = {
    Transform.YEAR: pa.int32(),
    Transform.MONTH: pa.string(),
    Transform.DAY: pa.date32(),
}
_TEMPORAL_OIDS: Final = frozenset({1082, 1114, 1184})  # date, timestamp, timestamptz
_CALL: Final = re.compile(r"\s*([a-z]+)\s*\(\s*(.+?)\s*\)\s*")


@dataclass(frozen=True, slots=True)
class PartitionColumn:
    """One entry of ``partition_by``: ``source`` as it is (``transform`` None) or transformed."""

    source: str
    transform: Transform | None = None

    @property
    def name(self) -> str:
        """The Delta column the table is partitioned by."""
        return self.source if self.transform is None else f"{self.source}_{self.transform.value}"

    def __str__(self) -> str:
        return self.source if self.transform is None else f"{self.transform.value}({self.source})"


def parse_partition(text: str) -> PartitionColumn:
    """``"region"`` or ``"day(created_at)"`` → a PartitionColumn; ValueError names what is wrong."""
    m = _CALL.fullmatch(text)
    if m is None:
        if "(" in text or ")" in text or not text.strip():
            raise ValueError(f"{text!r} is neither a column name nor year(c), month(c), day(c)")
        return PartitionColumn(text.strip())
    fn, arg = m.group(1), m.group(2)
    try:
        transform = Transform(fn)
    except ValueError:
        raise ValueError(f"{text!r}: unknown transform {fn}(); use year(c), month(c) or day(c)") from None
    if any(ch in arg for ch in "(),"):
        raise ValueError(f"{text!r}: a transform takes one column name, as in year(c), month(c), day(c)")
    return PartitionColumn(arg, transform)


def derived_fields(columns: Sequence[PartitionColumn]) -> list[pa.Field]:
    """The columns that transforms add to the table, in ``partition_by`` order."""
    return [
        pa.field(p.name, _DERIVED_TYPE[p.transform], nullable=True)
        for p in columns
        if p.transform is not None
    ]


def derive(column: PartitionColumn, values: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
    """The derived partition values of ``column`` from its source column's typed values (Arrow)."""
    if column.transform is None:
        return values
    if column.transform is Transform.DAY:
        return values if values.type == pa.date32() else pc.cast(values, pa.date32())
    if column.transform is Transform.YEAR:
        return pc.cast(pc.year(values), pa.int32())
    if pa.types.is_date(values.type):  # strftime formats timestamps; a date is its midnight
        values = pc.cast(values, pa.timestamp("s"))
    return pc.strftime(values, format="%Y-%m")


def _partitionable(t: pa.DataType) -> bool:
    """Delta keeps a partition value as a string in the log: nested types have none, and delta-rs
    1.6.6 reads a binary one back changed (``b'a'`` as ``b'\\u0061'``, measured)."""
    return not (pa.types.is_nested(t) or pa.types.is_binary(t) or pa.types.is_large_binary(t))


def partition_problems(
    schema: TableSchema,
    columns: Sequence[PartitionColumn],
    arrow_types: Sequence[pa.DataType],
    *,
    excluded: Collection[str] = (),
) -> list[str]:
    """What makes ``columns`` unusable for ``schema`` (its replicated columns); empty: nothing.

    ``arrow_types``: the Delta type of each of ``schema``'s columns; ``excluded``: the columns the
    table's column selection leaves out (to tell an excluded column from an unknown one).
    """
    by_name = {c.name: (c, t) for c, t in zip(schema.columns, arrow_types, strict=True)}
    problems: list[str] = []
    seen: set[str] = set()
    for p in columns:
        if p.name in seen:
            problems.append(f"{p} is listed twice")
        seen.add(p.name)
        found = by_name.get(p.source)
        if found is None:
            if p.source in excluded:
                problems.append(f"{p}: column {p.source} is not replicated (columns / exclude_columns)")
            else:
                problems.append(f"{p}: {schema.table} has no column {p.source}")
            continue
        col, typ = found
        if p.transform is None:
            if not _partitionable(typ):
                problems.append(f"{p}: Delta cannot partition by a column of type {typ}")
        elif col.type_oid not in _TEMPORAL_OIDS:
            problems.append(f"{p}: {p.transform.value}() needs a date, timestamp or timestamptz column")
        elif p.name in by_name or p.name in excluded:
            problems.append(f"{p}: {schema.table} already has a column {p.name}")
    return problems
