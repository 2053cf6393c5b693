"""Logical decoding on a PostgreSQL 16 physical standby: the daemon never connects to the primary.

A module-wide pair: a PostgreSQL 16 primary (the pgserver wheel's binaries, whatever
$CDC_TEST_PG_VERSIONS says: this needs 16) and a streaming standby made with ``pg_basebackup -R``
and ``hot_standby_feedback = on``. The workload writes to the primary; the daemon reads the standby.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from cdc_replicator.demo.localpg import find_binaries
from tests.support.cluster import Cluster, Standby
from tests.support.daemon import Daemon, run_cli, wait_converged, write_config
from tests.support.pg import PgDatabase, create_test_database, drop_test_database
from tests.support.wait import wait_until
from tests.support.workload import TABLES, Workload, create_schema


@pytest.fixture(scope="module")
def pair() -> Iterator[tuple[Cluster, Standby]]:
    with Cluster(find_binaries(16), fast=True) as primary, Standby(primary) as standby:
        yield primary, standby


@pytest.fixture
def primary_db(pair: tuple[Cluster, Standby], request: pytest.FixtureRequest) -> Iterator[PgDatabase]:
    db = create_test_database(pair[0], request.node.name)
    yield db
    _drop_standby_slots(pair[1], db.name)
    drop_test_database(db)


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    d = Daemon(tmp_path / "cfg.toml", tmp_path)
    yield d
    d.close()


def _drop_standby_slots(standby: Cluster, dbname: str) -> None:
    """Drop the test database's slots on the standby once their walsenders are gone.

    A walsender whose slot creation the daemon gave up on may still be waiting (a PostgreSQL 16
    standby does not take a cancel there until the primary's transaction ends): end it first.
    """
    with psycopg.connect(standby.dsn(), autocommit=True) as conn:
        conn.execute(
            "select pg_terminate_backend(active_pid) from pg_replication_slots"
            " where database = %s and active_pid is not null",
            (dbname,),
        )
        wait_until(
            lambda: (
                not conn.execute(
                    "select 1 from pg_replication_slots where database = %s and active", (dbname,)
                ).fetchall()
            ),
            timeout=30,
            message=f"replication slots of {dbname} still active on the standby",
        )
        for (slot,) in conn.execute(
            "select slot_name from pg_replication_slots where database = %s", (dbname,)
        ).fetchall():
            conn.execute("select pg_drop_replication_slot(%s)", (slot,))


def _replica(primary_db: PgDatabase, standby: Cluster) -> PgDatabase:
    target = str(primary_db.query("select pg_current_wal_lsn()::text")[0][0])
    # asked on the standby's postgres database: the test database may not be replayed yet
    server = PgDatabase(name="postgres", dsn=standby.dsn(), cluster=standby)
    wait_until(
        lambda: server.query("select pg_last_wal_replay_lsn() >= %s::pg_lsn", (target,))[0][0],
        timeout=30,
        message="the standby did not replay the primary's writes",
    )
    return PgDatabase(name=primary_db.name, dsn=standby.dsn(primary_db.name), cluster=standby)


def _publish(db: PgDatabase, tables: list[str], name: str = "cdc_test") -> None:
    listed = ", ".join(tables)
    db.execute(f"create publication {name} for table {listed} with (publish_via_partition_root = true)")


def _sessions(db: PgDatabase) -> int:
    """Sessions (walsenders included) of cdc-replicator on ``db``'s server."""
    return int(
        db.query("select count(*) from pg_stat_activity where application_name like 'cdc-replicator%%'")[0][0]
    )


class Nudger:
    """Calls pg_log_standby_snapshot() on the primary every second, as the README advises for an
    idle primary, so that slot creation on the standby does not wait up to 15 s each time."""

    def __init__(self, primary: Cluster) -> None:
        self._dsn = primary.dsn()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Nudger:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        with psycopg.connect(self._dsn, autocommit=True) as conn:
            while not self._stop.wait(1.0):
                conn.execute("select pg_log_standby_snapshot()")


def test_logical_decoding_on_the_standby_converges_under_the_randomized_workload_and_kill_9(
    pair: tuple[Cluster, Standby], primary_db: PgDatabase, tmp_lake: Path, daemon: Daemon
) -> None:
    primary, standby = pair
    create_schema(primary_db, rows=150, seed=5)
    _publish(primary_db, TABLES)
    replica = _replica(primary_db, standby)
    write_config(daemon.config, replica, tmp_lake, TABLES, source_extra={"slot_create_timeout_seconds": 60})
    with Nudger(primary):
        daemon.start()
        wait_converged(primary_db, tmp_lake, TABLES, daemon=daemon, timeout=120)
        # the slot lives on the standby; the daemon holds no session on the primary
        assert (
            replica.query("select count(*) from pg_replication_slots where slot_name = 'cdc_test'")[0][0] == 1
        )
        assert (
            primary_db.query("select count(*) from pg_replication_slots where slot_name = 'cdc_test'")[0][0]
            == 0
        )
        assert _sessions(primary_db) == 0
        assert _sessions(replica) >= 1  # the daemon's sessions are tagged: the count above means something

        w = Workload(primary_db, seed=21)
        writer = threading.Thread(target=lambda: w.run(400, concurrency=3), daemon=True)
        writer.start()
        for delay in (1.0, 1.7):
            time.sleep(delay)
            daemon.kill()
            daemon.start()
        writer.join(timeout=180)
        assert not writer.is_alive()
        w.large_transaction(6000)
        wait_converged(primary_db, tmp_lake, TABLES, daemon=daemon, timeout=180)
        assert _sessions(primary_db) == 0
    assert daemon.stop() == 0, daemon.output()


def test_on_a_standby_a_missing_publication_and_feedback_off_are_clear_errors(
    pair: tuple[Cluster, Standby], primary_db: PgDatabase, tmp_lake: Path, daemon: Daemon
) -> None:
    _primary, standby = pair
    primary_db.execute("create table t (id int primary key, v text)")
    replica = _replica(primary_db, standby)
    write_config(daemon.config, replica, tmp_lake, ["public.t"])

    missing = run_cli(daemon.config, "run")
    assert missing.returncode == 3, missing.stderr
    assert "does not exist, and a standby cannot create it" in missing.stderr
    assert "create publication" in missing.stderr and "on the primary" in missing.stderr

    _publish(primary_db, ["public.t"])
    _replica(primary_db, standby)
    with psycopg.connect(standby.dsn(), autocommit=True) as conn:
        conn.execute("alter system set hot_standby_feedback = off")
        conn.execute("select pg_reload_conf()")
    try:
        wait_until(
            lambda: replica.query("show hot_standby_feedback")[0][0] == "off", timeout=10, message="no reload"
        )
        off = run_cli(daemon.config, "run")
        assert off.returncode == 3, off.stderr
        assert (
            "hot_standby_feedback is off" in off.stderr
            and "alter system set hot_standby_feedback = on" in off.stderr
        )
    finally:
        with psycopg.connect(standby.dsn(), autocommit=True) as conn:
            conn.execute("alter system reset hot_standby_feedback")
            conn.execute("select pg_reload_conf()")


def test_slot_creation_on_a_standby_that_cannot_become_consistent_times_out_naming_the_fix(
    pair: tuple[Cluster, Standby], primary_db: PgDatabase, tmp_lake: Path, daemon: Daemon
) -> None:
    _primary, standby = pair
    primary_db.execute("create table t (id int primary key, v text)")
    _publish(primary_db, ["public.t"])
    replica = _replica(primary_db, standby)
    write_config(
        daemon.config, replica, tmp_lake, ["public.t"], source_extra={"slot_create_timeout_seconds": 3}
    )
    # a transaction with an xid stays open on the primary: whatever running-transactions records
    # the primary logs meanwhile, the slot on the standby cannot become consistent, so it must wait
    with primary_db.connect() as open_txn:
        open_txn.execute("insert into t values (1, 'uncommitted')")
        _replica(primary_db, standby)
        started = time.monotonic()
        result = run_cli(daemon.config, "run", timeout=60)
        open_txn.rollback()
    assert result.returncode == 3, result.stderr
    assert "gave up waiting for replication slot 'cdc_test' to be created after 3s" in result.stderr
    assert "select pg_log_standby_snapshot();" in result.stderr
    assert time.monotonic() - started < 30


def test_a_slot_the_standby_invalidates_is_a_fatal_error_naming_the_re_sync(
    pair: tuple[Cluster, Standby], primary_db: PgDatabase, tmp_lake: Path, daemon: Daemon
) -> None:
    primary, standby = pair
    primary_db.execute("create table t (id int primary key, v text)")
    primary_db.execute("insert into t select g, 'v' from generate_series(1, 100) g")
    _publish(primary_db, ["public.t"])
    replica = _replica(primary_db, standby)
    write_config(
        daemon.config, replica, tmp_lake, ["public.t"], source_extra={"slot_create_timeout_seconds": 60}
    )
    with Nudger(primary):
        daemon.start()
        wait_converged(primary_db, tmp_lake, ["public.t"], daemon=daemon)
    assert daemon.stop() == 0, daemon.output()

    # the standby may keep only 1 MB of WAL for slots; the primary writes far more meanwhile
    with psycopg.connect(standby.dsn(), autocommit=True) as conn:
        conn.execute("alter system set max_slot_wal_keep_size = '1MB'")
        conn.execute("select pg_reload_conf()")
    try:
        for _ in range(3):
            primary_db.execute("insert into t select g, repeat('x', 500) from generate_series(1000, 20000) g")
            primary_db.execute("delete from t where id >= 1000")
            primary_db.execute("select pg_switch_wal()")
        primary_db.execute("checkpoint")
        _replica(primary_db, standby)

        def lost() -> bool:
            with psycopg.connect(standby.dsn(), autocommit=True) as conn:
                conn.execute("checkpoint")  # a restartpoint removes the old WAL and invalidates the slot
                row = conn.execute(
                    "select wal_status from pg_replication_slots where slot_name = 'cdc_test'"
                ).fetchone()
            return row is not None and row[0] == "lost"

        wait_until(lost, timeout=60, message="the standby never invalidated the slot")
        result = run_cli(daemon.config, "run", timeout=60)
        assert result.returncode == 4, result.stderr
        assert "invalidated" in result.stderr and "snapshot" in result.stderr, result.stderr
    finally:
        with psycopg.connect(standby.dsn(), autocommit=True) as conn:
            conn.execute("alter system reset max_slot_wal_keep_size")
            conn.execute("select pg_reload_conf()")
