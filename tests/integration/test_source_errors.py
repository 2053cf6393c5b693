"""A source that refuses stops the daemon with exit 3 and the fix, decided by SQLSTATE, never by text.

Each daemon case runs ``cdc-replicator run`` with the default ``retry_give_up_seconds = 0``: an error taken
for a retryable one would be retried until the command's timeout. It must instead stop at once
(no "retrying in" line), print one error and its fix, and exit 3. Every case runs twice: on a
server that speaks English, and on one whose ``lc_messages`` is German, where the same refusals
must stop the same way. The German server is Debian's PostgreSQL 15 (its translations are
packaged; pgserver's 16 has none) and needs the OS locale de_DE.UTF-8, which ``.ci/run``
generates: without it the test fails, it never skips. START_REPLICATION's ambiguous codes keep
their meaning there too (a dropped or invalidated slot: exit 4; a busy one: retried).
"""

from __future__ import annotations

import dataclasses
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest
from psycopg import pq, sql

from cdc_replicator.demo.localpg import LocalPostgres, PgBinaries, find_binaries
from cdc_replicator.errors import PositionMismatch, SlotInUse, SlotInvalidated
from cdc_replicator.model import Lsn
from cdc_replicator.source.replication import ReplicationConnection
from tests.support.cli import HINT, refusal
from tests.support.daemon import run_cli, write_config
from tests.support.pg import PgDatabase, create_test_database, drop_test_database
from tests.support.wait import wait_until

SOURCE_ERROR = 3
SLOTS = 4  # max_replication_slots of the servers here: few, so that they can be filled
SLOT = "cdc_test"
CLI_TIMEOUT = 60.0
GERMAN = "de_DE.UTF-8"


@pytest.fixture(scope="module")
def english(pg_binaries: PgBinaries) -> Iterator[LocalPostgres]:
    settings = {"max_replication_slots": str(SLOTS), "lc_messages": "C"}
    with LocalPostgres(pg_binaries, fast=True, settings=settings) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def german() -> Iterator[LocalPostgres]:
    """A PostgreSQL 15 whose messages are German; fails (with the fix) when the locale is missing."""
    locales = subprocess.run(["locale", "-a"], capture_output=True, text=True, check=True).stdout.split()
    if "de_DE.utf8" not in locales:
        pytest.fail(
            "the OS locale de_DE.UTF-8 is missing: apt-get install locales; "
            "localedef -i de_DE -f UTF-8 de_DE.UTF-8 (as .ci/run does)"
        )
    settings = {"max_replication_slots": str(SLOTS), "lc_messages": GERMAN}
    with LocalPostgres(find_binaries(15), fast=True, settings=settings) as cluster:
        with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
            with pytest.raises(psycopg.errors.UndefinedTable) as missing:
                conn.execute("select * from no_such_table")
        text = missing.value.diag.message_primary or ""
        assert "existiert nicht" in text, f"the server does not speak German: {text!r}"
        yield cluster


@pytest.fixture
def database(request: pytest.FixtureRequest) -> Iterator[Callable[[LocalPostgres], PgDatabase]]:
    """Make a fresh database on a cluster; each is dropped afterwards with its slots."""
    made: list[PgDatabase] = []

    def make(cluster: LocalPostgres) -> PgDatabase:
        db = create_test_database(cluster, request.node.name)
        made.append(db)
        return db

    yield make
    for db in made:
        drop_test_database(db)


# ---- helpers ----------------------------------------------------------------------------------


def _table(db: PgDatabase, schema: str = "public") -> str:
    name = sql.Identifier(schema, "t")
    if schema != "public":
        db.execute(sql.SQL("create schema {}").format(sql.Identifier(schema)))
    db.execute(sql.SQL("create table {} (id int primary key, v text)").format(name))
    db.execute(sql.SQL("insert into {} select g, 'v' || g from generate_series(1, 20) g").format(name))
    return f"{schema}.t"


@contextmanager
def _role(db: PgDatabase) -> Iterator[str]:
    """A role with LOGIN and REPLICATION and no privilege on any table; dropped afterwards."""
    role = f"{db.name}_app"
    db.execute(sql.SQL("create role {} login replication").format(sql.Identifier(role)))
    try:
        yield role
    finally:
        db.execute(sql.SQL("drop owned by {}").format(sql.Identifier(role)))
        db.execute(sql.SQL("drop role {}").format(sql.Identifier(role)))


