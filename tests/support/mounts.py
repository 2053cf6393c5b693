"""Small tmpfs mounts for storage-fault tests: a lake or a state store that can fill up or turn read-only."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

__all__ = ["mount_tmpfs", "remount", "umount"]


def mount_tmpfs(path: Path, size_mb: int) -> None:
    """Mount a tmpfs of ``size_mb`` MiB at ``path`` (made if missing); fails the test — never skips —
    when it cannot (the tests run as root, as .ci/run does)."""
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_mb}M", "tmpfs", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.fail(f"cannot mount a tmpfs at {path} (the test needs root): {done.stderr.strip()}")


def umount(path: Path, timeout: float = 15.0) -> None:
    """Unmount ``path``, waiting while it is busy (a killed daemon's children may still hold files)."""
    deadline = time.monotonic() + timeout
    while True:
        done = subprocess.run(["umount", str(path)], capture_output=True, text=True, check=False)
        if done.returncode == 0:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"cannot unmount {path}: {done.stderr.strip()}")
        time.sleep(0.2)


def remount(path: Path, mode: str) -> None:
    """``mode`` "ro" or "rw": remount the tmpfs at ``path`` (ro needs no file open for writing on it)."""
    subprocess.run(["mount", "-o", f"remount,{mode}", str(path)], check=True, capture_output=True)
