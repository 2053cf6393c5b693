"""Specification of config loading: the TOML file, environment overrides, and one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from cdc_replicator.config import (
    BatchConfig,
    Config,
    LogConfig,
    ServerConfig,
    SourceConfig,
    StateConfig,
    TableConfig,
    TargetConfig,
    WatermarkConfig,
    load_config,
    redact_dsn,
)
from cdc_replicator.errors import ConfigError
from cdc_replicator.model import TableId

EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "example.toml"

MINIMAL = """
[source]
dsn = "postgresql://replicator@db/app"
[target]
uri = "./lake"
[[tables]]
name = "public.orders"
"""

FULL = """
[source]
dsn = "host=db dbname=app user=replicator"
mode = "watermark"
slot = "my_slot"
publication = "my_pub"
streaming = true
status_interval_seconds = 5
connect_timeout_seconds = 2.5
retry_max_seconds = 60.0
retry_give_up_seconds = 600
heartbeat_interval_seconds = 30
heartbeat = "table"
slot_check_interval_seconds = 5
max_retained_wal_bytes = 1073741824

[target]
uri = "s3://bucket/lake"
target_file_size = 1048576

[target.storage_options]
aws_region = "eu-west-1"
AWS_ALLOW_HTTP = "true"

[[tables]]
name = "sales.orders"
soft_delete = true
cursor = ["updated_at", "revision"]
delete_column = "deleted_at"
poll_interval_seconds = 1.5
page_size = 500

[[tables]]
name = "customers"
cursor = "id"

[watermark]
poll_interval_seconds = 10
page_size = 2000
lookback_seconds = 120
statement_timeout_seconds = 30

[batch]
max_rows = 5000
max_bytes = 1000000
max_seconds = 0.5

[state]
url = "postgresql+psycopg://state@db/state"

[server]
listen = "0.0.0.0:9000"
enabled = false
liveness_timeout_seconds = 300
stop_timeout_seconds = 0

[log]
level = "DEBUG"
format = "json"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cdc.toml"
    path.write_text(text, encoding="utf-8")
    return path


def minimal(tmp_path: Path, extra: str = "") -> Path:
    return write(tmp_path, MINIMAL + extra)


def config_error(path: Path | None, env: dict[str, str] | None = None) -> str:
    """The message of the ConfigError that loading raises; it must be one line."""
    with pytest.raises(ConfigError) as info:
        load_config(path, env={} if env is None else env)
    assert "\n" not in str(info.value)
    assert info.value.exit_code == 2
    return info.value.message


# ---- valid files -------------------------------------------------------------------------------


def test_a_full_file_parses_to_the_expected_dataclasses(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, FULL), env={})

    assert cfg == Config(
        source=SourceConfig(
            dsn="host=db dbname=app user=replicator",
            mode="watermark",
            slot="my_slot",
            publication="my_pub",
            streaming=True,
            status_interval_seconds=5.0,
            connect_timeout_seconds=2.5,
            retry_max_seconds=60.0,
            retry_give_up_seconds=600.0,
            heartbeat_interval_seconds=30.0,
            heartbeat="table",
            slot_check_interval_seconds=5.0,
            max_retained_wal_bytes=1073741824,
        ),
        target=TargetConfig(
            uri="s3://bucket/lake",
            storage_options=(("AWS_ALLOW_HTTP", "true"), ("aws_region", "eu-west-1")),
            target_file_size=1048576,
        ),
        tables=(
            TableConfig(
                TableId("sales", "orders"),
                soft_delete=True,
                cursor=("updated_at", "revision"),
                delete_column="deleted_at",
                poll_interval_seconds=1.5,
                page_size=500,
            ),
            TableConfig(TableId("public", "customers"), soft_delete=False, cursor=("id",)),
        ),
        batch=BatchConfig(max_rows=5000, max_bytes=1000000, max_seconds=0.5),
        state=StateConfig(url="postgresql+psycopg://state@db/state"),
        server=ServerConfig(
            listen="0.0.0.0:9000", enabled=False, liveness_timeout_seconds=300.0, stop_timeout_seconds=0.0
        ),
        log=LogConfig(level="debug", format="json"),
        watermark=WatermarkConfig(
            poll_interval_seconds=10.0, page_size=2000, lookback_seconds=120.0, statement_timeout_seconds=30.0
        ),
    )
    assert isinstance(cfg.source.status_interval_seconds, float)


