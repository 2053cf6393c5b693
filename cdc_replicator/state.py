"""SQLAlchemy state store: the confirmed position per slot, load progress, table status; runs migrations/state."""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from cdc_replicator.errors import ConfigError, ReplicatorError
from cdc_replicator.model import Lsn, TableId

__all__ = ["SlotRecord", "StateStore", "migrations_dir"]

logger = logging.getLogger(__name__)


def migrations_dir(kind: str = "state") -> Path:
    """Find migrations/<kind>: next to the package (checkout) or under <prefix>/share (installed)."""
    override = os.environ.get("CDC_REPLICATOR_MIGRATIONS")
    candidates = [Path(override) / kind] if override else []
    candidates += [
        Path(__file__).resolve().parent.parent / "migrations" / kind,
        Path(sys.prefix) / "share" / "cdc-replicator" / "migrations" / kind,
    ]
    for c in candidates:
        if c.is_dir():
            return c
    raise ReplicatorError(f"cannot find the {kind} migrations (looked in {', '.join(map(str, candidates))})")


@dataclass(frozen=True, slots=True)
class SlotRecord:
    slot: str
    system_id: str | None
    load_state: str
    consistent_point: Lsn | None
    applied_lsn: Lsn | None


def _now() -> str:
    return datetime.now(UTC).isoformat()


class StateStore:
    """Operational state in any SQLAlchemy database (sqlite by default). One writer: the daemon."""

    def __init__(self, url: str) -> None:
        try:
            parsed = make_url(url)
        except SQLAlchemyError as exc:
            raise ConfigError(f"config: state.url is not a SQLAlchemy URL: {url!r}") from exc
        if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        self._engine: Engine = create_engine(url)
        if parsed.get_backend_name() == "sqlite":
            event.listen(self._engine, "connect", _sqlite_pragmas)
        self.migrate()

    def close(self) -> None:
        self._engine.dispose()

    def migrate(self) -> list[str]:
        """Apply the numbered migrations not applied yet; return their names."""
        applied: list[str] = []
        with self._engine.begin() as conn:
            conn.execute(
                text(
                    "create table if not exists cdc_schema_migrations "
                    "(version text not null primary key, applied_at text not null)"
                )
            )
            done = {r[0] for r in conn.execute(text("select version from cdc_schema_migrations"))}
        for path in sorted(migrations_dir("state").glob("*.sql")):
            if path.stem in done:
                continue
            statements = [s.strip() for s in _strip_comments(path.read_text()).split(";") if s.strip()]
            with self._engine.begin() as conn:
                for stmt in statements:
                    conn.execute(text(stmt))
                conn.execute(
                    text("insert into cdc_schema_migrations (version, applied_at) values (:v, :t)"),
                    {"v": path.stem, "t": _now()},
                )
            applied.append(path.stem)
            logger.info("state migration applied version=%s", path.stem)
        return applied

    # ---- slot record -----------------------------------------------------------------------

    def slot(self, slot: str) -> SlotRecord | None:
        with self._engine.connect() as conn:
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
        with self._engine.begin() as conn:
            conn.execute(text("delete from cdc_source_position where slot = :s"), {"s": slot})
            conn.execute(text("delete from cdc_table_status where slot = :s"), {"s": slot})
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
        with self._engine.begin() as conn:
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
        with self._engine.begin() as conn:
            conn.execute(text("delete from cdc_source_position where slot = :s"), {"s": slot})
            conn.execute(text("delete from cdc_table_status where slot = :s"), {"s": slot})

    def _update(self, slot: str, assignment: str, value: str) -> None:
        # assignment is one of the constant strings above, never user input
        stmt = text(f"update cdc_source_position set {assignment}, updated_at = :t where slot = :s")  # noqa: S608
        with self._engine.begin() as conn:
            conn.execute(stmt, {"s": slot, "v": value, "t": _now()})

    # ---- table status ----------------------------------------------------------------------

    def table_status(
        self,
        slot: str,
        table: TableId,
        state: str,
        *,
        position: str | None = None,
        rows_loaded: int | None = None,
        error: str | None = None,
    ) -> None:
        with self._engine.begin() as conn:
            conn.execute(
                text("delete from cdc_table_status where slot = :s and table_name = :n"),
                {"s": slot, "n": str(table)},
            )
            conn.execute(
                text(
                    "insert into cdc_table_status (slot, table_name, state, position, rows_loaded, last_error, "
                    "updated_at) values (:s, :n, :st, :p, :r, :e, :t)"
                ),
                {
                    "s": slot,
                    "n": str(table),
                    "st": state,
                    "p": position,
                    "r": rows_loaded,
                    "e": error,
                    "t": _now(),
                },
            )


def _sqlite_pragmas(dbapi_conn: object, _record: object) -> None:
    cur = dbapi_conn.cursor()  # type: ignore[attr-defined]
    cur.execute("pragma journal_mode=wal")
    cur.execute("pragma synchronous=full")
    cur.close()


def _strip_comments(sql_text: str) -> str:
    return "\n".join(line.split("--", 1)[0] for line in sql_text.splitlines())
