"""Preflight checks on the source and idempotent setup of the publication; slot inspection.

Every failure is one ReplicatorError that says what is wrong and the SQL that fixes it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Self

import psycopg
from psycopg import sql

from cdc_replicator.errors import MissingKey, SourceError, WalLevelNotLogical
from cdc_replicator.model import Column, ColumnSelection, Lsn, TableId, TableSchema
from cdc_replicator.source import netguard, pgerrors
from cdc_replicator.source.replication import SESSION_OPTIONS
from cdc_replicator.types import resolve_domains

__all__ = [
    "HEARTBEAT_PREFIX",
    "SlotInfo",
    "SlotStats",
    "GuardedConnection",
    "GuardedCursor",
    "connect",
    "drop_slot",
    "emit_heartbeat",
    "ensure_publication",
    "preflight",
    "read_schema",
    "select_columns",
    "slot_info",
    "slot_stats",
]

logger = logging.getLogger(__name__)

MIN_SERVER_VERSION = 140000


class GuardedCursor(psycopg.Cursor[tuple[object, ...]]):
    """A cursor whose ``execute`` cannot wait forever on a dead path (``netguard.SilenceGuard``)."""

    def execute(self, query: Any, params: Any = None, **kwargs: Any) -> Self:
        conn = self.connection
        timeout = float(getattr(conn, "silence_timeout", 0.0))
        if timeout <= 0:
            return super().execute(query, params, **kwargs)
        with netguard.GUARD.watching(conn.pgconn.socket, timeout, "waiting for a query's answer") as w:
            try:
                return super().execute(query, params, **kwargs)
            except psycopg.Error as exc:
                if w.fired:
                    raise netguard.silence_error(timeout, "waiting for a query's answer") from exc
                raise


class GuardedConnection(psycopg.Connection[tuple[object, ...]]):
    """A connection that knows its silence bound (read by ``GuardedCursor``)."""

    silence_timeout: float = 0.0


def connect(
    dsn: str, *, connect_timeout: float = 10.0, autocommit: bool = True, silence_timeout: float = 0.0
) -> psycopg.Connection[tuple[object, ...]]:
    """A regular connection with the session settings both data paths rely on.

    TCP keepalives and ``connect_timeout`` are added unless the DSN sets them; with
    ``silence_timeout`` > 0 a query that hears nothing from the server for that long is ended
    (``netguard``) and raises ``SourceUnavailable``: retried like any lost connection.
    """
    conninfo = netguard.network_conninfo(
        dsn,
        connect_timeout=connect_timeout,
        silence_timeout=silence_timeout,
        options=SESSION_OPTIONS,
        application_name="cdc-replicator",
    )
    try:
        with netguard.CONNECT_LOCK:  # so that the ADBC driver's socket can be told from ours
            conn = GuardedConnection.connect(conninfo, autocommit=autocommit, cursor_factory=GuardedCursor)
    except psycopg.Error as exc:  # an unparsable dsn too: libpq's ping says so
        raise pgerrors.connect_error(
            dsn, exc, context="cannot connect to the source database", connect_timeout=connect_timeout
        ) from exc
    conn.silence_timeout = silence_timeout
    return conn


@dataclass(frozen=True, slots=True)
class SlotInfo:
    name: str
    plugin: str | None
    database: str | None
    active_pid: int | None
    confirmed_flush: Lsn | None
    restart_lsn: Lsn | None
    wal_status: str | None
    invalidated: bool


def _fqn(table: TableId) -> sql.Composable:
    return sql.Identifier(table.schema, table.name)


@pgerrors.translated("checking the source failed")
def preflight(
    conn: psycopg.Connection[tuple[object, ...]],
    tables: Sequence[TableId],
    selections: Mapping[TableId, ColumnSelection] | None = None,
) -> dict[TableId, TableSchema]:
    """Check server, role and tables; return each table's schema (columns in attribute order, key).

    ``selections``: the replicated columns of a table (its schema keeps only those).
    """
    row = conn.execute(
        "select current_setting('server_version_num')::int, current_setting('wal_level')"
    ).fetchone()
    assert row is not None
    version, wal_level = int(str(row[0])), str(row[1])
    if version < MIN_SERVER_VERSION:
        raise SourceError(
            f"PostgreSQL {version // 10000} is too old: logical replication with pgoutput needs 14 or newer",
            hint='upgrade the server, or use mode = "watermark" against it',
        )
    if wal_level != "logical":
        raise WalLevelNotLogical(
            f"wal_level is {wal_level!r} on the source, logical replication needs 'logical'",
            hint="run: alter system set wal_level = logical; then restart PostgreSQL",
        )
    standby_checks(conn, version)
    row = conn.execute(
        "select current_user, rolsuper or rolreplication, current_setting('server_encoding') "
        "from pg_roles where rolname = current_user"
    ).fetchone()
    assert row is not None
    user, may_replicate, encoding = str(row[0]), bool(row[1]), str(row[2])
    if not may_replicate:
        raise SourceError(
            f"role {user!r} may not replicate",
            hint=f"run as a superuser: alter role {sql.Identifier(user).as_string(conn)} with replication;",
        )
    if encoding.upper() not in ("UTF8", "UNICODE"):
        raise SourceError(
            f"the source database encoding is {encoding}; cdc-replicator reads UTF8 only",
            hint="replicate from a UTF8 database (create database ... encoding 'UTF8')",
        )
    schemas = {t: read_schema(conn, t) for t in tables}
    return {t: select_columns(s, (selections or {}).get(t)) for t, s in schemas.items()}


def select_columns(schema: TableSchema, selection: ColumnSelection | None) -> TableSchema:
    """``schema`` with only the selected columns; every named column must exist, the key stays."""
    if selection is None or selection.everything:
        return schema
    names = set(schema.column_names)
    unknown = sorted((selection.only | selection.excluded) - names)
    if unknown:
        raise SourceError(
            f"{schema.table} has no column(s) {', '.join(unknown)} (named in columns/exclude_columns)",
            hint=f"columns of {schema.table}: {', '.join(schema.column_names)}",
        )
    dropped_keys = [k for k in schema.key if not selection.keeps(k)]
    if dropped_keys:
        raise SourceError(
            f"the key column(s) {', '.join(dropped_keys)} of {schema.table} would not be replicated",
            hint="a table is merged by its key: keep the key columns in columns / out of exclude_columns",
        )
    return selection.apply(schema)


MIN_STANDBY_VERSION = 160000


def is_standby(conn: psycopg.Connection[tuple[object, ...]]) -> bool:
    row = conn.execute("select pg_is_in_recovery()").fetchone()
    return bool(row and row[0])


def standby_checks(conn: psycopg.Connection[tuple[object, ...]], version: int) -> None:
    """On a physical standby: logical decoding needs 16+ and the primary must keep the catalog rows
    the slot needs (``hot_standby_feedback``, or a physical slot on the primary for this standby)."""
    if not is_standby(conn):
        return
    if version < MIN_STANDBY_VERSION:
        raise SourceError(
            f"the source is a PostgreSQL {version // 10000} standby: logical decoding on a standby needs 16 or newer",
            hint='point source.dsn at the primary, upgrade to 16+, or use mode = "watermark" on this replica',
        )
    row = conn.execute(
        "select current_setting('hot_standby_feedback')::bool, current_setting('primary_slot_name')"
    ).fetchone()
    assert row is not None
    feedback, primary_slot = bool(row[0]), str(row[1] or "")
    if not feedback:
        raise SourceError(
            "hot_standby_feedback is off on the standby: the primary could remove catalog rows the "
            "slot still needs, and the slot would be invalidated",
            hint="on the standby: alter system set hot_standby_feedback = on; select pg_reload_conf();"
            + (" (a physical slot on the primary is set too: keep it)" if primary_slot else ""),
        )


@pgerrors.translated("reading a table's layout failed")
def read_schema(conn: psycopg.Connection[tuple[object, ...]], table: TableId) -> TableSchema:
    """The table's published columns and merge key, from the catalog."""
    row = conn.execute(
        "select c.oid, c.relkind, c.relreplident, has_table_privilege(c.oid, 'select') "
        "from pg_class c join pg_namespace n on n.oid = c.relnamespace "
        "where n.nspname = %s and c.relname = %s",
        (table.schema, table.name),
    ).fetchone()
    if row is None:
        raise SourceError(
            f"table {table} does not exist in the source database",
            hint="check the name in [[tables]] (schema.table, case-sensitive) or create the table",
        )
    oid, relkind, replident, can_select = int(str(row[0])), str(row[1]), str(row[2]), bool(row[3])
    if relkind not in ("r", "p"):
        raise SourceError(f"{table} is not a table (relkind {relkind!r})", hint="replicate tables only")
    if not can_select:
        raise SourceError(
            f"the replication role may not read {table}",
            hint=f"run as the table owner: grant select on {_fqn(table).as_string(conn)} to <role>;",
        )
    cols = conn.execute(
        "select a.attname, a.atttypid::int, a.atttypmod, "
        "coalesce(a.attnum = any(i.indkey::int2[]), false) "
        "from pg_attribute a left join pg_index i on i.indrelid = a.attrelid and i.indisprimary "
        "where a.attrelid = %s and a.attnum > 0 and not a.attisdropped and a.attgenerated = '' "
        "order by a.attnum",
        (oid,),
    ).fetchall()
    has_pk = any(bool(c[3]) for c in cols)
    fq = _fqn(table).as_string(conn)
    if not has_pk and replident != "f":
        raise MissingKey(
            f"table {table} has no primary key and its replica identity is not FULL: "
            "updates and deletes could not be matched",
            hint=f"add a key: alter table {fq} add primary key (<columns>); "
            f"or: alter table {fq} replica identity full;",
        )
    if replident == "n":
        raise MissingKey(
            f"table {table} has REPLICA IDENTITY NOTHING: its updates and deletes are not published",
            hint=f"run: alter table {fq} replica identity default;",
        )
    columns = tuple(Column(str(c[0]), int(str(c[1])), int(str(c[2])), bool(c[3]) or not has_pk) for c in cols)
    return resolve_domains(TableSchema(table, columns, replident), load_domains(conn))


