"""``cdc-replicator demo``, run as a user would: live changes reach Delta, and nothing is left running."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from deltalake import DeltaTable

from tests.support.cluster import processes
from tests.support.wait import wait_until

TABLES = ("customers", "orders", "order_items")
CHECK_LINE = re.compile(r"^\s+public\.(\w+)\s+Delta rows = source rows = ([\d,]+)\s+✓$", re.MULTILINE)
SERVER_REMOVED = re.compile(r"^PostgreSQL stopped and its directory (\S+) removed\.$", re.MULTILINE)
APPLIED = re.compile(r"public\.\w+\s+([\d,]+) changes applied")


@dataclass(frozen=True)
class DemoRun:
    workdir: Path
    returncode: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return f"--- stdout\n{self.stdout}\n--- stderr\n{self.stderr}"


def demo_command(workdir: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "cdc_replicator", "demo", "--dir", str(workdir), *args]


def run_demo(workdir: Path, seconds: float) -> DemoRun:
    proc = subprocess.run(
        demo_command(workdir, "--seconds", f"{seconds:g}"),
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=120,
        check=False,
        cwd=workdir.parent,
    )
    return DemoRun(workdir, proc.returncode, proc.stdout, proc.stderr)


def checked_counts(run: DemoRun) -> dict[str, int]:
    """The final check lines that matched (table -> rows)."""
    return {name: int(rows.replace(",", "")) for name, rows in CHECK_LINE.findall(run.stdout)}


def processes_using(path: str) -> list[int]:
    """Pids whose command line mentions ``path`` (a postgres started with ``-D <path>/data``)."""
    return [pid for pid, cmdline in processes("cmdline") if os.fsencode(path) in cmdline]


def assert_server_gone(run: DemoRun) -> None:
    match = SERVER_REMOVED.search(run.stdout)
    assert match is not None, run.output
    base = match.group(1)
    assert base.startswith("/") and not Path(base).exists(), run.output
    assert processes_using(base) == []


def assert_lake_matches_check(run: DemoRun) -> None:
    counts = checked_counts(run)
    assert sorted(counts) == sorted(TABLES), run.output
    assert "✗" not in run.stdout and "!=" not in run.stdout, run.output
    for name in TABLES:
        table = DeltaTable(str(run.workdir / "lake" / "public" / name))
        rows = table.to_pyarrow_dataset().count_rows()
        assert rows == counts[name] > 0, f"{name}: {rows} rows in Delta, {counts[name]} checked"


@pytest.fixture(scope="module")
def first_run(tmp_path_factory: pytest.TempPathFactory) -> DemoRun:
    """One 8-second demo run in a fresh directory, shared by the tests below."""
    return run_demo(tmp_path_factory.mktemp("demo") / "cdc-demo", seconds=8)


def test_demo_streams_live_changes_into_delta_and_the_final_check_matches(first_run: DemoRun) -> None:
    assert first_run.returncode == 0, first_run.output
    assert "Traceback" not in first_run.stderr, first_run.output
    assert "Removed the lake and state of the previous run" not in first_run.stdout
    applied = [int(n.replace(",", "")) for n in APPLIED.findall(first_run.stdout)]
    assert applied and max(applied) > 0, first_run.output  # streamed changes, not only the initial load
    assert_lake_matches_check(first_run)
    assert (first_run.workdir / "state" / "cdc.db").is_file()


def test_demo_stops_and_removes_its_throwaway_server(first_run: DemoRun) -> None:
    assert first_run.returncode == 0, first_run.output
    assert_server_gone(first_run)


def test_a_second_run_in_the_same_dir_starts_afresh_and_stops_cleanly_on_ctrl_c(first_run: DemoRun) -> None:
    assert first_run.returncode == 0, first_run.output
    orders_log = first_run.workdir / "lake" / "public" / "orders" / "_delta_log"
    first_commit = orders_log / "00000000000000000000.json"
    old_first_commit = first_commit.read_bytes()

    proc = subprocess.Popen(
        demo_command(first_run.workdir),  # no --seconds: runs until Ctrl-C
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        encoding="utf-8",
        cwd=first_run.workdir.parent,
    )
    try:
        # a new table (a new first commit) that has also streamed a batch: the demo is well under way
        wait_until(
            lambda: (
                first_commit.exists()
                and first_commit.read_bytes() != old_first_commit
                and len(list(orders_log.glob("*.json"))) >= 3
            ),
            timeout=60,
            interval=0.2,
            message="the second run recreated the orders table and applied a batch",
        )
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    run = DemoRun(first_run.workdir, proc.returncode, stdout, stderr)

    assert run.returncode == 0, run.output
    assert "Removed the lake and state of the previous run" in run.stdout, run.output
    assert "Ctrl-C: stopping the workload" in run.stdout, run.output
    assert_lake_matches_check(run)
    assert_server_gone(run)
