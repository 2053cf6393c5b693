"""Every bad input gets one clear message (what is wrong, how to fix it) and the right exit code.

The real ``cdc-replicator`` runs in a subprocess against a real PostgreSQL. Exit codes come from
``cdc_replicator.errors``: 2 config, 3 source, 4 slot invalidated or position mismatch.
"""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from psycopg import sql

from cdc_replicator.demo.localpg import LocalPostgres, free_port
from tests.support.cli import refusal
from tests.support.daemon import Daemon, run_cli, wait_converged, write_config
from tests.support.pg import PgDatabase
from tests.support.wait import wait_until

CONFIG_ERROR = 2
SOURCE_ERROR = 3
SLOT_LOST = 4  # SlotInvalidated and PositionMismatch
SLOT = "cdc_test"
T = "public.t"


def resync(config: Path) -> str:
    """The re-sync command a refusal must print: with the config file it was given (lower-cased)."""
    return f"cdc-replicator --config {config} snapshot".lower()


CLI_TIMEOUT = 60.0


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    d = Daemon(tmp_path / "cfg.toml", tmp_path)
    yield d
    d.close()


def _small_table(pg: PgDatabase, name: str = "t", rows: int = 20) -> None:
    pg.execute(sql.SQL("create table {} (id int primary key, v text)").format(sql.Identifier(name)))
    pg.execute(
        sql.SQL("insert into {} select g, 'v' || g from generate_series(1, %s) g").format(
            sql.Identifier(name)
        ),
        (rows,),
    )


@dataclasses.dataclass(frozen=True, slots=True)
class _Slot:
    """The test slot as pg_replication_slots shows it."""

    active_pid: int | None
    confirmed_flush: str
    wal_status: str | None


def _find_slot(pg: PgDatabase) -> _Slot | None:
    rows = pg.query(
        "select active_pid, confirmed_flush_lsn::text, wal_status from pg_replication_slots where slot_name = %s",
        (SLOT,),
    )
    return _Slot(*rows[0]) if rows else None


def _slot(pg: PgDatabase) -> _Slot:
    found = _find_slot(pg)
    assert found is not None, f"replication slot {SLOT} does not exist"
    return found


def _wait_slot_released(pg: PgDatabase) -> None:
    wait_until(
        lambda: _slot(pg).active_pid is None, timeout=10, message="slot still active after the daemon stopped"
    )


def _converge_and_stop(pg: PgDatabase, lake: Path, daemon: Daemon, tables: list[str]) -> None:
    """Run the daemon until the Delta tables equal the source, then stop it gracefully."""
    daemon.start()
    wait_converged(pg, lake, tables, daemon=daemon)
    assert daemon.stop() == 0, daemon.output()
    _wait_slot_released(pg)


def _status(config: Path) -> dict[str, Any]:
    result = run_cli(config, "status", "--json", timeout=CLI_TIMEOUT)
    assert result.returncode == 0, result.stderr
    report: dict[str, Any] = json.loads(result.stdout)
    return report


# ---- 1. invalid config ---------------------------------------------------------------------------

_VALID = """\
[source]
dsn = "postgresql://postgres@127.0.0.1:1/nowhere"
[target]
uri = "{lake}"
[batch]
max_rows = 100
[server]
enabled = false
[[tables]]
name = "public.t"
"""


def _config_refusal(tmp_path: Path, text: str) -> str:
    path = tmp_path / "cfg.toml"
    path.write_text(text.format(lake=tmp_path / "lake"))
    message = refusal(run_cli(path, "run", timeout=CLI_TIMEOUT), CONFIG_ERROR)
    assert "\n" not in message, f"a config error is one line: {message!r}"
    return message


def test_a_missing_config_file_is_refused_naming_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "absent.toml"
    message = refusal(run_cli(missing, "run", timeout=CLI_TIMEOUT), CONFIG_ERROR)
    assert "not found" in message and str(missing).lower() in message


def test_a_missing_source_dsn_is_refused_naming_the_key_and_where_to_set_it(tmp_path: Path) -> None:
    message = _config_refusal(
        tmp_path, _VALID.replace('dsn = "postgresql://postgres@127.0.0.1:1/nowhere"\n', "")
    )
    assert "source.dsn" in message and "required" in message
    assert "cdc_replicator_source__dsn" in message


