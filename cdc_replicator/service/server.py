"""``/healthz``, ``/readyz`` and ``/metrics`` on one port, served by a small thread.

The handlers only read the ``HealthState`` and render the ``Metrics``: a request never waits on the
pipeline, and nothing they return can hold a secret (no DSN, no storage option ever reaches them).
"""

from __future__ import annotations

import errno
import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from cdc_replicator.config import ServerConfig
from cdc_replicator.errors import ConfigError
from cdc_replicator.service.health import HealthState
from cdc_replicator.service.metrics import CONTENT_TYPE_LATEST, Metrics

__all__ = ["HealthServer"]

logger = logging.getLogger(__name__)


class HealthServer:
    """Start with ``start()`` (binds at once, so a busy port fails the start), stop with ``stop()``."""

    def __init__(self, config: ServerConfig, health: HealthState, metrics: Metrics) -> None:
        self._config = config
        self._health = health
        self._metrics = metrics
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> tuple[str, int]:
        """The bound host and port (the real port when ``listen`` asked for port 0)."""
        if self._httpd is None:
            raise RuntimeError("the server is not started")
        host, port = self._httpd.server_address[:2]
        return str(host), int(port)

    def start(self) -> None:
        handler = _handler(self._health, self._metrics)
        host, port = self._config.host, self._config.port
        server_cls = _V6Server if ":" in host else ThreadingHTTPServer
        try:
            self._httpd = server_cls((host, port), handler)
        except OSError as exc:
            why = "the address is in use" if exc.errno == errno.EADDRINUSE else exc.strerror or str(exc)
            raise ConfigError(
                f"server.listen {self._config.listen}: cannot listen there: {why}",
                hint="set server.listen to a free host:port (port 0 picks one), or server.enabled = false",
            ) from exc
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.2}, name="cdc-http", daemon=True
        )
        self._thread.start()
        bound_host, bound_port = self.address
        logger.info(
            "http endpoint listening address=%s:%d paths=/healthz,/readyz,/metrics", bound_host, bound_port
        )

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None


class _V6Server(ThreadingHTTPServer):
    import socket as _socket

    address_family = _socket.AF_INET6


def _handler(health: HealthState, metrics: Metrics) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "cdc-replicator"
        sys_version = ""

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/healthz":
                body = health.liveness()
                self._json(200 if body["alive"] else 503, body)
            elif path == "/readyz":
                r = health.readiness()
                self._json(200 if r.ready else 503, r.body)
            elif path == "/metrics":
                self._send(200, metrics.render(), CONTENT_TYPE_LATEST)
            elif path == "/":
                self._json(200, {"endpoints": ["/healthz", "/readyz", "/metrics"]})
            else:
                self._json(404, {"error": f"no such path: {path}"})

        def do_HEAD(self) -> None:
            self.do_GET()

        def _json(self, code: int, body: dict[str, Any]) -> None:
            self._send(code, (json.dumps(body, sort_keys=True) + "\n").encode(), "application/json")

        def _send(self, code: int, data: bytes, content_type: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            logger.debug("http %s", format % args)

    return Handler
