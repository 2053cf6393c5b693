"""A stream change passing an open DBLog chunk window: its keys leave the chunk, its TOAST gaps are filled. Pure.

Between a chunk's low and high watermark (``engine.resync``; ``verify --repair`` rewrites ranges
the same way) a change the stream carries is as new as the chunk's row of that key or newer, so
the chunk's row is dropped and the stream's change wins — for every column the change carries.
A column the server sent as "unchanged TOAST" carries nothing: the merge would keep the value of
the Delta row, and a chunk exists precisely because Delta's rows may be missing or wrong. So an
unchanged value is taken from the chunk's row of the change's key, or, for a move the chunk was
read before, of the old key (read after a move, the chunk has the row at its new key; read before,
the new key has no row in it: a row there before the move was deleted inside the window first).

Why that value is the right one: the chunk was read at some instant S inside the window. The
change is the first of its key inside the window (a later one finds the chunk's row gone and is
filled, as before the window, by the batch or by Delta, which then holds the row). If S came
before the change, nothing touched the row between S and the change, so the chunk holds exactly
the value the change left unchanged. If S came after it, the chunk holds the value after every
change up to S; those that changed the TOAST column carried its value and are applied after
this one, so the row ends at the same value — only between two batches can it show, early, the
value of a change the stream applies next.
"""

from __future__ import annotations

from collections.abc import MutableMapping, Sequence

from cdc_replicator.model import UNCHANGED, RowChange, Value

__all__ = ["pass_window"]

Key = tuple[Value, ...]
Row = tuple[Value, ...]


def pass_window(rows: MutableMapping[Key, Row], change: RowChange, key_positions: Sequence[int]) -> RowChange:
    """``change`` as the stream must apply it, with its keys removed from the chunk's ``rows``."""
    new, old = change.new, change.old
    new_key = None if new is None else tuple(new[i] for i in key_positions)
    old_key = None if old is None else tuple(old[i] for i in key_positions)
    source: Row | None = None
    if new is not None and UNCHANGED in new:
        for k in (new_key, old_key):
            if k is not None and (row := rows.get(k)) is not None:
                source = row
                break
    for k in (new_key, old_key):
        if k is not None:
            rows.pop(k, None)
    if source is None or new is None:
        return change
    filled = tuple(source[i] if v is UNCHANGED else v for i, v in enumerate(new))
    return RowChange(change.table, change.op, filled, old, change.seq)
