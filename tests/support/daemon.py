"""Run ``cdc-replicator`` as a real subprocess (so it can be SIGKILLed) against a test database."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.lake import diff_tables
from tests.support.pg import PgDatabase
from tests.support.wait import wait_until

__all__ = ["Daemon", "run_cli", "wait_converged", "write_config"]


def write_config(
    path: Path,
    db: PgDatabase,
    lake: Path,
    tables: Iterable[str],
    *,
    slot: str = "cdc_test",
    source_extra: Mapping[str, object] | None = None,
    batch: Mapping[str, object] | None = None,
    table_extra: Mapping[str, Mapping[str, object]] | None = None,
    server: Mapping[str, object] | None = None,
) -> Path:
    """A TOML config for ``db`` → ``lake``; small batches and short timeouts suit tests.

    ``server``: serve the HTTP endpoint (on a free port unless ``listen`` is given) with these keys;
    by default it is off, so that many daemons can run side by side.
    """

    def val(v: object) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int | float):
            return str(v)
        if isinstance(v, list | tuple):
            return "[" + ", ".join(val(x) for x in v) + "]"
        return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'

    src = {"dsn": db.dsn, "slot": slot, "publication": slot, "retry_max_seconds": 2.0, **(source_extra or {})}
    bat = {"max_rows": 5000, "max_seconds": 0.3, **(batch or {})}
    lines = ["[source]", *(f"{k} = {val(v)}" for k, v in src.items())]
    lines += ["[target]", f"uri = {val(lake)}", "[batch]", *(f"{k} = {val(v)}" for k, v in bat.items())]
    lines += ["[state]", f"url = {val('sqlite:///' + str(path.parent / 'state' / 'cdc.db'))}"]
    if server is None:
        lines += ["[server]", "enabled = false"]
    else:
        srv = {"listen": "127.0.0.1:0", **server}
        lines += ["[server]", *(f"{k} = {val(v)}" for k, v in srv.items())]
    lines += ["[log]", 'format = "json"', 'level = "debug"']
    for t in tables:
        lines += ["[[tables]]", f"name = {val(t)}"]
        for k, v in (table_extra or {}).get(t, {}).items():
            lines.append(f"{k} = {val(v)}")
    path.write_text("\n".join(lines) + "\n")
    return path


_STREAMING = re.compile(r"streaming slot=|watermark polling tables=")
_LISTENING = re.compile(r"http endpoint listening address=(\S+:\d+)")


def _env(extra: Mapping[str, str] | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CDC_")}
    env.update(extra or {})
    return env


def run_cli(
    config: Path | None, *args: str, env: Mapping[str, str] | None = None, timeout: float = 120.0
) -> subprocess.CompletedProcess[str]:
    """Run one CLI command to completion and capture its output."""
    cmd = [sys.executable, "-m", "cdc_replicator"]
    if config is not None:
        cmd += ["--config", str(config)]
    return subprocess.run(
        cmd + list(args), capture_output=True, text=True, timeout=timeout, env=_env(env), check=False
    )


@dataclass
class Daemon:
    """``cdc-replicator run`` in a subprocess; logs of every start go to ``log_dir``."""

    config: Path
    log_dir: Path
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0
    logs: list[Path] = field(default_factory=list)

    def start(self, *, failpoints: str | None = None, env: Mapping[str, str] | None = None) -> None:
        assert self.proc is None or self.proc.poll() is not None, "daemon already running"
        self.starts += 1
        log = self.log_dir / f"daemon-{self.starts}.log"
        self.logs.append(log)
        extra = dict(env or {})
        if failpoints:
            extra["CDC_FAILPOINTS"] = failpoints
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "cdc_replicator", "--config", str(self.config), "run"],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=_env(extra),
            )

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: no cleanup, no last status update, exactly like a crash."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=30)

    def wait_streaming(self, timeout: float = 60.0) -> None:
        """Wait until this start of the daemon logged that it streams."""
        wait_until(
            lambda: not self.alive() or _STREAMING.search(self.logs[-1].read_text(errors="replace")),
            timeout=timeout,
            message="daemon did not start streaming",
        )

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM once the daemon streams, and wait for a graceful exit; returns the exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.wait_streaming()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)

    def wait_exit(self, timeout: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout=timeout)

    def http_address(self, timeout: float = 60.0) -> str:
        """``http://host:port`` of this start's endpoint, read from its "listening" log line."""
        found: list[str] = []

        def listening() -> bool:
            m = _LISTENING.search(self.logs[-1].read_text(errors="replace"))
            if m:
                found.append(m.group(1))
            return bool(m) or not self.alive()

        wait_until(listening, timeout=timeout, message="daemon never said where it listens")
        assert found, f"daemon exited before listening:\n{self.output()}"
        return "http://" + found[0]

    def output(self, last: int = 40) -> str:
        if not self.logs:
            return ""
        lines = self.logs[-1].read_text(errors="replace").splitlines()
        return "\n".join(lines[-last:])

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.kill()


def wait_converged(
    db: PgDatabase,
    lake: Path,
    tables: Iterable[str],
    *,
    timeout: float = 60.0,
    daemon: Daemon | None = None,
    where: str | None = None,
    source_columns_only: bool = False,
) -> None:
    """Wait until every Delta table equals its source table row for row (``_cdc_*`` ignored).

    ``where``: only the source rows meeting it are expected (e.g. soft-deleted rows are not).
    """
    names = list(tables)
    last: list[str | None] = []

    def check() -> bool:
        if daemon is not None and daemon.proc is not None and daemon.proc.poll() is not None:
            raise AssertionError(f"daemon exited with {daemon.proc.returncode}:\n{daemon.output()}")
        last[:] = [diff_tables(db, lake, t, where, source_columns_only=source_columns_only) for t in names]
        return all(d is None for d in last)

    try:
        wait_until(check, timeout=timeout, interval=0.5, message="Delta tables did not converge")
    except AssertionError as exc:
        detail = "\n".join(d for d in last if d)
        tail = daemon.output() if daemon is not None else ""
        raise AssertionError(f"{exc}\n{detail}\n--- daemon log tail ---\n{tail}") from None
    time.sleep(0)
