"""Read how a finished CLI command refused to run: its exit code and the one error it printed."""

from __future__ import annotations

import subprocess

__all__ = ["refusal"]


def refusal(result: subprocess.CompletedProcess[str], exit_code: int) -> str:
    """Assert ``result`` exited with ``exit_code`` after one clear error; return that error, lower-cased.

    The error is what the CLI prints last on stderr: the ``error: ...`` line (a server's message
    may continue on further lines) and its ``  hint: ...`` line when there is one; log lines
    before it are not part of it. A traceback fails the check.
    """
    out = f"--- exit {result.returncode}\n--- stderr:\n{result.stderr}\n--- stdout:\n{result.stdout}"
    assert result.returncode == exit_code, f"expected exit {exit_code}\n{out}"
    lines = result.stderr.rstrip("\n").splitlines()
    assert not any(line.startswith("Traceback") for line in lines), (
        f"a traceback instead of a clear message\n{out}"
    )
    starts = [i for i, line in enumerate(lines) if line.startswith("error: ")]
    assert len(starts) == 1, f"expected exactly one 'error: ' line on stderr\n{out}"
    message = lines[starts[0] :]
    hints = [line for line in message if line.startswith("  hint: ")]
    assert len(hints) <= 1, f"more than one hint\n{out}"
    return "\n".join(message).lower()
