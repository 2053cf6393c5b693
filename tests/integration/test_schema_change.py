"""Schema changes seen in the stream, and the per-table data contract deciding what happens.

``evolve`` follows added, dropped and renamed columns and widened types (Delta schema evolution);
``freeze`` pauses the table; a type change that is not widening pauses the table under any
contract. A paused table loses nothing: its changes are held back in the slot and all arrive once
the contract allows them and the daemon restarts.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from deltalake import DeltaTable

from tests.support.daemon import Daemon, run_cli, wait_converged, write_config
from tests.support.lake import table_path
from tests.support.pg import PgDatabase
from tests.support.wait import wait_until


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    d = Daemon(tmp_path / "cfg.toml", tmp_path)
    yield d
    d.close()


def _delta(lake: Path, table: str) -> DeltaTable:
    return DeltaTable(str(table_path(lake, table)))


def _types(lake: Path, table: str) -> dict[str, pa.DataType]:
    schema = pa.schema(_delta(lake, table).schema().to_arrow())
    return {f.name: f.type for f in schema}


def _readyz(base: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(base + "/readyz", timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_evolve_follows_added_dropped_renamed_and_widened_columns(
    pg: PgDatabase, tmp_lake: Path, daemon: Daemon
) -> None:
    pg.execute("create table t (id int primary key, qty int, note varchar(10), price numeric(8,2))")
    pg.execute("insert into t select g, g, 'n' || g, g / 4.0 from generate_series(1, 50) g")
    write_config(daemon.config, pg, tmp_lake, ["public.t"])
    daemon.start()
    wait_converged(pg, tmp_lake, ["public.t"], daemon=daemon)

    pg.execute("alter table t add column flag boolean")
    pg.execute("insert into t values (51, 51, 'new', 1.5, true)")
    pg.execute("alter table t add column d text default 'dflt'")
    pg.execute("insert into t (id, qty, note, price, flag) values (52, 52, 'x', 2.5, false)")
    wait_until(
        lambda: _delta(tmp_lake, "public.t").to_pyarrow_table().num_rows == 52,
        timeout=30,
        message="rows written after ADD COLUMN did not arrive",
    )
    new_rows = _delta(tmp_lake, "public.t").to_pyarrow_table(filters=[("id", ">=", 51)]).sort_by("id")
    assert new_rows.select(["id", "flag", "d"]).to_pylist() == [
        {"id": 51, "flag": True, "d": None},  # written before d existed
        {"id": 52, "flag": False, "d": "dflt"},
    ]
    # ADD COLUMN with a default writes no row changes: older rows read NULL in Delta until updated
    older = _delta(tmp_lake, "public.t").to_pyarrow_table(filters=[("id", "<", 51)]).column("d")
    assert older.null_count == 50  # (and row 51 above)

    # one change at a time, each followed by a row change (a Relation message comes with the first)
    steps = [
        ("alter table t drop column note", "insert into t (id, qty, price) values (53, 53, 3)"),
        ("alter table t rename column qty to quantity", "insert into t (id, quantity) values (54, 54)"),
        (
            "alter table t alter column quantity type bigint",
            "insert into t (id, quantity) values (55, 5000000000)",
        ),
        (
            "alter table t alter column price type numeric(12,2)",
            "insert into t (id, price) values (56, 1234567.25)",
        ),
        (
            "alter table t alter column d type varchar(100)",
            "insert into t (id, d) values (57, 'v')",
        ),  # same Delta type
    ]
    for ddl, dml in steps:
        pg.execute(ddl)
        pg.execute(dml)
    pg.execute("update t set price = coalesce(price, 0) + 1")  # every row written again in the new layout
    wait_converged(pg, tmp_lake, ["public.t"], daemon=daemon, source_columns_only=True)

    types = _types(tmp_lake, "public.t")
    assert types["quantity"] == pa.int64() and types["price"] == pa.decimal128(12, 2)
    assert types["flag"] == pa.bool_() and "note" in types and "qty" in types  # kept, no longer written
    after = _delta(tmp_lake, "public.t").to_pyarrow_table()
    assert after.column("note").null_count == after.num_rows  # dropped: later writes leave NULL
    history = _history(daemon)
    assert [h["decision"] for h in history] == ["load", *["evolve"] * 6, "accept"], history
    changes = [h["changes"] for h in history[1:]]
    for i, expected in enumerate(
        ["add column flag", "add column d", "drop column note", "rename column qty -> quantity"]
        + ["widen type quantity", "widen type price", "retype d"]
    ):
        assert changes[i].startswith(expected), (i, changes)
    assert daemon.stop() == 0, daemon.output()


def _history(daemon: Daemon) -> list[dict[str, Any]]:
    import sqlite3

    db = daemon.config.parent / "state" / "cdc.db"
    with sqlite3.connect(db) as conn:
        rows = conn.execute(
            "select version, decision, changes from cdc_schema_history where table_name = 'public.t' order by version"
        ).fetchall()
    return [{"version": r[0], "decision": r[1], "changes": r[2]} for r in rows]


def test_freeze_pauses_only_that_table_and_a_paused_table_loses_nothing(
    pg: PgDatabase, tmp_lake: Path, daemon: Daemon
) -> None:
    pg.execute("create table t (id int primary key, v text)")
    pg.execute("create table other (id int primary key, v text)")
    pg.execute("insert into t select g, 'v' from generate_series(1, 20) g")
    tables = ["public.t", "public.other"]
    write_config(
        daemon.config, pg, tmp_lake, tables, table_extra={"public.t": {"contract": "freeze"}}, server={}
    )
    daemon.start()
    wait_converged(pg, tmp_lake, tables, daemon=daemon)
    base = daemon.http_address()

    pg.execute("alter table t add column extra int")
    held_from = str(pg.query("select pg_current_wal_lsn()::text")[0][0])
    pg.execute("insert into t values (21, 'while paused', 7)")
    pg.execute("update t set v = 'changed while paused' where id <= 5")
    pg.execute("insert into other select g, 'o' from generate_series(1, 30) g")
    wait_converged(pg, tmp_lake, ["public.other"], daemon=daemon)  # the other table keeps streaming

    def paused() -> bool:
        code, body = _readyz(base)
        return code == 503 and body["tables"]["public.t"]["state"] == "paused"

    wait_until(paused, timeout=30, message="/readyz never showed the paused table")
    _code, body = _readyz(base)
    assert "contract freeze rejects: add column extra" in body["tables"]["public.t"]["reason"]
    assert body["tables"]["public.other"]["ready"] is True
    status = json.loads(run_cli(daemon.config, "status", "--json").stdout)
    row = next(r for r in status["tables"] if r["table"] == "public.t")
    assert row["state"] == "paused" and "add column extra" in row["last_error"]
    held_back = _delta(tmp_lake, "public.t").to_pyarrow_table(columns=["id", "v"]).to_pylist()
    assert len(held_back) == 20 and all(r["v"] == "v" for r in held_back)  # nothing of t applied
    confirmed = pg.query(
        "select confirmed_flush_lsn <= %s::pg_lsn from pg_replication_slots "
        "where slot_name = 'cdc_test' and database = current_database()",
        (held_from,),
    )
    assert confirmed == [(True,)], "the slot moved past the paused table's changes"

    # a restart under the same contract: still paused, still nothing lost
    assert daemon.stop() == 0, daemon.output()
    daemon.start()
    wait_until(
        lambda: "table paused table=public.t" in daemon.logs[-1].read_text(),
        timeout=30,
        message="not paused again",
    )
    assert daemon.stop() == 0, daemon.output()

    # the contract now allows it: every held-back change arrives
    write_config(
        daemon.config, pg, tmp_lake, tables, table_extra={"public.t": {"contract": "evolve"}}, server={}
    )
    daemon.start()
    pg.execute("update t set v = v where id > 5")  # rewrite the older rows in the new layout too
    wait_converged(pg, tmp_lake, tables, daemon=daemon, source_columns_only=True)
    base = daemon.http_address()
    wait_until(lambda: _readyz(base)[0] == 200, timeout=30, message="not ready after the resume")
    assert daemon.stop() == 0, daemon.output()


def test_a_type_change_that_is_not_widening_pauses_even_under_evolve(
    pg: PgDatabase, tmp_lake: Path, daemon: Daemon
) -> None:
    pg.execute("create table t (id int primary key, code int)")
    pg.execute("insert into t values (1, 10)")
    write_config(daemon.config, pg, tmp_lake, ["public.t"])
    daemon.start()
    wait_converged(pg, tmp_lake, ["public.t"], daemon=daemon)
    pg.execute("alter table t alter column code type text")
    pg.execute("insert into t values (2, 'abc')")
    wait_until(
        lambda: "table paused table=public.t" in daemon.logs[-1].read_text(),
        timeout=30,
        message="the table was not paused",
    )
    log = daemon.logs[-1].read_text()
    assert "change type code" in log and "snapshot --table public.t" in log
    assert daemon.alive(), "only the table pauses; the daemon keeps running"
    assert daemon.stop() == 0, daemon.output()


def test_replica_identity_changes_are_recorded_and_rows_keep_flowing(
    pg: PgDatabase, tmp_lake: Path, daemon: Daemon
) -> None:
    pg.execute("create table t (id int primary key, v text)")
    pg.execute("insert into t select g, 'v' from generate_series(1, 10) g")
    write_config(daemon.config, pg, tmp_lake, ["public.t"], table_extra={"public.t": {"contract": "freeze"}})
    daemon.start()
    wait_converged(pg, tmp_lake, ["public.t"], daemon=daemon)
    pg.execute("alter table t replica identity full")
    pg.execute("update t set v = 'full' where id <= 3")
    pg.execute("delete from t where id = 10")
    wait_converged(pg, tmp_lake, ["public.t"], daemon=daemon)  # even under freeze: nothing to change in Delta
    history = _history(daemon)
    assert history[-1]["decision"] == "accept" and "replica identity" in history[-1]["changes"], history
    assert daemon.stop() == 0, daemon.output()


def test_a_table_added_to_the_publication_is_ignored_and_a_dropped_table_stops_only_at_the_next_start(
    pg: PgDatabase, tmp_lake: Path, daemon: Daemon
) -> None:
    pg.execute("create table t (id int primary key, v text)")
    pg.execute("create table gone (id int primary key)")
    pg.execute("insert into gone values (1)")
    write_config(daemon.config, pg, tmp_lake, ["public.t", "public.gone"])
    daemon.start()
    wait_converged(pg, tmp_lake, ["public.t", "public.gone"], daemon=daemon)

    pg.execute("create table extra (id int primary key)")
    pg.execute("alter publication cdc_test add table extra")
    pg.execute("insert into extra values (1)")
    pg.execute("drop table gone")
    pg.execute("insert into t values (1, 'still streaming')")
    wait_converged(pg, tmp_lake, ["public.t"], daemon=daemon)
    assert not table_path(tmp_lake, "public.extra").exists()  # not configured: not replicated
    assert _delta(tmp_lake, "public.gone").to_pyarrow_table().num_rows == 1  # its Delta table stays
    assert daemon.alive()
    assert daemon.stop() == 0, daemon.output()

    again = run_cli(daemon.config, "run")
    assert again.returncode == 3 and "table public.gone does not exist" in again.stderr, again.stderr


def test_a_crash_between_the_old_layout_commit_and_the_evolution_is_evolved_again_on_restart(
    pg: PgDatabase, tmp_lake: Path, daemon: Daemon
) -> None:
    pg.execute("create table t (id int primary key, v text)")
    pg.execute("insert into t values (1, 'a')")
    write_config(daemon.config, pg, tmp_lake, ["public.t"])
    daemon.start(failpoints="before_evolve")
    wait_converged(pg, tmp_lake, ["public.t"], daemon=daemon)
    # one transaction writes rows in the old layout, alters the table, then writes in the new one:
    # the old-layout rows are committed (the table then holds a partial position inside this very
    # transaction) and the daemon dies before it evolves the Delta table
    with pg.connect() as conn:
        conn.execute("insert into t values (2, 'old layout')")
        conn.execute("alter table t add column w int")
        conn.execute("insert into t values (3, 'new layout', 7)")
        conn.commit()
    assert daemon.wait_exit(60) == -9, daemon.output()
    assert "w" not in _types(tmp_lake, "public.t")
    daemon.start()
    wait_converged(pg, tmp_lake, ["public.t"], daemon=daemon, source_columns_only=True)
    assert _types(tmp_lake, "public.t")["w"] == pa.int32()
    assert daemon.stop() == 0, daemon.output()


def test_rows_of_a_paused_table_buffered_before_its_change_never_let_it_skip_what_it_dropped(
    pg: PgDatabase, tmp_lake: Path, daemon: Daemon
) -> None:
    pg.execute("create table t (id int primary key, v text)")
    pg.execute("create table other (id int primary key)")
    pg.execute("insert into t values (1, 'a')")
    tables = ["public.t", "public.other"]
    frozen = {"public.t": {"contract": "freeze"}}
    # a long batch window: the change before the ALTER, the paused change and later ones share a batch
    write_config(daemon.config, pg, tmp_lake, tables, table_extra=frozen, batch={"max_seconds": 3.0})
    daemon.start()
    wait_converged(pg, tmp_lake, tables, daemon=daemon)
    pg.execute("update t set v = 'before the change' where id = 1")
    pg.execute("alter table t add column w int")
    pg.execute("insert into t values (2, 'after the change', 5)")
    pg.execute("insert into other values (1)")
    wait_converged(pg, tmp_lake, ["public.other"], daemon=daemon)
    wait_until(
        lambda: "table paused table=public.t" in daemon.logs[-1].read_text(), timeout=30, message="not paused"
    )
    assert daemon.stop() == 0, daemon.output()

    write_config(daemon.config, pg, tmp_lake, tables, batch={"max_seconds": 3.0})  # evolve now allowed
    daemon.start()
    wait_converged(pg, tmp_lake, tables, daemon=daemon, source_columns_only=True)
    assert daemon.stop() == 0, daemon.output()
