"""Named crash points for fault-injection tests, armed only by the CDC_FAILPOINTS environment variable.

``CDC_FAILPOINTS="after_table_commit=3,before_confirm"`` kills the process with SIGKILL at the
third pass through ``after_table_commit`` and at the first through ``before_confirm``. Unset (the
only state in production) every ``hit`` is a dictionary lookup on an empty dict.
"""

from __future__ import annotations

import os
import signal

__all__ = ["hit"]


def _parse(spec: str) -> dict[str, int]:
    armed: dict[str, int] = {}
    for part in spec.split(","):
        name, _, count = part.strip().partition("=")
        if name:
            armed[name] = int(count) if count else 1
    return armed


_ARMED = _parse(os.environ.get("CDC_FAILPOINTS", ""))
_SEEN: dict[str, int] = {}


def hit(name: str) -> None:
    """Die here (SIGKILL, no cleanup) if this point is armed and its count is reached."""
    if not _ARMED:
        return
    want = _ARMED.get(name)
    if want is None:
        return
    _SEEN[name] = _SEEN.get(name, 0) + 1
    if _SEEN[name] >= want:
        os.kill(os.getpid(), signal.SIGKILL)
