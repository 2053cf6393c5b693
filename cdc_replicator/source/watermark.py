"""Watermark polling of a (read replica) database: high-watermark page queries, built with SQLAlchemy Core.

A table's progress is a ``WatermarkPosition`` (model): ``read`` is the last (cursor..., key...) read; every
row at or below it has been applied. A row can still appear *below* ``read`` later: its
transaction was in progress when the poll ran (or took its cursor value, e.g. ``now()``, before the
poll and wrote after it). So each poll also remembers its snapshot (``pg_current_snapshot()``, which
works during recovery) and keeps its range *pending* until every transaction in progress then has
finished and ``lookback`` seconds have passed. While a range is pending, each poll re-reads it, but
only the rows written by those transactions or later ones (the row's ``xmin`` is one of the
snapshot's in-progress xids, or at or above its ``xmax``): late rows are found without re-reading,
let alone re-merging, what was already applied.

One poll is one read-only REPEATABLE READ transaction with a statement timeout: the snapshot, the
late-row check and every page agree. Nothing is ever written to the database.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg
import pyarrow as pa
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.types import UserDefinedType

from cdc_replicator.errors import MissingKey, SourceError
from cdc_replicator.model import (
    Lsn,
    Page,
    Poll,
    TableId,
    TableSchema,
    WatermarkPosition,
    WatermarkTable,
    XidSnapshot,
)
from cdc_replicator.source import netguard, pgerrors
from cdc_replicator.source.checks import GuardedConnection, GuardedCursor, read_schema
from cdc_replicator.source.replication import SESSION_OPTIONS
from cdc_replicator.source.snapshot import TEXT_CAST_IS_OUTPUT
from cdc_replicator.types import TEXT_TYPE_OIDS

__all__ = ["RECONCILE_DELETE_KEY_OIDS", "WatermarkSource"]

logger = logging.getLogger(__name__)

_XID_MOD = 1 << 32
# key types whose text form is also what the Delta-side comparison reads: deletes are safe for them
RECONCILE_DELETE_KEY_OIDS = frozenset({20, 21, 23, *TEXT_TYPE_OIDS})


# ---- the source ----------------------------------------------------------------------------------


class _PgType(UserDefinedType[Any]):
    """A column's own type, as the catalog names it, for ``CAST(:watermark AS <type>)``."""

    cache_ok = True

    def __init__(self, spec: str) -> None:
        self.spec = spec

    def get_col_spec(self, **_kw: Any) -> str:
        return self.spec


