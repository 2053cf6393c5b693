"""Chaos soak: kill -9, network cuts and server restarts at random moments under load; every table compared.

    /opt/venv/bin/python bench/chaos.py [--rounds 100] [--cuts 20] [--restarts 3] [--partitions 0]
        [--seed 1] [--minutes 0] [--check-every 10] [--tps 20] [--max-recovery 120] [--pg 15]
        [--workdir DIR] [--keep] [--out bench/results/chaos.json]

Starts a throwaway PostgreSQL (fsync off, wal_level = logical) and runs ``tests.support.chaos``:
the crash tests' randomized workload (inserts, updates, deletes, key updates, unchanged TOAST
values, interleaved and rolled-back transactions, large transactions, truncates) runs throughout
while the daemon, whose DSN goes through a loopback TCP proxy, suffers a shuffled schedule of
``--rounds`` kill -9 rounds (a fifth of them kill only its replication reader child), ``--cuts``
connection resets (all, the walsender only, the side connections only), ``--restarts`` server
restarts (fast, immediate, crash: SIGKILL of every server process) and, opt-in, ``--partitions``
silent partitions (they need ``source.wal_receiver_timeout_seconds``, written only then, so older builds do
not mind). After every ``--check-every`` rounds and at the end the workload pauses and every table is
compared with its source by key (all columns but ``_cdc_*``).

Prints the faults by kind, rows compared, lost / extra / duplicated / differing rows, the slowest
recovery (end of a fault → a marker committed then is visible in Delta) and PASS/FAIL; writes
everything (with machine and versions) to ``--out``. Exits 0 when no row differed and every
recovery took at most ``--max-recovery`` seconds, 1 otherwise, 2 when the soak could not run.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
if str(REPO_DIR) not in sys.path:
    sys.path.insert(0, str(REPO_DIR))  # tests.support is not installed: it lives beside bench/

import psycopg  # noqa: E402
from common import (  # noqa: E402
    BenchError,
    format_table,
    git_revision,
    interruptible,
    machine_info,
    package_versions,
)

from cdc_replicator.demo.localpg import find_binaries  # noqa: E402
from cdc_replicator.errors import ReplicatorError  # noqa: E402
from tests.support.chaos import ChaosPlan, ChaosReport, run_chaos  # noqa: E402
from tests.support.cluster import Cluster  # noqa: E402

DEFAULT_OUT = BENCH_DIR / "results" / "chaos.json"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=100, help="kill -9 rounds (daemon, or its reader child)")
    p.add_argument("--cuts", type=int, default=20, help="connection resets through the proxy")
    p.add_argument("--restarts", type=int, default=3, help="server restarts: fast, immediate, crash in turn")
    p.add_argument("--partitions", type=int, default=0, help="silent partitions (needs wal_receiver_timeout)")
    p.add_argument("--wal-receiver-timeout", type=float, default=10.0, help="written only with --partitions")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument(
        "--minutes", type=float, default=0.0, help="stop starting rounds after this long (0: never)"
    )
    p.add_argument("--check-every", type=int, default=10, help="compare every table after this many rounds")
    p.add_argument("--tps", type=float, default=20.0, help="workload transactions per second")
    p.add_argument("--max-recovery", type=float, default=120.0, help="FAIL when a recovery takes longer")
    p.add_argument("--retry-max", type=float, default=30.0, help="the daemon's source.retry_max_seconds")
    p.add_argument("--pg", "--pg-version", dest="pg", type=int, default=15)
    p.add_argument(
        "--workdir", type=Path, default=None, help="daemon config, logs and lake (default: a temp dir)"
    )
    p.add_argument("--keep", action="store_true", help="keep the workdir even when the soak passes")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    return p.parse_args(argv)


def render(report: ChaosReport) -> str:
    plan = report.plan
    faults = ", ".join(f"{kind} {n}" for kind, n in report.faults)
    measured = [r.seconds for r in report.recoveries if r.seconds is not None]
    slowest = report.slowest
    if slowest is None:
        slow = "none measured"
    elif slowest.seconds is None:
        slow = f"round {slowest.round} ({slowest.kind}): not within {plan.max_recovery_seconds:g}s"
    else:
        slow = f"{slowest.seconds:.1f}s (round {slowest.round}, {slowest.kind})"
    by_kind: dict[str, list[float]] = {}
    for r in report.recoveries:
        if r.seconds is not None:
            by_kind.setdefault(r.kind, []).append(r.seconds)
    rows = [
        ["rounds survived", f"{report.rounds_done} of {plan.total_rounds}"],
        ["faults", faults],
        ["duration", f"{report.seconds / 60:.1f} min"],
        [
            "workload",
            f"{report.workload_transactions} transactions ({report.workload_errors} broken by faults)",
        ],
        ["comparisons", f"{len(report.checks)} (every {plan.check_every} rounds and at the end)"],
        [
            "not converged",
            f"{report.stalled_checks} (the daemon made no progress: a stall, not counted below)",
        ],
        ["rows compared", f"{report.rows_compared:,}"],
        ["lost", str(report.total("lost"))],
        ["extra", str(report.total("extra"))],
        ["duplicated", str(report.total("duplicated"))],
        ["differing", str(report.total("differing"))],
        ["recoveries measured", str(len(measured))],
        ["slowest recovery", slow],
    ]
    for kind, values in sorted(by_kind.items()):
        values.sort()
        rows.append(
            [f"  {kind}", f"median {values[len(values) // 2]:.1f}s, max {values[-1]:.1f}s (n={len(values)})"]
        )
    table = format_table(["", "result"], rows, left=2)
    verdict = "PASS" if not report.failures else "FAIL"
    lines = [f"{verdict}: {f}" for f in report.failures] or [
        f"PASS: nothing lost, extra, duplicated or differing; every recovery within {plan.max_recovery_seconds:g}s"
    ]
    return table + "\n\n" + "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    plan = ChaosPlan(
        rounds=a.rounds,
        cuts=a.cuts,
        restarts=a.restarts,
        partitions=a.partitions,
        seed=a.seed,
        minutes=a.minutes,
        check_every=a.check_every,
        tps=a.tps,
        max_recovery_seconds=a.max_recovery,
        retry_max_seconds=a.retry_max,
        wal_receiver_timeout_seconds=a.wal_receiver_timeout,
    )
    started = time.perf_counter()

    def say(line: str) -> None:
        print(f"{datetime.now(UTC):%H:%M:%S} {line}", file=sys.stderr, flush=True)

    workdir = a.workdir or Path(tempfile.mkdtemp(prefix="cdc-chaos-"))
    try:
        with interruptible():
            binaries = find_binaries(a.pg)
            with Cluster(binaries, fast=True, settings={"max_connections": "50"}) as cluster:
                say(
                    f"PostgreSQL {binaries.version}; {plan.total_rounds} rounds (seed {plan.seed}); workdir {workdir}"
                )
                report = run_chaos(cluster, plan, workdir, log=say)
    except KeyboardInterrupt:
        print(f"interrupted; the cluster was removed; daemon logs in {workdir}", file=sys.stderr)
        return 2
    except (BenchError, ReplicatorError, psycopg.Error, OSError, subprocess.SubprocessError) as exc:
        print(f"soak could not run: {exc}; daemon logs in {workdir}", file=sys.stderr)
        return 2
    print(render(report))
    out = {
        "when": datetime.now(UTC).isoformat(),
        "seconds": time.perf_counter() - started,
        "options": {k: str(v) if isinstance(v, Path) else v for k, v in vars(a).items()},
        "machine": machine_info(),
        "git": git_revision(REPO_DIR),
        "versions": package_versions(["cdc-replicator", "deltalake", "pyarrow", "psycopg"]),
        "pg_version": binaries.version,
        "report": asdict(report),
        "totals": {
            "rows_compared": report.rows_compared,
            **{w: report.total(w) for w in ("lost", "extra", "duplicated", "differing")},
        },
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(out, indent=2, default=str))
    print(f"\nwrote {a.out} ({out['seconds']:.0f}s)")
    if report.failures or a.keep:
        print(f"daemon config, logs and lake kept in {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 1 if report.failures else 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # delta-rs may abort at interpreter exit (delta-rs #2184)
