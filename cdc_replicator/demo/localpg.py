"""A throwaway local PostgreSQL server: initdb, start, stop and remove. Shared by the demo and the tests.

The demo (``cdc-replicator demo``), the test suite's session clusters (``tests/conftest.py``) and the
benchmarks all start their servers with this module; ``tests/support/cluster.py`` adds what only
tests need (crash, restart, standbys) on top of ``LocalPostgres``. Keep it to that shared core.

What a ``LocalPostgres`` guarantees:

- one fresh temp directory (``base_dir``) holds everything: ``data/`` (the cluster), ``sock/`` (the
  unix socket; a short temp dir instead when the path would not fit a socket address) and
  ``postgres.log``;
- it listens on 127.0.0.1 on a free port (another one if it was taken before the server bound it)
  and trusts every local connection, replication included: ``dsn()`` needs no password;
- its settings (``data/localpg.conf``, included from postgresql.conf) are ``wal_level = logical``,
  ``max_replication_slots = 20``, ``max_wal_senders = 20``, ``fsync = off`` only with ``fast=True``,
  then the caller's settings;
- server programs come from ``pgbin.find_binaries`` (Debian packages or the pgserver wheel) and,
  when this process is root, run as the ``postgres`` system user (see ``pgbin``);
- ``cleanup()`` (and leaving the ``with`` block) stops the server without waiting for clients and
  removes every file it created; a process-exit hook does the same for clusters left running.

Linux only: whether the server is up is read from ``/proc``.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Literal, Self
from urllib.parse import quote

import psycopg
from psycopg import sql

from cdc_replicator.demo.pgbin import SERVER_USER, PgBinaries, ServerOwner, find_binaries, server_owner
from cdc_replicator.errors import SourceError

__all__ = ["LocalPostgres", "PgBinaries", "ShutdownMode", "find_binaries", "free_port"]

logger = logging.getLogger(__name__)

ShutdownMode = Literal["smart", "fast", "immediate"]

HOST = "127.0.0.1"
_CONF_INCLUDE = "localpg.conf"
# Settings LocalPostgres owns: it picks the port and the socket directory itself.
_RESERVED_SETTINGS = frozenset({"port", "unix_socket_directories", "listen_addresses"})
_SETTING_NAME = re.compile(r"^[a-z_][a-z0-9_.]*$")
# A unix socket path must fit sockaddr_un.sun_path (108 bytes) with "/.s.PGSQL.65535" appended.
_MAX_SOCKET_DIR = 90
_LOG_TAIL_LINES = 20
_PORT_ATTEMPTS = 3


def _permission_hint(owner: ServerOwner | None) -> str:
    if owner is None:
        return "check that this user can write the base directory"
    return (
        f"as root the server runs as {SERVER_USER!r}, which must be able to reach the base directory "
        "through every parent (a 0700 parent such as /root or /tmp/pytest-of-root is not); "
        "point TMPDIR at a directory it can reach"
    )


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def _conf_value(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


def _server_env() -> dict[str, str]:
    # Drop PGDATA, PGPORT, PGHOST, ... so the caller's environment cannot redirect the tools.
    return {key: value for key, value in os.environ.items() if not key.startswith("PG")}


def _tail(text: str, lines: int = _LOG_TAIL_LINES) -> str:
    return "\n".join(text.rstrip("\n").splitlines()[-lines:])


class LocalPostgres:
    """A throwaway PostgreSQL cluster: initdb, start, stop and remove (the module docstring says how).

    Use it as a context manager: ``__enter__`` starts it unless already started (and removes what
    it made if the start fails), ``__exit__`` stops it and removes what it created. A process-exit
    hook stops clusters left running. Not thread-safe: drive one instance from one thread.

    For subclasses (the tests' ``tests/support/cluster.py``): ``_create_datadir()`` fills the empty
    data directory (initdb here; a standby clones its primary instead); ``_run(argv)`` runs a server
    program as the server's OS user; ``_start_server()`` starts the existing data directory;
    ``_postmaster_pid()`` finds the live postmaster; ``_mark_stopped()`` records that it is down.
    """

    def __init__(
        self,
        binaries: PgBinaries,
        *,
        settings: Mapping[str, str] | None = None,
        fast: bool = False,
        timeout: float = 60.0,
    ) -> None:
        """Describe a cluster; nothing touches the disk until ``start()``.

        ``fast`` turns fsync off (and skips initdb's sync): for tests, never for data you keep.
        ``settings`` are extra postgresql.conf entries; they override the defaults listed in
        the module docstring, except the listen/port/socket settings, which this class owns.
        ``timeout`` bounds each server start and stop, in seconds.
        """
        for name in settings or {}:
            if not _SETTING_NAME.match(name):
                raise ValueError(f"not a postgresql.conf setting name: {name!r}")
            if name in _RESERVED_SETTINGS:
                raise ValueError(f"setting {name!r} is managed by LocalPostgres")
        self._binaries = binaries
        self._port = free_port()
        self._settings = dict(settings or {})
        self._fast = fast
        self._timeout = timeout
        self._owner = server_owner()
        self._base: Path | None = None
        self._socket_dir: Path | None = None
        self._created: list[Path] = []
        self._running = False

    def __repr__(self) -> str:
        state = "running" if self._running else "stopped"
        return (
            f"<LocalPostgres pg{self._binaries.version} {self.host}:{self._port} {state} base={self._base}>"
        )

    # -- properties ---------------------------------------------------------------------------

    @property
    def binaries(self) -> PgBinaries:
        return self._binaries

    @property
    def version(self) -> int:
        return self._binaries.version

    @property
    def fast(self) -> bool:
        return self._fast

    @property
    def timeout(self) -> float:
        """Seconds each server start and stop may take."""
        return self._timeout

    @property
    def host(self) -> str:
        return HOST

    @property
    def port(self) -> int:
        return self._port

    @property
    def running(self) -> bool:
        """True between a successful start and the next stop (as far as this object knows)."""
        return self._running

    @property
    def base_dir(self) -> Path:
        return self._layout()

    @property
    def datadir(self) -> Path:
        return self._layout() / "data"

    @property
    def log_path(self) -> Path:
        return self._layout() / "postgres.log"

    @property
    def socket_dir(self) -> Path:
        self._layout()
        if self._socket_dir is None:
            raise RuntimeError("the cluster's directories are not set up yet: call start()")
        return self._socket_dir

    def dsn(self, dbname: str = "postgres", user: str = "postgres") -> str:
        """A ``postgresql://`` URL for ``dbname`` over TCP on 127.0.0.1 (trust auth, no password)."""
        return f"postgresql://{quote(user, safe='')}@{HOST}:{self._port}/{quote(dbname, safe='')}"

    # -- lifecycle ----------------------------------------------------------------------------

    def __enter__(self) -> Self:
        if self._base is None:
            try:
                self.start()
            except BaseException:
                self.cleanup()
                raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.cleanup()

    def start(self) -> Self:
        """Create the cluster (initdb + configuration) and start it; returns self.

        Raises SourceError, with the server log's last lines, when initdb or the start fails.
        """
        if self._base is not None:
            raise RuntimeError(f"{self!r} was already started; a LocalPostgres starts once")
        began = time.monotonic()
        self._prepare_dirs()
        self._create_datadir()
        self._write_config()
        self._start_server()
        logger.info(
            "local postgres started version=%d port=%d seconds=%.2f datadir=%s",
            self.version,
            self._port,
            time.monotonic() - began,
            self.datadir,
        )
        return self

    def stop(self, mode: ShutdownMode = "fast") -> None:
        """Shut the server down with ``pg_ctl stop -m mode`` and wait; a no-op when not running."""
        if not self._running:
            return
        result = self._run(
            [self._binaries.tool("pg_ctl"), "stop", "-D", str(self.datadir), "-m", mode, "-w", "-s"]
            + ["-t", str(int(self._timeout))],
            timeout=self._timeout + 30,
        )
        if result.returncode != 0 and self._server_alive():
            raise SourceError(
                f"pg_ctl stop -m {mode} failed for {self.datadir}: {result.stderr.strip()}",
                hint=f"see {self.log_path}",
            )
        self._mark_stopped()

    def cleanup(self) -> None:
        """Stop the server if running and remove every directory and file this object created.

        The stop is ``immediate``: the data is about to go, and a fast shutdown would wait for every
        connected replication client to confirm the WAL sent to it (forever, if a client is stuck).
        """
        try:
            if self._running or self._server_alive():  # also a server whose start timed out
                self._running = True
                try:
                    self.stop("immediate")
                except SourceError:
                    self._kill_postmaster()
                    raise
        finally:
            for path in reversed(self._created):
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path)
                else:
                    path.unlink(missing_ok=True)
            self._created.clear()
            _LIVE.discard(self)

    def create_database(self, name: str) -> str:
        """Create database ``name`` and return its DSN."""
        try:
            with psycopg.connect(self.dsn(), autocommit=True) as conn:
                conn.execute(sql.SQL("create database {}").format(sql.Identifier(name)))
        except psycopg.Error as exc:
            raise SourceError(
                f"create database {name!r} on {self.host}:{self._port} failed",
                hint=f"is the server running? see {self.log_path}",
            ) from exc
        return self.dsn(name)

    # -- internals ----------------------------------------------------------------------------

    def _layout(self) -> Path:
        if self._base is None:
            raise RuntimeError("the cluster has not been started yet: call start()")
        return self._base

    def _prepare_dirs(self) -> None:
        """A fresh temp base directory with ``data/``, ``postgres.log`` and ``sock/``, owned by the server's user."""
        base = Path(tempfile.mkdtemp(prefix="cdc-replicator-pg-"))
        self._created.append(base)
        self._base = base
        _LIVE.add(self)
        self._chown(base)
        self.datadir.mkdir(mode=0o700)
        self._chown(self.datadir)
        self.log_path.touch(mode=0o600)
        self._chown(self.log_path)
        socket_dir = base / "sock"
        if len(str(socket_dir)) > _MAX_SOCKET_DIR:  # a long TMPDIR
            socket_dir = Path(tempfile.mkdtemp(prefix="cdcpg-"))
            self._created.append(socket_dir)
        else:
            socket_dir.mkdir(mode=0o700)
        self._chown(socket_dir)
        self._socket_dir = socket_dir

    def _chown(self, path: Path) -> None:
        if self._owner is not None:
            os.chown(path, self._owner.uid, self._owner.gid)

    def _run(self, argv: list[str], *, timeout: float) -> subprocess.CompletedProcess[str]:
        owner = self._owner
        try:
            return subprocess.run(
                argv,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
                cwd=self._base,
                env=_server_env(),
                user=owner.uid if owner is not None else None,
                group=owner.gid if owner is not None else None,
                extra_groups=[] if owner is not None else None,
            )
        except subprocess.TimeoutExpired as exc:
            raise SourceError(
                f"{Path(argv[0]).name} did not finish within {timeout:.0f}s",
                hint=f"see {self.log_path}",
                retryable=True,
            ) from exc
        except OSError as exc:
            raise SourceError(f"cannot run {argv[0]}", hint="check the PostgreSQL installation") from exc

    def _create_datadir(self) -> None:
        """Fill the new, empty data directory: ``initdb`` (trust auth, UTF8, no locale)."""
        argv = [self._binaries.tool("initdb"), "-D", str(self.datadir), "-U", "postgres", "--auth=trust"]
        argv += ["-E", "UTF8", "--no-locale", "--no-instructions"]
        if self._fast:
            argv.append("--no-sync")
        result = self._run(argv, timeout=300)
        if result.returncode != 0:
            raise SourceError(
                f"initdb for PostgreSQL {self.version} in {self.datadir} failed (exit {result.returncode}):\n"
                + _tail(result.stdout + result.stderr),
                hint=_permission_hint(self._owner),
            )

    def _config(self) -> dict[str, str]:
        conf = {
            "listen_addresses": HOST,
            "port": str(self._port),
            "unix_socket_directories": str(self.socket_dir),
            "wal_level": "logical",
            "max_replication_slots": "20",
            "max_wal_senders": "20",
        }
        if self._fast:
            conf["fsync"] = "off"
        conf.update(self._settings)
        return conf

    def _write_config(self) -> None:
        """(Re)write localpg.conf, include it from postgresql.conf once, and write pg_hba.conf."""
        lines = ["# written by cdc_replicator.demo.localpg; rewritten on every start"]
        lines += [f"{name} = {_conf_value(value)}" for name, value in self._config().items()]
        self._write_owned(self.datadir / _CONF_INCLUDE, "\n".join(lines) + "\n")
        main_conf = self.datadir / "postgresql.conf"
        include = f"include '{_CONF_INCLUDE}'"
        text = main_conf.read_text()
        if include not in text.splitlines():
            self._write_owned(main_conf, text.rstrip("\n") + f"\n\n{include}\n")
        hba = [
            "# TYPE  DATABASE     USER  ADDRESS        METHOD",
            "local   all          all                  trust",
            "local   replication  all                  trust",
            f"host    all          all   {HOST}/32   trust",
            f"host    replication  all   {HOST}/32   trust",
        ]
        self._write_owned(self.datadir / "pg_hba.conf", "\n".join(hba) + "\n")

    def _write_owned(self, path: Path, text: str) -> None:
        path.write_text(text)
        self._chown(path)

    def _start_server(self, *, same_port: bool = False) -> None:
        """``pg_ctl start``; a port taken meanwhile is swapped for a free one unless ``same_port``."""
        for attempt in range(1, _PORT_ATTEMPTS + 1):
            offset = self._log_size()
            result = self._run(
                [self._binaries.tool("pg_ctl"), "start", "-D", str(self.datadir), "-w", "-s"]
                + ["-l", str(self.log_path), "-t", str(int(self._timeout))],
                timeout=self._timeout + 30,
            )
            if result.returncode == 0:
                self._running = True
                _LIVE.add(self)
                return
            port_taken = "could not bind" in self._log_since(offset)
            if port_taken and attempt < _PORT_ATTEMPTS and not same_port:
                logger.info("port taken, retrying port=%d", self._port)
                self._port = free_port()
                self._write_config()
                continue
            self._running = self._server_alive()  # pg_ctl gave up waiting, the server may be up
            raise self._start_failure("start", result, offset)

    def _start_failure(
        self, action: str, result: subprocess.CompletedProcess[str], offset: int
    ) -> SourceError:
        log = self._log_since(offset)
        return SourceError(
            f"PostgreSQL {self.version} in {self.datadir} did not {action} (pg_ctl exit {result.returncode}: "
            f"{result.stderr.strip() or result.stdout.strip()}); last lines of {self.log_path}:\n{_tail(log)}",
            hint="a port in use, a stale postmaster.pid or a bad setting are the usual causes",
        )

    def _log_size(self) -> int:
        try:
            return self.log_path.stat().st_size
        except FileNotFoundError:
            return 0

    def _log_since(self, offset: int) -> str:
        try:
            with self.log_path.open("rb") as log:
                log.seek(offset)
                return log.read().decode("utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def _postmaster_pid(self) -> int | None:
        """The pid of this cluster's live postmaster, or None.

        postmaster.pid outlives a killed server and its pid may be reused, so the pid only counts
        while that process's command line still names our data directory.
        """
        if self._base is None:
            return None
        try:
            first = (self.datadir / "postmaster.pid").read_text().split("\n", 1)[0].strip()
            if not first.isdigit():
                return None
            argv = Path(f"/proc/{first}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return None
        return int(first) if os.fsencode(self.datadir) in argv else None

    def _server_alive(self) -> bool:
        # a zombie's command line is empty, so a dead postmaster is never "ours"
        return self._postmaster_pid() is not None

    def _kill_postmaster(self) -> None:
        """SIGKILL the server, cleanup's last resort, and wait (bounded) until the postmaster is gone.

        pg_ctl starts the postmaster in a session of its own, so its backends share its process
        group: one ``killpg`` ends them all (a plain kill of the postmaster is the fallback).
        """
        pid = self._postmaster_pid()
        if pid is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + self._timeout
            while self._server_alive() and time.monotonic() < deadline:
                time.sleep(0.05)
        self._mark_stopped()

    def _mark_stopped(self) -> None:
        self._running = False


# Clusters started and not yet cleaned up; the exit hook stops whatever is left.
_LIVE: set[LocalPostgres] = set()


@atexit.register
def _stop_leftovers() -> None:
    for cluster in list(_LIVE):
        try:
            if cluster.running:
                cluster.stop("immediate")
            cluster.cleanup()
        except Exception:  # at interpreter exit: report, then go on to the next cluster
            logger.exception("could not stop local postgres at exit cluster=%r", cluster)
