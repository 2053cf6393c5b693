"""Read key ranges of a table in one REPEATABLE READ snapshot, with the WAL position that snapshot sees.

``verify`` compares what it reads here with Delta once Delta's position has passed that WAL
position. Rows travel in the stream's text form (``snapshot.output_text``) as Arrow ``binary``
columns, so ``sink.plan.typed_columns`` casts them exactly as the stream's values are cast; a
range is bounded (``KeyRange``, bytewise order for text keys, the loader's ``range_condition``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

import psycopg
import pyarrow as pa
from psycopg import sql

from cdc_replicator.model import ColumnSelection, KeyRange, Lsn, TableId, TableSchema
from cdc_replicator.source import checks, pgerrors
from cdc_replicator.source.decoding import MESSAGE_PREFIX
from cdc_replicator.source.replication import quote_ident
from cdc_replicator.source.snapshot import key_type_names, output_text, plan_ranges, range_condition
from cdc_replicator.source.wire import MessageTag

__all__ = ["SnapshotReader"]


class SnapshotReader:
    """One connection; ``begin`` opens a fresh read-only REPEATABLE READ snapshot, ``read`` reads in it.

    Not thread-safe. Every database error is raised as the ``SourceError`` its SQLSTATE says.
    """

    def __init__(self, dsn: str, *, connect_timeout: float) -> None:
        self._conn: psycopg.Connection[tuple[object, ...]] = checks.connect(
            dsn, connect_timeout=connect_timeout, autocommit=False
        )
        self._key_types: dict[str, dict[str, str]] = {}
        self._dsn = dsn
        self._connect_timeout = connect_timeout
        self._side: psycopg.Connection[tuple[object, ...]] | None = None  # autocommit: slot peeks

    def close(self) -> None:
        self._conn.close()
        if self._side is not None:
            self._side.close()

    def nudge(self) -> None:
        """Write one tiny committed (so flushed) logical message the running daemon reads and skips.

        WAL the server inserted but has not flushed yet (a trailing record no commit followed) is
        not sent to the walsender, so an idle daemon would never confirm past a snapshot's insert
        position; a commit after it makes the server flush it and the daemon confirm beyond it.
        """
        side = self._side_connection()
        with pgerrors.translated("writing a logical message on the source failed"):
            side.execute(
                "select pg_logical_emit_message(true, %s, %s)", (MESSAGE_PREFIX, json.dumps({"op": "verify"}))
            )

    def _side_connection(self) -> psycopg.Connection[tuple[object, ...]]:
        if self._side is None or self._side.closed:
            self._side = checks.connect(self._dsn, connect_timeout=self._connect_timeout)
        return self._side

    def changes_pending(self, slot: str, publication: str, upto: Lsn) -> bool:
        """Whether the (inactive) slot holds row changes of the publication committed before ``upto``.

        Peeks, never consumes: with the daemon stopped, none pending means Delta holds everything
        the snapshot at ``upto`` sees. Raises a ``SourceError`` (55006) if a process streams from it.
        """
        side = self._side_connection()
        rows = (MessageTag.INSERT, MessageTag.UPDATE, MessageTag.DELETE, MessageTag.TRUNCATE)
        with pgerrors.translated(f"peeking replication slot {slot} failed"):
            row = side.execute(
                "select exists (select 1 from pg_logical_slot_peek_binary_changes(%s, %s::pg_lsn, null, "
                "'proto_version', '1', 'publication_names', %s) where get_byte(data, 0) = any(%s))",
                (slot, str(upto), quote_ident(publication), [int(t) for t in rows]),
            ).fetchone()
        return bool(row and row[0])

    def schemas(
        self, tables: Sequence[TableId], selections: Mapping[TableId, ColumnSelection]
    ) -> dict[TableId, TableSchema]:
        """Each table's replicated columns and key, from the catalog (no preflight: nothing is written)."""
        self._end()
        out = {}
        with pgerrors.translated("reading the tables' layout failed"):
            for t in tables:
                schema = checks.read_schema(self._conn, t)
                sel = selections.get(t)
                out[t] = sel.apply(schema) if sel is not None else schema
            self._conn.rollback()
        return out

    def plan(self, schema: TableSchema, *, range_rows: int) -> list[KeyRange]:
        """Key ranges of about ``range_rows`` rows (one whole range when the key cannot be ranged)."""
        self._end()
        with pgerrors.translated(f"planning the ranges of {schema.table} failed"):
            ranges = plan_ranges(self._conn, schema, target_rows=range_rows)
            self._conn.rollback()
        return [KeyRange()] if any(r.pages is not None for r in ranges) else ranges

    def begin(self) -> Lsn:
        """A new snapshot; returns the WAL position every transaction it sees ends at or before.

        The insert position, not the write position: a commit is visible only after its record
        is inserted (with ``synchronous_commit = off`` it may not be written yet). On a standby:
        the replayed position.
        """
        self._end()
        with pgerrors.translated("opening a snapshot of the source failed"):
            self._conn.execute("set transaction isolation level repeatable read, read only")
            row = self._conn.execute(
                "select case when pg_is_in_recovery() then pg_last_wal_replay_lsn() "
                "else pg_current_wal_insert_lsn() end::text"
            ).fetchone()
        assert row is not None
        return Lsn.parse(str(row[0]))

    def slot_flushed(self, slot: str) -> tuple[Lsn | None, bool]:
        """(the slot's confirmed flush LSN, whether a process streams from it). Shared memory: any snapshot."""
        with pgerrors.translated(f"reading replication slot {slot} failed"):
            info = checks.slot_info(self._conn, slot)
        if info is None:
            return None, False
        return info.confirmed_flush, info.active_pid is not None

    def read(self, schema: TableSchema, key_range: KeyRange) -> pa.Table:
        """The rows of ``key_range`` in the open snapshot: each column as text (``binary``), by name."""
        names = list(schema.column_names)
        types = self._key_types.get(str(schema.table))
        with pgerrors.translated(f"reading a key range of {schema.table} failed"):
            if types is None:
                types = key_type_names(self._conn, schema)
                self._key_types[str(schema.table)] = types
            cols = sql.SQL(", ").join(
                sql.SQL("{} as {}").format(output_text(c.name, c.type_oid), sql.Identifier(f"__c{i}"))
                for i, c in enumerate(schema.columns)
            )
            query = sql.SQL("select {} from {} where {}").format(
                cols,
                sql.Identifier(schema.table.schema, schema.table.name),
                range_condition(schema, types, key_range),
            )
            rows = self._conn.execute(query).fetchall()
        columns = list(zip(*rows, strict=True)) if rows else [() for _ in names]
        return pa.table(
            {
                n: pa.array([None if v is None else str(v).encode() for v in col], pa.binary())
                for n, col in zip(names, columns, strict=True)
            }
        )

    def _end(self) -> None:
        if self._conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            self._conn.rollback()
