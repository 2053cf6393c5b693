"""Turn a TablePatch into a typed Arrow table and the clauses of one sequenced MERGE. Pure."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import pyarrow as pa
import pyarrow.compute as pc

from cdc_replicator.errors import DecodeError
from cdc_replicator.model import MOVED_PREFIX, UNCHANGED_PREFIX, KeyRange, TablePatch, TableSchema, Value
from cdc_replicator.types import arrow_type, cast_text
from cdc_replicator.types.partitions import PartitionColumn, derive, derived_fields

__all__ = [
    "META_COLUMNS",
    "range_predicate",
    "moved_keys",
    "flagged_keys",
    "toast_gaps",
    "fill_toast",
    "MergePlan",
    "plan_merge",
    "target_schema",
    "typed_columns",
    "quote",
    "partition_arrays",
    "partition_predicate",
]

_TS_UTC = pa.timestamp("us", tz="UTC")
META_COLUMNS = ("_cdc_lsn", "_cdc_op", "_cdc_committed_at")
_INT_TYPES = (pa.int8(), pa.int16(), pa.int32(), pa.int64())


def quote(name: str) -> str:
    """Quote a column name for a delta-rs (DataFusion) SQL expression."""
    return '"' + name.replace('"', '""') + '"'


def target_schema(
    schema: TableSchema, *, soft_delete: bool, partitions: Sequence[PartitionColumn] = ()
) -> pa.Schema:
    """The Delta table's schema: the source columns, the derived partition columns (``day(c)`` …),
    then the ``_cdc_*`` metadata columns."""
    fields = [
        pa.field(c.name, arrow_type(c.type_oid, c.type_modifier), nullable=True) for c in schema.columns
    ]
    fields += derived_fields(partitions)
    fields += [
        pa.field("_cdc_lsn", pa.int64(), nullable=True),
        pa.field("_cdc_op", pa.string(), nullable=True),
        pa.field("_cdc_committed_at", _TS_UTC, nullable=True),
    ]
    if soft_delete:
        fields.append(pa.field("_cdc_deleted", pa.bool_(), nullable=True))
    return pa.schema(fields)


def typed_columns(
    schema: TableSchema,
    rows: pa.Table | pa.RecordBatch,
    *,
    native: bool = False,
    notes: list[str] | None = None,
) -> list[pa.Array | pa.ChunkedArray]:
    """The source columns as their Arrow types.

    By default every column is PostgreSQL text (``binary`` or ``string``) and is cast by
    ``types``. ``native``: the rows were read in binary form (ADBC), so a column that already has
    its target type is kept as is and only the ``::text`` ones are cast. ``notes`` receives
    ``"column: what"`` for values stored differently by design (numeric NaN, ±infinity, …).
    """
    out: list[pa.Array | pa.ChunkedArray] = []
    for c in schema.columns:
        col = rows.column(c.name)
        target = arrow_type(c.type_oid, c.type_modifier)
        if native and col.type == target and (not pa.types.is_string(target) or c.type_oid in _NATIVE_TEXT):
            out.append(col)
        else:
            said: list[str] = []
            out.append(cast_text(col, c.type_oid, c.type_modifier, said))
            if said and c.is_key:  # two source keys could meet in one stored value: merges would mix rows
                raise DecodeError(
                    f"key column {c.name} of {schema.table}: {'; '.join(said)}",
                    hint="a key must be stored exactly: change the source value, or key the table by other "
                    "columns",
                )
            if notes is not None:
                notes.extend(f"{c.name}: {note}" for note in said)
    return out


# text-like types whose string value is the value itself (no normalisation by the casts of ``types``)
_NATIVE_TEXT = frozenset({25, 1043, 1042, 19})


@dataclass(frozen=True, slots=True)
class MergePlan:
    """Everything ``DeltaTable.merge`` needs, as values."""

    source: pa.Table
    predicate: str
    delete_predicate: str | None  # hard delete: when_matched_delete
    soft_delete_updates: dict[str, str] | None  # soft delete: when_matched_update on deletes
    update_predicate: str
    updates: dict[str, str]
    insert_predicate: str
    inserts: dict[str, str]
    upsert_rows: pa.Table  # the non-delete rows as the target stores them (for truncate overwrites)
    notes: tuple[str, ...] = ()  # values stored differently by design, "column: what" (to be logged)


def moved_keys(patch: TablePatch) -> pa.Table | None:
    """The typed old keys of rows whose key moved while a TOASTed value stayed unchanged (or None)."""
    schema = patch.schema
    names = [MOVED_PREFIX + k for k in schema.key]
    if not names or names[0] not in patch.rows.column_names:
        return None
    moved = patch.rows.select(names).filter(pc.is_valid(patch.rows.column(names[0])))
    if moved.num_rows == 0:
        return None
    by_name = {c.name: c for c in schema.columns}
    return pa.table(
        {
            k: cast_text(moved.column(MOVED_PREFIX + k), by_name[k].type_oid, by_name[k].type_modifier)
            for k in schema.key
        }
    )


def _flagged(patch: TablePatch) -> pa.Array | None:
    """Per row: a non-delete row with at least one value still marked unchanged (None: no such row)."""
    rows = patch.rows
    if not patch.unchanged_columns or rows.num_rows == 0:
        return None
    flags = [pc.fill_null(rows.column(UNCHANGED_PREFIX + n), False) for n in patch.unchanged_columns]
    any_flag = flags[0]
    for f in flags[1:]:
        any_flag = pc.or_(any_flag, f)
    mask = pc.and_(any_flag, pc.not_equal(rows.column("_cdc_op"), "d"))
    if not pc.any(mask).as_py():
        return None
    return mask.combine_chunks() if isinstance(mask, pa.ChunkedArray) else mask


def _typed_keys(schema: TableSchema, rows: pa.Table, prefix: str = "") -> pa.Table:
    by_name = {c.name: c for c in schema.columns}
    return pa.table(
        {
            k: cast_text(rows.column(prefix + k), by_name[k].type_oid, by_name[k].type_modifier)
            for k in schema.key
        }
    )


def _member(keys: pa.Table, found: pa.Table | None) -> pa.Array:
    """Per row of ``keys``: whether ``found`` (same key columns, typed) has that key."""
    n = keys.num_rows
    if found is None or found.num_rows == 0:
        return pa.array([False] * n, pa.bool_())
    names = keys.column_names
    if len(names) == 1:
        col = keys.column(names[0])
        return pc.fill_null(pc.is_in(col, value_set=found.column(names[0]).combine_chunks()), False)
    have = set(zip(*(found.column(k).to_pylist() for k in names), strict=True))
    mine = zip(*(keys.column(k).to_pylist() for k in names), strict=True)
    return pa.array([k in have for k in mine], pa.bool_())


def flagged_keys(patch: TablePatch) -> pa.Table | None:
    """The typed keys of the rows whose unchanged TOAST values the merge would take from their own
    Delta row (rows still marked after the batch, that did not move); None: no such row."""
    mask = _flagged(patch)
    if mask is None:
        return None
    name = MOVED_PREFIX + patch.schema.key[0] if patch.schema.key else ""
    if name in patch.rows.column_names:
        mask = pc.and_(mask, pc.is_null(patch.rows.column(name)))
    rows = patch.rows.filter(mask)
    return _typed_keys(patch.schema, rows) if rows.num_rows else None


def toast_gaps(patch: TablePatch, present: pa.Table | None, moved_rows: pa.Table | None) -> pa.Table | None:
    """The keys (PostgreSQL text, as the patch has them) of rows whose unchanged TOAST values nothing
    in Delta can give: a row that has no Delta row, or that moved from a key Delta has no row at.

    ``present``: the Delta rows (at least their key columns) at ``flagged_keys(patch)``;
    ``moved_rows``: the Delta rows at ``moved_keys(patch)``. None: no rows. Without a fill these
    rows would be inserted with NULL where the source holds a value.
    """
    mask = _flagged(patch)
    if mask is None:
        return None
    schema, rows = patch.schema, patch.rows
    key = list(schema.key)
    own = _member(_typed_keys(schema, rows), None if present is None else present.select(key))
    moved_name = MOVED_PREFIX + key[0]
    if moved_name in rows.column_names:
        is_moved = pc.is_valid(rows.column(moved_name))
        old = _member(
            _typed_keys(schema, rows, MOVED_PREFIX), None if moved_rows is None else moved_rows.select(key)
        )
        found = pc.if_else(is_moved, old, own)
    else:
        found = own
    gap = pc.and_(mask, pc.invert(found))
    if not pc.any(gap).as_py():
        return None
    return rows.select(key).filter(gap)


def fill_toast(patch: TablePatch, gaps: pa.Table, found: pa.Table) -> tuple[TablePatch, int]:
    """Fill the unchanged TOAST values of the rows at ``gaps`` from ``found`` (the source's current
    rows, PostgreSQL text; a key it lacks is absent). A gap ``found`` has no row for cannot be
    known: that row leaves the patch (it is not written rather than written with NULL). Returns the
    patch and the number of rows left out.
    """
    schema, rows = patch.schema, patch.rows
    key = list(schema.key)

    def keys_of(t: pa.Table) -> list[tuple[Value, ...]]:
        return list(zip(*(t.column(k).to_pylist() for k in key), strict=True))

    wanted = set(keys_of(gaps))
    by_key = dict(zip(keys_of(found), found.to_pylist(), strict=True))
    row_keys = keys_of(rows)
    keep = [k not in wanted or k in by_key for k in row_keys]
    columns: dict[str, pa.Array | pa.ChunkedArray] = {n: rows.column(n) for n in rows.column_names}
    for n in patch.unchanged_columns:
        values = rows.column(n).to_pylist()
        flags = rows.column(UNCHANGED_PREFIX + n).to_pylist()
        for i, k in enumerate(row_keys):
            got = by_key.get(k) if k in wanted else None
            if got is not None and flags[i]:
                values[i], flags[i] = got[n], False
        columns[n] = pa.array(values, rows.schema.field(n).type)
        columns[UNCHANGED_PREFIX + n] = pa.array(flags, pa.bool_())
    filled = pa.table(columns, schema=rows.schema).filter(pa.array(keep, pa.bool_()))
    left_out = len(keep) - sum(keep)
    return replace(patch, rows=filled), left_out


def plan_merge(
    patch: TablePatch,
    *,
    soft_delete: bool,
    moved_rows: pa.Table | None = None,
    target: pa.Schema | None = None,
    partitions: Sequence[PartitionColumn] = (),
) -> MergePlan:
    """A sequenced merge: a change lands only if its ``_cdc_lsn`` is not older than the row's.

    ``moved_rows``: the target's current rows at the keys of ``moved_keys(patch)``; their values
    fill the unchanged TOAST columns of rows whose key moved (the new key has no target row).
    ``target``: the Delta table's schema; its columns the source no longer has (dropped, or the
    old name of a renamed one) are set NULL by every later update and insert.
    ``partitions``: the table's ``partition_by``; derived columns are computed from the row's
    values, and the merge is pruned by partition where that is safe (``partition_predicate``).
    """
    schema = patch.schema
    rows = patch.rows
    notes: list[str] = []
    cols = typed_columns(schema, rows, notes=notes)
    names = list(schema.column_names)
    data: dict[str, pa.Array | pa.ChunkedArray] = dict(zip(names, cols, strict=True))
    flags = {n: rows.column(UNCHANGED_PREFIX + n) for n in patch.unchanged_columns}
    if moved_rows is not None and moved_rows.num_rows:
        _fill_moved(patch, data, flags, moved_rows)
    derived = partition_arrays(data, partitions)
    data.update(derived)
    for m in META_COLUMNS:
        data[m] = rows.column(m)
    if soft_delete:
        data["_cdc_deleted"] = pc.equal(rows.column("_cdc_op"), "d")
    for n in patch.unchanged_columns:
        data[UNCHANGED_PREFIX + n] = flags[n]
    source = pa.table(data)

    key = schema.key
    on = " AND ".join(f"t.{quote(k)} = s.{quote(k)}" for k in key)
    rng = _key_range(source, key[0]) if key else None
    predicate = on if rng is None else f"{on} AND {rng}"
    pruned = partition_predicate(source, schema, partitions)
    if pruned is not None:
        predicate = f"{predicate} AND {pruned}"
    newer = "s._cdc_lsn >= t._cdc_lsn"

    source_of = {p.name: p.source for p in partitions if p.transform is not None}

    def value(name: str) -> str:
        q = quote(name)
        kept = source_of.get(name, name)  # a derived column is kept when its source column is
        if kept in patch.unchanged_columns:
            return f"CASE WHEN s.{quote(UNCHANGED_PREFIX + kept)} THEN t.{q} ELSE s.{q} END"
        return f"s.{q}"

    all_cols = names + list(derived) + list(META_COLUMNS) + (["_cdc_deleted"] if soft_delete else [])
    updates = {quote(n): value(n) for n in all_cols if n not in key}
    inserts = {quote(n): f"s.{quote(n)}" for n in all_cols}
    soft_updates = None
    delete_predicate = None
    if soft_delete:
        soft_updates = {quote(m): f"s.{quote(m)}" for m in (*META_COLUMNS, "_cdc_deleted")}
    else:
        delete_predicate = f"s._cdc_op = 'd' AND {newer}"
    not_delete = pc.not_equal(rows.column("_cdc_op"), "d")
    upsert_cols = {n: source.column(n) for n in all_cols}
    if target is not None:
        gone = [f for f in target if f.name not in upsert_cols]
        for f in gone:
            updates[quote(f.name)] = "NULL"
        upsert_cols.update({f.name: pa.nulls(source.num_rows, f.type) for f in gone})
        upsert_cols = {f.name: upsert_cols[f.name] for f in target if f.name in upsert_cols}
    upsert_rows = pa.table(upsert_cols).filter(not_delete)
    return MergePlan(
        source=source,
        predicate=predicate,
        delete_predicate=delete_predicate,
        soft_delete_updates=soft_updates,
        update_predicate=f"s._cdc_op <> 'd' AND {newer}",
        updates=updates,
        insert_predicate="s._cdc_op <> 'd'",
        inserts=inserts,
        upsert_rows=upsert_rows,
        notes=tuple(notes),
    )


def partition_arrays(
    columns: Mapping[str, pa.Array | pa.ChunkedArray], partitions: Sequence[PartitionColumn]
) -> dict[str, pa.Array | pa.ChunkedArray]:
    """The derived partition columns (``created_at_day`` …) from the typed source ``columns``.

    A source column the stream no longer has (dropped while streaming) derives nothing: the merge
    sets the Delta column NULL, like any column the source lost, and the next start refuses the
    ``partition_by`` that names it.
    """
    return {
        p.name: derive(p, columns[p.source])
        for p in partitions
        if p.transform is not None and p.source in columns
    }


# more distinct partition values than this in one batch: the key range alone prunes
MAX_PRUNED_PARTITIONS = 100


def partition_predicate(
    source: pa.Table, schema: TableSchema, partitions: Sequence[PartitionColumn]
) -> str | None:
    """A target-side ``t.p IN (...)`` per partition column, from the batch's values; None: no pruning.

    Only safe where a row's partition is a function of its key: every partition source column is
    a key column. Otherwise an update that moves a row to another partition arrives with its new
    values only (REPLICA IDENTITY DEFAULT sends no old value of a non-key column, and the batch
    keeps the last row image), so a predicate over the new partitions would not match the row in
    its old partition and the merge would insert a second row. A key change is a delete of the
    old key (whose partition the key gives) and an insert, so the old partition is in the list.
    """
    if not partitions or any(p.source not in schema.key for p in partitions):
        return None
    parts = []
    for p in partitions:
        values = pc.unique(source.column(p.name).combine_chunks())
        if values.null_count or len(values) == 0 or len(values) > MAX_PRUNED_PARTITIONS:
            return None
        literals = []
        for v in values.to_pylist():
            lit = _partition_literal(v, values.type)
            if lit is None:
                return None
            literals.append(lit)
        parts.append(f"t.{quote(p.name)} IN ({', '.join(sorted(literals))})")
    return " AND ".join(parts)


def _partition_literal(value: object, typ: pa.DataType) -> str | None:
    """A DataFusion literal of a partition value (ints, text, dates); None: a type not pruned by."""
    if pa.types.is_integer(typ) and isinstance(value, int):
        return str(int(value))
    if (pa.types.is_string(typ) or pa.types.is_large_string(typ)) and isinstance(value, str):
        return _literal(value)
    if pa.types.is_date32(typ):
        return f"CAST({_literal(str(value))} AS DATE)"
    return None


def _fill_moved(
    patch: TablePatch,
    data: dict[str, pa.Array | pa.ChunkedArray],
    flags: dict[str, pa.Array | pa.ChunkedArray],
    moved_rows: pa.Table,
) -> None:
    """Take unchanged values of moved rows from their old key's target row. Rare: plain Python."""
    schema = patch.schema
    key = list(schema.key)
    old_keys = moved_keys(patch)
    if old_keys is None:
        return
    lookup = {tuple(r[k] for k in key): r for r in moved_rows.to_pylist()}
    moved_cols = [patch.rows.column(MOVED_PREFIX + k) for k in key]
    valid = pc.is_valid(moved_cols[0]).to_pylist()
    old_iter = iter(old_keys.to_pylist())
    targets: list[dict[str, object] | None] = []
    for ok in valid:
        targets.append(lookup.get(tuple(next(old_iter)[k] for k in key)) if ok else None)
    for n in patch.unchanged_columns:
        col = data[n].to_pylist()
        flag = flags[n].to_pylist()
        for i, t in enumerate(targets):
            if t is not None and flag[i]:
                col[i], flag[i] = t[n], False
        data[n] = pa.array(col, data[n].type)
        flags[n] = pa.array(flag, pa.bool_())