def _as(db: PgDatabase, role: str) -> PgDatabase:
    return dataclasses.replace(db, dsn=db.cluster.dsn(db.name, user=role))


def _publish(db: PgDatabase, table: str) -> None:
    """The publication, made by the admin (a role that does not own the table cannot)."""
    schema, name = table.split(".")
    db.execute(
        sql.SQL("create publication {} for table {}").format(
            sql.Identifier(SLOT), sql.Identifier(schema, name)
        )
    )


def _stops(result: subprocess.CompletedProcess[str]) -> tuple[str, str]:
    """Exit 3 at the first attempt with one error: (the error line(s), the hint), lower-cased."""
    message = refusal(result, SOURCE_ERROR)
    assert "retrying in" not in result.stderr, f"a refusal was retried\n{result.stderr}"
    error, _, hint = message.partition(HINT)
    assert hint, f"no fix was printed\n{result.stderr}"
    return error, hint


@contextmanager
def _slots_filled(cluster: LocalPostgres) -> Iterator[None]:
    """Every free replication slot taken by an idle logical slot; they are dropped afterwards."""
    fillers: list[str] = []
    with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
        try:
            used = conn.execute("select count(*) from pg_replication_slots").fetchone()
            assert used is not None
            for i in range(SLOTS - int(used[0])):
                fillers.append(f"filler_{i}")
                conn.execute("select pg_create_logical_replication_slot(%s, 'pgoutput')", (fillers[-1],))
            yield
        finally:
            for name in fillers:
                conn.execute(
                    "select pg_drop_replication_slot(slot_name) from pg_replication_slots where slot_name = %s",
                    (name,),
                )


@contextmanager
def _hba_rejects(cluster: LocalPostgres, role: str) -> Iterator[None]:
    """pg_hba.conf rejects every connection of ``role`` over TCP; restored afterwards."""
    hba = cluster.datadir / "pg_hba.conf"
    original = hba.read_text()

    def reloaded(*, refused: bool) -> None:
        with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
            conn.execute("select pg_reload_conf()")

        def settled() -> bool:
            conn = pq.PGconn.connect(cluster.dsn(user=role).encode())
            ok = conn.status == pq.ConnStatus.OK
            conn.finish()
            return ok is not refused

        wait_until(settled, timeout=10, message="pg_hba.conf was not reloaded")

    hba.write_text(f"host all {role} 127.0.0.1/32 reject\n" + original)
    try:
        reloaded(refused=True)
        yield
    finally:
        hba.write_text(original)
        reloaded(refused=False)


# ---- the cases: each stops with exit 3 and its fix, on any lc_messages ----------------------------


def all_slots_in_use(db: PgDatabase, tmp_path: Path) -> None:
    table = _table(db)
    cfg = write_config(tmp_path / "cfg.toml", db, tmp_path / "lake", [table])
    with _slots_filled(db.cluster):
        error, hint = _stops(run_cli(cfg, "run", timeout=CLI_TIMEOUT))
    assert "create_replication_slot failed" in error and "sqlstate 53400" in error
    assert "raise max_replication_slots" in hint
    assert "select slot_name from pg_replication_slots where not active" in hint


def no_select_on_a_configured_table(db: PgDatabase, tmp_path: Path) -> None:
    table = _table(db)
    with _role(db) as role:
        _publish(db, table)
        cfg = write_config(tmp_path / "cfg.toml", _as(db, role), tmp_path / "lake", [table])
        error, hint = _stops(run_cli(cfg, "run", timeout=CLI_TIMEOUT))
    assert "may not read public.t" in error
    assert 'grant select on "public"."t" to <role>' in hint


def no_usage_on_the_tables_schema(db: PgDatabase, tmp_path: Path) -> None:
    """SELECT on the table but no USAGE on its schema: the catalog checks pass, the load is refused."""
    table = _table(db, "hidden")
    with _role(db) as role:
        db.execute(sql.SQL("grant select on hidden.t to {}").format(sql.Identifier(role)))
        _publish(db, table)
        cfg = write_config(tmp_path / "cfg.toml", _as(db, role), tmp_path / "lake", [table])
        error, hint = _stops(run_cli(cfg, "run", timeout=CLI_TIMEOUT))
    assert "hidden.t" in error and "sqlstate 42501" in error
    assert 'grant usage on schema "hidden" to <role>' in hint


