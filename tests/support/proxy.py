"""A loopback TCP proxy between a daemon and PostgreSQL that a test can cut, partition, slow or heal.

``TcpProxy(host, port)`` listens on a free loopback port and forwards every connection to the server
(an asyncio loop in a background thread). What a test can do to the path, at any moment:

- ``cut()``: reset (RST) open connections, both sides, like a firewall that forgets them or a server
  host that reboots; new connections work at once.
- ``partition()``: a silent network partition. Open connections stay open but every byte, both
  ways, is dropped (no FIN, no RST: what a lost NAT or firewall state or a moved IP does), and new
  connections are accepted but never answered. ``heal()`` ends it for *new* connections; the
  connections that lived through it stay dead-silent until their owner gives up on them, as a
  connection whose NAT state is lost does.
- ``set_latency(seconds)`` / ``set_rate(bytes_per_second)``: a slow link (each chunk waits, the
  throughput is capped), ``None``/0 to lift it.

Each connection's PostgreSQL startup parameters are sniffed from its first packet (plain-text
connections only), so a test can pick which ones to cut: ``proxy.cut(lambda c: c.replication)``
cuts the walsender connections only. ``connections()`` lists the live ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["ProxiedConnection", "TcpProxy"]

_PROTOCOL_3 = 196608
_CHUNK = 65536


@dataclass(eq=False)
class ProxiedConnection:
    """One client connection through the proxy, with what its startup packet said."""

    number: int
    params: dict[str, str] = field(default_factory=dict)
    blackholed: bool = False
    bytes_up: int = 0
    bytes_down: int = 0
    _writers: list[asyncio.StreamWriter] = field(default_factory=list, repr=False)

    @property
    def replication(self) -> bool:
        """A walsender connection (``replication=database`` or ``true``)."""
        return self.params.get("replication", "false").lower() not in ("false", "0", "off", "no")

    @property
    def application_name(self) -> str:
        return self.params.get("application_name", "")


def _startup_params(packet: bytes) -> dict[str, str]:
    """The key/value pairs of a protocol-3 StartupMessage; {} for anything else (SSL, cancel)."""
    if len(packet) < 8:
        return {}
    length, protocol = struct.unpack("!ii", packet[:8])
    if protocol != _PROTOCOL_3 or length > len(packet):
        return {}
    parts = packet[8 : length - 1].split(b"\x00")
    pairs = dict(zip(parts[0::2], parts[1::2], strict=False))
    return {k.decode(errors="replace"): v.decode(errors="replace") for k, v in pairs.items() if k}


class TcpProxy:
    """Forward loopback connections to ``host:port``; faults on demand. Use as a context manager."""

    def __init__(self, host: str, port: int) -> None:
        self._target = (host, port)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="tcp-proxy", daemon=True)
        self._server: asyncio.Server | None = None
        self._lock = threading.Lock()
        self._live: list[ProxiedConnection] = []
        self._count = 0
        self._partitioned = False
        self._latency = 0.0
        self._rate = 0
        self.port = 0

    # -- life cycle -------------------------------------------------------------------------

    def start(self) -> TcpProxy:
        self._thread.start()
        self._server = self._call(asyncio.start_server(self._serve, "127.0.0.1", 0))
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def close(self) -> None:
        if not self._thread.is_alive():
            return
        self.cut()
        server = self._server
        if server is not None:
            server.close()
            self._call(server.wait_closed())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    def __enter__(self) -> TcpProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- faults -----------------------------------------------------------------------------

    def connections(self) -> list[ProxiedConnection]:
        with self._lock:
            return list(self._live)

    def cut(self, which: Callable[[ProxiedConnection], bool] | None = None) -> int:
        """Reset the open connections ``which`` selects (all by default); returns how many."""
        victims = [c for c in self.connections() if which is None or which(c)]
        for conn in victims:
            self._loop.call_soon_threadsafe(self._reset, conn)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and any(c in self._live for c in victims):
            time.sleep(0.01)
        return len(victims)

    def partition(self) -> None:
        """Drop every byte of every open and new connection, closing none of them."""
        with self._lock:
            self._partitioned = True
            for conn in self._live:
                conn.blackholed = True

    def heal(self) -> None:
        """New connections are forwarded again; those that lived through the partition stay silent."""
        with self._lock:
            self._partitioned = False

    def set_latency(self, seconds: float | None) -> None:
        """Delay every chunk by ``seconds`` in each direction (None or 0: no delay)."""
        self._latency = max(0.0, seconds or 0.0)

    def set_rate(self, bytes_per_second: int | None) -> None:
        """Cap each direction of each connection at ``bytes_per_second`` (None or 0: no cap)."""
        self._rate = max(0, bytes_per_second or 0)

    # -- the loop's side --------------------------------------------------------------------

    def _call(self, coro: object) -> object:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=10)  # type: ignore[arg-type]

    def _reset(self, conn: ProxiedConnection) -> None:
        for writer in conn._writers:
            sock = writer.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
        self._forget(conn)

    def _forget(self, conn: ProxiedConnection) -> None:
        with self._lock:
            if conn in self._live:
                self._live.remove(conn)

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        with self._lock:
            self._count += 1
            conn = ProxiedConnection(self._count, blackholed=self._partitioned)
            self._live.append(conn)
        conn._writers.append(client_w)
        if conn.blackholed:  # accepted, never answered: a connect attempt into a partition
            await self._drain_forever(client_r)
            client_w.transport.abort()
            self._forget(conn)
            return
        try:
            server_r, server_w = await asyncio.open_connection(*self._target)
        except OSError:
            client_w.transport.abort()
            self._forget(conn)
            return
        conn._writers.append(server_w)
        up = asyncio.ensure_future(self._pump(conn, client_r, server_w, upstream=True))
        down = asyncio.ensure_future(self._pump(conn, server_r, client_w, upstream=False))
        await asyncio.wait([up, down], return_when=asyncio.FIRST_COMPLETED)
        if conn.blackholed:  # a partition never closes anything: keep the other side silent too
            await asyncio.wait([up, down])
        for task in (up, down):
            task.cancel()
        for writer in conn._writers:
            writer.transport.abort()
        self._forget(conn)

    @staticmethod
    async def _drain_forever(reader: asyncio.StreamReader) -> None:
        with contextlib.suppress(OSError, ConnectionError):
            while await reader.read(_CHUNK):
                pass

    async def _pump(
        self,
        conn: ProxiedConnection,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        upstream: bool,
    ) -> None:
        sniffing = 3 if upstream else 0  # SSLRequest / GSSENCRequest may come before the StartupMessage
        try:
            while True:
                data = await reader.read(_CHUNK)
                if not data:
                    if not conn.blackholed:
                        with contextlib.suppress(OSError):
                            writer.write_eof()
                    return
                if sniffing:
                    sniffing -= 1
                    conn.params = _startup_params(data)
                    if conn.params:
                        sniffing = 0
                if conn.blackholed:
                    continue
                if self._latency:
                    await asyncio.sleep(self._latency)
                if self._rate:
                    await asyncio.sleep(len(data) / self._rate)
                if conn.blackholed:
                    continue
                if upstream:
                    conn.bytes_up += len(data)
                else:
                    conn.bytes_down += len(data)
                writer.write(data)
                await writer.drain()
        except (OSError, ConnectionError):
            return
