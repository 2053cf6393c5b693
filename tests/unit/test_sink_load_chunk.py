"""Specification of a chunk write whose source fails midway: the source's error is the one raised.

delta-rs pulls the batches inside its writer and wraps whatever the iterator raised in its own
error; the daemon must still see what the source said (a missing privilege stops it with exit 3,
a lost connection is retried), never a retryable Delta write failure. A real Delta table.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pytest

from cdc_replicator.errors import MissingPrivilege, SourceUnavailable, from_sqlstate
from cdc_replicator.model import Column, KeyRange, TableId, TableSchema
from cdc_replicator.sink.delta import DeltaSink

T = TableId("public", "t")
SCHEMA = TableSchema(T, (Column("id", 20, -1, True), Column("v", 25)))


def rows(*ids: int) -> pa.RecordBatch:
    return pa.record_batch(
        {
            "id": pa.array([str(i).encode() for i in ids], pa.binary()),
            "v": pa.array([b"x"] * len(ids), pa.binary()),
        }
    )


def failing_after_one_batch(error: Exception) -> Iterator[pa.RecordBatch]:
    yield rows(1, 2)
    raise error


def load(sink: DeltaSink, batches: Iterator[pa.RecordBatch]) -> None:
    sink.load_chunk(SCHEMA, batches, KeyRange(), row_lsn=1, loaded_at=datetime.now(UTC), append=True)


@pytest.fixture
def sink(tmp_path: Path) -> DeltaSink:
    s = DeltaSink(str(tmp_path / "lake"), slot="spec")
    s.begin_load(SCHEMA, fresh=True)
    return s


def test_a_privilege_the_source_refuses_midway_stops_with_the_sources_error_and_fix(sink: DeltaSink) -> None:
    refused = from_sqlstate("42501", "permission denied for table t", context="copy of public.t failed")

    with pytest.raises(MissingPrivilege) as caught:
        load(sink, failing_after_one_batch(refused))

    assert caught.value.exit_code == 3 and not caught.value.retryable
    assert sink.row_count(T) == 0  # nothing of the chunk was committed


def test_a_connection_lost_midway_is_the_sources_retryable_error(sink: DeltaSink) -> None:
    lost = SourceUnavailable("copy of public.t failed while streaming: connection lost")

    with pytest.raises(SourceUnavailable):
        load(sink, failing_after_one_batch(lost))
