"""`cdc-replicator verify [--repair]`: each Delta table proven equal to its source while the daemon streams."""

from __future__ import annotations

import json
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pytest
from deltalake import DeltaTable, write_deltalake
from deltalake.exceptions import TableNotFoundError

from tests.support.cli import refusal
from tests.support.daemon import Daemon, run_cli, wait_converged, write_config
from tests.support.lake import delta_rows, retrying, table_path
from tests.support.pg import PgDatabase, versions_from_env
from tests.support.wait import wait_until

# one server version is enough: verify reads with plain SQL and the stream is tested on both
NEWEST = [versions_from_env()[-1]]


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    d = Daemon(tmp_path / "cfg.toml", tmp_path)
    yield d
    d.close()


def _verify_section(config: Path, **keys: int | float) -> None:
    config.write_text(config.read_text() + "[verify]\n" + "".join(f"{k} = {v}\n" for k, v in keys.items()))


class _Writer:
    """Updates, inserts and deletes rows with ids above 1000 until stopped (keys 1..1000 stay still)."""

    def __init__(self, pg: PgDatabase) -> None:
        self._pg = pg
        self._stop = threading.Event()
        self.errors: list[BaseException] = []
        self.writes = 0
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> _Writer:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        assert not self.errors, self.errors

    def _run(self) -> None:
        try:
            with self._pg.connect(autocommit=True) as conn:
                i = 0
                while not self._stop.is_set():
                    i += 1
                    conn.execute(
                        "update items set v = %s, n = n + 1 where id = %s", (f"w{i}", 1001 + i * 7 % 2000)
                    )
                    conn.execute("delete from items where id = %s", (1001 + (i * 13) % 2000,))
                    conn.execute(
                        "insert into items values (%s, 'new', 1, 'tag') on conflict (id) do update set v = 'again'",
                        (1001 + (i * 17) % 2000,),
                    )
                    conn.execute("update pairs set v = v + 1 where a = %s", (i % 5,))
                    self.writes += 4
                    self._stop.wait(0.005)
        except BaseException as exc:
            self.errors.append(exc)


def _items_equal(pg: PgDatabase, lake: Path) -> bool:
    """public.items in Delta equals the source in the replicated columns (``secret`` is excluded)."""
    try:
        cols, rows = delta_rows(lake, "public.items")
    except TableNotFoundError:
        return False
    assert "secret" not in cols
    at = [cols.index(c) for c in ("id", "v", "n")]
    have = sorted(tuple(r[i] for i in at) for r in rows)
    return have == sorted(pg.query("select id, v, n from items"))


def _make_tables(pg: PgDatabase) -> list[str]:
    pg.execute("create table items (id bigint primary key, v text, n numeric(12,2), secret text)")
    pg.execute("insert into items select g, 'v' || g, g * 1.5, 'hidden' from generate_series(1, 3000) g")
    pg.execute("create table pairs (a int, b text, v int, primary key (a, b))")
    pg.execute("insert into pairs select g % 5, 'k' || g, g from generate_series(1, 500) g")
    pg.execute("analyze items; analyze pairs")
    return ["public.items", "public.pairs"]


@pytest.mark.parametrize("pg_binaries", NEWEST, indirect=True)
def test_verify_proves_equal_under_a_live_workload_finds_tampered_rows_and_repair_fixes_them(
    pg: PgDatabase, tmp_lake: Path, daemon: Daemon
) -> None:
    tables = _make_tables(pg)
    write_config(
        daemon.config,
        pg,
        tmp_lake,
        tables,
        batch={"max_rows": 2000, "max_seconds": 0.2},
        table_extra={"public.items": {"exclude_columns": ["secret"]}},
    )
    _verify_section(daemon.config, range_rows=1200, max_rows_per_second=0, wait_seconds=30)
    daemon.start()
    wait_converged(pg, tmp_lake, ["public.pairs"], daemon=daemon)
    wait_until(lambda: _items_equal(pg, tmp_lake), timeout=60, message="items did not converge")

    # a clean lake under a live workload: the stream's own changes are never taken for differences
    with _Writer(pg) as writer:
        clean = run_cli(daemon.config, "verify", timeout=120)
        assert writer.writes > 50
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert "table public.items: rows=" in clean.stdout and "ranges=" in clean.stdout
    assert "-> different" not in clean.stdout
    assert "verify: 2 table(s) equal to the source" in clean.stdout

    # behind the daemon's back: a row deleted, a row added, a row altered
    items = str(table_path(tmp_lake, "public.items"))
    wait_until(lambda: _items_equal(pg, tmp_lake), timeout=60, message="items did not settle")
    retrying(lambda: DeltaTable(items).delete("id = 5"))
    stray = DeltaTable(items).to_pyarrow_table(filters=[("id", "=", 6)])
    stray = stray.set_column(stray.schema.get_field_index("id"), "id", pa.array([-42], pa.int64()))
    retrying(lambda: write_deltalake(items, stray, mode="append"))
    retrying(lambda: DeltaTable(items).update(updates={"v": "'tampered'"}, predicate="id = 7"))

    with _Writer(pg):
        found = run_cli(daemon.config, "verify", timeout=120)
    err = refusal(found, 8)
    assert "public.items" in err and "--repair" in err
    out = found.stdout
    assert "table public.items: rows=" in out and "missing=1 extra=1 differing=1" in out, out
    assert "  missing: id=5" in out and "  extra: id=-42" in out and "  differing: id=7" in out
    assert "tampered" not in out and "hidden" not in out  # key values only
    assert "table public.pairs:" in out and "public.pairs" not in err.split("differ")[1].split("hint")[0]

    with _Writer(pg):
        repaired = run_cli(daemon.config, "verify", "--repair", "--table", "public.items", timeout=180)
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    assert "-> different" in repaired.stdout  # what it found first
    assert "table public.items (after repair): " in repaired.stdout
    after = [line for line in repaired.stdout.splitlines() if "(after repair)" in line]
    assert after and after[0].endswith("-> equal"), repaired.stdout
    wait_until(lambda: _items_equal(pg, tmp_lake), timeout=60, message="items did not converge after repair")
    assert daemon.alive()
    assert daemon.stop() == 0


