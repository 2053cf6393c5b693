"""SQLAlchemy state store: the confirmed position per slot, load progress, table status; runs migrations/state.

Every failure of the store is a ``StateStoreError`` naming the file and the fix, never a driver's
traceback (``store.failures`` tells them apart). A SQLite file is checked (``pragma quick_check``)
when the store opens, so a damaged file stops the start instead of being half read.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from cdc_replicator.errors import ConfigError, ReplicatorError, StateStoreError
from cdc_replicator.model import (
    KeyRange,
    Lsn,
    Position,
    TableId,
    TablePosition,
    VerifyResult,
    WatermarkPosition,
)
from cdc_replicator.store.failures import DAMAGED_FIX, store_error
from cdc_replicator.store.migrations import apply_migrations, migrations_dir

__all__ = [
    "LoadRecord",
    "ResyncRecord",
    "SchemaHistoryEntry",
    "SlotRecord",
    "StateStore",
    "TableStatusRecord",
    "migrations_dir",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SlotRecord:
    slot: str
    system_id: str | None
    load_state: str
    consistent_point: Lsn | None
    applied_lsn: Lsn | None


@dataclass(frozen=True, slots=True)
class TableStatusRecord:
    table: str
    state: str  # the daemon's last state of the table: snapshotting / streaming / paused / failed
    position: Position | None  # a copy: the table's own commits are the authority
    rows_loaded: int | None
    last_error: str | None
    updated_at: str


@dataclass(frozen=True, slots=True)
class SchemaHistoryEntry:
    """One decision on a table's layout (``cdc_schema_history``)."""

    version: int
    lsn: Lsn | None
    decision: str  # load / evolve / accept / pause
    changes: str | None
    recorded_at: str


@dataclass(frozen=True, slots=True)
class LoadRecord:
    table: TableId
    load_id: str
    position: Lsn
    state: str
    chunks: int
    chunks_done: int
    rows_done: int


@dataclass(frozen=True, slots=True)
class ResyncRecord:
    table: TableId
    request: str
    low_watermark: Lsn | None
    next_key: tuple[str, ...] | None
    chunks: int
    rows: int
    state: str
    detail: str | None


def _bounds_json(r: KeyRange) -> str:
    return json.dumps({"lo": r.lo, "hi": r.hi, "pages": r.pages})


def _bounds(text: str) -> KeyRange:
    d = json.loads(text)
    lo, hi, pages = d.get("lo"), d.get("hi"), d.get("pages")
    return KeyRange(
        lo=None if lo is None else tuple(lo),
        hi=None if hi is None else tuple(hi),
        pages=None if pages is None else (int(pages[0]), None if pages[1] is None else int(pages[1])),
    )


def _now() -> str:
    return datetime.now(UTC).isoformat()


