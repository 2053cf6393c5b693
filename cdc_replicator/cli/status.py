"""Read-only status report: where each table stands and why, and the slot on the source.

Works whether or not a daemon runs: it reads the Delta commits (positions, rows, last commit), the
state store (each table's last state and error, the applied LSN) and the source catalog (the
slot, the server's WAL position). Nothing it returns holds a secret.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from cdc_replicator.config import Config
from cdc_replicator.errors import ReplicatorError
from cdc_replicator.model import Lsn, TableId, VerifyResult
from cdc_replicator.sink.delta import DeltaSink
from cdc_replicator.source import checks
from cdc_replicator.store.state import StateStore

__all__ = ["collect_status", "render_status"]


def collect_status(cfg: Config) -> dict[str, Any]:
    """A JSON-ready report."""
    slot_name = cfg.source.slot
    sink = DeltaSink(cfg.target.uri, slot=slot_name, storage_options=dict(cfg.target.storage_options))
    store = StateStore(cfg.state.url)
    try:
        rec = store.slot(slot_name)
        recorded = store.table_statuses(slot_name)
        loads = {str(t): store.load(slot_name, t) for t in cfg.table_ids}
        verifies = {v.table: v for v in store.verifies(slot_name)}
    finally:
        store.close()

    if cfg.source.mode == "watermark":
        return _watermark_status(cfg, sink, recorded, verifies)
    slot: dict[str, Any]
    server_lsn: Lsn | None = None
    daemon_running: bool | None = None
    try:
        with checks.connect(
            cfg.source.dsn,
            connect_timeout=cfg.source.connect_timeout_seconds,
            silence_timeout=cfg.source.wal_receiver_timeout_seconds,
        ) as conn:
            info = checks.slot_info(conn, slot_name)
            stats = checks.slot_stats(conn, slot_name)
        server_lsn = stats.server_lsn
        if info is None:
            slot = {"name": slot_name, "state": "missing"}
            daemon_running = False
        else:
            daemon_running = info.active_pid is not None
            slot = {
                "name": slot_name,
                "state": "invalidated" if info.invalidated else ("active" if daemon_running else "inactive"),
                "active_pid": info.active_pid,
                "confirmed_flush_lsn": _lsn(info.confirmed_flush),
                "wal_status": info.wal_status,
                "lag_bytes": stats.lag_bytes,
                "retained_wal_bytes": stats.retained_wal_bytes,
            }
        slot["server_lsn"] = str(stats.server_lsn)
    except ReplicatorError as exc:
        slot = {"name": slot_name, "state": "unknown", "error": exc.message}

    now = datetime.now(UTC)
    tables = []
    for t in cfg.table_ids:
        name = str(t)
        row: dict[str, Any] = {"table": name, "mode": cfg.source.mode}
        try:
            pos = sink.position(t)
            lake = _lake_fields(sink, t, now)
        except ReplicatorError as exc:
            tables.append(_unreadable(row, exc))
            continue
        saved = recorded.get(name)
        load = loads.get(name)
        state = _state(
            saved.state if saved else None, pos is not None, load.state if load else None, daemon_running
        )
        row.update(
            state=state,
            position=None if pos is None else str(pos.lsn),
            partial=None
            if pos is None or pos.partial is None
            else f"{pos.partial.commit_lsn}:{pos.partial.seq}",
            lag_bytes=None
            if pos is None or server_lsn is None
            else max(0, server_lsn.value - max(pos.lsn.value, _lsn_value(rec.applied_lsn if rec else None))),
            **lake,
            last_verify=_verify_fields(verifies.get(name), now),
            last_error=saved.last_error if saved else None,
        )
        tables.append(row)
    return {
        "slot": slot,
        "daemon_running": daemon_running,
        "applied_lsn": None if rec is None or rec.applied_lsn is None else str(rec.applied_lsn),
        "load_state": None if rec is None else rec.load_state,
        "tables": tables,
    }


def _watermark_status(
    cfg: Config, sink: DeltaSink, recorded: dict[str, Any], verifies: dict[str, VerifyResult]
) -> dict[str, Any]:
    """Watermark mode: no slot; each table's watermark from its newest Delta commit."""
    replica: dict[str, Any]
    try:
        with checks.connect(
            cfg.source.dsn,
            connect_timeout=cfg.source.connect_timeout_seconds,
            silence_timeout=cfg.source.wal_receiver_timeout_seconds,
        ) as conn:
            row = conn.execute(
                "select pg_is_in_recovery(), extract(epoch from now() - pg_last_xact_replay_timestamp()), "
                "(select count(*) from pg_stat_activity where application_name = 'cdc-replicator watermark' "
                "and datname = current_database() and pid <> pg_backend_pid())"
            ).fetchone()
        assert row is not None
        replica = {
            "in_recovery": bool(row[0]),
            "replica_lag_seconds": None if row[1] is None else round(float(str(row[1])), 3),
        }
        running: bool | None = int(str(row[2])) > 0
    except ReplicatorError as exc:
        replica = {"state": "unknown", "error": exc.message}
        running = None
    now = datetime.now(UTC)
    tables = []
    for t in cfg.table_ids:
        name = str(t)
        row_: dict[str, Any] = {"table": name, "mode": "watermark"}
        try:
            wm = sink.watermark(t)
            lake = _lake_fields(sink, t, now)
        except ReplicatorError as exc:
            tables.append(_unreadable(row_, exc))
            continue
        saved = recorded.get(name)
        if lake["delta_version"] is None:
            word = "not loaded"
        elif saved is not None and saved.state in ("paused", "failed"):
            word = saved.state
        else:
            word = "polling" if running else "stopped"
        row_.update(
            state=word,
            position=None if wm is None or wm.read is None else ",".join(wm.read),
            pending_ranges=None if wm is None else len(wm.pending),
            lag_bytes=None,
            **lake,
            last_verify=_verify_fields(verifies.get(name), now),
            last_error=saved.last_error if saved else None,
        )
        tables.append(row_)
    return {
        "slot": {"name": None, "state": "none (watermark mode)", **replica},
        "daemon_running": running,
        "applied_lsn": None,
        "load_state": None,
        "tables": tables,
    }