@pytest.mark.parametrize("pg_binaries", NEWEST, indirect=True)
def test_verify_exits_3_with_the_fix_when_the_source_cannot_be_read(pg: PgDatabase, tmp_path: Path) -> None:
    pg.execute("create table t (id int primary key)")
    cfg = write_config(tmp_path / "cfg.toml", pg, tmp_path / "lake", ["public.t"])
    cfg.write_text(cfg.read_text().replace(pg.dsn, "postgresql://nobody@127.0.0.1:1/none?connect_timeout=2"))
    result = run_cli(cfg, "verify", timeout=60)
    err = refusal(result, 3)
    assert "cannot connect" in err and "hint:" in err
    unknown = refusal(run_cli(cfg, "verify", "--table", "public.nope", timeout=60), 2)
    assert "public.nope is not a configured table" in unknown


@pytest.mark.parametrize("pg_binaries", NEWEST, indirect=True)
def test_with_the_daemon_stopped_verify_compares_at_once_and_repair_rewrites_the_ranges_exactly_once(
    pg: PgDatabase, tmp_lake: Path, daemon: Daemon
) -> None:
    tables = _make_tables(pg)
    write_config(
        daemon.config,
        pg,
        tmp_lake,
        tables,
        table_extra={"public.items": {"exclude_columns": ["secret"]}, "public.pairs": {"soft_delete": True}},
        server={},
    )
    _verify_section(daemon.config, range_rows=1000, max_rows_per_second=0, wait_seconds=20)
    daemon.start()
    daemon.wait_streaming()
    pg.execute("update items set v = 'streamed' where id between 10 and 20")
    pg.execute("delete from pairs where b in ('k1', 'k2')")  # soft-deleted in Delta: absent for verify
    wait_until(lambda: _items_equal(pg, tmp_lake), timeout=60, message="items did not converge")
    pairs = str(table_path(tmp_lake, "public.pairs"))

    def soft_deleted() -> int:
        try:
            rows = DeltaTable(pairs).to_pyarrow_table(columns=["_cdc_deleted"]).column(0).to_pylist()
        except TableNotFoundError:
            return 0
        return sum(1 for v in rows if v)

    wait_until(lambda: soft_deleted() == 2, timeout=60, message="pairs rows were not soft-deleted")
    assert daemon.stop() == 0

    items = str(table_path(tmp_lake, "public.items"))
    DeltaTable(items).delete("id = 2500")
    DeltaTable(items).update(updates={"n": "0"}, predicate="id = 11")
    found = run_cli(daemon.config, "verify", timeout=60)
    refusal(found, 8)
    assert "missing=1 extra=0 differing=1" in found.stdout, found.stdout
    # soft-deleted rows count as absent: the source's 498 pairs, equal
    assert "table public.pairs: rows=498 ranges=1 missing=0 extra=0 differing=0" in found.stdout
    assert "  missing: id=2500" in found.stdout and "  differing: id=11" in found.stdout

    repaired = run_cli(daemon.config, "verify", "--repair", "--table", "public.items", timeout=60)
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    assert "table public.items (after repair): " in repaired.stdout and repaired.stdout.rstrip().endswith(
        "verify: 1 table(s) equal to the source"
    )
    assert _items_equal(pg, tmp_lake)

    # changes made while the daemon was stopped: verify waits for them instead of reporting them
    pg.execute("update items set v = 'while stopped' where id = 12")
    pending = run_cli(
        daemon.config, "verify", "--table", "public.items", env={"CDC_REPLICATOR_VERIFY__WAIT_SECONDS": "1"}
    )
    assert "did not reach the source snapshot" in refusal(pending, 3)
    # the daemon resumes from its own position: the rewritten rows stay, later changes apply once
    daemon.start()
    pg.execute("update items set v = 'after repair' where id in (11, 2500)")
    wait_until(lambda: _items_equal(pg, tmp_lake), timeout=60, message="items did not converge after restart")
    # an idle daemon, and WAL after the last commit that the server has no reason to flush (so the
    # walsender never sends it): verify's own committed message makes it flush, and the daemon confirm
    pg.execute("select pg_logical_emit_message(false, 'elsewhere', 'x')")
    idle = run_cli(
        daemon.config, "verify", "--table", "public.pairs", env={"CDC_REPLICATOR_VERIFY__WAIT_SECONDS": "5"}
    )
    assert idle.returncode == 0, idle.stdout + idle.stderr

    # the last result of each table: in `status`, and exported by the daemon (another process)
    status = json.loads(run_cli(daemon.config, "status", "--json").stdout)
    last = {t["table"]: t["last_verify"] for t in status["tables"]}
    assert last["public.items"]["differences"] == 0 and last["public.items"]["rows"] == 3000
    assert last["public.pairs"]["ranges"] == 1 and last["public.pairs"]["differences"] == 0
    metrics = urllib.request.urlopen(daemon.http_address() + "/metrics", timeout=10).read().decode()
    assert 'cdc_verify_differences{table="public.items"} 0.0' in metrics
    assert 'cdc_verify_rows_checked{table="public.items"} 3000.0' in metrics
    assert 'cdc_verify_last_timestamp_seconds{table="public.pairs"}' in metrics
    assert daemon.stop() == 0


