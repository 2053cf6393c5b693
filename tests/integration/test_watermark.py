"""Watermark mode: polling with high-watermark queries, against a real PostgreSQL, rows compared.

The daemon runs as a subprocess with ``source.mode = "watermark"``; its Delta tables must end equal
to the source's rows (soft-deleted rows excluded), with nothing written on the database side.
"""

from __future__ import annotations

import json
import re
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from deltalake import DeltaTable

from tests.support.cluster import Standby
from tests.support.daemon import Daemon, run_cli, wait_converged, write_config
from tests.support.lake import table_path
from tests.support.pg import PgDatabase
from tests.support.wait import wait_until

T = "public.items"
LIVE = "deleted_at is null"


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    d = Daemon(tmp_path / "cfg.toml", tmp_path)
    yield d
    d.close()


def _items(pg: PgDatabase, rows: int) -> None:
    pg.execute(
        "create table items (id bigint primary key, v text, n numeric(12,2), "
        "updated_at timestamptz not null default clock_timestamp(), deleted_at timestamptz)"
    )
    pg.execute("create index on items (updated_at, id)")
    pg.execute(
        "insert into items (id, v, n) select g, 'v' || g, g / 7.0 from generate_series(1, %s) g", (rows,)
    )


def _config(
    daemon: Daemon,
    pg: PgDatabase,
    lake: Path,
    *,
    delete_column: bool = True,
    soft_delete: bool = False,
    server: bool = False,
    **watermark: object,
) -> None:
    table: dict[str, object] = {
        "cursor": "updated_at",
        **({"delete_column": "deleted_at"} if delete_column else {}),
    }
    if soft_delete:
        table["soft_delete"] = True
    write_config(
        daemon.config,
        pg,
        lake,
        [T],
        source_extra={"mode": "watermark"},
        table_extra={T: table},
        server={} if server else None,
    )
    extra = {"poll_interval_seconds": 0.2, "page_size": 400, **watermark}
    with open(daemon.config, "a") as f:
        f.write("[watermark]\n" + "".join(f"{k} = {v}\n" for k, v in extra.items()))


def _sessions_of(pg: PgDatabase) -> int:
    return int(
        pg.query(
            "select count(*) from pg_stat_activity where application_name like 'cdc-replicator%%' "
            "and datname = current_database()"
        )[0][0]
    )


def test_catch_up_then_inserts_updates_and_soft_deletes_are_followed(
    pg: PgDatabase, tmp_lake: Path, daemon: Daemon
) -> None:
    _items(pg, 3000)
    _config(daemon, pg, tmp_lake)
    daemon.start()
    wait_converged(pg, tmp_lake, [T], daemon=daemon, where=LIVE)
    slots_before = pg.query("select count(*) from pg_replication_slots")[0][0]

    pg.execute("insert into items (id, v, n) select g, 'new', 1 from generate_series(3001, 3500) g")
    pg.execute("update items set v = 'changed', updated_at = clock_timestamp() where id % 10 = 0")
    pg.execute("update items set deleted_at = now(), updated_at = clock_timestamp() where id % 7 = 0")
    wait_converged(pg, tmp_lake, [T], daemon=daemon, where=LIVE)
    # nothing written on the database side: no slot, no publication, no schema
    assert pg.query("select count(*) from pg_replication_slots")[0][0] == slots_before == 0
    assert pg.query("select count(*) from pg_publication")[0][0] == 0
    assert pg.query("select count(*) from pg_namespace where nspname = 'cdc_replicator'")[0][0] == 0

    status = run_cli(daemon.config, "status", "--json")
    assert status.returncode == 0, status.stderr
    report = json.loads(status.stdout)
    assert report["slot"]["state"] == "none (watermark mode)" and report["slot"]["in_recovery"] is False
    (row,) = report["tables"]
    assert row["mode"] == "watermark" and row["state"] == "polling" and row["position"], row
    assert row["rows"] == int(pg.query("select count(*) from items where deleted_at is null")[0][0])
    assert daemon.stop() == 0, daemon.output()
    stopped = json.loads(run_cli(daemon.config, "status", "--json").stdout)
    assert stopped["tables"][0]["state"] == "stopped"


def test_many_rows_sharing_one_cursor_value_are_paged_by_key_without_loss(
    pg: PgDatabase, tmp_lake: Path, daemon: Daemon
) -> None:
    pg.execute(
        "create table items (id bigint primary key, v text, updated_at timestamptz not null, deleted_at timestamptz)"
    )
    pg.execute("create index on items (updated_at, id)")
    # 2,500 rows with one updated_at (one transaction's now()), pages of 400: the key breaks ties
    pg.execute(
        "insert into items (id, v, updated_at) select g, 'v' || g, now() from generate_series(1, 2500) g"
    )
    _config(daemon, pg, tmp_lake)
    daemon.start()
    wait_converged(pg, tmp_lake, [T], daemon=daemon, where=LIVE)
    pg.execute("update items set v = 'again', updated_at = now() where id > 1200")
    wait_converged(pg, tmp_lake, [T], daemon=daemon, where=LIVE)
    assert daemon.stop() == 0, daemon.output()


