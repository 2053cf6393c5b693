"""Partitioned Delta tables (``[[tables]] partition_by``): loads, the stream, moves between partitions,
TRUNCATE, re-sync with a new partitioning, watermark mode; read back by deltalake and DuckDB.

The daemon's paths are the same on every server version: the newest one is enough.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import duckdb
import duckdb_extension_delta
import pyarrow as pa
import pytest
from deltalake import DeltaTable

from tests.support.cli import refusal
from tests.support.daemon import Daemon, run_cli, wait_converged, write_config
from tests.support.lake import table_path
from tests.support.pg import PgDatabase, versions_from_env

pytestmark = pytest.mark.parametrize(
    "pg_binaries", [versions_from_env()[-1]], indirect=True, ids=lambda v: f"pg{v}"
)

ORDERS = "public.orders"  # partitioned by a non-key column and a day: no partition pruning
EVENTS = "public.events"  # partitioned by a key column (a key move moves the row): merges pruned


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    d = Daemon(tmp_path / "cfg.toml", tmp_path)
    yield d
    d.close()


def _tables(pg: PgDatabase) -> None:
    pg.execute(
        "create table orders (id bigint primary key, region text, created_at timestamptz, v int);"
        "insert into orders select g, (array['eu','us','apac'])[g % 3 + 1], "
        "  timestamptz '2026-11-29 22:30:00+00' + (g % 4) * interval '1 day', g "
        "from generate_series(1, 300) g;"
        "insert into orders values (1001, null, null, 0);"  # NULL partition values
        "create table events (region text, id int, at date not null, v int, primary key (region, id));"
        "insert into events select (array['eu','us'])[g % 2 + 1], g, date '2026-01-15' + g, g "
        "from generate_series(1, 100) g"
    )


def _config(daemon: Daemon, pg: PgDatabase, lake: Path, orders_by: list[str]) -> None:
    write_config(
        daemon.config,
        pg,
        lake,
        [ORDERS, EVENTS],
        table_extra={
            ORDERS: {"partition_by": orders_by},
            EVENTS: {"partition_by": ["region"]},
        },
    )
    # small chunks: the initial load and the re-sync write several chunk commits
    daemon.config.write_text(daemon.config.read_text() + "[snapshot]\nchunk_rows = 100\n")


def _converged(pg: PgDatabase, lake: Path, daemon: Daemon | None = None) -> None:
    """Every table equals its source on the source's columns (Delta adds the derived ones)."""
    wait_converged(pg, lake, [ORDERS, EVENTS], daemon=daemon, source_columns_only=True, timeout=60)


def _delta(lake: Path, table: str) -> DeltaTable:
    return DeltaTable(str(table_path(lake, table)))


def _partition_dirs(lake: Path, table: str) -> set[str]:
    """Each live file's directory under the table root, e.g. ``region=eu/created_at_day=2026-12-01``."""
    paths = pa.table(_delta(lake, table).get_add_actions(flatten=True)).column("path").to_pylist()
    return {str(Path(p).parent) for p in paths} - {"."}


def _rows_in(lake: Path, table: str, where: str) -> list[tuple[Any, ...]]:
    """Rows DuckDB's delta extension reads (the extension file the wheel ships)."""
    ext = Path(duckdb_extension_delta.__file__).parent / "extensions" / f"v{duckdb.__version__}"
    con = duckdb.connect(config={"allow_unsigned_extensions": "true"})
    try:
        con.execute(f"load '{ext / 'delta.duckdb_extension'}'")
        path = table_path(lake, table)
        scan = (
            f"select * exclude (_cdc_lsn, _cdc_op, _cdc_committed_at) from delta_scan('{path}') where {where}"  # noqa: S608
        )
        scan += " order by all"
        # through Arrow: DuckDB's own conversion of timestamptz values needs pytz
        return [tuple(r.values()) for r in con.execute(scan).to_arrow_table().to_pylist()]
    finally:
        con.close()


def _duckdb_equals_source(pg: PgDatabase, lake: Path) -> None:
    orders = pg.query(
        "select id, region, created_at, v, (created_at at time zone 'UTC')::date from orders order by id"
    )
    got = _rows_in(lake, ORDERS, "true")
    assert got == orders
    events = pg.query("select region, id, at, v from events order by region, id")
    assert _rows_in(lake, EVENTS, "true") == events