def no_usage_on_the_schema_of_a_polled_table(db: PgDatabase, tmp_path: Path) -> None:
    table = _table(db, "hidden")
    with _role(db) as role:
        db.execute(sql.SQL("grant select on hidden.t to {}").format(sql.Identifier(role)))
        cfg = write_config(
            tmp_path / "cfg.toml",
            _as(db, role),
            tmp_path / "lake",
            [table],
            source_extra={"mode": "watermark"},
            table_extra={table: {"cursor": "id"}},
        )
        error, hint = _stops(run_cli(cfg, "run", timeout=CLI_TIMEOUT))
    assert "sqlstate 42501" in error
    assert "grant usage on schema <schema> to <role>" in hint


def a_database_that_does_not_exist(db: PgDatabase, tmp_path: Path) -> None:
    """Refused while connecting, where libpq gives no SQLSTATE: the server's answer to a ping decides."""
    table = _table(db)
    missing = dataclasses.replace(db, dsn=db.cluster.dsn(f"{db.name}_missing"))
    cfg = write_config(tmp_path / "cfg.toml", missing, tmp_path / "lake", [table])
    error, hint = _stops(run_cli(cfg, "run", timeout=CLI_TIMEOUT))
    assert "cannot connect to the source database" in error and f"{db.name}_missing" in error
    assert "the database name" in hint


def a_role_that_pg_hba_rejects(db: PgDatabase, tmp_path: Path) -> None:
    table = _table(db)
    with _role(db) as role, _hba_rejects(db.cluster, role):
        cfg = write_config(tmp_path / "cfg.toml", _as(db, role), tmp_path / "lake", [table])
        error, hint = _stops(run_cli(cfg, "run", timeout=CLI_TIMEOUT))
    assert "cannot connect to the source database" in error
    assert "pg_hba.conf" in hint and "password" in hint


def start_replication_keeps_its_meanings(db: PgDatabase) -> None:
    """START_REPLICATION's codes that need the slot's catalog row: busy, dropped, invalidated."""
    options = {"proto_version": "1", "publication_names": '"none"'}
    first, second = ReplicationConnection(db.dsn), ReplicationConnection(db.dsn)
    try:
        first.create_slot(SLOT, export_snapshot=False)
        first.start(SLOT, Lsn.ZERO, options)
        with pytest.raises(SlotInUse) as busy:  # 55006
            second.start(SLOT, Lsn.ZERO, options)
        assert busy.value.retryable and busy.value.exit_code == SOURCE_ERROR
    finally:
        first.close()
    wait_until(
        lambda: not db.query("select active from pg_replication_slots where slot_name = %s", (SLOT,))[0][0],
        timeout=10,
        message="the slot stayed active",
    )
    _invalidate(db)
    with pytest.raises(SlotInvalidated) as lost:  # 55000, and the catalog says lost
        second.start(SLOT, Lsn.ZERO, options)
    assert lost.value.exit_code == 4 and "snapshot" in lost.value.hint
    db.execute("select pg_drop_replication_slot(%s)", (SLOT,))
    with pytest.raises(PositionMismatch) as dropped:  # 42704, and the catalog has no such slot
        second.start(SLOT, Lsn.ZERO, options)
    assert dropped.value.exit_code == 4 and "snapshot" in dropped.value.hint
    second.close()


def _invalidate(db: PgDatabase) -> None:
    """Make the idle slot lose WAL it needs (max_slot_wal_keep_size, then new segments, a checkpoint)."""
    db.execute("create table filler (id bigint, pad text)")
    db.execute("alter system set max_slot_wal_keep_size = '1MB'")
    db.execute("select pg_reload_conf()")
    try:

        def lost() -> bool:
            db.execute("insert into filler select g, repeat('x', 200) from generate_series(1, 5000) g")
            db.execute("select pg_switch_wal()")
            db.execute("checkpoint")
            rows = db.query("select wal_status from pg_replication_slots where slot_name = %s", (SLOT,))
            return rows[0][0] == "lost"

        wait_until(lost, timeout=30, interval=0.1, message="the slot was not invalidated")
    finally:
        db.execute("alter system reset max_slot_wal_keep_size")
        db.execute("select pg_reload_conf()")


