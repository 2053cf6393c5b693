"""Read the SQLSTATE of a psycopg, libpq or ADBC failure and raise what ``errors.SQLSTATE_RULES`` says.

Never the message text: it is shown to the operator, in the server's ``lc_messages``, and never read.

A failed *query* carries the server's SQLSTATE (``psycopg.Error.sqlstate``, ADBC's ``sqlstate``,
``psycopg.errors.error_from_result`` for a walsender's PGresult). Without one, the server sent no
error: a PEP 249 ``OperationalError`` is a lost connection (retried), any other driver error is a
client-side bug (not retried).

A failed *connection attempt* carries no SQLSTATE: libpq keeps the server's code to itself
(psycopg's ``OperationalError`` has ``sqlstate`` None and a finished ``pgconn``; a PGresult made
after the failure holds only the text). So a failed connect is decided by what libpq does say:

- ``pgconn.needs_password``: the server asks for a password and none was given: stop (exit 3).
- ``PQping`` of the same conninfo: NO_RESPONSE (nothing listens, the host is unreachable) and
  REJECT (57P03: the server is starting up, shutting down or recovering) are retried;
  NO_ATTEMPT (the conninfo is invalid) stops.
- ping OK: the server accepts connections but refused this one: a wrong password (28P01), no
  pg_hba.conf line (28000), an unknown role or database (3D000), no REPLICATION for the
  walsender (42501), or, reported the same way, a full server (53300). One more connection
  attempt tells a refusal from a server that just came up: if it connects, the failure was
  transient (retried); if it used up ``connect_timeout``, the server or the path is slow
  (retried, as is psycopg's ``ConnectionTimeout``); if it is refused, the daemon stops with exit 3
  and the list of fixes (under systemd ``Restart=on-failure`` starts it again, so a full server
  is retried at the unit's pace: libpq gives no way to tell 53300 from a refusal at connect time).

Client-side refusals without a server answer look to libpq's ping like an unreachable server. TLS
ones never heal (a certificate that fails verification, a wrong ``sslrootcert``, a server without
TLS under ``sslmode=require``): ``source/tls.py`` tells them from a server that is down by probing
with other TLS settings, and they stop with exit 3 (``TlsVerificationFailed``). The rest
(``require_auth``, an unreadable client certificate, an unresolvable host) are retried, with
libpq's message in every retry's log line.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import psycopg
from psycopg import pq
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from cdc_replicator.errors import AuthenticationFailed, SourceError, from_sqlstate
from cdc_replicator.source.tls import tls_failure

__all__ = ["connect_error", "from_exception", "from_result", "sqlstate_of", "translated"]

_REFUSED = (
    "the server runs but refused this connection (see its message): check the role and its password "
    "(source.password_file, PGPASSWORD or PGPASSFILE), a pg_hba.conf line that allows it, the database "
    "name and the role's connect privilege on it (grant connect on database <db> to <role>;), that the "
    "role has LOGIN and REPLICATION (alter role <role> with login replication;); a server with too many "
    "clients needs a higher max_connections / max_wal_senders"
)


def _driver_error(exc: BaseException) -> BaseException:
    """The driver's own error: SQLAlchemy's ``DBAPIError`` wraps it in ``orig``."""
    orig = getattr(exc, "orig", None)
    return orig if isinstance(orig, BaseException) else exc


def sqlstate_of(exc: BaseException) -> str | None:
    """The five-character SQLSTATE a psycopg, ADBC or SQLAlchemy error carries; None without one."""
    code = getattr(_driver_error(exc), "sqlstate", None)
    return code.upper() if isinstance(code, str) and len(code) == 5 else None


def _message(exc: BaseException) -> str:
    if isinstance(exc, psycopg.Error) and exc.diag.message_primary:
        return exc.diag.message_primary
    return str(exc)


def _is_operational(exc: BaseException) -> bool:
    """PEP 249's OperationalError (psycopg's, ADBC's): the database connection failed."""
    return any(cls.__name__ == "OperationalError" for cls in type(exc).__mro__)


def from_exception(
    exc: BaseException, *, context: str, fixes: Mapping[str, str] | None = None
) -> SourceError:
    """The error for a driver exception (psycopg, ADBC, SQLAlchemy's ``DBAPIError``), by SQLSTATE."""
    inner = _driver_error(exc)
    code = sqlstate_of(inner)
    if code is None and not _is_operational(inner):
        return SourceError(
            f"{context}: {type(inner).__name__}: {_message(inner).strip()}",
            hint="the database driver refused this without asking the server: a bug, please report it",
        )
    return from_sqlstate(code, _message(inner), context=context, fixes=fixes)


