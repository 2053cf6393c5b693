"""The source server crashes (SIGKILL of every postgres process, or ``pg_ctl stop -m immediate``)
mid-stream and mid-load: the daemon waits with back-off, says why it is not ready, and once the
server is back the Delta tables equal the source, nothing lost or doubled.

Each test has a cluster of its own (the session cluster is not disturbed): PostgreSQL 15 only —
crash recovery is the server's, and the daemon's side of it does not differ between versions.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from deltalake import DeltaTable

from cdc_replicator.demo.localpg import find_binaries
from tests.support.cluster import Cluster
from tests.support.daemon import Daemon, wait_converged, write_config
from tests.support.http import get_json
from tests.support.lake import table_path
from tests.support.pg import PgDatabase, create_test_database, drop_test_database
from tests.support.wait import wait_until
from tests.support.workload import TABLES, Workload, create_schema

pytestmark = pytest.mark.slow


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    with Cluster(find_binaries(15), fast=True) as c:
        yield c


@pytest.fixture
def db(cluster: Cluster, request: pytest.FixtureRequest) -> Iterator[PgDatabase]:
    d = create_test_database(cluster, request.node.name)
    yield d
    if not cluster.running:
        cluster.start_again()
    drop_test_database(d)


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    d = Daemon(tmp_path / "cfg.toml", tmp_path)
    yield d
    d.close()


class Writer:
    """The workload in a thread that keeps going across the crash: a failed transaction is dropped.

    A transaction cut by the crash may or may not have committed; the comparison reads the
    source afterwards, so either is fine.
    """

    def __init__(self, db: PgDatabase, seed: int) -> None:
        self._db = db
        self._w = Workload(db, seed=seed)
        self._stop = threading.Event()
        self.committed_rounds = 0
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Writer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=60)
        assert not self._thread.is_alive(), "the writer did not stop"

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                with self._db.connect() as conn:  # closed even when the server dies under it
                    conn.execute("set lock_timeout = '50ms'")
                    conn.commit()
                    for _ in range(10):
                        self._w.transaction(conn)
                self.committed_rounds += 1
            except psycopg.OperationalError:
                self._stop.wait(0.2)  # the server is down: try again soon


def _assert_unique_keys(lake: Path) -> None:
    keys = {"public.accounts": ["id"], "public.ledger": ["acct", "entry"], "public.profiles": ["id"]}
    for table, key in keys.items():
        data = DeltaTable(str(table_path(lake, table))).to_pyarrow_table().select(key)
        rows = [tuple(r.values()) for r in data.to_pylist()]
        assert len(rows) == len(set(rows)), f"{table} holds a key twice"


def _retries(daemon: Daemon) -> int:
    return daemon.logs[-1].read_text(errors="replace").count("retrying in")


def _waits_for_the_source(base: str, daemon: Daemon) -> None:
    """While the server is down: not ready, saying why, but alive (the back-off is on purpose), and
    retrying more than once."""
    before = _retries(daemon)
    wait_until(
        lambda: get_json(base + "/readyz")[1]["phase"] == "retrying",
        timeout=30,
        message="never retrying while the server was down",
    )
    code, ready = get_json(base + "/readyz")
    assert code == 503 and ready["ready"] is False and ready["connected"] is False, ready
    assert any("source unavailable" in r for r in ready["reasons"]), ready
    code, live = get_json(base + "/healthz")
    assert code == 200 and live["alive"] is True, live
    wait_until(lambda: _retries(daemon) >= before + 2, timeout=30, message="fewer than 2 retries")
    assert daemon.alive(), daemon.output()


def test_server_crashes_mid_load_and_mid_stream_are_waited_out_and_the_tables_converge(
    cluster: Cluster, db: PgDatabase, tmp_lake: Path, daemon: Daemon
) -> None:
    create_schema(db, rows=100, seed=51)
    db.execute("create table wide (id int primary key, pad text)")
    db.execute("insert into wide select g, repeat(md5(g::text), 4) from generate_series(1, 40000) g")
    tables = [*TABLES, "public.wide"]
    write_config(daemon.config, db, tmp_lake, tables, server={})
    daemon.config.write_text(daemon.config.read_text() + "[snapshot]\nparallel = 2\nchunk_rows = 3000\n")
    daemon.start()
    base = daemon.http_address()

    # 1. mid-load: pg_ctl stop -m immediate (no shutdown checkpoint) while chunks are being written
    def loading_some_chunks() -> bool:
        assert daemon.alive(), daemon.output()
        wide = table_path(tmp_lake, "public.wide")
        return (
            get_json(base + "/readyz")[1].get("phase") == "loading" and len(list(wide.glob("*.parquet"))) >= 2
        )

    wait_until(loading_some_chunks, timeout=60, interval=0.05, message="the load never wrote a chunk")
    cluster.stop("immediate")
    try:
        _waits_for_the_source(base, daemon)
    finally:
        cluster.start_again()
    wait_until(lambda: get_json(base + "/readyz")[0] == 200, timeout=120, message="not ready after the load")
    assert "initial load resumed" in daemon.logs[-1].read_text(errors="replace"), "the load started over"

    # 2. mid-stream: every server process SIGKILLed (a power cut) while the workload writes
    with Writer(db, seed=52) as writer:
        wait_until(lambda: writer.committed_rounds >= 2, timeout=60, message="the workload never ran")
        cluster.kill()
        try:
            _waits_for_the_source(base, daemon)
        finally:
            cluster.start_again()
        rounds = writer.committed_rounds
        wait_until(lambda: writer.committed_rounds >= rounds + 2, timeout=60, message="no writes after")
    wait_until(lambda: get_json(base + "/readyz")[0] == 200, timeout=60, message="not ready again")
    wait_converged(db, tmp_lake, tables, daemon=daemon, timeout=90)
    _assert_unique_keys(tmp_lake)
    assert daemon.stop() == 0
