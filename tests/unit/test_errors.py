"""PostgreSQL errors are told apart by SQLSTATE, never by their text: one table says what each means.

Only what can heal by waiting is retried; everything else stops with exit 3 (4: a re-sync is
needed) and its fix. The driver side (``source/pgerrors.py``) reads the SQLSTATE from psycopg,
ADBC and SQLAlchemy errors.
"""

from __future__ import annotations

import pickle

import adbc_driver_manager
import psycopg
import pytest
from psycopg import pq
from sqlalchemy.exc import DBAPIError

from cdc_replicator.errors import (
    NO_SQLSTATE,
    OTHER_SQLSTATE,
    SQLSTATE_RULES,
    AuthenticationFailed,
    MissingPrivilege,
    PositionMismatch,
    ServerLimit,
    SlotInUse,
    SlotInvalidated,
    SourceError,
    SourceUnavailable,
    from_sqlstate,
    replication_start_error,
    sqlstate_rule,
)
from cdc_replicator.source import pgerrors

RETRY, STOP = True, False

# sqlstate, error type, retried, exit code, words of the fix
CASES = [
    (None, SourceUnavailable, RETRY, 3, "check that postgresql is running"),  # a dropped socket
    ("08006", SourceUnavailable, RETRY, 3, "check that postgresql is running"),  # connection failure
    ("08000", SourceUnavailable, RETRY, 3, "reachable at source.dsn"),  # the class decides
    ("08P01", SourceError, STOP, 3, "protocol violation"),
    ("57P01", SourceUnavailable, RETRY, 3, "shutting down"),  # admin shutdown
    ("57P02", SourceUnavailable, RETRY, 3, "restarting"),  # crash shutdown
    ("57P03", SourceUnavailable, RETRY, 3, "recovering"),  # cannot connect now
    ("57P04", SourceError, STOP, 3, "database was dropped"),
    ("57014", SourceError, STOP, 3, "statement_timeout = 0"),  # query cancelled: a timeout fires again
    ("25P03", SourceUnavailable, RETRY, 3, "idle_in_transaction_session_timeout"),  # idle session ended
    ("53300", SourceUnavailable, RETRY, 3, "max_connections"),  # too many connections
    ("55006", SlotInUse, RETRY, 3, "stop the other cdc-replicator"),  # slot active for another PID
    ("55P03", SourceUnavailable, RETRY, 3, "pg_stat_activity"),  # lock not available
    ("40001", SourceUnavailable, RETRY, 3, "conflicted"),  # serialization failure, recovery conflict
    ("40P01", SourceUnavailable, RETRY, 3, "deadlock"),
    ("53400", ServerLimit, STOP, 3, "raise max_replication_slots"),  # all replication slots in use
    ("53100", ServerLimit, STOP, 3, "free it or raise the limit"),  # disk full
    ("28P01", AuthenticationFailed, STOP, 3, "pgpassword or pgpassfile"),  # wrong password
    ("28000", AuthenticationFailed, STOP, 3, "pg_hba.conf"),  # no pg_hba.conf entry, no LOGIN
    ("3D000", SourceError, STOP, 3, "database in source.dsn does not exist"),
    ("42501", MissingPrivilege, STOP, 3, "grant select on"),  # insufficient privilege
    ("42P01", SourceError, STOP, 3, "remove it from [[tables]]"),
    ("42704", SourceError, STOP, 3, "creates a missing publication"),  # undefined object
    ("55000", SourceError, STOP, 3, "not in the state"),  # object not in prerequisite state
    ("25006", SourceError, STOP, 3, "point source.dsn at the primary"),  # read-only transaction
    ("XX000", SourceError, STOP, 3, "errcodes-appendix"),  # internal error: not in the table
    ("22p02", SourceError, STOP, 3, "errcodes-appendix"),  # lower case is the same code
]


