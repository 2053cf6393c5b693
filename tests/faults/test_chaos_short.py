"""The chaos soak, short: kill -9, connection resets and a server crash under load lose and double nothing.

The same code as ``bench/chaos.py`` (``tests.support.chaos``) with a small schedule, on its own
cluster (it crashes the server) of the first version in $CDC_TEST_PG_VERSIONS: one version is
enough, the crash and stream tests cover both.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest
from deltalake import write_deltalake

from cdc_replicator.demo.localpg import find_binaries
from tests.support.chaos import MARKER, ChaosPlan, compare_table, run_chaos
from tests.support.cluster import Cluster
from tests.support.lake import table_path
from tests.support.pg import PgDatabase, versions_from_env

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


def test_the_soaks_comparison_counts_a_lost_an_extra_a_duplicated_and_a_differing_row(
    db15: PgDatabase, tmp_lake: Path
) -> None:
    """The comparison reads both sides with plain SQL and Arrow: one server version (the package's) is enough."""
    pg = db15
    pg.execute("create table chaos_marker (id int primary key, n bigint not null)")
    pg.execute("insert into chaos_marker values (1, 10), (2, 20), (3, 30), (5, 50)")
    rows = [(1, 10), (1, 10), (2, 21), (4, 40), (5, 50)]  # 1 twice, 2 altered, 3 missing, 4 extra
    data = pa.table(
        {
            "id": pa.array([r[0] for r in rows], pa.int32()),
            "n": pa.array([r[1] for r in rows], pa.int64()),
            "_cdc_lsn": pa.array([7] * len(rows), pa.int64()),
        }
    )
    write_deltalake(str(table_path(tmp_lake, MARKER)), data)
    diff = compare_table(pg, tmp_lake, MARKER)
    assert (diff.source_rows, diff.delta_rows) == (4, 5)
    assert (diff.lost, diff.extra, diff.duplicated, diff.differing) == (1, 1, 1, 1)
    assert not diff.equal
    assert "differing ('2',) in ['n']" in diff.examples
    write_deltalake(str(table_path(tmp_lake, MARKER)), data.slice(0, 0), mode="overwrite")
    assert compare_table(pg, tmp_lake, MARKER).lost == 4