class StateStore:
    """Operational state in any SQLAlchemy database (sqlite by default). One writer: the daemon."""

    def __init__(self, url: str) -> None:
        try:
            parsed = make_url(url)
        except SQLAlchemyError as exc:
            raise ConfigError(f"config: state.url is not a SQLAlchemy URL: {url!r}") from exc
        sqlite = parsed.get_backend_name() == "sqlite"
        file = parsed.database if sqlite and parsed.database not in (None, "", ":memory:") else None
        self._where = f"the state store {file}" if file else f"the state store {parsed!r}"  # password masked
        self._file = file
        if file is not None:
            try:
                Path(file).parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StateStoreError(
                    f"{self._where} cannot be created: its folder {Path(file).parent} cannot be made "
                    f"({exc.strerror or exc})",
                    hint="point state.url at a file in a folder the daemon's user can write, or create "
                    "that folder (a path under a regular file cannot be one)",
                ) from exc
        try:
            # loader threads write chunk progress concurrently: let sqlite wait for its lock
            self._engine: Engine = create_engine(url, connect_args={"timeout": 30} if sqlite else {})
        except (SQLAlchemyError, ImportError) as exc:  # an unknown dialect or a missing driver
            raise ConfigError(
                f"config: state.url {parsed!r}: SQLAlchemy cannot open {parsed.drivername!r} URLs ({exc})",
                hint="use sqlite:///path/to/cdc.db, or postgresql+psycopg://user@host/db",
            ) from exc
        if sqlite:
            event.listen(self._engine, "connect", _sqlite_pragmas)
        try:
            if file is not None:
                self._check()
            self.migrate()
        except BaseException:
            self._engine.dispose()
            raise

    def close(self) -> None:
        self._engine.dispose()

    def migrate(self) -> list[str]:
        """Apply the numbered migrations not applied yet; return their names."""
        try:
            return apply_migrations(self._engine, migrations_dir("state"))
        except DBAPIError as exc:
            raise self._failed("cannot be opened or migrated", exc) from exc

    def _check(self) -> None:
        """SQLite's quick integrity check: a damaged file stops here, before anything reads it."""
        with self._read("cannot be opened") as conn:
            rows = conn.execute(text("pragma quick_check")).fetchall()
        problems = [str(r[0]) for r in rows if str(r[0]) != "ok"]
        if problems:
            raise StateStoreError(
                f"{self._where} is damaged (pragma quick_check: {problems[0]})", hint=DAMAGED_FIX
            )

    @contextmanager
    def _read(self, what: str = "cannot be read") -> Iterator[Connection]:
        try:
            with self._engine.connect() as conn:
                yield conn
        except DBAPIError as exc:
            raise self._failed(what, exc) from exc

    @contextmanager
    def _write(self, what: str = "cannot be written") -> Iterator[Connection]:
        try:
            with self._engine.begin() as conn:
                yield conn
        except DBAPIError as exc:
            raise self._failed(what, exc) from exc

    def _failed(self, what: str, exc: DBAPIError) -> StateStoreError:
        return store_error(self._where, self._file, what, exc)

    # ---- slot record -----------------------------------------------------------------------

    def slot(self, slot: str) -> SlotRecord | None:
        with self._read() as conn:
            row = conn.execute(
                text(
                    "select slot, system_id, load_state, consistent_point, applied_lsn "
                    "from cdc_source_position where slot = :s"
                ),
                {"s": slot},
            ).fetchone()
        if row is None:
            return None
        return SlotRecord(
            slot=row[0],
            system_id=row[1],
            load_state=row[2],
            consistent_point=None if row[3] is None else Lsn.parse(row[3]),
            applied_lsn=None if row[4] is None else Lsn.parse(row[4]),
        )

    def begin_load(self, slot: str, system_id: str) -> None:
        """Record that an initial load (and the slot it creates) is ours and not finished."""
        with self._write() as conn:
            conn.execute(text("delete from cdc_source_position where slot = :s"), {"s": slot})
            conn.execute(text("delete from cdc_table_status where slot = :s"), {"s": slot})
            conn.execute(text("delete from cdc_load_chunk where slot = :s"), {"s": slot})
            conn.execute(text("delete from cdc_load where slot = :s"), {"s": slot})
            conn.execute(
                text(
                    "insert into cdc_source_position (slot, system_id, load_state, updated_at) "
                    "values (:s, :sys, 'loading', :t)"
                ),
                {"s": slot, "sys": system_id, "t": _now()},
            )

    def set_consistent_point(self, slot: str, lsn: Lsn) -> None:
        self._update(slot, "consistent_point = :v", str(lsn))

    def finish_load(self, slot: str, lsn: Lsn) -> None:
        with self._write() as conn:
            conn.execute(
                text(
                    "update cdc_source_position set load_state = 'done', applied_lsn = :v, updated_at = :t "
                    "where slot = :s"
                ),
                {"s": slot, "v": str(lsn), "t": _now()},
            )

    def record_applied(self, slot: str, lsn: Lsn) -> None:
        """Durably note that every transaction ending at or before ``lsn`` is in Delta (before confirming)."""
        self._update(slot, "applied_lsn = :v", str(lsn))

    def forget(self, slot: str) -> None:
        with self._write() as conn:
            conn.execute(text("delete from cdc_source_position where slot = :s"), {"s": slot})
            conn.execute(text("delete from cdc_table_status where slot = :s"), {"s": slot})

    def _update(self, slot: str, assignment: str, value: str) -> None:
        # assignment is one of the constant strings above, never user input
        stmt = text(f"update cdc_source_position set {assignment}, updated_at = :t where slot = :s")  # noqa: S608
        with self._write() as conn:
            conn.execute(stmt, {"s": slot, "v": value, "t": _now()})

    # ---- chunked loads -----------------------------------------------------------------------

    def load(self, slot: str, table: TableId) -> LoadRecord | None:
        with self._read() as conn:
            row = conn.execute(
                text(
                    "select load_id, position, state, chunks from cdc_load where slot = :s and table_name = :t"
                ),
                {"s": slot, "t": str(table)},
            ).fetchone()
            if row is None:
                return None
            done = conn.execute(
                text(
                    "select count(*), coalesce(sum(rows), 0) from cdc_load_chunk "
                    "where slot = :s and table_name = :t and state = 'done'"
                ),
                {"s": slot, "t": str(table)},
            ).fetchone()
        assert done is not None
        return LoadRecord(table, row[0], Lsn.parse(row[1]), row[2], int(row[3]), int(done[0]), int(done[1]))

    def start_load(
        self, slot: str, table: TableId, load_id: str, position: Lsn, ranges: list[KeyRange]
    ) -> None:
        """Record a new load of ``table`` and its chunks (replacing any earlier one)."""
        now = _now()
        with self._write() as conn:
            params = {"s": slot, "t": str(table)}
            conn.execute(text("delete from cdc_load_chunk where slot = :s and table_name = :t"), params)
            conn.execute(text("delete from cdc_load where slot = :s and table_name = :t"), params)
            conn.execute(
                text(
                    "insert into cdc_load (slot, table_name, load_id, position, state, chunks, started_at, updated_at) "
                    "values (:s, :t, :l, :p, 'running', :n, :now, :now)"
                ),
                {**params, "l": load_id, "p": str(position), "n": len(ranges), "now": now},
            )
            conn.execute(
                text(
                    "insert into cdc_load_chunk (slot, table_name, load_id, chunk_no, bounds, state, updated_at) "
                    "values (:s, :t, :l, :c, :b, 'pending', :now)"
                ),
                [
                    {**params, "l": load_id, "c": i, "b": _bounds_json(r), "now": now}
                    for i, r in enumerate(ranges)
                ],
            )

    def pending_chunks(self, slot: str, table: TableId) -> list[tuple[int, KeyRange]]:
        with self._read() as conn:
            rows = conn.execute(
                text(
                    "select chunk_no, bounds from cdc_load_chunk where slot = :s and table_name = :t "
                    "and state = 'pending' order by chunk_no"
                ),
                {"s": slot, "t": str(table)},
            ).fetchall()
        return [(int(r[0]), _bounds(r[1])) for r in rows]

    def reset_chunks(self, slot: str, table: TableId) -> None:
        with self._write() as conn:
            conn.execute(
                text(
                    "update cdc_load_chunk set state = 'pending', rows = null where slot = :s and table_name = :t"
                ),
                {"s": slot, "t": str(table)},
            )

    def chunk_done(self, slot: str, table: TableId, chunk_no: int, rows: int, snapshot_lsn: Lsn) -> None:
        with self._write() as conn:
            conn.execute(
                text(
                    "update cdc_load_chunk set state = 'done', rows = :r, snapshot_lsn = :l, updated_at = :now "
                    "where slot = :s and table_name = :t and chunk_no = :c"
                ),
                {"s": slot, "t": str(table), "c": chunk_no, "r": rows, "l": str(snapshot_lsn), "now": _now()},
            )

    def finish_table_load(self, slot: str, table: TableId, state: str = "done") -> None:
        with self._write() as conn:
            conn.execute(
                text(
                    "update cdc_load set state = :st, updated_at = :now where slot = :s and table_name = :t"
                ),
                {"s": slot, "t": str(table), "st": state, "now": _now()},
            )

    # ---- live re-syncs -----------------------------------------------------------------------

    def resyncs(self, slot: str) -> list[ResyncRecord]:
        with self._read() as conn:
            rows = conn.execute(
                text(
                    "select table_name, request, low_watermark, next_key, chunks, rows, state, detail "
                    "from cdc_resync where slot = :s order by table_name"
                ),
                {"s": slot},
            ).fetchall()
        return [
            ResyncRecord(
                TableId.parse(r[0]),
                r[1],
                None if r[2] is None else Lsn.parse(r[2]),
                None if r[3] is None else tuple(json.loads(r[3])),
                int(r[4]),
                int(r[5]),
                r[6],
                r[7],
            )
            for r in rows
        ]

    def save_resync(self, slot: str, rec: ResyncRecord) -> None:
        with self._write() as conn:
            params = {"s": slot, "t": str(rec.table)}
            conn.execute(text("delete from cdc_resync where slot = :s and table_name = :t"), params)
            conn.execute(
                text(
                    "insert into cdc_resync (slot, table_name, request, low_watermark, next_key, chunks, rows, "
                    "state, detail, updated_at) values (:s, :t, :r, :lw, :nk, :c, :n, :st, :d, :now)"
                ),
                {
                    **params,
                    "r": rec.request,
                    "lw": None if rec.low_watermark is None else str(rec.low_watermark),
                    "nk": None if rec.next_key is None else json.dumps(list(rec.next_key)),
                    "c": rec.chunks,
                    "n": rec.rows,
                    "st": rec.state,
                    "d": rec.detail,
                    "now": _now(),
                },
            )

    # ---- verify ------------------------------------------------------------------------------

    def record_verify(self, slot: str, result: VerifyResult) -> None:
        """Replace the table's last verify result."""
        with self._write() as conn:
            params = {"s": slot, "t": result.table}
            conn.execute(text("delete from cdc_verify where slot = :s and table_name = :t"), params)
            conn.execute(
                text(
                    "insert into cdc_verify (slot, table_name, finished_at, rows, ranges, differences, seconds) "
                    "values (:s, :t, :at, :n, :r, :d, :sec)"
                ),
                {
                    **params,
                    "at": result.finished_at.astimezone(UTC).isoformat(),
                    "n": result.rows,
                    "r": result.ranges,
                    "d": result.differences,
                    "sec": result.seconds,
                },
            )

    def verifies(self, slot: str) -> list[VerifyResult]:
        """The last verify result of each table of ``slot``."""
        with self._read() as conn:
            rows = conn.execute(
                text(
                    "select table_name, finished_at, rows, ranges, differences, seconds from cdc_verify "
                    "where slot = :s order by table_name"
                ),
                {"s": slot},
            ).fetchall()
        return [
            VerifyResult(
                str(r[0]), datetime.fromisoformat(str(r[1])), int(r[2]), int(r[3]), int(r[4]), float(r[5])
            )
            for r in rows
        ]

    # ---- table status ----------------------------------------------------------------------

    def table_status(
        self,
        slot: str,
        table: TableId,
        state: str,
        *,
        position: Position | None = None,
        rows_loaded: int | None = None,
        error: str | None = None,
    ) -> None:
        """Record a table's state; ``position`` None keeps the position recorded before."""
        kind, text_ = _encode_position(position)
        with self._write() as conn:
            if position is None:
                kept = conn.execute(
                    text(
                        "select position_kind, position from cdc_table_status "
                        "where slot = :s and table_name = :n"
                    ),
                    {"s": slot, "n": str(table)},
                ).fetchone()
                if kept is not None:
                    kind, text_ = kept[0], kept[1]
            conn.execute(
                text("delete from cdc_table_status where slot = :s and table_name = :n"),
                {"s": slot, "n": str(table)},
            )
            conn.execute(
                text(
                    "insert into cdc_table_status (slot, table_name, state, position_kind, position, "
                    "rows_loaded, last_error, updated_at) values (:s, :n, :st, :k, :p, :r, :e, :t)"
                ),
                {
                    "s": slot,
                    "n": str(table),
                    "st": state,
                    "k": kind,
                    "p": text_,
                    "r": rows_loaded,
                    "e": error,
                    "t": _now(),
                },
            )

    # ---- schema history ----------------------------------------------------------------------

    def record_schema(
        self,
        slot: str,
        table: TableId,
        *,
        decision: str,
        new_schema: str,
        old_schema: str | None = None,
        lsn: Lsn | None = None,
        changes: str | None = None,
    ) -> None:
        """Append one entry to the table's schema history (JSON layouts from ``schema.schema_to_json``)."""
        with self._write() as conn:
            row = conn.execute(
                text("select max(version) from cdc_schema_history where slot = :s and table_name = :n"),
                {"s": slot, "n": str(table)},
            ).fetchone()
            version = int(row[0] or 0) + 1 if row is not None else 1
            conn.execute(
                text(
                    "insert into cdc_schema_history (slot, table_name, version, lsn, decision, changes, "
                    "old_schema, new_schema, recorded_at) values (:s, :n, :v, :l, :d, :c, :o, :w, :t)"
                ),
                {
                    "s": slot,
                    "n": str(table),
                    "v": version,
                    "l": None if lsn is None else str(lsn),
                    "d": decision,
                    "c": changes,
                    "o": old_schema,
                    "w": new_schema,
                    "t": _now(),
                },
            )

    def applied_schema(self, slot: str, table: TableId) -> str | None:
        """The JSON layout the table's Delta table holds: the newest load/evolve/accept entry."""
        with self._read() as conn:
            row = conn.execute(
                text(
                    "select new_schema from cdc_schema_history where slot = :s and table_name = :n "
                    "and decision <> 'pause' order by version desc limit 1"
                ),
                {"s": slot, "n": str(table)},
            ).fetchone()
        return None if row is None else str(row[0])

    def schema_history(self, slot: str, table: TableId) -> list[SchemaHistoryEntry]:
        with self._read() as conn:
            rows = conn.execute(
                text(
                    "select version, lsn, decision, changes, recorded_at from cdc_schema_history "
                    "where slot = :s and table_name = :n order by version"
                ),
                {"s": slot, "n": str(table)},
            ).fetchall()
        return [
            SchemaHistoryEntry(int(r[0]), None if r[1] is None else Lsn.parse(r[1]), r[2], r[3], r[4])
            for r in rows
        ]

    def table_statuses(self, slot: str) -> dict[str, TableStatusRecord]:
        """The last recorded state of each table of ``slot``, by table name."""
        with self._read() as conn:
            rows = conn.execute(
                text(
                    "select table_name, state, position_kind, position, rows_loaded, last_error, updated_at "
                    "from cdc_table_status where slot = :s"
                ),
                {"s": slot},
            ).fetchall()
        return {
            r[0]: TableStatusRecord(
                table=r[0],
                state=r[1],
                position=_decode_position(r[2], r[3]),
                rows_loaded=r[4],
                last_error=r[5],
                updated_at=r[6],
            )
            for r in rows
        }


def _encode_position(position: Position | None) -> tuple[str | None, str | None]:
    """(kind, text) of a position as ``cdc_table_status`` stores it."""
    if position is None:
        return None, None
    if isinstance(position, WatermarkPosition):
        return "watermark", position.to_json()
    return "lsn", str(position.lsn)


def _decode_position(kind: str | None, value: str | None) -> Position | None:
    if kind is None or value is None:
        return None
    if kind == "watermark":
        return WatermarkPosition.from_json(value)
    if kind == "lsn":
        return TablePosition(Lsn.parse(value))
    raise ReplicatorError(
        f"the state store holds a table position of an unknown kind {kind!r}",
        hint="it was written by a newer cdc-replicator: upgrade, or remove the state store's cdc_table_status rows",
    )


def _sqlite_pragmas(dbapi_conn: object, _record: object) -> None:
    cur = dbapi_conn.cursor()  # type: ignore[attr-defined]
    cur.execute("pragma journal_mode=wal")
    cur.execute("pragma synchronous=full")
    cur.close()
