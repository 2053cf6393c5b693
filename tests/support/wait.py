"""Poll a condition until it holds or a deadline passes: the only way tests wait."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

__all__ = ["wait_until"]

T = TypeVar("T")


def wait_until(predicate: Callable[[], T], *, timeout: float, interval: float = 0.1, message: str) -> T:
    """Call ``predicate`` until it returns a truthy value and return that value.

    Raises AssertionError with ``message``, the timeout and the last value returned once ``timeout``
    seconds have passed. Exceptions raised by ``predicate`` propagate at once: they are not retried.
    The predicate is always called at least once, and once more after the deadline.
    """
    deadline = time.monotonic() + timeout
    while True:
        expired = time.monotonic() >= deadline
        value = predicate()
        if value:
            return value
        if expired:
            raise AssertionError(f"{message} (not within {timeout:g}s; last value: {value!r})")
        time.sleep(max(0.0, min(interval, deadline - time.monotonic())))
