"""Converters of raw config values: (value, came from the environment?) → typed value, or ``Invalid``.

A file value arrives as TOML typed it; an environment value is always a string, which the numeric,
boolean and list converters parse first. ``Invalid.expected`` completes the sentence "must be …".
"""

from __future__ import annotations

import difflib
import json
import math
import re
from collections.abc import Callable
from typing import Final, TypeVar, get_args

from cdc_replicator.model import TableId
from cdc_replicator.types.partitions import PartitionColumn, parse_partition

_T = TypeVar("_T")
Converter = Callable[[object, bool], _T]
"""``convert(value, from_env)``: the typed value, or raises ``Invalid``."""

LOG_LEVELS: Final = ("debug", "info", "warning", "error", "critical")


class Invalid(Exception):
    """Raised by a converter: the value is not ``expected`` (e.g. "a positive integer")."""

    def __init__(self, expected: str) -> None:
        super().__init__(expected)
        self.expected = expected


def nonempty_str(value: object, from_env: bool) -> str:
    if not isinstance(value, str) or not value.strip():
        raise Invalid("a non-empty string")
    return value


def any_str(value: object, from_env: bool) -> str:
    if not isinstance(value, str):
        raise Invalid("a string")
    return value


_SLOT_RE: Final = re.compile(r"[a-z0-9_]{1,63}")


def slot_name(value: object, from_env: bool) -> str:
    if not isinstance(value, str) or not _SLOT_RE.fullmatch(value):
        raise Invalid("a replication slot name (1 to 63 lower-case letters, digits and underscores)")
    return value


def pg_name(value: object, from_env: bool) -> str:
    # Longer names would be truncated by PostgreSQL (NAMEDATALEN), so "create if missing" would not find them.
    if not isinstance(value, str) or not value or len(value.encode()) > 63:
        raise Invalid("a PostgreSQL name of 1 to 63 bytes")
    return value


def positive_int(value: object, from_env: bool) -> int:
    expected = "a positive integer"
    if from_env and isinstance(value, str):
        try:
            value = int(value.strip())
        except ValueError:
            raise Invalid(expected) from None
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise Invalid(expected)
    return value


def nonnegative_int(value: object, from_env: bool) -> int:
    if value == 0 or value == "0":
        return 0
    return positive_int(value, from_env)


def _float(value: object, from_env: bool, expected: str) -> float:
    if from_env and isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            raise Invalid(expected) from None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise Invalid(expected)
    return float(value)


def positive_float(value: object, from_env: bool) -> float:
    expected = "a positive number"
    result = _float(value, from_env, expected)
    if result <= 0:
        raise Invalid(expected)
    return result


def nonnegative_float(value: object, from_env: bool) -> float:
    expected = "a number >= 0"
    result = _float(value, from_env, expected)
    if result < 0:
        raise Invalid(expected)
    return result


_ENV_BOOLS: Final = {"true": True, "false": False, "1": True, "0": False}


def boolean(value: object, from_env: bool) -> bool:
    if from_env and isinstance(value, str):
        if value.strip().lower() in _ENV_BOOLS:
            return _ENV_BOOLS[value.strip().lower()]
        raise Invalid("true or false (or 1 or 0)")
    if not isinstance(value, bool):
        raise Invalid("true or false")
    return value


def one_of(literal: object) -> Converter[str]:
    """A converter accepting exactly the strings of ``literal`` (a ``Literal[...]`` type)."""
    options: tuple[str, ...] = get_args(literal)

    def convert(value: object, from_env: bool) -> str:
        if not isinstance(value, str) or value not in options:
            raise Invalid("one of " + ", ".join(json.dumps(o) for o in options))
        return value

    return convert


def log_level(value: object, from_env: bool) -> str:
    if not isinstance(value, str) or value.lower() not in LOG_LEVELS:
        raise Invalid("one of " + ", ".join(json.dumps(o) for o in LOG_LEVELS))
    return value.lower()


def listen(value: object, from_env: bool) -> str:
    expected = "host:port with a port from 0 to 65535 (IPv6 as [::1]:9187)"
    if not isinstance(value, str):
        raise Invalid(expected)
    host, colon, port = value.rpartition(":")
    if not colon or not host or not port.isascii() or not port.isdigit() or int(port) > 65535:
        raise Invalid(expected)
    if ":" in host and not (host.startswith("[") and host.endswith("]")):
        raise Invalid(expected)
    return value


_URL_RE: Final = re.compile(r"[A-Za-z][A-Za-z0-9+._-]*://.*", re.DOTALL)


def sqlalchemy_url(value: object, from_env: bool) -> str:
    if not isinstance(value, str) or not _URL_RE.fullmatch(value):
        raise Invalid("a SQLAlchemy URL such as sqlite:///./state/cdc.db")
    return value