def test_keys_left_out_take_their_defaults(tmp_path: Path) -> None:
    cfg = load_config(minimal(tmp_path), env={})

    assert cfg.source == SourceConfig(dsn="postgresql://replicator@db/app")
    assert cfg.source.mode == "logical"
    assert cfg.source.slot == cfg.source.publication == "cdc_replicator"
    assert cfg.source.streaming is False
    assert cfg.source.status_interval_seconds == 10.0
    assert cfg.source.connect_timeout_seconds == 10.0
    assert cfg.source.retry_max_seconds == 30.0
    assert cfg.source.retry_give_up_seconds == 0.0
    assert cfg.target == TargetConfig(uri="./lake", storage_options=(), target_file_size=16 * 1024 * 1024)
    assert cfg.tables == (TableConfig(TableId("public", "orders"), soft_delete=False),)
    assert cfg.batch == BatchConfig(max_rows=100_000, max_bytes=256 * 1024 * 1024, max_seconds=2.0)
    assert cfg.state == StateConfig(url="sqlite:///./state/cdc.db")
    assert cfg.server == ServerConfig(listen="127.0.0.1:9187", enabled=True)
    assert cfg.log == LogConfig(level="info", format="auto")


def test_relative_paths_are_kept_as_written(tmp_path: Path) -> None:
    cfg = load_config(minimal(tmp_path, '[state]\nurl = "sqlite:///rel/x.db"\n'), env={})

    assert cfg.target.uri == "./lake"
    assert cfg.state.url == "sqlite:///rel/x.db"


def test_a_bare_table_name_means_the_public_schema(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL.replace('"public.orders"', '"orders"'))

    assert load_config(path, env={}).table_ids == (TableId("public", "orders"),)


def test_config_table_looks_up_one_table_by_id(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, FULL), env={})

    assert cfg.table(TableId("sales", "orders")).soft_delete is True
    assert cfg.table(TableId("public", "customers")).soft_delete is False
    with pytest.raises(KeyError):
        cfg.table(TableId("public", "nope"))


def test_server_listen_splits_into_host_and_port() -> None:
    assert (ServerConfig("0.0.0.0:9000").host, ServerConfig("0.0.0.0:9000").port) == ("0.0.0.0", 9000)
    assert (ServerConfig("[::1]:80").host, ServerConfig("[::1]:80").port) == ("::1", 80)


def test_the_example_config_loads_without_error() -> None:
    cfg = load_config(EXAMPLE, env={})

    assert cfg.source.dsn == "postgresql://replicator@127.0.0.1:5432/app"
    assert cfg.target.uri == "./lake"
    assert cfg.table_ids[0] == TableId("public", "orders")


# ---- environment overrides ---------------------------------------------------------------------


def test_no_file_takes_everything_from_the_environment() -> None:
    cfg = load_config(
        None,
        env={
            "CDC_REPLICATOR_SOURCE__DSN": "dbname=app",
            "CDC_REPLICATOR_TARGET__URI": "/data/lake",
            "CDC_REPLICATOR_TABLES": "orders",
        },
    )

    assert cfg.source.dsn == "dbname=app"
    assert cfg.target.uri == "/data/lake"
    assert cfg.tables == (TableConfig(TableId("public", "orders")),)
    assert cfg.batch == BatchConfig()


