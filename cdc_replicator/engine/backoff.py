"""The reconnect back-off: exponential waits that start again after a healthy stream. Pure: no clock.

A failure right after a failure doubles the wait (``first``, 2×, 4×, … up to ``cap``); a failure
of an attempt that streamed, hearing from the source, for at least ``reset_after`` seconds is a
new first failure (tenacity's and Debezium's retriable restarts count attempts forever instead, so
six cuts an hour apart would each wait longer than the last). ``failing_for`` measures from the
first failure of the current run, so ``source.retry_give_up_seconds`` means "unreachable this long",
not "up this long".
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Backoff"]


@dataclass(slots=True)
class Backoff:
    """One per retry loop; the caller passes ``time.monotonic()`` values."""

    first: float = 0.5
    cap: float = 30.0
    reset_after: float = 1.0  # 0: never reset
    failures: int = 0  # failures in a row
    _failing_since: float | None = None
    _streaming_since: float | None = None

    def streaming(self, now: float) -> None:
        """The current attempt streams from ``now`` on."""
        self._streaming_since = now

    def failed(self, now: float, *, heard: float | None = None) -> float:
        """The attempt failed at ``now`` (it last heard from the source at ``heard``): the wait before the next.

        ``heard`` defaults to ``now`` (a failure that is seen at once, like a reset connection).
        """
        since = self._streaming_since
        last = now if heard is None else heard
        if self.reset_after > 0 and since is not None and last - since >= self.reset_after:
            self.failures = 0  # it streamed fine for a while: this is a new first failure
        self._streaming_since = None
        if self.failures == 0:
            self._failing_since = now
        self.failures += 1
        return min(self.cap, self.first * 2.0 ** min(self.failures - 1, 62))

    def failing_for(self, now: float) -> float:
        """Seconds since the first failure of the current run (0 when none)."""
        return 0.0 if self._failing_since is None or self.failures == 0 else now - self._failing_since
