"""Specification of the Decoder: pgoutput wire messages + relation cache → model events."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from cdc_replicator.errors import DecodeError
from cdc_replicator.model import (
    UNCHANGED,
    Begin,
    Column,
    Commit,
    Lsn,
    Op,
    RelationChanged,
    RowChange,
    TableId,
    TableSchema,
    Truncate,
)
from cdc_replicator.source import wire
from cdc_replicator.source.decoding import Decoder

INT8, INT4, TEXT = 20, 23, 25
KEY_FLAG = 1

ORDERS = TableId("public", "orders")
ORDERS_ID, OTHER_ID = 16384, 16390

# commit_time on the wire: microseconds since 2000-01-01 00:00 UTC
ONE_DAY_AND_A_MICROSECOND = 86_400_000_001


def relation(
    relation_id: int = ORDERS_ID,
    name: str = "orders",
    *,
    namespace: str = "public",
    identity: str = "d",
    keys: tuple[str, ...] = ("id",),
) -> wire.Relation:
    """orders(id int8, qty int4, doc text) with ``keys`` flagged as pgoutput flags them."""
    columns = tuple(
        wire.RelationColumn(KEY_FLAG if n in keys else 0, n, oid, -1)
        for n, oid in (("id", INT8), ("qty", INT4), ("doc", TEXT))
    )
    return wire.Relation(None, relation_id, namespace, name, identity, columns)


def decoder(*tables: TableId, key: tuple[str, ...] = ("id",)) -> Decoder:
    return Decoder({t: key for t in (tables or (ORDERS,))})


def announced(d: Decoder, *messages: wire.Relation) -> Decoder:
    for m in messages or (relation(),):
        d.decode(m)
    return d


# ---- Relation ----------------------------------------------------------------------------------


def test_a_relation_of_a_configured_table_gives_its_schema_with_the_catalog_key() -> None:
    events = decoder().decode(relation())

    assert events == [
        RelationChanged(
            ORDERS_ID,
            TableSchema(
                ORDERS,
                (
                    Column("id", INT8, -1, True),
                    Column("qty", INT4, -1, False),
                    Column("doc", TEXT, -1, False),
                ),
                "d",
            ),
        )
    ]


def test_under_replica_identity_full_the_key_is_the_catalog_key_not_the_wire_flags() -> None:
    d = decoder()

    (event,) = d.decode(relation(identity="f", keys=("id", "qty", "doc")))

    assert isinstance(event, RelationChanged)
    assert event.schema.key == ("id",)
    assert event.schema.replica_identity == "f"
    assert d.relation(ORDERS_ID) == event.schema


def test_a_composite_catalog_key_keeps_the_column_order_of_the_table() -> None:
    (event,) = decoder(key=("qty", "id")).decode(relation(identity="f", keys=("id", "qty", "doc")))

    assert isinstance(event, RelationChanged)
    assert event.schema.key == ("id", "qty")


def test_a_relation_in_pg_catalog_arrives_with_an_empty_namespace() -> None:
    table = TableId("pg_catalog", "orders")

    (event,) = decoder(table).decode(relation(namespace=""))

    assert isinstance(event, RelationChanged)
    assert event.schema.table == table


def test_a_relation_of_a_table_not_configured_is_ignored_with_its_changes() -> None:
    d = decoder()

    assert d.decode(relation(OTHER_ID, "audit")) == []
    assert d.relation(OTHER_ID) is None
    assert d.decode(wire.Insert(None, OTHER_ID, (b"1", b"2", b"x"))) == []
    assert d.decode(wire.Update(None, OTHER_ID, None, None, (b"1", b"3", b"x"))) == []
    assert d.decode(wire.Delete(None, OTHER_ID, "K", (b"1", None, None))) == []


def test_a_change_for_a_relation_never_announced_is_a_decode_error() -> None:
    d = announced(decoder())

    with pytest.raises(DecodeError, match=f"relation {OTHER_ID} arrived before its Relation message") as info:
        d.decode(wire.Insert(None, OTHER_ID, (b"1", b"2", b"x")))

    assert "restart" in info.value.hint


def test_a_relation_id_reused_for_an_unconfigured_table_drops_the_old_schema() -> None:
    d = announced(decoder())

    d.decode(relation(ORDERS_ID, "audit"))

    assert d.relation(ORDERS_ID) is None
    assert d.decode(wire.Insert(None, ORDERS_ID, (b"1", b"2", b"x"))) == []


# ---- row changes -------------------------------------------------------------------------------


def test_an_insert_becomes_a_row_change_with_the_new_row() -> None:
    d = announced(decoder())

    assert d.decode(wire.Insert(None, ORDERS_ID, (b"1", None, b"x"))) == [
        RowChange(ORDERS, Op.INSERT, (b"1", None, b"x"), None, 1)
    ]


def test_an_update_keeps_the_old_key_the_server_sent() -> None:
    d = announced(decoder())

    events = d.decode(wire.Update(None, ORDERS_ID, "K", (b"1", None, None), (b"2", b"5", UNCHANGED)))

    assert events == [RowChange(ORDERS, Op.UPDATE, (b"2", b"5", UNCHANGED), (b"1", None, None), 1)]


def test_an_update_without_an_old_tuple_leaves_unchanged_toast_marked() -> None:
    d = announced(decoder())

    (event,) = d.decode(wire.Update(None, ORDERS_ID, None, None, (b"1", b"5", UNCHANGED)))

    assert event == RowChange(ORDERS, Op.UPDATE, (b"1", b"5", UNCHANGED), None, 1)


def test_an_update_under_replica_identity_full_fills_unchanged_columns_from_the_old_row() -> None:
    d = announced(decoder(), relation(identity="f", keys=("id", "qty", "doc")))
    old = (b"1", b"4", b"long document")

    (event,) = d.decode(wire.Update(None, ORDERS_ID, "O", old, (b"1", b"5", UNCHANGED)))

    assert event == RowChange(ORDERS, Op.UPDATE, (b"1", b"5", b"long document"), old, 1)


def test_a_delete_carries_the_old_key_or_row_and_no_new_row() -> None:
    d = announced(decoder())

    assert d.decode(wire.Delete(None, ORDERS_ID, "K", (b"1", None, None))) == [
        RowChange(ORDERS, Op.DELETE, None, (b"1", None, None), 1)
    ]
    assert d.decode(wire.Delete(None, ORDERS_ID, "O", (b"1", b"4", b"doc"))) == [
        RowChange(ORDERS, Op.DELETE, None, (b"1", b"4", b"doc"), 2)
    ]


def test_changes_are_numbered_across_every_relation_so_the_table_list_does_not_shift_them() -> None:
    d = announced(decoder(), relation(), relation(OTHER_ID, "audit"))
    d.decode(wire.Begin(0x1000, 0, 7))

    d.decode(wire.Insert(None, OTHER_ID, (b"1",)))  # not configured: dropped, but counted
    (event,) = d.decode(wire.Insert(None, ORDERS_ID, (b"1", None, b"x")))
    assert isinstance(event, RowChange) and event.seq == 2

    d.decode(wire.Begin(0x2000, 0, 8))  # numbering restarts with each transaction
    (event,) = d.decode(wire.Insert(None, ORDERS_ID, (b"2", None, b"y")))
    assert isinstance(event, RowChange) and event.seq == 1


# ---- transaction boundaries --------------------------------------------------------------------


def test_begin_maps_its_final_lsn_to_the_commit_lsn_and_its_time_from_the_2000_epoch() -> None:
    (event,) = decoder().decode(wire.Begin(0x16_B374D848, ONE_DAY_AND_A_MICROSECOND, 731))

    assert event == Begin(731, Lsn.parse("16/B374D848"), datetime(2000, 1, 2, 0, 0, 0, 1, tzinfo=UTC))


def test_commit_maps_commit_and_end_lsn_and_its_time() -> None:
    (event,) = decoder().decode(wire.Commit(0, 0x1000, 0x1030, -1))

    assert event == Commit(
        Lsn(0x1000), Lsn(0x1030), datetime(2000, 1, 1, tzinfo=UTC) - timedelta(microseconds=1)
    )
    assert isinstance(event, Commit) and event.commit_time.tzinfo is not None


# ---- TRUNCATE ----------------------------------------------------------------------------------


def test_truncate_maps_relation_ids_to_tables_and_drops_ignored_ones() -> None:
    items = TableId("sales", "items")
    d = announced(
        decoder(ORDERS, items),
        relation(),
        relation(OTHER_ID, "audit"),
        relation(16400, "items", namespace="sales"),
    )

    events = d.decode(wire.Truncate(None, 0, (ORDERS_ID, OTHER_ID, 16400)))

    assert events == [Truncate((ORDERS, items), 1)]


def test_a_truncate_of_only_ignored_tables_gives_no_event() -> None:
    d = announced(decoder(), relation(OTHER_ID, "audit"))

    assert d.decode(wire.Truncate(None, 1, (OTHER_ID,))) == []


def test_a_truncate_of_a_relation_never_announced_is_a_decode_error() -> None:
    d = announced(decoder())

    with pytest.raises(DecodeError, match=str(OTHER_ID)):
        d.decode(wire.Truncate(None, 0, (ORDERS_ID, OTHER_ID)))


# ---- the rest of the protocol ------------------------------------------------------------------


@pytest.mark.parametrize(
    "message",
    [
        wire.Origin(0x1000, "upstream"),
        wire.Type(None, 90001, "public", "mood"),
        wire.LogicalMessage(None, 1, 0x1000, "cdc", b"hello"),
    ],
    ids=["origin", "type", "logical-message"],
)
def test_messages_without_data_for_the_tables_give_no_event(message: wire.Message) -> None:
    assert decoder().decode(message) == []


def test_a_column_selection_projects_relations_and_tuples_and_always_keeps_the_key() -> None:
    from cdc_replicator.model import ColumnSelection

    d = Decoder({ORDERS: ("id",)}, {ORDERS: ColumnSelection(excluded=frozenset({"qty"}))})
    (rel,) = d.decode(relation())
    assert isinstance(rel, RelationChanged) and rel.schema.column_names == ("id", "doc")
    (ins,) = d.decode(wire.Insert(None, ORDERS_ID, (b"1", b"5", b"n")))
    assert isinstance(ins, RowChange) and ins.new == (b"1", b"n")
    only = Decoder({ORDERS: ("id",)}, {ORDERS: ColumnSelection(only=frozenset({"doc"}))})
    (rel,) = only.decode(relation())
    assert isinstance(rel, RelationChanged) and rel.schema.column_names == ("id", "doc")  # the key stays
