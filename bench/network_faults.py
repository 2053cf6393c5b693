"""Measure the issue-13 scenarios by hand: six RST cuts 6 s apart, then a silent partition and heal.

Runs a throwaway PostgreSQL 16, a loopback proxy (tests/support/proxy.py) between it and the daemon,
the randomized workload, and the daemon with its *default* timeouts (wal_receiver_timeout 60 s,
back-off cap 30 s, reset after 3 s; the server's wal_sender_timeout 60 s). Prints the retry waits,
how long the daemon took to catch up, when /readyz and /healthz changed, and how long after the
heal it streamed again.  Usage: python bench/network_faults.py [partition_seconds]
"""

from __future__ import annotations

import json
import re
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from cdc_replicator.demo.localpg import find_binaries
from tests.support.cluster import Cluster
from tests.support.daemon import Daemon, wait_converged, write_config
from tests.support.pg import PgDatabase, create_test_database
from tests.support.proxy import TcpProxy
from tests.support.workload import TABLES, Workload, create_schema

_RETRY = re.compile(r"retrying in ([0-9.]+)s")


def _get(url: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(url, timeout=3) as r:
            return int(r.status), json.loads(r.read())
    except urllib.error.HTTPError as e:
        with e:
            return int(e.code), json.loads(e.read())
    except OSError:
        return 0, {}


class Writer:
    def __init__(self, db: PgDatabase, seed: int) -> None:
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self.run, args=(db, seed), daemon=True)
        self.thread.start()

    def run(self, db: PgDatabase, seed: int) -> None:
        w = Workload(db, seed=seed)
        while not self.stop_event.is_set():
            w.run(10, concurrency=2)
            time.sleep(0.05)

    def stop(self) -> None:
        self.stop_event.set()
        self.thread.join(timeout=60)


def log_text(d: Daemon) -> str:
    return "".join(p.read_text(errors="replace") for p in d.logs)


def streams(d: Daemon) -> int:
    return log_text(d).count("replication started slot=")


def main() -> None:
    partition_seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 30.0
    work = Path(tempfile.mkdtemp(prefix="netbench-"))
    with Cluster(find_binaries(16), fast=True) as cluster, TcpProxy("127.0.0.1", cluster.port) as proxy:
        db = create_test_database(cluster, "netbench")
        through = PgDatabase(db.name, db.dsn.replace(f":{cluster.port}/", f":{proxy.port}/"), cluster)
        create_schema(db, rows=200, seed=1)
        lake = work / "lake"
        cfg = write_config(
            work / "cfg.toml", through, lake, TABLES, source_extra={"retry_max_seconds": 30.0}, server={}
        )
        daemon = Daemon(cfg, work)
        daemon.start()
        url = daemon.http_address()
        daemon.wait_streaming(timeout=120)
        print(f"work dir {work}")

        # ---- six RST cuts of the walsender, 6 s apart, under load
        writer = Writer(db, seed=2)
        for i in range(6):
            time.sleep(6)
            n = proxy.cut(lambda c: c.replication)
            print(f"cut {i + 1}: {n} walsender connection(s) reset")
        last_cut = time.monotonic()
        writer.stop()
        wait_converged(db, lake, TABLES, daemon=daemon, timeout=180)
        caught_up = time.monotonic() - last_cut
        waits = [float(w) for w in _RETRY.findall(log_text(daemon))]
        print(f"scenario 1: retry waits {waits}; caught up {caught_up:.1f}s after the last cut")

        # ---- a silent partition of every connection, under load, then heal
        writer = Writer(db, seed=3)
        time.sleep(3)
        before = streams(daemon)
        t0 = time.monotonic()
        proxy.partition()
        first_unready = first_dead = None
        reasons: list[str] = []
        while time.monotonic() - t0 < partition_seconds:
            code, body = _get(url + "/readyz")
            if code == 503 and first_unready is None:
                first_unready = time.monotonic() - t0
                reasons = body.get("reasons", [])
            if first_dead is None and "closing the replication connection" in log_text(daemon):
                first_dead = time.monotonic() - t0
            time.sleep(0.5)
        print(f"scenario 2: /readyz during the partition: 503 from {first_unready}s on, reasons={reasons}")
        print(f"scenario 2: /healthz during the partition: {_get(url + '/healthz')}")
        healed = time.monotonic()
        proxy.heal()
        while streams(daemon) <= before:
            if first_unready is None and _get(url + "/readyz")[0] == 503:
                first_unready = time.monotonic() - t0
            if first_dead is None and "closing the replication connection" in log_text(daemon):
                first_dead = time.monotonic() - t0
            time.sleep(0.2)
        back = time.monotonic() - healed
        print(f"scenario 2: /readyz 503 from {first_unready}s after the partition began")
        print(f"scenario 2: path given up {first_dead}s after the partition began")
        print(f"scenario 2: streaming again {back:.1f}s after the heal ({partition_seconds:.0f}s partition)")
        writer.stop()
        wait_converged(db, lake, TABLES, daemon=daemon, timeout=180)
        print(
            f"scenario 2: converged {time.monotonic() - healed:.1f}s after the heal; /readyz {_get(url + '/readyz')[0]}"
        )
        in_use = log_text(daemon).count("in use") + log_text(daemon).count("is active for PID")
        print(f"scenario 2: 'slot in use' retries: {in_use}")
        daemon.stop()


if __name__ == "__main__":
    main()
