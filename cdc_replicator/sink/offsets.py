"""Positions in Delta commits: the transaction identifiers and commit metadata that hold a table's position.

Every commit the daemon writes to a table carries three Delta transaction identifiers (``txn``
actions), so the position is in the same commit as the data:

- ``cdc-replicator/<slot>/<table>``: a logical table's end LSN of the last fully applied source
  transaction, or a polled table's commit sequence number (``WatermarkPosition.seq``); 0 = no
  position (a load in progress);
- ``…#partial-lsn`` / ``…#partial-seq``: the head of a large transaction applied so far (0 = none).

A polled table's watermark also travels as JSON in the commit metadata (``cdc.watermark``). Delta
keeps transaction identifiers across checkpoints; the metadata is read from the recent history.
"""

from __future__ import annotations

from collections.abc import Mapping

from deltalake import CommitProperties, DeltaTable, Transaction

from cdc_replicator.model import Lsn, PartialTxn, Position, TablePosition, WatermarkPosition

__all__ = ["WATERMARK_KEY", "app_id", "commit_properties", "read_position", "read_sequence", "read_watermark"]

WATERMARK_KEY = "cdc.watermark"
_HISTORY_DEPTH = 200  # commits searched for the newest watermark


def app_id(slot: str, table: object) -> str:
    return f"cdc-replicator/{slot}/{table}"


def commit_properties(app: str, position: Position, extra: Mapping[str, str]) -> CommitProperties:
    """The commit's transaction identifiers and metadata for ``position`` (plus ``extra`` metadata)."""
    if isinstance(position, WatermarkPosition):
        version, partial = position.seq, None
        meta = {WATERMARK_KEY: position.to_json(), **extra}
    else:
        version, partial = position.lsn.value, position.partial
        meta = {"cdc.lsn": str(position.lsn), **extra}
        if partial is not None:
            meta["cdc.partial"] = f"{partial.commit_lsn}:{partial.seq}"
    txns = [
        Transaction(app, version),
        Transaction(f"{app}#partial-lsn", partial.commit_lsn.value if partial else 0),
        Transaction(f"{app}#partial-seq", partial.seq if partial else 0),
    ]
    return CommitProperties(app_transactions=txns, custom_metadata=meta)


def read_position(dt: DeltaTable, app: str) -> TablePosition | None:
    """The logical position the table's log holds; None when it has none."""
    lsn = dt.transaction_version(app)
    if not lsn:
        return None
    plsn = dt.transaction_version(f"{app}#partial-lsn") or 0
    pseq = dt.transaction_version(f"{app}#partial-seq") or 0
    return TablePosition(Lsn(lsn), PartialTxn(Lsn(plsn), pseq) if plsn else None)


def read_watermark(dt: DeltaTable, app: str) -> WatermarkPosition | None:
    """The watermark in the newest commit that carries one (its ``seq`` never below the log's txn);
    None when no recent commit carries one (e.g. many maintenance commits since)."""
    text = next(
        (v for entry in dt.history(_HISTORY_DEPTH) if isinstance(v := entry.get(WATERMARK_KEY), str)), None
    )
    if text is None:
        return None
    wm = WatermarkPosition.from_json(text)
    held = read_sequence(dt, app)
    return wm if wm.seq >= held else WatermarkPosition(wm.read, wm.pending, held)


def read_sequence(dt: DeltaTable, app: str) -> int:
    """A polled table's last commit sequence number, from the log's txn (0: none): survives checkpoints."""
    return dt.transaction_version(app) or 0
