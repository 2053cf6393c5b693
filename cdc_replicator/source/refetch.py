"""Read rows' current values at the source by key: the TOAST values the stream sent as "unchanged".

The sink asks for them only when Delta has no row to keep those values from (``sink.ToastReader``).
The same choice as Debezium's ``ReselectColumnsPostProcessor``: a fresh read by primary key. The
value read is at least as new as the change being applied, and any later change of it carries it
in the stream, so the row ends equal to the source.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

import psycopg
import pyarrow as pa
from psycopg import sql

from cdc_replicator.model import TableId, TableSchema
from cdc_replicator.source import checks, pgerrors
from cdc_replicator.source.snapshot import key_type_names, output_text

__all__ = ["SourceRows"]

_KEYS_PER_QUERY = 1000


class SourceRows:
    """``sink.ToastReader`` over one lazily opened connection (autocommit: each read sees what is
    committed now). Threads: any; reads are serialised on the connection."""

    def __init__(self, dsn: str, *, connect_timeout: float = 10.0, silence_timeout: float = 0.0) -> None:
        self._dsn = dsn
        self._connect_timeout = connect_timeout
        self._silence_timeout = silence_timeout  # a read on a dead path would stall the apply
        self._lock = threading.Lock()
        self._conn: psycopg.Connection[tuple[object, ...]] | None = None
        # format_type of the key columns, per table and key layout
        self._key_types: dict[tuple[TableId, tuple[tuple[str, int, int], ...]], dict[str, str]] = {}

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def read(self, schema: TableSchema, keys: pa.Table, columns: Sequence[str]) -> pa.Table:
        """The source's rows at ``keys``: key columns and ``columns`` as PostgreSQL text (``binary``)."""
        key = list(schema.key)
        names = key + [c for c in columns if c not in key]
        out: list[list[bytes | None]] = [[] for _ in names]
        values = [keys.column(k).to_pylist() for k in key]
        context = f"reading unchanged TOAST values of {schema.table} from the source failed"
        with self._lock:
            try:
                conn = self._connection()
                layout = (
                    schema.table,
                    tuple((c.name, c.type_oid, c.type_modifier) for c in schema.columns if c.is_key),
                )
                types = self._key_types.get(layout)
                if types is None:
                    types = self._key_types[layout] = key_type_names(conn, schema)
                for start in range(0, keys.num_rows, _KEYS_PER_QUERY):
                    part = [
                        [
                            None if v is None else bytes(v).decode()
                            for v in col[start : start + _KEYS_PER_QUERY]
                        ]
                        for col in values
                    ]
                    for row in conn.execute(_query(schema, names, types, part)).fetchall():
                        for i, v in enumerate(row):
                            out[i].append(None if v is None else str(v).encode())
            except psycopg.Error as exc:
                if self._conn is not None:
                    self._conn.close()
                    self._conn = None
                raise pgerrors.from_exception(exc, context=context) from exc
        return pa.table({n: pa.array(col, pa.binary()) for n, col in zip(names, out, strict=True)})

    def _connection(self) -> psycopg.Connection[tuple[object, ...]]:
        if self._conn is None or self._conn.closed:
            self._conn = checks.connect(
                self._dsn, connect_timeout=self._connect_timeout, silence_timeout=self._silence_timeout
            )
        return self._conn


def _query(
    schema: TableSchema, names: Sequence[str], key_types: dict[str, str], keys: list[list[str | None]]
) -> sql.Composed:
    """``select <names as text> from T where (key) in (<keys>)``, the keys cast from their text.

    The keys go in as literals: ``output_text`` holds a literal ``%s`` (``format``'s), which a
    parameterised query would take for a placeholder.
    """
    key = list(schema.key)
    by_name = {c.name: c for c in schema.columns}
    return sql.SQL("select {} from {} where ({}) in (select {} from unnest({}) as u({}))").format(
        sql.SQL(", ").join(output_text(n, by_name[n].type_oid) for n in names),
        sql.Identifier(schema.table.schema, schema.table.name),
        sql.SQL(", ").join(sql.Identifier(k) for k in key),
        sql.SQL(", ").join(
            sql.SQL("{}::{}").format(sql.Identifier(f"k{i}"), sql.SQL(key_types[k]))
            for i, k in enumerate(key)
        ),
        sql.SQL(", ").join(sql.SQL("{}::text[]").format(sql.Literal(col)) for col in keys),
        sql.SQL(", ").join(sql.Identifier(f"k{i}") for i in range(len(key))),
    )