def _watermark_items(pg: PgDatabase) -> None:
    pg.execute(
        "create table items (id bigint primary key, v text, n numeric(12,2), "
        "updated_at timestamptz not null default clock_timestamp(), deleted_at timestamptz)"
    )
    pg.execute("insert into items (id, v, n) select g, 'v' || g, g / 7.0 from generate_series(1, 2000) g")


@pytest.mark.parametrize("pg_binaries", NEWEST, indirect=True)
def test_in_watermark_mode_verify_proves_a_polled_table_equal_under_writes_and_finds_a_tampered_row(
    pg: PgDatabase, tmp_lake: Path, daemon: Daemon
) -> None:
    _watermark_items(pg)
    write_config(
        daemon.config,
        pg,
        tmp_lake,
        ["public.items"],
        source_extra={"mode": "watermark"},
        table_extra={"public.items": {"cursor": "updated_at", "delete_column": "deleted_at"}},
    )
    _verify_section(daemon.config, range_rows=600, max_rows_per_second=0, recheck_rounds=3)
    with open(daemon.config, "a") as f:
        f.write("[watermark]\npoll_interval_seconds = 0.2\n")
    daemon.start()
    daemon.wait_streaming()
    live = "deleted_at is null"
    wait_converged(pg, tmp_lake, ["public.items"], daemon=daemon, where=live)

    stop = threading.Event()

    def writes() -> None:
        with pg.connect(autocommit=True) as conn:
            i = 0
            while not stop.is_set():
                i += 1
                conn.execute(
                    "update items set v = %s, updated_at = clock_timestamp() where id = %s",
                    (f"w{i}", 1001 + i % 900),
                )
                conn.execute(
                    "update items set deleted_at = clock_timestamp(), updated_at = clock_timestamp() where id = %s",
                    (1001 + (i * 7) % 900,),
                )
                stop.wait(0.01)

    writer = threading.Thread(target=writes, daemon=True)
    writer.start()
    try:
        clean = run_cli(daemon.config, "verify", timeout=120)
    finally:
        stop.set()
        writer.join(timeout=30)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert "table public.items: rows=" in clean.stdout and "-> equal" in clean.stdout

    items = str(table_path(tmp_lake, "public.items"))
    retrying(lambda: DeltaTable(items).update(updates={"v": "'tampered'"}, predicate="id = 3"))
    retrying(lambda: DeltaTable(items).delete("id = 4"))
    found = run_cli(daemon.config, "verify", timeout=120)
    refusal(found, 8)
    assert "missing=1 extra=0 differing=1" in found.stdout and "  missing: id=4" in found.stdout, found.stdout
    assert "tampered" not in found.stdout
    assert daemon.stop() == 0