def test_no_file_still_fails_on_a_missing_required_key() -> None:
    assert config_error(None) == (
        "config: source.dsn is required (set it in [source] or CDC_REPLICATOR_SOURCE__DSN)"
    )


def test_a_scalar_env_variable_overrides_the_file(tmp_path: Path) -> None:
    env = {
        "CDC_REPLICATOR_SOURCE__DSN": "postgresql://other@db/app",
        "CDC_REPLICATOR_BATCH__MAX_ROWS": "5000",
        "CDC_REPLICATOR_BATCH__MAX_SECONDS": "7",
        "CDC_REPLICATOR_SOURCE__STREAMING": "TRUE",
        "CDC_REPLICATOR_SERVER__ENABLED": "0",
        "CDC_REPLICATOR_LOG__FORMAT": "json",
    }

    cfg = load_config(minimal(tmp_path), env=env)

    assert cfg.source.dsn == "postgresql://other@db/app"
    assert cfg.batch.max_rows == 5000
    assert cfg.batch.max_seconds == 7.0
    assert cfg.source.streaming is True
    assert cfg.server.enabled is False
    assert cfg.log.format == "json"


def test_env_defaults_to_the_process_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CDC_REPLICATOR_BATCH__MAX_ROWS", "42")

    assert load_config(minimal(tmp_path)).batch.max_rows == 42


def test_a_storage_option_env_variable_adds_a_lower_cased_option(tmp_path: Path) -> None:
    env = {"CDC_REPLICATOR_TARGET__STORAGE_OPTIONS__AWS_REGION": "eu-west-1"}

    cfg = load_config(minimal(tmp_path), env=env)

    assert cfg.target.storage_options == (("aws_region", "eu-west-1"),)


def test_a_storage_option_env_variable_replaces_the_option_whatever_its_case(tmp_path: Path) -> None:
    path = minimal(tmp_path, '[target.storage_options]\nAWS_REGION = "us-east-1"\nkeep = "x"\n')
    env = {"CDC_REPLICATOR_TARGET__STORAGE_OPTIONS__AWS_REGION": "eu-west-1"}

    cfg = load_config(path, env=env)

    assert cfg.target.storage_options == (("aws_region", "eu-west-1"), ("keep", "x"))


def test_the_tables_env_variable_replaces_the_whole_list(tmp_path: Path) -> None:
    path = write(tmp_path, FULL)
    env = {
        "CDC_REPLICATOR_TABLES": "public.orders, public.customers,",
        "CDC_REPLICATOR_SOURCE__MODE": "logical",
    }

    cfg = load_config(path, env=env)

    assert cfg.tables == (
        TableConfig(TableId("public", "orders"), soft_delete=False),
        TableConfig(TableId("public", "customers"), soft_delete=False),
    )


def test_a_per_table_env_variable_sets_one_key_of_the_resulting_list(tmp_path: Path) -> None:
    env = {
        "CDC_REPLICATOR_TABLES": "a.one,b.two",
        "CDC_REPLICATOR_TABLES__1__SOFT_DELETE": "true",
        "CDC_REPLICATOR_TABLES__0__NAME": "a.first",
    }

    cfg = load_config(minimal(tmp_path), env=env)

    assert cfg.tables == (
        TableConfig(TableId("a", "first"), soft_delete=False),
        TableConfig(TableId("b", "two"), soft_delete=True),
    )


def test_a_per_table_env_variable_overrides_a_file_entry(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, FULL), env={"CDC_REPLICATOR_TABLES__0__SOFT_DELETE": "false"})

    assert cfg.table(TableId("sales", "orders")).soft_delete is False


def test_a_per_table_env_variable_past_the_end_of_the_list_is_an_error(tmp_path: Path) -> None:
    msg = config_error(minimal(tmp_path), {"CDC_REPLICATOR_TABLES__3__SOFT_DELETE": "true"})

    assert msg == (
        "config: CDC_REPLICATOR_TABLES__3__SOFT_DELETE refers to tables[3], but only 1 table(s) "
        "are configured (indexes start at 0)"
    )


