"""kill -9 at any moment, restart, and the Delta tables still equal their sources: no loss, no duplicate.

PostgreSQL 15 only, on the fault package's cluster (``db15``): what is killed is the daemon, and what
it resumes from — its Delta positions, and the slot's confirmed position that the server replays
from — works the same on 15 and 16 (the stream itself is tested on both in tests/integration).
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from deltalake import DeltaTable

from tests.support.daemon import Daemon, wait_converged, write_config
from tests.support.lake import table_path
from tests.support.pg import PgDatabase
from tests.support.workload import TABLES, Workload, create_schema

pytestmark = pytest.mark.slow


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    d = Daemon(tmp_path / "cfg.toml", tmp_path)
    yield d
    d.close()


def _assert_unique_keys(lake: Path) -> None:
    keys = {"public.accounts": ["id"], "public.ledger": ["acct", "entry"], "public.profiles": ["id"]}
    for table, key in keys.items():
        data = DeltaTable(str(table_path(lake, table))).to_pyarrow_table().select(key)
        rows = [tuple(r.values()) for r in data.to_pylist()]
        assert len(rows) == len(set(rows)), f"{table} holds a key twice"


def test_kill_9_at_random_moments_during_load_converges(
    db15: PgDatabase, tmp_lake: Path, daemon: Daemon
) -> None:
    pg = db15
    create_schema(pg, rows=300, seed=21)
    write_config(daemon.config, pg, tmp_lake, TABLES, batch={"max_rows": 400, "max_seconds": 0.2})
    rng = random.Random(2024)
    stop = threading.Event()
    errors: list[BaseException] = []

    def load() -> None:
        w = Workload(pg, seed=22)
        try:
            while not stop.is_set():
                w.run(20, concurrency=2)
                if rng.random() < 0.1:
                    w.large_transaction(900)  # spans several batches: partial positions
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    writer = threading.Thread(target=load, daemon=True)
    writer.start()
    try:
        for round_ in range(20):
            daemon.start()
            # the first round also covers a kill during the initial load
            time.sleep(rng.uniform(0.3, 2.5) if round_ else rng.uniform(0.5, 1.5))
            assert daemon.alive(), f"round {round_}: daemon died by itself:\n{daemon.output()}"
            daemon.kill()
    finally:
        stop.set()
        writer.join(timeout=60)
    assert not errors, errors
    daemon.start()
    wait_converged(pg, tmp_lake, TABLES, daemon=daemon, timeout=180)
    _assert_unique_keys(tmp_lake)
    assert daemon.stop() == 0


@pytest.mark.parametrize(
    "failpoint",
    ["after_table_commit=1", "after_table_commit=2", "before_confirm=1", "after_table_load=2"],
)
def test_crash_between_table_commits_and_confirm_applies_each_change_once(
    db15: PgDatabase, tmp_lake: Path, daemon: Daemon, failpoint: str
) -> None:
    pg = db15
    create_schema(pg, rows=40, seed=31)
    write_config(daemon.config, pg, tmp_lake, TABLES)
    if failpoint.startswith("after_table_load"):
        daemon.start(failpoints=failpoint)
        assert daemon.wait_exit(60) == -9
    else:
        daemon.start()
        wait_converged(pg, tmp_lake, TABLES, daemon=daemon)
        daemon.stop()
        Workload(pg, seed=32).run(30)  # multi-table transactions: one batch touches all tables
        daemon.start(failpoints=failpoint)
        assert daemon.wait_exit(60) == -9, daemon.output()
    daemon.start()
    wait_converged(pg, tmp_lake, TABLES, daemon=daemon, timeout=90)
    _assert_unique_keys(tmp_lake)
    assert daemon.stop() == 0
