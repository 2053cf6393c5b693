"""`cdc-replicator snapshot`: chunked, parallel, resumable loads that end equal to the source."""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from deltalake import DeltaTable

from tests.support.daemon import Daemon, run_cli, wait_converged, write_config
from tests.support.lake import diff_tables, retrying, table_path
from tests.support.pg import PgDatabase


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    d = Daemon(tmp_path / "cfg.toml", tmp_path)
    yield d
    d.close()


def _with_snapshot(config: Path, **keys: int) -> None:
    text = config.read_text() + "[snapshot]\n" + "".join(f"{k} = {v}\n" for k, v in keys.items())
    config.write_text(text)


def _make_tables(pg: PgDatabase, rows: int) -> list[str]:
    pg.execute("create table single (id bigint primary key, v text, n numeric(12,2))")
    pg.execute("insert into single select g, 'v' || g, g * 1.5 from generate_series(1, %s) g", (rows,))
    pg.execute("create table composite (tenant int, name text, v int, primary key (tenant, name))")
    pg.execute(
        "insert into composite select g %% 7, 'Name-' || g || case when g %% 3 = 0 then 'ä' else 'B' end, g "
        "from generate_series(1, %s) g",
        (rows,),
    )
    pg.execute("create table keyless (a int, b text); alter table keyless replica identity full")
    pg.execute("insert into keyless select g, repeat('x', 50) from generate_series(1, %s) g", (rows,))
    pg.execute("analyze single; analyze composite; analyze keyless")
    return ["public.single", "public.composite", "public.keyless"]


def _chunks(log: str) -> dict[str, int]:
    return {m[0]: int(m[1]) for m in re.findall(r"load planned table=(\S+) chunks=(\d+)", log)}


def test_tables_with_a_key_a_composite_key_and_no_key_load_in_several_chunks_equal_to_the_source(
    pg: PgDatabase, tmp_lake: Path, daemon: Daemon
) -> None:
    tables = _make_tables(pg, 20_000)
    write_config(daemon.config, pg, tmp_lake, tables)
    _with_snapshot(daemon.config, chunk_rows=3000, parallel=3)
    result = run_cli(daemon.config, "--log-level", "info", "snapshot")
    assert result.returncode == 0, result.stderr
    chunks = _chunks(result.stderr)
    assert all(chunks.get(t, 0) > 3 for t in tables), chunks
    for t in tables:
        assert diff_tables(pg, tmp_lake, t) is None
    assert "total" in result.stderr  # the summary table
    # the daemon starts streaming from the snapshot's position
    daemon.start()
    pg.execute("update single set v = 'after' where id % 100 = 0; delete from composite where v % 10 = 0")
    wait_converged(pg, tmp_lake, tables, daemon=daemon)
    assert daemon.stop() == 0


def test_a_parallel_load_under_concurrent_writes_reads_one_snapshot_and_streams_the_rest(
    pg: PgDatabase, tmp_lake: Path, daemon: Daemon
) -> None:
    tables = _make_tables(pg, 30_000)
    write_config(daemon.config, pg, tmp_lake, tables)
    _with_snapshot(daemon.config, chunk_rows=2000, parallel=3)
    stop = threading.Event()

    def writer() -> None:
        with pg.connect(autocommit=True) as conn:
            i = 0
            while not stop.is_set():
                i += 1
                conn.execute("update single set v = %s where id = %s", (f"w{i}", 1 + (i * 7919) % 30_000))
                conn.execute("delete from composite where tenant = %s and v = %s", (i % 7, i))
                conn.execute("insert into keyless values (%s, 'new')", (-i,))

    t = threading.Thread(target=writer)
    t.start()
    try:
        daemon.start()  # the initial load is the same chunked, parallel load
        daemon.wait_streaming(timeout=120)
    finally:
        stop.set()
        t.join(timeout=30)
    wait_converged(pg, tmp_lake, tables, daemon=daemon, timeout=120)
    assert daemon.stop() == 0