def test_an_env_value_is_validated_and_the_message_names_the_variable(tmp_path: Path) -> None:
    msg = config_error(minimal(tmp_path), {"CDC_REPLICATOR_BATCH__MAX_ROWS": "lots"})

    assert msg == (
        "config: batch.max_rows (from CDC_REPLICATOR_BATCH__MAX_ROWS) must be a positive integer, got 'lots'"
    )


@pytest.mark.parametrize(
    ("name", "value", "key", "expected"),
    [
        ("CDC_REPLICATOR_BATCH__MAX_BYTES", "-1", "batch.max_bytes", "a positive integer"),
        ("CDC_REPLICATOR_BATCH__MAX_SECONDS", "soon", "batch.max_seconds", "a positive number"),
        ("CDC_REPLICATOR_BATCH__MAX_SECONDS", "nan", "batch.max_seconds", "a positive number"),
        ("CDC_REPLICATOR_SERVER__ENABLED", "yes", "server.enabled", "true or false (or 1 or 0)"),
        ("CDC_REPLICATOR_SOURCE__DSN", "", "source.dsn", "a non-empty string"),
        ("CDC_REPLICATOR_SOURCE__MODE", "LOGICAL", "source.mode", 'one of "logical", "watermark"'),
    ],
)
def test_env_values_are_validated_like_file_values(
    tmp_path: Path, name: str, value: str, key: str, expected: str
) -> None:
    msg = config_error(minimal(tmp_path), {name: value})

    assert msg == f"config: {key} (from {name}) must be {expected}, got {value!r}"


def test_a_table_name_from_the_tables_env_variable_is_validated(tmp_path: Path) -> None:
    msg = config_error(minimal(tmp_path), {"CDC_REPLICATOR_TABLES": "public.orders,a.b.c"})

    assert msg.startswith("config: tables[1].name (from CDC_REPLICATOR_TABLES) must be a table name like")
    assert msg.endswith("got 'a.b.c'")


def test_an_unknown_env_variable_with_the_prefix_is_an_error_with_a_suggestion(tmp_path: Path) -> None:
    msg = config_error(minimal(tmp_path), {"CDC_REPLICATOR_BATCH__MAX_ROW": "5"})

    assert msg == (
        "config: unknown environment variable CDC_REPLICATOR_BATCH__MAX_ROW "
        "(did you mean CDC_REPLICATOR_BATCH__MAX_ROWS?)"
    )


@pytest.mark.parametrize(
    ("name", "suggestion"),
    [
        ("CDC_REPLICATOR_SOURCE_DSN", "CDC_REPLICATOR_SOURCE__DSN"),
        ("CDC_REPLICATOR_source__dsn", "CDC_REPLICATOR_SOURCE__DSN"),
        ("CDC_REPLICATOR_TABLE", "CDC_REPLICATOR_TABLES"),
        ("CDC_REPLICATOR_TABLES__2__SOFTDELETE", "CDC_REPLICATOR_TABLES__2__SOFT_DELETE"),
        ("CDC_REPLICATOR_TARGET__STORAGE_OPTION__X", "CDC_REPLICATOR_TARGET__STORAGE_OPTIONS__X"),
    ],
)
def test_an_unknown_env_variable_suggests_the_closest_variable(
    tmp_path: Path, name: str, suggestion: str
) -> None:
    msg = config_error(minimal(tmp_path), {name: "1"})

    assert msg == f"config: unknown environment variable {name} (did you mean {suggestion}?)"


def test_an_unknown_env_variable_without_a_close_match_points_to_the_example(tmp_path: Path) -> None:
    msg = config_error(minimal(tmp_path), {"CDC_REPLICATOR_FOO": "1"})

    assert (
        msg
        == "config: unknown environment variable CDC_REPLICATOR_FOO (config/example.toml lists every variable)"
    )


