"""The demo's ``--dir``: where the lake and the state store live, claimed by one run at a time.

A marker file ``.cdc-demo`` says the demo made ``lake/`` and ``state/`` there (so only then may a
new run delete them) and is also the run lock (``flock``, released when the process ends).
"""

from __future__ import annotations

import fcntl
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from cdc_replicator.demo import DemoError

__all__ = ["DemoDir"]

_MARKER: Final = ".cdc-demo"


@dataclass(frozen=True, slots=True)
class DemoDir:
    root: Path

    @property
    def lake(self) -> Path:
        return self.root / "lake"

    @property
    def state_db(self) -> Path:
        return self.root / "state" / "cdc.db"

    @contextmanager
    def claimed(self) -> Iterator[bool]:
        """Lock the directory for this run and empty its lake and state; yields whether old ones went.

        Only lake/ and state/ are removed, and only when the marker file says the demo made them.
        """
        previous = [p for p in (self.lake, self.state_db.parent) if p.exists()]
        marker = self.root / _MARKER
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            if previous and not marker.exists():
                raise DemoError(
                    f"{self.root} already holds {' and '.join(p.name + '/' for p in previous)}, "
                    "not made by the demo",
                    hint="pass another --dir (the demo would delete them), or remove them if a demo left them",
                )
            lock = marker.open("a")
        except OSError as exc:
            raise DemoError(f"cannot use {self.root} for the demo", hint="pass another --dir") from exc
        with lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise DemoError(
                    f"another demo is running in {self.root}", hint="stop it first, or pass another --dir"
                ) from None
            try:
                for path in previous:
                    shutil.rmtree(path)
            except OSError as exc:
                raise DemoError(
                    f"cannot remove the previous run's {path}", hint=f"remove it: rm -rf {path}"
                ) from exc
            yield bool(previous)