def _late_commit(pg: PgDatabase, tmp_lake: Path, daemon: Daemon, standby: Standby | None = None) -> None:
    """A transaction writes rows stamped with its start time (now()), one of them inside a savepoint
    (a subtransaction xid), then commits after the daemon's watermark has moved past them."""
    _items(pg, 100)
    source = pg
    if standby is not None:
        _replayed(pg, standby)
        source = PgDatabase(name=pg.name, dsn=standby.dsn(pg.name), cluster=standby)
    _config(daemon, source, tmp_lake)
    daemon.start()
    wait_converged(pg, tmp_lake, [T], daemon=daemon, where=LIVE)

    long_txn = pg.connect()
    long_txn.execute("select 1")  # the transaction (and its now()) starts here
    time.sleep(0.3)
    long_txn.execute(
        "insert into items (id, v, updated_at) values (5001, 'late', now()), (5002, 'late', now())"
    )
    long_txn.execute("savepoint s")
    long_txn.execute("update items set v = 'late update', updated_at = now() where id = 1")
    long_txn.execute("release savepoint s")
    # meanwhile other transactions commit newer rows, and the daemon's watermark moves past now()
    for i in range(5):
        pg.execute("insert into items (id, v) values (%s, 'later')", (6000 + i,))
        time.sleep(0.3)
    wait_until(
        lambda: DeltaTable(str(table_path(tmp_lake, T))).to_pyarrow_table().num_rows >= 105,
        timeout=30,
        message="the newer rows did not arrive",
    )
    long_txn.commit()
    long_txn.close()
    wait_converged(pg, tmp_lake, [T], daemon=daemon, where=LIVE, timeout=60)
    assert "late rows table=public.items" in daemon.logs[-1].read_text()
    assert daemon.stop() == 0, daemon.output()


def test_a_transaction_that_commits_after_the_watermark_passed_its_rows_is_still_captured(
    pg: PgDatabase, tmp_lake: Path, daemon: Daemon
) -> None:
    _late_commit(pg, tmp_lake, daemon)


def test_on_a_standby_too_a_transaction_committing_late_is_captured(
    pg: PgDatabase, tmp_lake: Path, daemon: Daemon, standby: Standby
) -> None:
    # a hot standby reports its running transactions only as subtransactions: pg_current_snapshot()
    # lists none there, so the pending ranges must go by xmin/xmax
    _late_commit(pg, tmp_lake, daemon, standby)


def test_kill_9_and_restart_continue_from_the_committed_watermark_without_duplicates(
    pg: PgDatabase, tmp_lake: Path, daemon: Daemon
) -> None:
    _items(pg, 2000)
    _config(daemon, pg, tmp_lake, page_size=200)
    stop = threading.Event()

    def writer() -> None:
        i = 0
        with pg.connect(autocommit=True) as conn:
            while not stop.is_set():
                i += 1
                conn.execute(
                    "update items set v = 'w' || %s, updated_at = clock_timestamp() where id = %s",
                    (i, i % 2000 + 1),
                )
                if i % 5 == 0:
                    conn.execute("insert into items (id, v) values (%s, 'ins')", (100_000 + i,))
                if i % 11 == 0:
                    conn.execute(
                        "update items set deleted_at = now(), updated_at = clock_timestamp() where id = %s",
                        (i % 1500 + 1,),
                    )
                time.sleep(0.002)

    t = threading.Thread(target=writer, daemon=True)
    t.start()
    try:
        for round_ in range(4):
            daemon.start()
            # kill it once this start has committed at least one poll, at a different moment each round
            wait_until(
                lambda: "watermark poll table=" in daemon.logs[-1].read_text(),
                timeout=30,
                message="the daemon never polled",
            )
            time.sleep(0.15 * round_)
            daemon.kill()
    finally:
        stop.set()
        t.join(timeout=10)
    total = int(pg.query("select count(*) from items")[0][0])
    daemon.start()
    wait_converged(pg, tmp_lake, [T], daemon=daemon, where=LIVE, timeout=120)
    ids = DeltaTable(str(table_path(tmp_lake, T))).to_pyarrow_table(columns=["id"]).column("id").to_pylist()
    assert len(ids) == len(set(ids)), "duplicate keys in Delta"
    # the last start continued from its committed watermark: it did not read the table again
    first_poll = re.search(r"watermark poll table=public.items rows=(\d+) ", daemon.logs[-1].read_text())
    assert first_poll is not None and int(first_poll.group(1)) < total // 2, (first_poll, total)
    assert _sessions_of(pg) >= 1
    assert daemon.stop() == 0, daemon.output()