def test_a_value_of_the_wrong_type_is_refused_naming_the_key_and_the_expected_type(tmp_path: Path) -> None:
    message = _config_refusal(tmp_path, _VALID.replace("max_rows = 100", 'max_rows = "x"'))
    assert "batch.max_rows" in message and "positive integer" in message


def test_an_unknown_key_is_refused_naming_it_and_suggesting_the_right_one(tmp_path: Path) -> None:
    message = _config_refusal(tmp_path, _VALID.replace("dsn =", "dns ="))
    assert "unknown key source.dns" in message and "source.dsn" in message


# ---- 2. unreachable database -------------------------------------------------------------------


def test_an_unreachable_database_is_retried_then_given_up_with_a_cannot_connect_message(
    pg: PgDatabase, tmp_path: Path, tmp_lake: Path
) -> None:
    port = free_port()  # nothing listens there
    closed = dataclasses.replace(pg, dsn=f"postgresql://postgres@127.0.0.1:{port}/{pg.name}")
    cfg = write_config(
        tmp_path / "cfg.toml",
        closed,
        tmp_lake,
        [T],
        source_extra={"retry_give_up_seconds": 2, "retry_max_seconds": 0.5, "connect_timeout_seconds": 1},
    )
    result = run_cli(cfg, "run", timeout=CLI_TIMEOUT)
    message = refusal(result, SOURCE_ERROR)
    assert "cannot connect" in message and str(port) in message
    assert "check that postgresql is running" in message
    retries = [line for line in result.stderr.splitlines() if "retrying in" in line]
    assert len(retries) >= 2, result.stderr


# ---- 3. wal_level ------------------------------------------------------------------------------


def test_wal_level_replica_is_refused_with_the_sql_that_fixes_it(
    pg_cluster: LocalPostgres, tmp_path: Path, tmp_lake: Path
) -> None:
    with LocalPostgres(pg_cluster.binaries, fast=True, settings={"wal_level": "replica"}) as other:
        db = PgDatabase("walreplica", other.create_database("walreplica"), other)
        _small_table(db)
        cfg = write_config(tmp_path / "cfg.toml", db, tmp_lake, [T])
        message = refusal(run_cli(cfg, "run", timeout=CLI_TIMEOUT), SOURCE_ERROR)
    assert "wal_level" in message and "'replica'" in message
    assert "alter system set wal_level = logical" in message and "restart" in message


# ---- 4.-7. tables, role and publication --------------------------------------------------------


def test_a_configured_table_that_does_not_exist_is_refused_naming_it(
    pg: PgDatabase, tmp_path: Path, tmp_lake: Path
) -> None:
    _small_table(pg)
    cfg = write_config(tmp_path / "cfg.toml", pg, tmp_lake, [T, "public.no_such_table"])
    message = refusal(run_cli(cfg, "run", timeout=CLI_TIMEOUT), SOURCE_ERROR)
    assert "public.no_such_table" in message and "does not exist" in message


def test_missing_primary_key_is_refused_with_the_sql_that_fixes_it(
    pg: PgDatabase, tmp_path: Path, tmp_lake: Path
) -> None:
    pg.execute("create table nokey (id int, v text)")
    cfg = write_config(tmp_path / "cfg.toml", pg, tmp_lake, ["public.nokey"])
    message = refusal(run_cli(cfg, "run", timeout=CLI_TIMEOUT), SOURCE_ERROR)
    assert "public.nokey" in message and "no primary key" in message
    assert "add primary key" in message and "replica identity full" in message
    assert not tmp_lake.exists() or not any(tmp_lake.rglob("_delta_log")), "nothing is written when refused"


