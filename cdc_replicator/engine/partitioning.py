"""Check ``partition_by`` at start: against the source catalog, and against the existing Delta tables.

A wrong ``partition_by`` (unknown or excluded column, a transform of a non-temporal column, a type
Delta cannot partition by) and a changed one (the Delta table is partitioned otherwise) are both a
ConfigError, raised before anything is written, with the fix in the hint.
"""

from __future__ import annotations

from collections.abc import Mapping

from cdc_replicator.config import Config
from cdc_replicator.errors import ConfigError
from cdc_replicator.model import TableId, TableSchema
from cdc_replicator.sink.delta import DeltaSink
from cdc_replicator.types import arrow_type
from cdc_replicator.types.partitions import PartitionColumn, partition_problems

__all__ = ["check_catalog", "check_lake", "partitions_of"]


def partitions_of(config: Config) -> dict[TableId, tuple[PartitionColumn, ...]]:
    """``partition_by`` of every table that has one."""
    return {t.name: t.partition_by for t in config.tables if t.partition_by}


def check_catalog(config: Config, schemas: Mapping[TableId, TableSchema]) -> None:
    """Every ``partition_by`` names replicated columns of a type it can partition by (one error for all)."""
    problems: list[str] = []
    for tc in config.tables:
        schema = schemas.get(tc.name)
        if not tc.partition_by or schema is None:
            continue
        excluded = set(tc.exclude_columns)
        if tc.columns:
            excluded |= {p.source for p in tc.partition_by if p.source not in tc.columns}
        types = [arrow_type(c.type_oid, c.type_modifier) for c in schema.columns]
        problems += [
            f"{tc.name}: {p}" for p in partition_problems(schema, tc.partition_by, types, excluded=excluded)
        ]
    if problems:
        raise ConfigError(
            f"config: tables.partition_by: {'; '.join(problems)}",
            hint="partition by replicated columns as they are, or by year(c), month(c), day(c) of a date, "
            "timestamp or timestamptz column (README: Partitioning); keep them in columns / out of "
            "exclude_columns",
        )


def check_lake(config: Config, sink: DeltaSink) -> None:
    """An existing Delta table is partitioned as ``partition_by`` says (else: re-sync it)."""
    for t in config.table_ids:
        sink.check_partitioning(t)