@pytest.fixture
def standby(pg: PgDatabase) -> Iterator[Standby]:
    """A streaming physical standby of the test cluster (pg_basebackup -R), removed afterwards."""
    with Standby(pg.cluster) as replica:
        yield replica


def _replayed(pg: PgDatabase, standby: Standby) -> None:
    """Wait until the standby has replayed everything the primary wrote so far."""
    target = str(pg.query("select pg_current_wal_lsn()::text")[0][0])
    with psycopg.connect(standby.dsn(pg.name), autocommit=True) as conn:
        wait_until(
            lambda: conn.execute("select pg_last_wal_replay_lsn() >= %s::pg_lsn", (target,)).fetchone()[0],  # type: ignore[index]
            timeout=30,
            message="the standby did not catch up",
        )


def test_on_a_standby_the_daemon_reads_only_the_standby_and_survives_its_restart(
    pg: PgDatabase, tmp_lake: Path, daemon: Daemon, standby: Standby
) -> None:
    _items(pg, 1500)
    _replayed(pg, standby)
    replica = PgDatabase(name=pg.name, dsn=standby.dsn(pg.name), cluster=standby)
    assert replica.query("select pg_is_in_recovery()")[0][0] is True
    _config(daemon, replica, tmp_lake, server=True)
    daemon.start()
    wait_converged(pg, tmp_lake, [T], daemon=daemon, where=LIVE)
    assert _sessions_of(pg) == 0, "the daemon must not connect to the primary"
    assert _sessions_of(replica) >= 1
    assert "replica=True" in daemon.logs[-1].read_text()
    report = json.loads(run_cli(daemon.config, "status", "--json").stdout)
    assert report["slot"]["in_recovery"] is True and report["slot"]["replica_lag_seconds"] is not None, report
    with urllib.request.urlopen(daemon.http_address() + "/metrics", timeout=10) as resp:
        assert "\ncdc_replica_lag_seconds " in resp.read().decode()

    stop = threading.Event()

    def writer() -> None:
        i = 0
        with pg.connect(autocommit=True) as conn:
            while not stop.is_set():
                i += 1
                conn.execute(
                    "update items set v = 'w' || %s, updated_at = clock_timestamp() where id = %s",
                    (i, i % 1500 + 1),
                )
                if i % 4 == 0:
                    conn.execute("insert into items (id, v) values (%s, 'ins')", (50_000 + i,))
                time.sleep(0.003)

    t = threading.Thread(target=writer, daemon=True)
    t.start()
    try:
        time.sleep(1.0)
        standby.restart()  # mid-poll: the daemon retries and continues from its committed watermark
        time.sleep(1.5)
    finally:
        stop.set()
        t.join(timeout=10)
    _replayed(pg, standby)
    wait_converged(pg, tmp_lake, [T], daemon=daemon, where=LIVE, timeout=90)
    assert _sessions_of(pg) == 0
    assert daemon.stop() == 0, daemon.output()


def test_reconciliation_finds_hard_deletes_and_rows_polling_missed(
    pg: PgDatabase, tmp_lake: Path, daemon: Daemon
) -> None:
    _items(pg, 2000)
    _config(
        daemon, pg, tmp_lake, delete_column=False, reconcile_interval_seconds=0.5, reconcile_range_rows=300
    )
    daemon.start()
    wait_converged(pg, tmp_lake, [T], daemon=daemon)
    pg.execute("delete from items where id % 13 = 0 or id > 1990")  # hard deletes: no cursor moves
    # a row whose cursor is far behind the watermark: polling can never see it
    pg.execute("insert into items (id, v, updated_at) values (9999, 'behind', '2001-01-01')")
    wait_converged(pg, tmp_lake, [T], daemon=daemon, timeout=90)
    log = daemon.logs[-1].read_text()
    assert "reconciliation fixed table=public.items" in log
    events = [json.loads(line) for line in log.splitlines() if "reconciliation fixed" in line]
    assert sum(e["deleted"] for e in events) == 163  # every id % 13 = 0, and 1991..2000
    assert sum(e["copied"] for e in events) == 1
    assert daemon.stop() == 0, daemon.output()