def test_a_table_without_primary_key_but_replica_identity_full_is_loaded_and_streamed(
    pg: PgDatabase, tmp_lake: Path, daemon: Daemon
) -> None:
    pg.execute("create table nokey (id int, v text)")
    pg.execute("alter table nokey replica identity full")
    pg.execute("insert into nokey select g, 'v' || g from generate_series(1, 20) g")
    write_config(daemon.config, pg, tmp_lake, ["public.nokey"])
    daemon.start()
    wait_converged(pg, tmp_lake, ["public.nokey"], daemon=daemon)
    pg.execute("update nokey set v = 'changed' where id <= 5")
    pg.execute("delete from nokey where id > 15")
    pg.execute("insert into nokey values (100, 'new')")
    wait_converged(pg, tmp_lake, ["public.nokey"], daemon=daemon)
    assert daemon.stop() == 0, daemon.output()


@pytest.fixture
def role_without_replication(pg: PgDatabase) -> Iterator[str]:
    """A login role that may read ``public.t`` but not replicate; dropped afterwards."""
    role = f"{pg.name}_norepl"
    ident = sql.Identifier(role)
    pg.execute(sql.SQL("create role {} login").format(ident))
    try:
        yield role
    finally:
        # drop owned also revokes the privileges on the database (a shared object)
        pg.execute(sql.SQL("drop owned by {}").format(ident))
        pg.execute(sql.SQL("drop role {}").format(ident))


def test_a_role_without_replication_is_refused_with_the_alter_role_that_fixes_it(
    pg: PgDatabase, role_without_replication: str, tmp_path: Path, tmp_lake: Path
) -> None:
    _small_table(pg)
    role = sql.Identifier(role_without_replication)
    pg.execute(sql.SQL("grant select on t to {}").format(role))
    pg.execute(sql.SQL("grant create on database {} to {}").format(sql.Identifier(pg.name), role))
    pg.execute(sql.SQL("create publication {} for table t").format(sql.Identifier(SLOT)))
    as_role = dataclasses.replace(pg, dsn=pg.cluster.dsn(pg.name, user=role_without_replication))
    cfg = write_config(tmp_path / "cfg.toml", as_role, tmp_lake, [T])
    message = refusal(run_cli(cfg, "run", timeout=CLI_TIMEOUT), SOURCE_ERROR)
    assert role_without_replication in message and "may not replicate" in message
    assert re.search(rf'alter role "?{role_without_replication}"? with replication', message), message
    assert _find_slot(pg) is None, "no slot is created for a role that may not replicate"


def test_a_publication_without_a_configured_table_is_refused_with_the_alter_publication_that_fixes_it(
    pg: PgDatabase, tmp_path: Path, tmp_lake: Path
) -> None:
    _small_table(pg, "a")
    _small_table(pg, "b")
    pg.execute(sql.SQL("create publication {} for table a").format(sql.Identifier(SLOT)))
    cfg = write_config(tmp_path / "cfg.toml", pg, tmp_lake, ["public.a", "public.b"])
    message = refusal(run_cli(cfg, "run", timeout=CLI_TIMEOUT), SOURCE_ERROR)
    assert f"publication '{SLOT}' does not publish public.b" in message
    assert re.search(rf'alter publication "?{SLOT}"? add table ("?public"?\.)?"?b"?;', message), message
    assert "public.a" not in message.split("hint:")[1], "only the missing table is to be added"


# ---- 8.-11. the slot and the Delta positions disagree ------------------------------------------


def test_a_dropped_slot_is_refused_naming_the_tables_until_a_snapshot_resyncs_them(
    pg: PgDatabase, tmp_lake: Path, daemon: Daemon
) -> None:
    _small_table(pg)
    write_config(daemon.config, pg, tmp_lake, [T])
    _converge_and_stop(pg, tmp_lake, daemon, [T])
    pg.execute("insert into t values (1000, 'while stopped')")
    pg.execute("select pg_drop_replication_slot(%s)", (SLOT,))

    message = refusal(run_cli(daemon.config, "run", timeout=CLI_TIMEOUT), SLOT_LOST)
    assert f"slot '{SLOT}' does not exist" in message and f"{T} at " in message
    assert resync(daemon.config) in message
    assert _find_slot(pg) is None, "a refused start must not recreate the slot"

    snap = run_cli(daemon.config, "snapshot", timeout=CLI_TIMEOUT)
    assert snap.returncode == 0, snap.stderr
    assert "loaded 1 table(s)" in snap.stdout
    daemon.start()
    wait_converged(pg, tmp_lake, [T], daemon=daemon)  # the row inserted while the slot was gone is there
    pg.execute("update t set v = 'after resync' where id <= 3")
    wait_converged(pg, tmp_lake, [T], daemon=daemon)
    assert daemon.stop() == 0, daemon.output()