@pytest.mark.parametrize(
    ("sqlstate", "kind", "retried", "exit_code", "fix"), CASES, ids=[str(c[0]) for c in CASES]
)
def test_each_sqlstate_maps_to_its_error_type_retry_decision_exit_code_and_fix(
    sqlstate: str | None, kind: type[SourceError], retried: bool, exit_code: int, fix: str
) -> None:
    err = from_sqlstate(sqlstate, "the server's message", context="cannot do it")
    assert type(err) is kind
    assert err.retryable is retried
    assert err.exit_code == exit_code
    assert fix in err.hint.lower()
    assert err.sqlstate == (sqlstate.upper() if sqlstate else None)


def test_only_what_can_heal_by_waiting_is_retried() -> None:
    retried = {r.code for r in SQLSTATE_RULES if r.retryable}
    assert retried == {"08", "57", "53300", "55006", "55P03", "40001", "40P01", "25P03"}
    assert NO_SQLSTATE.retryable and not OTHER_SQLSTATE.retryable


def test_every_rule_names_a_code_or_a_class_once_and_says_how_to_fix_it() -> None:
    codes = [r.code for r in SQLSTATE_RULES]
    assert len(codes) == len(set(codes))
    for r in SQLSTATE_RULES:
        assert len(r.code) in (2, 5) and r.code == r.code.upper(), r
        assert r.fix and issubclass(r.error, SourceError), r
        assert r.error.exit_code == 3, r
    # a code of its own wins over its class
    assert sqlstate_rule("57P04").code == "57P04" and sqlstate_rule("57P05").code == "57"


def test_the_message_holds_our_context_the_servers_first_line_and_the_code() -> None:
    err = from_sqlstate(
        "53400",
        "all replication slots are in use\nHINT:  Free one or increase max_replication_slots.",
        context="replication command CREATE_REPLICATION_SLOT failed",
    )
    assert err.message == (
        "replication command CREATE_REPLICATION_SLOT failed: all replication slots are in use (SQLSTATE 53400)"
    )
    lost = from_sqlstate(None, "", context="stream")
    assert lost.message == "stream: connection lost"


def test_the_text_is_never_read_the_same_code_in_german_is_the_same_error() -> None:
    english = from_sqlstate("53400", "all replication slots are in use", context="c")
    german = from_sqlstate("53400", "alle Replikations-Slots sind in Benutzung", context="c")
    assert (type(german), german.retryable, german.hint) == (type(english), english.retryable, english.hint)
    # and a text that sounds like another error does not change it
    misleading = from_sqlstate("42501", "connection refused: is the server running?", context="c")
    assert isinstance(misleading, MissingPrivilege) and not misleading.retryable


def test_a_callers_fix_replaces_the_tables_for_its_code_or_class_only() -> None:
    fixes = {"42501": "grant select on public.t to app;", "08": "never shown"}
    denied = from_sqlstate("42501", "permission denied", context="c", fixes=fixes)
    assert denied.hint == "grant select on public.t to app;"
    assert from_sqlstate("08006", "gone", context="c", fixes=fixes).hint == "never shown"
    assert from_sqlstate("53400", "full", context="c", fixes=fixes).hint == sqlstate_rule("53400").fix
    assert from_sqlstate(None, "gone", context="c", fixes=fixes).hint == NO_SQLSTATE.fix


def test_an_error_crosses_the_reader_process_boundary_with_its_hint_retry_decision_and_code() -> None:
    err = pickle.loads(pickle.dumps(from_sqlstate("55006", "slot is active for PID 7", context="c")))
    assert isinstance(err, SlotInUse)
    assert (err.retryable, err.sqlstate, err.hint) == (True, "55006", sqlstate_rule("55006").fix)


# ---- START_REPLICATION: codes whose meaning depends on the slot ------------------------------


