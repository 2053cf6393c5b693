"""The lake's disk fills up while the daemon streams (and before an initial load): the daemon stops
applying with a clear error naming ENOSPC, the path and the fix, retries with back-off (not ready,
but alive), confirms nothing the Delta tables do not hold, and converges once space is freed — also
after a kill -9 while the disk was full. No half-written file is ever taken for a commit: after
recovery every table reads back whole and equals its source.

The lake is a small tmpfs mounted for the test (root can mount here; a failure to mount fails the
test); a filler file takes the rest of its space. PostgreSQL 15 only, on a cluster of its own: the
disk is the daemon's, the server's version changes nothing.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from pathlib import Path

import duckdb
import duckdb_extension_delta
import pytest
from deltalake import DeltaTable

from cdc_replicator.model import Lsn
from cdc_replicator.sink.offsets import app_id
from tests.support.cli import refusal
from tests.support.daemon import Daemon, run_cli, wait_converged, write_config
from tests.support.http import get_json
from tests.support.lake import table_path
from tests.support.mounts import mount_tmpfs, umount
from tests.support.pg import PgDatabase
from tests.support.wait import wait_until

pytestmark = pytest.mark.slow

SLOT = "cdc_test"
TABLES = ["public.t", "public.u"]
LAKE_MB = 24
SINK_ERROR = 7


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    d = Daemon(tmp_path / "cfg.toml", tmp_path)
    yield d
    d.close()


@pytest.fixture
def lake(tmp_path: Path, daemon: Daemon) -> Iterator[Path]:
    """A tmpfs of ``LAKE_MB`` MiB as the lake; unmounted after the daemon is gone."""
    path = tmp_path / "lake"
    mount_tmpfs(path, LAKE_MB)
    try:
        yield path
    finally:
        daemon.close()
        umount(path)


def _fill(lake: Path, *, leave: int = 0) -> Path:
    """Take every free byte but ``leave`` of the lake's file system with one file (remove it to free)."""
    filler = lake / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for size in (1 << 20, 4096, 1):  # big blocks, then the last partial ones
            try:
                while True:
                    os.write(fd, b"\0" * size)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
        if leave:
            os.ftruncate(fd, os.fstat(fd).st_size - leave)
    finally:
        os.close(fd)
    assert leave or os.statvfs(lake).f_bavail == 0
    return filler


def _free(filler: Path) -> None:
    filler.unlink()


def _schema(db: PgDatabase, rows: int) -> None:
    db.execute("create table t (id int primary key, v text)")
    db.execute("create table u (id int primary key, n int)")
    db.execute("insert into t select g, repeat(md5(g::text), 4) from generate_series(1, %s) g", (rows,))
    db.execute("insert into u select g, g from generate_series(1, %s) g", (rows,))


def _write(db: PgDatabase, start: int, n: int) -> None:
    """``n`` small transactions on both tables (inserts, updates, deletes)."""
    with db.connect(autocommit=True) as conn:
        for i in range(start, start + n):
            with conn.transaction():
                conn.execute(
                    "insert into t values (%s, %s) on conflict (id) do update set v = excluded.v",
                    (i, f"w{i}"),
                )
                conn.execute("update u set n = n + 1 where id = %s", (i % 50 + 1,))
                conn.execute("delete from t where id = %s", (i - 7,))


def _wal_lsn(db: PgDatabase) -> Lsn:
    return Lsn.parse(db.query("select pg_current_wal_lsn()::text")[0][0])


def _confirmed(db: PgDatabase) -> Lsn:
    rows = db.query(
        "select confirmed_flush_lsn::text from pg_replication_slots where slot_name = %s", (SLOT,)
    )
    return Lsn.parse(rows[0][0])


def _holds_marker(lake: Path, marker: int) -> bool:
    data = DeltaTable(str(table_path(lake, "public.t"))).to_pyarrow_table(filters=[("id", "=", marker)])
    return data.num_rows > 0


def _storage_full_reason(base: str) -> str:
    code, ready = get_json(base + "/readyz")
    if code == 200:
        return ""
    return " ".join(ready["reasons"]) if ready["phase"] == "retrying" else ""