# ---- on an English server ------------------------------------------------------------------------


def test_all_replication_slots_in_use_stops_with_exit_3_and_says_to_raise_max_replication_slots(
    english: LocalPostgres, database: Callable[[LocalPostgres], PgDatabase], tmp_path: Path
) -> None:
    all_slots_in_use(database(english), tmp_path)


def test_a_role_without_select_on_a_table_stops_with_exit_3_and_the_grant(
    english: LocalPostgres, database: Callable[[LocalPostgres], PgDatabase], tmp_path: Path
) -> None:
    no_select_on_a_configured_table(database(english), tmp_path)


def test_a_role_without_usage_on_the_schema_stops_the_load_with_exit_3_and_the_grant(
    english: LocalPostgres, database: Callable[[LocalPostgres], PgDatabase], tmp_path: Path
) -> None:
    no_usage_on_the_tables_schema(database(english), tmp_path)


def test_a_role_without_usage_on_the_schema_stops_polling_with_exit_3_and_the_grant(
    english: LocalPostgres, database: Callable[[LocalPostgres], PgDatabase], tmp_path: Path
) -> None:
    no_usage_on_the_schema_of_a_polled_table(database(english), tmp_path)


def test_a_database_that_does_not_exist_stops_with_exit_3_without_retrying(
    english: LocalPostgres, database: Callable[[LocalPostgres], PgDatabase], tmp_path: Path
) -> None:
    a_database_that_does_not_exist(database(english), tmp_path)


def test_a_role_that_pg_hba_rejects_stops_with_exit_3_and_names_pg_hba(
    english: LocalPostgres, database: Callable[[LocalPostgres], PgDatabase], tmp_path: Path
) -> None:
    a_role_that_pg_hba_rejects(database(english), tmp_path)


def test_start_replication_on_a_busy_an_invalidated_and_a_dropped_slot_keeps_each_meaning(
    english: LocalPostgres, database: Callable[[LocalPostgres], PgDatabase]
) -> None:
    start_replication_keeps_its_meanings(database(english))


# ---- the same on a server that speaks German -----------------------------------------------------


def test_german_all_replication_slots_in_use_stops_the_same_way(
    german: LocalPostgres, database: Callable[[LocalPostgres], PgDatabase], tmp_path: Path
) -> None:
    all_slots_in_use(database(german), tmp_path)


def test_german_a_role_without_select_on_a_table_stops_the_same_way(
    german: LocalPostgres, database: Callable[[LocalPostgres], PgDatabase], tmp_path: Path
) -> None:
    no_select_on_a_configured_table(database(german), tmp_path)


def test_german_a_role_without_usage_on_the_schema_stops_the_load_the_same_way(
    german: LocalPostgres, database: Callable[[LocalPostgres], PgDatabase], tmp_path: Path
) -> None:
    no_usage_on_the_tables_schema(database(german), tmp_path)


def test_german_a_role_without_usage_on_the_schema_stops_polling_the_same_way(
    german: LocalPostgres, database: Callable[[LocalPostgres], PgDatabase], tmp_path: Path
) -> None:
    no_usage_on_the_schema_of_a_polled_table(database(german), tmp_path)


def test_german_a_database_that_does_not_exist_stops_the_same_way(
    german: LocalPostgres, database: Callable[[LocalPostgres], PgDatabase], tmp_path: Path
) -> None:
    a_database_that_does_not_exist(database(german), tmp_path)


def test_german_a_role_that_pg_hba_rejects_stops_the_same_way(
    german: LocalPostgres, database: Callable[[LocalPostgres], PgDatabase], tmp_path: Path
) -> None:
    a_role_that_pg_hba_rejects(database(german), tmp_path)


def test_german_start_replication_on_a_busy_an_invalidated_and_a_dropped_slot_keeps_each_meaning(
    german: LocalPostgres, database: Callable[[LocalPostgres], PgDatabase]
) -> None:
    start_replication_keeps_its_meanings(database(german))