def test_a_load_killed_mid_way_resumes_without_copying_finished_chunks_again(
    pg: PgDatabase, tmp_lake: Path, daemon: Daemon
) -> None:
    tables = _make_tables(pg, 20_000)
    write_config(daemon.config, pg, tmp_lake, tables)
    _with_snapshot(daemon.config, chunk_rows=2000, parallel=2)
    killed = run_cli(
        daemon.config, "--log-level", "info", "snapshot", env={"CDC_FAILPOINTS": "after_chunk_done=5"}
    )
    assert killed.returncode == -9, killed.stderr
    planned = _chunks(killed.stderr)
    # changes between the crash and the resume: the resumed chunks read them, the stream the rest
    pg.execute("update single set v = 'between' where id % 50 = 0; insert into keyless values (0, 'between')")
    resumed = run_cli(daemon.config, "--log-level", "info", "snapshot")
    assert resumed.returncode == 0, resumed.stderr
    pending = {
        m[0]: (int(m[1]), int(m[2]))
        for m in re.findall(r"load resumed table=(\S+) pending_chunks=(\d+) of (\d+)", resumed.stderr)
    }
    assert pending, resumed.stderr
    assert sum(total - left for left, total in pending.values()) >= 5  # finished chunks were skipped
    assert sum(planned.values()) == sum(total for _, total in pending.values())
    daemon.start()
    wait_converged(pg, tmp_lake, tables, daemon=daemon)
    assert daemon.stop() == 0


def test_resyncing_one_table_keeps_the_slot_and_the_others_and_misses_no_change(
    pg: PgDatabase, tmp_lake: Path, daemon: Daemon
) -> None:
    tables = _make_tables(pg, 5000)
    write_config(daemon.config, pg, tmp_lake, tables)
    _with_snapshot(daemon.config, chunk_rows=1000)
    daemon.start()
    wait_converged(pg, tmp_lake, tables, daemon=daemon)
    assert daemon.stop() == 0
    slot_before = pg.query(
        "select confirmed_flush_lsn::text from pg_replication_slots where slot_name = 'cdc_test'"
    )
    # the Delta table drifts (someone edited it) while changes pile up in the slot
    DeltaTable(str(table_path(tmp_lake, "public.single"))).delete("id <= 100")
    pg.execute(
        "update single set v = 'pending' where id between 50 and 150; update composite set v = -1 where tenant = 3"
    )
    result = run_cli(daemon.config, "snapshot", "--table", "public.single")
    assert result.returncode == 0, result.stderr
    assert diff_tables(pg, tmp_lake, "public.single") is None
    slot_after = pg.query(
        "select confirmed_flush_lsn::text from pg_replication_slots where slot_name = 'cdc_test'"
    )
    assert slot_before == slot_after  # the daemon's slot was not touched
    pg.execute("update single set v = 'later' where id = 1")
    daemon.start()
    wait_converged(pg, tmp_lake, tables, daemon=daemon)
    assert daemon.stop() == 0


def test_an_unknown_table_is_refused_naming_it(pg: PgDatabase, tmp_lake: Path, daemon: Daemon) -> None:
    _make_tables(pg, 10)
    write_config(daemon.config, pg, tmp_lake, ["public.single"])
    result = run_cli(daemon.config, "snapshot", "--table", "public.nope")
    assert result.returncode == 2
    assert "--table public.nope: not a configured table (configured: public.single)" in result.stderr


def test_a_target_without_write_permission_is_refused_and_leaves_nothing_claimed(
    pg: PgDatabase, tmp_path: Path, daemon: Daemon
) -> None:
    _make_tables(pg, 10)
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")  # unwritable for any user, root included
    write_config(daemon.config, pg, blocker / "lake", ["public.single"])
    result = run_cli(daemon.config, "snapshot")
    assert result.returncode == 7, result.stderr
    assert "public.single" in result.stderr and "Traceback" not in result.stderr