def _key_range(source: pa.Table, key: str) -> str | None:
    """A target-side range on the first key column, so delta-rs prunes files (see notes/deltalake.md)."""
    col = source.column(key)
    if col.null_count == len(col) or len(col) == 0:
        return None
    mm = pc.min_max(col)
    lo, hi = mm["min"].as_py(), mm["max"].as_py()
    q = f"t.{quote(key)}"
    if col.type in _INT_TYPES:
        return f"{q} >= {int(lo)} AND {q} <= {int(hi)}"
    if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
        return f"{q} >= {_literal(str(lo))} AND {q} <= {_literal(str(hi))}"
    return None


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


_NUMERIC_OIDS = frozenset({21, 23, 20, 1700})


def _typed_literal(text: str, type_oid: int) -> str:
    """A Delta (DataFusion) SQL literal for a key value given in PostgreSQL text form."""
    if type_oid in _NUMERIC_OIDS:
        float(text)  # raises on anything that is not a plain number
        return text
    if type_oid == 1082:  # date
        return f"CAST({_literal(text)} AS DATE)"
    return _literal(text)


def range_predicate(schema: TableSchema, r: KeyRange) -> str | None:
    """The Delta-side predicate of a key range (lexicographic over the key columns); None = all rows."""
    if r.whole or r.pages is not None:
        return None
    key = [c for c in schema.columns if c.is_key]

    def compare(values: tuple[str, ...], strict: str, last: str) -> str:
        ors = []
        for i, c in enumerate(key):
            eqs = [
                f"{quote(k.name)} = {_typed_literal(values[j], k.type_oid)}" for j, k in enumerate(key[:i])
            ]
            op = last if i == len(key) - 1 else strict
            eqs.append(f"{quote(c.name)} {op} {_typed_literal(values[i], c.type_oid)}")
            ors.append("(" + " AND ".join(eqs) + ")")
        return "(" + " OR ".join(ors) + ")"

    parts = []
    if r.lo is not None:
        parts.append(compare(r.lo, ">", ">="))
    if r.hi is not None:
        parts.append(compare(r.hi, "<", "<"))
    return " AND ".join(parts)