@pgerrors.translated("reading the domains of the source failed")
def load_domains(conn: psycopg.Connection[tuple[object, ...]]) -> dict[int, tuple[int, int]]:
    """Every domain of the database: its OID → (base type OID, type modifier), chains followed.

    A domain over a domain takes the innermost base type and the nearest modifier that is set.
    """
    rows = conn.execute(
        "select oid::int, typbasetype::int, typtypmod from pg_type where typtype = 'd'"
    ).fetchall()
    direct = {int(str(r[0])): (int(str(r[1])), int(str(r[2]))) for r in rows}
    resolved: dict[int, tuple[int, int]] = {}
    for oid, (base, typmod) in direct.items():
        seen = {oid}
        while base in direct and base not in seen:  # a domain over a domain
            seen.add(base)
            base, inner = direct[base]
            typmod = typmod if typmod != -1 else inner
        resolved[oid] = (base, typmod)
    return resolved


@pgerrors.translated("checking the publication failed")
def ensure_publication(
    conn: psycopg.Connection[tuple[object, ...]],
    name: str,
    tables: Sequence[TableId],
    columns: Mapping[TableId, TableSchema] | None = None,
) -> None:
    """Create the publication if missing; otherwise check it publishes every configured table.

    ``columns``: tables replicated with fewer columns than they have; on PostgreSQL 15+ a new
    publication lists those columns (excluded data never leaves the database). An existing
    publication that publishes them anyway gets a warning (the daemon drops them).
    """
    row = conn.execute(
        "select puballtables, pubinsert and pubupdate and pubdelete and pubtruncate, pubviaroot "
        "from pg_publication where pubname = %s",
        (name,),
    ).fetchone()
    version_row = conn.execute("select current_setting('server_version_num')::int").fetchone()
    lists = int(str(version_row[0])) >= 150000 if version_row else False
    narrowed = {t: s for t, s in (columns or {}).items() if s.replica_identity != "f"} if lists else {}
    targets = sql.SQL(", ").join(
        sql.SQL("{} ({})").format(
            _fqn(t), sql.SQL(", ").join(sql.Identifier(c) for c in narrowed[t].column_names)
        )
        if t in narrowed
        else _fqn(t)
        for t in tables
    )
    if row is None and is_standby(conn):
        stmt = sql.SQL("create publication {} for table {} with (publish_via_partition_root = true)").format(
            sql.Identifier(name), targets
        )
        raise SourceError(
            f"publication {name!r} does not exist, and a standby cannot create it",
            hint=f"create it on the primary (it reaches the standby by replication): {stmt.as_string(conn)};",
        )
    if row is None:
        stmt = sql.SQL("create publication {} for table {} with (publish_via_partition_root = true)").format(
            sql.Identifier(name), targets
        )
        try:
            conn.execute(stmt)
        except psycopg.Error as exc:
            raise pgerrors.from_exception(
                exc,
                context=f"cannot create publication {name!r}",
                fixes={"42501": f"run as the tables' owner: {stmt.as_string(conn)};"},
            ) from exc
        logger.info("publication created publication=%s tables=%d", name, len(tables))
        return
    alltables, all_ops, viaroot = bool(row[0]), bool(row[1]), bool(row[2])
    if not all_ops:
        raise SourceError(
            f"publication {name!r} does not publish all of insert, update, delete and truncate",
            hint=f"run: alter publication {sql.Identifier(name).as_string(conn)} "
            "set (publish = 'insert, update, delete, truncate');",
        )
    if not viaroot:
        logger.warning(
            "publication %s has publish_via_partition_root = false; partitions arrive separately", name
        )
    if alltables:
        return
    published = {
        TableId(str(r[0]), str(r[1]))
        for r in conn.execute(
            "select schemaname, tablename from pg_publication_tables where pubname = %s", (name,)
        ).fetchall()
    }
    missing = [t for t in tables if t not in published]
    if missing:
        add = sql.SQL(", ").join(_fqn(t) for t in missing)
        stmt = sql.SQL("alter publication {} add table {}").format(sql.Identifier(name), add)
        raise SourceError(
            f"publication {name!r} does not publish {', '.join(map(str, missing))}",
            hint=f"run: {stmt.as_string(conn)};",
        )
    _warn_published_extra_columns(conn, name, columns or {}, lists)


