"""The objects cdc-replicator may own on the source: versioned SQL from migrations/source, applied once.

``apply_source_migrations`` runs each ``migrations/source/NNNN_*.sql`` not yet recorded in
``cdc_replicator.schema_migrations``, in order, each in its own transaction under an advisory lock
(two daemons starting together apply it once). ``teardown`` drops what the daemon created.
"""

from __future__ import annotations

import logging
from pathlib import Path

import psycopg
from psycopg import sql

from cdc_replicator.errors import SourceError
from cdc_replicator.source import pgerrors
from cdc_replicator.source.checks import drop_slot, slot_info

__all__ = ["apply_source_migrations", "heartbeat_table", "pending_source_migrations", "teardown"]

logger = logging.getLogger(__name__)

_LOCK_KEY = 0x63646372  # "cdcr": pg_advisory_xact_lock key of the migration runner
_LEDGER = (
    "create table if not exists cdc_replicator.schema_migrations "
    "(version text primary key, applied_at timestamptz not null default now())"
)


def _files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.glob("*.sql") if p.stem[:4].isdigit())


def _applied(conn: psycopg.Connection[tuple[object, ...]]) -> set[str]:
    row = conn.execute("select to_regclass('cdc_replicator.schema_migrations') is not null").fetchone()
    if row is None or not row[0]:
        return set()
    return {
        str(r[0]) for r in conn.execute("select version from cdc_replicator.schema_migrations").fetchall()
    }


def pending_source_migrations(conn: psycopg.Connection[tuple[object, ...]], directory: Path) -> list[str]:
    done = _applied(conn)
    return [p.stem for p in _files(directory) if p.stem not in done]


def apply_source_migrations(conn: psycopg.Connection[tuple[object, ...]], directory: Path) -> list[str]:
    """Apply the pending migrations; return their versions. ``conn`` must be in autocommit mode.

    Nothing pending (e.g. an admin applied them): nothing is run, so a role without CREATE on the
    database starts fine once the objects exist.
    """
    applied: list[str] = []
    with pgerrors.translated("reading the source migrations applied failed"):
        if not pending_source_migrations(conn, directory):
            return applied
    for path in _files(directory):
        try:
            with conn.transaction():
                conn.execute("select pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
                conn.execute("create schema if not exists cdc_replicator")
                conn.execute(_LEDGER)
                done = conn.execute(
                    "select 1 from cdc_replicator.schema_migrations where version = %s", (path.stem,)
                ).fetchone()
                if done:
                    continue
                conn.execute(path.read_text(encoding="utf-8").encode())
                conn.execute(
                    "insert into cdc_replicator.schema_migrations (version) values (%s)", (path.stem,)
                )
        except psycopg.Error as exc:
            raise pgerrors.from_exception(
                exc,
                context=f"source migration {path.stem} failed",
                fixes={
                    "42501": f"the role needs CREATE on the database; or apply {path} as an admin, then "
                    "run: cdc-replicator --config FILE migrate"
                },
            ) from exc
        applied.append(path.stem)
        logger.info("source migration applied version=%s", path.stem)
    return applied


def heartbeat_table(conn: psycopg.Connection[tuple[object, ...]]) -> None:
    """One heartbeat through the table of migration 0001 (``source.heartbeat = "table"``)."""
    conn.execute("update cdc_replicator.heartbeat set beat_at = now() where id = 1")


def teardown(
    conn: psycopg.Connection[tuple[object, ...]], *, slot: str, publication: str, drop_schema: bool
) -> list[str]:
    """Drop the slot, the publication and (``drop_schema``) the cdc_replicator schema; return what went."""
    dropped: list[str] = []
    info = slot_info(conn, slot)
    if info is not None:
        if info.active_pid is not None:
            raise SourceError(
                f"replication slot {slot!r} is in use by process {info.active_pid}",
                hint="stop the running cdc-replicator first, then run teardown again",
            )
        drop_slot(conn, slot)
        dropped.append(f"replication slot {slot}")
    exists = conn.execute("select 1 from pg_publication where pubname = %s", (publication,)).fetchone()
    if exists:
        conn.execute(sql.SQL("drop publication {}").format(sql.Identifier(publication)))
        dropped.append(f"publication {publication}")
    if drop_schema:
        row = conn.execute("select 1 from pg_namespace where nspname = 'cdc_replicator'").fetchone()
        if row:
            conn.execute("drop schema cdc_replicator cascade")
            dropped.append("schema cdc_replicator")
    for what in dropped:
        logger.info("dropped %s", what)
    return dropped
