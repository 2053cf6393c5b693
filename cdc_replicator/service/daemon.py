"""Process lifecycle: SIGTERM/SIGINT set the stop event (a second one exits at once); systemd notify."""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
from collections.abc import Callable, Mapping
from types import FrameType

__all__ = ["SystemdNotifier", "install_signal_handlers"]

logger = logging.getLogger(__name__)


def install_signal_handlers(stop: threading.Event, *, grace_seconds: float = 0.0) -> None:
    """First SIGTERM/SIGINT: stop gracefully (finish or abandon the open batch, confirm, exit 0).

    ``grace_seconds`` > 0 bounds the graceful stop: past it the process exits at once (code 130),
    which is safe (every commit carries its position) but repeats the unconfirmed work on restart.
    """

    def force_exit() -> None:
        logger.error("graceful stop took longer than %.0fs: exiting now", grace_seconds)
        logging.shutdown()
        os._exit(130)

    def handler(signum: int, _frame: FrameType | None) -> None:
        if stop.is_set():
            logger.warning("second %s: exiting now", signal.Signals(signum).name)
            os._exit(130)
        logger.info("%s received: stopping after the current batch", signal.Signals(signum).name)
        stop.set()
        if grace_seconds > 0:
            timer = threading.Timer(grace_seconds, force_exit)
            timer.daemon = True
            timer.start()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


class SystemdNotifier:
    """sd_notify(3) without libsystemd: datagrams to ``$NOTIFY_SOCKET`` (a path, or ``@abstract``).

    Without ``NOTIFY_SOCKET`` (not started by systemd with ``Type=notify``) every call is a no-op.
    ``start_watchdog(alive)`` sends ``WATCHDOG=1`` every half ``$WATCHDOG_USEC`` while ``alive()``
    is true; a wedged main loop stops the pings, so systemd restarts the service.
    """

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        addr = env.get("NOTIFY_SOCKET", "")
        self._address: str | None = None
        if addr.startswith("@"):
            self._address = "\0" + addr[1:]
        elif addr.startswith("/"):
            self._address = addr
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        self._watchdog_seconds: float | None = None
        if usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            self._watchdog_seconds = int(usec) / 1e6
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def enabled(self) -> bool:
        return self._address is not None

    @property
    def watchdog_seconds(self) -> float | None:
        return self._watchdog_seconds

    def notify(self, *lines: str) -> bool:
        """Send ``KEY=value`` lines as one datagram; False when not under systemd or it failed."""
        if self._address is None:
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
                s.connect(self._address)
                s.sendall("\n".join(lines).encode())
        except OSError as exc:
            logger.debug("sd_notify failed: %s", exc)
            return False
        return True

    def ready(self, status: str) -> None:
        self.notify("READY=1", f"STATUS={status}", f"MAINPID={os.getpid()}")

    def status(self, status: str) -> None:
        self.notify(f"STATUS={status}")

    def stopping(self) -> None:
        self.notify("STOPPING=1", "STATUS=stopping")

    def start_watchdog(self, alive: Callable[[], bool]) -> None:
        if self._address is None or self._watchdog_seconds is None or self._thread is not None:
            return
        interval = self._watchdog_seconds / 2

        def ping() -> None:
            while not self._stop.wait(interval):
                if alive():
                    self.notify("WATCHDOG=1")
                else:
                    logger.warning("main loop made no progress: not pinging the systemd watchdog")

        self._thread = threading.Thread(target=ping, name="cdc-watchdog", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
            self._thread = None