def test_a_partitioned_table_is_loaded_and_streamed_into_partition_directories_with_rows_moving_between_them(
    pg: PgDatabase, tmp_lake: Path, daemon: Daemon
) -> None:
    _tables(pg)
    _config(daemon, pg, tmp_lake, ["region", "day(created_at)"])
    daemon.start()
    _converged(pg, tmp_lake, daemon)

    assert _delta(tmp_lake, ORDERS).metadata().partition_columns == ["region", "created_at_day"]
    dirs = _partition_dirs(tmp_lake, ORDERS)
    assert "region=eu/created_at_day=2026-11-29" in dirs and "region=us/created_at_day=2026-12-02" in dirs
    assert "region=__HIVE_DEFAULT_PARTITION__/created_at_day=__HIVE_DEFAULT_PARTITION__" in dirs
    assert _partition_dirs(tmp_lake, EVENTS) == {"region=eu", "region=us"}

    # moves: a non-key partition column (region; REPLICA IDENTITY DEFAULT sends no old value), the
    # day of a timestamptz (22:30 UTC + 2 h is the next UTC day), a key partition column (a key move)
    pg.execute("update orders set region = 'us' where id in (3, 6, 9)")  # id % 3 = 0: was 'eu'
    _converged(pg, tmp_lake, daemon)  # a batch of its own (a delete in the batch hides no bug)
    pg.execute("update orders set created_at = created_at + interval '2 hours' where id = 4")
    pg.execute(
        "update orders set region = 'eu', created_at = timestamptz '2026-12-25 12:00+00' where id = 1001"
    )
    pg.execute("update events set region = 'us' where id = 2")  # was 'eu': the key moves
    pg.execute("update events set v = -v where region = 'eu' and id <= 20")
    pg.execute("insert into orders values (2000, 'mars', '2026-12-31 23:59:59+00', 1)")
    pg.execute("delete from orders where id = 5")
    _converged(pg, tmp_lake, daemon)

    moved = _delta(tmp_lake, ORDERS).to_pyarrow_dataset(file_pruning_predicate="region = 'eu'").to_table()
    assert not {3, 6, 9} & set(moved.column("id").to_pylist())  # not left in the old partition
    assert _rows_in(tmp_lake, ORDERS, "id in (3, 4, 1001)") == [
        (3, "us", *pg.query("select created_at from orders where id = 3")[0], 3, date(2026, 12, 2)),
        (4, "us", *pg.query("select created_at from orders where id = 4")[0], 4, date(2026, 11, 30)),
        (1001, "eu", *pg.query("select created_at from orders where id = 1001")[0], 0, date(2026, 12, 25)),
    ]
    assert _rows_in(tmp_lake, EVENTS, "id = 2") == [("us", 2, date(2026, 1, 17), 2)]
    # events is partitioned by a key column: its merges were pruned by the batch's partitions
    # (delta-rs logs `t.region IN (...)` as equalities), not only by the key range
    merges = [h for h in _delta(tmp_lake, EVENTS).history() if h.get("operation") == "MERGE"]
    predicates = [str(h["operationParameters"]["mergePredicate"]) for h in merges]
    assert predicates and all("t.region = 'eu'" in p for p in predicates), predicates
    # orders is not (region is no key column): only the key range
    merges = [h for h in _delta(tmp_lake, ORDERS).history() if h.get("operation") == "MERGE"]
    assert merges and not any("t.region =" in str(h["operationParameters"]["mergePredicate"]) for h in merges)
    _duckdb_equals_source(pg, tmp_lake)

    # compaction works per partition and leaves the rows as they are
    _delta(tmp_lake, ORDERS).optimize.compact()
    pg.execute("truncate orders")
    pg.execute("insert into orders values (1, 'eu', '2026-12-01 00:00+00', 1), (2, 'us', null, 2)")
    _converged(pg, tmp_lake, daemon)
    assert _delta(tmp_lake, ORDERS).metadata().partition_columns == ["region", "created_at_day"]
    assert _partition_dirs(tmp_lake, ORDERS) == {
        "region=eu/created_at_day=2026-12-01",
        "region=us/created_at_day=__HIVE_DEFAULT_PARTITION__",
    }
    assert daemon.stop() == 0, daemon.output()