class WatermarkSource:
    """Polls tables with high-watermark page queries on one SQLAlchemy engine (psycopg driver)."""

    def __init__(
        self,
        dsn: str,
        *,
        connect_timeout: float = 10.0,
        statement_timeout: float = 60.0,
        silence_timeout: float = 0.0,
    ) -> None:
        self._dsn = dsn
        self._connect_timeout = connect_timeout
        self._timeout = statement_timeout
        # a page query may rightly send nothing until the server's statement timeout ends it
        self._silence = 0.0 if silence_timeout <= 0 else max(silence_timeout, statement_timeout + 10.0)
        self._engine: Engine = sa.create_engine(
            "postgresql+psycopg://",
            creator=lambda: self._new_connection(),
            pool_pre_ping=True,
            pool_size=1,
            max_overflow=1,
        )
        self._types: dict[TableId, dict[str, str]] = {}

    def _new_connection(self) -> psycopg.Connection[tuple[object, ...]]:
        """Keepalives and ``connect_timeout`` unless the DSN sets them; a query's silence is bounded
        (past the server's own statement timeout) so a half-open path cannot stall a poll forever."""
        conninfo = netguard.network_conninfo(
            self._dsn,
            connect_timeout=self._connect_timeout,
            silence_timeout=self._silence,
            options=SESSION_OPTIONS,  # ISO dates, UTC: the text forms read back the same
            application_name="cdc-replicator watermark",
        )
        with netguard.CONNECT_LOCK:
            conn = GuardedConnection.connect(conninfo, cursor_factory=GuardedCursor)
        conn.silence_timeout = self._silence
        return conn

    def close(self) -> None:
        self._engine.dispose()

    def _connect(self) -> Connection:
        try:
            return self._engine.connect()
        except DBAPIError as exc:
            raise pgerrors.connect_error(
                self._dsn,
                exc,
                context="cannot connect to the source database",
                connect_timeout=self._connect_timeout,
            ) from exc

    # -- set-up ---------------------------------------------------------------------------------

    @pgerrors.translated("reading the table's schema failed")
    def describe(self, table: TableId, cursor: Sequence[str], delete_column: str) -> TableSchema:
        """The table's schema; checks that it has a primary key and the named columns exist."""
        with self._connect() as conn:
            raw = conn.connection.driver_connection
            assert isinstance(raw, psycopg.Connection)
            schema = read_schema(raw, table)
            has_pk = raw.execute(
                "select exists (select 1 from pg_index where indrelid = %s::regclass and indisprimary)",
                (f'"{table.schema}"."{table.name}"',),
            ).fetchone()
            rows = raw.execute(
                "select a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull from pg_attribute a "
                "where a.attrelid = %s::regclass and a.attnum > 0 and not a.attisdropped",
                (f'"{table.schema}"."{table.name}"',),
            ).fetchall()
            conn.rollback()
        if not (has_pk and has_pk[0]):
            raise MissingKey(
                f"table {table} has no primary key: watermark mode pages and merges by key",
                hint=f"add one: alter table {table} add primary key (<columns>); (on the primary)",
            )
        names = set(schema.column_names)
        named = [("cursor", c) for c in cursor] + (
            [("delete_column", delete_column)] if delete_column else []
        )
        for key, col in named:
            if col not in names:
                raise SourceError(
                    f"{table} has no column {col!r} (named as {key} in its [[tables]] entry)",
                    hint=f"set {key} to one of the columns of {table}: {', '.join(schema.column_names)}",
                )
        nullable = [c for c in cursor if any(str(r[0]) == c and not r[2] for r in rows)]
        if nullable:
            raise SourceError(
                f"cursor column(s) {', '.join(nullable)} of {table} may be NULL: rows with a NULL cursor "
                "would never be read",
                hint=f"on the primary: alter table {table} alter column {nullable[0]} set not null; "
                "or choose a NOT NULL cursor column",
            )
        self._types[table] = {str(r[0]): str(r[1]) for r in rows}
        return schema

    def is_replica(self) -> bool:
        try:
            with self._connect() as conn:
                value = conn.execute(sa.select(sa.func.pg_is_in_recovery())).scalar_one()
                conn.rollback()
        except DBAPIError as exc:
            raise pgerrors.from_exception(
                exc, context="asking whether the source is a replica failed"
            ) from exc
        return bool(value)

    # -- polling --------------------------------------------------------------------------------

    @contextmanager
    def poll(self, t: WatermarkTable, position: WatermarkPosition) -> Iterator[Poll]:
        """One poll of ``t`` in one snapshot; its pages are read while the ``with`` block runs.

        Late rows (pending ranges, filtered to the writers that may be late) come first, then the
        rows after ``position.read`` in (cursor, key) order, ``t.page_size`` at a time.
        """
        try:
            with self._connect() as conn:
                conn.execute(sa.text("set transaction isolation level repeatable read read only"))
                # statement_timeout in ms: a bound parameter cannot be used with SET
                conn.execute(
                    sa.select(sa.func.set_config("statement_timeout", str(int(self._timeout * 1000)), True))
                )
                row = conn.execute(
                    sa.select(
                        sa.cast(sa.func.pg_current_snapshot(), sa.Text),
                        sa.case(
                            (sa.func.pg_is_in_recovery(), sa.cast(sa.func.pg_last_wal_replay_lsn(), sa.Text)),
                            else_=sa.cast(sa.func.pg_current_wal_lsn(), sa.Text),
                        ),
                        sa.case(
                            (
                                sa.func.pg_is_in_recovery(),
                                sa.extract("epoch", sa.func.now() - sa.func.pg_last_xact_replay_timestamp()),
                            ),
                            else_=None,
                        ),
                    )
                ).one()
                yield Poll(
                    XidSnapshot.parse(str(row[0])),
                    Lsn.parse(str(row[1])),
                    None if row[2] is None else float(row[2]),
                    self._poll_pages(conn, t, position),
                )
                conn.rollback()
        except DBAPIError as exc:
            raise pgerrors.from_exception(exc, context=f"polling {t.schema.table} failed") from exc
        except SQLAlchemyError as exc:
            raise SourceError(f"polling {t.schema.table} failed: {exc}", retryable=True) from exc

    def _poll_pages(self, conn: Connection, t: WatermarkTable, position: WatermarkPosition) -> Iterator[Page]:
        for p in position.pending:
            yield from self._pages(conn, t, p.after, p.upto, p.snapshot.xmin)
        after = position.read
        while True:
            forward = next(iter(self._pages(conn, t, after, None, None, limit=t.page_size)), None)
            if forward is None:
                return
            yield forward
            if forward.rows.num_rows < t.page_size:
                return
            after = forward.last

    def key_page(self, t: WatermarkTable, lo: tuple[str, ...] | None, limit: int) -> list[tuple[str, ...]]:
        """Up to ``limit`` primary keys (text forms) at or after ``lo``, in key order (reconciliation)."""
        types = self._types[t.schema.table]
        key = t.schema.key
        names = [*key, *([t.delete_column] if t.delete_column else [])]
        tbl = sa.table(t.schema.table.name, *[sa.column(c) for c in names], schema=t.schema.table.schema)
        oids = {c.name: c.type_oid for c in t.schema.columns}
        # Delta's range reads compare text keys byte-wise: the same order here (COLLATE "C")
        cols = [tbl.c[k].collate("C") if oids[k] in TEXT_TYPE_OIDS else tbl.c[k] for k in key]
        query = sa.select(*[sa.func.format("%s", tbl.c[k]).label(k) for k in key]).select_from(tbl)
        if t.delete_column:  # rows marked deleted are not in Delta (or marked there): not "missing"
            query = query.where(tbl.c[t.delete_column].is_not_distinct_from(None))  # the value, as in polls
        if lo is not None:
            bound = [
                sa.cast(sa.bindparam(f"k{i}", v, type_=sa.Text), _PgType(types[k]))
                for i, (k, v) in enumerate(zip(key, lo, strict=True))
            ]
            query = query.where(
                sa.tuple_(*cols)
                >= sa.tuple_(
                    *[
                        b.collate("C") if oids[k] in TEXT_TYPE_OIDS else b
                        for k, b in zip(key, bound, strict=True)
                    ]
                )
            )
        query = query.order_by(*cols).limit(limit)
        try:
            with self._connect() as conn:
                conn.execute(sa.text("set transaction isolation level repeatable read read only"))
                conn.execute(
                    sa.select(sa.func.set_config("statement_timeout", str(int(self._timeout * 1000)), True))
                )
                rows = conn.execute(query).fetchall()
                conn.rollback()
        except DBAPIError as exc:
            raise pgerrors.from_exception(exc, context=f"reading keys of {t.schema.table} failed") from exc
        return [tuple(str(v) for v in r) for r in rows]

    def rows_by_key(
        self, t: WatermarkTable, keys: Sequence[tuple[str, ...]], *, upto: tuple[str, ...] | None = None
    ) -> Page:
        """The current rows with these keys (text forms), as a page (reconciliation: rows Delta lacks).

        ``upto``: only rows at or below this watermark (cursor..., key...).
        """
        types = self._types[t.schema.table]
        key = t.schema.key
        tbl = sa.table(
            t.schema.table.name, *[sa.column(c) for c in t.schema.column_names], schema=t.schema.table.schema
        )
        wanted = [
            sa.tuple_(
                *[
                    sa.cast(sa.literal(v, sa.Text), _PgType(types[k]))
                    for k, v in zip(key, values, strict=True)
                ]
            )
            for values in keys
        ]
        items = [_text_of(tbl.c[c.name], c.type_oid).label(c.name) for c in t.schema.columns]
        query = sa.select(*items).select_from(tbl).where(sa.tuple_(*[tbl.c[k] for k in key]).in_(wanted))
        if upto is not None:
            bound = [
                sa.cast(sa.literal(v, sa.Text), _PgType(types[c])) for c, v in zip(t.order, upto, strict=True)
            ]
            query = query.where(sa.tuple_(*[tbl.c[c] for c in t.order]) <= sa.tuple_(*bound))
        try:
            with self._connect() as conn:
                rows = conn.execute(query).fetchall()
                conn.rollback()
        except DBAPIError as exc:
            raise pgerrors.from_exception(exc, context=f"reading rows of {t.schema.table} failed") from exc
        columns = list(zip(*rows, strict=True)) if rows else [() for _ in t.schema.column_names]
        arrays = {
            name: pa.array(list(columns[i]), pa.string()).cast(pa.binary())
            for i, name in enumerate(t.schema.column_names)
        }
        return Page(pa.table(arrays), None, True)

    def _pages(
        self,
        conn: Connection,
        t: WatermarkTable,
        after: tuple[str, ...] | None,
        upto: tuple[str, ...] | None,
        late_from: int | None,
        *,
        limit: int | None = None,
    ) -> Iterator[Page]:
        """Rows of ``(after, upto]`` in order; ``late_from``: only rows written by a transaction (or
        subtransaction) at or after that xid — the ones that may have committed after the poll."""
        types = self._types[t.schema.table]
        tbl = sa.table(
            t.schema.table.name, *[sa.column(c) for c in t.schema.column_names], schema=t.schema.table.schema
        )
        order = [tbl.c[c] for c in t.order]

        def bound(values: tuple[str, ...], prefix: str) -> sa.ColumnElement[Any]:
            return sa.tuple_(
                *[
                    sa.cast(sa.bindparam(f"{prefix}{i}", v, type_=sa.Text), _PgType(types[c]))
                    for i, (c, v) in enumerate(zip(t.order, values, strict=True))
                ]
            )

        cond: list[sa.ColumnElement[bool]] = []
        if after is not None:
            cond.append(sa.tuple_(*order) > bound(after, "a"))
        if upto is not None:
            cond.append(sa.tuple_(*order) <= bound(upto, "u"))
        if late_from is not None:
            # xmin is a 32-bit xid, the snapshot's are 64-bit: at or after late_from, modulo 2^32
            xmin = sa.cast(sa.cast(sa.literal_column("xmin"), sa.Text), sa.BigInteger)
            cond.append(sa.func.mod(xmin - (late_from % _XID_MOD) + _XID_MOD, _XID_MOD) < (1 << 31))
        items = [_text_of(tbl.c[c.name], c.type_oid).label(c.name) for c in t.schema.columns]
        query = sa.select(*items).select_from(tbl).where(*cond).order_by(*order)
        if limit is not None:
            query = query.limit(limit)
        # late reads have no LIMIT: a server-side cursor keeps memory to one page
        result = conn.execution_options(stream_results=True, max_row_buffer=t.page_size).execute(query)
        while True:
            rows = result.fetchmany(t.page_size)
            if not rows:
                return
            columns = list(zip(*rows, strict=True))
            arrays = {
                name: pa.array(columns[i], pa.string()).cast(pa.binary())
                for i, name in enumerate(t.schema.column_names)
            }
            last = tuple(str(rows[-1][t.schema.column_names.index(c)]) for c in t.order)
            yield Page(pa.table(arrays), last, late_from is not None)
            if limit is not None:
                return


def _text_of(col: sa.ColumnClause[Any], type_oid: int) -> sa.ColumnElement[Any]:
    """The column as its type's output function prints it (what the stream and the loads read).

    NULL only for NULL: ``is not distinct from null`` tests the value, ``is null`` a composite's
    fields (``ROW(NULL, NULL) IS NULL`` is true; the value is ``(,)``).
    """
    if type_oid in TEXT_CAST_IS_OUTPUT:
        return sa.cast(col, sa.Text)
    return sa.case((col.is_not_distinct_from(None), None), else_=sa.func.format("%s", col))