def _warn_published_extra_columns(
    conn: psycopg.Connection[tuple[object, ...]],
    name: str,
    columns: Mapping[TableId, TableSchema],
    lists: bool,
) -> None:
    """An existing publication that publishes columns the config leaves out: they leave the database."""
    for table, schema in columns.items():
        if lists:
            row = conn.execute(
                "select attnames from pg_publication_tables where pubname = %s and schemaname = %s "
                "and tablename = %s",
                (name, table.schema, table.name),
            ).fetchone()
            names = row[0] if row else None
            published = {str(x) for x in names} if isinstance(names, list) else None
        else:
            published = None  # before 15 every column is published
        extra = sorted(published - set(schema.column_names)) if published is not None else ["(all columns)"]
        if extra:
            logger.warning(
                "publication %s publishes columns of %s that are not replicated: %s; they leave the "
                "database and the daemon drops them (PostgreSQL 15+: alter publication %s set table %s (%s))",
                name,
                table,
                ", ".join(extra),
                name,
                table,
                ", ".join(schema.column_names),
            )


@pgerrors.translated("reading the replication slot failed")
def slot_info(conn: psycopg.Connection[tuple[object, ...]], slot: str) -> SlotInfo | None:
    row = conn.execute(
        "select slot_name, plugin, database, active_pid, confirmed_flush_lsn::text, restart_lsn::text, "
        "wal_status, to_jsonb(s) ->> 'conflicting' from pg_replication_slots s where slot_name = %s",
        (slot,),
    ).fetchone()
    if row is None:
        return None
    wal_status = None if row[6] is None else str(row[6])
    conflicting = row[7] == "true"
    return SlotInfo(
        name=str(row[0]),
        plugin=None if row[1] is None else str(row[1]),
        database=None if row[2] is None else str(row[2]),
        active_pid=None if row[3] is None else int(str(row[3])),
        confirmed_flush=None if row[4] is None else Lsn.parse(str(row[4])),
        restart_lsn=None if row[5] is None else Lsn.parse(str(row[5])),
        wal_status=wal_status,
        invalidated=wal_status == "lost" or conflicting,
    )


