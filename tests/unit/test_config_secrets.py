"""Specification of source.password_file: the password read from a file, handed to libpq in the DSN, never shown."""

from __future__ import annotations

from pathlib import Path

import pytest
from psycopg.conninfo import conninfo_to_dict

from cdc_replicator.config import load_config, redact_dsn
from cdc_replicator.errors import ConfigError

SECRET = "s3cr3t 'quoted' \\ pass"
BASE = '[target]\nuri = "./lake"\n[[tables]]\nname = "public.orders"\n'


def _config(tmp_path: Path, dsn: str, password_file: Path | None) -> Path:
    path = tmp_path / "cdc.toml"
    line = f'password_file = "{password_file}"\n' if password_file is not None else ""
    path.write_text(f'[source]\ndsn = "{dsn}"\n{line}' + BASE, encoding="utf-8")
    return path


def test_the_first_line_of_the_file_becomes_the_password_and_repr_hides_it(tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text(SECRET + "\nignored second line\n")
    cfg = load_config(
        _config(tmp_path, "postgresql://cdc@db.example.com/app?sslmode=verify-full", secret), env={}
    )

    params = conninfo_to_dict(cfg.source.dsn)
    assert params["password"] == SECRET
    assert params["host"] == "db.example.com" and params["sslmode"] == "verify-full"
    assert "s3cr3t" not in repr(cfg) and "s3cr3t" not in redact_dsn(cfg.source.dsn)


def test_a_windows_line_end_is_not_part_of_the_password(tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_bytes(b"pw-crlf\r\n")
    cfg = load_config(_config(tmp_path, "dbname=app", secret), env={})
    assert conninfo_to_dict(cfg.source.dsn)["password"] == "pw-crlf"


def test_without_the_key_the_dsn_is_kept_as_written(tmp_path: Path) -> None:
    cfg = load_config(_config(tmp_path, "dbname=app user=cdc", None), env={})
    assert cfg.source.dsn == "dbname=app user=cdc"


@pytest.mark.parametrize(
    ("content", "dsn", "expected"),
    [
        (None, "dbname=app", "file not found"),
        ("", "dbname=app", "is empty"),
        ("\nsecond\n", "dbname=app", "is empty"),
        ("pw\n", "dbname=app password=other", "source.dsn holds a password too"),
        ("pw\n", "postgresql://u:other@h/app", "source.dsn holds a password too"),
    ],
)
def test_a_missing_empty_or_second_password_is_one_config_error_naming_the_key(
    tmp_path: Path, content: str | None, dsn: str, expected: str
) -> None:
    secret = tmp_path / "pw"
    if content is not None:
        secret.write_text(content)
    with pytest.raises(ConfigError) as refused:
        load_config(_config(tmp_path, dsn, secret), env={})
    assert refused.value.exit_code == 2 and "\n" not in refused.value.message
    assert (
        refused.value.message.startswith("config: source.password_file") and expected in refused.value.message
    )
    assert "other" not in refused.value.message


def test_an_error_names_the_environment_variable_the_path_came_from(tmp_path: Path) -> None:
    env = {"CDC_REPLICATOR_SOURCE__PASSWORD_FILE": str(tmp_path / "absent")}
    with pytest.raises(ConfigError) as refused:
        load_config(_config(tmp_path, "dbname=app", None), env=env)
    assert refused.value.message.startswith(
        "config: source.password_file (from CDC_REPLICATOR_SOURCE__PASSWORD_FILE): file not found"
    )
