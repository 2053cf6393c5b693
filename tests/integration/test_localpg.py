"""LocalPostgres, the tests' Cluster and Standby, and the pg fixtures: the clusters every other test stands on."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any, LiteralString

import psycopg
import pytest
from psycopg.abc import Params

from cdc_replicator.demo.localpg import LocalPostgres, PgBinaries, find_binaries
from cdc_replicator.errors import SourceError
from tests.support.cluster import Cluster, Standby
from tests.support.pg import PgDatabase, create_test_database, drop_test_database
from tests.support.wait import wait_until


@pytest.fixture
def own_cluster(pg_binaries: PgBinaries) -> Iterator[Cluster]:
    """A private cluster for tests that stop, restart or crash it."""
    with Cluster(pg_binaries, fast=True) as cluster:
        yield cluster


def _rows(dsn: str, query: LiteralString, params: Params | None = None) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return conn.execute(query, params).fetchall()


def test_the_session_cluster_runs_the_requested_version_with_logical_wal(
    pg: PgDatabase, pg_binaries: PgBinaries
) -> None:
    assert pg.query("select current_setting('server_version_num')::int / 10000") == [(pg_binaries.version,)]
    assert pg.query("show wal_level") == [("logical",)]
    assert pg.query("show max_replication_slots") == [("20",)]
    assert pg.query("show fsync") == [("off",)]
    assert pg.cluster.dsn().startswith(f"postgresql://postgres@127.0.0.1:{pg.cluster.port}/")


def test_each_test_database_starts_empty_and_is_distinct(pg: PgDatabase, pg_cluster: Cluster) -> None:
    assert pg.query("select count(*) from pg_class where relnamespace = 'public'::regnamespace") == [(0,)]
    assert pg.query("select current_database()") == [(pg.name,)]
    pg.execute("create table only_here (id int primary key)")

    other = create_test_database(pg_cluster, "other")
    try:
        assert other.name != pg.name
        assert other.query("select to_regclass('only_here') is null") == [(True,)]
    finally:
        drop_test_database(other)


def test_dropping_a_test_database_drops_its_replication_slots_even_while_streaming(
    pg_cluster: Cluster,
) -> None:
    db = create_test_database(pg_cluster, "slots")
    db.execute("select pg_create_logical_replication_slot('held', 'pgoutput')")
    walsender = psycopg.connect(db.dsn, autocommit=True, replication="database")
    try:
        # A walsender streaming from the slot, as a replicator would. Replication commands are not
        # SQL: their grammar wants upper-case keywords.
        walsender.execute(
            "START_REPLICATION SLOT held LOGICAL 0/0 (proto_version '1', publication_names 'none')"
        )
        assert _rows(
            pg_cluster.dsn(), "select active from pg_replication_slots where slot_name = 'held'"
        ) == [(True,)]
        drop_test_database(db)
    finally:
        walsender.close()  # not "with": leaving the block would send COMMIT into the COPY stream

    assert _rows(pg_cluster.dsn(), "select slot_name from pg_replication_slots") == []
    assert _rows(pg_cluster.dsn(), "select 1 from pg_database where datname = %s", (db.name,)) == []


def test_restart_keeps_the_data_and_the_port(own_cluster: Cluster) -> None:
    dsn = own_cluster.create_database("keep")
    port = own_cluster.port
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("create table t (id int primary key)")
        conn.execute("insert into t values (1), (2)")

    own_cluster.restart()

    assert own_cluster.port == port
    assert _rows(dsn, "select id from t order by id") == [(1,), (2,)]


def test_kill_then_start_again_recovers_committed_rows(own_cluster: Cluster) -> None:
    dsn = own_cluster.create_database("crash")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("create table t (id int primary key)")
        conn.execute("insert into t values (1)")

    own_cluster.kill()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(dsn, connect_timeout=5).close()
    own_cluster.start_again()

    assert _rows(dsn, "select id from t") == [(1,)]
    assert "automatic recovery in progress" in own_cluster.log_path.read_text()


def test_stop_then_start_again_keeps_the_data(own_cluster: Cluster) -> None:
    dsn = own_cluster.create_database("stopped")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("create table t as select 7 as id")

    own_cluster.stop()
    assert not own_cluster.running
    own_cluster.start_again()

    assert _rows(dsn, "select id from t") == [(7,)]


def test_cleanup_stops_the_server_and_removes_its_directory(pg_binaries: PgBinaries) -> None:
    with LocalPostgres(pg_binaries, fast=True) as cluster:
        base, dsn = cluster.base_dir, cluster.dsn()
        assert base.is_dir()

    assert not base.exists()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(dsn, connect_timeout=5).close()


def test_cleanup_does_not_wait_for_a_stuck_replication_client(pg_binaries: PgBinaries) -> None:
    with LocalPostgres(pg_binaries, fast=True, timeout=30) as cluster:
        walsender = psycopg.connect(cluster.dsn(), autocommit=True, replication="database")
        try:
            walsender.execute("CREATE_REPLICATION_SLOT stuck LOGICAL pgoutput")
            # Streams, but never reads nor confirms: a fast shutdown would wait for it to confirm
            # the shutdown checkpoint, which it never does.
            walsender.execute(
                "START_REPLICATION SLOT stuck LOGICAL 0/0 (proto_version '1', publication_names 'none')"
            )
            assert _rows(cluster.dsn(), "select active from pg_replication_slots") == [(True,)]

            began = time.monotonic()
            cluster.cleanup()
            assert time.monotonic() - began < 10
            assert not cluster.running
        finally:
            walsender.close()


def test_a_server_that_cannot_start_raises_with_the_log_lines(pg_binaries: PgBinaries) -> None:
    cluster = LocalPostgres(pg_binaries, fast=True, settings={"shared_buffers": "lots"})
    try:
        with pytest.raises(SourceError, match="shared_buffers") as info:
            cluster.start()
        assert str(cluster.log_path) in str(info.value)
    finally:
        cluster.cleanup()


def test_a_server_that_cannot_start_in_a_with_block_leaves_nothing_behind(pg_binaries: PgBinaries) -> None:
    cluster = LocalPostgres(pg_binaries, fast=True, settings={"shared_buffers": "lots"})
    with pytest.raises(SourceError, match="shared_buffers"), cluster:
        pytest.fail("the block ran although the server did not start")

    assert not cluster.base_dir.exists()
    assert not cluster.running


def test_a_standby_is_in_recovery_and_replicates_a_row(pg: PgDatabase, pg_cluster: Cluster) -> None:
    pg.execute("create table t (id int primary key, note text)")
    with Standby(pg_cluster) as standby:
        on_standby = standby.dsn(pg.name)
        assert _rows(on_standby, "select pg_is_in_recovery()") == [(True,)]
        assert _rows(on_standby, "show hot_standby_feedback") == [("on",)]

        pg.execute("insert into t values (1, 'from the primary')")

        wait_until(
            lambda: _rows(on_standby, "select id, note from t"),
            timeout=15,
            message="the row inserted on the primary never reached the standby",
        )
        assert _rows(on_standby, "select id, note from t") == [(1, "from the primary")]


def test_an_unavailable_version_fails_with_an_install_hint() -> None:
    with pytest.raises(SourceError) as info:
        find_binaries(99)
    assert info.value.hint == "apt-get install postgresql-99"
