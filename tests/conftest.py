"""Session PostgreSQL clusters (one per version in $CDC_TEST_PG_VERSIONS) and a fresh database per test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from cdc_replicator.demo.localpg import PgBinaries, find_binaries
from tests.support.cluster import Cluster
from tests.support.pg import PgDatabase, create_test_database, drop_test_database, versions_from_env

try:
    PG_VERSIONS = versions_from_env()
except ValueError as exc:
    raise pytest.UsageError(str(exc)) from exc


@pytest.fixture(scope="session", params=PG_VERSIONS, ids=[f"pg{version}" for version in PG_VERSIONS])
def pg_binaries(request: pytest.FixtureRequest) -> PgBinaries:
    """Server binaries of the session's PostgreSQL version; a missing version fails, never skips."""
    version: int = request.param
    return find_binaries(version)


@pytest.fixture(scope="session")
def pg_cluster(pg_binaries: PgBinaries) -> Iterator[Cluster]:
    """A running cluster (wal_level=logical, fsync off) shared by every test of one version.

    A ``Cluster``: a test may restart it or stop and start it again (``pg.cluster.restart()``).
    """
    with Cluster(pg_binaries, fast=True) as cluster:
        yield cluster


@pytest.fixture
def pg(pg_cluster: Cluster, request: pytest.FixtureRequest) -> Iterator[PgDatabase]:
    """A new, empty, uniquely named database; dropped afterwards with its replication slots."""
    db = create_test_database(pg_cluster, request.node.name)
    yield db
    drop_test_database(db)


@pytest.fixture
def tmp_lake(tmp_path: Path) -> Path:
    """Where a test's Delta tables go: ``tmp_path / "lake"`` (not created; writers create it)."""
    return tmp_path / "lake"
