"""Every bad config, environment value and command line is refused with one line and exit 2 or 3.

One table of cases: each names a mutation of a valid setup (the TOML text, ``CDC_REPLICATOR_*``
variables, the command line), the exit code the README's table gives it (2 configuration, 3 source
or state store not usable) and the words the error line must hold: the key (or option) and the fix.

What "one line" means, checked by ``_one_error``: stderr ends with the error, ``error: <what>`` or
``error: <what>; hint: <fix>``, on one line; no other line of stderr starts with ``error:`` (the
lines before it, if any, are the daemon's log records); and there is no ``Traceback`` anywhere in
stderr or stdout. A config refused before logging starts leaves that line alone on stderr.

``CLI`` cases run the real ``python -m cdc_replicator`` in a subprocess; ``LOAD`` cases (pure
configuration, refused by ``load_config`` before anything else runs) call ``load_config`` in-process
and format the error with the command line's own ``error_line``, which is ten times faster; ``PG``
cases run the real CLI against a real PostgreSQL (a table or a column that is not there).
"""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

import pytest

from cdc_replicator.cli.commands import error_line
from cdc_replicator.config import load_config
from cdc_replicator.errors import ReplicatorError
from tests.support.daemon import run_cli, write_config
from tests.support.pg import PgDatabase

CONFIG = 2
SOURCE = 3
STATE = 3  # the state store not usable (StateStoreError): like a source, README's table
TIMEOUT = 30.0  # seconds; a refusal takes one or two
SECRET = "s3cr3t-pw"  # a password that must never show in an error line

_BASE = """\
[source]
dsn = "postgresql://postgres@127.0.0.1:1/nowhere"
[target]
uri = "{lake}"
[batch]
max_rows = 100
[state]
url = "sqlite:///{state}"
[server]
enabled = false
[[tables]]
name = "public.t"
"""


class Via(Enum):
    LOAD = "load_config in-process"
    CLI = "python -m cdc_replicator"


Edit = Callable[[str, Path], str]  # (TOML text, the case's folder) -> TOML text


def _same(text: str, _: Path) -> str:
    return text


def sub(old: str, new: str) -> Edit:
    """Replace ``old`` (which must be there) with ``new``."""

    def edit(text: str, _: Path) -> str:
        assert old in text, f"{old!r} is not in the base config"
        return text.replace(old, new)

    return edit


def put(section: str, line: str) -> Edit:
    """Add ``line`` to ``[section]`` (created at the end when the base has none)."""

    def edit(text: str, _: Path) -> str:
        header = f"[{section}]\n"
        if header in text:
            return text.replace(header, header + line + "\n", 1)
        return text + header + line + "\n"

    return edit


def first(line: str, instead_of: str) -> Edit:
    """A top-level ``line`` (before every section) in place of ``instead_of``."""

    def edit(text: str, _: Path) -> str:
        assert instead_of in text, f"{instead_of!r} is not in the base config"
        return line + "\n" + text.replace(instead_of, "")

    return edit


def in_table(line: str) -> Edit:
    """Add ``line`` to the ``[[tables]]`` entry (the last one of the base)."""
    return lambda text, _: text + line + "\n"


def state_at(make: Callable[[Path], str]) -> Edit:
    """Point ``state.url`` at what ``make(folder)`` prepares and returns (a sqlite URL)."""

    def edit(text: str, folder: Path) -> str:
        start = text.index('url = "sqlite:///')
        end = text.index("\n", start)
        return text[:start] + f'url = "{make(folder)}"' + text[end:]

    return edit


def _under_a_file(folder: Path) -> str:
    (folder / "plain-file").write_text("not a folder\n")
    return f"sqlite:///{folder}/plain-file/cdc.db"


def _a_folder(folder: Path) -> str:
    (folder / "a-folder").mkdir()
    return f"sqlite:///{folder}/a-folder"


def _not_a_database(folder: Path) -> str:
    (folder / "garbage.db").write_bytes(b"this is not an sqlite database file, just text\n" * 40)
    return f"sqlite:///{folder}/garbage.db"


