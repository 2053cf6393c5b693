"""Specification of a maintenance pass on real (local) Delta tables, without a source: positions kept,
the watermark kept in the recent history, the metrics set, and a failing pass that never raises."""

from __future__ import annotations

import dataclasses
import threading
import time
from datetime import datetime
from pathlib import Path

import pyarrow as pa
import pytest
from deltalake import CommitProperties, DeltaTable, Transaction, write_deltalake

from cdc_replicator.engine.maintain import Maintainer
from cdc_replicator.model import TableId, WatermarkPosition
from cdc_replicator.service.health import HealthState
from cdc_replicator.service.metrics import Metrics
from cdc_replicator.sink.delta import DeltaSink
from cdc_replicator.sink.offsets import WATERMARK_KEY, app_id, read_watermark
from cdc_replicator.sink.upkeep import MaintenanceSettings, Step

TABLE = TableId("public", "t")
SETTINGS = MaintenanceSettings(
    retention_hours=1.0,
    interval_seconds=60.0,
    target_file_size=1 << 20,
    compact_min_files=3,
    checkpoint_min_commits=1,
)


def _table(root: Path, commits: int, *, watermark: WatermarkPosition | None = None) -> str:
    uri = str(root / "public" / "t")
    app = app_id("s", TABLE)
    write_deltalake(uri, pa.table({"id": [0]}))
    for i in range(1, commits + 1):
        meta = {WATERMARK_KEY: watermark.to_json()} if watermark is not None else {}
        props = CommitProperties(app_transactions=[Transaction(app, 100 + i)], custom_metadata=meta)
        write_deltalake(uri, pa.table({"id": [i]}), mode="append", commit_properties=props)
    return uri


def _maintainer(root: Path, metrics: Metrics | None = None, *, retention_hours: float = 1.0) -> Maintainer:
    health = HealthState((TABLE,))
    settings = dataclasses.replace(SETTINGS, retention_hours=retention_hours)
    return Maintainer(
        DeltaSink(str(root), slot="s"),
        {TABLE: settings},
        health=health,
        metrics=metrics,
        ready=lambda _t: True,
        stop=threading.Event(),
    )


def test_a_pass_compacts_and_checkpoints_but_leaves_the_positions_and_watermark_as_they_were(
    tmp_path: Path,
) -> None:
    wm = WatermarkPosition(("2026-01-01",), (), 106)
    uri = _table(tmp_path, 6, watermark=wm)
    metrics = Metrics(HealthState((TABLE,)), (TABLE,))
    m = _maintainer(tmp_path, metrics, retention_hours=0.0003)  # 2 s
    first = m.run_pass(TABLE)
    time.sleep(2.5)  # past the retention: the next checkpoint lets the log before the first one go

    assert m.run_pass(TABLE) is not None  # vacuums what the compaction removed (2 commits)
    result = m.run_pass(TABLE)  # a checkpoint, and the log before the first one goes

    assert first is not None and Step.COMPACT in first.steps and Step.CHECKPOINT in first.steps
    assert (first.files_before, first.files_after) == (7, 1)
    assert result is not None and Step.CHECKPOINT in result.steps
    dt = DeltaTable(uri)
    assert dt.transaction_version(app_id("s", TABLE)) == 106
    assert not (Path(uri) / "_delta_log" / f"{3:020d}.json").exists()  # expired log entries are gone
    assert dt.history(1)[0]["cdc.op"].startswith("maintenance")  # the newest commit is ours ...
    assert read_watermark(dt, app_id("s", TABLE)) == wm  # ... and still carries the watermark
    assert sorted(dt.to_pyarrow_table().column("id").to_pylist()) == list(range(7))
    text = metrics.render().decode()
    assert 'cdc_lake_files{table="public.t"} 1.0' in text
    assert 'cdc_maintenance_steps_total{outcome="ok",step="compact",table="public.t"} 1.0' in text


def test_a_failing_pass_is_counted_and_logged_and_never_raised(tmp_path: Path) -> None:
    uri = _table(tmp_path, 2)
    (Path(uri) / "_delta_log" / f"{2:020d}.json").write_text("not json\n")  # a broken log
    metrics = Metrics(HealthState((TABLE,)), (TABLE,))

    assert _maintainer(tmp_path, metrics).run_pass(TABLE) is None
    assert 'outcome="failed"' in metrics.render().decode()


def test_a_table_not_created_yet_is_looked_at_again_soon(tmp_path: Path) -> None:
    m = _maintainer(tmp_path)

    assert m.run_pass(TABLE) is None
    assert m._last[TABLE] is None


def test_a_pass_keeps_a_table_features_protocol_and_vacuums_by_the_configured_retention(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    uri = str(tmp_path / "public" / "t")
    ts = pa.array([datetime(2026, 1, 1)] * 1, pa.timestamp("us"))  # timestamp: (3, 7), timestampNtz
    for i in range(4):
        write_deltalake(uri, pa.table({"id": [i], "ts": ts}), mode="append")
    before = DeltaTable(uri).protocol()
    m = _maintainer(tmp_path, retention_hours=0.0)

    first = m.run_pass(TABLE)  # compacts 4 files into 1
    second = m.run_pass(TABLE)  # the 4 removed files are past a retention of 0 hours

    dt = DeltaTable(uri)
    assert (dt.protocol().min_reader_version, dt.protocol().reader_features) == (3, before.reader_features)
    assert dt.protocol().writer_features == before.writer_features  # no variantType, appendOnly, ...
    assert "delta.logRetentionDuration" not in dt.metadata().configuration
    assert first is not None and Step.PROPERTIES not in first.steps and Step.COMPACT in first.steps
    assert second is not None and second.vacuumed_files == 4
    assert "retention properties not set" in caplog.text
    assert sorted(dt.to_pyarrow_table().column("id").to_pylist()) == [0, 1, 2, 3]