def test_a_changed_partition_by_is_refused_until_the_table_is_resynced_which_repartitions_it_and_streams_on(
    pg: PgDatabase, tmp_lake: Path, daemon: Daemon
) -> None:
    _tables(pg)
    _config(daemon, pg, tmp_lake, ["region"])
    loaded = run_cli(daemon.config, "snapshot", timeout=120)  # the initial load, without a daemon
    assert loaded.returncode == 0, loaded.stderr
    assert _delta(tmp_lake, ORDERS).metadata().partition_columns == ["region"]

    _config(daemon, pg, tmp_lake, ["month(created_at)"])
    error = refusal(run_cli(daemon.config, "run", timeout=60), 2)
    assert "public.orders" in error and "partitioned by [region]" in error
    assert "cdc-replicator --config" in error and f"snapshot --table {ORDERS}" in error

    pg.execute("update orders set region = 'apac' where id = 1")  # while stopped: the re-sync reads it
    done = run_cli(daemon.config, "snapshot", "--table", ORDERS, timeout=120)
    assert done.returncode == 0, done.stderr
    assert _delta(tmp_lake, ORDERS).metadata().partition_columns == ["created_at_month"]
    assert _partition_dirs(tmp_lake, ORDERS) == {
        "created_at_month=2026-11",
        "created_at_month=2026-12",
        "created_at_month=__HIVE_DEFAULT_PARTITION__",
    }
    daemon.start()
    pg.execute("update orders set created_at = timestamptz '2027-01-01 00:00+00' where id = 2")
    _converged(pg, tmp_lake, daemon)
    assert "created_at_month=2027-01" in _partition_dirs(tmp_lake, ORDERS)
    # a live re-sync of a partitioned table (the daemon runs it in the stream) and verify read it
    pg.execute("update events set region = 'us', v = 7 where id = 4")
    live = run_cli(daemon.config, "snapshot", "--table", EVENTS, timeout=120)
    assert live.returncode == 0, live.stderr
    _converged(pg, tmp_lake, daemon)
    assert _partition_dirs(tmp_lake, EVENTS) == {"region=eu", "region=us"}
    verified = run_cli(daemon.config, "verify", timeout=120)
    assert verified.returncode == 0, verified.stderr
    assert daemon.stop() == 0, daemon.output()


def test_a_partition_by_the_catalog_cannot_satisfy_is_refused_at_start_with_every_problem(
    pg: PgDatabase, tmp_lake: Path, tmp_path: Path
) -> None:
    pg.execute("create table bad (id int primary key, region text, secret text, blob bytea, at date)")
    cfg = write_config(
        tmp_path / "cfg.toml",
        pg,
        tmp_lake,
        ["public.bad"],
        table_extra={
            "public.bad": {
                "partition_by": ["nope", "day(region)", "secret", "blob", "year(at)"],
                "exclude_columns": ["secret"],
            }
        },
    )
    error = refusal(run_cli(cfg, "run", timeout=60), 2)

    assert "public.bad has no column nope" in error
    assert "day(region): day() needs a date, timestamp or timestamptz column" in error
    assert "secret: column secret is not replicated" in error
    assert "blob: delta cannot partition by a column of type binary" in error
    assert "year(at)" not in error
    assert "hint:" in error and not tmp_lake.exists()


def test_watermark_mode_writes_a_partitioned_table_and_moves_rows_whose_day_changes(
    pg: PgDatabase, tmp_lake: Path, tmp_path: Path
) -> None:
    pg.execute(
        "create table items (id bigint primary key, v text, updated_at timestamptz not null);"
        "create index on items (updated_at, id);"
        "insert into items select g, 'v' || g, timestamptz '2026-12-01 12:00+00' + (g % 3) * interval '1 day' "
        "from generate_series(1, 120) g"
    )
    cfg = write_config(
        tmp_path / "cfg.toml",
        pg,
        tmp_lake,
        ["public.items"],
        source_extra={"mode": "watermark"},
        table_extra={"public.items": {"cursor": "updated_at", "partition_by": ["day(updated_at)"]}},
    )
    first = run_cli(cfg, "run", "--once", timeout=120)
    assert first.returncode == 0, first.stderr
    wait_converged(pg, tmp_lake, ["public.items"], source_columns_only=True, timeout=5)
    assert _partition_dirs(tmp_lake, "public.items") == {
        "updated_at_day=2026-12-01",
        "updated_at_day=2026-12-02",
        "updated_at_day=2026-12-03",
    }
    pg.execute("update items set v = 'later', updated_at = timestamptz '2026-12-05 01:00+00' where id <= 10")
    again = run_cli(cfg, "run", "--once", timeout=120)
    assert again.returncode == 0, again.stderr
    wait_converged(pg, tmp_lake, ["public.items"], source_columns_only=True, timeout=5)
    assert "updated_at_day=2026-12-05" in _partition_dirs(tmp_lake, "public.items")
    assert _rows_in(tmp_lake, "public.items", "updated_at_day = date '2026-12-05'") == [
        (i, "later", *pg.query("select updated_at from items where id = %s", (i,))[0], date(2026, 12, 5))
        for i in range(1, 11)
    ]