@dataclass(frozen=True, slots=True)
class Case:
    """One bad input: what is changed, how it runs, the exit code and what the line must say."""

    id: str
    code: int
    says: tuple[str, ...]  # lower-case words the error line holds: the key first, then the fix
    edit: Edit = _same
    env: Mapping[str, str] = field(default_factory=dict)
    argv: tuple[str, ...] = ("run",)
    via: Via = Via.LOAD
    no_file: bool = False  # no --config (the variables are the whole config)
    lacks: tuple[str, ...] = ()  # what the line must never hold (a password)


CASES: tuple[Case, ...] = (
    # ---- the file itself
    Case(
        "missing config file",
        CONFIG,
        ("nope.toml", "not found"),
        argv=("--config", "{dir}/nope.toml", "run"),
        via=Via.CLI,
        no_file=True,
    ),
    Case(
        "config path from the environment is missing",
        CONFIG,
        ("gone.toml", "not found"),
        env={"CDC_REPLICATOR_CONFIG": "{dir}/gone.toml"},
        via=Via.CLI,
        no_file=True,
    ),
    Case(
        "config file is a folder",
        CONFIG,
        ("--config", "directory"),
        argv=("--config", "{dir}", "run"),
        via=Via.CLI,
        no_file=True,
    ),
    Case(
        "invalid toml",
        CONFIG,
        ("toml syntax error", "line 6"),
        sub("max_rows = 100", "max_rows = = 100"),
        via=Via.CLI,
    ),
    Case("toml key given twice", CONFIG, ("toml syntax error", "line"), put("batch", "max_rows = 5")),
    Case("config file not utf-8", CONFIG, ("not utf-8", "byte"), sub("nowhere", "nowh\udcffere")),
    # ---- sections and keys
    Case(
        "unknown section",
        CONFIG,
        ("[sourc]", "did you mean [source]"),
        sub("[source]", "[sourc]"),
        via=Via.CLI,
    ),
    Case("unknown key", CONFIG, ("source.dns", "did you mean source.dsn"), sub("dsn =", "dns =")),
    Case(
        "unknown batch key",
        CONFIG,
        ("batch.max_row", "did you mean batch.max_rows"),
        sub("max_rows =", "max_row ="),
    ),
    Case(
        "unknown table key",
        CONFIG,
        ("tables[0].soft_delet", "did you mean tables[0].soft_delete"),
        in_table("soft_delet = true"),
        via=Via.CLI,
    ),
    Case(
        "section is not a table",
        CONFIG,
        ("batch", "must be a table"),
        first("batch = 3", "[batch]\nmax_rows = 100\n"),
    ),
    Case(
        "tables is not an array",
        CONFIG,
        ("tables", "[[tables]]"),
        first('tables = "public.t"', '[[tables]]\nname = "public.t"\n'),
    ),
    Case(
        "table entry is not a table",
        CONFIG,
        ("tables[0]", 'name = "public.orders"'),
        first('tables = ["public.t"]', '[[tables]]\nname = "public.t"\n'),
    ),
    Case(
        "source dsn missing",
        CONFIG,
        ("source.dsn", "cdc_replicator_source__dsn"),
        sub('dsn = "postgresql://postgres@127.0.0.1:1/nowhere"\n', ""),
        via=Via.CLI,
    ),
    Case(
        "target uri missing",
        CONFIG,
        ("target.uri", "cdc_replicator_target__uri"),
        sub('uri = "{lake}"\n', ""),
    ),
    Case(
        "empty table list",
        CONFIG,
        ("tables", "add a [[tables]] entry"),
        sub('[[tables]]\nname = "public.t"\n', ""),
        via=Via.CLI,
    ),
    Case(
        "duplicate tables",
        CONFIG,
        ("tables[1].name", "list each table once"),
        in_table('[[tables]]\nname = "t"'),
    ),
    Case(
        "table name with three parts",
        CONFIG,
        ("tables[0].name", "public.orders"),
        sub('name = "public.t"', 'name = "a.b.c"'),
    ),
    Case(
        "table without a name",
        CONFIG,
        ("tables[0].name", "required"),
        sub('name = "public.t"', "soft_delete = true"),
    ),
    Case(
        "columns and exclude_columns",
        CONFIG,
        ("tables[0]", "choose one"),
        in_table('columns = ["a"]\nexclude_columns = ["b"]'),
    ),
    Case(
        "watermark table without a cursor",
        CONFIG,
        ("tables[0].cursor", 'cursor = "updated_at"'),
        put("source", 'mode = "watermark"'),
        via=Via.CLI,
    ),
    Case(
        "empty column list", CONFIG, ("tables[0].columns", "list of column names"), in_table("columns = []")
    ),
    Case("column listed twice", CONFIG, ("tables[0].cursor", "distinct"), in_table('cursor = ["a", "a"]')),
    # ---- wrong types, zero and negative numbers
    Case(
        "integer key given a string",
        CONFIG,
        ("batch.max_rows", "positive integer"),
        sub("max_rows = 100", 'max_rows = "x"'),
        via=Via.CLI,
    ),
    Case(
        "zero rows per batch",
        CONFIG,
        ("batch.max_rows", "positive integer"),
        sub("max_rows = 100", "max_rows = 0"),
    ),
    Case(
        "negative rows per batch",
        CONFIG,
        ("batch.max_rows", "positive integer"),
        sub("max_rows = 100", "max_rows = -5"),
    ),
    Case(
        "integer key given a float",
        CONFIG,
        ("batch.max_bytes", "positive integer"),
        put("batch", "max_bytes = 1.5"),
    ),
    Case(
        "zero seconds per batch",
        CONFIG,
        ("batch.max_seconds", "positive number"),
        put("batch", "max_seconds = 0"),
    ),
    Case(
        "negative give-up time",
        CONFIG,
        ("source.retry_give_up_seconds", "number >= 0"),
        put("source", "retry_give_up_seconds = -1"),
    ),
    Case(
        "not a number",
        CONFIG,
        ("source.connect_timeout_seconds", "positive number"),
        put("source", "connect_timeout_seconds = nan"),
    ),
    Case(
        "boolean given a string",
        CONFIG,
        ("server.enabled", "true or false"),
        sub("enabled = false", 'enabled = "no"'),
        via=Via.CLI,
    ),
    Case(
        "boolean given a number",
        CONFIG,
        ("source.streaming", "true or false"),
        put("source", "streaming = 1"),
    ),
    Case(
        "integer given a boolean",
        CONFIG,
        ("target.target_file_size", "positive integer"),
        put("target", "target_file_size = true"),
    ),
    Case(
        "negative parallel",
        CONFIG,
        ("snapshot.parallel", "positive integer"),
        put("snapshot", "parallel = -1"),
    ),
    Case(
        "zero page size",
        CONFIG,
        ("watermark.page_size", "positive integer"),
        put("watermark", "page_size = 0"),
    ),
    Case(
        "negative table page size",
        CONFIG,
        ("tables[0].page_size", "positive integer"),
        in_table("page_size = -1"),
    ),
    Case("listen without a host", CONFIG, ("server.listen", "host:port"), put("server", 'listen = "9187"')),
    Case(
        "listen port out of range",
        CONFIG,
        ("server.listen", "0 to 65535"),
        put("server", 'listen = "localhost:70000"'),
    ),
    Case(
        "slot name with capitals", CONFIG, ("source.slot", "lower-case"), put("source", 'slot = "Bad-Slot"')
    ),
    Case(
        "publication name too long",
        CONFIG,
        ("source.publication", "1 to 63 bytes"),
        put("source", f'publication = "{"p" * 64}"'),
    ),
    # ---- values out of a fixed set
    Case(
        "unknown mode",
        CONFIG,
        ("source.mode", '"logical", "watermark"'),
        put("source", 'mode = "logic"'),
        via=Via.CLI,
    ),
    Case(
        "unknown reader", CONFIG, ("source.reader", '"process", "thread"'), put("source", 'reader = "fork"')
    ),
    Case(
        "unknown heartbeat",
        CONFIG,
        ("source.heartbeat", '"message", "table"'),
        put("source", 'heartbeat = "tabel"'),
    ),
    Case("unknown log format", CONFIG, ("log.format", '"text", "json"'), put("log", 'format = "yaml"')),
    Case("unknown log level", CONFIG, ("log.level", '"debug"'), put("log", 'level = "loud"'), via=Via.CLI),
    Case(
        "unknown contract",
        CONFIG,
        ("tables[0].contract", '"evolve", "freeze"'),
        in_table('contract = "strict"'),
    ),
    Case(
        "storage option not a string",
        CONFIG,
        ("target.storage_options.aws_region", "a string"),
        put("target", "storage_options = { aws_region = 5 }"),
    ),
    Case(
        "zero rows per chunk",
        CONFIG,
        ("snapshot.chunk_rows", "positive integer"),
        put("snapshot", "chunk_rows = 0"),
    ),
    Case(
        "negative heartbeat interval",
        CONFIG,
        ("source.heartbeat_interval_seconds", "number >= 0"),
        put("source", "heartbeat_interval_seconds = -10"),
    ),
    Case(
        "env listen without a port",
        CONFIG,
        ("server.listen", "cdc_replicator_server__listen", "host:port"),
        env={"CDC_REPLICATOR_SERVER__LISTEN": "localhost"},
    ),
    Case(
        "env log level unknown",
        CONFIG,
        ("log.level", "cdc_replicator_log__level", '"warning"'),
        env={"CDC_REPLICATOR_LOG__LEVEL": "verbose"},
    ),
    # ---- connection strings, storage URIs and the state store
    Case(
        "dsn port not a number",
        CONFIG,
        ("source.dsn", "port"),
        sub("postgresql://postgres@127.0.0.1:1/nowhere", f"host=localhost port=abc password={SECRET}"),
        via=Via.CLI,
        lacks=(SECRET,),
    ),
    Case(
        "password file missing",
        CONFIG,
        ("source.password_file", "file not found", "the file holding the password"),
        put("source", 'password_file = "{dir}/no-password"'),
    ),
    Case(
        "password file is a folder",
        CONFIG,
        ("source.password_file", "cannot read", "must be able to read it"),
        put("source", 'password_file = "{dir}"'),
        via=Via.CLI,
    ),
    Case(
        "dsn given a number",
        CONFIG,
        ("source.dsn", "non-empty string", "got 5"),
        sub('"postgresql://postgres@127.0.0.1:1/nowhere"', "5"),
    ),
    Case(
        "dsn with an unknown option",
        CONFIG,
        ("source.dsn", 'invalid connection option "nosuch"'),
        sub("postgresql://postgres@127.0.0.1:1/nowhere", "host=localhost nosuch=1"),
    ),
    Case(
        "dsn url that does not parse",
        CONFIG,
        ("source.dsn", "libpq connection string"),
        sub("postgresql://postgres@127.0.0.1:1/nowhere", f"postgresql://u:{SECRET}@[::1/db"),
        via=Via.CLI,
        lacks=(SECRET,),
    ),
    Case(
        "dsn with an unknown sslmode",
        CONFIG,
        ("source.dsn", "verify-full"),
        sub("nowhere", "nowhere?sslmode=verify_full"),
    ),
    Case(
        "empty dsn",
        CONFIG,
        ("source.dsn", "non-empty string"),
        sub('"postgresql://postgres@127.0.0.1:1/nowhere"', '"  "'),
    ),
    Case(
        "uri with an unknown scheme",
        CONFIG,
        ("target.uri", "s3"),
        sub('uri = "{lake}"', 'uri = "sftp://host/lake"'),
        via=Via.CLI,
    ),
    Case(
        "uri with a misspelt scheme",
        CONFIG,
        ("target.uri", "did you mean s3://"),
        sub('uri = "{lake}"', 'uri = "s4://bucket/lake"'),
    ),
    Case(
        "uri without a bucket",
        CONFIG,
        ("target.uri", "s3://bucket/lake"),
        sub('uri = "{lake}"', 'uri = "s3://"'),
    ),
    Case("state url not a url", CONFIG, ("state.url", "sqlite:///"), state_at(lambda _: "state.db")),
    Case(
        "state url of an unknown database",
        CONFIG,
        ("state.url", "sqlite:///path/to/cdc.db"),
        state_at(lambda _: "nosuchdb://host/x"),
        via=Via.CLI,
    ),
    Case(
        "state path under a file",
        STATE,
        ("the state store", "plain-file", "point state.url at a file in a folder"),
        state_at(_under_a_file),
        via=Via.CLI,
    ),
    Case(
        "state path is a folder",
        STATE,
        ("the state store", "a-folder", "cannot be opened", "let the daemon's user create and write"),
        state_at(_a_folder),
        via=Via.CLI,
    ),
    Case(
        "state file not a database",
        STATE,
        ("the state store", "garbage.db", "not a database", "restore it from a backup"),
        state_at(_not_a_database),
        via=Via.CLI,
    ),
    # ---- environment variables
    Case(
        "env integer not a number",
        CONFIG,
        ("batch.max_rows", "cdc_replicator_batch__max_rows", "positive integer"),
        env={"CDC_REPLICATOR_BATCH__MAX_ROWS": "abc"},
        via=Via.CLI,
    ),
    Case(
        "env table index out of range",
        CONFIG,
        ("cdc_replicator_tables__9__soft_delete", "indexes start at 0"),
        env={"CDC_REPLICATOR_TABLES__9__SOFT_DELETE": "true"},
        via=Via.CLI,
    ),
    Case(
        "env boolean not a boolean",
        CONFIG,
        ("tables[0].soft_delete", "true or false"),
        env={"CDC_REPLICATOR_TABLES__0__SOFT_DELETE": "maybe"},
    ),
    Case(
        "env name misspelt",
        CONFIG,
        ("cdc_replicator_batch__maxrows", "did you mean cdc_replicator_batch__max_rows"),
        env={"CDC_REPLICATOR_BATCH__MAXROWS": "5"},
        via=Via.CLI,
    ),
    Case(
        "env table key misspelt",
        CONFIG,
        ("cdc_replicator_tables__0__softdelete", "soft_delete"),
        env={"CDC_REPLICATOR_TABLES__0__SOFTDELETE": "true"},
    ),
    Case(
        "env enum in capitals",
        CONFIG,
        ("source.mode", "cdc_replicator_source__mode", '"logical"'),
        env={"CDC_REPLICATOR_SOURCE__MODE": "Logical"},
    ),
    Case(
        "env negative number",
        CONFIG,
        ("source.retry_max_seconds", "positive number"),
        env={"CDC_REPLICATOR_SOURCE__RETRY_MAX_SECONDS": "-3"},
    ),
    Case(
        "env table list empty",
        CONFIG,
        ("cdc_replicator_tables is empty", "[[tables]]"),
        env={"CDC_REPLICATOR_TABLES": " , "},
    ),
    Case(
        "env table list with a bad name",
        CONFIG,
        ("tables[0].name", "public.orders"),
        env={"CDC_REPLICATOR_TABLES": "a.b.c"},
    ),
    Case(
        "env alone without a dsn",
        CONFIG,
        ("source.dsn", "cdc_replicator_source__dsn"),
        env={"CDC_REPLICATOR_TARGET__URI": "./lake", "CDC_REPLICATOR_TABLES": "t"},
        via=Via.CLI,
        no_file=True,
    ),
    # ---- the command line
    Case(
        "unknown option",
        CONFIG,
        ("--bogus", "cdc-replicator run --help"),
        argv=("run", "--bogus"),
        via=Via.CLI,
    ),
    Case(
        "unknown global option",
        CONFIG,
        ("--colour", "cdc-replicator --help"),
        argv=("--colour", "run"),
        via=Via.CLI,
    ),
    Case("unknown command", CONFIG, ("statu", "did you mean 'status'"), argv=("statu",), via=Via.CLI),
    Case("parallel zero", CONFIG, ("--parallel", "x>=1"), argv=("snapshot", "--parallel", "0"), via=Via.CLI),
    Case(
        "parallel not a number",
        CONFIG,
        ("--parallel", "not a valid integer"),
        argv=("snapshot", "--parallel", "two"),
        via=Via.CLI,
    ),
    Case(
        "table not in the config",
        CONFIG,
        ("public.nope", "add it to [[tables]]"),
        argv=("snapshot", "--table", "public.nope"),
        via=Via.CLI,
    ),
    Case(
        "table option not a table name",
        CONFIG,
        ("--table", "schema.table"),
        argv=("snapshot", "--table", "a.b.c"),
        via=Via.CLI,
    ),
    Case(
        "verify a table not in the config",
        CONFIG,
        ("public.nope", "[[tables]]"),
        argv=("verify", "--table", "public.nope"),
        via=Via.CLI,
    ),
    Case(
        "run once in logical mode",
        CONFIG,
        ("--once", 'source.mode = "watermark"'),
        argv=("run", "--once"),
        via=Via.CLI,
    ),
    Case(
        "log level option unknown",
        CONFIG,
        ("--log-level", "'debug'"),
        argv=("--log-level", "loud", "run"),
        via=Via.CLI,
    ),
    Case(
        "extra argument",
        CONFIG,
        ("extra", "cdc-replicator status --help"),
        argv=("status", "extra"),
        via=Via.CLI,
    ),
    Case(
        "demo with an unknown version",
        CONFIG,
        ("--pg-version", "'15'"),
        argv=("demo", "--pg-version", "9"),
        via=Via.CLI,
    ),
)


