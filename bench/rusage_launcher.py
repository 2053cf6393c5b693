"""Run one command and write its own wall clock and peak RSS as JSON: ``rusage_launcher.py OUT CMD...``.

Why a launcher: Linux folds the memory high-water mark of the image a process replaces at exec
into that process's ``ru_maxrss``. A command spawned straight from the (large) benchmark process
would report the benchmark's RSS as its own; spawned from this small process (``python -S -I``,
about 9 MB) it reports its own peak, with this launcher's size as the floor.

Only the standard library, imported lazily, to keep the launcher small. The command inherits
stdin/stdout/stderr and the environment. Exit status: 0 when OUT was written, whatever the command
returned (OUT holds its exit code); 2 when the command could not be started.
"""

import json
import os
import sys
import time


def main() -> int:
    if len(sys.argv) < 3:
        print("usage: rusage_launcher.py OUT CMD [ARG...]", file=sys.stderr)
        return 2
    out, argv = sys.argv[1], sys.argv[2:]
    started = time.perf_counter()
    try:
        pid = os.posix_spawnp(argv[0], argv, os.environ)
    except OSError as exc:
        print(f"cannot start {argv[0]}: {exc}", file=sys.stderr)
        return 2
    _, status, usage = os.wait4(pid, 0)
    seconds = time.perf_counter() - started
    result = {
        "seconds": seconds,
        "peak_rss_bytes": usage.ru_maxrss * 1024,  # Linux reports KiB
        "returncode": os.waitstatus_to_exitcode(status),
        "launcher_rss_bytes": _own_peak_rss(),
    }
    with open(out, "w") as fh:
        json.dump(result, fh)
    return 0


def _own_peak_rss() -> int | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


if __name__ == "__main__":
    sys.exit(main())
