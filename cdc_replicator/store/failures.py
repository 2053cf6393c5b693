"""Why a state-store statement failed: the ``StateStoreError`` with its fix and retry policy. No I/O of its own.

SQLite's failures are told apart by its result code (the driver's ``sqlite_errorcode``), never by
their text: a full disk or a lock is retried by the daemon; a file that is damaged, not a database,
or cannot be opened or written (a read-only mount, a path under a regular file, no permission)
stops it. Any other database's failure is retryable when the connection was lost.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from sqlalchemy.exc import DBAPIError

from cdc_replicator.errors import StateStoreError

__all__ = ["DAMAGED_FIX", "store_error"]


def store_error(where: str, file: str | None, what: str, exc: DBAPIError) -> StateStoreError:
    """The error for a failed statement on ``where`` (the store named for messages; ``file`` its
    SQLite file, if any), doing ``what``."""
    orig = exc.orig
    code = getattr(orig, "sqlite_errorcode", None) if isinstance(orig, sqlite3.Error) else None
    detail = (
        str(orig).strip().splitlines()[0] if orig is not None and str(orig).strip() else type(exc).__name__
    )
    if code is None:
        return StateStoreError(
            f"{where} {what}: {detail}",
            hint="check that the state store's database is up and the role may write it; the daemon "
            "retries a lost connection",
            retryable=bool(exc.connection_invalidated),
        )
    name = getattr(orig, "sqlite_errorname", "") or f"SQLite code {code}"
    rule = _SQLITE_RULES.get(code & 0xFF)
    if rule is None:
        return StateStoreError(
            f"{where} {what}: {detail} ({name})",
            hint="check the file and the disk it is on, then start again",
        )
    retryable, fix = rule
    folder = str(Path(file).parent) if file else "its folder"
    return StateStoreError(
        f"{where} {what}: {detail} ({name})",
        hint=fix.format(file=file or "", folder=folder),
        retryable=retryable,
    )


DAMAGED_FIX = (
    "the file is damaged or is not a cdc-replicator state store: restore it from a backup, or move it away "
    "(keep it for a bug report) and start again; if that start reports a position mismatch, re-sync: "
    "cdc-replicator --config FILE snapshot"
)
# SQLite's primary result codes (https://sqlite.org/rescode.html): (retryable, fix)
_SQLITE_RULES: dict[int, tuple[bool, str]] = {
    sqlite3.SQLITE_FULL: (
        True,
        "free space on the disk that holds {file}; the daemon retries and confirms nothing it has not recorded",
    ),
    sqlite3.SQLITE_BUSY: (True, "another process holds {file} locked (a second daemon?); the daemon retries"),
    sqlite3.SQLITE_LOCKED: (
        True,
        "another process holds {file} locked (a second daemon?); the daemon retries",
    ),
    sqlite3.SQLITE_CORRUPT: (False, DAMAGED_FIX),
    sqlite3.SQLITE_NOTADB: (False, DAMAGED_FIX),
    sqlite3.SQLITE_CANTOPEN: (
        False,
        "let the daemon's user create and write {file} and {folder} (is it a read-only mount, a path under a "
        "regular file, or a folder without write permission?), or point state.url elsewhere; then start again",
    ),
    sqlite3.SQLITE_READONLY: (
        False,
        "{file} is read-only for the daemon: make it and {folder} writable (mode, owner, a read-only mount?), "
        "or point state.url elsewhere; then start again",
    ),
    sqlite3.SQLITE_PERM: (
        False,
        "the daemon may not write {file}: fix its mode, owner or mount options, or point state.url elsewhere",
    ),
    sqlite3.SQLITE_IOERR: (
        False,
        "the disk that holds {file} reported an I/O error: check it (dmesg), then start again",
    ),
}
