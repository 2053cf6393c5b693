"""Fixtures of the fault tests: a PostgreSQL 15 cluster of their own, and small tmpfs mounts.

The storage faults (a full lake, an unusable state store) are the daemon's; the server's version
changes nothing there, so they run on PostgreSQL 15 only, on one cluster shared by this package
(the session cluster is not disturbed). A test that crashes its server makes a cluster of its own.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from cdc_replicator.demo.localpg import find_binaries
from tests.support.cluster import Cluster
from tests.support.pg import PgDatabase, create_test_database, drop_test_database


@pytest.fixture(scope="package")
def faults_cluster() -> Iterator[Cluster]:
    with Cluster(find_binaries(15), fast=True) as c:
        yield c


@pytest.fixture
def db15(faults_cluster: Cluster, request: pytest.FixtureRequest) -> Iterator[PgDatabase]:
    """A fresh database on the package's PostgreSQL 15 cluster; dropped afterwards with its slots."""
    d = create_test_database(faults_cluster, request.node.name)
    yield d
    drop_test_database(d)