def test_a_live_resync_under_concurrent_writes_ends_equal_to_the_source_while_others_stream(
    pg: PgDatabase, tmp_lake: Path, daemon: Daemon
) -> None:
    import pyarrow as pa
    from deltalake import write_deltalake

    tables = _make_tables(pg, 20_000)
    write_config(daemon.config, pg, tmp_lake, tables, batch={"max_rows": 4000, "max_seconds": 0.2})
    _with_snapshot(daemon.config, chunk_rows=1500)
    daemon.start()
    wait_converged(pg, tmp_lake, tables, daemon=daemon)
    # the Delta table drifts: rows lost, and a row the source never had
    single = str(table_path(tmp_lake, "public.single"))
    retrying(lambda: DeltaTable(single).delete("id % 97 = 0"))
    stale = DeltaTable(single).to_pyarrow_table().slice(0, 1)
    ids = pa.array([-42], pa.int64())
    stray = stale.set_column(stale.schema.get_field_index("id"), "id", ids)
    retrying(lambda: write_deltalake(single, stray, mode="append"))
    assert diff_tables(pg, tmp_lake, "public.single") is not None

    stop = threading.Event()
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            with pg.connect(autocommit=True) as conn:
                i = 0
                while not stop.is_set():
                    i += 1
                    conn.execute(
                        "update single set v = %s where id = %s", (f"live{i}", 1 + (i * 7919) % 20_000)
                    )
                    conn.execute("delete from single where id = %s", (1 + (i * 104729) % 20_000,))
                    conn.execute(
                        "insert into single values (%s, 'fresh', 1) on conflict do nothing", (100_000 + i,)
                    )
                    conn.execute("update composite set v = v + 1 where tenant = %s and v = %s", (i % 7, i))
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=writer)
    t.start()
    try:
        result = run_cli(daemon.config, "snapshot", "--table", "public.single", timeout=180)
    finally:
        stop.set()
        t.join(timeout=30)
    assert not errors, errors
    assert result.returncode == 0, result.stderr
    assert "done" in result.stderr
    wait_converged(pg, tmp_lake, tables, daemon=daemon, timeout=120)
    assert daemon.alive()
    assert daemon.stop() == 0


def test_integer_keys_are_chunked_in_numeric_order_so_chunks_neither_overlap_nor_leave_gaps(
    pg: PgDatabase,
) -> None:
    from cdc_replicator.model import Column, TableId, TableSchema
    from cdc_replicator.source import checks
    from cdc_replicator.source.snapshot import plan_ranges

    pg.execute("create table nums (id bigint primary key, v int)")
    pg.execute("insert into nums select g, g from generate_series(1, 50000) g")
    pg.execute("analyze nums")
    schema = TableSchema(TableId("public", "nums"), (Column("id", 20, -1, True), Column("v", 23)))
    with checks.connect(pg.dsn) as conn:
        ranges = plan_ranges(conn, schema, target_rows=5000)
    edges = [int(r.hi[0]) for r in ranges if r.hi is not None]
    assert len(ranges) > 5 and edges == sorted(edges) and len(set(edges)) == len(edges)


def test_a_connection_lost_mid_chunk_is_retried_and_the_load_completes(
    pg: PgDatabase, tmp_lake: Path, daemon: Daemon
) -> None:
    tables = _make_tables(pg, 6000)
    write_config(daemon.config, pg, tmp_lake, tables)
    _with_snapshot(daemon.config, chunk_rows=1000, parallel=2)
    result = run_cli(daemon.config, "snapshot", env={"CDC_FAILPOINTS": "chunk_read=3:raise"})
    assert result.returncode == 0, result.stderr
    assert "chunk retry after" in result.stderr and "connection lost (injected)" in result.stderr
    for t in tables:
        assert diff_tables(pg, tmp_lake, t) is None


def test_ctrl_c_stops_a_load_cleanly_and_a_rerun_resumes_it(
    pg: PgDatabase, tmp_lake: Path, daemon: Daemon
) -> None:
    import signal
    import subprocess
    import sys
    import time

    tables = _make_tables(pg, 40_000)
    write_config(daemon.config, pg, tmp_lake, tables)
    _with_snapshot(daemon.config, chunk_rows=500, parallel=1)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CDC_")}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cdc_replicator",
            "--config",
            str(daemon.config),
            "--log-level",
            "info",
            "snapshot",
        ],
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    time.sleep(3.0)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "resume" in err and "Traceback" not in err
    assert DeltaTable(str(table_path(tmp_lake, "public.single"))).transaction_version(
        "cdc-replicator/cdc_test/public.single"
    ) in (None, 0)  # nothing claims to be loaded
    again = run_cli(daemon.config, "--log-level", "info", "snapshot")
    assert again.returncode == 0, again.stderr
    assert "load resumed" in again.stderr
    for t in tables:
        assert diff_tables(pg, tmp_lake, t) is None
