"""State-store migrations: find ``migrations/<kind>`` and apply the numbered files not applied yet, once each."""

from __future__ import annotations

import logging
import os
import sys
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import Engine, text

from cdc_replicator.errors import ReplicatorError

__all__ = ["apply_migrations", "migrations_dir"]

logger = logging.getLogger(__name__)


def migrations_dir(kind: str = "state") -> Path:
    """Find migrations/<kind>: next to the package (checkout) or under <prefix>/share (installed)."""
    override = os.environ.get("CDC_REPLICATOR_MIGRATIONS")
    candidates = [Path(override) / kind] if override else []
    candidates += [
        Path(__file__).resolve().parents[2] / "migrations" / kind,
        Path(sys.prefix) / "share" / "cdc-replicator" / "migrations" / kind,
    ]
    for c in candidates:
        if c.is_dir():
            return c
    raise ReplicatorError(f"cannot find the {kind} migrations (looked in {', '.join(map(str, candidates))})")


def apply_migrations(engine: Engine, directory: Path) -> list[str]:
    """Apply the numbered ``*.sql`` files of ``directory`` not recorded yet, in order; return their names."""
    applied: list[str] = []
    with engine.begin() as conn:
        conn.execute(
            text(
                "create table if not exists cdc_schema_migrations "
                "(version text not null primary key, applied_at text not null)"
            )
        )
        done = {r[0] for r in conn.execute(text("select version from cdc_schema_migrations"))}
    for path in sorted(directory.glob("*.sql")):
        if path.stem in done:
            continue
        statements = [s.strip() for s in _strip_comments(path.read_text()).split(";") if s.strip()]
        with engine.begin() as conn:
            for stmt in statements:
                conn.execute(text(stmt))
            conn.execute(
                text("insert into cdc_schema_migrations (version, applied_at) values (:v, :t)"),
                {"v": path.stem, "t": datetime.now(UTC).isoformat()},
            )
        applied.append(path.stem)
        logger.info("state migration applied version=%s", path.stem)
    return applied


def _strip_comments(sql_text: str) -> str:
    return "\n".join(line.split("--", 1)[0] for line in sql_text.splitlines())