def _lake_fields(sink: DeltaSink, table: TableId, now: datetime) -> dict[str, Any]:
    """What the Delta table says: rows, version (None: no table yet), when it was last written, its
    live files and bytes, the bytes not vacuumed yet and its last maintenance.

    Raises ReplicatorError when the table cannot be read.
    """
    commit = sink.last_commit(table)
    rows = sink.row_count(table)
    when = None if commit is None else commit[1]
    health = sink.lake_health(table)
    maintained = None if health is None else health.last_maintenance
    return {
        "files": None if health is None else health.files,
        "bytes": None if health is None else health.bytes,
        "unvacuumed_bytes": None if health is None else health.unvacuumed_bytes,
        "last_maintenance": None if maintained is None else maintained.isoformat(),
        "seconds_since_maintenance": None
        if maintained is None
        else round((now - maintained).total_seconds(), 1),
        "rows": rows,
        "delta_version": None if commit is None else commit[0],
        "last_commit": None if when is None else when.isoformat(),
        "seconds_since_commit": None if when is None else round((now - when).total_seconds(), 1),
    }


def _verify_fields(v: VerifyResult | None, now: datetime) -> dict[str, Any] | None:
    """The table's last ``verify`` (None: never verified)."""
    if v is None:
        return None
    return {
        "finished_at": v.finished_at.isoformat(),
        "seconds_ago": round((now - v.finished_at).total_seconds(), 1),
        "rows": v.rows,
        "ranges": v.ranges,
        "differences": v.differences,
    }


def _verified(v: dict[str, Any] | None) -> str:
    if not v:
        return "-"
    word = "equal" if v["differences"] == 0 else f"{v['differences']} differ"
    return f"{word} {_ago(v['seconds_ago'])} ago"


def _unreadable(row: dict[str, Any], exc: ReplicatorError) -> dict[str, Any]:
    """``row`` for a table whose Delta table cannot be read."""
    return {**row, "state": "failed", "last_error": f"cannot read the Delta table: {exc.message}"}


def _lsn(lsn: Lsn | None) -> str | None:
    return None if lsn is None else str(lsn)


def _lsn_value(lsn: Lsn | None) -> int:
    return 0 if lsn is None else lsn.value


def _state(saved: str | None, has_position: bool, load: str | None, daemon_running: bool | None) -> str:
    """One word per table: what the daemon last said, corrected by what the lake shows now."""
    if load == "running":
        return "snapshotting" if daemon_running else "snapshot interrupted"
    if saved in ("paused", "failed"):
        return saved
    if not has_position:
        return "not loaded"
    if daemon_running is False:
        return "stopped"
    return saved if saved in ("streaming", "snapshotting") and daemon_running else "streaming"


def render_status(report: dict[str, Any]) -> str:
    """The human table of ``cdc-replicator status``."""
    slot = report["slot"]
    lines = []
    head = f"slot {slot['name']}: {slot['state']}" if slot.get("name") else f"source: {slot['state']}"
    if slot.get("in_recovery") is not None:
        head += ", a replica" if slot["in_recovery"] else ", a primary"
    if slot.get("replica_lag_seconds") is not None:
        head += f", replay lag {slot['replica_lag_seconds']:.1f}s"
    if slot.get("error"):
        head += f" ({slot['error']})"
    if slot.get("wal_status"):
        head += f", wal_status {slot['wal_status']}"
    if slot.get("retained_wal_bytes") is not None:
        head += f", retains {_bytes(slot['retained_wal_bytes'])} of WAL"
    if slot.get("lag_bytes") is not None:
        head += f", {_bytes(slot['lag_bytes'])} behind the server"
    lines.append(head)
    cols = (
        "table",
        "mode",
        "state",
        "position",
        "lag",
        "rows",
        "files",
        "size",
        "unvacuumed",
        "last commit",
        "maintained",
        "last verify",
        "last error",
    )
    body = []
    for t in report["tables"]:
        since = t.get("seconds_since_commit")
        maintained = t.get("seconds_since_maintenance")
        body.append(
            (
                t["table"],
                t.get("mode") or "",
                t.get("state") or "",
                t.get("position") or "-",
                "-" if t.get("lag_bytes") is None else _bytes(t["lag_bytes"]),
                "-" if t.get("rows") is None else f"{t['rows']:,}",
                "-" if t.get("files") is None else str(t["files"]),
                "-" if t.get("bytes") is None else _bytes(t["bytes"]),
                "-" if t.get("unvacuumed_bytes") is None else _bytes(t["unvacuumed_bytes"]),
                "-" if since is None else f"{_ago(since)} ago",
                "-" if maintained is None else f"{_ago(maintained)} ago",
                _verified(t.get("last_verify")),
                (t.get("last_error") or "")[:80],
            )
        )
    widths = [max(len(c), *(len(r[i]) for r in body)) if body else len(c) for i, c in enumerate(cols)]
    lines.append("  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True)).rstrip())
    lines.append("  ".join("-" * w for w in widths))
    lines.extend("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in body)
    return "\n".join(lines)


def _bytes(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def _ago(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    if seconds < 172800:
        return f"{seconds / 3600:.0f}h"
    return f"{seconds / 86400:.0f}d"
