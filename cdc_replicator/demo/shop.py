"""The demo's sample database ``shop``: its three tables, their seed rows, and what the demo reads back.

Each function opens its own short-lived connection; a psycopg error becomes a DemoError whose hint
quotes PostgreSQL's one-line reason (``pg_said``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import psycopg
from psycopg import sql

from cdc_replicator.demo import DemoError
from cdc_replicator.model import Lsn, TableId

__all__ = [
    "DATABASE",
    "FIRST_NAMES",
    "LAST_NAMES",
    "ORDERS",
    "SLOT",
    "TABLES",
    "Seeded",
    "create_shop",
    "pg_said",
    "slot_confirmed",
    "source_counts",
    "wal_position",
]

DATABASE: Final = "shop"
SLOT: Final = "cdc_demo"  # also the publication
CUSTOMERS: Final = TableId("public", "customers")
ORDERS: Final = TableId("public", "orders")
ORDER_ITEMS: Final = TableId("public", "order_items")
TABLES: Final = (CUSTOMERS, ORDERS, ORDER_ITEMS)

_SEED_CUSTOMERS: Final = 1_000
_SEED_ORDERS: Final = 3_000  # with 1 to 4 items each

_SCHEMA: Final[tuple[sql.SQL, ...]] = (
    sql.SQL(
        "create table public.customers ("
        " id bigserial primary key,"
        " name text not null,"
        " email text not null,"
        " created_at timestamptz not null default now())"
    ),
    sql.SQL(
        "create table public.orders ("
        " id bigserial primary key,"
        " customer_id bigint not null,"
        " amount numeric(10,2) not null,"
        " status text not null,"
        " updated_at timestamptz not null default now())"
    ),
    sql.SQL(
        "create table public.order_items ("
        " order_id bigint not null,"
        " line int not null,"
        " sku text not null,"
        " qty int not null,"
        " primary key (order_id, line))"
    ),
)
FIRST_NAMES: Final = (
    "Ada",
    "Grace",
    "Linus",
    "Edsger",
    "Barbara",
    "Ken",
    "Frances",
    "Dennis",
    "Radia",
    "Alan",
)
LAST_NAMES: Final = ("Lovelace", "Hopper", "Torvalds", "Dijkstra", "Liskov", "Thompson", "Allen", "Ritchie")
_STATUSES: Final = ("new", "paid", "shipped", "delivered")


@dataclass(frozen=True, slots=True)
class Seeded:
    """What the initial fill wrote: the highest ids, where the workload starts from."""

    rows: Mapping[TableId, int]
    max_customer_id: int
    max_order_id: int


def create_shop(dsn: str) -> Seeded:
    """Create the sample tables and fill them (deterministic values, one transaction)."""
    try:
        with psycopg.connect(dsn) as conn:
            for statement in _SCHEMA:
                conn.execute(statement)
            conn.execute(
                "insert into public.customers (name, email, created_at)"
                " select (%(first)s::text[])[1 + g %% cardinality(%(first)s::text[])]"
                " || ' ' || (%(last)s::text[])[1 + (g / 10) %% cardinality(%(last)s::text[])],"
                " 'customer' || g || '@example.com', now() - g * interval '1 hour'"
                " from generate_series(1, %(n)s) g",
                {"first": list(FIRST_NAMES), "last": list(LAST_NAMES), "n": _SEED_CUSTOMERS},
            )
            conn.execute(
                "insert into public.orders (customer_id, amount, status, updated_at)"
                " select 1 + (g * 7919) %% %(customers)s, ((g * 3571) %% 50000 + 500) / 100.0,"
                " (%(statuses)s::text[])[1 + g %% 4], now() - g * interval '1 minute'"
                " from generate_series(1, %(n)s) g",
                {"customers": _SEED_CUSTOMERS, "statuses": list(_STATUSES), "n": _SEED_ORDERS},
            )
            conn.execute(
                "insert into public.order_items (order_id, line, sku, qty)"
                " select o.id, l, 'SKU-' || lpad(((o.id * 31 + l * 17) % 500)::text, 4, '0'), 1 + (o.id + l) % 5"
                " from public.orders o, generate_series(1, 1 + (o.id % 4)::int) l"
            )
            rows = _count_rows(conn)
    except psycopg.Error as exc:
        raise DemoError(
            f"creating the sample tables in database {DATABASE!r} failed", hint=pg_said(exc)
        ) from exc
    return Seeded(rows, max_customer_id=_SEED_CUSTOMERS, max_order_id=_SEED_ORDERS)


def pg_said(exc: BaseException) -> str:
    """A hint quoting PostgreSQL's one-line reason: the demo's user has no other log to look at."""
    primary = exc.diag.message_primary if isinstance(exc, psycopg.Error) else None
    first = primary or (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return f"PostgreSQL said: {first}"


def _count_rows(conn: psycopg.Connection[Any]) -> dict[TableId, int]:
    counts: dict[TableId, int] = {}
    for table in TABLES:
        query = sql.SQL("select count(*) from {}").format(sql.Identifier(table.schema, table.name))
        row = conn.execute(query).fetchone()
        counts[table] = int(row[0]) if row is not None else 0
    return counts


def source_counts(dsn: str) -> dict[TableId, int]:
    """Rows in each sample table now."""
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            return _count_rows(conn)
    except psycopg.Error as exc:
        raise DemoError(
            f"counting the rows of the sample tables in database {DATABASE!r} failed", hint=pg_said(exc)
        ) from exc


def wal_position(dsn: str) -> Lsn:
    """The server's current WAL flush position: every committed change lies before it."""
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            row = conn.execute("select pg_current_wal_flush_lsn()::text").fetchone()
    except psycopg.Error as exc:
        raise DemoError("reading the WAL position of the demo server failed", hint=pg_said(exc)) from exc
    return Lsn.parse(str(row[0])) if row is not None else Lsn.ZERO


def slot_confirmed(dsn: str) -> Lsn | None:
    """How far the replicator has confirmed the demo slot (None: no slot yet)."""
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            row = conn.execute(
                "select confirmed_flush_lsn::text from pg_replication_slots where slot_name = %s", (SLOT,)
            ).fetchone()
    except psycopg.Error as exc:
        raise DemoError("reading the demo's replication slot failed", hint=pg_said(exc)) from exc
    return Lsn.parse(str(row[0])) if row is not None and row[0] is not None else None
