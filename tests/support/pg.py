"""Per-test PostgreSQL databases on a session cluster, and the versions the suite runs against."""

from __future__ import annotations

import os
import re
import uuid
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql
from psycopg.abc import Params, QueryNoTemplate

from tests.support.cluster import Cluster
from tests.support.wait import wait_until

__all__ = [
    "DEFAULT_VERSIONS",
    "PgDatabase",
    "create_test_database",
    "drop_test_database",
    "versions_from_env",
]

VERSIONS_ENV = "CDC_TEST_PG_VERSIONS"
DEFAULT_VERSIONS = "15,16"
SLOT_RELEASE_TIMEOUT = 10.0


def versions_from_env() -> list[int]:
    """The PostgreSQL major versions to test against: ``$CDC_TEST_PG_VERSIONS`` or "15,16"."""
    raw = os.environ.get(VERSIONS_ENV, DEFAULT_VERSIONS)
    items = [item.strip() for item in raw.split(",") if item.strip()]
    if not items or not all(item.isdigit() for item in items):
        raise ValueError(f"{VERSIONS_ENV} must be a comma-separated list of major versions, got {raw!r}")
    return list(dict.fromkeys(int(item) for item in items))


@dataclass(frozen=True, slots=True)
class PgDatabase:
    """One freshly created database on the session cluster, owned by one test."""

    name: str
    dsn: str
    cluster: Cluster

    def connect(self, *, autocommit: bool = False) -> psycopg.Connection[tuple[Any, ...]]:
        """Open a new connection to this database; the caller closes it (use ``with``)."""
        return psycopg.connect(self.dsn, autocommit=autocommit)

    def execute(self, query: QueryNoTemplate, params: Params | None = None) -> None:
        """Run one statement in autocommit mode on a short-lived connection."""
        with self.connect(autocommit=True) as conn:
            conn.execute(query, params)

    def query(self, query: QueryNoTemplate, params: Params | None = None) -> list[tuple[Any, ...]]:
        """Run one statement in autocommit mode and return all its rows."""
        with self.connect(autocommit=True) as conn:
            return conn.execute(query, params).fetchall()


def _database_name(label: str) -> str:
    stem = re.sub(r"[^a-z0-9]+", "_", label.lower()).strip("_")[:40]
    return f"t_{stem}_{uuid.uuid4().hex[:8]}"


def create_test_database(cluster: Cluster, label: str) -> PgDatabase:
    """Create a uniquely named empty database (name derived from ``label``, e.g. the test name)."""
    name = _database_name(label)
    return PgDatabase(name=name, dsn=cluster.create_database(name), cluster=cluster)


def drop_test_database(db: PgDatabase) -> None:
    """Drop ``db`` and the replication slots in it; errors propagate.

    Walsenders holding those slots are terminated first, then each slot is dropped once it is
    released, then the database is dropped with ``(force)`` (ending any other sessions in it).
    """
    with psycopg.connect(db.cluster.dsn(), autocommit=True) as conn:
        conn.execute(
            "select pg_terminate_backend(active_pid) from pg_replication_slots"
            " where database = %s and active_pid is not null",
            (db.name,),
        )

        def slots_released() -> bool:
            row = conn.execute(
                "select count(*) from pg_replication_slots where database = %s and active", (db.name,)
            ).fetchone()
            return row is not None and row[0] == 0

        wait_until(
            slots_released,
            timeout=SLOT_RELEASE_TIMEOUT,
            message=f"replication slots in {db.name} still active after terminating their walsenders",
        )
        conn.execute(
            "select pg_drop_replication_slot(slot_name) from pg_replication_slots where database = %s",
            (db.name,),
        )
        conn.execute(sql.SQL("drop database {} with (force)").format(sql.Identifier(db.name)))
