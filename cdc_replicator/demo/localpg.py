"""Start and stop a throwaway local PostgreSQL cluster (tests and the demo).

A cluster lives in one base directory: ``data/`` (the cluster), ``sock/`` (the unix socket) and
``postgres.log``. It listens on 127.0.0.1 and a free port and trusts every local connection,
replication included. Its settings (in ``data/localpg.conf``, included from postgresql.conf) are
``wal_level = logical``, ``max_replication_slots = 20``, ``max_wal_senders = 20``, ``fsync = off``
only with ``fast=True``, then the caller's settings. Server binaries come from Debian's
``postgresql-NN`` packages or from the ``pgserver`` wheel (PostgreSQL 16).

PostgreSQL refuses to run as root, so when this process is root every server-side command
(initdb, pg_ctl, pg_basebackup) runs as the ``postgres`` system user (created if absent), the
directories it needs are handed to that user, and the pgserver binaries are first copied out of
site-packages to a world-readable directory under the system temp dir (site-packages may sit
under a 0700 home directory). As any other user everything runs as that user, in place.

Linux only: ``kill()`` reads ``/proc`` to find the postmaster's children.
"""

from __future__ import annotations

import atexit
import hashlib
import importlib.util
import logging
import os
import pwd
import re
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Literal
from urllib.parse import quote

import psycopg
from psycopg import sql

from cdc_replicator.errors import SourceError

__all__ = ["LocalPostgres", "PgBinaries", "ShutdownMode", "find_binaries", "free_port", "make_standby"]

logger = logging.getLogger(__name__)

ShutdownMode = Literal["smart", "fast", "immediate"]

HOST = "127.0.0.1"
DEBIAN_ROOT = Path("/usr/lib/postgresql")
SERVER_USER = "postgres"
_SERVER_TOOLS = ("postgres", "initdb", "pg_ctl")
_CONF_INCLUDE = "localpg.conf"
# Settings LocalPostgres owns; callers choose the port through the constructor.
_RESERVED_SETTINGS = frozenset({"port", "unix_socket_directories", "listen_addresses"})
_SETTING_NAME = re.compile(r"^[a-z_][a-z0-9_.]*$")
# A unix socket path must fit sockaddr_un.sun_path (108 bytes) with "/.s.PGSQL.65535" appended.
_MAX_SOCKET_DIR = 90
_LOG_TAIL_LINES = 20
_PORT_ATTEMPTS = 3


@dataclass(frozen=True, slots=True)
class PgBinaries:
    """A directory holding one PostgreSQL major version's server programs."""

    bindir: Path
    version: int

    def tool(self, name: str) -> str:
        """Return the path of program ``name`` (``initdb``, ``pg_ctl``, ...) as a string for argv."""
        return str(self.bindir / name)


def find_binaries(version: int | None = None) -> PgBinaries:
    """Locate PostgreSQL server binaries of major ``version`` (or the newest available).

    Debian's ``/usr/lib/postgresql/<v>/bin`` wins when present; otherwise the PostgreSQL bundled
    in the ``pgserver`` wheel is used if its major version matches (copied to a readable temp dir
    when running as root). Raises SourceError with an install hint when nothing fits.
    """
    debian = _debian_bindirs()
    if version is None and debian:
        newest = max(debian)
        return PgBinaries(debian[newest], newest)
    if version is not None and version in debian:
        return PgBinaries(debian[version], version)
    return _pgserver_binaries(version)


def _install_hint(version: int | None) -> str:
    if version is None:
        return "apt-get install postgresql-15, or pip install pgserver (bundles PostgreSQL 16)"
    if version == 16:
        return "pip install pgserver (bundles PostgreSQL 16), or apt-get install postgresql-16"
    return f"apt-get install postgresql-{version}"


def _debian_bindirs() -> dict[int, Path]:
    found: dict[int, Path] = {}
    if not DEBIAN_ROOT.is_dir():
        return found
    for entry in DEBIAN_ROOT.iterdir():
        bindir = entry / "bin"
        if entry.name.isdigit() and all((bindir / tool).is_file() for tool in _SERVER_TOOLS):
            found[int(entry.name)] = bindir
    return found


