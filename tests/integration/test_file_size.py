"""Specification of ``[[tables]] target_file_size`` through the daemon: the table's Delta property follows it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from deltalake import DeltaTable

from tests.support.daemon import Daemon, wait_converged, write_config
from tests.support.pg import PgDatabase

MIB = 1024 * 1024


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    d = Daemon(tmp_path / "cfg.toml", tmp_path)
    yield d
    d.close()


def file_size(lake: Path, table: str) -> str | None:
    return DeltaTable(str(lake / "public" / table)).metadata().configuration.get("delta.targetFileSize")


def test_a_table_with_its_own_target_file_size_is_written_with_it_and_the_others_with_the_targets(
    pg: PgDatabase, tmp_lake: Path, daemon: Daemon
) -> None:
    pg.execute(
        "create table hot (id bigint primary key, v int); create table cold (id bigint primary key, v int);"
        "insert into hot select g, 0 from generate_series(1, 100) g;"
        "insert into cold select g, 0 from generate_series(1, 100) g"
    )
    tables = ["public.hot", "public.cold"]
    write_config(daemon.config, pg, tmp_lake, tables, table_extra={"public.hot": {"target_file_size": MIB}})
    daemon.start()
    wait_converged(pg, tmp_lake, tables, daemon=daemon)
    pg.execute("update hot set v = 1 where id <= 10; update cold set v = 1 where id <= 10")
    wait_converged(pg, tmp_lake, tables, daemon=daemon)
    assert daemon.stop() == 0

    assert file_size(tmp_lake, "hot") == str(MIB)
    assert file_size(tmp_lake, "cold") == str(16 * MIB)  # [target] target_file_size's default
