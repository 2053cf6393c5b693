"""The Delta change data feed of a table with ``change_data_feed = true`` holds the changes applied.

Real PostgreSQL (one server version: the feed is written by delta-rs from the merges the daemon
makes, which do not depend on the server's version; the stream itself is tested on both) and real
Delta tables, read back with ``DeltaTable.load_cdf``. Each change is waited for before the next,
so each lands in its own commit: a batch keeps only the last change of a key (README "Change data
feed"), which this test does not need to depend on.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from deltalake import DeltaTable, write_deltalake
from deltalake.exceptions import DeltaError

from tests.support.daemon import Daemon, run_cli, wait_converged, write_config
from tests.support.kernel_reader import duckdb_rows
from tests.support.lake import table_path
from tests.support.pg import PgDatabase, versions_from_env
from tests.support.wait import wait_until

NEWEST = [versions_from_env()[-1]]
ITEMS, SOFT, LATE = "public.cdf_items", "public.cdf_soft", "public.cdf_late"
BIG = "".join(f"{i:08x}" for i in range(1500))  # 12 kB, stored out of line uncompressed: TOAST

Row = tuple[Any, ...]  # (commit version, change type, id, v[, big length | _cdc_deleted])


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    d = Daemon(tmp_path / "cfg.toml", tmp_path)
    yield d
    d.close()


def _table(lake: Path, table: str) -> DeltaTable:
    return DeltaTable(str(table_path(lake, table)))


def feed(lake: Path, table: str, start: int, extra: str = "") -> list[Row]:
    """The feed from ``start`` on as (version, change type, id, v, extra) rows, in commit order."""
    data = pa.table(_table(lake, table).load_cdf(starting_version=start, allow_out_of_range=True).read_all())
    cols = {n: data.column(n) for n in data.column_names}
    text = {n: c.cast(pa.string()) for n, c in cols.items() if pa.types.is_string_view(c.type)}
    cols.update(text)  # load_cdf returns string_view columns
    out = []
    for i in range(data.num_rows):
        value = cols[extra][i].as_py() if extra else None
        if extra == "big":
            value = None if value is None else len(value) if value == BIG else f"other {len(value)}"
        row: Row = (
            cols["_commit_version"][i].as_py(),
            cols["_change_type"][i].as_py(),
            cols["id"][i].as_py(),
            cols["v"][i].as_py(),
        )
        out.append((*row, value) if extra else row)
    return sorted(out, key=lambda r: (r[0], r[1], r[2]))


def changes_since(lake: Path, table: str, start: int, want: list[Row], extra: str = "") -> list[Row]:
    """Wait until the feed from ``start`` holds ``want`` (without versions); return it with versions."""
    got: list[list[Row]] = [[]]

    def arrived() -> bool:
        got[0] = feed(lake, table, start, extra)
        return sorted(r[1:] for r in got[0]) == sorted(want)

    try:
        wait_until(arrived, timeout=30, interval=0.2, message=f"feed of {table}")
    except AssertionError:
        raise AssertionError(f"feed of {table} from {start}: {got[0]}, want {want}") from None
    return got[0]


def version(lake: Path, table: str) -> int:
    return _table(lake, table).version()


@pytest.mark.parametrize("pg_binaries", NEWEST, indirect=True)
def test_the_change_data_feed_holds_each_insert_update_delete_and_truncate_as_applied(
    pg: PgDatabase, tmp_path: Path, tmp_lake: Path, daemon: Daemon
) -> None:
    pg.execute("create table cdf_items (id int primary key, v text, big text)")
    pg.execute("alter table cdf_items alter column big set storage external")  # out of line, uncompressed
    pg.execute("create table cdf_soft (id int primary key, v text)")
    pg.execute("create table cdf_late (id int primary key, v text)")
    pg.execute("insert into cdf_items values (1, 'a', %s), (2, 'b', null), (3, 'c', null)", (BIG,))
    pg.execute("insert into cdf_soft values (1, 'x'), (2, 'y')")
    pg.execute("insert into cdf_late values (1, 'p')")
    tables = [ITEMS, SOFT, LATE]
    cdf = {"change_data_feed": True}
    extra: dict[str, dict[str, object]] = {ITEMS: cdf, SOFT: {**cdf, "soft_delete": True}}
    write_config(daemon.config, pg, tmp_lake, tables, table_extra=extra)
    daemon.start()
    wait_converged(pg, tmp_lake, tables, daemon=daemon)

    # the initial load: inserts only (the load's first and last commits are empty: no rows)
    loaded = changes_since(
        tmp_lake,
        ITEMS,
        0,
        [("insert", 1, "a", len(BIG)), ("insert", 2, "b", None), ("insert", 3, "c", None)],
        "big",
    )
    assert version(tmp_lake, ITEMS) > max(r[0] for r in loaded), "the load-end commit has no feed rows"
    assert _table(tmp_lake, LATE).metadata().configuration.get("delta.enableChangeDataFeed") is None

    v = version(tmp_lake, ITEMS) + 1
    pg.execute("insert into cdf_items values (4, 'd', null), (5, 'e', null)")
    changes_since(tmp_lake, ITEMS, v, [("insert", 4, "d", None), ("insert", 5, "e", None)], "big")

    # an update that leaves the TOAST value unchanged: both images carry it
    v = version(tmp_lake, ITEMS) + 1
    pg.execute("update cdf_items set v = 'a2' where id = 1")
    changes_since(
        tmp_lake,
        ITEMS,
        v,
        [("update_preimage", 1, "a", len(BIG)), ("update_postimage", 1, "a2", len(BIG))],
        "big",
    )

    # a key change: the old key is deleted and the new one inserted, in one commit
    v = version(tmp_lake, ITEMS) + 1
    pg.execute("update cdf_items set id = 20 where id = 2")
    moved = changes_since(tmp_lake, ITEMS, v, [("delete", 2, "b", None), ("insert", 20, "b", None)], "big")
    assert len({r[0] for r in moved}) == 1

    v = version(tmp_lake, ITEMS) + 1
    pg.execute("delete from cdf_items where id = 3")
    changes_since(tmp_lake, ITEMS, v, [("delete", 3, "c", None)], "big")

    # a row inserted and deleted in one transaction: a commit that only records the position
    v = version(tmp_lake, ITEMS)
    pg.execute(
        "begin; insert into cdf_items values (99, 'gone', null); delete from cdf_items where id = 99; commit"
    )
    wait_until(lambda: version(tmp_lake, ITEMS) > v, timeout=30, message="position-only commit")
    assert feed(tmp_lake, ITEMS, v + 1) == [], "a position-only commit adds nothing to the feed"

    # TRUNCATE (an overwrite of the whole table): every row deleted, what follows it inserted, one commit
    v = version(tmp_lake, ITEMS) + 1
    pg.execute("begin; truncate cdf_items; insert into cdf_items values (100, 'new', null); commit")
    cut = changes_since(
        tmp_lake,
        ITEMS,
        v,
        [
            ("delete", 1, "a2", len(BIG)),
            ("delete", 4, "d", None),
            ("delete", 5, "e", None),
            ("delete", 20, "b", None),
            ("insert", 100, "new", None),
        ],
        "big",
    )
    assert len({r[0] for r in cut}) == 1

    # soft delete: a delete (and a truncate) is an update that marks the row deleted
    v = version(tmp_lake, SOFT) + 1
    pg.execute("delete from cdf_soft where id = 1")
    changes_since(
        tmp_lake,
        SOFT,
        v,
        [("update_preimage", 1, "x", False), ("update_postimage", 1, "x", True)],
        "_cdc_deleted",
    )
    v = version(tmp_lake, SOFT) + 1
    pg.execute("truncate cdf_soft")
    changes_since(
        tmp_lake,
        SOFT,
        v,
        [("update_preimage", 2, "y", False), ("update_postimage", 2, "y", True)],
        "_cdc_deleted",
    )
    assert daemon.stop() == 0

    # the feed is in commit order: versions only grow along the table's history
    every = feed(tmp_lake, ITEMS, 0)
    assert [r[0] for r in every] == sorted(r[0] for r in every)

    # compaction rewrites files without changing data: nothing in the feed (two more small files
    # appended first, so that there is something to compact)
    row = _table(tmp_lake, ITEMS).to_pyarrow_table()
    for key in (200, 201):
        write_deltalake(
            str(table_path(tmp_lake, ITEMS)),
            row.set_column(0, "id", pa.array([key], pa.int32())),
            mode="append",
        )
    v = version(tmp_lake, ITEMS)
    _table(tmp_lake, ITEMS).optimize.compact()
    assert version(tmp_lake, ITEMS) == v + 1 and feed(tmp_lake, ITEMS, v + 1) == []

    # a re-sync (daemon stopped) empties the table and loads it again: every row deleted and inserted
    v = version(tmp_lake, ITEMS) + 1
    resync = run_cli(daemon.config, "snapshot", "--table", ITEMS)
    assert resync.returncode == 0, resync.stderr
    again = [("delete", k, "new", None) for k in (100, 200, 201)] + [("insert", 100, "new", None)]
    changes_since(tmp_lake, ITEMS, v, again, "big")

    # switched on for an existing table at the next start: the feed begins at that commit;
    # switched off in the config: the table keeps its feed (said in the log)
    write_config(
        daemon.config, pg, tmp_lake, tables, table_extra={ITEMS: cdf, SOFT: {"soft_delete": True}, LATE: cdf}
    )
    daemon.start()
    daemon.wait_streaming()
    log = daemon.output(last=10_000)
    assert "change data feed enabled" in log and "table=public.cdf_late" in log
    assert "change data feed stays on" in log and "table=public.cdf_soft" in log
    late = _table(tmp_lake, LATE)
    assert late.metadata().configuration.get("delta.enableChangeDataFeed") == "true"
    assert late.protocol().min_writer_version >= 4
    enabled_at = [h for h in late.history() if h.get("cdc.op") == "enable-change-data-feed"]
    assert len(enabled_at) == 1
    start = int(enabled_at[0]["version"])
    with pytest.raises(DeltaError, match="change data"):
        late.load_cdf(starting_version=0).read_all()
    pg.execute("update cdf_late set v = 'q' where id = 1")
    changes_since(tmp_lake, LATE, start, [("update_preimage", 1, "p"), ("update_postimage", 1, "q")])
    assert _table(tmp_lake, SOFT).metadata().configuration.get("delta.enableChangeDataFeed") == "true"
    assert daemon.stop() == 0

    # a table with a feed is read by DuckDB's delta extension as by delta-rs
    for t in tables:
        data = _table(tmp_lake, t).to_pyarrow_table(columns=["id", "v", "_cdc_lsn"]).sort_by("id")
        want = [
            (r["id"], r["v"], r["_cdc_lsn"])
            for r in data.cast(
                pa.schema([("id", pa.int32()), ("v", pa.string()), ("_cdc_lsn", pa.int64())])
            ).to_pylist()
        ]
        assert duckdb_rows(table_path(tmp_lake, t), "id, v, _cdc_lsn", "id") == want, t