def test_a_slot_advanced_beyond_what_was_applied_is_refused_listing_the_tables_to_resync(
    pg: PgDatabase, tmp_lake: Path, daemon: Daemon
) -> None:
    _small_table(pg, "a")
    _small_table(pg, "b")
    tables = ["public.a", "public.b"]
    write_config(daemon.config, pg, tmp_lake, tables)
    _converge_and_stop(pg, tmp_lake, daemon, tables)
    pg.execute("insert into a values (1000, 'skipped')")
    pg.execute("update b set v = 'skipped' where id = 1")
    pg.execute("select pg_replication_slot_advance(%s, pg_current_wal_lsn())", (SLOT,))
    advanced = _slot(pg).confirmed_flush

    message = refusal(run_cli(daemon.config, "run", timeout=CLI_TIMEOUT), SLOT_LOST)
    assert f"confirmed up to {advanced.lower()}" in message and "beyond what was durably applied" in message
    assert "tables that need a re-sync: public.a, public.b" in message
    assert resync(daemon.config) in message
    assert _slot(pg).confirmed_flush == advanced, "a refused start must not move the slot"


def test_a_slot_recreated_by_someone_else_is_refused(pg: PgDatabase, tmp_lake: Path, daemon: Daemon) -> None:
    _small_table(pg)
    write_config(daemon.config, pg, tmp_lake, [T])
    _converge_and_stop(pg, tmp_lake, daemon, [T])
    pg.execute("delete from t where id <= 5")
    pg.execute("select pg_drop_replication_slot(%s)", (SLOT,))
    pg.execute("select pg_create_logical_replication_slot(%s, 'pgoutput')", (SLOT,))

    message = refusal(run_cli(daemon.config, "run", timeout=CLI_TIMEOUT), SLOT_LOST)
    assert "advanced or recreated by someone else" in message and T in message
    assert resync(daemon.config) in message


def test_an_invalidated_slot_is_refused_with_the_resync_command(
    pg: PgDatabase, tmp_lake: Path, daemon: Daemon
) -> None:
    _small_table(pg)
    write_config(daemon.config, pg, tmp_lake, [T])
    _converge_and_stop(pg, tmp_lake, daemon, [T])
    pg.execute("create table filler (id bigint, pad text)")
    pg.execute("alter system set max_slot_wal_keep_size = '1MB'")
    pg.execute("select pg_reload_conf()")
    try:

        def slot_lost() -> bool:
            # several MB of WAL in new segments, then a checkpoint that removes the slot's segments
            pg.execute("insert into filler select g, repeat('x', 200) from generate_series(1, 5000) g")
            pg.execute("select pg_switch_wal()")
            pg.execute("checkpoint")
            return _slot(pg).wal_status == "lost"

        wait_until(slot_lost, timeout=30, interval=0.1, message="the slot was not invalidated")
    finally:
        pg.execute("alter system reset max_slot_wal_keep_size")
        pg.execute("select pg_reload_conf()")

    message = refusal(run_cli(daemon.config, "run", timeout=CLI_TIMEOUT), SLOT_LOST)
    assert f"slot '{SLOT}' is invalidated" in message and "lost" in message
    assert resync(daemon.config) in message and "max_slot_wal_keep_size" in message


# ---- 12. a second daemon on the same slot ------------------------------------------------------


