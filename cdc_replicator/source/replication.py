"""Walsender I/O only: replication commands, CopyData frames, keepalives and standby status updates.

One ``ReplicationConnection`` is owned by exactly one thread. It speaks the streaming replication
protocol through psycopg's libpq layer (``replication=database``); it knows nothing of pgoutput.
"""

from __future__ import annotations

import logging
import re
import select
import struct
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import NamedTuple

import psycopg
from psycopg import pq
from psycopg.conninfo import conninfo_to_dict

from cdc_replicator.errors import (
    SLOT_STATE_SQLSTATES,
    DecodeError,
    SourceError,
    from_sqlstate,
    replication_start_error,
)
from cdc_replicator.model import Lsn
from cdc_replicator.source import netguard, pgerrors

__all__ = [
    "SESSION_OPTIONS",
    "CreatedSlot",
    "PrimaryKeepalive",
    "ReplicationConnection",
    "SystemIdentity",
    "XLogData",
    "quote_ident",
]

logger = logging.getLogger(__name__)

# Output functions run in the walsender session: fix the text forms both data paths produce.
SESSION_OPTIONS = (
    "-c DateStyle=ISO -c TimeZone=UTC -c extra_float_digits=3 -c bytea_output=hex -c IntervalStyle=postgres "
    "-c lc_monetary=C"
)

_PG_EPOCH_UNIX_US = 946_684_800_000_000
_XLOG_HEADER = struct.Struct("!QQq")
_KEEPALIVE = struct.Struct("!QqB")
_STATUS = struct.Struct("!cQQQqB")


class XLogData(NamedTuple):
    """A CopyData 'w' frame: one pgoutput message that starts at ``data_start``.

    A named tuple (one per message: cheaper to build than a frozen dataclass); ``data_start`` stays
    the raw integer, nothing reads it on the hot path.
    """

    data_start: int
    wal_end: Lsn
    payload: memoryview


@dataclass(frozen=True, slots=True)
class PrimaryKeepalive:
    """A CopyData 'k' frame: the server sent everything before ``wal_end``."""

    wal_end: Lsn
    reply_requested: bool


@dataclass(frozen=True, slots=True)
class SystemIdentity:
    system_id: str
    timeline: int
    xlogpos: Lsn
    dbname: str | None


@dataclass(frozen=True, slots=True)
class CreatedSlot:
    name: str
    consistent_point: Lsn
    snapshot_name: str | None


_IDENT_RE = re.compile(r"^[a-z_][a-z0-9_$]*$")


def quote_ident(name: str) -> str:
    """Quote an identifier for a replication command (they take no bind parameters)."""
    if "\x00" in name:
        raise ValueError("identifier contains NUL")
    return '"' + name.replace('"', '""') + '"'


def _quote_literal(value: str) -> str:
    if "\x00" in value:
        raise ValueError("literal contains NUL")
    return "'" + value.replace("'", "''") + "'"


