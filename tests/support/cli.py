"""Read how a finished CLI command refused to run: its exit code and the one error it printed."""

from __future__ import annotations

import subprocess

__all__ = ["HINT", "refusal"]


HINT = "; hint: "  # between the error and its fix, on the one error line


def refusal(result: subprocess.CompletedProcess[str], exit_code: int) -> str:
    """Assert ``result`` exited with ``exit_code`` after one clear error; return that error, lower-cased.

    The error is the one ``error: <what>`` or ``error: <what>; hint: <fix>`` line of stderr
    (``cdc_replicator.cli.commands.error_line``); log lines come before it. It is usually the last
    line, but Python's multiprocessing resource tracker may warn after it when the reader process
    was stopped, so it need not be. A second ``error:`` line or a traceback fails the check.
    """
    out = f"--- exit {result.returncode}\n--- stderr:\n{result.stderr}\n--- stdout:\n{result.stdout}"
    assert result.returncode == exit_code, f"expected exit {exit_code}\n{out}"
    assert "Traceback" not in result.stderr, f"a traceback instead of a clear message\n{out}"
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, f"expected exactly one 'error: ' line on stderr\n{out}"
    assert errors[0].count(HINT) <= 1, f"more than one hint\n{out}"
    return errors[0].lower()
