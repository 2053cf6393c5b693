"""The one error tree: every error says what is wrong, how to fix it, and whether a retry can help.

PostgreSQL's errors are told apart by SQLSTATE, never by their text (a server with another
``lc_messages`` words them differently): ``SQLSTATE_RULES`` maps a code, or its two-character
class, to the error type, whether waiting can heal it and the fix; ``from_sqlstate`` applies it.
Only what can heal by waiting is retried: a lost connection (class 08, or no SQLSTATE at all: a
dropped socket), the server shutting down, starting or ending the session (class 57 but 57P04,
database dropped, and 57014, a cancelled statement: a timeout that would fire again), too many
connections (53300), the slot held by another process (55006), a lock or a conflict (55P03,
40001, 40P01), a session ended for idling in a transaction (25P03). Everything else stops with
exit 3 (4 for a slot that needs a re-sync) and its fix. Pure: no I/O, no driver; ``source/pgerrors.py`` reads the SQLSTATE.
"""

from __future__ import annotations

import errno
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = [
    "SLOT_STATE_SQLSTATES",
    "SQLSTATE_RULES",
    "AuthenticationFailed",
    "ConfigError",
    "ContractViolation",
    "DecodeError",
    "LakeBehind",
    "LakeDiffers",
    "MaintenanceFailed",
    "MissingKey",
    "MissingPrivilege",
    "NO_SQLSTATE",
    "OTHER_SQLSTATE",
    "PositionMismatch",
    "ReplicatorError",
    "ServerLimit",
    "SinkError",
    "SlotInUse",
    "SlotInvalidated",
    "SourceError",
    "StateStoreError",
    "STORAGE_ERRNO_RULES",
    "StorageErrnoRule",
    "StorageFull",
    "SourceUnavailable",
    "SqlstateRule",
    "TlsVerificationFailed",
    "WalLevelNotLogical",
    "from_os_errno",
    "from_sqlstate",
    "replication_start_error",
    "sqlstate_rule",
]


