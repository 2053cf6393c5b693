"""Network faults between the daemon and PostgreSQL, through a loopback proxy: resets, a silent
partition, latency and a slow link. After each the Delta tables equal their sources (nothing lost,
nothing doubled) and ``/readyz`` said why it was not ready while the fault lasted.

One PostgreSQL 16 cluster for the module (``wal_sender_timeout = 5s``: a walsender cut off by a
partition gives its slot up soon after the partition heals, as a production server would after its
own, longer, timeout; the daemon retries "slot in use" meanwhile). The daemon's DSN points at the
proxy; the workload writes to the server directly.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from deltalake import DeltaTable

from cdc_replicator.demo.localpg import find_binaries
from tests.support.cluster import Cluster
from tests.support.daemon import Daemon, wait_converged, write_config
from tests.support.lake import table_path
from tests.support.pg import PgDatabase, create_test_database, drop_test_database
from tests.support.proxy import ProxiedConnection, TcpProxy
from tests.support.wait import wait_until
from tests.support.workload import TABLES, Workload, create_schema

pytestmark = pytest.mark.slow

_KEYS = {"public.accounts": ["id"], "public.ledger": ["acct", "entry"], "public.profiles": ["id"]}
_RETRY = re.compile(r"retrying in ([0-9.]+)s")


@pytest.fixture(scope="module")
def net_cluster() -> Iterator[Cluster]:
    with Cluster(find_binaries(16), fast=True, settings={"wal_sender_timeout": "5s"}) as cluster:
        yield cluster


@pytest.fixture
def db(net_cluster: Cluster, request: pytest.FixtureRequest) -> Iterator[PgDatabase]:
    d = create_test_database(net_cluster, request.node.name)
    yield d
    drop_test_database(d)


@pytest.fixture
def proxy(net_cluster: Cluster) -> Iterator[TcpProxy]:
    with TcpProxy("127.0.0.1", net_cluster.port) as p:
        yield p


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    d = Daemon(tmp_path / "cfg.toml", tmp_path)
    yield d
    d.close()


def _through(db: PgDatabase, proxy: TcpProxy) -> PgDatabase:
    """``db`` as the daemon sees it: every connection through the proxy."""
    port = db.cluster.port
    assert f":{port}/" in db.dsn
    return PgDatabase(db.name, db.dsn.replace(f":{port}/", f":{proxy.port}/"), db.cluster)


class _Writer:
    """The workload in a background thread until ``stop()``; its errors are raised there."""

    def __init__(self, db: PgDatabase, seed: int, *, per_round: int = 10) -> None:
        self._stop = threading.Event()
        self._errors: list[BaseException] = []
        self._thread = threading.Thread(target=self._run, args=(db, seed, per_round), daemon=True)
        self._thread.start()

    def _run(self, db: PgDatabase, seed: int, per_round: int) -> None:
        w = Workload(db, seed=seed)
        try:
            while not self._stop.is_set():
                w.run(per_round, concurrency=2)
                time.sleep(0.05)
        except BaseException as exc:  # surfaced by stop()
            self._errors.append(exc)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=60)
        assert not self._errors, self._errors


def _get(url: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(url, timeout=3) as r:
            return int(r.status), json.loads(r.read())
    except urllib.error.HTTPError as e:
        with e:
            return int(e.code), json.loads(e.read())


def _assert_unique_keys(lake: Path) -> None:
    for table, key in _KEYS.items():
        data = DeltaTable(str(table_path(lake, table))).to_pyarrow_table().select(key)
        rows = [tuple(r.values()) for r in data.to_pylist()]
        assert len(rows) == len(set(rows)), f"{table} holds a key twice"


def _log(daemon: Daemon) -> str:
    return "".join(p.read_text(errors="replace") for p in daemon.logs)


def _streams(daemon: Daemon) -> int:
    return _log(daemon).count("replication started slot=")


def _walsender(c: ProxiedConnection) -> bool:
    return c.replication


def _side(c: ProxiedConnection) -> bool:
    return not c.replication


def test_resets_of_the_walsender_load_workers_and_side_connections_at_random_moments_converge(
    db: PgDatabase, proxy: TcpProxy, tmp_lake: Path, daemon: Daemon
) -> None:
    create_schema(db, rows=400, seed=31)
    write_config(
        daemon.config,
        _through(db, proxy),
        tmp_lake,
        TABLES,
        source_extra={"slot_check_interval_seconds": 0.5, "heartbeat_interval_seconds": 0.5},
    )
    daemon.config.write_text(daemon.config.read_text() + "[snapshot]\nchunk_rows = 100\nparallel = 2\n")
    rng = random.Random(7)
    daemon.start()

    def copying(c: ProxiedConnection) -> bool:
        return _side(c) and "snapshot" in c.application_name

    # the initial load: cut the copy workers' connections at random moments of their chunks
    cut_during_load = 0
    deadline = time.monotonic() + 60
    while cut_during_load < 3 and "streaming slot=" not in _log(daemon):
        assert time.monotonic() < deadline and daemon.alive(), daemon.output()
        if any(copying(c) for c in proxy.connections()):
            time.sleep(rng.uniform(0.0, 0.2))
            cut_during_load += proxy.cut(copying)
        time.sleep(0.02)
    daemon.wait_streaming(timeout=90)
    writer = _Writer(db, seed=32)
    try:
        for n in range(4):  # the walsender (and a side connection), at a random moment of each stream
            before = _streams(daemon)
            time.sleep(rng.uniform(0.2, 1.0))
            if n < 3:
                assert proxy.cut(_walsender) >= 1, f"round {n}: no walsender to cut"
                time.sleep(rng.uniform(0.1, 0.5))
                proxy.cut(_side)
            else:
                proxy.cut()  # everything at once
            wait_until(
                lambda b=before: _streams(daemon) > b, timeout=30, message=f"no reconnect in round {n}"
            )
    finally:
        writer.stop()
    wait_converged(db, tmp_lake, TABLES, daemon=daemon, timeout=90)
    _assert_unique_keys(tmp_lake)
    assert cut_during_load > 0, "no load connection was cut: the test did not test the load"
    assert _streams(daemon) >= 5, "the walsender was not cut and reconnected"
    assert daemon.alive(), daemon.output()
    assert daemon.stop() == 0


def test_a_silent_partition_is_detected_within_the_timeout_reported_by_readyz_and_healed(
    db: PgDatabase, proxy: TcpProxy, tmp_lake: Path, daemon: Daemon
) -> None:
    create_schema(db, rows=100, seed=41)
    timeout = 4.0
    write_config(
        daemon.config,
        _through(db, proxy),
        tmp_lake,
        TABLES,
        source_extra={
            "wal_receiver_timeout_seconds": timeout,
            "connect_timeout_seconds": 2,
            "slot_check_interval_seconds": 0.5,
        },
        server={},
    )
    daemon.start()
    url = daemon.http_address()
    daemon.wait_streaming()
    wait_until(lambda: _get(url + "/readyz")[0] == 200, timeout=30, message="never ready")
    writer = _Writer(db, seed=42)
    try:
        time.sleep(1.0)
        started = time.monotonic()
        proxy.partition()
        seen: list[tuple[float, dict[str, Any]]] = []
        alive_during: list[int] = []
        while time.monotonic() - started < timeout + 5:
            code, body = _get(url + "/readyz")
            if code == 503:
                seen.append((time.monotonic() - started, body))
            alive_during.append(_get(url + "/healthz")[0])
            time.sleep(0.25)
        assert seen, "/readyz never said the stream is stuck during the partition"
        first, body = seen[0]
        assert first <= timeout + 1.0, f"not ready only after {first:.1f}s"
        assert body["reasons"] and body["connected"] is False, body
        _, last = seen[-1]
        assert last["reasons"], last
        assert "no message from the walsender" in _log(daemon), daemon.output()
        assert all(c == 200 for c in alive_during), "a loop that retries is alive, not wedged"
        healed = time.monotonic()
        before = _streams(daemon)
        proxy.heal()
        wait_until(
            lambda: _streams(daemon) > before, timeout=60, message="never streamed again after healing"
        )
        back_after = time.monotonic() - healed
    finally:
        writer.stop()
    wait_converged(db, tmp_lake, TABLES, daemon=daemon, timeout=60)
    _assert_unique_keys(tmp_lake)
    wait_until(lambda: _get(url + "/readyz")[0] == 200, timeout=30, message="not ready again after healing")
    assert back_after < 30, f"streamed again only {back_after:.1f}s after the partition healed"
    assert daemon.stop() == 0


def test_a_partition_during_the_initial_load_ends_the_silent_copies_and_their_chunks_are_read_again(
    db: PgDatabase, proxy: TcpProxy, tmp_lake: Path, daemon: Daemon
) -> None:
    create_schema(db, rows=600, seed=81)
    timeout = 3.0
    write_config(
        daemon.config,
        _through(db, proxy),
        tmp_lake,
        TABLES,
        source_extra={"wal_receiver_timeout_seconds": timeout, "connect_timeout_seconds": 2},
    )
    daemon.config.write_text(daemon.config.read_text() + "[snapshot]\nchunk_rows = 100\nparallel = 2\n")
    proxy.set_rate(150_000)  # a slow link, so that the partition finds copies in flight

    def copying(c: ProxiedConnection) -> bool:
        return _side(c) and "snapshot" in c.application_name and c.bytes_down > 30_000  # rows flow

    daemon.start()
    wait_until(lambda: any(copying(c) for c in proxy.connections()), timeout=60, message="no copy started")
    proxy.partition()
    time.sleep(timeout + 1.5)
    proxy.heal()
    proxy.set_rate(None)
    daemon.wait_streaming(timeout=90)
    wait_converged(db, tmp_lake, TABLES, daemon=daemon, timeout=60)
    _assert_unique_keys(tmp_lake)
    log = _log(daemon)
    # the driver's start-up catalog queries or the COPY itself: either was silent, and was ended
    assert re.search(r"no data from the source for \d+s while (connecting to copy|copying)", log), (
        daemon.output()
    )
    assert "chunk retry after" in log
    assert daemon.stop() == 0


def test_latency_and_a_slow_link_under_load_converge_and_stay_ready(
    db: PgDatabase, proxy: TcpProxy, tmp_lake: Path, daemon: Daemon
) -> None:
    create_schema(db, rows=300, seed=51)  # ~0.5 MB of accounts: one COPY batch takes longer than the timeout
    write_config(
        daemon.config,
        _through(db, proxy),
        tmp_lake,
        TABLES,
        source_extra={"wal_receiver_timeout_seconds": 2.0, "reader": "thread"},
        server={},
    )
    proxy.set_latency(0.05)
    proxy.set_rate(200_000)
    daemon.start()
    url = daemon.http_address()
    daemon.wait_streaming(timeout=90)
    wait_until(lambda: _get(url + "/readyz")[0] == 200, timeout=30, message="never ready")
    writer = _Writer(db, seed=52, per_round=3)
    codes: list[int] = []
    try:
        until = time.monotonic() + 4
        while time.monotonic() < until:
            codes.append(_get(url + "/readyz")[0])
            time.sleep(0.25)
    finally:
        writer.stop()
    wait_converged(db, tmp_lake, TABLES, daemon=daemon, timeout=90)
    _assert_unique_keys(tmp_lake)
    log = _log(daemon)
    assert "retrying in" not in log and "chunk retry" not in log, (
        "a slow link was taken for a dead one:\n" + daemon.output()
    )
    assert codes and all(c == 200 for c in codes), f"not ready on a slow link: {codes}"
    assert daemon.stop() == 0


def _reader_pid(daemon: Daemon) -> int:
    assert daemon.proc is not None
    pid = daemon.proc.pid
    for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
        if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes():
            return int(child)
    raise AssertionError("no replication reader process")


def test_an_idle_stream_lives_on_pings_and_a_frozen_reader_turns_readyz_then_healthz_red(
    db: PgDatabase, proxy: TcpProxy, tmp_lake: Path, daemon: Daemon
) -> None:
    create_schema(db, rows=20, seed=71)
    idle = _through(db, proxy)
    # this walsender sends keepalives of its own only every 30 s: only the pings keep the stream alive
    slow_keepalives = PgDatabase(idle.name, idle.dsn + "?options=-c%20wal_sender_timeout%3D60s", idle.cluster)
    write_config(
        daemon.config,
        slow_keepalives,
        tmp_lake,
        TABLES,
        source_extra={"wal_receiver_timeout_seconds": 1.5, "status_interval_seconds": 30.0},
        server={"liveness_timeout_seconds": 2.0},
    )
    daemon.start()
    url = daemon.http_address()
    daemon.wait_streaming()
    wait_until(lambda: _get(url + "/readyz")[0] == 200, timeout=30, message="never ready")
    codes: list[int] = []
    until = time.monotonic() + 4  # more than two timeouts without a change on the source
    while time.monotonic() < until:
        codes.append(_get(url + "/readyz")[0])
        time.sleep(0.2)
    assert "retrying in" not in _log(daemon), daemon.output()
    assert all(c == 200 for c in codes), codes
    assert _streams(daemon) == 1
    # a reader that hangs (here: stopped) leaves the main loop idling on nothing: that is no progress
    reader = _reader_pid(daemon)
    os.kill(reader, signal.SIGSTOP)
    try:
        ready = wait_until(
            lambda: (r := _get(url + "/readyz"))[0] == 503 and r[1], timeout=10, message="/readyz stayed 200"
        )
        assert any("no message from the source" in r for r in ready["reasons"]), ready
        assert ready["connected"] is False
        wait_until(lambda: _get(url + "/healthz")[0] == 503, timeout=15, message="/healthz stayed 200")
    finally:
        os.kill(reader, signal.SIGCONT)
    wait_until(lambda: _get(url + "/healthz")[0] == 200, timeout=30, message="not alive again")
    wait_until(lambda: _get(url + "/readyz")[0] == 200, timeout=30, message="not ready again")
    assert daemon.stop() == 0


def test_the_backoff_starts_again_after_each_reconnect_that_streamed(
    db: PgDatabase, proxy: TcpProxy, tmp_lake: Path, daemon: Daemon
) -> None:
    create_schema(db, rows=50, seed=61)
    reset = 0.5
    write_config(
        daemon.config,
        _through(db, proxy),
        tmp_lake,
        TABLES,
        # the reader in a thread: reconnects are quicker, and the back-off does not depend on it
        source_extra={"retry_max_seconds": 30.0, "retry_reset_seconds": reset, "reader": "thread"},
    )
    daemon.start()
    daemon.wait_streaming()
    writer = _Writer(db, seed=62, per_round=4)
    try:
        for n in range(6):
            before = _streams(daemon)
            wait_until(
                lambda b=before: _streams(daemon) >= b and any(c.replication for c in proxy.connections()),
                timeout=30,
                message="no walsender to cut",
            )
            time.sleep(reset + 0.5)  # streamed (under the workload) longer than the reset bound
            assert proxy.cut(_walsender) == 1, f"cut {n}: no walsender connection"
            wait_until(
                lambda b=before: _streams(daemon) > b, timeout=30, message=f"no reconnect after cut {n}"
            )
    finally:
        writer.stop()
    waits = [float(w) for w in _RETRY.findall(_log(daemon))]
    assert len(waits) >= 6, waits
    assert max(waits) <= 1.0, f"the back-off grew although every reconnect streamed: {waits}"
    wait_converged(db, tmp_lake, TABLES, daemon=daemon, timeout=60)
    _assert_unique_keys(tmp_lake)
    assert daemon.stop() == 0
