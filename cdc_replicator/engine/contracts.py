"""Schema changes and data contracts: what changed between two layouts of a table, and what to do.

Pure: two ``TableSchema`` values in, a list of ``SchemaChange`` and a ``Decision`` out. The layouts
come from the catalog (at a load) and from pgoutput Relation messages (in the stream); a change is
judged by what it does to the Delta table (the Arrow types of ``types``):

- ``add_column``: evolve adds a nullable Delta column (older rows read NULL);
- ``drop_column``: evolve keeps the Delta column (older rows keep their values, later rows NULL);
- ``rename_column`` (same position and type, new name): evolve adds the new column and keeps the old;
- ``retype`` to the same Delta type (``varchar(10)`` → ``varchar(20)`` or ``text``): nothing to do;
- ``widen_type`` (``smallint``→``integer``→``bigint``, ``real``→``double``, ``numeric`` precision up
  at the same scale): evolve rewrites the Delta column to the wider type;
- ``change_type`` (anything else), ``key_change`` (other primary key columns): never followed
  automatically — the table pauses until a re-sync;
- ``replica_identity``: recorded, nothing to do.

Contracts: ``evolve`` follows every change that is not ``change_type``/``key_change``; ``freeze``
follows none (only ``replica_identity`` and same-Delta-type retypes pass).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import pyarrow as pa

from cdc_replicator.model import Column, TableId, TableSchema
from cdc_replicator.types import arrow_type

__all__ = [
    "Contract",
    "Decision",
    "SchemaChange",
    "added_columns",
    "decide",
    "diff_schemas",
    "schema_from_json",
    "schema_to_json",
]

Contract = Literal["evolve", "freeze"]
ChangeKind = Literal[
    "add_column",
    "drop_column",
    "rename_column",
    "retype",
    "widen_type",
    "change_type",
    "key_change",
    "replica_identity",
]
_HARMLESS = frozenset({"retype", "replica_identity"})  # no Delta change, under any contract
_NEVER = frozenset({"change_type", "key_change"})  # would need a re-sync


@dataclass(frozen=True, slots=True)
class SchemaChange:
    kind: ChangeKind
    column: str = ""
    old: str = ""
    new: str = ""

    def __str__(self) -> str:
        what = self.kind.replace("_", " ")
        if self.kind == "rename_column":
            return f"{what} {self.old} -> {self.new}"
        if self.old or self.new:
            return f"{what} {self.column}: {self.old or '-'} -> {self.new or '-'}".replace(" : ", ": ")
        return f"{what} {self.column}".rstrip()


@dataclass(frozen=True, slots=True)
class Decision:
    action: Literal["none", "evolve", "pause"]
    changes: tuple[SchemaChange, ...]
    reason: str = ""

    @property
    def summary(self) -> str:
        return "; ".join(str(c) for c in self.changes) or "no change"


def _type_name(c: Column) -> str:
    mod = f"({c.type_modifier})" if c.type_modifier >= 0 else ""
    return f"oid {c.type_oid}{mod}"


def _widens(old: pa.DataType, new: pa.DataType) -> bool:
    ints = [pa.int8(), pa.int16(), pa.int32(), pa.int64()]
    if old in ints and new in ints:
        return ints.index(new) > ints.index(old)
    if old == pa.float32() and new == pa.float64():
        return True
    if pa.types.is_decimal(old) and pa.types.is_decimal(new):
        return bool(new.scale == old.scale and new.precision > old.precision)
    return False


def _column_change(old: Column, new: Column) -> SchemaChange | None:
    if (old.type_oid, old.type_modifier) == (new.type_oid, new.type_modifier):
        return None
    a, b = arrow_type(old.type_oid, old.type_modifier), arrow_type(new.type_oid, new.type_modifier)
    desc = (f"{_type_name(old)} ({a})", f"{_type_name(new)} ({b})")
    if a == b:
        return SchemaChange("retype", new.name, *desc)
    if _widens(a, b):
        return SchemaChange("widen_type", new.name, *desc)
    return SchemaChange("change_type", new.name, *desc)


def diff_schemas(old: TableSchema, new: TableSchema) -> list[SchemaChange]:
    """What turned ``old`` into ``new``, column by column (a rename keeps position and type)."""
    changes: list[SchemaChange] = []
    old_by = {c.name: c for c in old.columns}
    new_by = {c.name: c for c in new.columns}
    dropped = [c for c in old.columns if c.name not in new_by]
    added = [c for c in new.columns if c.name not in old_by]
    renamed: set[str] = set()
    if len(old.columns) == len(new.columns):
        for o, n in zip(old.columns, new.columns, strict=True):
            same_type = (o.type_oid, o.type_modifier) == (n.type_oid, n.type_modifier)
            if o.name != n.name and o in dropped and n in added and same_type:
                changes.append(SchemaChange("rename_column", n.name, o.name, n.name))
                renamed |= {o.name, n.name}
    changes += [SchemaChange("drop_column", c.name) for c in dropped if c.name not in renamed]
    changes += [SchemaChange("add_column", c.name, "", _type_name(c)) for c in added if c.name not in renamed]
    for c in new.columns:
        if c.name in old_by:
            change = _column_change(old_by[c.name], c)
            if change is not None:
                changes.append(change)
    old_key = tuple(c.name for c in old.columns if c.is_key)
    new_key = tuple(c.name for c in new.columns if c.is_key)
    renames = {ch.old: ch.new for ch in changes if ch.kind == "rename_column"}
    if tuple(renames.get(k, k) for k in old_key) != new_key:
        changes.append(SchemaChange("key_change", "", ",".join(old_key), ",".join(new_key)))
    if old.replica_identity != new.replica_identity:
        changes.append(SchemaChange("replica_identity", "", old.replica_identity, new.replica_identity))
    return changes


def decide(contract: Contract, old: TableSchema, new: TableSchema) -> Decision:
    """Follow the change (``evolve``), do nothing (``none``) or hold the table back (``pause``)."""
    changes = tuple(diff_schemas(old, new))
    if not changes:
        return Decision("none", changes)
    structural = [c for c in changes if c.kind not in _HARMLESS]
    if not structural:
        return Decision("none", changes)
    never = [c for c in structural if c.kind in _NEVER]
    if never:
        return Decision(
            "pause",
            changes,
            f"{'; '.join(map(str, never))}: not followed by any contract; re-sync the table "
            "(cdc-replicator --config FILE snapshot --table " + str(new.table) + ")",
        )
    if contract == "freeze":
        return Decision(
            "pause",
            changes,
            f'contract freeze rejects: {"; ".join(map(str, structural))}; set contract = "evolve" '
            "for the table (and restart) or re-sync it",
        )
    return Decision("evolve", changes)


def schema_to_json(schema: TableSchema) -> str:
    return json.dumps(
        {
            "table": str(schema.table),
            "replica_identity": schema.replica_identity,
            "columns": [[c.name, c.type_oid, c.type_modifier, c.is_key] for c in schema.columns],
        },
        separators=(",", ":"),
    )


def schema_from_json(text: str) -> TableSchema:
    d = json.loads(text)
    return TableSchema(
        TableId.parse(d["table"]),
        tuple(Column(str(n), int(o), int(m), bool(k)) for n, o, m, k in d["columns"]),
        str(d.get("replica_identity", "d")),
    )


def added_columns(changes: Sequence[SchemaChange]) -> list[str]:
    """Columns evolve adds to Delta: added ones and the new names of renamed ones."""
    return [c.column for c in changes if c.kind in ("add_column", "rename_column")]
