"""Where a local PostgreSQL's server programs are, and which OS account runs them.

Programs come from Debian's ``postgresql-NN`` packages (``/usr/lib/postgresql/NN/bin``) or from the
``pgserver`` wheel (PostgreSQL 16). PostgreSQL refuses to run as root, so when this process is root
the server runs as the ``postgres`` system user (created if absent), and the pgserver programs are
first copied out of site-packages to a world-readable directory under the system temp dir
(site-packages may sit under a 0700 home directory). As any other user nothing is copied and the
server runs as that user. Part of ``localpg``'s surface, shared by the demo and the tests.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import pwd
import re
import shutil
import stat
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cdc_replicator.errors import SourceError

__all__ = ["DEBIAN_ROOT", "SERVER_USER", "PgBinaries", "ServerOwner", "find_binaries", "server_owner"]

logger = logging.getLogger(__name__)

DEBIAN_ROOT = Path("/usr/lib/postgresql")
SERVER_USER = "postgres"
_SERVER_TOOLS = ("postgres", "initdb", "pg_ctl")


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
class ServerOwner:
    """The unprivileged account the server runs as when this process is root."""

    uid: int
    gid: int


def server_owner() -> ServerOwner | None:
    """The account the server must run as: None when this process is not root (it runs as us)."""
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam(SERVER_USER)
    except KeyError:
        _create_server_user()
        entry = pwd.getpwnam(SERVER_USER)
    return ServerOwner(entry.pw_uid, entry.pw_gid)


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
