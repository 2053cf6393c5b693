"""An unusable state store ([state] url, sqlite by default) gives one clear error naming the file and
the fix, never a traceback: at start (exit 3) when the file is garbage, cut short, on a read-only
mount or under a regular file; while streaming, a state store whose disk fills is retried with
back-off, and the slot is never confirmed past the position the store recorded.

As root, ``chmod`` stops nothing, so "unwritable" is a tmpfs remounted read-only, or a path under a
regular file. PostgreSQL 15 only (the package's cluster): the store is the daemon's.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path

import pytest

from cdc_replicator.errors import StateStoreError
from cdc_replicator.model import Lsn, TableId
from cdc_replicator.store.state import StateStore
from tests.support.cli import refusal
from tests.support.daemon import Daemon, run_cli, wait_converged, write_config
from tests.support.http import get_json
from tests.support.mounts import mount_tmpfs, remount, umount
from tests.support.pg import PgDatabase
from tests.support.wait import wait_until

pytestmark = pytest.mark.slow

SLOT = "cdc_test"
STATE_ERROR = 3


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    d = Daemon(tmp_path / "cfg.toml", tmp_path)
    yield d
    d.close()


def _with_state(config: Path, state_file: Path) -> None:
    """Point the config's [state] url at ``state_file``."""
    lines = config.read_text().splitlines()
    at = lines.index("[state]") + 1
    lines[at] = f'url = "sqlite:///{state_file}"'
    config.write_text("\n".join(lines) + "\n")


def _garbage(f: Path) -> None:
    f.write_bytes(os.urandom(64 * 1024))