def from_result(res: pq.abc.PGresult | None, fallback: bytes, *, context: str) -> SourceError:
    """The error for a failed command's PGresult; None, or a result libpq made up: no SQLSTATE.

    ``fallback`` is the connection's error text, for when no result came.
    """
    if res is None or not res.error_field(pq.DiagnosticField.SQLSTATE):
        text = (res.error_message if res is not None else b"") or fallback
        return from_sqlstate(None, text.decode(errors="replace"), context=context)
    return from_exception(psycopg.errors.error_from_result(res), context=context)


def connect_error(
    dsn: str,
    failure: BaseException | pq.abc.PGconn,
    *,
    context: str,
    connect_timeout: float | None = None,
) -> SourceError:
    """The error for a connection attempt to ``dsn`` that failed: ``failure`` is psycopg's (or
    ADBC's, or SQLAlchemy's) exception or libpq's failed PGconn (still open: ``needs_password``
    is read from it). ``connect_timeout`` bounds the ping and the second attempt.

    See the module docstring for what is retried and why.
    """
    if isinstance(failure, BaseException):
        code = sqlstate_of(failure)
        inner = _driver_error(failure)
        message = _message(inner)
        pgconn = getattr(inner, "pgconn", None)
        needs_password = bool(getattr(pgconn, "needs_password", False))
    else:
        code = None
        message = failure.error_message.decode(errors="replace")
        needs_password = failure.needs_password
    if code is not None:
        return from_sqlstate(code, message, context=context)
    if isinstance(failure, psycopg.errors.ConnectionTimeout):  # no answer in time: a slow or lost path
        return from_sqlstate(None, message, context=context)
    text = message.strip().splitlines()[0] if message.strip() else "connection failed"
    if needs_password:
        return AuthenticationFailed(
            f"{context}: {text}",
            hint="the server asks for a password and none was given: set it in source.password_file, "
            "PGPASSWORD or PGPASSFILE",
        )
    conninfo = _with_timeout(dsn, connect_timeout)
    started = time.monotonic()
    answer = pq.PGconn.ping(conninfo.encode())
    if answer == pq.Ping.NO_ATTEMPT:
        return SourceError(
            f"{context}: {text}",
            hint="source.dsn is not a valid connection string: see "
            "https://www.postgresql.org/docs/current/libpq-connect.html#LIBPQ-CONNSTRING",
        )
    if answer == pq.Ping.REJECT:
        return from_sqlstate("57P03", message, context=context)
    # a TLS refusal comes right after the TCP connect; a ping that used up connect_timeout met a
    # silent path (a partition): no probe would get further, so none is made
    if answer == pq.Ping.NO_RESPONSE and not _timed_out(conninfo, connect_timeout, started):
        if tls := tls_failure(conninfo, context=context, text=text):
            return tls
    if answer == pq.Ping.OK and _connects(conninfo, connect_timeout) is False:
        return AuthenticationFailed(f"{context}: {text}", hint=_REFUSED)
    return from_sqlstate(None, message, context=context)  # unreachable, or it came up meanwhile


def _with_timeout(dsn: str, seconds: float | None) -> str:
    if seconds is None:
        return dsn
    try:
        return make_conninfo(dsn, connect_timeout=str(max(1, int(seconds))))
    except psycopg.ProgrammingError:
        return dsn  # not a connection string: the ping says so


def _connects(conninfo: str, timeout: float | None) -> bool | None:
    """One more connection attempt (closed at once): True when it succeeds, False when the server
    refuses it, None when it used up ``connect_timeout`` (a slow server or path: retried)."""
    started = time.monotonic()
    conn = pq.PGconn.connect(conninfo.encode())
    try:
        if conn.status == pq.ConnStatus.OK:
            return True
        return None if _timed_out(conninfo, timeout, started) else False
    finally:
        conn.finish()


def _timed_out(conninfo: str, timeout: float | None, started: float) -> bool:
    """Whether an attempt begun at ``started`` used up ``connect_timeout`` (else the string's own)."""
    if timeout is None:  # the connection string's own, when it has one
        given = conninfo_to_dict(conninfo).get("connect_timeout")
        timeout = float(str(given)) if given is not None and str(given).isdigit() else None
    limit = max(1, int(timeout)) if timeout is not None else None
    return limit is not None and time.monotonic() - started >= limit - 0.1


@contextmanager
def translated(context: str, *, fixes: Mapping[str, str] | None = None) -> Iterator[None]:
    """Inside it, a psycopg error is raised as the error its SQLSTATE says (``from_exception``)."""
    try:
        yield
    except psycopg.Error as exc:
        raise from_exception(exc, context=context, fixes=fixes) from exc
