"""Named crash points for fault-injection tests, armed only by the CDC_FAILPOINTS environment variable.

``CDC_FAILPOINTS="after_table_commit=3,before_confirm"`` kills the process with SIGKILL at the
third pass through ``after_table_commit`` and at the first through ``before_confirm``;
``chunk_read=2:raise`` instead raises a retryable connection error once, at the second pass (a
dropped connection, deterministically); ``resync_window=1:sleep3`` sleeps 3 s at the first pass and
every later one (a wider window for a race a test must hit every time). Unset (the only state in production) every ``hit`` is a
dictionary lookup on an empty dict.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time

__all__ = ["hit"]


def _parse(spec: str) -> dict[str, tuple[int, str]]:
    armed: dict[str, tuple[int, str]] = {}
    for part in spec.split(","):
        name, _, rest = part.strip().partition("=")
        count, _, action = rest.partition(":")
        if name:
            armed[name] = (int(count) if count else 1, action or "kill")
    return armed


logger = logging.getLogger(__name__)

_ARMED = _parse(os.environ.get("CDC_FAILPOINTS", ""))
_SEEN: dict[str, int] = {}
_LOCK = threading.Lock()


def hit(name: str) -> None:
    """Die here (SIGKILL, no cleanup), raise once, or sleep, if this point is armed and its count is reached."""
    if not _ARMED:
        return
    armed = _ARMED.get(name)
    if armed is None:
        return
    want, action = armed
    with _LOCK:
        _SEEN[name] = _SEEN.get(name, 0) + 1
        seen = _SEEN[name]
    if action.startswith("sleep"):
        if seen >= want:
            seconds = float(action.removeprefix("sleep") or 1)
            logger.warning("failpoint %s: sleeping %.1f s (injected)", name, seconds)
            time.sleep(seconds)
        return
    if action == "raise":
        if seen == want:
            from cdc_replicator.errors import SourceUnavailable

            raise SourceUnavailable(f"failpoint {name}: connection lost (injected)")
        return
    if seen >= want:
        os.kill(os.getpid(), signal.SIGKILL)
