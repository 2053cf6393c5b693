"""Read the source password from ``source.password_file`` and hand it to libpq inside the DSN.

A password can reach libpq in several ways, none of which puts it on a command line: in
``source.dsn`` (the file or ``CDC_REPLICATOR_SOURCE__DSN``), ``PGPASSWORD``, a pgpass file
(``passfile=`` in the DSN or ``PGPASSFILE``; libpq reads it itself and ignores one others may read),
or ``source.password_file``: a file holding only the password, as systemd credentials
(``LoadCredential=``), Docker and Kubernetes secrets deliver it. That file is read once, at start
(restart to rotate), its first line taken as the password, and the DSN given to every connection
then carries it as ``password=``; the DSN is shown redacted everywhere (``redact.py``).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from cdc_replicator.config.sections import Config
from cdc_replicator.errors import ConfigError

__all__ = ["with_password_file"]

_KEY = "source.password_file"


def with_password_file(cfg: Config, *, label: str = _KEY) -> Config:
    """``cfg`` with the password of ``source.password_file`` in ``source.dsn``; unchanged without one.

    ``label`` names the key in errors (with the environment variable it came from, if so).
    """
    path = cfg.source.password_file
    if not path:
        return cfg
    try:
        given = conninfo_to_dict(cfg.source.dsn).get("password")
    except psycopg.ProgrammingError:
        given = None  # not a connection string: the first connection says so, with libpq's words
    if given:
        raise ConfigError(
            f"config: {label} is set but source.dsn holds a password too; keep one of them "
            "(remove the password from source.dsn)"
        )
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise ConfigError(
            f"config: {label}: file not found: {path} (give the file holding the password)"
        ) from exc
    except OSError as exc:
        raise ConfigError(
            f"config: {label}: cannot read {path}: {exc.strerror or type(exc).__name__} "
            "(the daemon's user must be able to read it)"
        ) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config: {label}: {path} is not UTF-8 text") from exc
    password = text.split("\n", 1)[0].removesuffix("\r")
    if not password:
        raise ConfigError(f"config: {label}: {path} is empty; its first line must be the password")
    try:
        dsn = make_conninfo(cfg.source.dsn, password=password)
    except psycopg.ProgrammingError as exc:
        raise ConfigError(
            "config: source.dsn is not a valid connection string, so source.password_file cannot be "
            "added to it: see https://www.postgresql.org/docs/current/libpq-connect.html#LIBPQ-CONNSTRING"
        ) from exc
    return dataclasses.replace(cfg, source=dataclasses.replace(cfg.source, dsn=dsn))
