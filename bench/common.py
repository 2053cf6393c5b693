"""Shared benchmark helpers: run one tool as a measured subprocess, describe the machine, print tables.

A measured run is one command started by ``rusage_launcher.py``: its wall clock is taken around
spawn-to-reap and its peak RSS is the ``ru_maxrss`` that ``os.wait4`` reports for that command
(Linux counts the command and the descendants it waited for). The small launcher keeps the
benchmark process's own memory out of the figure; its ~9 MB are the floor of every figure.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import platform
import pwd
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

__all__ = [
    "MIB",
    "BenchError",
    "Measured",
    "clean_env",
    "format_table",
    "git_revision",
    "interruptible",
    "machine_info",
    "package_versions",
    "run_measured",
    "server_user_ids",
]

MIB = 1024 * 1024
_LAUNCHER = Path(__file__).resolve().parent / "rusage_launcher.py"
_TAIL_CHARS = 4000


class BenchError(Exception):
    """A benchmark step could not run; the message says which step and what to check."""


@dataclass(frozen=True, slots=True)
class Measured:
    """One finished child process: how long it took, its peak memory, and what it printed."""

    argv: tuple[str, ...]
    seconds: float
    peak_rss_bytes: int
    returncode: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    @property
    def peak_rss_mb(self) -> float:
        return self.peak_rss_bytes / MIB

    def failure(self, what: str) -> str:
        """One message naming the step, the exit code and the tail of stderr (for a FAIL line)."""
        tail = (self.stderr.strip() or self.stdout.strip())[-_TAIL_CHARS:]
        return f"{what} exited {self.returncode}: {tail}"


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment without PG* variables (they could redirect libpq), plus ``extra``."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("PG")}
    env.update(extra or {})
    return env


@dataclass(frozen=True, slots=True)
class ServerUser:
    uid: int
    gid: int


def server_user_ids(name: str = "postgres") -> ServerUser | None:
    """The ``postgres`` account to run PostgreSQL client tools as when this process is root, else None."""
    if os.geteuid() != 0:
        return None
    entry = pwd.getpwnam(name)
    return ServerUser(entry.pw_uid, entry.pw_gid)


def run_measured(
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    timeout: float,
    cwd: Path | None = None,
    stdout_to_null: bool = False,
) -> Measured:
    """Run ``argv`` to completion under ``rusage_launcher.py``; return its wall clock and peak RSS.

    Output goes to temporary files (not pipes) so a chatty child never blocks on a full pipe;
    ``stdout_to_null`` sends stdout to /dev/null instead (the COPY baseline). The command runs in
    its own session: on timeout (returned as a failed run, exit -9) or when this process is
    interrupted, its whole process group is killed and reaped before returning or re-raising.
    """
    with (
        tempfile.TemporaryFile("w+") as out,
        tempfile.TemporaryFile("w+") as err,
        tempfile.TemporaryDirectory(prefix="bench-rusage-") as tmp,
    ):
        result_path = Path(tmp) / "rusage.json"
        launcher = [sys.executable, "-S", "-I", str(_LAUNCHER), str(result_path), *argv]
        started = time.perf_counter()
        proc = subprocess.Popen(
            launcher,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL if stdout_to_null else out,
            stderr=err,
            env=dict(env),
            cwd=cwd,
            start_new_session=True,
        )
        timed_out = False
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            _kill_group(proc)
        except BaseException:
            _kill_group(proc)
            raise
        wall = time.perf_counter() - started
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
        if timed_out:
            return Measured(
                tuple(argv), wall, 0, -signal.SIGKILL, stdout, f"{stderr}\ntimed out after {timeout:.0f}s"
            )
        try:
            usage = json.loads(result_path.read_text())
            return Measured(
                argv=tuple(argv),
                seconds=float(usage["seconds"]),
                peak_rss_bytes=int(usage["peak_rss_bytes"]),
                returncode=int(usage["returncode"]),
                stdout=stdout,
                stderr=stderr,
            )
        except (OSError, ValueError, KeyError, TypeError):
            # The launcher itself failed (command not found, ...): report what it said.
            return Measured(tuple(argv), wall, 0, proc.returncode or 1, stdout, stderr)


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


@contextlib.contextmanager
def interruptible() -> Iterator[None]:
    """Raise KeyboardInterrupt on SIGINT and SIGTERM inside the block, so ``finally`` clean-ups run.

    SIGINT is set explicitly because a process started in the background by a non-interactive
    shell inherits it ignored, and Python then leaves it ignored.
    """

    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def package_versions(names: Sequence[str]) -> dict[str, str | None]:
    """Installed distribution versions by name (None when not installed)."""
    versions: dict[str, str | None] = {}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def git_revision(repo: Path) -> str | None:
    """``<commit>`` or ``<commit>-dirty`` of the work tree at ``repo``; None outside git."""
    try:
        head = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "--short=12", "HEAD"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{head}-dirty" if dirty else head


def machine_info() -> dict[str, object]:
    """CPU count and model, memory, kernel and Python: enough to compare runs across machines."""
    model = None
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem_total = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_total = int(line.split()[1]) * 1024
                break
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_count": os.cpu_count(),
        "cpu_model": model,
        "mem_total_bytes": mem_total,
        "kernel": platform.release(),
        "python": platform.python_version(),
    }


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]], *, left: int = 1) -> str:
    """A plain-text table: the first ``left`` columns left-aligned, the others right-aligned."""
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        parts = [
            c.ljust(w) if i < left else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ]
        return "  ".join(parts).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(headers), rule, *(line(r) for r in rows)])