def _pgserver_binaries(wanted: int | None) -> PgBinaries:
    wanted_text = "" if wanted is None else f" {wanted}"
    # find_spec on a top-level name locates the package without importing it (importing pgserver
    # runs platformdirs code that warns when XDG_RUNTIME_DIR is unset).
    spec = importlib.util.find_spec("pgserver")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    pginstall = Path(locations[0]) / "pginstall" if locations else None
    if pginstall is None or not all((pginstall / "bin" / tool).is_file() for tool in _SERVER_TOOLS):
        raise SourceError(
            f"no PostgreSQL{wanted_text} server binaries found (looked in {DEBIAN_ROOT} and the pgserver wheel)",
            hint=_install_hint(wanted),
        )
    found = _server_major_version(pginstall / "bin" / "postgres")
    if wanted is not None and found != wanted:
        raise SourceError(
            f"no PostgreSQL {wanted} server binaries found: {DEBIAN_ROOT} has none "
            f"and the pgserver wheel bundles PostgreSQL {found}",
            hint=_install_hint(wanted),
        )
    bindir = pginstall / "bin"
    if os.geteuid() == 0:
        bindir = _readable_copy(pginstall, found)
    return PgBinaries(bindir, found)


def _server_major_version(postgres: Path) -> int:
    try:
        out = subprocess.run(
            [str(postgres), "--version"], capture_output=True, text=True, timeout=30, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise SourceError(f"{postgres} --version failed", hint="reinstall the pgserver wheel") from exc
    match = re.search(r"\(PostgreSQL\)\s+(\d+)", out)
    if match is None:
        raise SourceError(f"cannot read a version from {postgres} --version: {out.strip()!r}")
    return int(match.group(1))


def _readable_copy(pginstall: Path, major: int) -> Path:
    """Copy the pgserver install (and the wheel's bundled libpq) to a world-readable temp dir.

    The binaries find libpq through RPATH ``$ORIGIN/../../../pgserver.libs``, so the copy keeps the
    wheel's layout: ``<dest>/pgserver/pginstall`` next to ``<dest>/pgserver.libs``. A finished copy
    carries a ``.complete`` marker and is reused; copies are built aside and renamed into place.
    """
    libs = pginstall.parent.parent / "pgserver.libs"
    postgres = pginstall / "bin" / "postgres"
    fingerprint = f"{pginstall.resolve()}:{postgres.stat().st_size}:{postgres.stat().st_mtime_ns}"
    key = hashlib.sha256(fingerprint.encode()).hexdigest()[:12]
    dest = Path(tempfile.gettempdir()) / f"cdc-replicator-pg{major}-{key}"
    bindir = dest / "pgserver" / "pginstall" / "bin"
    if _is_complete_copy(dest):
        return bindir
    staging = Path(tempfile.mkdtemp(prefix=f"{dest.name}.", dir=dest.parent))
    try:
        shutil.copytree(pginstall, staging / "pgserver" / "pginstall", symlinks=True)
        if libs.is_dir():
            shutil.copytree(libs, staging / "pgserver.libs", symlinks=True)
        _make_world_readable(staging)
        (staging / ".complete").write_text(f"{fingerprint}\n")
        try:
            staging.rename(dest)
        except OSError:
            if not _is_complete_copy(dest):  # not a concurrent winner: a stale or foreign directory
                raise SourceError(
                    f"{dest} exists but is not a complete copy of the PostgreSQL {major} binaries",
                    hint=f"remove it: rm -rf {dest}",
                ) from None
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    logger.info("copied pgserver binaries to a readable dir path=%s", dest)
    return bindir


def _is_complete_copy(dest: Path) -> bool:
    try:
        info = dest.lstat()
    except FileNotFoundError:
        return False
    # Only trust a directory we (root) own that nobody else can write into.
    safe = stat.S_ISDIR(info.st_mode) and info.st_uid == os.geteuid() and not info.st_mode & 0o022
    return safe and (dest / ".complete").is_file()


def _make_world_readable(root: Path) -> None:
    for path in [root, *root.rglob("*")]:
        info = path.lstat()
        if stat.S_ISLNK(info.st_mode):
            continue
        mode = stat.S_IMODE(info.st_mode) | 0o444
        if stat.S_ISDIR(info.st_mode) or info.st_mode & stat.S_IXUSR:
            mode |= 0o111
        path.chmod(mode & ~0o022)


@dataclass(frozen=True, slots=True)
class _Owner:
    """The unprivileged account the server runs as when this process is root."""

    uid: int
    gid: int


def _server_owner() -> _Owner | None:
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam(SERVER_USER)
    except KeyError:
        _create_server_user()
        entry = pwd.getpwnam(SERVER_USER)
    return _Owner(entry.pw_uid, entry.pw_gid)


def _create_server_user() -> None:
    argv = ["useradd", "--system", "--user-group", "--no-create-home", "--shell", "/usr/sbin/nologin"]
    try:
        subprocess.run([*argv, SERVER_USER], capture_output=True, text=True, timeout=60, check=True)
    except (OSError, subprocess.SubprocessError) as exc:
        raise SourceError(
            f"PostgreSQL refuses to run as root and the {SERVER_USER!r} user could not be created",
            hint=f"create it: useradd --system --user-group {SERVER_USER}; or run as a non-root user",
        ) from exc
    logger.info("created system user name=%s", SERVER_USER)


def _permission_hint(owner: _Owner | None) -> str:
    if owner is None:
        return "check that this user can write the base directory"
    return (
        f"as root the server runs as {SERVER_USER!r}, which must be able to reach the base directory "
        "through every parent (a 0700 parent such as /root or /tmp/pytest-of-root is not); "
        "omit base_dir to use a fresh temp directory"
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
    """A throwaway PostgreSQL cluster: initdb, start, stop, crash and remove.

    Use it as a context manager (``__enter__`` starts it unless already started, ``__exit__``
    stops it and removes what it created). A process-exit hook stops clusters left running.
    Not thread-safe: drive one instance from one thread.
    """

    def __init__(
        self,
        binaries: PgBinaries,
        *,
        base_dir: Path | None = None,
        port: int | None = None,
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
                raise ValueError(f"setting {name!r} is managed by LocalPostgres; pass port= instead")
        self._binaries = binaries
        self._requested_base = base_dir
        self._port_fixed = port is not None
        self._port = port if port is not None else free_port()
        self._settings = dict(settings or {})
        self._fast = fast
        self._timeout = timeout
        self._owner = _server_owner()
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
    def host(self) -> str:
        return HOST

    @property
    def port(self) -> int:
        return self._port

    @property
    def running(self) -> bool:
        """True between a successful start and the next stop/kill (as far as this object knows)."""
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

    def __enter__(self) -> LocalPostgres:
        if self._base is None:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cleanup()

    def start(self) -> LocalPostgres:
        """Create the cluster (initdb + configuration) and start it; returns self.

        Raises SourceError, with the server log's last lines, when initdb or the start fails.
        """
        if self._base is not None:
            raise RuntimeError(f"{self!r} was already started; use start_again() after stop() or kill()")
        began = time.monotonic()
        self._prepare_dirs()
        self._initdb()
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

    def start_standby(self, primary: LocalPostgres) -> LocalPostgres:
        """Create this cluster as a streaming physical standby of ``primary`` and start it.

        ``pg_basebackup -R -X stream`` from the running primary (same major version), then a start
        in hot-standby mode: read-only queries work, ``pg_is_in_recovery()`` is true.
        """
        if self._base is not None:
            raise RuntimeError(f"{self!r} was already started")
        if primary.version != self.version:
            raise ValueError(f"a standby needs the primary's version ({primary.version}), not {self.version}")
        began = time.monotonic()
        self._prepare_dirs()
        argv = [self._binaries.tool("pg_basebackup"), "-D", str(self.datadir), "-h", HOST]
        argv += ["-p", str(primary.port), "-U", "postgres", "-R", "-X", "stream", "-c", "fast"]
        if self._fast:
            argv.append("--no-sync")
        result = self._run(argv, timeout=300)
        if result.returncode != 0:
            raise SourceError(
                f"pg_basebackup from port {primary.port} failed (exit {result.returncode}):\n"
                + _tail(result.stdout + result.stderr),
                hint=_permission_hint(self._owner),
            )
        self._write_config()
        self._start_server()
        logger.info(
            "local standby started version=%d port=%d primary_port=%d seconds=%.2f",
            self.version,
            self._port,
            primary.port,
            time.monotonic() - began,
        )
        return self

    def start_again(self) -> None:
        """Start the existing cluster after ``stop()`` or ``kill()`` (crash recovery runs if killed)."""
        self._layout()
        if self._running:
            raise RuntimeError(f"{self!r} is already running")
        self._start_server()

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
                hint=f"see {self.log_path}; kill() forces it down",
            )
        self._mark_stopped()

    def restart(self) -> None:
        """Restart the running server (``pg_ctl restart -m fast``); port and data are kept."""
        if not self._running:
            raise RuntimeError(f"{self!r} is not running; use start_again()")
        offset = self._log_size()
        result = self._run(
            [self._binaries.tool("pg_ctl"), "restart", "-D", str(self.datadir), "-m", "fast", "-w", "-s"]
            + ["-l", str(self.log_path), "-t", str(int(self._timeout))],
            timeout=2 * self._timeout + 30,
        )
        if result.returncode != 0:
            self._running = self._server_alive()
            raise self._start_failure("restart", result, offset)

    def kill(self) -> None:
        """SIGKILL the postmaster and all its children at once, like a power cut, and wait for them.

        No shutdown checkpoint is written: ``start_again()`` runs crash recovery.
        """
        pid = self._postmaster_pid()
        if pid is None:
            self._mark_stopped()
            return
        try:
            os.kill(pid, signal.SIGSTOP)  # freeze the postmaster so it forks nothing while we look
        except ProcessLookupError:
            self._mark_stopped()
            return
        victims = [pid, *_children_of(pid)]
        for victim in victims:
            try:
                os.kill(victim, signal.SIGKILL)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + self._timeout
        while any(_alive(victim) for victim in victims):
            if time.monotonic() > deadline:
                raise SourceError(f"postgres processes {victims} survived SIGKILL for {self._timeout}s")
            time.sleep(0.02)
        if _exists(pid):
            # An unreaped zombie keeps its pid "in use", so the next postmaster would refuse the
            # stale lock files; the server is certainly dead, so they can go.
            (self.datadir / "postmaster.pid").unlink(missing_ok=True)
            (self.socket_dir / f".s.PGSQL.{self._port}.lock").unlink(missing_ok=True)
        self._mark_stopped()
        logger.info("local postgres killed pid=%d port=%d", pid, self._port)

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
                    self.kill()
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
        if self._requested_base is None:
            base = Path(tempfile.mkdtemp(prefix="cdc-replicator-pg-"))
            self._created.append(base)
            self._chown(base)
        else:
            base = self._requested_base.absolute()
            if not base.exists():
                base.mkdir(parents=True)
                self._created.append(base)
                self._chown(base)
        self._base = base
        for path in (self.datadir, self.log_path, base / "sock"):
            if path.exists():
                raise SourceError(f"{path} already exists", hint="use an empty base_dir")
        self.datadir.mkdir(mode=0o700)
        self._created.append(self.datadir)
        self._chown(self.datadir)
        self.log_path.touch(mode=0o600)
        self._created.append(self.log_path)
        self._chown(self.log_path)
        socket_dir = base / "sock"
        if len(str(socket_dir)) > _MAX_SOCKET_DIR:
            socket_dir = Path(tempfile.mkdtemp(prefix="cdcpg-"))
        else:
            socket_dir.mkdir(mode=0o700)
        self._created.append(socket_dir)
        self._chown(socket_dir)
        self._socket_dir = socket_dir
        _LIVE.add(self)

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

    def _initdb(self) -> None:
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

    def _start_server(self) -> None:
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
            if port_taken and not self._port_fixed and attempt < _PORT_ATTEMPTS:
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
        pid = self._postmaster_pid()
        return pid is not None and _alive(pid)

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


def make_standby(
    primary: LocalPostgres,
    *,
    base_dir: Path | None = None,
    port: int | None = None,
    settings: Mapping[str, str] | None = None,
) -> LocalPostgres:
    """Clone a running ``primary`` with ``pg_basebackup -R -X stream`` and start it as a hot standby.

    The standby streams from the primary without a replication slot and runs with
    ``hot_standby_feedback = on`` (needed for logical decoding on a PostgreSQL 16 standby).
    Returns the started standby; the caller cleans it up (or uses it as a context manager).
    """
    if not primary.running:
        raise RuntimeError(f"{primary!r} is not running")
    standby = LocalPostgres(
        primary.binaries,
        base_dir=base_dir,
        port=port,
        settings={"hot_standby_feedback": "on", **(settings or {})},
        fast=primary.fast,
        timeout=primary._timeout,
    )
    try:
        standby._prepare_dirs()
        argv = [primary.binaries.tool("pg_basebackup"), "-D", str(standby.datadir), "-h", HOST]
        argv += ["-p", str(primary.port), "-U", "postgres", "-R", "-X", "stream", "-c", "fast"]
        if primary.fast:
            argv.append("--no-sync")
        result = standby._run(argv, timeout=300)
        if result.returncode != 0:
            raise SourceError(
                f"pg_basebackup from {primary.host}:{primary.port} failed (exit {result.returncode}):\n"
                + _tail(result.stdout + result.stderr),
                hint=f"check max_wal_senders and pg_hba.conf on the primary; see {primary.log_path}",
            )
        standby._write_config()
        standby._start_server()
    except BaseException:
        standby.cleanup()
        raise
    logger.info(
        "local standby started version=%d port=%d primary_port=%d",
        standby.version,
        standby.port,
        primary.port,
    )
    return standby


def _children_of(pid: int) -> list[int]:
    children: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat_line = (entry / "stat").read_text()
        except OSError:
            continue
        # Field 4 is the parent pid; the command name in field 2 may contain spaces and parentheses.
        fields = stat_line[stat_line.rfind(")") + 2 :].split()
        if len(fields) > 1 and fields[1] == str(pid):
            children.append(int(entry.name))
    return children


def _exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    if not _exists(pid):
        return False
    try:
        stat_line = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat_line[stat_line.rfind(")") + 2 :].split()[:1] != ["Z"]
