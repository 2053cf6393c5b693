"""A seeded, reproducible OLTP workload on three tables that exercises every change the stream carries.

Inserts, updates, deletes, key updates, updates leaving a TOASTed column unchanged (under both
REPLICA IDENTITY DEFAULT and FULL), multi-table transactions, interleaved concurrent transactions
committed in random order, rollbacks, savepoints rolled back, a truncate, and one large transaction.
"""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass, field
from typing import Any

import psycopg

from tests.support.pg import PgDatabase

__all__ = ["TABLES", "Workload", "create_schema"]

TABLES = ("public.accounts", "public.ledger", "public.profiles")

_SCHEMA = """
create table accounts (
    id bigint primary key,
    balance numeric(12,2) not null,
    owner text,
    big text,
    opened_at timestamptz,
    active boolean,
    doc jsonb,
    blob bytea,
    score double precision,
    born date,
    ref uuid
);
alter table accounts alter column big set storage external;
create table ledger (
    acct int not null,
    entry text not null,
    amount numeric(10,2),
    at timestamp,
    primary key (acct, entry)
);
create table profiles (
    id int primary key,
    bio text,
    visits int
);
alter table profiles alter column bio set storage external;
alter table profiles replica identity full;
"""


def create_schema(db: PgDatabase, *, rows: int = 200, seed: int = 1) -> None:
    """Create the tables with some initial rows (the initial load copies them)."""
    db.execute(_SCHEMA)
    w = Workload(db, seed=seed)
    with db.connect() as conn:
        for _ in range(rows):
            w._insert_account(conn)
        for _ in range(rows // 4):
            w._insert_profile(conn)
        for _ in range(rows // 2):
            w._insert_ledger(conn)
        conn.commit()


@dataclass
class Workload:
    db: PgDatabase
    seed: int = 0
    rng: random.Random = field(init=False)
    next_id: int = field(init=False)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self.next_id = 1_000_000 * (self.seed + 1)

    # ---- row makers ----------------------------------------------------------------------

    def _big(self) -> str:
        # incompressible enough, and > 2 kB, so it is stored out of line (TOAST)
        return "".join(f"{self.rng.getrandbits(64):016x}" for _ in range(200))

    def _new_id(self) -> int:
        self.next_id += 1
        return self.next_id

    def _insert_account(self, conn: psycopg.Connection[Any]) -> None:
        r = self.rng
        conn.execute(
            "insert into accounts (id, balance, owner, big, opened_at, active, doc, blob, score, born, ref) "
            "values (%s, %s, %s, %s, now() - %s * interval '1 second', %s, %s, %s, %s, %s, %s)",
            (
                self._new_id(),
                round(r.uniform(-1e6, 1e6), 2),
                r.choice(["ann", "bo", "chen", "dörte", "émile", None, "", "o'neil"]),
                self._big() if r.random() < 0.5 else None,
                r.randint(0, 10**8),
                r.choice([True, False, None]),
                psycopg.types.json.Jsonb({"k": r.randint(0, 9), "tags": ["a", "b"][: r.randint(0, 2)]}),
                r.randbytes(r.randint(0, 40)) if r.random() < 0.8 else None,
                r.choice([r.uniform(-1, 1), float("nan"), float("inf"), float("-inf"), None, 0.0]),
                r.choice(["2024-02-29", "1999-12-31", None, "0001-01-01"]),
                uuid.UUID(int=r.getrandbits(128)),
            ),
        )

    def _insert_profile(self, conn: psycopg.Connection[Any]) -> None:
        conn.execute(
            "insert into profiles (id, bio, visits) values (%s, %s, %s)",
            (self._new_id(), self._big(), self.rng.randint(0, 100)),
        )

    def _insert_ledger(self, conn: psycopg.Connection[Any]) -> None:
        r = self.rng
        conn.execute(
            "insert into ledger (acct, entry, amount, at) values (%s, %s, %s, now()) on conflict do nothing",
            (r.randint(1, 50), f"e{r.randint(1, 10**9)}", round(r.uniform(-1000, 1000), 2)),
        )

    def _pick(self, conn: psycopg.Connection[Any], table: str) -> int | None:
        # deterministic for a given table content: the row at a seeded fraction of the id order
        row = conn.execute(
            f"select id from {table} order by id offset (select floor(%s * count(*)) from {table}) limit 1",  # noqa: S608
            (self.rng.random(),),
        ).fetchone()
        return None if row is None else int(row[0])

    # ---- operations ----------------------------------------------------------------------

    def _op(self, conn: psycopg.Connection[Any]) -> None:
        r = self.rng
        x = r.random()
        if x < 0.25:
            self._insert_account(conn)
        elif x < 0.40:
            i = self._pick(conn, "accounts")
            if i is not None:
                # leaves big (TOAST) unchanged: pgoutput sends it as 'u'
                conn.execute(
                    "update accounts set balance = balance + %s, active = not active where id = %s",
                    (round(r.uniform(-50, 50), 2), i),
                )
        elif x < 0.47:
            i = self._pick(conn, "accounts")
            if i is not None:
                conn.execute(
                    "update accounts set big = %s, owner = %s where id = %s", (self._big(), "new", i)
                )
        elif x < 0.55:
            i = self._pick(conn, "accounts")
            if i is not None:
                conn.execute("delete from accounts where id = %s", (i,))
        elif x < 0.60:
            i = self._pick(conn, "accounts")
            if i is not None:
                conn.execute("update accounts set id = %s where id = %s", (self._new_id(), i))
        elif x < 0.70:
            self._insert_ledger(conn)
        elif x < 0.75:
            conn.execute(
                "update ledger set amount = amount * 2 where (acct, entry) in "
                "(select acct, entry from ledger order by acct, entry offset (select floor(%s * count(*)) from ledger) limit 2)",
                (r.random(),),
            )
        elif x < 0.78:
            conn.execute(
                "update ledger set entry = entry || 'x' where (acct, entry) in "
                "(select acct, entry from ledger order by acct, entry offset (select floor(%s * count(*)) from ledger) limit 1)",
                (r.random(),),
            )
        elif x < 0.82:
            conn.execute(
                "delete from ledger where (acct, entry) in (select acct, entry from ledger order by acct, entry offset (select floor(%s * count(*)) from ledger) limit 1)",
                (r.random(),),
            )
        elif x < 0.88:
            self._insert_profile(conn)
        elif x < 0.95:
            i = self._pick(conn, "profiles")
            if i is not None:
                # REPLICA IDENTITY FULL: the old row fills the unchanged TOASTed bio
                conn.execute("update profiles set visits = visits + 1 where id = %s", (i,))
        else:
            i = self._pick(conn, "profiles")
            if i is not None:
                conn.execute("delete from profiles where id = %s", (i,))

    def transaction(self, conn: psycopg.Connection[Any]) -> None:
        """One random transaction: 1–8 operations, sometimes a rolled-back savepoint, 5 % rollback.

        A statement that waits on a row lock held by an interleaved transaction, or collides on a
        key, rolls its transaction back (lock_timeout is short): the source stays consistent.
        """
        r = self.rng
        try:
            for _ in range(r.randint(1, 8)):
                self._op(conn)
                if r.random() < 0.05:
                    conn.execute("savepoint s")
                    self._op(conn)
                    conn.execute("rollback to savepoint s")
            if r.random() < 0.05:
                conn.rollback()
            else:
                conn.commit()
        except (psycopg.errors.LockNotAvailable, psycopg.errors.UniqueViolation):
            conn.rollback()

    def run(self, transactions: int, *, concurrency: int = 3) -> None:
        """Run ``transactions`` transactions spread over interleaved connections."""
        conns: list[psycopg.Connection[Any]] = []
        try:  # a server going down mid-way leaves no connection open (the chaos soak restarts it)
            for _ in range(concurrency):
                conns.append(self.db.connect())
                conns[-1].execute("set lock_timeout = '50ms'")
                conns[-1].commit()
            done = 0
            while done < transactions:
                c = self.rng.choice(conns)
                self.transaction(c)
                done += 1
                # interleave: leave another connection's transaction open across this one
                other = self.rng.choice(conns)
                if other is not c and self.rng.random() < 0.3:
                    try:
                        self._op(other)  # committed by that connection's next transaction
                    except (psycopg.errors.LockNotAvailable, psycopg.errors.UniqueViolation):
                        other.rollback()
            for c in conns:
                c.commit()
        finally:
            for c in conns:
                c.close()

    def truncate_ledger(self) -> None:
        with self.db.connect() as conn:
            self._insert_ledger(conn)
            conn.execute("truncate ledger")
            for _ in range(5):
                self._insert_ledger(conn)
            conn.commit()

    def large_transaction(self, rows: int) -> None:
        """One transaction touching ``rows`` rows (inserts then updates), bigger than any batch."""
        with self.db.connect() as conn:
            base = self.next_id + 1
            self.next_id += rows
            conn.execute(
                "insert into accounts (id, balance, owner) select g, g %% 1000, 'bulk' "
                "from generate_series(%s::bigint, %s::bigint) g",
                (base, base + rows - 1),
            )
            conn.execute(
                "update accounts set balance = balance + 1 where id between %s and %s",
                (base, base + rows // 2),
            )
            conn.commit()
