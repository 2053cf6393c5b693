"""Read how a finished CLI command refused to run: its exit code and the one error it printed."""

from __future__ import annotations

import subprocess

__all__ = ["HINT", "refusal"]


HINT = "; hint: "  # between the error and its fix, on the one error line


def refusal(result: subprocess.CompletedProcess[str], exit_code: int) -> str:
    """Assert ``result`` exited with ``exit_code`` after one clear error; return that error, lower-cased.

    The error is the last line of stderr: ``error: <what>`` or ``error: <what>; hint: <fix>``, one
    line (``cdc_replicator.cli.commands.error_line``); log lines before it are not part of it. A
    second ``error:`` line or a traceback fails the check.
    """
    out = f"--- exit {result.returncode}\n--- stderr:\n{result.stderr}\n--- stdout:\n{result.stdout}"
    assert result.returncode == exit_code, f"expected exit {exit_code}\n{out}"
    assert "Traceback" not in result.stderr, f"a traceback instead of a clear message\n{out}"
    lines = result.stderr.rstrip("\n").splitlines()
    assert lines and lines[-1].startswith("error: "), f"stderr does not end with an 'error: ' line\n{out}"
    assert sum(line.startswith("error: ") for line in lines) == 1, f"more than one 'error: ' line\n{out}"
    assert lines[-1].count(HINT) <= 1, f"more than one hint\n{out}"
    return lines[-1].lower()
