"""Specification of a live re-sync whose chunk read fails: only a failure waiting can heal is raised.

Any other failure (a privilege revoked meanwhile, a table dropped) ends that re-sync alone,
recorded as failed with its fix, so the stream and the other tables go on and a restart does not
pick it up again. The chunk read itself is replaced here (it needs a server); the bookkeeping runs
on the real state store (sqlite).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from cdc_replicator.engine.resync import Resyncer
from cdc_replicator.errors import MissingPrivilege, ReplicatorError, SourceUnavailable
from cdc_replicator.model import Column, TableId, TableSchema
from cdc_replicator.store.state import ResyncRecord, StateStore

T = TableId("public", "t")
SCHEMA = TableSchema(T, (Column("id", 20, -1, True), Column("v", 25)))
SLOT = "spec"


def resyncer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failure: ReplicatorError
) -> tuple[Resyncer, StateStore]:
    state = StateStore(f"sqlite:///{tmp_path / 'state.db'}")
    state.save_resync(SLOT, ResyncRecord(T, "req-1", None, None, 0, 0, "running", None))
    rs = Resyncer(dsn="postgresql:///unused", slot=SLOT, state=state, schemas={T: SCHEMA}, chunk_rows=10)
    monkeypatch.setattr(rs, "_key_types", lambda schema: {"id": "bigint"})

    def read_chunk(table: object) -> None:
        raise failure

    monkeypatch.setattr(rs, "_read_chunk", read_chunk)
    rs.restore()
    assert rs.active
    return rs, state


def test_a_chunk_read_the_source_refuses_ends_that_re_sync_as_failed_with_its_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    refused = MissingPrivilege("permission denied for table t", hint='grant select on "public"."t" to <role>')
    rs, state = resyncer(tmp_path, monkeypatch, refused)

    rs.step()  # does not raise: the stream goes on

    assert not rs.active
    (rec,) = state.resyncs(SLOT)
    assert rec.state == "failed" and rec.detail is not None and "grant select" in rec.detail


def test_a_chunk_read_that_lost_its_connection_is_raised_for_the_daemon_to_retry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rs, state = resyncer(tmp_path, monkeypatch, SourceUnavailable("connection lost"))

    with pytest.raises(SourceUnavailable):
        rs.step()

    assert rs.active
    assert [r.state for r in state.resyncs(SLOT)] == ["running"]
