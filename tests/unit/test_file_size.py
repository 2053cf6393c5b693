"""Specification of the per-table target file size: config, a new table's property, an existing table following it.

A merge rewrites every file holding a changed key and takes its output file size from the table's
``delta.targetFileSize``, so the configured size must reach the table itself. Real Delta tables.
"""

from __future__ import annotations

from pathlib import Path

from deltalake import DeltaTable

from cdc_replicator.config import load_config
from cdc_replicator.model import Lsn, TableId
from cdc_replicator.sink.delta import DeltaSink
from tests.support.events import INT4, INT8, TEXT, delete, insert, schema, txn
from tests.unit.test_plan import batches_of

HOT = TableId("public", "hot")
COLD = TableId("public", "cold")
HOT_SCHEMA = schema(HOT, ("id", INT8), ("qty", INT4), ("doc", TEXT))
COLD_SCHEMA = schema(COLD, ("id", INT8), ("qty", INT4), ("doc", TEXT))
MIB = 1024 * 1024


def file_size_of(sink: DeltaSink, table: TableId) -> str | None:
    return DeltaTable(sink.uri(table)).metadata().configuration.get("delta.targetFileSize")


def test_a_table_entry_may_set_its_own_target_file_size_and_defaults_to_the_targets(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(
        '[source]\ndsn = "postgresql://r@db/app"\n[target]\nuri = "./lake"\ntarget_file_size = 33554432\n'
        '[[tables]]\nname = "public.hot"\ntarget_file_size = 4194304\n[[tables]]\nname = "public.cold"\n'
    )

    config = load_config(path, env={})

    assert [t.target_file_size for t in config.tables] == [4 * MIB, 0]  # 0: [target]'s
    assert config.target.target_file_size == 32 * MIB


def test_a_new_table_gets_its_override_as_its_delta_target_file_size_and_the_others_the_targets(
    tmp_path: Path,
) -> None:
    sink = DeltaSink(str(tmp_path), slot="s", target_file_size=32 * MIB, file_sizes={HOT: 4 * MIB, COLD: 0})

    sink.begin_load(HOT_SCHEMA, fresh=True)
    sink.begin_load(COLD_SCHEMA, fresh=True)

    assert file_size_of(sink, HOT) == str(4 * MIB)
    assert file_size_of(sink, COLD) == str(32 * MIB)


def test_an_existing_table_follows_a_changed_size_from_its_next_merge_which_still_records_its_position(
    tmp_path: Path,
) -> None:
    before = DeltaSink(str(tmp_path), slot="s", target_file_size=16 * MIB)
    before.begin_load(HOT_SCHEMA, fresh=True)
    before.finish_load(HOT_SCHEMA, Lsn(50))
    sink = DeltaSink(str(tmp_path), slot="s", target_file_size=16 * MIB, file_sizes={HOT: 2 * MIB})
    # deleting a key the table does not have: delta-rs commits nothing for such a merge, and the
    # sink records the position with an empty append instead (told apart by the table's version)
    (batch,) = batches_of(HOT_SCHEMA, txn(100, delete(HOT, b"7", None, None)))

    sink.apply(batch.tables[HOT], batch.position, batch_id=batch.batch_id)

    assert file_size_of(sink, HOT) == str(2 * MIB)
    assert sink.position(HOT) is not None and sink.position(HOT) == batch.position
    (second,) = batches_of(HOT_SCHEMA, txn(200, insert(HOT, b"8", b"1", b"x")))
    version = DeltaTable(sink.uri(HOT)).version()
    sink.apply(second.tables[HOT], second.position, batch_id=second.batch_id)
    assert DeltaTable(sink.uri(HOT)).version() == version + 1  # checked once: no property commit again


def test_a_table_at_reader_version_3_keeps_its_size_and_protocol_rather_than_gain_a_reader_feature(
    tmp_path: Path,
) -> None:
    # a timestamp without time zone makes the table use table features (timestampNtz): reader 3
    naive = schema(HOT, ("id", INT8), ("at", 1114))
    before = DeltaSink(str(tmp_path), slot="s", target_file_size=16 * MIB)
    before.begin_load(naive, fresh=True)
    before.finish_load(naive, Lsn(50))
    protocol = DeltaTable(before.uri(HOT)).protocol()
    assert protocol.min_reader_version == 3
    sink = DeltaSink(str(tmp_path), slot="s", target_file_size=16 * MIB, file_sizes={HOT: 2 * MIB})
    (batch,) = batches_of(naive, txn(100, insert(HOT, b"1", b"2024-05-01 12:00:00")))

    sink.apply(batch.tables[HOT], batch.position, batch_id=batch.batch_id)

    assert file_size_of(sink, HOT) == str(16 * MIB)
    assert DeltaTable(sink.uri(HOT)).protocol() == protocol  # no reader feature added
    assert sink.position(HOT) == batch.position
