"""Hide secrets in config values shown to people: DSN passwords and secret-looking storage options."""

from __future__ import annotations

import re
from typing import Final

_URL_SCHEME: Final = re.compile(r"postgres(?:ql)?://", re.IGNORECASE)
_URL_USERINFO: Final = re.compile(
    r"(?P<scheme>postgres(?:ql)?://)(?P<user>[^@/:]*):(?P<password>[^@/]+)@", re.IGNORECASE
)
_URL_PASSWORD_PARAM: Final = re.compile(r"(?P<key>[?&]password=)[^&#]*", re.IGNORECASE)
_KV_PASSWORD: Final = re.compile(r"(?P<key>\bpassword\s*=\s*)(?:'(?:[^'\\]|\\.)*'?|[^\s']\S*)", re.IGNORECASE)
_SECRET_OPTION: Final = re.compile(r"secret|password|token|key|credential|sas", re.IGNORECASE)


def redact_dsn(dsn: str) -> str:
    """``dsn`` with any password replaced by ``***``, for logs.

    Handles the URL form (``postgresql://u:secret@h/db``, ``...?password=secret``) and the
    key=value form (``password=secret``, ``password = 'se cret'``); a DSN without one is unchanged.
    """
    if _URL_SCHEME.match(dsn):
        # libpq ends the user info at the first '@' or '/', so a password never holds either unencoded.
        dsn = _URL_USERINFO.sub(lambda m: f"{m.group('scheme')}{m.group('user')}:***@", dsn, count=1)
        return _URL_PASSWORD_PARAM.sub(lambda m: f"{m.group('key')}***", dsn)
    return _KV_PASSWORD.sub(lambda m: f"{m.group('key')}***", dsn)


def redact_options(options: tuple[tuple[str, str], ...]) -> tuple[tuple[str, str], ...]:
    """``options`` with the value of each secret-looking name (``*key*``, ``*token*``…) shown as ``***``."""
    return tuple((k, "***" if _SECRET_OPTION.search(k) else v) for k, v in options)
