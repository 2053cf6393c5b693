"""Table shapes beyond the plain one: partitioned tables, composite keys, empty tables, schema changes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.daemon import Daemon, wait_converged, write_config
from tests.support.pg import PgDatabase


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    d = Daemon(tmp_path / "cfg.toml", tmp_path)
    yield d
    d.close()


def test_a_partitioned_table_arrives_under_its_root_including_rows_moving_between_partitions(
    pg: PgDatabase, tmp_lake: Path, daemon: Daemon
) -> None:
    pg.execute(
        "create table events (id int, region text, v int, primary key (id, region)) partition by list (region);"
        "create table events_eu partition of events for values in ('eu');"
        "create table events_us partition of events for values in ('us');"
        "insert into events select g, case when g % 2 = 0 then 'eu' else 'us' end, g from generate_series(1, 50) g"
    )
    write_config(daemon.config, pg, tmp_lake, ["public.events"])
    daemon.start()
    wait_converged(pg, tmp_lake, ["public.events"], daemon=daemon)
    pg.execute("insert into events values (100, 'eu', 1), (101, 'us', 2)")
    pg.execute("update events set v = v + 1000 where id <= 10")
    pg.execute("update events set region = 'us' where id = 2")  # moves the row to the other partition
    pg.execute("delete from events where id = 3")
    wait_converged(pg, tmp_lake, ["public.events"], daemon=daemon)
    assert daemon.stop() == 0


def test_an_empty_table_is_loaded_and_then_streams(pg: PgDatabase, tmp_lake: Path, daemon: Daemon) -> None:
    pg.execute("create table empty_one (id bigint primary key, v text)")
    write_config(daemon.config, pg, tmp_lake, ["public.empty_one"])
    daemon.start()
    wait_converged(pg, tmp_lake, ["public.empty_one"], daemon=daemon)
    pg.execute("insert into empty_one values (1, 'x')")
    wait_converged(pg, tmp_lake, ["public.empty_one"], daemon=daemon)
    assert daemon.stop() == 0


def test_a_column_added_while_streaming_is_followed_by_the_default_contract_and_loses_nothing(
    pg: PgDatabase, tmp_lake: Path, daemon: Daemon
) -> None:
    # (until the contracts existed this stopped the daemon with exit 6; see test_schema_change.py)
    pg.execute("create table t (id int primary key, v text)")
    pg.execute("insert into t values (1, 'a')")
    write_config(daemon.config, pg, tmp_lake, ["public.t"])
    daemon.start()
    wait_converged(pg, tmp_lake, ["public.t"], daemon=daemon)
    pg.execute("insert into t values (2, 'before the change')")
    pg.execute("alter table t add column w int")
    pg.execute("insert into t values (3, 'after', 7)")
    pg.execute("update t set w = 0 where w is null")  # older rows written again in the new layout
    wait_converged(pg, tmp_lake, ["public.t"], daemon=daemon, source_columns_only=True)
    assert daemon.alive()
    assert daemon.stop() == 0, daemon.output()


def test_types_whose_text_cast_differs_from_their_output_agree_across_load_stream_and_live_resync(
    pg: PgDatabase, tmp_lake: Path, daemon: Daemon
) -> None:
    from tests.support.daemon import run_cli

    # char(n)::text drops the padding, inet::text adds a netmask, bool::text says 'true': the stream
    # carries the output function's form, so the load and the re-sync must read that form too
    pg.execute("create table odd (code char(4) primary key, addr inet, ok boolean, n int)")
    pg.execute(
        "insert into odd select lpad(g::text, 3, '0'), ('10.0.0.' || g)::inet, g % 2 = 0, g "
        "from generate_series(1, 200) g"
    )
    write_config(daemon.config, pg, tmp_lake, ["public.odd"])
    daemon.config.write_text(daemon.config.read_text() + "[snapshot]\nchunk_rows = 30\n")
    daemon.start()
    wait_converged(pg, tmp_lake, ["public.odd"], daemon=daemon)
    pg.execute("update odd set n = -n, addr = '192.168.1.1' where code < '050'")
    wait_converged(pg, tmp_lake, ["public.odd"], daemon=daemon)
    result = run_cli(daemon.config, "snapshot", "--table", "public.odd", timeout=120)
    assert result.returncode == 0, result.stderr
    pg.execute("update odd set ok = not ok where code > '150'")
    wait_converged(pg, tmp_lake, ["public.odd"], daemon=daemon)
    assert daemon.stop() == 0


def test_excluded_columns_never_reach_delta_nor_leave_the_database(
    pg: PgDatabase, tmp_lake: Path, daemon: Daemon
) -> None:
    from deltalake import DeltaTable

    from tests.support.daemon import run_cli
    from tests.support.lake import table_path

    pg.execute("create table people (id int primary key, name text, ssn text, note text)")
    pg.execute("insert into people select g, 'n' || g, 'secret-' || g, 'x' from generate_series(1, 100) g")
    write_config(
        daemon.config,
        pg,
        tmp_lake,
        ["public.people"],
        table_extra={"public.people": {"exclude_columns": ["ssn"]}},
    )
    daemon.start()
    wait_converged(pg, tmp_lake, ["public.people"], daemon=daemon)
    pg.execute("update people set ssn = 'changed', name = 'm' || id where id <= 10")
    pg.execute("insert into people values (101, 'new', 'secret', 'y')")
    pg.execute("delete from people where id = 50")
    wait_converged(pg, tmp_lake, ["public.people"], daemon=daemon)
    delta = DeltaTable(str(table_path(tmp_lake, "public.people")))
    assert "ssn" not in delta.schema().to_arrow().names
    published = pg.query("select attnames from pg_publication_tables where pubname = 'cdc_test'")
    assert published == [(["id", "name", "note"],)]  # PostgreSQL 15+: the column list of the publication
    assert daemon.stop() == 0, daemon.output()

    write_config(
        daemon.config, pg, tmp_lake, ["public.people"], table_extra={"public.people": {"columns": ["name"]}}
    )
    keyless = run_cli(daemon.config, "run")
    assert (
        keyless.returncode == 3
        and "key column(s) id of public.people would not be replicated" in keyless.stderr
    )