@pytest.mark.parametrize(
    "name",
    [
        "CDC_REPLICATOR_SOURCE_DSN",  # single underscore
        "CDC_REPLICATOR_source__dsn",  # not upper case
        "CDC_REPLICATOR_TARGET__STORAGE_OPTIONS",  # a table, not a scalar
        "CDC_REPLICATOR_TABLES__X__NAME",
        "CDC_REPLICATOR_TABLES__0__SOFT_DELET",
        "CDC_REPLICATOR_NOPE__NOTHING",
    ],
)
def test_every_env_variable_with_the_prefix_must_name_a_key(tmp_path: Path, name: str) -> None:
    msg = config_error(minimal(tmp_path), {name: "1"})

    assert msg.startswith(f"config: unknown environment variable {name} (")


def test_env_variables_without_the_prefix_and_the_config_path_variable_are_ignored(tmp_path: Path) -> None:
    env = {"CDC_REPLICATOR_CONFIG": "/etc/cdc.toml", "CDC_REPLICATORX": "1", "PGPASSWORD": "secret"}

    assert load_config(minimal(tmp_path), env=env) == load_config(minimal(tmp_path), env={})


# ---- file errors -------------------------------------------------------------------------------


def test_a_missing_file_is_one_line_naming_the_path(tmp_path: Path) -> None:
    path = tmp_path / "absent.toml"

    assert config_error(path) == f"config: file not found: {path}"


def test_a_toml_syntax_error_names_the_file_line_and_column(tmp_path: Path) -> None:
    path = write(tmp_path, '[source]\ndsn = "x"\nslot = = 3\n')

    msg = config_error(path)

    assert msg.startswith(f"config: TOML syntax error in {path} at line 3, column 8: ")


def test_a_missing_required_key_names_the_section_and_env_variable(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL.replace('uri = "./lake"', ""))

    assert config_error(path) == (
        "config: target.uri is required (set it in [target] or CDC_REPLICATOR_TARGET__URI)"
    )


def test_a_table_entry_without_a_name_is_an_error(tmp_path: Path) -> None:
    path = minimal(tmp_path, "[[tables]]\nsoft_delete = true\n")

    assert config_error(path) == "config: tables[1].name is required (set name in that [[tables]] entry)"


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        (
            '[batch]\nmax_rows = "5000"\n',
            'config: batch.max_rows must be a positive integer, got "5000" (a string)',
        ),
        ("[batch]\nmax_rows = 2.5\n", "config: batch.max_rows must be a positive integer, got 2.5"),
        (
            "[batch]\nmax_rows = true\n",
            "config: batch.max_rows must be a positive integer, got true (a boolean)",
        ),
        (
            '[batch]\nmax_seconds = "2"\n',
            'config: batch.max_seconds must be a positive number, got "2" (a string)',
        ),
        ("[server]\nenabled = 1\n", "config: server.enabled must be true or false, got 1"),
        (
            '[server]\nenabled = "true"\n',
            'config: server.enabled must be true or false, got "true" (a string)',
        ),
        (
            "[log]\nlevel = 3\n",
            'config: log.level must be one of "debug", "info", "warning", "error", "critical", got 3',
        ),
        (
            '[state]\nurl = "./state.db"\n',
            'config: state.url must be a SQLAlchemy URL such as sqlite:///./state/cdc.db, got "./state.db" (a string)',
        ),
    ],
)
def test_a_value_of_the_wrong_type_names_the_key_and_the_expected_type(
    tmp_path: Path, toml: str, message: str
) -> None:
    assert config_error(minimal(tmp_path, toml)) == message


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ("[batch]\nmax_rows = -5\n", "config: batch.max_rows must be a positive integer, got -5"),
        ("[batch]\nmax_bytes = 0\n", "config: batch.max_bytes must be a positive integer, got 0"),
        ("[batch]\nmax_seconds = -0.5\n", "config: batch.max_seconds must be a positive number, got -0.5"),
    ],
)
def test_a_negative_or_zero_number_is_an_error(tmp_path: Path, toml: str, message: str) -> None:
    assert config_error(minimal(tmp_path, toml)) == message


