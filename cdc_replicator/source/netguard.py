"""Half-open path defences for every source connection: libpq TCP options and a silence deadline.

Two layers, because each sees what the other cannot:

- ``network_conninfo`` adds libpq TCP keepalives, ``tcp_user_timeout`` (libpq ≥ 12) and
  ``connect_timeout`` to a connection string, never overriding a value the user wrote there. The
  kernel then ends a connection whose peer stopped acknowledging (a lost NAT entry, a dead host).
- :class:`SilenceGuard` bounds a *call* that waits for the server (a side query, a COPY read): when
  nothing at all arrived on the connection's socket for ``timeout`` seconds while a call waits on
  it, the socket is shut down, so the blocked call fails at once and the caller retries on a new
  connection. It is what catches a path where something still acknowledges every packet but no
  byte comes back (a proxy or a load balancer that lost the far side): keepalives look fine there.

The guard measures silence on the socket itself (Linux ``TCP_INFO.tcpi_last_data_recv``, else the
time since the call began) and never fires while unread bytes wait in the socket (the caller is
the slow one, not the path), so a slow link or a long Delta write is never taken for a dead path.
A query that legitimately sends nothing back for longer than the timeout (a full scan before its
first row) is ended too: such callers pass a longer timeout, or 0 for none.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import socket
import struct
import termios
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

from psycopg import pq
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from cdc_replicator.errors import SourceUnavailable

__all__ = [
    "KEEPALIVE_COUNT",
    "KEEPALIVE_IDLE_SECONDS",
    "KEEPALIVE_INTERVAL_SECONDS",
    "GUARD",
    "SilenceGuard",
    "Watch",
    "network_conninfo",
    "network_params",
    "silence_error",
]

logger = logging.getLogger(__name__)

KEEPALIVE_IDLE_SECONDS = 10
KEEPALIVE_INTERVAL_SECONDS = 5
KEEPALIVE_COUNT = 3
_TCP_INFO_LAST_DATA_RECV = 52  # offset of tcpi_last_data_recv (u32, ms) in struct tcp_info
_TCP_INFO_SIZE = 104
TIMEOUT_KEY = "source.wal_receiver_timeout_seconds"


def network_params(dsn: str, *, connect_timeout: float, silence_timeout: float = 0.0) -> dict[str, str]:
    """The libpq parameters to add to ``dsn``: only those the user did not set there.

    ``tcp_user_timeout`` (unacknowledged data is given up after it) follows ``silence_timeout``
    when one is set, else keepalives' own span; libpq older than 12 does not know it.
    """
    given = {k for k, v in conninfo_to_dict(dsn).items() if v is not None and v != ""}
    spans = KEEPALIVE_IDLE_SECONDS + KEEPALIVE_INTERVAL_SECONDS * KEEPALIVE_COUNT
    wanted = {
        "connect_timeout": str(max(1, int(connect_timeout))),
        "keepalives": "1",
        "keepalives_idle": str(KEEPALIVE_IDLE_SECONDS),
        "keepalives_interval": str(KEEPALIVE_INTERVAL_SECONDS),
        "keepalives_count": str(KEEPALIVE_COUNT),
    }
    if pq.version() >= 120000:
        wanted["tcp_user_timeout"] = str(int(1000 * (silence_timeout if silence_timeout > 0 else spans)))
    return {k: v for k, v in wanted.items() if k not in given}


def network_conninfo(dsn: str, *, connect_timeout: float, silence_timeout: float = 0.0, **extra: str) -> str:
    """``dsn`` with ``network_params`` and ``extra`` (``extra`` overrides: it is ours, not the user's)."""
    params = network_params(dsn, connect_timeout=connect_timeout, silence_timeout=silence_timeout)
    return make_conninfo(dsn, **{**params, **extra})


def silence_error(timeout: float, what: str) -> SourceUnavailable:
    """The error of a call the guard ended: names the bound and the key."""
    return SourceUnavailable(
        f"no data from the source for {timeout:.0f}s while {what}: the network path looks dead "
        f"(half-open: no reset, no answer); the connection was closed ({TIMEOUT_KEY} = {timeout:g})",
        hint=f"the daemon reconnects; if the source is merely slow to answer, raise {TIMEOUT_KEY}",
    )


def _inode(fd: int) -> str | None:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return None


@dataclass(eq=False, slots=True)
class Watch:
    """One armed call on a socket; ``fired`` once the guard shut the socket down."""

    fd: int
    timeout: float
    what: str
    armed_at: float
    inode: str | None = None
    fired: bool = False
    # a socket a library opens during the call (fd -1 until seen): sockets not in ``before``, to ``port``
    before: dict[int, str] | None = None
    port: int = 0


def _silence(fd: int, since_armed: float) -> float:
    """Seconds without a byte from the peer (never more than ``since_armed``)."""
    try:
        with socket.socket(fileno=os.dup(fd)) as s:
            if s.family in (socket.AF_INET, socket.AF_INET6) and hasattr(socket, "TCP_INFO"):
                info = s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO_SIZE)
                if len(info) >= _TCP_INFO_LAST_DATA_RECV + 4:
                    (ms,) = struct.unpack_from("I", info, _TCP_INFO_LAST_DATA_RECV)
                    return min(since_armed, float(ms) / 1000.0)
    except OSError:
        pass
    return since_armed


