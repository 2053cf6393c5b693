"""Specification of the maintenance decisions (sink.upkeep) and of their settings from the config."""

from __future__ import annotations

from pathlib import Path

import pytest

from cdc_replicator.config import load_config
from cdc_replicator.engine.maintain import settings_for
from cdc_replicator.errors import ConfigError
from cdc_replicator.model import TableId
from cdc_replicator.sink.upkeep import (
    DELETED_FILE_RETENTION,
    LOG_RETENTION,
    MaintenanceSettings,
    Step,
    TableLayout,
    due,
    plan_pass,
    retention_interval,
    retention_properties,
    small_files,
)

MIB = 1024 * 1024
SETTINGS = MaintenanceSettings(retention_hours=168.0, interval_seconds=600.0, target_file_size=16 * MIB)
KEPT = retention_properties(168.0)


def layout(
    sizes: list[int], *, version: int = 50, props: tuple[tuple[str, str], ...] = KEPT, ckpt: int | None = 45
) -> TableLayout:
    return TableLayout(tuple(sizes), version, props, ckpt)


def test_whole_hours_are_written_as_hours_and_fractions_as_whole_seconds() -> None:
    assert retention_interval(168.0) == "interval 168 hours"
    assert retention_interval(0.5) == "interval 1800 seconds"
    assert retention_interval(0.001) == "interval 4 seconds"  # 3.6 s, rounded up
    assert retention_interval(0.00001) == "interval 1 seconds"


def test_the_retention_sets_both_the_removed_file_and_the_log_retention() -> None:
    assert dict(retention_properties(48.0)) == {
        DELETED_FILE_RETENTION: "interval 48 hours",
        LOG_RETENTION: "interval 48 hours",
    }


def test_small_files_are_those_below_half_the_target_size() -> None:
    assert small_files([1, 8 * MIB - 1, 8 * MIB, 20 * MIB], 16 * MIB) == 2


def test_a_table_with_its_properties_few_small_files_and_a_recent_checkpoint_is_only_vacuumed() -> None:
    assert plan_pass(layout([MIB] * 8), SETTINGS) == (Step.VACUUM,)


def test_more_small_files_than_the_threshold_are_compacted() -> None:
    assert plan_pass(layout([MIB] * 9), SETTINGS) == (Step.COMPACT, Step.VACUUM)


def test_large_files_do_not_count_towards_compaction() -> None:
    assert Step.COMPACT not in plan_pass(layout([MIB] * 8 + [15 * MIB] * 20), SETTINGS)


def test_with_zorder_columns_the_table_is_z_ordered_instead_of_compacted() -> None:
    zorder = MaintenanceSettings(168.0, 600.0, 16 * MIB, zorder_columns=("id",))

    assert plan_pass(layout([MIB] * 9), zorder) == (Step.ZORDER, Step.VACUUM)


def test_properties_that_differ_are_set_first() -> None:
    other = ((DELETED_FILE_RETENTION, "interval 7 days"), (LOG_RETENTION, "interval 168 hours"))

    assert plan_pass(layout([MIB] * 9, props=other), SETTINGS) == (Step.PROPERTIES, Step.COMPACT, Step.VACUUM)
    assert plan_pass(layout([], props=()), SETTINGS)[0] is Step.PROPERTIES


def test_a_checkpoint_comes_after_enough_commits_and_once_at_the_first_pass() -> None:
    assert Step.CHECKPOINT in plan_pass(layout([], version=55, ckpt=45), SETTINGS)
    assert Step.CHECKPOINT not in plan_pass(layout([], version=54, ckpt=45), SETTINGS)
    assert Step.CHECKPOINT in plan_pass(layout([], version=3, ckpt=None), SETTINGS)
    assert Step.CHECKPOINT not in plan_pass(layout([], version=0, ckpt=None), SETTINGS)


def test_steps_run_in_a_fixed_order_ending_with_the_vacuum() -> None:
    steps = plan_pass(layout([MIB] * 20, props=(), ckpt=None), SETTINGS)

    assert steps == (Step.PROPERTIES, Step.COMPACT, Step.CHECKPOINT, Step.VACUUM)


def test_a_table_is_due_at_its_first_look_and_then_after_each_interval() -> None:
    assert due(None, 600.0, 5.0)
    assert not due(100.0, 600.0, 699.0)
    assert due(100.0, 600.0, 700.0)


# ---- the settings, from the config --------------------------------------------------------------

BASE = '[source]\ndsn = "dbname=app"\n[target]\nuri = "./lake"\ntarget_file_size = 1048576\n'


def test_per_table_overrides_replace_the_sections_values_and_zero_means_the_section(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(
        BASE
        + "[maintenance]\ninterval_seconds = 30\nretention_hours = 0.001\ncompact_min_files = 3\n"
        + '[[tables]]\nname = "a"\nretention_hours = 48\n'
        + '[[tables]]\nname = "b"\ninterval_seconds = 5.5\nretention_hours = 0\n'
    )

    s = settings_for(load_config(path, env={}))

    a, b = s[TableId("public", "a")], s[TableId("public", "b")]
    assert (a.retention_hours, a.interval_seconds) == (48.0, 30.0)
    assert (b.retention_hours, b.interval_seconds) == (0.001, 5.5)
    assert (a.target_file_size, a.compact_min_files) == (1048576, 3)


def test_the_maintenance_defaults_are_a_week_of_retention_and_a_pass_every_ten_minutes(
    tmp_path: Path,
) -> None:
    path = tmp_path / "c.toml"
    path.write_text(BASE + '[[tables]]\nname = "a"\n')

    cfg = load_config(path, env={})

    assert cfg.maintenance.enabled is True
    assert (cfg.maintenance.retention_hours, cfg.maintenance.interval_seconds) == (168.0, 600.0)
    assert settings_for(cfg)[TableId("public", "a")].retention_hours == 168.0


@pytest.mark.parametrize(
    ("toml", "named"),
    [
        ("[maintenance]\nretention_hours = 0\n", "maintenance.retention_hours"),
        ("[maintenance]\ninterval_seconds = -1\n", "maintenance.interval_seconds"),
        ("[maintenance]\ncompact_min_files = 0\n", "maintenance.compact_min_files"),
        ('[maintenance]\nenabled = "yes"\n', "maintenance.enabled"),
        ('[[tables]]\nname = "b"\nretention_hours = -2\n', "tables[1].retention_hours"),
    ],
)
def test_a_bad_maintenance_value_is_refused_naming_the_key(tmp_path: Path, toml: str, named: str) -> None:
    path = tmp_path / "c.toml"
    path.write_text(BASE + '[[tables]]\nname = "a"\n' + toml)

    with pytest.raises(ConfigError) as err:
        load_config(path, env={})

    assert named in err.value.message


def test_an_env_variable_overrides_a_tables_retention(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(BASE + '[[tables]]\nname = "a"\n')

    cfg = load_config(path, env={"CDC_REPLICATOR_TABLES__0__RETENTION_HOURS": "0.25"})

    assert settings_for(cfg)[TableId("public", "a")].retention_hours == 0.25


def test_a_table_at_reader_version_3_never_gets_its_properties_set_by_a_pass() -> None:
    # delta-rs 1.6.6 would also add the reader feature variantType (Delta < 4.0 refuses the table)
    features = TableLayout((MIB,), 50, (), 45, table_features=True)

    assert plan_pass(features, SETTINGS) == (Step.VACUUM,)
    assert plan_pass(layout([MIB], props=()), SETTINGS) == (Step.PROPERTIES, Step.VACUUM)