def test_a_negative_source_duration_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL.replace("[target]", "retry_give_up_seconds = -1\n[target]"))

    assert config_error(path) == "config: source.retry_give_up_seconds must be a number >= 0, got -1"


@pytest.mark.parametrize("listen", ["9187", "localhost:70000", ":9187", "::1:9187", "host:port", "h:"])
def test_server_listen_must_be_host_and_port_in_range(tmp_path: Path, listen: str) -> None:
    msg = config_error(minimal(tmp_path), {"CDC_REPLICATOR_SERVER__LISTEN": listen})

    assert msg.startswith("config: server.listen (from CDC_REPLICATOR_SERVER__LISTEN) must be host:port")


@pytest.mark.parametrize("slot", ["Upper", "with-dash", "", "x" * 64])
def test_the_slot_name_must_be_a_valid_replication_slot_name(tmp_path: Path, slot: str) -> None:
    msg = config_error(minimal(tmp_path), {"CDC_REPLICATOR_SOURCE__SLOT": slot})

    assert msg.startswith("config: source.slot (from CDC_REPLICATOR_SOURCE__SLOT) must be a replication slot")


def test_a_storage_option_must_be_a_string(tmp_path: Path) -> None:
    path = minimal(tmp_path, "[target.storage_options]\naws_allow_http = true\n")

    assert config_error(path) == (
        "config: target.storage_options.aws_allow_http must be a string, got true (a boolean)"
    )


def test_a_section_must_be_a_table(tmp_path: Path) -> None:
    path = write(tmp_path, "batch = 3\n" + MINIMAL)

    assert config_error(path) == "config: batch must be a table ([batch]), got 3"


def test_tables_must_be_an_array_of_tables(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL.replace("[[tables]]", "[tables]"))

    assert config_error(path).startswith("config: tables must be an array of tables ([[tables]] entries)")


def test_an_unknown_key_is_an_error_with_a_suggestion(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL.replace("dsn =", "dns ="))

    assert config_error(path) == "config: unknown key source.dns (did you mean source.dsn?)"


def test_an_unknown_key_in_a_table_entry_is_an_error_with_a_suggestion(tmp_path: Path) -> None:
    path = minimal(tmp_path, '[[tables]]\nname = "x"\nsoft_delet = true\n')

    assert (
        config_error(path) == "config: unknown key tables[1].soft_delet (did you mean tables[1].soft_delete?)"
    )


def test_an_unknown_key_without_a_close_match_lists_the_valid_keys(tmp_path: Path) -> None:
    path = minimal(tmp_path, "[state]\nzzz = 1\n")

    assert config_error(path) == "config: unknown key state.zzz (expected one of: state.url)"


def test_an_unknown_section_is_an_error_with_a_suggestion(tmp_path: Path) -> None:
    path = minimal(tmp_path, "[sever]\nenabled = true\n")

    assert config_error(path) == "config: unknown section [sever] (did you mean [server]?)"


# ---- tables ------------------------------------------------------------------------------------


def test_a_table_listed_twice_is_an_error(tmp_path: Path) -> None:
    path = minimal(tmp_path, '[[tables]]\nname = "orders"\n')

    assert config_error(path) == (
        "config: tables[1].name public.orders is listed twice (also tables[0].name); list each table once"
    )


@pytest.mark.parametrize("name", ["a.b.c", ".orders", "public.", "", " orders"])
def test_a_table_name_that_does_not_parse_is_an_error(tmp_path: Path, name: str) -> None:
    path = write(tmp_path, MINIMAL.replace('"public.orders"', f'"{name}"'))

    msg = config_error(path)

    assert msg.startswith("config: tables[0].name must be a table name like public.orders")


