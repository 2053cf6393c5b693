"""Tell a TLS set-up that can never work from an unreachable server, by probing it: no message text read.

libpq reports every client-side TLS refusal without a SQLSTATE, and ``PQping`` answers NO_RESPONSE
for them as for a server that is down: a certificate the client rejects (signed by a CA that
``sslrootcert`` does not hold, or not naming the host), a missing ``sslrootcert`` file, or a server
without TLS under ``sslmode=require``. Waiting heals none of these, so they must stop the daemon
(exit 3) while a server that is really down is still retried. After a ping got no answer, with the
same connection string but for the TLS keys:

1. ``sslmode=require`` and a root certificate path that cannot exist (so libpq verifies nothing):
   the server answers → it is up and speaks TLS, and only the verification failed. Then, under
   ``verify-full``, ``sslmode=verify-ca`` with the configured root: it answers → the CA is right
   and the certificate does not name the host; no answer → the CA is wrong (or its file missing).
2. no answer under 1, ``sslmode=disable``: the server answers → it is up without TLS (``ssl = off``
   on the server, or no TLS version in common).
3. no answer at all: the server or the path is down: ``None``, the caller retries.

A ping is a connection attempt, so a probe that skips verification could talk to an impostor: every
probe goes without a password (an empty ``password`` and a ``passfile`` that cannot exist, so
neither ``PGPASSWORD`` nor a pgpass file is read); the server's request for one is answer enough.
A server that goes down or comes up between two probes can make one attempt misjudged; the next
attempt (the daemon's retry, or systemd's restart) judges again.
"""

from __future__ import annotations

import os
from typing import Final

import psycopg
from psycopg import pq
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from cdc_replicator.errors import SourceError, TlsVerificationFailed

__all__ = ["tls_failure"]

# stat() of a path below /dev/null fails (ENOTDIR) for everyone: libpq then verifies nothing
# under sslmode=require (under verify-* it would refuse), the probe's "no root certificate"
_NO_ROOT: Final = "/dev/null/no-root-certificate"
_NO_FILE: Final = "/dev/null/no-password-file"
_VERIFYING: Final = frozenset({"verify-ca", "verify-full"})
_TLS_MODES: Final = _VERIFYING | {"require"}


def _setting(params: dict[str, object], name: str) -> str:
    """The value libpq uses: the connection string's, else its default (``PGSSLMODE``, ...)."""
    given = params.get(name)
    if given is not None and str(given):
        return str(given)
    for option in pq.Conninfo.get_defaults():
        if option.keyword.decode() == name:
            return option.val.decode() if option.val is not None else ""
    return ""


def _root_file(root: str) -> str:
    """The root certificate file libpq reads: ``sslrootcert``, else ``~/.postgresql/root.crt``."""
    return root or os.path.join(os.path.expanduser("~"), ".postgresql", "root.crt")


def _answers(conninfo: str, **tls: str) -> bool:
    """Whether the server answers a ping made with these TLS keys and no password at all."""
    try:
        probe = make_conninfo(conninfo, password="", passfile=_NO_FILE, **tls)
    except psycopg.ProgrammingError:
        return False
    return pq.PGconn.ping(probe.encode()) == pq.Ping.OK


def tls_failure(conninfo: str, *, context: str, text: str) -> SourceError | None:
    """The error for a connection to ``conninfo`` that got no answer because of TLS, or None.

    Call it only after ``PQping(conninfo)`` answered NO_RESPONSE; ``text`` is libpq's message (shown,
    never read). None means no TLS cause was found: the server or the path is down (retry).
    """
    try:
        params: dict[str, object] = dict(conninfo_to_dict(conninfo))
    except psycopg.ProgrammingError:
        return None
    mode = _setting(params, "sslmode")
    root = _setting(params, "sslrootcert")
    if mode == "require" and root != "system" and os.path.exists(_root_file(root)):
        mode = "verify-ca"  # libpq verifies the chain when a root file exists, for compatibility
    if mode not in _TLS_MODES:
        return None
    host = str(params.get("host") or "the host")
    if _answers(conninfo, sslmode="require", sslrootcert=_NO_ROOT):
        if mode not in _VERIFYING:
            return None  # not a verification failure: nothing this module knows about
        if mode == "verify-full" and _answers(conninfo, sslmode="verify-ca"):
            return TlsVerificationFailed(
                f"{context}: TLS verification of the server's certificate failed: it is signed by the "
                f"CA in sslrootcert but does not name the host {host!r}: {text}",
                hint=f"connect with a host name the server's certificate names (host= in source.dsn; "
                "with hostaddr= the certificate is checked against host=), or give the server a "
                f"certificate whose subjectAltName holds {host!r}",
            )
        where = "sslrootcert" if root and root != "system" else "the default root certificate file"
        missing = root != "system" and not os.path.exists(_root_file(root))
        problem = (
            f"the root certificate file {_root_file(root)!r} does not exist"
            if missing
            else f"{where} ({'the system CAs' if root == 'system' else repr(_root_file(root))}) "
            "does not hold the CA that signed the server's certificate"
        )
        return TlsVerificationFailed(
            f"{context}: TLS verification of the server's certificate failed: {problem}: {text}",
            hint="set sslrootcert= in source.dsn (or PGSSLROOTCERT) to the PEM file of the CA that "
            "signed the server's certificate (its ssl_cert_file was issued by that CA)",
        )
    if _answers(conninfo, sslmode="disable"):
        return TlsVerificationFailed(
            f"{context}: the server answers without TLS but refused a TLS connection (sslmode={mode}): {text}",
            hint="turn TLS on at the server (ssl = on with ssl_cert_file and ssl_key_file), or check "
            "ssl_min_protocol_version on both sides; sslmode in source.dsn asks for TLS",
        )
    return None
