"""The events' compact form on the reader → caller queue: plain tuples for the frequent kinds. Pure.

A reader process hands events over in chunks through a pipe: pickling the dataclasses costs more
than decoding them, so row changes, begins and commits cross as tuples (a kind code, then the
fields, positions as integers) and the rare kinds (relations, truncates, keepalives, …) as they are.
``decode_events(encode_events(chunk)) == chunk``.
"""

from __future__ import annotations

from typing import Any

from cdc_replicator.model import Begin, Commit, Lsn, Op, RowChange, SourceEvent

__all__ = ["decode_events", "encode_events"]

_OPS: dict[str, Op] = {o.value: o for o in Op}


def encode_events(events: list[SourceEvent]) -> list[object]:
    """Events as plain tuples (row changes, begins, commits) for the pipe; the rare kinds as they are."""
    out: list[object] = []
    append = out.append
    for e in events:
        kind = type(e)
        if kind is RowChange:
            append((0, e.table, e.op.value, e.new, e.old, e.seq))  # type: ignore[union-attr]
        elif kind is Begin:
            append((1, e.xid, e.commit_lsn.value, e.commit_time))  # type: ignore[union-attr]
        elif kind is Commit:
            append((2, e.commit_lsn.value, e.end_lsn.value, e.commit_time))  # type: ignore[union-attr]
        else:
            append(e)
    return out


def decode_events(items: list[Any]) -> list[SourceEvent]:
    """The events of one chunk that ``encode_events`` made, in order."""
    out: list[SourceEvent] = []
    append = out.append
    for x in items:
        if type(x) is tuple:
            code = x[0]
            if code == 0:
                append(RowChange(x[1], _OPS[x[2]], x[3], x[4], x[5]))
            elif code == 1:
                append(Begin(x[1], Lsn(x[2]), x[3]))
            else:
                append(Commit(Lsn(x[1]), Lsn(x[2]), x[3]))
        else:
            append(x)
    return out