def test_a_table_name_must_be_a_string(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL.replace('"public.orders"', "7"))

    assert config_error(path).endswith(", got 7")


def test_at_least_one_table_is_required(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL.replace('[[tables]]\nname = "public.orders"\n', ""))

    msg = config_error(path)

    assert msg.startswith("config: tables: at least one table is required")
    assert "[[tables]]" in msg and "CDC_REPLICATOR_TABLES" in msg


def test_an_empty_tables_env_variable_leaves_no_table(tmp_path: Path) -> None:
    msg = config_error(minimal(tmp_path), {"CDC_REPLICATOR_TABLES": " , "})

    assert msg.startswith(
        "config: tables: at least one table is required, but CDC_REPLICATOR_TABLES is empty"
    )


# ---- secrets -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dsn", "redacted"),
    [
        ("postgresql://u:secret@h:5432/db", "postgresql://u:***@h:5432/db"),
        ("postgres://u:s%40cr%2Ft@h1,h2/db?sslmode=require", "postgres://u:***@h1,h2/db?sslmode=require"),
        (
            "postgresql://u@h/db?password=secret&sslmode=require",
            "postgresql://u@h/db?password=***&sslmode=require",
        ),
        ("host=h password=secret user=u", "host=h password=*** user=u"),
        ("host=h password = 'se cret\\' x' user=u", "host=h password = *** user=u"),
        ("password=secret", "password=***"),
        ("postgresql://u@h/db", "postgresql://u@h/db"),
        ("postgresql://h/db", "postgresql://h/db"),
        ("host=h dbname=app user=u", "host=h dbname=app user=u"),
        ("", ""),
    ],
)
def test_redact_dsn_hides_the_password_in_both_forms(dsn: str, redacted: str) -> None:
    assert redact_dsn(dsn) == redacted


def test_the_config_repr_holds_no_password_or_secret_option() -> None:
    cfg = Config(
        source=SourceConfig(dsn="postgresql://u:hunter2@h/db"),
        target=TargetConfig(uri="s3://b", storage_options=(("aws_secret_access_key", "hunter3"),)),
        tables=(TableConfig(TableId("public", "t")),),
    )

    text = repr(cfg)

    assert "hunter2" not in text and "hunter3" not in text
    assert "postgresql://u:***@h/db" in text


# ---- watermark mode ------------------------------------------------------------------------------


def test_watermark_mode_needs_a_cursor_for_every_table(tmp_path: Path) -> None:
    msg = config_error(minimal(tmp_path), {"CDC_REPLICATOR_SOURCE__MODE": "watermark"})
    assert msg.startswith("config: tables[0].cursor is required in watermark mode")
    assert 'cursor = "updated_at"' in msg


def test_a_cursor_is_a_name_or_a_list_of_names_and_env_takes_commas(tmp_path: Path) -> None:
    env = {"CDC_REPLICATOR_SOURCE__MODE": "watermark", "CDC_REPLICATOR_TABLES__0__CURSOR": "updated_at, id"}
    cfg = load_config(minimal(tmp_path), env=env)
    assert cfg.tables[0].cursor == ("updated_at", "id")
    assert cfg.tables[0].delete_column == "" and cfg.tables[0].page_size == 0
    assert cfg.watermark == WatermarkConfig()


@pytest.mark.parametrize("value", ["[]", "3", '["a", "a"]', '["a", ""]'])
def test_a_malformed_cursor_is_named_in_the_error(tmp_path: Path, value: str) -> None:
    text = MINIMAL.replace('name = "public.orders"', f'name = "public.orders"\ncursor = {value}')
    assert text != MINIMAL
    msg = config_error(write(tmp_path, text))
    assert msg.startswith("config: tables[0].cursor must be"), msg
