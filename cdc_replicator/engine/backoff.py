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

__all__ = ["SLOT_IN_USE_POLL_SECONDS", "Backoff"]

# After a silent partition the server's old walsender keeps the slot until its own wal_sender_timeout
# (60 s by default) ends it; the slot is asked for again this often, so the stream resumes within a few
# seconds of that moment instead of after a back-off that grew to its cap meanwhile (73 s measured).
SLOT_IN_USE_POLL_SECONDS = 5.0


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

    def failed(self, now: float, *, heard: float | None = None, cap: float | None = None) -> float:
        """The attempt failed at ``now`` (it last heard from the source at ``heard``): the wait before the next.

        ``heard`` defaults to ``now`` (a failure that is seen at once, like a reset connection).
        ``cap`` lowers the cap for this failure: a wait for something that ends on its own at an
        unknown moment (a slot a stale walsender still holds) is polled, not backed off to ``cap``.
        """
        since = self._streaming_since
        last = now if heard is None else heard
        if self.reset_after > 0 and since is not None and last - since >= self.reset_after:
            self.failures = 0  # it streamed fine for a while: this is a new first failure
        self._streaming_since = None
        if self.failures == 0:
            self._failing_since = now
        self.failures += 1
        limit = self.cap if cap is None else min(self.cap, cap)
        return min(limit, self.first * 2.0 ** min(self.failures - 1, 62))

    def failing_for(self, now: float) -> float:
        """Seconds since the first failure of the current run (0 when none)."""
        return 0.0 if self._failing_since is None or self.failures == 0 else now - self._failing_since