def test_run_once_catches_up_and_exits_and_a_second_run_only_reads_what_is_new(
    pg: PgDatabase, tmp_lake: Path, daemon: Daemon
) -> None:
    _items(pg, 1200)
    _config(daemon, pg, tmp_lake)
    first = run_cli(daemon.config, "run", "--once", timeout=120)
    assert first.returncode == 0, first.stderr
    assert "watermark catch-up done" in first.stderr
    wait_converged(pg, tmp_lake, [T], where=LIVE, timeout=5)
    version = DeltaTable(str(table_path(tmp_lake, T))).version()

    assert "watermark poll table=public.items rows=1200 " in first.stderr

    again = run_cli(daemon.config, "run", "--once", timeout=120)
    assert again.returncode == 0, again.stderr
    # nothing new: no row read (the log line is written only when a poll read rows), no row written
    assert "watermark poll table=" not in again.stderr, again.stderr
    latest = DeltaTable(str(table_path(tmp_lake, T)))
    assert latest.version() in (version, version + 1)  # + an empty commit settling a pending range
    metrics = latest.history(1)[0].get("operationMetrics", {})
    assert latest.version() == version or (
        metrics.get("num_source_rows", 0),
        metrics.get("num_added_rows", 0),
    ) == (0, 0)
    pg.execute("update items set v = 'x', updated_at = clock_timestamp() where id <= 3")
    third = run_cli(daemon.config, "run", "--once", timeout=120)
    assert third.returncode == 0, third.stderr
    assert "watermark poll table=public.items rows=3 " in third.stderr, third.stderr
    wait_converged(pg, tmp_lake, [T], where=LIVE, timeout=5)

    logical = run_cli(daemon.config, "run", "--once", env={"CDC_REPLICATOR_SOURCE__MODE": "logical"})
    assert logical.returncode == 2 and 'run --once: only for source.mode = "watermark"' in logical.stderr


def test_snapshot_in_watermark_mode_rebuilds_a_table_from_scratch(
    pg: PgDatabase, tmp_lake: Path, daemon: Daemon
) -> None:
    _items(pg, 800)
    _config(daemon, pg, tmp_lake)
    assert run_cli(daemon.config, "run", "--once").returncode == 0
    # rows removed behind the daemon's back (hard deletes, no delete_column value): only a re-sync drops them
    pg.execute("delete from items where id <= 100")
    result = run_cli(daemon.config, "snapshot", "--table", T)
    assert result.returncode == 0, result.stderr
    wait_converged(pg, tmp_lake, [T], where=LIVE, timeout=5)
    again = run_cli(daemon.config, "run", "--once")
    assert again.returncode == 0, again.stderr
    wait_converged(pg, tmp_lake, [T], where=LIVE, timeout=5)


def test_a_schema_change_is_followed_or_pauses_the_table_as_its_contract_says(
    pg: PgDatabase, tmp_lake: Path, daemon: Daemon
) -> None:
    _items(pg, 300)
    _config(daemon, pg, tmp_lake)
    assert run_cli(daemon.config, "run", "--once").returncode == 0
    pg.execute("alter table items add column color text")
    pg.execute("update items set color = 'red', updated_at = clock_timestamp() where id <= 10")

    frozen = run_cli(daemon.config, "run", "--once", env={"CDC_REPLICATOR_TABLES__0__CONTRACT": "freeze"})
    assert frozen.returncode == 0, frozen.stderr
    assert "table paused table=public.items" in frozen.stderr and "add column color" in frozen.stderr
    assert "color" not in DeltaTable(str(table_path(tmp_lake, T))).schema().to_arrow().names  # not polled

    evolved = run_cli(daemon.config, "run", "--once")
    assert evolved.returncode == 0, evolved.stderr
    assert "schema evolved table=public.items" in evolved.stderr
    rows = DeltaTable(str(table_path(tmp_lake, T))).to_pyarrow_table(columns=["id", "color"]).to_pylist()
    assert sorted(r["id"] for r in rows if r["color"] == "red") == list(range(1, 11))


def test_with_soft_delete_a_deleted_row_stays_marked_deleted(
    pg: PgDatabase, tmp_lake: Path, daemon: Daemon
) -> None:
    _items(pg, 200)
    _config(daemon, pg, tmp_lake, soft_delete=True)
    assert run_cli(daemon.config, "run", "--once").returncode == 0
    pg.execute("update items set deleted_at = now(), updated_at = clock_timestamp() where id <= 30")
    assert run_cli(daemon.config, "run", "--once").returncode == 0
    rows = (
        DeltaTable(str(table_path(tmp_lake, T))).to_pyarrow_table(columns=["id", "_cdc_deleted"]).to_pylist()
    )
    assert len(rows) == 200
    assert sorted(r["id"] for r in rows if r["_cdc_deleted"]) == list(range(1, 31))
