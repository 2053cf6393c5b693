"""The daemon keeps Delta tables equal to their source tables, on a real PostgreSQL and real Delta tables."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from deltalake import DeltaTable

from tests.support.daemon import Daemon, wait_converged, write_config
from tests.support.lake import table_path
from tests.support.pg import PgDatabase, versions_from_env
from tests.support.wait import wait_until
from tests.support.workload import TABLES, Workload, create_schema


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    d = Daemon(tmp_path / "cfg.toml", tmp_path)
    yield d
    d.close()


def _slot_confirmed(pg: PgDatabase, slot: str) -> str:
    rows = pg.query(
        "select confirmed_flush_lsn::text from pg_replication_slots where slot_name = %s", (slot,)
    )
    return str(rows[0][0]) if rows else ""


# Where the reader runs (a process or a thread of the daemon) is the daemon's choice and does not
# depend on the server: those two variants run on the newest version only, the protocols on all.
_NEWEST = versions_from_env()[-1]
_VARIANTS = [
    *(
        pytest.param(streaming, "process", v, id=f"{name}-pg{v}")
        for v in versions_from_env()
        for streaming, name in ((False, "proto1"), (True, "proto2-streaming"))
    ),
    pytest.param(False, "thread", _NEWEST, id=f"proto1-reader-thread-pg{_NEWEST}"),
    pytest.param(True, "thread", _NEWEST, id=f"proto2-streaming-reader-thread-pg{_NEWEST}"),
]


@pytest.mark.parametrize(("streaming", "reader", "pg_binaries"), _VARIANTS, indirect=["pg_binaries"])
def test_randomized_workload_converges_row_for_row(
    pg: PgDatabase, tmp_path: Path, tmp_lake: Path, daemon: Daemon, streaming: bool, reader: str
) -> None:
    create_schema(pg, rows=150, seed=7)
    if streaming:
        # make the server stream in-progress transactions early
        pg.execute("alter system set logical_decoding_work_mem = '64kB'")
        pg.execute("select pg_reload_conf()")
    try:
        write_config(
            daemon.config, pg, tmp_lake, TABLES, source_extra={"streaming": streaming, "reader": reader}
        )
        daemon.start()
        wait_converged(pg, tmp_lake, TABLES, daemon=daemon, timeout=90)
        daemon.wait_streaming()  # the reader logs its kind when the stream starts, after the load
        assert f"reader={reader}" in daemon.output(last=10_000)

        w = Workload(pg, seed=11)
        w.run(300, concurrency=3)
        w.truncate_ledger()
        w.large_transaction(12_000)  # larger than max_rows = 5000: applied in several Delta commits
        w.run(100, concurrency=2)
        wait_converged(pg, tmp_lake, TABLES, daemon=daemon, timeout=120)
        assert daemon.stop() == 0
    finally:
        if streaming:
            pg.execute("alter system reset logical_decoding_work_mem")
            pg.execute("select pg_reload_conf()")


def test_idle_slot_keeps_advancing_without_writes_to_replicated_tables(
    pg: PgDatabase, tmp_lake: Path, daemon: Daemon
) -> None:
    pg.execute("create table t (id int primary key, v text); create table other (id int)")
    write_config(daemon.config, pg, tmp_lake, ["public.t"])
    daemon.start()
    wait_converged(pg, tmp_lake, ["public.t"], daemon=daemon)
    before = _slot_confirmed(pg, "cdc_test")
    # WAL moves on through a table that is not replicated; the slot must follow (keepalive confirm)
    pg.execute("insert into other select generate_series(1, 1000)")
    target = str(pg.query("select pg_current_wal_lsn()::text")[0][0])
    wait_until(
        lambda: pg.query(
            "select confirmed_flush_lsn >= %s::pg_lsn from pg_replication_slots where slot_name = 'cdc_test'",
            (target,),
        )[0][0],
        timeout=30,
        message=f"slot did not advance past {target} (was {before})",
    )
    assert daemon.stop() == 0


def test_each_table_commit_carries_its_position_and_replay_adds_nothing(
    pg: PgDatabase, tmp_lake: Path, daemon: Daemon
) -> None:
    pg.execute("create table t (id int primary key, v text)")
    pg.execute("insert into t select g, 'v' || g from generate_series(1, 100) g")
    write_config(daemon.config, pg, tmp_lake, ["public.t"])
    daemon.start()
    wait_converged(pg, tmp_lake, ["public.t"], daemon=daemon)
    pg.execute("update t set v = 'changed' where id <= 10")
    wait_converged(pg, tmp_lake, ["public.t"], daemon=daemon)
    assert daemon.stop() == 0
    dt = DeltaTable(str(table_path(tmp_lake, "public.t")))
    version = dt.version()
    position = dt.transaction_version("cdc-replicator/cdc_test/public.t")
    assert position is not None and position > 0
    # rewind the slot's view by restarting: nothing new, so the table must not change at all
    daemon.start()
    wait_until(
        lambda: "streaming" in daemon.output(200), timeout=30, message="daemon did not start streaming"
    )
    assert daemon.stop() == 0
    dt = DeltaTable(str(table_path(tmp_lake, "public.t")))
    assert dt.version() == version
    rows = dt.to_pyarrow_table().to_pylist()
    assert sorted((r["id"], r["_cdc_op"]) for r in rows if r["id"] <= 10) == [(i, "u") for i in range(1, 11)]
    assert {r["_cdc_op"] for r in rows if r["id"] > 10} == {"r"}


def test_soft_delete_keeps_the_row_marked_deleted(pg: PgDatabase, tmp_lake: Path, daemon: Daemon) -> None:
    pg.execute("create table t (id int primary key, v text)")
    pg.execute("insert into t values (1, 'a'), (2, 'b')")
    write_config(daemon.config, pg, tmp_lake, ["public.t"], table_extra={"public.t": {"soft_delete": True}})
    daemon.start()
    wait_converged(pg, tmp_lake, ["public.t"], daemon=daemon)
    pg.execute("delete from t where id = 1")

    def deleted() -> list[dict[str, object]]:
        rows = DeltaTable(str(table_path(tmp_lake, "public.t"))).to_pyarrow_table().to_pylist()
        return [r for r in rows if r["id"] == 1 and r["_cdc_deleted"]]

    [row] = wait_until(deleted, timeout=30, message="row 1 not marked deleted")
    assert row["v"] == "a" and row["_cdc_op"] == "d"

    # TRUNCATE marks every row deleted, in the same commit as what follows it
    pg.execute("begin; truncate t; insert into t values (3, 'c'); commit")

    def after_truncate() -> list[tuple[object, ...]] | None:
        rows = DeltaTable(str(table_path(tmp_lake, "public.t"))).to_pyarrow_table().to_pylist()
        got = sorted((r["id"], r["v"], r["_cdc_deleted"]) for r in rows)
        return got if got == [(1, "a", True), (2, "b", True), (3, "c", False)] else None

    wait_until(after_truncate, timeout=30, message="truncate not applied as soft deletes")
    assert daemon.stop() == 0


def test_postgres_restart_while_streaming_is_survived(pg: PgDatabase, tmp_lake: Path, daemon: Daemon) -> None:
    create_schema(pg, rows=50, seed=3)
    write_config(daemon.config, pg, tmp_lake, TABLES)
    daemon.start()
    wait_converged(pg, tmp_lake, TABLES, daemon=daemon)
    w = Workload(pg, seed=5)
    w.run(50)
    pg.cluster.restart()
    w.run(50)
    pg.cluster.stop()
    pg.cluster.start_again()
    w.run(50)
    wait_converged(pg, tmp_lake, TABLES, daemon=daemon, timeout=120)
    assert daemon.alive(), daemon.output()
    assert daemon.stop() == 0


def test_changes_made_during_the_initial_load_are_neither_lost_nor_applied_twice(
    pg: PgDatabase, tmp_lake: Path, daemon: Daemon
) -> None:
    import threading

    pg.execute("create table wide (id bigint primary key, n int not null, pad text)")
    pg.execute("insert into wide select g, 0, repeat(md5(g::text), 4) from generate_series(1, 200000) g")
    write_config(daemon.config, pg, tmp_lake, ["public.wide"])
    stop = threading.Event()
    done: list[int] = []

    def writer() -> None:
        # every statement commits on its own while the snapshot is being copied
        with pg.connect(autocommit=True) as conn:
            i = 0
            while not stop.is_set():
                i += 1
                conn.execute("update wide set n = n + 1 where id = %s", (1 + (i * 7919) % 200000,))
                conn.execute("insert into wide values (%s, 1, 'new')", (1_000_000 + i,))
                conn.execute("delete from wide where id = %s", (100_000 + i,))
            done.append(i)

    t = threading.Thread(target=writer)
    t.start()
    try:
        daemon.start()
        wait_until(
            lambda: "initial load done" in daemon.output(100), timeout=120, message="load did not finish"
        )
    finally:
        stop.set()
        t.join(timeout=30)
    assert done and done[0] > 10, "the writer did not overlap the load"
    wait_converged(pg, tmp_lake, ["public.wide"], daemon=daemon, timeout=120)
    assert daemon.stop() == 0


def test_a_killed_daemon_leaves_no_reader_process_holding_the_slot(
    pg: PgDatabase, tmp_lake: Path, daemon: Daemon
) -> None:
    pg.execute("create table t (id int primary key, v text)")
    write_config(daemon.config, pg, tmp_lake, ["public.t"])
    daemon.start()
    daemon.wait_streaming()
    holder = pg.query("select active_pid from pg_replication_slots where slot_name = 'cdc_test'")[0][0]
    assert holder is not None
    daemon.kill()  # SIGKILL: the reader process must go with it (PR_SET_PDEATHSIG)
    wait_until(
        lambda: (
            pg.query("select active from pg_replication_slots where slot_name = 'cdc_test'")[0][0] is False
        ),
        timeout=20,
        message="the slot is still held after the daemon was killed",
    )
    daemon.start()  # and a restart can take the slot at once
    pg.execute("insert into t values (1, 'after the kill')")
    wait_converged(pg, tmp_lake, ["public.t"], daemon=daemon)
    assert daemon.stop() == 0


def test_a_reader_process_that_dies_before_streaming_stops_the_daemon_naming_the_fallback(
    pg: PgDatabase, tmp_lake: Path, daemon: Daemon
) -> None:
    pg.execute("create table t (id int primary key, v text)")
    write_config(daemon.config, pg, tmp_lake, ["public.t"])
    daemon.start(failpoints="reader_start")  # the reader process SIGKILLs itself before it connects
    code = daemon.wait_exit(timeout=60)
    out = daemon.output(last=200)
    assert code == 1, out
    assert "replication reader process ended before streaming (exit code -9)" in out
    assert 'reader = "thread"' in out
    assert pg.query("select active from pg_replication_slots where slot_name = 'cdc_test'") == [(False,)]