@pytest.mark.parametrize(
    ("sqlstate", "exists", "lost", "kind", "exit_code", "retried"),
    [
        ("55000", True, True, SlotInvalidated, 4, STOP),  # can no longer get changes: WAL removed
        ("42704", False, False, PositionMismatch, 4, STOP),  # the slot was dropped
        ("55000", False, False, PositionMismatch, 4, STOP),  # dropped between the error and the look
        ("55000", True, False, SourceError, 3, STOP),  # e.g. created in another database
        ("42704", True, False, SourceError, 3, STOP),  # something else is missing
        ("55000", None, False, SourceError, 3, STOP),  # the catalog could not be read
        ("55006", True, False, SlotInUse, 3, RETRY),  # active for another PID
        ("57P01", None, False, SourceUnavailable, 3, RETRY),  # the walsender was terminated
        (None, None, False, SourceUnavailable, 3, RETRY),  # the socket dropped
    ],
)
def test_a_failed_start_replication_is_decided_by_sqlstate_and_the_slots_catalog_row(
    sqlstate: str | None,
    exists: bool | None,
    lost: bool,
    kind: type[SourceError],
    exit_code: int,
    retried: bool,
) -> None:
    err = replication_start_error(sqlstate, "any text at all", slot="cdc", exists=exists, lost=lost)
    assert type(err) is kind
    assert (err.exit_code, err.retryable) == (exit_code, retried)
    assert "cannot stream from slot 'cdc'" in err.message
    if exit_code == 4:
        assert "cdc-replicator --config FILE snapshot" in err.hint


# ---- the driver side: where the SQLSTATE comes from --------------------------------------------


def test_psycopg_adbc_and_sqlalchemy_errors_give_their_sqlstate() -> None:
    slots_full = psycopg.errors.lookup("53400")("alle Replikations-Slots sind in Benutzung")
    assert pgerrors.sqlstate_of(slots_full) == "53400"
    adbc = adbc_driver_manager.ProgrammingError(
        "UNAUTHORIZED: keine Berechtigung",
        status_code=adbc_driver_manager.AdbcStatusCode.UNAUTHORIZED,
        sqlstate="42501",
    )
    assert pgerrors.sqlstate_of(adbc) == "42501"
    wrapped = DBAPIError("select 1", None, psycopg.errors.lookup("55P03")("lock"))
    assert pgerrors.sqlstate_of(wrapped) == "55P03"
    assert pgerrors.sqlstate_of(psycopg.OperationalError("server closed the connection")) is None

    assert isinstance(pgerrors.from_exception(slots_full, context="c"), ServerLimit)
    assert isinstance(pgerrors.from_exception(adbc, context="c"), MissingPrivilege)
    assert pgerrors.from_exception(wrapped, context="c").retryable


def test_without_a_sqlstate_a_lost_connection_is_retried_and_a_client_side_error_is_not() -> None:
    lost = pgerrors.from_exception(psycopg.OperationalError("consuming input failed"), context="c")
    assert isinstance(lost, SourceUnavailable) and lost.retryable
    adbc_io = adbc_driver_manager.OperationalError(
        "IO: socket", status_code=adbc_driver_manager.AdbcStatusCode.IO
    )
    assert pgerrors.from_exception(adbc_io, context="c").retryable
    bug = pgerrors.from_exception(
        psycopg.ProgrammingError("the query has 1 placeholder but 2 parameters"), context="c"
    )
    assert type(bug) is SourceError and not bug.retryable and "bug" in bug.hint


def test_a_connection_nothing_answers_is_retried_and_says_to_check_the_server() -> None:
    conninfo = "host=127.0.0.1 port=1 connect_timeout=2"  # a real libpq attempt: nothing listens there
    failed = pq.PGconn.connect(conninfo.encode())
    try:
        err = pgerrors.connect_error(conninfo, failed, context="cannot connect")
    finally:
        failed.finish()
    assert type(err) is SourceUnavailable and err.retryable
    assert "reachable at source.dsn" in err.hint


def test_a_connection_string_libpq_cannot_parse_stops_and_points_at_the_syntax() -> None:
    err = pgerrors.connect_error("not a = valid = conninfo", RuntimeError("bad"), context="cannot connect")
    assert not err.retryable and "libpq-connstring" in err.hint.lower()
