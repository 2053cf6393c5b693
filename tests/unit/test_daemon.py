"""Specification of the signal handling: a graceful stop first, bounded by a grace period."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

SCRIPT = """
import threading, time, sys
from cdc_replicator.service.daemon import install_signal_handlers
stop = threading.Event()
install_signal_handlers(stop, grace_seconds={grace})
print("ready", flush=True)
stop.wait()
print("stopping", flush=True)
time.sleep({work})  # the open batch being finished
print("done", flush=True)
"""


def _run(grace: float, work: float) -> tuple[int, str, float]:
    proc = subprocess.Popen(
        [sys.executable, "-c", SCRIPT.format(grace=grace, work=work)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=30)
    return proc.returncode, out, time.monotonic() - started


def test_sigterm_lets_the_current_work_finish_and_exit_normally() -> None:
    code, out, _ = _run(grace=10.0, work=0.2)
    assert code == 0 and out.split() == ["stopping", "done"]


def test_a_graceful_stop_longer_than_the_grace_period_is_cut_short_with_exit_130() -> None:
    code, out, seconds = _run(grace=0.5, work=20.0)
    assert code == 130 and "done" not in out
    assert seconds < 10.0