class ReplicatorError(Exception):
    """Root of every error the replicator raises on purpose.

    ``hint`` tells the operator how to fix it (often the SQL or command to run); ``retryable``
    says whether the daemon may retry by itself; ``exit_code`` is what the CLI exits with.
    """

    exit_code: int = 1
    retryable: bool = False

    def __init__(self, message: str, *, hint: str = "", retryable: bool | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        if retryable is not None:
            self.retryable = retryable

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\n  hint: {self.hint}"


class ConfigError(ReplicatorError):
    """The configuration is invalid: a key is missing, of the wrong type or out of range."""

    exit_code = 2


class SourceError(ReplicatorError):
    """The source database refused, or is not set up the way replication needs.

    ``sqlstate``: the server's SQLSTATE when the error came from one (None otherwise).
    """

    exit_code = 3
    sqlstate: str | None = None


class SourceUnavailable(SourceError):
    """The source cannot be reached right now (connection refused, dropped, server restarting)."""

    retryable = True


class WalLevelNotLogical(SourceError):
    """wal_level is not 'logical', so no logical replication slot can exist."""


class MissingKey(SourceError):
    """A configured table has neither a primary key nor REPLICA IDENTITY FULL."""


class SlotInUse(SourceError):
    """Another process streams from the replication slot (probably a second replicator)."""

    retryable = True


class AuthenticationFailed(SourceError):
    """The server does not let the role in: password, pg_hba.conf, LOGIN, unknown role."""


class TlsVerificationFailed(SourceError):
    """TLS to the server can never succeed as configured: its certificate fails verification
    (``sslrootcert``, the host name) or it does not speak TLS. Waiting does not heal it."""


class MissingPrivilege(SourceError):
    """The role lacks a privilege a statement needs (SQLSTATE 42501)."""


class ServerLimit(SourceError):
    """A server resource or configured limit is exhausted (e.g. every replication slot is in use)."""


class SlotInvalidated(SourceError):
    """The replication slot lost WAL it needed (wal_status = lost): changes are gone for good."""

    exit_code = 4


class PositionMismatch(SourceError):
    """The slot and the positions recorded in Delta disagree; streaming would lose or guess data."""

    exit_code = 4


class DecodeError(ReplicatorError):
    """A wire message could not be decoded; ``offset`` is the byte where decoding failed."""

    exit_code = 5

    def __init__(self, message: str, *, offset: int = -1, hint: str = "") -> None:
        where = f" at byte {offset}" if offset >= 0 else ""
        super().__init__(f"{message}{where}", hint=hint)
        self.offset = offset


class ContractViolation(ReplicatorError):
    """The source schema changed in a way the table's contract does not accept."""

    exit_code = 6


class SinkError(ReplicatorError):
    """Writing to a Delta table failed."""

    exit_code = 7


class StorageFull(SinkError):
    """The lake's storage has no room left (a full disk, a quota): waiting until space is freed heals it."""

    retryable = True


class MaintenanceFailed(SinkError):
    """A maintenance step (``step``: properties, compact, zorder, checkpoint, vacuum) of a table failed.

    The daemon logs it and tries again at the table's next interval; the stream goes on.
    """

    retryable = True

    def __init__(self, message: str, *, step: str, hint: str = "", retryable: bool | None = None) -> None:
        super().__init__(message, hint=hint, retryable=retryable)
        self.step = step


class StateStoreError(ReplicatorError):
    """The state store (``[state] url``) cannot be opened, read or written: unwritable, corrupt, missing.

    Exit 3, like a source that cannot be used: the daemon cannot record what it applied, so it
    must not go on (it would confirm what it cannot remember).
    """

    exit_code = 3


class LakeDiffers(ReplicatorError):
    """``verify`` found Delta rows that differ from the source (missing, extra or other values)."""

    exit_code = 8


class LakeBehind(ReplicatorError):
    """``verify`` could not compare: Delta did not reach the source snapshot's position in time.

    Exit 3 like a source that cannot be read: the source cannot be read at a point Delta holds.
    """

    exit_code = 3


# ---- PostgreSQL errors by SQLSTATE ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SqlstateRule:
    """What a SQLSTATE means here: ``code`` is five characters, or a class of codes (two).

    The exit code is the error type's (3 for every ``SourceError`` of this table).
    """

    code: str
    error: type[SourceError]
    retryable: bool
    fix: str


_RECHECK = "check that PostgreSQL is running and reachable at source.dsn; the daemon retries"

SQLSTATE_RULES: tuple[SqlstateRule, ...] = (
    # ---- can heal by waiting: retried (with backoff, until source.retry_give_up_seconds)
    SqlstateRule(
        "08P01",
        SourceError,
        False,
        "the server saw a protocol violation: check the PostgreSQL and psycopg versions, then report it",
    ),
    SqlstateRule("08", SourceUnavailable, True, _RECHECK),
    SqlstateRule(
        "57P04", SourceError, False, "the source database was dropped: check the database in source.dsn"
    ),
    SqlstateRule(
        "57014",
        SourceError,
        False,
        "a statement was cancelled by a statement timeout or pg_cancel_backend: raise the timeout "
        "(watermark.statement_timeout_seconds in watermark mode; else the role's or database's setting: "
        "alter role <role> set statement_timeout = 0), then start again",
    ),
    SqlstateRule(
        "57",
        SourceUnavailable,
        True,
        "the server is shutting down, restarting or recovering; the daemon retries until it accepts connections",
    ),
    SqlstateRule(
        "53300",
        SourceUnavailable,
        True,
        "the server has no free connection (max_connections; max_wal_senders for replication); the daemon "
        "retries. Close idle sessions or raise the limit",
    ),
    SqlstateRule(
        "55006",
        SlotInUse,
        True,
        "another process streams from this slot; stop the other cdc-replicator (or consumer) first. "
        "The daemon retries until the slot is free.",
    ),
    SqlstateRule(
        "55P03",
        SourceUnavailable,
        True,
        "another session holds a lock this needs; the daemon retries. Look for long transactions in "
        "pg_stat_activity",
    ),
    SqlstateRule(
        "40001",
        SourceUnavailable,
        True,
        "the statement conflicted with another transaction (or with recovery, on a standby); the daemon retries",
    ),
    SqlstateRule("40P01", SourceUnavailable, True, "a deadlock with another session; the daemon retries"),
    SqlstateRule(
        "25P03",
        SourceUnavailable,
        True,
        "the server ended a session left idle in a transaction (idle_in_transaction_session_timeout) while "
        "the daemon wrote to Delta; the daemon retries. If it repeats, raise it for the role: "
        "alter role <role> set idle_in_transaction_session_timeout = 0",
    ),
    # ---- waiting does not fix these: stop, exit 3, with the fix
    SqlstateRule(
        "53400",
        ServerLimit,
        False,
        "raise max_replication_slots (a restart is needed) or drop an unused slot "
        "(select slot_name from pg_replication_slots where not active)",
    ),
    SqlstateRule(
        "53",
        ServerLimit,
        False,
        "the server ran out of a resource (disk, memory or a configured limit; see the message): free it "
        "or raise the limit, then start again",
    ),
    SqlstateRule(
        "28P01",
        AuthenticationFailed,
        False,
        "the password of the role in source.dsn is wrong: give the right one (in source.dsn, source.password_file, PGPASSWORD or PGPASSFILE)",
    ),
    SqlstateRule(
        "28",
        AuthenticationFailed,
        False,
        "the server does not let the role in: check the role in source.dsn, that it has LOGIN, and a "
        "pg_hba.conf line that allows it (a logical replication connection matches the lines of its database)",
    ),
    SqlstateRule("3D000", SourceError, False, "the database in source.dsn does not exist: check its name"),
    SqlstateRule(
        "42501",
        MissingPrivilege,
        False,
        "grant the role in source.dsn what it lacks, e.g. grant usage on schema <schema> to <role>; "
        "grant select on <table> to <role>;",
    ),
    SqlstateRule("42P01", SourceError, False, "a table is missing: create it, or remove it from [[tables]]"),
    SqlstateRule(
        "42704",
        SourceError,
        False,
        "an object the replicator uses is missing (see the message): the daemon creates a missing "
        "publication when it starts; a dropped slot needs a re-sync: cdc-replicator --config FILE snapshot",
    ),
    SqlstateRule(
        "55000",
        SourceError,
        False,
        "the server is not in the state this needs (see the message): change that, then start again",
    ),
    SqlstateRule(
        "25006",
        SourceError,
        False,
        "the server is read-only here (a standby?): point source.dsn at the primary",
    ),
)
_BY_CODE = {r.code: r for r in SQLSTATE_RULES}
# any other SQLSTATE: a refusal that waiting does not change
OTHER_SQLSTATE = SqlstateRule(
    "",
    SourceError,
    False,
    "fix what the message says (SQLSTATE codes: https://www.postgresql.org/docs/current/errcodes-appendix.html), "
    "then start again",
)
# no SQLSTATE: the server sent no error, the socket dropped (or it never answered)
NO_SQLSTATE = SqlstateRule("", SourceUnavailable, True, _RECHECK)


def sqlstate_rule(sqlstate: str | None) -> SqlstateRule:
    """The rule for ``sqlstate``: its own row, else its class's, else ``OTHER_SQLSTATE``."""
    if not sqlstate:
        return NO_SQLSTATE
    code = sqlstate.upper()
    return _BY_CODE.get(code) or _BY_CODE.get(code[:2]) or OTHER_SQLSTATE


def _first_line(message: str) -> str:
    lines = message.strip().splitlines()
    return lines[0].strip() if lines else ""


def from_sqlstate(
    sqlstate: str | None, message: str, *, context: str, fixes: Mapping[str, str] | None = None
) -> SourceError:
    """The error for a failure with ``sqlstate`` (None: no server error, e.g. a dropped socket).

    ``message`` is the server's (or libpq's) text: only shown, never read. ``context`` says what
    failed, in our words. ``fixes``: a more precise fix the caller knows, by code or class
    (e.g. ``{"42501": "grant select on public.t to app;"}``), in place of the table's.
    """
    rule = sqlstate_rule(sqlstate)
    code = (sqlstate or "").upper()
    known = fixes or {}
    fix = (known.get(code) or known.get(code[:2])) if code else None
    text = _first_line(message) or ("connection lost" if not code else "(no message)")
    suffix = f" (SQLSTATE {code})" if code else ""
    err = rule.error(f"{context}: {text}{suffix}", hint=fix or rule.fix, retryable=rule.retryable)
    err.sqlstate = code or None
    return err


# the codes whose meaning, when START_REPLICATION fails, depends on the slot's row in the catalog
SLOT_STATE_SQLSTATES = frozenset({"42704", "55000"})


def replication_start_error(
    sqlstate: str | None, message: str, *, slot: str, exists: bool | None, lost: bool
) -> SourceError:
    """START_REPLICATION on ``slot`` failed: the catalog decides the codes that need it, never the text.

    ``exists``: whether pg_replication_slots lists the slot now (None: not looked up); ``lost``:
    it was invalidated (wal_status 'lost', conflicting, an invalidation_reason). 42704 or 55000
    for a slot that is gone: dropped while the daemon ran; 55000 for an invalidated slot: its WAL
    is gone. Any other failure follows ``SQLSTATE_RULES``.
    """
    context = f"cannot stream from slot {slot!r}"
    code = (sqlstate or "").upper()
    err: SourceError
    if code in SLOT_STATE_SQLSTATES and exists is False:
        err = PositionMismatch(
            f"{context}: the slot no longer exists: {_first_line(message)}",
            hint="the slot was dropped while the daemon ran; re-sync with: cdc-replicator --config FILE snapshot",
        )
    elif code == "55000" and lost:
        err = SlotInvalidated(
            f"{context}: the replication slot was invalidated and the WAL it needed is gone: "
            f"{_first_line(message)}",
            hint="every table must be re-synced: cdc-replicator --config FILE snapshot "
            "(it recreates the slot and reloads the tables)",
        )
    else:
        return from_sqlstate(sqlstate, message, context=context)
    err.sqlstate = code
    return err


# ---- storage errors by errno ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StorageErrnoRule:
    """What an OS error number from the lake's storage means: retry (``StorageFull``) or stop, and the fix."""

    errno: int
    name: str
    error: type[SinkError]
    what: str
    fix: str


_FREE_SPACE = (
    "free space on the file system that holds {path} (or raise its quota): a running daemon retries with "
    "back-off and goes on where it stopped; a snapshot command resumes when it is run again"
)

# Only what waiting can heal is retried: a full disk or quota, a full file table. Everything else
# keeps the error's own policy; permission and read-only errors stop with their fix.
STORAGE_ERRNO_RULES: tuple[StorageErrnoRule, ...] = (
    StorageErrnoRule(errno.ENOSPC, "ENOSPC", StorageFull, "no space left on device", _FREE_SPACE),
    StorageErrnoRule(errno.EDQUOT, "EDQUOT", StorageFull, "disk quota exceeded", _FREE_SPACE),
    StorageErrnoRule(
        errno.ENFILE,
        "ENFILE",
        StorageFull,
        "too many open files in the system",
        "close files other processes hold open, or raise fs.file-max; the daemon retries",
    ),
    StorageErrnoRule(
        errno.EACCES,
        "EACCES",
        SinkError,
        "permission denied",
        "let the daemon's user write {path} (owner or mode), then start again",
    ),
    StorageErrnoRule(
        errno.EPERM,
        "EPERM",
        SinkError,
        "operation not permitted",
        "let the daemon's user write {path} (owner, mode or mount options), then start again",
    ),
    StorageErrnoRule(
        errno.EROFS,
        "EROFS",
        SinkError,
        "read-only file system",
        "mount the file system that holds {path} read-write (or move target.uri), then start again",
    ),
)
_BY_ERRNO = {r.errno: r for r in STORAGE_ERRNO_RULES}


def from_os_errno(code: int | None, *, context: str, path: str) -> SinkError | None:
    """The error for a storage failure with OS error ``code`` at ``path``; None: no rule (keep the caller's).

    ``context`` says what failed, in our words (e.g. "merge into public.t up to 0/16B37A0").
    """
    rule = _BY_ERRNO.get(code) if code is not None else None
    if rule is None:
        return None
    return rule.error(f"{context}: {rule.what} ({rule.name}) at {path}", hint=rule.fix.format(path=path))