class ReplicationConnection:
    """A ``replication=database`` connection. Not thread-safe: one owner thread."""

    def __init__(
        self,
        dsn: str,
        *,
        connect_timeout: float = 10.0,
        application_name: str = "cdc-replicator",
        silence_timeout: float = 0.0,
    ):
        params = conninfo_to_dict(dsn)
        extra = str(params.get("options") or "")
        # keepalives, tcp_user_timeout and connect_timeout unless the DSN sets them (netguard)
        conninfo = netguard.network_conninfo(
            dsn,
            connect_timeout=connect_timeout,
            silence_timeout=silence_timeout,
            replication="database",
            application_name=application_name,
            options=f"{extra} {SESSION_OPTIONS}".strip(),
        )
        self._pgconn = pq.PGconn.connect(conninfo.encode())
        if self._pgconn.status != pq.ConnStatus.OK:
            try:
                raise pgerrors.connect_error(
                    conninfo, self._pgconn, context="cannot open a replication connection"
                )
            finally:
                self._pgconn.finish()
        self._streaming = False

    # ---- commands -----------------------------------------------------------------------

    def _command(self, sql: str) -> pq.abc.PGresult:
        try:
            res = self._pgconn.exec_(sql.encode())
        except psycopg.OperationalError as exc:  # the connection broke: no result to read
            raise pgerrors.from_exception(
                exc, context=f"replication command {sql.split()[0]} failed"
            ) from exc
        if res.status not in (pq.ExecStatus.TUPLES_OK, pq.ExecStatus.COMMAND_OK):
            raise pgerrors.from_result(
                res, self._pgconn.error_message, context=f"replication command {sql.split()[0]} failed"
            )
        return res

    def _command_within(self, sql: str, timeout: float, *, waiting_for: str) -> pq.abc.PGresult:
        """``_command``, but cancelled after ``timeout`` seconds (libpq's async API and a cancel)."""
        conn = self._pgconn
        try:
            conn.send_query(sql.encode())
        except psycopg.OperationalError as exc:
            raise pgerrors.from_exception(exc, context=f"{sql.split()[0]} failed") from exc
        try:
            self._wait_for(sql, timeout, waiting_for=waiting_for)
            res = conn.get_result()
            while conn.get_result() is not None:
                pass
        except psycopg.OperationalError as exc:  # the connection broke while we waited
            raise pgerrors.from_exception(
                exc, context=f"replication command {sql.split()[0]} failed"
            ) from exc
        if res is None or res.status not in (pq.ExecStatus.TUPLES_OK, pq.ExecStatus.COMMAND_OK):
            raise pgerrors.from_result(
                res, conn.error_message, context=f"replication command {sql.split()[0]} failed"
            )
        return res

    def _wait_for(self, sql: str, timeout: float, *, waiting_for: str) -> None:
        """Until the command's result is in; past ``timeout`` seconds cancel it and give up."""
        conn = self._pgconn
        deadline = time.monotonic() + timeout
        while conn.is_busy():
            left = deadline - time.monotonic()
            if left <= 0:
                in_recovery = conn.parameter_status(b"in_hot_standby") == b"on"
                self._cancel(within=max(5.0, timeout))
                raise SourceError(
                    f"gave up waiting for {waiting_for} after {timeout:.0f}s",
                    hint=(
                        "a standby creates a slot only after a running-transactions record arrives from the "
                        "primary, which an idle primary may not write for a long time: run on the primary: "
                        "select pg_log_standby_snapshot();  then start again"
                        if in_recovery
                        else "slot creation waits for the transactions running on the server to end: look for "
                        "long ones in pg_stat_activity (state 'idle in transaction'), then start again"
                    ),
                    retryable=False,
                )
            select.select([conn.socket], [], [], min(left, 1.0))
            conn.consume_input()

    def _cancel(self, *, within: float) -> None:
        """Cancel the running command and take its results; a server that does not end it within
        ``within`` seconds loses the connection instead (never wait on a cancel forever)."""
        conn = self._pgconn
        deadline = time.monotonic() + within
        try:
            conn.get_cancel().cancel()
            while True:
                while not conn.is_busy():
                    if conn.get_result() is None:
                        return
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                select.select([conn.socket], [], [], min(left, 1.0))
                conn.consume_input()
        except psycopg.OperationalError:
            pass
        logger.warning("the server did not end a cancelled replication command within %.0fs: closing", within)
        self._streaming = False
        conn.finish()

    @staticmethod
    def _text(res: pq.abc.PGresult, row: int, col: int) -> str | None:
        v = res.get_value(row, col)
        return None if v is None else bytes(v).decode()

    def identify_system(self) -> SystemIdentity:
        res = self._command("IDENTIFY_SYSTEM")
        return SystemIdentity(
            system_id=self._text(res, 0, 0) or "",
            timeline=int(self._text(res, 0, 1) or 0),
            xlogpos=Lsn.parse(self._text(res, 0, 2) or "0/0"),
            dbname=self._text(res, 0, 3),
        )

    def create_slot(
        self, name: str, *, export_snapshot: bool, temporary: bool = False, timeout: float = 300.0
    ) -> CreatedSlot:
        """Create a pgoutput slot; with ``export_snapshot`` the snapshot lives until the next command.

        A ``temporary`` slot disappears with this connection: it is how a snapshot whose position
        is known exactly (its consistent point) is had without touching the daemon's slot.
        Creation waits until the transactions running on the server have ended (on a standby: for
        a running-transactions record from the primary); past ``timeout`` seconds it is cancelled
        with an error that says what it waits for.
        """
        snap = "export" if export_snapshot else "nothing"
        temp = " TEMPORARY" if temporary else ""
        command = f"CREATE_REPLICATION_SLOT {quote_ident(name)}{temp} LOGICAL pgoutput (SNAPSHOT '{snap}')"
        res = self._command_within(command, timeout, waiting_for=f"replication slot {name!r} to be created")
        return CreatedSlot(
            name=self._text(res, 0, 0) or name,
            consistent_point=Lsn.parse(self._text(res, 0, 1) or "0/0"),
            snapshot_name=self._text(res, 0, 2),
        )

    def start(self, slot: str, start: Lsn, options: Mapping[str, str]) -> None:
        """START_REPLICATION; afterwards only ``read`` and ``send_status`` may be used."""
        opts = ", ".join(f"{quote_ident(k)} {_quote_literal(v)}" for k, v in options.items())
        sql = f"START_REPLICATION SLOT {quote_ident(slot)} LOGICAL {start} ({opts})"
        try:
            self._pgconn.send_query(sql.encode())
        except psycopg.OperationalError as exc:
            raise pgerrors.from_exception(exc, context=f"cannot stream from slot {slot!r}") from exc
        res = self._pgconn.get_result()
        if res is None or res.status != pq.ExecStatus.COPY_BOTH:
            raise self._start_error(slot, res)
        self._streaming = True

    def _start_error(self, slot: str, res: pq.abc.PGresult | None) -> SourceError:
        """Why START_REPLICATION failed: by SQLSTATE and, for the codes that need it, the slot's row."""
        err = pgerrors.from_result(
            res, self._pgconn.error_message, context=f"cannot stream from slot {slot!r}"
        )
        while self._pgconn.get_result() is not None:  # the connection is idle again: it can run SQL
            pass
        if err.sqlstate not in SLOT_STATE_SQLSTATES or self._pgconn.status != pq.ConnStatus.OK:
            return err
        # a logical walsender runs simple SQL, without bind parameters: the name is a quoted literal
        query = (
            "select wal_status, to_jsonb(s) ->> 'conflicting', to_jsonb(s) ->> 'invalidation_reason' "  # noqa: S608
            f"from pg_replication_slots s where slot_name = {_quote_literal(slot)}"
        )
        try:
            row = self._pgconn.exec_(query.encode())
        except psycopg.OperationalError:
            return err  # the connection broke: the error START_REPLICATION gave is all there is
        if row.status != pq.ExecStatus.TUPLES_OK:
            return err
        exists = row.ntuples > 0
        lost = exists and (
            self._text(row, 0, 0) == "lost"
            or self._text(row, 0, 1) == "true"
            or self._text(row, 0, 2) is not None
        )
        message = (res.error_field(pq.DiagnosticField.MESSAGE_PRIMARY) or b"") if res is not None else b""
        return replication_start_error(
            err.sqlstate, message.decode(errors="replace"), slot=slot, exists=exists, lost=lost
        )

    # ---- the COPY BOTH stream -------------------------------------------------------------

    def read(self, timeout: float) -> XLogData | PrimaryKeepalive | None:
        """Return the next frame, or None when nothing arrived within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                n, data = self._pgconn.get_copy_data(1)
            except psycopg.OperationalError as exc:  # psycopg raises on libpq's -2 itself
                self._streaming = False
                raise pgerrors.from_exception(exc, context="stream") from exc
            if n > 0:
                return self._frame(memoryview(data))
            if n == 0:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                readable, _, _ = select.select([self._socket()], [], [], left)
                if readable:
                    self._consume()
                continue
            # -1: the server ended the COPY; -2: error
            self._streaming = False
            res = self._pgconn.get_result()
            if res is None or res.status != pq.ExecStatus.FATAL_ERROR:  # no error: the server ended it
                text = self._pgconn.error_message.decode(errors="replace") or "the server ended replication"
                raise from_sqlstate(None, text, context="stream")
            raise pgerrors.from_result(res, self._pgconn.error_message, context="stream")

    def _socket(self) -> int:
        try:
            return self._pgconn.socket
        except psycopg.OperationalError as exc:  # the connection is gone
            raise pgerrors.from_exception(exc, context="stream") from exc

    def _consume(self) -> None:
        try:
            self._pgconn.consume_input()
        except psycopg.OperationalError as exc:
            raise pgerrors.from_exception(exc, context="stream") from exc

    @staticmethod
    def _frame(buf: memoryview) -> XLogData | PrimaryKeepalive:
        if not buf:
            raise DecodeError("empty CopyData frame", offset=0)
        tag = buf[0]
        if tag == 0x77:  # 'w'
            if len(buf) < 1 + _XLOG_HEADER.size:
                raise DecodeError("truncated XLogData header", offset=len(buf))
            start, end, _ = _XLOG_HEADER.unpack_from(buf, 1)
            return XLogData(start, Lsn(end), buf[1 + _XLOG_HEADER.size :])
        if tag == 0x6B:  # 'k'
            if len(buf) < 1 + _KEEPALIVE.size:
                raise DecodeError("truncated keepalive", offset=len(buf))
            end, _, reply = _KEEPALIVE.unpack_from(buf, 1)
            return PrimaryKeepalive(Lsn(end), bool(reply))
        raise DecodeError(f"unknown CopyData frame tag {chr(tag)!r}", offset=0)

    def send_status(self, *, write: Lsn, flush: Lsn, apply: Lsn, reply: bool = False) -> None:
        """Standby status update: ``flush`` must never be ahead of what Delta durably holds."""
        now = int(time.time() * 1_000_000) - _PG_EPOCH_UNIX_US
        msg = _STATUS.pack(b"r", write.value, flush.value, apply.value, now, 1 if reply else 0)
        try:
            if self._pgconn.put_copy_data(msg) != 1 or self._pgconn.flush() != 0:
                raise pgerrors.from_result(None, self._pgconn.error_message, context="send status")
        except psycopg.OperationalError as exc:
            raise pgerrors.from_exception(exc, context="send status") from exc

    def abandon(self) -> None:
        """Close without ending the stream: on a dead path a copy end would only wait."""
        self._streaming = False
        self._pgconn.finish()

    def close(self) -> None:
        """End the stream (best effort) and close the connection."""
        if self._pgconn.status == pq.ConnStatus.OK and self._streaming:
            try:
                self._pgconn.put_copy_end()
                self._pgconn.flush()
            except psycopg.Error:
                logger.debug("copy end failed while closing", exc_info=True)
        self._streaming = False
        self._pgconn.finish()