@pgerrors.translated("dropping the replication slot failed")
def drop_slot(conn: psycopg.Connection[tuple[object, ...]], slot: str) -> None:
    """Drop the slot if it exists (terminating a walsender that still holds it)."""
    info = slot_info(conn, slot)
    if info is None:
        return
    if info.active_pid is not None:
        conn.execute("select pg_terminate_backend(%s)", (info.active_pid,))
    conn.execute("select pg_drop_replication_slot(%s)", (slot,))
    logger.info("replication slot dropped slot=%s", slot)


@dataclass(frozen=True, slots=True)
class SlotStats:
    """The slot seen from the server: how far behind it is and how much WAL it keeps."""

    server_lsn: Lsn  # pg_current_wal_lsn(), or the replay position on a standby
    wal_status: str  # pg_replication_slots.wal_status, or "missing"
    confirmed_flush: Lsn | None
    restart_lsn: Lsn | None

    @property
    def lag_bytes(self) -> int | None:
        if self.confirmed_flush is None:
            return None
        return max(0, self.server_lsn.value - self.confirmed_flush.value)

    @property
    def retained_wal_bytes(self) -> int | None:
        if self.restart_lsn is None:
            return None
        return max(0, self.server_lsn.value - self.restart_lsn.value)


def slot_stats(conn: psycopg.Connection[tuple[object, ...]], slot: str) -> SlotStats:
    """One cheap catalog query; works on a primary and on a standby."""
    row = conn.execute(
        "select case when pg_is_in_recovery() then pg_last_wal_replay_lsn() "
        "else pg_current_wal_lsn() end::text, "
        "s.wal_status, s.confirmed_flush_lsn::text, s.restart_lsn::text "
        "from (select 1) one left join pg_replication_slots s on s.slot_name = %s",
        (slot,),
    ).fetchone()
    assert row is not None
    return SlotStats(
        server_lsn=Lsn.parse(str(row[0])) if row[0] is not None else Lsn.ZERO,
        wal_status="missing"
        if row[1] is None and row[2] is None and row[3] is None
        else str(row[1] or "unknown"),
        confirmed_flush=None if row[2] is None else Lsn.parse(str(row[2])),
        restart_lsn=None if row[3] is None else Lsn.parse(str(row[3])),
    )


HEARTBEAT_PREFIX = "cdc-replicator-heartbeat"


def emit_heartbeat(conn: psycopg.Connection[tuple[object, ...]]) -> Lsn:
    """Write a non-transactional logical message: WAL in this database that the slot can move past."""
    row = conn.execute(
        "select pg_logical_emit_message(false, %s, ''::text)::text", (HEARTBEAT_PREFIX,)
    ).fetchone()
    assert row is not None
    return Lsn.parse(str(row[0]))