def _outage_holds_nothing_back(db: PgDatabase, lake: Path, daemon: Daemon, base: str, marker: int) -> None:
    """While the disk is full: not ready naming ENOSPC, the path and the fix; alive; the slot is
    never confirmed past the first transaction Delta does not hold (``marker``'s)."""
    retries = daemon.logs[-1].read_text(errors="replace").count("retrying in")
    before_marker = _wal_lsn(db)
    db.execute("insert into t values (%s, 'marker')", (marker,))
    _write(db, marker + 1, 5)
    reason = wait_until(
        lambda: _storage_full_reason(base), timeout=60, message="never not-ready for the full disk"
    ).lower()
    assert "no space left" in reason and "enospc" in reason, reason
    assert str(lake) in reason and "free space" in reason, reason
    code, live = get_json(base + "/healthz")
    assert code == 200 and live["alive"] is True, live
    # several retries with back-off, and meanwhile nothing past the marker is confirmed or applied
    wait_until(
        lambda: daemon.logs[-1].read_text(errors="replace").count("retrying in") >= retries + 2,
        timeout=30,
        message="fewer than 2 retries",
    )
    assert _confirmed(db) <= before_marker, (str(_confirmed(db)), str(before_marker))
    assert not _holds_marker(lake, marker)
    positions = [DeltaTable(str(table_path(lake, t))).transaction_version(app_id(SLOT, t)) for t in TABLES]
    assert all(p is not None and p <= before_marker.value for p in positions), positions
    assert daemon.alive(), daemon.output()


def _readable_everywhere(db: PgDatabase, lake: Path) -> None:
    """Every table reads back whole and equals its source, with deltalake and with DuckDB's delta
    extension (another Delta reader: a half-written file taken for a commit would fail one of them)."""
    wait_converged(db, lake, TABLES, timeout=5)
    ext = Path(duckdb_extension_delta.__file__).parent / "extensions" / f"v{duckdb.__version__}"
    con = duckdb.connect(config={"allow_unsigned_extensions": "true"})
    try:
        con.execute(f"load '{ext / 'delta.duckdb_extension'}'")
        for t, cols in (("public.t", "id, v"), ("public.u", "id, n")):
            scan = f"select {cols} from delta_scan('{table_path(lake, t)}') order by id"  # noqa: S608
            assert con.execute(scan).fetchall() == db.query(f"select {cols} from {t} order by id"), t  # noqa: S608
    finally:
        con.close()


def test_a_full_lake_disk_is_waited_out_without_confirming_and_converges_once_space_is_freed(
    db15: PgDatabase, lake: Path, daemon: Daemon
) -> None:
    _schema(db15, 200)
    write_config(daemon.config, db15, lake, TABLES, server={})
    daemon.start()
    base = daemon.http_address()
    wait_until(lambda: get_json(base + "/readyz")[0] == 200, timeout=60, message="never ready")
    _write(db15, 1000, 20)
    wait_converged(db15, lake, TABLES, daemon=daemon)

    # 1. the disk fills while streaming; space comes back while the same process waits
    filler = _fill(lake)
    _outage_holds_nothing_back(db15, lake, daemon, base, marker=5000)
    _free(filler)
    wait_until(lambda: get_json(base + "/readyz")[0] == 200, timeout=60, message="not ready after")
    wait_converged(db15, lake, TABLES, daemon=daemon)
    assert _holds_marker(lake, 5000)
    _readable_everywhere(db15, lake)

    # 2. full again, and the daemon is killed meanwhile; it starts again with the space freed
    filler = _fill(lake)
    _outage_holds_nothing_back(db15, lake, daemon, base, marker=6000)
    daemon.kill()
    _free(filler)
    _write(db15, 7000, 10)
    daemon.start()
    wait_converged(db15, lake, TABLES, daemon=daemon)
    _readable_everywhere(db15, lake)
    assert daemon.stop() == 0
    assert "Traceback" not in "".join(p.read_text(errors="replace") for p in daemon.logs)


def test_an_initial_load_on_a_full_disk_stops_with_the_fix_and_resumes_once_space_is_freed(
    db15: PgDatabase, lake: Path, daemon: Daemon
) -> None:
    _schema(db15, 12_000)
    write_config(daemon.config, db15, lake, TABLES, server={})
    daemon.config.write_text(daemon.config.read_text() + "[snapshot]\nparallel = 2\nchunk_rows = 1500\n")
    filler = _fill(lake, leave=256 << 10)  # room for a few chunks, not for all
    failed = run_cli(daemon.config, "snapshot", timeout=120)
    message = refusal(failed, SINK_ERROR)
    assert "no space left" in message and "enospc" in message and str(lake).lower() in message, message
    assert "free space" in message and "snapshot" in message, message
    assert "load planned" in failed.stderr  # it got as far as the chunks
    assert "chunk retry" not in failed.stderr  # a full disk stops the load at once, chunks are not retried

    # the daemon takes the load over: it waits (not ready, saying why) until space is freed
    daemon.start()
    base = daemon.http_address()
    reason = wait_until(
        lambda: _storage_full_reason(base), timeout=90, message="never not-ready for the full disk"
    ).lower()
    assert "lake storage full" in reason and "enospc" in reason and "free space" in reason, reason
    assert get_json(base + "/healthz")[1]["alive"] is True
    _free(filler)
    wait_until(lambda: "initial load resumed" in daemon.output(400), timeout=60, message="not resumed")
    _write(db15, 50_000, 10)
    wait_converged(db15, lake, TABLES, daemon=daemon, timeout=90)
    _readable_everywhere(db15, lake)
    assert daemon.stop() == 0