def test_a_second_daemon_on_a_busy_slot_retries_then_gives_up_without_disturbing_the_first(
    pg: PgDatabase, tmp_path: Path, tmp_lake: Path, daemon: Daemon
) -> None:
    _small_table(pg)
    write_config(daemon.config, pg, tmp_lake, [T])
    daemon.start()
    wait_converged(pg, tmp_lake, [T], daemon=daemon)
    # converged can come before the stream starts (the load is already in): wait for the walsender
    first_pid = wait_until(lambda: _slot(pg).active_pid, timeout=30, message="daemon never held the slot")

    # same slot, lake and state store (write_config puts the state next to the config file)
    second = write_config(
        tmp_path / "second.toml", pg, tmp_lake, [T], source_extra={"retry_give_up_seconds": 3}
    )
    result = run_cli(second, "run", timeout=CLI_TIMEOUT)
    message = refusal(result, SOURCE_ERROR)
    assert "is active for pid" in message and "another process" in message
    retries = [line for line in result.stderr.splitlines() if "retrying in" in line and "is active" in line]
    assert retries, result.stderr

    assert daemon.alive(), daemon.output()
    assert _slot(pg).active_pid == first_pid, "the first daemon keeps the slot"
    pg.execute("insert into t values (1000, 'after the second daemon')")
    pg.execute("delete from t where id <= 2")
    wait_converged(pg, tmp_lake, [T], daemon=daemon)
    assert daemon.stop() == 0, daemon.output()


def test_a_snapshot_while_the_daemon_streams_is_refused_and_leaves_the_daemon_alone(
    pg: PgDatabase, tmp_lake: Path, daemon: Daemon
) -> None:
    _small_table(pg)
    write_config(daemon.config, pg, tmp_lake, [T])
    daemon.start()
    wait_converged(pg, tmp_lake, [T], daemon=daemon)
    # converged can come before the stream starts (the load is already in): wait for the walsender
    first_pid = wait_until(lambda: _slot(pg).active_pid, timeout=30, message="daemon never held the slot")

    message = refusal(run_cli(daemon.config, "snapshot", timeout=CLI_TIMEOUT), SOURCE_ERROR)
    assert f"slot '{SLOT}' is in use by process {first_pid}" in message
    assert "stop the running cdc-replicator first" in message

    assert daemon.alive(), daemon.output()
    assert _slot(pg).active_pid == first_pid
    pg.execute("insert into t values (1000, 'after the refused snapshot')")
    wait_converged(pg, tmp_lake, [T], daemon=daemon)
    assert daemon.stop() == 0, daemon.output()


# ---- 13. status ------------------------------------------------------------------------------


def test_status_json_reports_the_slot_and_each_table_position_with_or_without_a_daemon(
    pg: PgDatabase, tmp_lake: Path, daemon: Daemon
) -> None:
    _small_table(pg, "a", rows=20)
    _small_table(pg, "b", rows=7)
    tables = ["public.a", "public.b"]
    write_config(daemon.config, pg, tmp_lake, tables)
    lsn = re.compile(r"^[0-9A-F]+/[0-9A-F]+$")

    before = _status(daemon.config)
    assert before["slot"]["state"] == "missing" and before["daemon_running"] is False
    assert [(t["table"], t["state"], t["position"], t["rows"]) for t in before["tables"]] == [
        ("public.a", "not loaded", None, None),
        ("public.b", "not loaded", None, None),
    ]

    daemon.start()
    wait_converged(pg, tmp_lake, tables, daemon=daemon)
    wait_until(lambda: _slot(pg).active_pid, timeout=30, message="daemon never held the slot")
    running = _status(daemon.config)
    assert isinstance(running["slot"], dict), running
    streaming_pid = _slot(pg).active_pid
    assert streaming_pid is not None and running["slot"]["active_pid"] == streaming_pid
    assert running["slot"]["state"] == "active" and running["daemon_running"] is True
    assert running["slot"]["wal_status"] == "reserved" and lsn.match(running["slot"]["confirmed_flush_lsn"])
    assert running["slot"]["retained_wal_bytes"] >= 0 and running["slot"]["lag_bytes"] >= 0
    assert [t["table"] for t in running["tables"]] == tables
    assert [t["state"] for t in running["tables"]] == ["streaming", "streaming"], running
    assert all(t["mode"] == "logical" and t["last_error"] is None for t in running["tables"])
    assert all(t["delta_version"] >= 1 and t["seconds_since_commit"] >= 0 for t in running["tables"])
    assert all(lsn.match(t["position"] or "") for t in running["tables"]), running
    assert [t["rows"] for t in running["tables"]] == [20, 7]

    assert daemon.stop() == 0, daemon.output()
    _wait_slot_released(pg)
    stopped = _status(daemon.config)
    assert stopped["slot"]["active_pid"] is None and stopped["slot"]["state"] == "inactive"
    assert stopped["slot"]["confirmed_flush_lsn"] == _slot(pg).confirmed_flush
    assert [t["state"] for t in stopped["tables"]] == ["stopped", "stopped"]
    assert stopped["load_state"] == "done"
    assert [t["position"] for t in stopped["tables"]] == [t["position"] for t in running["tables"]]