def column_list(value: object, from_env: bool) -> tuple[str, ...]:
    """A column name, a list of names, or (from the environment) names separated by commas."""
    if from_env and isinstance(value, str):
        value = [v.strip() for v in value.split(",")]
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items or not all(isinstance(v, str) and v.strip() for v in items):
        raise Invalid('a column name or a list of column names, e.g. "updated_at" or ["updated_at", "id"]')
    names = tuple(str(v).strip() for v in items)
    if len(set(names)) != len(names):
        raise Invalid("distinct column names")
    return names


def table_name(value: object, from_env: bool) -> TableId:
    expected = "a table name like public.orders (orders means public.orders)"
    if not isinstance(value, str) or not value or value != value.strip():
        raise Invalid(expected)
    try:
        tid = TableId.parse(value)
    except ValueError:
        raise Invalid(expected) from None
    if not tid.schema or not tid.name:
        raise Invalid(expected)
    return tid


_CONNSTRING_DOC: Final = "https://www.postgresql.org/docs/current/libpq-connect.html#LIBPQ-CONNSTRING"
_SSLMODES: Final = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")


def libpq_dsn(value: object, from_env: bool) -> str:
    """A connection string libpq parses (its own parser), with numeric ports and a known sslmode.

    libpq itself would only find a port like ``abc`` or ``99999`` when resolving it, as a lookup
    failure that looks like a network fault and would be retried for ever.
    """
    from psycopg import ProgrammingError  # here: importing the config stays light
    from psycopg.conninfo import conninfo_to_dict

    text = nonempty_str(value, from_env)
    expected = f"a libpq connection string, key=value pairs or a postgresql:// URL (see {_CONNSTRING_DOC})"
    try:
        params = conninfo_to_dict(text)
    except ProgrammingError as exc:
        # libpq quotes a URL it cannot parse: never echo it, a password may be in it
        why = str(exc).strip().splitlines()[0].replace(text, "the URL") if str(exc).strip() else "unparsable"
        raise Invalid(f"{expected}; libpq says: {why}") from None
    for port in str(params.get("port") or "").split(","):
        if port.strip() and not (port.strip().isascii() and port.strip().isdigit() and 0 < int(port) < 65536):
            raise Invalid(f"{expected} whose port is a number from 1 to 65535 (not {port.strip()!r})")
    sslmode = params.get("sslmode")
    if sslmode is not None and sslmode not in _SSLMODES:
        raise Invalid(f"{expected} whose sslmode is one of {', '.join(_SSLMODES)} (not {sslmode!r})")
    return text


# the URL schemes deltalake's object stores understand (a path without "://" is a local directory)
STORAGE_SCHEMES: Final = (
    "file",
    "memory",
    "s3",
    "s3a",
    "gs",
    "az",
    "abfs",
    "abfss",
    "azure",
    "adl",
    "wasb",
    "wasbs",
    "lakefs",
)
_LOCAL_SCHEMES: Final = ("file", "memory")


def storage_uri(value: object, from_env: bool) -> str:
    """A local directory, or a URL with a scheme deltalake knows and (object stores) a bucket."""
    text = nonempty_str(value, from_env)
    if "://" not in text:
        return text
    scheme, _, rest = text.partition("://")
    if scheme.lower() not in STORAGE_SCHEMES:
        close = difflib.get_close_matches(scheme.lower(), STORAGE_SCHEMES, n=1, cutoff=0.5)
        also = f" (did you mean {close[0]}://?)" if close else ""
        raise Invalid(f"a local path or a URL whose scheme is one of {', '.join(STORAGE_SCHEMES)}{also}")
    if scheme.lower() not in _LOCAL_SCHEMES and not rest.partition("/")[0]:
        raise Invalid(f"a URL that names the bucket or container, like {scheme}://bucket/lake")
    if scheme.lower() in _LOCAL_SCHEMES and not rest.strip("/"):
        raise Invalid(f"a URL with a path, like {scheme}:///var/lib/cdc/lake")
    return text


def partition_list(value: object, from_env: bool) -> tuple[PartitionColumn, ...]:
    """``partition_by``: column names or ``year(c)``/``month(c)``/``day(c)``; from the environment,
    separated by commas (``region,day(created_at)``)."""
    expected = 'a list of columns or year(c), month(c), day(c), e.g. ["region", "day(created_at)"]'
    if from_env and isinstance(value, str):
        value = [v.strip() for v in value.split(",")]
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items or not all(isinstance(v, str) for v in items):
        raise Invalid(expected)
    try:
        parsed = tuple(parse_partition(str(v)) for v in items)
    except ValueError as exc:
        raise Invalid(f"{expected} ({exc})") from None
    if len({p.name for p in parsed}) != len(parsed):
        raise Invalid(f"{expected}, each listed once")
    return parsed
