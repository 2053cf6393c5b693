"""Process lifecycle: SIGTERM/SIGINT set the stop event (a second one exits at once). Nothing else."""

from __future__ import annotations

import logging
import os
import signal
import threading
from types import FrameType

__all__ = ["install_signal_handlers"]

logger = logging.getLogger(__name__)


def install_signal_handlers(stop: threading.Event) -> None:
    """First SIGTERM/SIGINT: stop gracefully (finish or abandon the open batch, confirm, exit 0)."""

    def handler(signum: int, _frame: FrameType | None) -> None:
        if stop.is_set():
            logger.warning("second %s: exiting now", signal.Signals(signum).name)
            os._exit(130)
        logger.info("%s received: stopping after the current batch", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
