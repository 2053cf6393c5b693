"""Test-only PostgreSQL clusters: crash, restart and standbys, on top of the package's LocalPostgres.

``Cluster`` is a ``LocalPostgres`` (``cdc_replicator.demo.localpg``, shared with the demo) that a
test may also ``kill()`` like a power cut, ``restart()``, or ``start_again()`` after a stop or a kill.
``Standby`` is the one way to build a streaming physical standby: ``pg_basebackup -R -X stream``
from a running primary, started in hot-standby mode with ``hot_standby_feedback = on`` (logical
decoding on a PostgreSQL 16 standby needs it; plain reads do not mind it).

Linux only: ``kill()`` finds the postmaster's children with ``processes()``, which reads ``/proc``
(the demo's test uses it too, to see that no server is left).
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

from cdc_replicator.demo.localpg import LocalPostgres
from cdc_replicator.errors import SourceError

__all__ = ["Cluster", "Standby", "processes"]

logger = logging.getLogger(__name__)

BASEBACKUP_TIMEOUT = 300.0


class Cluster(LocalPostgres):
    """A throwaway cluster a test may crash, stop and start again; the port and the data stay."""

    def start_again(self) -> None:
        """Start the existing cluster after ``stop()`` or ``kill()`` (crash recovery runs if killed)."""
        if self.running:
            raise RuntimeError(f"{self!r} is already running")
        self._start_server(same_port=True)  # raises RuntimeError for a cluster that was never started

    def restart(self) -> None:
        """A fast shutdown, then a start of the same data directory on the same port."""
        if not self.running:
            raise RuntimeError(f"{self!r} is not running; use start_again()")
        self.stop("fast")
        self.start_again()

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
        deadline = time.monotonic() + self.timeout
        while any(_alive(victim) for victim in victims):
            if time.monotonic() > deadline:
                raise SourceError(f"postgres processes {victims} survived SIGKILL for {self.timeout}s")
            time.sleep(0.02)
        if _exists(pid):
            # An unreaped zombie keeps its pid "in use", so the next postmaster would refuse the
            # stale lock files; the server is certainly dead, so they can go.
            (self.datadir / "postmaster.pid").unlink(missing_ok=True)
            (self.socket_dir / f".s.PGSQL.{self.port}.lock").unlink(missing_ok=True)
        self._mark_stopped()
        logger.info("local postgres killed pid=%d port=%d", pid, self.port)


class Standby(Cluster):
    """A streaming physical standby of a running ``primary``, cloned when it starts.

    Same binaries, ``fast`` and timeout as the primary; streams without a replication slot.
    Read-only queries work and ``pg_is_in_recovery()`` is true. Use it as a context manager:
    ``with Standby(primary) as standby: ...``.
    """

    def __init__(self, primary: LocalPostgres, *, settings: Mapping[str, str] | None = None) -> None:
        super().__init__(
            primary.binaries,
            settings={"hot_standby_feedback": "on", **(settings or {})},
            fast=primary.fast,
            timeout=primary.timeout,
        )
        self._primary = primary

    @property
    def primary(self) -> LocalPostgres:
        return self._primary

    def _create_datadir(self) -> None:
        primary = self._primary
        if not primary.running:
            raise RuntimeError(f"the primary {primary!r} is not running")
        argv = [self.binaries.tool("pg_basebackup"), "-D", str(self.datadir), "-h", primary.host]
        argv += ["-p", str(primary.port), "-U", "postgres", "-R", "-X", "stream", "-c", "fast"]
        if self.fast:
            argv.append("--no-sync")
        result = self._run(argv, timeout=BASEBACKUP_TIMEOUT)
        if result.returncode != 0:
            output = (result.stdout + result.stderr).strip()
            raise SourceError(
                f"pg_basebackup from {primary.host}:{primary.port} failed (exit {result.returncode}):\n{output}",
                hint=f"check max_wal_senders and pg_hba.conf on the primary; see {primary.log_path}",
            )


def processes(file: str) -> Iterator[tuple[int, bytes]]:
    """Each process's pid and the contents of its ``/proc/<pid>/<file>`` (one that ended meanwhile: skipped)."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                yield int(entry.name), (entry / file).read_bytes()
            except OSError:
                continue


def _children_of(pid: int) -> list[int]:
    children: list[int] = []
    for child, stat in processes("stat"):
        # Field 4 is the parent pid; the command name in field 2 may contain spaces and parentheses.
        fields = stat[stat.rfind(b")") + 2 :].split()
        if len(fields) > 1 and fields[1] == str(pid).encode():
            children.append(child)
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
