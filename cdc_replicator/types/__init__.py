"""Map PostgreSQL types to Delta-compatible Arrow types and cast PostgreSQL text output to them, vectorised.

Both data paths (COPY csv and pgoutput text tuples) deliver a column as PostgreSQL's *text output*
of a session running with ``DateStyle=ISO``, ``TimeZone=UTC``, ``extra_float_digits=3``,
``bytea_output=hex``, ``IntervalStyle=postgres`` and ``lc_monetary=C``. One registry (``TYPES``,
one :class:`PgType` entry per type OID) says which Arrow type a column becomes and how its text is
cast, with ``pyarrow.compute`` kernels over whole arrays. Pure: no I/O.

The README's "Type map" lists every type with its Delta type and the choices made where Delta has
no exact equivalent; in short: integers, floats, bool, bytea, date and timestamps map to their
Arrow types; numeric(p,s) up to 38 digits and money to decimal128 (numeric NaN → NULL); everything
else — unconstrained numeric, time, interval, uuid, json, network, range, geometric and extension
types, enums, composites and arrays of anything — keeps its exact text. Domains take their base type
(``resolve_domains``). Dates and timestamps follow Delta's range 0001-01-01..9999-12-31: ±infinity
and every value outside it (BC, after 9999) become the nearest end of it.

Modules: ``registry`` (OID → Arrow type and caster, domains) · ``casts`` (``cast_text``, the one
entry point, and its errors) · ``kernels`` (the casters of numbers, bool, bytea, money) ·
``calendar`` (dates and timestamps: BC, ±infinity, clamping, day arithmetic).
"""

from __future__ import annotations

from cdc_replicator.types.casts import cast_text
from cdc_replicator.types.registry import (
    TEXT_TYPE_OIDS,
    TYPES,
    PgType,
    arrow_schema,
    arrow_type,
    pg_type,
    resolve_domains,
    unresolved_types,
)

__all__ = [
    "TEXT_TYPE_OIDS",
    "TYPES",
    "PgType",
    "arrow_schema",
    "arrow_type",
    "cast_text",
    "pg_type",
    "resolve_domains",
    "unresolved_types",
]
