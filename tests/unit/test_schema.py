"""Specification of schema-change detection and the data contracts (evolve / freeze)."""

from __future__ import annotations

from cdc_replicator.engine.contracts import decide, diff_schemas, schema_from_json, schema_to_json
from cdc_replicator.model import Column, TableId, TableSchema

T = TableId("public", "orders")
INT2, INT4, INT8, TEXT, VARCHAR, NUMERIC, FLOAT4, FLOAT8, BOOL = 21, 23, 20, 25, 1043, 1700, 700, 701, 16


def schema(
    *cols: tuple[str, int] | tuple[str, int, int], key: tuple[str, ...] = ("id",), ident: str = "d"
) -> TableSchema:
    return TableSchema(
        T,
        tuple(Column(c[0], c[1], c[2] if len(c) > 2 else -1, c[0] in key) for c in cols),  # type: ignore[misc]
        ident,
    )


BASE = schema(("id", INT8), ("qty", INT4), ("note", VARCHAR, 14), ("price", NUMERIC, (10 << 16 | 2) + 4))


def kinds(old: TableSchema, new: TableSchema) -> list[str]:
    return [c.kind for c in diff_schemas(old, new)]


def test_identical_layouts_differ_in_nothing() -> None:
    assert diff_schemas(BASE, BASE) == []
    assert decide("freeze", BASE, BASE).action == "none"


def test_an_added_column_is_followed_by_evolve_and_rejected_by_freeze() -> None:
    new = schema(*[(c.name, c.type_oid, c.type_modifier) for c in BASE.columns], ("flag", BOOL))
    assert kinds(BASE, new) == ["add_column"]
    assert decide("evolve", BASE, new).action == "evolve"
    frozen = decide("freeze", BASE, new)
    assert frozen.action == "pause" and "contract freeze rejects: add column flag" in frozen.reason


def test_a_dropped_column_is_a_drop_and_evolve_follows_it() -> None:
    new = schema(("id", INT8), ("qty", INT4), ("price", NUMERIC, (10 << 16 | 2) + 4))
    assert kinds(BASE, new) == ["drop_column"]
    assert decide("evolve", BASE, new).action == "evolve"


def test_a_rename_keeps_position_and_type() -> None:
    new = schema(
        ("id", INT8), ("quantity", INT4), ("note", VARCHAR, 14), ("price", NUMERIC, (10 << 16 | 2) + 4)
    )
    (change,) = diff_schemas(BASE, new)
    assert (change.kind, change.old, change.new) == ("rename_column", "qty", "quantity")
    assert decide("evolve", BASE, new).action == "evolve"


def test_widening_is_followed_and_a_same_delta_type_retype_is_nothing() -> None:
    wider = schema(("id", INT8), ("qty", INT8), ("note", TEXT), ("price", NUMERIC, (14 << 16 | 2) + 4))
    assert kinds(BASE, wider) == ["widen_type", "retype", "widen_type"]
    assert decide("evolve", BASE, wider).action == "evolve"
    only_text = schema(("id", INT8), ("qty", INT4), ("note", TEXT), ("price", NUMERIC, (10 << 16 | 2) + 4))
    assert decide("freeze", BASE, only_text).action == "none"  # varchar(10) -> text: same Delta type
    assert kinds(schema(("id", INT8), ("f", FLOAT4)), schema(("id", INT8), ("f", FLOAT8))) == ["widen_type"]
    assert kinds(schema(("id", INT8), ("s", INT2)), schema(("id", INT8), ("s", INT4))) == ["widen_type"]


def test_a_type_change_that_is_not_widening_pauses_even_under_evolve() -> None:
    narrower = schema(
        ("id", INT8), ("qty", INT2), ("note", VARCHAR, 14), ("price", NUMERIC, (10 << 16 | 2) + 4)
    )
    decision = decide("evolve", BASE, narrower)
    assert (
        decision.action == "pause"
        and "change type qty" in decision.reason
        and "snapshot --table" in decision.reason
    )
    to_text = schema(
        ("id", INT8), ("qty", TEXT), ("note", VARCHAR, 14), ("price", NUMERIC, (10 << 16 | 2) + 4)
    )
    assert decide("evolve", BASE, to_text).action == "pause"
    scale = schema(("id", INT8), ("qty", INT4), ("note", VARCHAR, 14), ("price", NUMERIC, (12 << 16 | 3) + 4))
    assert kinds(BASE, scale) == ["change_type"]


def test_another_primary_key_pauses_and_a_replica_identity_change_is_only_recorded() -> None:
    rekeyed = schema(*[(c.name, c.type_oid, c.type_modifier) for c in BASE.columns], key=("id", "qty"))
    assert kinds(BASE, rekeyed) == ["key_change"]
    assert decide("evolve", BASE, rekeyed).action == "pause"
    full = schema(*[(c.name, c.type_oid, c.type_modifier) for c in BASE.columns], ident="f")
    assert kinds(BASE, full) == ["replica_identity"]
    assert decide("freeze", BASE, full).action == "none"


def test_a_schema_survives_its_json_form() -> None:
    assert schema_from_json(schema_to_json(BASE)) == BASE
