"""The chaos soak, short: kill -9, connection resets and a server crash under load lose and double nothing.

The same code as ``bench/chaos.py`` (``tests.support.chaos``) with a small schedule, on its own
cluster (it crashes the server) of the first version in $CDC_TEST_PG_VERSIONS: one version is
enough, the crash and stream tests cover both.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from cdc_replicator.demo.localpg import find_binaries
from tests.support.chaos import ChaosPlan, run_chaos
from tests.support.cluster import Cluster
from tests.support.pg import versions_from_env

pytestmark = pytest.mark.slow

PLAN = ChaosPlan(
    rounds=10,
    cuts=4,
    restarts=1,  # a crash: SIGKILL of every server process, then crash recovery
    seed=5,
    check_every=5,
    gap_seconds=(0.2, 1.2),
    rapid_share=0.3,  # kills while the daemon still recovers from the last fault (and a shorter run)
    max_recovery_seconds=60.0,
    converge_timeout=90.0,
    retry_max_seconds=2.0,
)


def test_kills_cuts_and_a_server_crash_under_load_lose_and_double_no_row(tmp_path: Path) -> None:
    with Cluster(find_binaries(versions_from_env()[0]), fast=True) as cluster:
        report = run_chaos(cluster, PLAN, tmp_path)
    assert report.failures == (), "\n".join(report.failures)
    assert report.rounds_done == PLAN.total_rounds
    faults = dict(report.faults)
    assert sum(n for kind, n in faults.items() if kind.startswith("kill")) == PLAN.rounds
    assert faults.get("kill-reader-frozen") == 1  # the reader dies halfway through handing over a chunk
    assert sum(n for kind, n in faults.items() if kind.startswith("cut-")) == PLAN.cuts
    assert faults.get("restart-crash") == 1
    assert len(report.checks) == 3  # after rounds 5, 10 and at the end (15)
    assert report.rows_compared > 1000
    for what in ("lost", "extra", "duplicated", "differing"):
        assert report.total(what) == 0, what