# ---- migrate / teardown ------------------------------------------------------------------------


def test_migrate_applies_each_source_migration_once_and_records_it(
    pg: PgDatabase, tmp_lake: Path, daemon: Daemon
) -> None:
    _small_table(pg)
    write_config(daemon.config, pg, tmp_lake, ["public.t"])
    first = run_cli(daemon.config, "migrate", timeout=CLI_TIMEOUT)
    assert first.returncode == 0, first.stderr
    assert "source: applied 0001_cdc_schema" in first.stdout
    assert pg.query("select version from cdc_replicator.schema_migrations") == [("0001_cdc_schema",)]
    assert pg.query("select id from cdc_replicator.heartbeat") == [(1,)]
    again = run_cli(daemon.config, "migrate", timeout=CLI_TIMEOUT)
    assert again.returncode == 0 and "source: up to date" in again.stdout, again.stderr
    assert pg.query("select count(*) from cdc_replicator.schema_migrations") == [(1,)]


def test_table_heartbeats_create_their_table_at_start_and_update_it(
    pg: PgDatabase, tmp_lake: Path, daemon: Daemon
) -> None:
    _small_table(pg)
    write_config(
        daemon.config,
        pg,
        tmp_lake,
        ["public.t"],
        source_extra={"heartbeat": "table", "heartbeat_interval_seconds": 0.3},
    )
    daemon.start()
    daemon.wait_streaming()
    wait_until(
        lambda: pg.query("select to_regclass('cdc_replicator.heartbeat') is not null")[0][0],
        timeout=30,
        message="heartbeat table not created at start",
    )
    first = pg.query("select beat_at from cdc_replicator.heartbeat")[0][0]
    wait_until(
        lambda: pg.query("select beat_at from cdc_replicator.heartbeat")[0][0] > first,
        timeout=30,
        message="heartbeat table never updated",
    )
    assert daemon.stop() == 0, daemon.output()


def test_teardown_asks_first_refuses_while_the_daemon_runs_then_drops_slot_and_publication(
    pg: PgDatabase, tmp_lake: Path, daemon: Daemon
) -> None:
    _small_table(pg)
    write_config(daemon.config, pg, tmp_lake, ["public.t"])
    daemon.start()
    wait_converged(pg, tmp_lake, ["public.t"], daemon=daemon)
    wait_until(lambda: _slot(pg).active_pid, timeout=30, message="daemon never held the slot")

    busy = run_cli(daemon.config, "teardown", "--yes", timeout=CLI_TIMEOUT)
    assert busy.returncode == 3 and "in use by process" in busy.stderr and "stop the running" in busy.stderr

    assert daemon.stop() == 0, daemon.output()
    _wait_slot_released(pg)
    declined = subprocess.run(
        [sys.executable, "-m", "cdc_replicator", "--config", str(daemon.config), "teardown"],
        input="n\n",
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
        check=False,
    )
    assert declined.returncode == 1 and "Aborted" in declined.stderr
    assert pg.query("select count(*) from pg_replication_slots where slot_name = 'cdc_test'") == [(1,)]

    done = run_cli(daemon.config, "teardown", "--yes", timeout=CLI_TIMEOUT)
    assert done.returncode == 0, done.stderr
    assert "replication slot cdc_test" in done.stdout and "publication cdc_test" in done.stdout
    assert pg.query("select count(*) from pg_replication_slots where slot_name = 'cdc_test'") == [(0,)]
    assert pg.query("select count(*) from pg_publication where pubname = 'cdc_test'") == [(0,)]
    # the lake is kept, and the daemon refuses to guess: it asks for a full re-sync
    restarted = run_cli(daemon.config, "run", timeout=CLI_TIMEOUT)
    assert restarted.returncode == 4, restarted.stderr
    assert "snapshot" in restarted.stderr
