"""Turn pgoutput wire messages into model events, with the relation cache. Pure: no I/O."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

from cdc_replicator.errors import DecodeError
from cdc_replicator.model import (
    UNCHANGED,
    Begin,
    Column,
    ColumnSelection,
    Commit,
    Lsn,
    Op,
    RelationChanged,
    RowChange,
    SourceEvent,
    SourceMessage,
    TableId,
    TableSchema,
    Truncate,
    Value,
    pg_time_to_datetime,
)
from cdc_replicator.source import wire

__all__ = ["MESSAGE_PREFIX", "Decoder"]

MESSAGE_PREFIX = "cdc-replicator"  # pg_logical_emit_message prefix of the messages meant for us


class Decoder:
    """Stateful translation of one stream's messages; the state is the relation cache.

    ``keys`` gives the merge key of each configured table (its primary key from the catalog):
    pgoutput flags every column as "key" under REPLICA IDENTITY FULL, so the flags cannot be used.
    Changes of relations whose table is not in ``keys`` are dropped: they are not ours.
    """

    def __init__(
        self,
        keys: Mapping[TableId, tuple[str, ...]],
        selections: Mapping[TableId, ColumnSelection] | None = None,
    ) -> None:
        self._keys = dict(keys)
        self._selections = {t: s for t, s in (selections or {}).items() if not s.everything}
        self._keep: dict[int, tuple[int, ...]] = {}  # positions of the selected columns, per relation
        self._widths: dict[int, int] = {}  # columns of each relation's Relation message: every tuple has them
        self._relations: dict[int, TableSchema] = {}
        self._ignored: set[int] = set()
        self._seq = 0  # row changes of the open transaction so far, of every relation
        self._time_micros, self._time_value = 0, pg_time_to_datetime(0)

    def start_transaction(self) -> None:
        """A transaction begins outside ``decode`` (a streamed one replayed from its spill)."""
        self._seq = 0

    def relation(self, relation_id: int) -> TableSchema | None:
        return self._relations.get(relation_id)

    def decode(self, msg: wire.Message) -> list[SourceEvent]:
        """Events for one message (most give one event, some none)."""
        if isinstance(msg, wire.Insert):
            self._seq += 1
            schema = self._schema(msg.relation_id, msg.new)
            if schema is None:
                return []
            keep = self._keep.get(msg.relation_id)
            new = msg.new if keep is None else _pick(msg.new, keep)
            return [RowChange(schema.table, Op.INSERT, new, None, self._seq)]
        if isinstance(msg, wire.Update):
            self._seq += 1
            schema = self._schema(msg.relation_id, msg.new, msg.old)
            if schema is None:
                return []
            new, old = msg.new, msg.old
            if msg.old_kind == "O" and old is not None and UNCHANGED in new:
                new = _fill_unchanged(new, old)
            keep = self._keep.get(msg.relation_id)
            if keep is not None:
                new = _pick(new, keep)
                old = None if old is None else _pick(old, keep)
            return [RowChange(schema.table, Op.UPDATE, new, old, self._seq)]
        if isinstance(msg, wire.Delete):
            self._seq += 1
            schema = self._schema(msg.relation_id, msg.old)
            if schema is None:
                return []
            keep = self._keep.get(msg.relation_id)
            old = msg.old if keep is None or msg.old is None else _pick(msg.old, keep)
            return [RowChange(schema.table, Op.DELETE, None, old, self._seq)]
        if isinstance(msg, wire.Begin):
            self._seq = 0
            return [Begin(msg.xid, Lsn(msg.final_lsn), self._time(msg.commit_time))]
        if isinstance(msg, wire.Commit):
            return [Commit(Lsn(msg.commit_lsn), Lsn(msg.end_lsn), self._time(msg.commit_time))]
        if isinstance(msg, wire.Relation):
            return self._relation(msg)
        if isinstance(msg, wire.Truncate):
            self._seq += 1
            tables = []
            for rid in msg.relation_ids:
                schema = self._schema(rid)
                if schema is not None:
                    tables.append(schema.table)
            return [Truncate(tuple(tables), self._seq)] if tables else []
        if isinstance(msg, wire.LogicalMessage) and msg.prefix == MESSAGE_PREFIX:
            return [SourceMessage(msg.content, msg.transactional)]
        # Origin, Type, other logical messages: nothing for the data flow.
        return []

    def _time(self, micros: int) -> datetime:
        """The commit time as a datetime; Begin and Commit carry the same one, converted once."""
        if micros != self._time_micros:
            self._time_micros, self._time_value = micros, pg_time_to_datetime(micros)
        return self._time_value

    def _schema(self, relation_id: int, *rows: tuple[Value, ...] | None) -> TableSchema | None:
        """The schema of ``relation_id`` (None: not ours), checking that ``rows`` have its columns."""
        schema = self._relations.get(relation_id)
        if schema is None and relation_id not in self._ignored:
            raise DecodeError(
                f"change for relation {relation_id} arrived before its Relation message",
                hint="this is a protocol violation; restart the daemon (it resumes from the last commit)",
            )
        width = self._widths.get(relation_id)
        for row in rows:
            if schema is not None and row is not None and len(row) != width:
                raise DecodeError(
                    f"a row of {schema.table} has {len(row)} columns, its Relation message {width}",
                    hint="this is a protocol violation; restart the daemon (it resumes from the last commit)",
                )
        return schema

    def _relation(self, msg: wire.Relation) -> list[SourceEvent]:
        table = TableId(msg.namespace or "pg_catalog", msg.name)
        key = self._keys.get(table)
        if key is None:
            self._ignored.add(msg.relation_id)
            self._relations.pop(msg.relation_id, None)
            return []
        self._ignored.discard(msg.relation_id)
        self._widths[msg.relation_id] = len(msg.columns)
        names = {c.name for c in msg.columns}
        use_flags = not key or not set(key) <= names
        selection = self._selections.get(table)
        kept = [
            (i, c)
            for i, c in enumerate(msg.columns)
            if selection is None or selection.keeps(c.name) or c.name in key
        ]
        if selection is not None and len(kept) < len(msg.columns):
            self._keep[msg.relation_id] = tuple(i for i, _c in kept)
        else:
            self._keep.pop(msg.relation_id, None)
        columns = tuple(
            Column(c.name, c.type_oid, c.type_modifier, c.is_key if use_flags else c.name in key)
            for _i, c in kept
        )
        schema = TableSchema(table, columns, msg.replica_identity)
        self._relations[msg.relation_id] = schema
        return [RelationChanged(msg.relation_id, schema, self._seq)]


def _pick(values: tuple[Value, ...], keep: tuple[int, ...]) -> tuple[Value, ...]:
    """The selected columns of a tuple (a relation published with more columns than replicated)."""
    return tuple(values[i] for i in keep if i < len(values))


def _fill_unchanged(new: tuple[Value, ...], old: tuple[Value, ...]) -> tuple[Value, ...]:
    """Under REPLICA IDENTITY FULL the old row carries the values the new one marks unchanged."""
    if len(old) != len(new):
        return new
    return tuple(o if n is UNCHANGED and o is not UNCHANGED else n for n, o in zip(new, old, strict=True))
