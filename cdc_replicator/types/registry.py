"""The type registry: PostgreSQL type OID → the Arrow type Delta stores it as, and its caster. Pure.

``TYPES`` holds one :class:`PgType` entry per type OID (and one per array type, as text). A domain
takes its base type (:func:`resolve_domains`); an OID that is neither registered nor a domain (an
enum, a composite, an extension type) keeps its text (:func:`pg_type`), and
:func:`unresolved_types` names those for the checks that want to say so.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final

import pyarrow as pa

from cdc_replicator.model import Column, TableSchema
from cdc_replicator.types.calendar import cast_date, cast_timestamp
from cdc_replicator.types.kernels import (
    Caster,
    cast_bool,
    cast_bytea,
    cast_decimal,
    cast_float,
    cast_int,
    cast_money,
    keep_text,
)

__all__ = [
    "TEXT_TYPE_OIDS",
    "TYPES",
    "PgType",
    "arrow_schema",
    "arrow_type",
    "pg_type",
    "resolve_domains",
    "unresolved_types",
]

# text-like types (text, varchar, char, name): compared byte-wise (collate "C") wherever key ranges
# are read, so PostgreSQL and Delta order them the same
TEXT_TYPE_OIDS: Final = frozenset({25, 1043, 1042, 19})

_VARHDRSZ: Final = 4
_MAX_DECIMAL128_DIGITS: Final = 38


@dataclass(frozen=True, slots=True)
class PgType:
    """One PostgreSQL type: the Arrow type Delta stores it as, and how its text output is cast.

    ``arrow`` is the type for an unconstrained column (type modifier -1); ``modifier``, when set,
    computes the type from ``atttypmod`` instead (e.g. numeric precision and scale). A target of
    Arrow ``string`` always keeps the text exactly, whatever ``cast`` does for other targets.
    ``array_oid`` registers the type's array (``_name``) too, as text.
    """

    oid: int
    name: str
    arrow: pa.DataType
    cast: Caster = field(repr=False, compare=False)
    array_oid: int = 0
    modifier: Callable[[int], pa.DataType] | None = field(default=None, repr=False, compare=False)
    note: str = ""

    def arrow_for(self, type_modifier: int = -1) -> pa.DataType:
        """The Arrow type of a column of this type with ``type_modifier`` (``atttypmod``)."""
        return self.arrow if self.modifier is None else self.modifier(type_modifier)


# ---- type modifiers ------------------------------------------------------------------------------


def _numeric_arrow(type_modifier: int) -> pa.DataType:
    """decimal128 for numeric(p,s) that fits 38 digits, else string (lossless text)."""
    if type_modifier < _VARHDRSZ:
        return pa.string()
    precision = ((type_modifier - _VARHDRSZ) >> 16) & 0xFFFF
    scale = (((type_modifier - _VARHDRSZ) & 0x7FF) ^ 1024) - 1024  # 11-bit signed since PG 15
    if scale < 0:  # numeric(3,-2) holds multiples of 100 up to 99900: five integer digits
        precision, scale = precision - scale, 0
    else:  # numeric(2,5) holds up to 0.00099: five fractional digits
        precision = max(precision, scale)
    if not 1 <= precision <= _MAX_DECIMAL128_DIGITS:
        return pa.string()
    return pa.decimal128(precision, scale)


# ---- the registry --------------------------------------------------------------------------------

_STRING: Final = pa.string()
_TEXT_NOTE: Final = "text kept exactly as PostgreSQL prints it"


# Types stored as their text output: (oid, typname, array oid, note). OIDs from pg_type.dat,
# checked against PostgreSQL 15 and 16 catalogs by tests/integration/test_types.py.
_TEXT_TYPES: Final = (
    (22, "int2vector", 1006, "e.g. 1 2"),
    (24, "regproc", 1008, "the name"),
    (27, "tid", 1010, "(block,offset)"),
    (28, "xid", 1011, "32-bit transaction id"),
    (29, "cid", 1012, ""),
    (30, "oidvector", 1013, ""),
    (142, "xml", 143, "the document as printed"),
    (600, "point", 1017, "(x,y)"),
    (601, "lseg", 1018, ""),
    (602, "path", 1019, ""),
    (603, "box", 1020, ""),
    (604, "polygon", 1027, ""),
    (628, "line", 629, ""),
    (650, "cidr", 651, "with its netmask"),
    (718, "circle", 719, ""),
    (774, "macaddr8", 775, ""),
    (829, "macaddr", 1040, ""),
    (869, "inet", 1041, "netmask only when not /32 (/128)"),
    (1560, "bit", 1561, "e.g. 1010"),
    (1562, "varbit", 1563, ""),
    (1790, "refcursor", 2201, ""),
    (2202, "regprocedure", 2207, ""),
    (2203, "regoper", 2208, ""),
    (2204, "regoperator", 2209, ""),
    (2205, "regclass", 2210, "the name, schema-qualified when not on the search path"),
    (2206, "regtype", 2211, ""),
    (2970, "txid_snapshot", 2949, ""),
    (3220, "pg_lsn", 3221, "e.g. 0/16B3748"),
    (3614, "tsvector", 3643, "lexemes with positions"),
    (3615, "tsquery", 3645, ""),
    (3734, "regconfig", 3735, ""),
    (3769, "regdictionary", 3770, ""),
    (3904, "int4range", 3905, "e.g. [1,10)"),
    (3906, "numrange", 3907, ""),
    (3908, "tsrange", 3909, ""),
    (3910, "tstzrange", 3911, "bounds in UTC"),
    (3912, "daterange", 3913, ""),
    (3926, "int8range", 3927, ""),
    (4072, "jsonpath", 4073, ""),
    (4089, "regnamespace", 4090, ""),
    (4096, "regrole", 4097, ""),
    (4191, "regcollation", 4192, ""),
    (4451, "int4multirange", 6150, "e.g. {[1,3),[5,7)}"),
    (4532, "nummultirange", 6151, ""),
    (4533, "tsmultirange", 6152, ""),
    (4534, "tstzmultirange", 6153, ""),
    (4535, "datemultirange", 6155, ""),
    (4536, "int8multirange", 6157, ""),
    (5038, "pg_snapshot", 5039, ""),
    (5069, "xid8", 271, "64-bit transaction id"),
)


def _index(entries: Iterable[PgType]) -> dict[int, PgType]:
    table: dict[int, PgType] = {}
    for entry in entries:
        arrays = (
            [PgType(entry.array_oid, f"_{entry.name}", _STRING, keep_text, note="array as text")]
            if entry.array_oid
            else []
        )
        for item in (entry, *arrays):
            if item.oid in table:
                raise ValueError(
                    f"type oid {item.oid} registered twice ({table[item.oid].name}, {item.name})"
                )
            table[item.oid] = item
    return table


# The registry, read-only. OIDs as in PostgreSQL's pg_type.dat (fixed for builtin types; checked
# against a PostgreSQL 15 catalog). Adding a type is one entry here.
TYPES: Final[Mapping[int, PgType]] = MappingProxyType(
    _index(
        [
            PgType(16, "bool", pa.bool_(), cast_bool, 1000),
            PgType(17, "bytea", pa.binary(), cast_bytea, 1001, note="text form is \\x + hex"),
            PgType(18, "char", _STRING, keep_text, 1002, note=_TEXT_NOTE),
            PgType(19, "name", _STRING, keep_text, 1003, note=_TEXT_NOTE),
            PgType(20, "int8", pa.int64(), cast_int, 1016),
            PgType(21, "int2", pa.int16(), cast_int, 1005),
            PgType(23, "int4", pa.int32(), cast_int, 1007),
            PgType(25, "text", _STRING, keep_text, 1009, note=_TEXT_NOTE),
            PgType(26, "oid", pa.int64(), cast_int, 1028, note="unsigned 32-bit, needs int64"),
            PgType(114, "json", _STRING, keep_text, 199, note=_TEXT_NOTE),
            PgType(700, "float4", pa.float32(), cast_float, 1021),
            PgType(701, "float8", pa.float64(), cast_float, 1022),
            PgType(705, "unknown", _STRING, keep_text, note=_TEXT_NOTE),
            PgType(1042, "bpchar", _STRING, keep_text, 1014, note="padded with blanks as printed"),
            PgType(1043, "varchar", _STRING, keep_text, 1015, note=_TEXT_NOTE),
            PgType(1082, "date", pa.date32(), cast_date, 1182, note="clamped to 0001-01-01..9999-12-31"),
            PgType(1083, "time", _STRING, keep_text, 1183, note="delta-rs rejects time64"),
            PgType(1114, "timestamp", pa.timestamp("us"), cast_timestamp, 1115, note="timezone-naive"),
            PgType(1184, "timestamptz", pa.timestamp("us", tz="UTC"), cast_timestamp, 1185, note="in UTC"),
            PgType(1186, "interval", _STRING, keep_text, 1187, note="delta-rs rejects duration"),
            PgType(1266, "timetz", _STRING, keep_text, 1270, note="delta-rs rejects time64"),
            PgType(
                1700,
                "numeric",
                _STRING,
                cast_decimal,
                1231,
                modifier=_numeric_arrow,
                note="decimal128(p,s) up to 38 digits, else text",
            ),
            PgType(2950, "uuid", _STRING, keep_text, 2951, note="canonical lower-case text"),
            PgType(3802, "jsonb", _STRING, keep_text, 3807, note=_TEXT_NOTE),
            PgType(790, "money", pa.decimal128(19, 2), cast_money, 791, note="read with lc_monetary=C"),
            # kept as PostgreSQL prints them: Delta has no such types, and the text is exact
            *(
                PgType(oid, name, _STRING, keep_text, array, note=note)
                for oid, name, array, note in _TEXT_TYPES
            ),
        ]
    )
)


def pg_type(type_oid: int) -> PgType:
    """The registry entry for ``type_oid``; an unknown OID maps to a text-keeping entry."""
    entry = TYPES.get(type_oid)
    if entry is None:
        return PgType(type_oid, f"type oid {type_oid}", _STRING, keep_text, note="unsupported: text kept")
    return entry


def arrow_type(type_oid: int, type_modifier: int = -1) -> pa.DataType:
    """The Arrow type (accepted by Delta Lake) of a column with this type OID and ``atttypmod``."""
    return pg_type(type_oid).arrow_for(type_modifier)


def resolve_domains(schema: TableSchema, domains: Mapping[int, tuple[int, int]]) -> TableSchema:
    """``schema`` with each domain column typed as the domain's base type.

    ``domains``: domain OID → (base type OID, the domain's type modifier), chains of domains already
    followed to the base (``source.checks.load_domains``). A column's own modifier wins over the
    domain's (a domain column's is -1 in practice). Both data paths describe a domain column by the
    domain's OID (the catalog and pgoutput's Relation message), so both pass through here.
    """
    if not any(c.type_oid in domains for c in schema.columns):
        return schema
    columns = tuple(
        Column(
            c.name,
            domains[c.type_oid][0],
            c.type_modifier if c.type_modifier != -1 else domains[c.type_oid][1],
            c.is_key,
        )
        if c.type_oid in domains
        else c
        for c in schema.columns
    )
    return TableSchema(schema.table, columns, schema.replica_identity)


def unresolved_types(schema: TableSchema, domains: Mapping[int, tuple[int, int]]) -> set[int]:
    """Type OIDs of ``schema`` that are neither registered nor known domains (enums, composites, …)."""
    return {c.type_oid for c in schema.columns if c.type_oid not in TYPES and c.type_oid not in domains}


def arrow_schema(columns: Sequence[Column]) -> pa.Schema:
    """The Arrow schema of a table with these columns: same names and order, every field nullable."""
    return pa.schema(
        [pa.field(c.name, arrow_type(c.type_oid, c.type_modifier), nullable=True) for c in columns]
    )