def _one_error(code: int, stderr: str, stdout: str, expected: int) -> str:
    """The error line (lower-cased) after checking the rules of the module docstring."""
    shown = f"--- exit {code}\n--- stderr:\n{stderr}\n--- stdout:\n{stdout}"
    assert code == expected, f"expected exit {expected}\n{shown}"
    assert "Traceback" not in stderr and "Traceback" not in stdout, f"a traceback\n{shown}"
    lines = stderr.rstrip("\n").split("\n")
    assert lines[-1].startswith("error: ") and lines[-1][len("error: ") :].strip(), (
        f"stderr does not end with one 'error: ' line\n{shown}"
    )
    assert sum(line.startswith("error: ") for line in lines) == 1, f"more than one error line\n{shown}"
    return lines[-1].lower()


def _check(case: Case, line: str) -> None:
    for words in case.says:
        assert words.lower() in line, f"{words!r} is not in the error line: {line}"
    for words in case.lacks:
        assert words.lower() not in line, f"{words!r} must not be shown: {line}"


def _fill(text: str, folder: Path) -> str:
    return text.replace("{dir}", str(folder))


def _write(case: Case, folder: Path) -> Path:
    text = case.edit(_BASE, folder)
    text = text.replace("{lake}", str(folder / "lake")).replace("{state}", str(folder / "state" / "cdc.db"))
    text = _fill(text, folder)
    path = folder / "cfg.toml"
    path.write_bytes(text.encode("utf-8", "surrogateescape"))
    return path


