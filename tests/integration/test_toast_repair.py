"""Unchanged TOAST values with no Delta row to keep them from: taken from the re-sync chunk or the source.

Rows are deleted from the Delta table behind the daemon's back, then the stream updates them
without touching their large (out-of-line, "unchanged TOAST") column: the value the stream does
not send must never end NULL.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from subprocess import CompletedProcess

import pytest
from deltalake import DeltaTable

from tests.support.daemon import Daemon, run_cli, wait_converged, write_config
from tests.support.lake import retrying, table_path
from tests.support.pg import PgDatabase, versions_from_env
from tests.support.wait import wait_until

# the paths under test are the daemon's, the same on every server version: the newest one is enough
pytestmark = pytest.mark.parametrize(
    "pg_binaries", [versions_from_env()[-1]], indirect=True, ids=lambda v: f"pg{v}"
)

T = "public.docs"
ROWS = 200


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    d = Daemon(tmp_path / "cfg.toml", tmp_path)
    yield d
    d.close()


def _make_docs(pg: PgDatabase) -> None:
    # doc: 3200 characters, distinct per row, stored out of line uncompressed (storage external),
    # so an update that leaves it alone sends it as "unchanged TOAST"
    pg.execute("create table docs (id int primary key, v int not null, doc text)")
    pg.execute("alter table docs alter column doc set storage external")
    pg.execute(
        "insert into docs select g, g, repeat(md5(g::text), 100) from generate_series(1, %s) g", (ROWS,)
    )


def _null_docs(lake: Path) -> list[int]:
    data = DeltaTable(str(table_path(lake, T))).to_pyarrow_table(columns=["id", "doc"])
    return sorted(r["id"] for r in data.to_pylist() if r["doc"] is None)


def _log(daemon: Daemon) -> str:
    return daemon.logs[-1].read_text(errors="replace")


def test_a_live_resync_repairs_missing_rows_the_stream_updates_in_the_window_taking_toast_from_the_chunk(
    pg: PgDatabase, tmp_lake: Path, daemon: Daemon
) -> None:
    _make_docs(pg)
    write_config(daemon.config, pg, tmp_lake, [T], batch={"max_seconds": 0.2})
    daemon.config.write_text(daemon.config.read_text() + "[snapshot]\nchunk_rows = 1000\n")
    # one chunk; its window (after the read, before the high watermark) held open for 3 s
    daemon.start(failpoints="resync_window=1:sleep3")
    wait_converged(pg, tmp_lake, [T], daemon=daemon)
    missing = [i for i in range(1, ROWS + 1) if i % 25 == 0]  # 8 rows
    retrying(lambda: DeltaTable(str(table_path(tmp_lake, T))).delete("id % 25 = 0"))

    result: list[CompletedProcess[str]] = []
    snapshot = threading.Thread(
        target=lambda: result.append(run_cli(daemon.config, "snapshot", "--table", T))
    )
    snapshot.start()
    try:
        wait_until(
            lambda: "failpoint resync_window" in _log(daemon), timeout=30, message="the chunk was never read"
        )
        # inside the window: the chunk holds the old v, the stream the new v and no doc
        pg.execute("update docs set v = v + 1000 where id % 25 = 0")
    finally:
        snapshot.join(timeout=60)
    assert result and result[0].returncode == 0, result[0].stderr if result else "snapshot hung"
    wait_converged(pg, tmp_lake, [T], daemon=daemon)
    assert _null_docs(tmp_lake) == []
    assert pg.query("select count(*) from docs where v > 1000") == [(len(missing),)]
    assert "read from the source" not in _log(daemon)  # the chunk's rows were enough
    assert daemon.stop() == 0


def test_the_stream_takes_unchanged_toast_from_the_source_when_delta_lost_the_row_and_says_when_it_cannot(
    pg: PgDatabase, tmp_lake: Path, daemon: Daemon
) -> None:
    _make_docs(pg)
    write_config(daemon.config, pg, tmp_lake, [T], batch={"max_rows": 1, "max_seconds": 0.2})
    daemon.start()
    wait_converged(pg, tmp_lake, [T], daemon=daemon)
    assert daemon.stop() == 0
    # behind the daemon's back: Delta loses rows 5, 10 and 15
    DeltaTable(str(table_path(tmp_lake, T))).delete("id in (5, 10, 15)")
    pg.execute("update docs set v = -5 where id = 5")  # an update of a lost row
    pg.execute("update docs set id = 10010 where id = 10")  # a key move from a lost row
    pg.execute("update docs set v = -15 where id = 15")  # a lost row whose value nobody can know:
    pg.execute("delete from docs where id = 15")  # the source no longer has it when the update applies
    daemon.start()  # one transaction per batch (max_rows = 1): the update of 15 applies on its own
    wait_converged(pg, tmp_lake, [T], daemon=daemon)
    assert _null_docs(tmp_lake) == []
    log = _log(daemon)
    # rows 5 and 10010, each in its own batch
    assert log.count("unchanged toast values read from the source table=public.docs rows=1") == 2, log
    unknown = [line for line in log.splitlines() if "unchanged toast value unknown" in line]
    assert len(unknown) == 1 and "table=public.docs rows=1" in unknown[0], log
    assert daemon.stop() == 0


def test_the_source_read_by_key_gives_the_streams_text_form_and_leaves_out_keys_it_lacks(
    pg: PgDatabase,
) -> None:
    import pyarrow as pa

    from cdc_replicator.model import Column, TableId, TableSchema
    from cdc_replicator.source.refetch import SourceRows

    pg.execute(
        "create table notes (tenant int, name varchar(20), at date, doc text, primary key (tenant, name))"
    )
    pg.execute("insert into notes values (1, 'a b', '2024-01-31', 'one'), (1, 'it''s', '2024-02-01', null)")
    schema = TableSchema(
        TableId("public", "notes"),
        (
            Column("tenant", 23, -1, True),
            Column("name", 1043, 24, True),
            Column("at", 1082),
            Column("doc", 25),
        ),
    )
    keys = pa.table(
        {
            "tenant": pa.array([b"1", b"1", b"2"], pa.binary()),
            "name": pa.array([b"a b", b"it's", b"a b"], pa.binary()),
        }
    )
    reader = SourceRows(pg.dsn)
    try:
        got = reader.read(schema, keys, ["at", "doc"])
    finally:
        reader.close()
    assert sorted(got.to_pylist(), key=lambda r: r["name"]) == [
        {"tenant": b"1", "name": b"a b", "at": b"2024-01-31", "doc": b"one"},
        {"tenant": b"1", "name": b"it's", "at": b"2024-02-01", "doc": None},
    ]