def _unread(fd: int) -> int:
    try:
        buf = fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0")
        return int(struct.unpack("i", buf)[0])
    except OSError:
        return 0


def _shutdown(fd: int) -> None:
    try:
        with socket.socket(fileno=os.dup(fd)) as s:
            s.shutdown(socket.SHUT_RDWR)  # the owner's blocked read returns at once (EOF)
    except OSError:
        pass


class SilenceGuard:
    """A process-wide watchdog thread over the sockets of calls in progress; cheap when idle."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._watches: set[Watch] = set()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    @contextlib.contextmanager
    def watching(self, fd: int, timeout: float, what: str) -> Iterator[Watch]:
        """Arm ``fd`` for the body: a body that hears nothing for ``timeout`` s has its socket shut down.

        ``timeout`` 0 arms nothing. The caller checks ``watch.fired`` when the body raised.
        """
        w = Watch(fd, timeout, what, time.monotonic(), _inode(fd))
        with self._armed(w, timeout > 0 and fd >= 0):
            yield w

    @contextlib.contextmanager
    def watching_new(self, before: dict[int, str], port: int, timeout: float, what: str) -> Iterator[Watch]:
        """``watching`` for the socket a library opens inside the body (see ``new_socket``), found
        while the body runs: a connect whose start-up queries hang is ended like any other call.

        Hold ``CONNECT_LOCK`` around it, so that the new socket is the body's.
        """
        w = Watch(-1, timeout, what, time.monotonic(), None, before=before, port=port)
        with self._armed(w, timeout > 0):
            yield w

    @contextlib.contextmanager
    def _armed(self, w: Watch, arm: bool) -> Iterator[None]:
        """The watchdog thread looks at ``w`` while the body runs (when ``arm``)."""
        if not arm:
            yield
            return
        with self._lock:
            self._watches.add(w)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="cdc-silence-guard", daemon=True)
                self._thread.start()
        try:
            yield
        finally:
            with self._lock:
                self._watches.discard(w)

    def _run(self) -> None:
        while True:
            with self._lock:
                watches = list(self._watches)
                if not watches:
                    self._thread = None
                    return
                now = time.monotonic()
                for w in watches:
                    if w.fired:
                        continue
                    if w.before is not None and (w.fd < 0 or _inode(w.fd) != w.inode):
                        w.fd = new_socket(w.before, w.port)  # (again: the library may reconnect)
                        w.inode = _inode(w.fd) if w.fd >= 0 else None
                        if w.fd < 0:
                            continue
                    silent = _silence(w.fd, now - w.armed_at)
                    if silent < w.timeout or _unread(w.fd) > 0:
                        continue
                    if w.inode is not None and _inode(w.fd) != w.inode:
                        continue  # not the socket it was armed on any more
                    w.fired = True
                    logger.warning(
                        "no data from the source for %.0fs while %s: closing the connection", silent, w.what
                    )
                    _shutdown(w.fd)
                step = min(0.5, max(0.05, min(w.timeout for w in watches) / 8))
            time.sleep(step)


GUARD = SilenceGuard()


# ---- sockets a library opened for us (the ADBC driver does not tell its socket) ----------------

CONNECT_LOCK = threading.Lock()
"""Held around the connects whose socket is found by ``new_sockets``: no other of ours opens meanwhile."""


def socket_inodes() -> dict[int, str]:
    """This process's socket descriptors (Linux ``/proc``; empty elsewhere)."""
    out: dict[int, str] = {}
    try:
        names = os.listdir("/proc/self/fd")
    except OSError:
        return out
    for name in names:
        fd = int(name)
        target = _inode(fd)
        if target is not None and target.startswith("socket:"):
            out[fd] = target
    return out


def new_socket(before: dict[int, str], port: int) -> int:
    """The stream socket to ``port`` (or a PostgreSQL unix socket) opened since ``before``; -1 if none."""
    for fd, target in socket_inodes().items():
        if before.get(fd) == target:
            continue
        try:
            with socket.socket(fileno=os.dup(fd)) as s:
                if s.type != socket.SOCK_STREAM:
                    continue
                peer = s.getpeername()
        except OSError:
            continue
        if (isinstance(peer, tuple) and len(peer) >= 2 and peer[1] == port) or (
            isinstance(peer, str) and ".s.PGSQL." in peer
        ):
            return fd
    return -1


def dsn_port(dsn: str) -> int:
    """The first port a connection string names (5432 when none)."""
    raw = str(conninfo_to_dict(dsn).get("port") or os.environ.get("PGPORT") or "5432")
    try:
        return int(raw.split(",")[0])
    except ValueError:
        return 5432
