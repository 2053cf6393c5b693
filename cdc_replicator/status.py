"""Read-only status report: each table's Delta position and row count, the slot's state on the source."""

from __future__ import annotations

from typing import Any

from cdc_replicator.config import Config
from cdc_replicator.errors import ReplicatorError
from cdc_replicator.sink.delta import DeltaSink
from cdc_replicator.source import checks
from cdc_replicator.state import StateStore

__all__ = ["collect_status"]


def collect_status(cfg: Config) -> dict[str, Any]:
    """A JSON-ready report; works whether or not a daemon is running."""
    sink = DeltaSink(cfg.target.uri, slot=cfg.source.slot, storage_options=dict(cfg.target.storage_options))
    tables = []
    for t in cfg.table_ids:
        pos = sink.position(t)
        tables.append(
            {
                "table": str(t),
                "position": None if pos is None else str(pos.lsn),
                "partial": None
                if pos is None or pos.partial is None
                else f"{pos.partial.commit_lsn}:{pos.partial.seq}",
                "rows": sink.row_count(t),
            }
        )
    slot: dict[str, Any] | str
    try:
        with checks.connect(cfg.source.dsn, connect_timeout=cfg.source.connect_timeout_seconds) as conn:
            info = checks.slot_info(conn, cfg.source.slot)
        slot = (
            "missing"
            if info is None
            else {
                "confirmed_flush": str(info.confirmed_flush),
                "wal_status": info.wal_status,
                "active_pid": info.active_pid,
                "invalidated": info.invalidated,
            }
        )
    except ReplicatorError as exc:
        slot = f"unknown ({exc.message})"
    store = StateStore(cfg.state.url)
    try:
        rec = store.slot(cfg.source.slot)
    finally:
        store.close()
    return {
        "slot": slot,
        "applied_lsn": None if rec is None or rec.applied_lsn is None else str(rec.applied_lsn),
        "load_state": None if rec is None else rec.load_state,
        "tables": tables,
    }
