"""A scripted ``Source`` and the parts around it, so the engine's loops run in a unit test in milliseconds.

``ScriptedSource(script, start=...)`` plays its events the way a replication slot replays from
``start``: every transaction that ends after ``start``, whole, in order (the ones at or before it
are skipped, as the server skips them). Two script items are not events:

- ``Idle(seconds)``: the source is quiet; the fake clock moves on and the loop sees ``None``;
- ``Call(fn)``: runs ``fn`` at that point of the stream (e.g. release a merge held in flight).

When the script is over it sets ``stop`` and stays quiet, so the loop drains and returns. Every
``confirm`` is recorded; one from a thread other than the one reading ``events`` is an error, and
``on_confirm`` (when given) checks each one when it arrives. ``relations``: the layouts a session
announces after its first Begin (pgoutput sends a table's Relation before its first change).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from cdc_replicator.model import Begin, Commit, Lsn, RelationChanged, SourceEvent, TableSchema
from tests.support.events import FakeClock

__all__ = ["Call", "Idle", "Item", "ScriptedSource"]


@dataclass(frozen=True, slots=True)
class Idle:
    seconds: float = 10.0


@dataclass(frozen=True, slots=True)
class Call:
    fn: Callable[[], None]


Item = SourceEvent | Idle | Call


class ScriptedSource:
    """A ``Source`` that plays ``script`` from ``start``."""

    def __init__(
        self,
        script: Sequence[Item],
        *,
        stop: threading.Event,
        clock: FakeClock,
        start: Lsn = Lsn.ZERO,
        relations: Sequence[TableSchema] = (),
        on_confirm: Callable[[Lsn], None] | None = None,
    ) -> None:
        self._items = _replayed(script, start)
        self._relations = relations
        self._stop = stop
        self._clock = clock
        self._on_confirm = on_confirm
        self._reader: int | None = None
        self.confirms: list[Lsn] = []
        self.opened = self.closed = False
        self.played = 0  # events yielded so far

    def open(self) -> None:
        self.opened = True

    def events(self, idle_timeout: float) -> Iterator[SourceEvent | None]:
        self._reader = threading.get_ident()
        for item in self._items:
            if isinstance(item, Idle):
                self._clock.advance(item.seconds)
                yield None
            elif isinstance(item, Call):
                item.fn()
            else:
                self.played += 1
                yield item
                if isinstance(item, Begin) and self._relations:
                    # a session sends each table's layout before its first change, as pgoutput does
                    for i, s in enumerate(self._relations):
                        yield RelationChanged(1000 + i, s)
                    self._relations = ()
        self._stop.set()
        for _ in range(1000):
            yield None
        raise AssertionError("the loop did not stop after the script ended")

    def confirm(self, upto: Lsn) -> None:
        assert threading.get_ident() == self._reader, "confirm() from a thread that does not own the source"
        assert not self.confirms or upto > self.confirms[-1], f"confirm went back or repeated: {upto}"
        if self._on_confirm is not None:
            self._on_confirm(upto)
        self.confirms.append(upto)

    def close(self) -> None:
        self.closed = True

    @property
    def confirmed(self) -> Lsn | None:
        return self.confirms[-1] if self.confirms else None


def _replayed(script: Sequence[Item], start: Lsn) -> list[Item]:
    """The script as a slot confirmed up to ``start`` sends it: transactions ending after it."""
    out: list[Item] = []
    txn: list[Item] | None = None
    for item in script:
        if isinstance(item, Begin):
            txn = [item]
        elif txn is not None:
            txn.append(item)
            if isinstance(item, Commit):
                if item.end_lsn > start:
                    out += txn
                txn = None
        else:
            out.append(item)
    assert txn is None, "the script ends inside a transaction"
    return out
