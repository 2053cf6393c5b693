"""The demo's live workload: a thread writing sample transactions into ``shop`` until stopped.

New orders with their items (multi-table transactions), status changes, cancellations that delete
rows, new customers, and now and then a larger transaction; from a few to a few hundred changes per
second, in phases of a few seconds. Deterministic for a given seed, apart from timing.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from decimal import Decimal
from random import Random
from typing import Any, Final

import psycopg

from cdc_replicator.demo import DemoError
from cdc_replicator.demo.shop import FIRST_NAMES, LAST_NAMES, Seeded, pg_said

__all__ = ["Workload"]

logger = logging.getLogger(__name__)

# Target transactions per second (about 2.5 changes each), one after the other, each for a few
# seconds, then round again: from a handful of changes per second to a few hundred.
_RATES: Final = (15.0, 60.0, 150.0, 60.0, 15.0, 3.0)
_RATE_PHASE_SECONDS: Final = 3.0
_JOIN_TIMEOUT: Final = 30.0  # seconds stop() waits for the thread

_Step = Callable[[psycopg.Connection[Any]], None]


def _rate_at(elapsed: float) -> float:
    """The workload's target rate ``elapsed`` seconds after it started."""
    return _RATES[int(elapsed // _RATE_PHASE_SECONDS) % len(_RATES)]


class Workload:
    """A background thread writing sample transactions until ``stop()``; one connection of its own."""

    def __init__(self, dsn: str, seeded: Seeded, *, seed: int = 1) -> None:
        self._dsn = dsn
        self._rng = Random(seed)
        self._max_customer = seeded.max_customer_id
        self._max_order = seeded.max_order_id
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cdc-demo-workload", daemon=True)
        # (the random draw below which a step is taken, the step): the mix of one transaction
        self._mix: tuple[tuple[float, _Step], ...] = (
            (0.35, self._new_order),
            (0.65, self._advance_status),
            (0.73, self._cancel_order),
            (0.83, self._new_customer),
            (0.90, self._change_email),
            (0.99, self._change_quantity),
            (1.00, self._deliver_shipped),
        )
        self.transactions = 0  # written by the workload thread only
        self.error: Exception | None = None

    def start(self) -> None:
        self._thread.start()

    def alive(self) -> bool:
        return self._thread.is_alive()

    def stop(self, *, check: bool = True) -> None:
        """Stop and wait for the thread; with ``check``, raise DemoError if the workload had failed."""
        self._stop.set()
        if self._thread.ident is not None:
            self._thread.join(_JOIN_TIMEOUT)
        if check and self.error is not None:
            raise DemoError("the sample workload failed", hint=pg_said(self.error)) from self.error

    def _run(self) -> None:
        try:
            with psycopg.connect(self._dsn, autocommit=True) as conn:
                began = time.monotonic()
                while not self._stop.is_set():
                    self._step(conn)
                    self.transactions += 1
                    self._stop.wait(self._rng.expovariate(_rate_at(time.monotonic() - began)))
        except Exception as exc:  # handed to the main thread through stop()
            logger.debug("workload failed", exc_info=True)
            self.error = exc

    def _step(self, conn: psycopg.Connection[Any]) -> None:
        draw = self._rng.random()  # in [0, 1): below the last bound, always
        for below, step in self._mix:
            if draw < below:
                step(conn)
                return

    def _recent_order(self) -> int:
        return max(1, self._max_order - self._rng.randrange(300))

    def _new_order(self, conn: psycopg.Connection[Any]) -> None:
        """One order and its items in one transaction (a multi-table transaction)."""
        rng = self._rng
        with conn.transaction():
            row = conn.execute(
                "insert into public.orders (customer_id, amount, status) values (%s, %s, 'new') returning id",
                (rng.randint(1, self._max_customer), Decimal(rng.randrange(500, 50_000)) / 100),
            ).fetchone()
            order_id = int(row[0]) if row is not None else 0
            for line in range(1, rng.randint(1, 4) + 1):
                conn.execute(
                    "insert into public.order_items (order_id, line, sku, qty) values (%s, %s, %s, %s)",
                    (order_id, line, f"SKU-{rng.randrange(500):04d}", rng.randint(1, 5)),
                )
        self._max_order = max(self._max_order, order_id)

    def _advance_status(self, conn: psycopg.Connection[Any]) -> None:
        conn.execute(
            "update public.orders set status = case status when 'new' then 'paid'"
            " when 'paid' then 'shipped' when 'shipped' then 'delivered' else status end,"
            " updated_at = now() where id = %s and status <> 'delivered'",
            (self._recent_order(),),
        )

    def _cancel_order(self, conn: psycopg.Connection[Any]) -> None:
        """Delete an order and its items in one transaction."""
        order_id = self._rng.randint(1, self._max_order)
        with conn.transaction():
            conn.execute("delete from public.order_items where order_id = %s", (order_id,))
            conn.execute("delete from public.orders where id = %s", (order_id,))

    def _new_customer(self, conn: psycopg.Connection[Any]) -> None:
        rng = self._rng
        row = conn.execute(
            "insert into public.customers (name, email) values (%s, %s) returning id",
            (
                f"{rng.choice(FIRST_NAMES)} {rng.choice(LAST_NAMES)}",
                f"new{rng.randrange(10**9)}@example.com",
            ),
        ).fetchone()
        self._max_customer = max(self._max_customer, int(row[0]) if row is not None else 0)

    def _change_email(self, conn: psycopg.Connection[Any]) -> None:
        customer_id = self._rng.randint(1, self._max_customer)
        conn.execute(
            "update public.customers set email = %s where id = %s",
            (f"changed{self._rng.randrange(10**9)}@example.com", customer_id),
        )

    def _change_quantity(self, conn: psycopg.Connection[Any]) -> None:
        conn.execute(
            "update public.order_items set qty = qty + 1 where order_id = %s and line = 1",
            (self._recent_order(),),
        )

    def _deliver_shipped(self, conn: psycopg.Connection[Any]) -> None:
        """Now and then a larger transaction: mark a few dozen shipped orders delivered."""
        conn.execute(
            "update public.orders set status = 'delivered', updated_at = now() where id in"
            " (select id from public.orders where status = 'shipped' order by id limit %s)",
            (self._rng.randint(20, 60),),
        )