def _cut_short(f: Path) -> None:
    os.truncate(f, f.stat().st_size // 2)


def _damaged_inside(f: Path) -> None:
    """Garbage over the last two pages (the newest rows): the file opens, its header is fine."""
    size = f.stat().st_size
    with open(f, "r+b") as out:
        out.seek(size - 2 * 4096)
        out.write(os.urandom(2 * 4096))


def _schema(db: PgDatabase) -> None:
    db.execute("create table t (id int primary key, v text)")
    db.execute("insert into t select g, 'v' || g from generate_series(1, 200) g")


def _good_store(f: Path) -> None:
    """A state store as a daemon leaves it after a load and some schema history (several pages)."""
    store = StateStore(f"sqlite:///{f}")
    try:
        store.begin_load(SLOT, "7000000000000000001")
        store.set_consistent_point(SLOT, Lsn.parse("0/16B37A0"))
        store.finish_load(SLOT, Lsn.parse("0/16B37A0"))
        for _ in range(50):
            store.record_schema(SLOT, TableId("public", "t"), decision="load", new_schema="{}" * 200)
    finally:
        store.close()
    assert f.stat().st_size >= 8 * 4096, f.stat().st_size


def _regular_file(base: Path) -> Path:
    f = base / "not-a-folder"
    f.write_text("a regular file\n")
    return f


def test_a_state_store_that_is_garbage_cut_short_read_only_or_under_a_file_stops_the_start_with_the_fix(
    db15: PgDatabase, tmp_path: Path
) -> None:
    good = tmp_path / "good" / "cdc.db"
    _good_store(good)

    def copy(name: str, damage: Callable[[Path], None]) -> Path:
        f = tmp_path / name / "cdc.db"
        f.parent.mkdir(parents=True)
        shutil.copy(good, f)
        damage(f)
        return f

    # the command line: one clear error, exit 3, no traceback
    config = write_config(tmp_path / "cfg.toml", db15, tmp_path / "lake", ["public.t"])
    garbage = copy("garbage", _garbage)
    _with_state(config, garbage)
    message = refusal(run_cli(config, "run", timeout=60), STATE_ERROR)
    assert str(garbage).lower() in message and "not a database" in message, message
    assert "restore it from a backup" in message and "snapshot" in message, message

    # each case is the same StateStoreError (exit 3) the command line prints, naming the file and the fix
    ro = tmp_path / "ro"
    mount_tmpfs(ro, 8)
    try:
        shutil.copy(good, ro / "cdc.db")
        remount(ro, "ro")
        cases = {
            "garbage": (garbage, "not a database", "restore it from a backup"),
            "cut short": (copy("cut", _cut_short), "malformed", "restore it from a backup"),
            # found only by the check at open (pragma quick_check): nothing read at start touches those pages
            "damaged inside": (copy("inside", _damaged_inside), "malformed", "restore it from a backup"),
            "read-only mount": (ro / "cdc.db", "cannot be opened", "read-only mount"),
            "under a regular file": (_regular_file(tmp_path) / "cdc.db", "cannot be created", "state.url"),
        }
        for label, (f, what, fix) in cases.items():
            with pytest.raises(StateStoreError) as refused:
                StateStore(f"sqlite:///{f}").close()
            text = str(refused.value)
            assert refused.value.exit_code == STATE_ERROR and not refused.value.retryable, label
            assert str(f) in refused.value.message and what in text and fix in refused.value.hint, (
                label,
                text,
            )
    finally:
        umount(ro)


def _recorded(state_file: Path) -> Lsn:
    with closing(sqlite3.connect(f"file:{state_file}?mode=ro", uri=True)) as conn:
        row = conn.execute("select applied_lsn from cdc_source_position where slot = ?", (SLOT,)).fetchone()
    return Lsn.parse(row[0])


def _confirmed(db: PgDatabase) -> Lsn:
    rows = db.query(
        "select confirmed_flush_lsn::text from pg_replication_slots where slot_name = %s", (SLOT,)
    )
    return Lsn.parse(rows[0][0])


def test_a_state_store_whose_disk_fills_while_streaming_is_retried_and_never_confirmed_past(
    db15: PgDatabase, tmp_path: Path, daemon: Daemon
) -> None:
    _schema(db15)
    state_dir = tmp_path / "state"
    mount_tmpfs(state_dir, 2)
    try:
        write_config(daemon.config, db15, tmp_path / "lake", ["public.t"], server={})
        state_file = state_dir / "cdc.db"
        daemon.start()
        base = daemon.http_address()
        wait_until(lambda: get_json(base + "/readyz")[0] == 200, timeout=60, message="never ready")
        filler = state_dir / "filler"
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            for size in (1 << 16, 512, 1):
                try:
                    while True:
                        os.write(fd, b"\0" * size)
                except OSError:
                    pass
        finally:
            os.close(fd)
        before = _wal_lsn(db15)
        with db15.connect(autocommit=True) as conn:
            for i in range(1, 41):
                conn.execute("update t set v = %s where id = %s", (f"full{i}", i))

        def not_ready_for_the_store() -> str:
            code, ready = get_json(base + "/readyz")
            return "" if code == 200 or ready["phase"] != "retrying" else " ".join(ready["reasons"])

        reason = wait_until(not_ready_for_the_store, timeout=60, message="never not-ready").lower()
        assert "state store unavailable" in reason and str(state_file).lower() in reason, reason
        assert "full" in reason and "free space" in reason, reason
        assert get_json(base + "/healthz")[1]["alive"] is True
        wait_until(
            lambda: daemon.logs[-1].read_text(errors="replace").count("retrying in") >= 2,
            timeout=30,
            message="fewer than 2 retries",
        )
        # the changes may be in Delta (the merge worked), but the slot never passes what is recorded
        assert _confirmed(db15) <= _recorded(state_file) <= before, (_confirmed(db15), before)
        assert daemon.alive(), daemon.output()
        filler.unlink()
        wait_until(lambda: get_json(base + "/readyz")[0] == 200, timeout=60, message="not ready after")
        wait_converged(db15, tmp_path / "lake", ["public.t"], daemon=daemon)
        wait_until(lambda: _confirmed(db15) > before, timeout=30, message="the slot never moved on")
        assert _confirmed(db15) <= _recorded(state_file)
        assert daemon.stop() == 0
    finally:
        daemon.close()
        umount(state_dir)


def _wal_lsn(db: PgDatabase) -> Lsn:
    return Lsn.parse(db.query("select pg_current_wal_lsn()::text")[0][0])