def _run_cli(case: Case, folder: Path) -> subprocess.CompletedProcess[str]:
    config = None if case.no_file else _write(case, folder)
    env = {k: _fill(v, folder) for k, v in case.env.items()}
    argv = [_fill(a, folder) for a in case.argv]
    try:
        return run_cli(config, *argv, env=env, timeout=TIMEOUT)
    except subprocess.TimeoutExpired as exc:  # a hang fails its own case, not the others
        err = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else exc.stderr or ""
        return subprocess.CompletedProcess(argv, -9, "", f"{err}\n(still running after {TIMEOUT} s: killed)")


@dataclass(frozen=True, slots=True)
class _Ran:
    result: subprocess.CompletedProcess[str]
    folder: Path


@pytest.fixture(scope="module")
def cli_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, _Ran]:
    """Every ``CLI`` case run once, four at a time (each is a second of interpreter start-up)."""
    todo = [(c, tmp_path_factory.mktemp("bad-input")) for c in CASES if c.via is Via.CLI]
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda job: _run_cli(*job), todo))
    return {case.id: _Ran(result, folder) for (case, folder), result in zip(todo, results, strict=True)}


@pytest.mark.parametrize("case", CASES, ids=[c.id.replace(" ", "-") for c in CASES])
def test_bad_input_is_refused_with_one_line_naming_the_key_and_the_fix(
    case: Case, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    folder = tmp_path
    if case.via is Via.CLI:
        ran: _Ran = request.getfixturevalue("cli_runs")[case.id]
        folder = ran.folder
        line = _one_error(ran.result.returncode, ran.result.stderr, ran.result.stdout, case.code)
    else:
        assert case.argv == ("run",) and not case.no_file, "only a config can be checked in-process"
        try:
            load_config(_write(case, tmp_path), {k: _fill(v, tmp_path) for k, v in case.env.items()})
        except ReplicatorError as exc:
            line = _one_error(exc.exit_code, error_line(exc.message, exc.hint) + "\n", "", case.code)
        else:
            raise AssertionError(f"{case.id}: the config was accepted")
    _check(case, line)
    assert not (folder / "state").exists(), "a refused command must not create the state store"


def test_the_table_holds_enough_cases_and_a_dozen_run_the_real_command_line() -> None:
    assert len(CASES) >= 50
    assert sum(c.via is Via.CLI for c in CASES) >= 12
    assert len({c.id for c in CASES}) == len(CASES), "case ids are unique"


# ---- cases that need the server: run through the real command line against PostgreSQL ----------


@dataclass(frozen=True, slots=True)
class PgCase:
    """A config that parses but that the source (or the machine) refuses."""

    id: str
    code: int
    says: tuple[str, ...]
    tables: Sequence[str] = ("public.t",)
    source: Mapping[str, object] = field(default_factory=dict)
    table: Mapping[str, Mapping[str, object]] = field(default_factory=dict)
    argv: tuple[str, ...] = ("run",)


PG_CASES: tuple[PgCase, ...] = (
    PgCase(
        "table that does not exist",
        SOURCE,
        ("public.no_such_table", "does not exist"),
        tables=("public.t", "public.no_such_table"),
    ),
    PgCase(
        "column that does not exist", SOURCE, ("nope", "public.t"), table={"public.t": {"columns": ["nope"]}}
    ),
    PgCase(
        "watermark cursor column that is not there",
        SOURCE,
        ("public.t", "no_such_col", "named as cursor", "set cursor to one of"),
        source={"mode": "watermark"},
        table={"public.t": {"cursor": "no_such_col"}},
    ),
    PgCase(
        "watermark delete column that is not there",
        SOURCE,
        ("public.t", "gone_flag", "named as delete_column", "id, v, updated_at"),
        source={"mode": "watermark"},
        table={"public.t": {"cursor": "updated_at", "delete_column": "gone_flag"}},
    ),
    PgCase(
        "watermark run once on a table that does not exist",
        SOURCE,
        ("public.ghost", "does not exist"),
        tables=("public.ghost",),
        source={"mode": "watermark"},
        table={"public.ghost": {"cursor": "updated_at"}},
        argv=("run", "--once"),
    ),
)


def test_configs_the_source_refuses_give_one_line_and_exit_3(pg: PgDatabase, tmp_path: Path) -> None:
    """All ``PG_CASES`` against one database, side by side (each its own slot); every failure is reported."""
    pg.execute("create table t (id int primary key, v text, updated_at timestamptz not null default now())")

    def run(i: int, case: PgCase) -> str | None:
        folder = tmp_path / f"case{i}"
        folder.mkdir()
        source = {"slot": f"bad_input_{i}", "retry_give_up_seconds": 1, **case.source}
        cfg = write_config(
            folder / "cfg.toml", pg, folder / "lake", case.tables, source_extra=source, table_extra=case.table
        )
        result = run_cli(cfg, *case.argv, timeout=TIMEOUT)
        try:
            line = _one_error(result.returncode, result.stderr, result.stdout, case.code)
            missing = [w for w in case.says if w.lower() not in line]
            assert not missing, f"{missing} not in the error line: {line}"
        except AssertionError as exc:
            return f"{case.id}: {exc}"
        return None

    with ThreadPoolExecutor(max_workers=3) as pool:
        failures = [f for f in pool.map(run, range(len(PG_CASES)), PG_CASES) if f]
    assert not failures, "\n\n".join(failures)


def test_a_listen_address_in_use_is_refused_naming_server_listen(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        edit = sub("enabled = false", f'listen = "127.0.0.1:{port}"')
        case = Case(
            "listen address in use", CONFIG, ("server.listen", "in use", "free host:port"), edit, via=Via.CLI
        )
        line = _one_error(*_result(_run_cli(case, tmp_path)), CONFIG)
    _check(case, line)


def _result(result: subprocess.CompletedProcess[str]) -> tuple[int, str, str]:
    return result.returncode, result.stderr, result.stdout
