"""Load and validate the TOML config; every key overridable by environment.

``load_config(path, env)`` reads the file (if any), applies ``CDC_REPLICATOR_*`` environment
overrides, validates every value and returns a frozen ``Config``. Every problem is a
``ConfigError`` whose message is one line naming the key (``batch.max_rows``, ``tables[2].name``),
the environment variable when the value came from one, what is wrong and what is expected.

Environment overrides (values are strings, parsed to the key's type and validated like the file):

- ``CDC_REPLICATOR_<SECTION>__<KEY>``: one scalar key, e.g. ``CDC_REPLICATOR_BATCH__MAX_ROWS=5000``.
- ``CDC_REPLICATOR_TARGET__STORAGE_OPTIONS__<NAME>``: adds or replaces the storage option ``<name>``
  (lower-cased; an option of the same name in any case is replaced).
- ``CDC_REPLICATOR_TABLES=public.orders,customers``: replaces the whole table list (default options).
- ``CDC_REPLICATOR_TABLES__<i>__<KEY>``: one key of the table at 0-based index ``i`` of the
  resulting list, e.g. ``CDC_REPLICATOR_TABLES__0__SOFT_DELETE=true``.

Any other variable that starts with ``CDC_REPLICATOR_`` is an error (typo protection), except
``CDC_REPLICATOR_CONFIG``, the config file path read by the command line.

Paths: a relative ``target.uri`` and a relative sqlite path in ``state.url`` are kept as given and
so resolve against the working directory of the process, not the directory of the config file.
The source password never has to be in the file: libpq also reads ``PGPASSWORD`` and ``PGPASSFILE``.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal, TypeVar, cast, get_args

from cdc_replicator.errors import ConfigError
from cdc_replicator.model import TableId

__all__ = [
    "ENV_PREFIX",
    "BatchConfig",
    "SnapshotConfig",
    "Config",
    "LogConfig",
    "LogFormat",
    "ServerConfig",
    "SourceConfig",
    "SourceMode",
    "StateConfig",
    "TableConfig",
    "TargetConfig",
    "WatermarkConfig",
    "load_config",
    "redact_dsn",
]

ENV_PREFIX: Final = "CDC_REPLICATOR_"
# Variables with the prefix that are not config keys (so not typos).
# (CDC_REPLICATOR_MIGRATIONS: a directory holding state/ and source/ migrations, for packagers)
_RESERVED_ENV: Final = frozenset({"CDC_REPLICATOR_CONFIG", "CDC_REPLICATOR_MIGRATIONS"})

SourceMode = Literal["logical", "watermark"]
HeartbeatKind = Literal["message", "table"]
ReaderKind = Literal["process", "thread"]
ContractName = Literal["evolve", "freeze"]
LogFormat = Literal["auto", "text", "json"]
_LOG_LEVELS: Final = ("debug", "info", "warning", "error", "critical")
_MIB: Final = 1024 * 1024


# ---- the config values -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SourceConfig:
    """Where changes come from. ``repr`` redacts the DSN password."""

    dsn: str
    mode: SourceMode = "logical"
    slot: str = "cdc_replicator"
    publication: str = "cdc_replicator"
    streaming: bool = False  # pgoutput protocol 2: stream in-progress transactions
    status_interval_seconds: float = 10.0
    connect_timeout_seconds: float = 10.0
    retry_max_seconds: float = 30.0  # cap of the exponential backoff between reconnect attempts
    retry_give_up_seconds: float = 0.0  # 0 = retry forever
    heartbeat_interval_seconds: float = 0.0  # 0 = no heartbeats
    heartbeat: HeartbeatKind = "message"  # pg_logical_emit_message, or an update of cdc_replicator.heartbeat
    slot_check_interval_seconds: float = 15.0  # lag, retained WAL and wal_status of the slot
    max_retained_wal_bytes: int = 4 * 1024 * _MIB  # warn above this; 0 = never warn
    slot_create_timeout_seconds: float = 300.0  # creating a slot waits for running transactions
    reader: ReaderKind = "process"  # read and decode the stream in a child process (its own GIL) or a thread

    def __repr__(self) -> str:
        return (
            f"SourceConfig(dsn={redact_dsn(self.dsn)!r}, mode={self.mode!r}, slot={self.slot!r}, "
            f"publication={self.publication!r}, streaming={self.streaming!r}, "
            f"status_interval_seconds={self.status_interval_seconds!r}, "
            f"connect_timeout_seconds={self.connect_timeout_seconds!r}, "
            f"retry_max_seconds={self.retry_max_seconds!r}, retry_give_up_seconds={self.retry_give_up_seconds!r}, "
            f"heartbeat_interval_seconds={self.heartbeat_interval_seconds!r}, heartbeat={self.heartbeat!r}, "
            f"slot_check_interval_seconds={self.slot_check_interval_seconds!r}, "
            f"max_retained_wal_bytes={self.max_retained_wal_bytes!r}, "
            f"slot_create_timeout_seconds={self.slot_create_timeout_seconds!r}, reader={self.reader!r})"
        )


_SECRET_OPTION: Final = re.compile(r"secret|password|token|key|credential|sas", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class TargetConfig:
    """Where the Delta tables live: ``<uri>/<schema>/<table>``. ``repr`` hides secret-looking options.

    ``storage_options`` are (name, value) pairs sorted by name, passed to deltalake as a dict.
    """

    uri: str
    storage_options: tuple[tuple[str, str], ...] = ()
    # A merge rewrites every file that holds a changed key: small files keep merges into big tables
    # cheap (10k clustered changes into 10M vs 1M rows, measured with bench/stream_bench.py's merge
    # scenario at each size: 5.6x the time at 128 MiB, 4.7x at 64, 2.4x at 32, 1.5x at 16).
    target_file_size: int = 16 * _MIB

    def __repr__(self) -> str:
        opts = tuple((k, "***" if _SECRET_OPTION.search(k) else v) for k, v in self.storage_options)
        return (
            f"TargetConfig(uri={self.uri!r}, storage_options={opts!r}, "
            f"target_file_size={self.target_file_size!r})"
        )


@dataclass(frozen=True, slots=True)
class TableConfig:
    """One replicated table; its primary key is read from the catalog.

    Watermark mode only: ``cursor`` (one or more columns, compared as a tuple with the key as the
    tie-breaker), ``delete_column`` (a non-NULL value marks the row deleted), and per-table
    overrides of ``[watermark] poll_interval_seconds`` / ``page_size`` (0 = the section's value).
    """

    name: TableId
    soft_delete: bool = False
    contract: ContractName = "evolve"  # what a schema change may do: evolve follows it, freeze pauses
    columns: tuple[str, ...] = ()  # replicate only these (the key must be among them); empty = all
    exclude_columns: tuple[str, ...] = ()  # replicate all but these (never a key column)
    cursor: tuple[str, ...] = ()
    delete_column: str = ""
    poll_interval_seconds: float = 0.0
    page_size: int = 0


@dataclass(frozen=True, slots=True)
class BatchConfig:
    """A batch closes at a commit boundary as soon as any limit is reached."""

    max_rows: int = 100_000
    max_bytes: int = 256 * _MIB
    max_seconds: float = 2.0


@dataclass(frozen=True, slots=True)
class SnapshotConfig:
    """Table loads (initial load and ``cdc-replicator snapshot``)."""

    parallel: int = 0  # connections copying at once; 0 = one per CPU core, at most 4
    chunk_rows: int = 500_000  # rows per chunk (one Delta commit, about one file)


@dataclass(frozen=True, slots=True)
class WatermarkConfig:
    """Polling a (read replica) database with high-watermark queries: ``source.mode = "watermark"``."""

    poll_interval_seconds: float = 5.0
    page_size: int = 10_000  # rows per page query (and at most per Delta commit of a table)
    # each poll re-reads this far behind the settled watermark (temporal cursors: seconds; numeric
    # cursors: the same number in the cursor's units): rows of transactions that took their cursor
    # value before a poll but wrote it after
    lookback_seconds: float = 0.0
    statement_timeout_seconds: float = 60.0
    # hard deletes: compare keys between the database and Delta, range by range (0 = never)
    reconcile_interval_seconds: float = 0.0
    reconcile_range_rows: int = 50_000  # keys per compared range
    reconcile_max_rows_per_second: int = 200_000  # rate limit of the key reads


@dataclass(frozen=True, slots=True)
class StateConfig:
    """The SQLAlchemy URL of the operational state store."""

    url: str = "sqlite:///./state/cdc.db"


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """The /healthz, /readyz and /metrics listener. ``listen`` is ``host:port`` (``[v6addr]:port``)."""

    listen: str = "127.0.0.1:9187"
    enabled: bool = True
    liveness_timeout_seconds: float = 120.0  # /healthz answers 503 after this long without progress
    stop_timeout_seconds: float = 60.0  # a graceful stop longer than this exits at once; 0 = no bound

    @property
    def host(self) -> str:
        host = self.listen.rpartition(":")[0]
        return host[1:-1] if host.startswith("[") and host.endswith("]") else host

    @property
    def port(self) -> int:
        return int(self.listen.rpartition(":")[2])


@dataclass(frozen=True, slots=True)
class LogConfig:
    """Logging: ``level`` is a lower-case level name; ``format`` auto means text on a TTY, else JSON."""

    level: str = "info"
    format: LogFormat = "auto"


@dataclass(frozen=True, slots=True)
class Config:
    """The whole validated configuration."""

    source: SourceConfig
    target: TargetConfig
    tables: tuple[TableConfig, ...]
    batch: BatchConfig = BatchConfig()
    snapshot: SnapshotConfig = SnapshotConfig()
    state: StateConfig = StateConfig()
    server: ServerConfig = ServerConfig()
    log: LogConfig = LogConfig()
    watermark: WatermarkConfig = WatermarkConfig()

    @property
    def table_ids(self) -> tuple[TableId, ...]:
        return tuple(t.name for t in self.tables)

    def table(self, tid: TableId) -> TableConfig:
        """The configuration of table ``tid``; KeyError if it is not configured."""
        for t in self.tables:
            if t.name == tid:
                return t
        raise KeyError(f"{tid} is not a configured table")


# ---- DSN redaction -----------------------------------------------------------------------------

_URL_SCHEME: Final = re.compile(r"postgres(?:ql)?://", re.IGNORECASE)
_URL_USERINFO: Final = re.compile(
    r"(?P<scheme>postgres(?:ql)?://)(?P<user>[^@/:]*):(?P<password>[^@/]+)@", re.IGNORECASE
)
_URL_PASSWORD_PARAM: Final = re.compile(r"(?P<key>[?&]password=)[^&#]*", re.IGNORECASE)
_KV_PASSWORD: Final = re.compile(r"(?P<key>\bpassword\s*=\s*)(?:'(?:[^'\\]|\\.)*'?|[^\s']\S*)", re.IGNORECASE)


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


# ---- loading -----------------------------------------------------------------------------------


def load_config(path: Path | None, env: Mapping[str, str] | None = None) -> Config:
    """Read ``path`` (None: no file), apply ``CDC_REPLICATOR_*`` overrides from ``env``, validate.

    ``env`` defaults to ``os.environ``. Raises ConfigError with a one-line message on any problem.
    """
    doc = _Document.from_toml(_read_toml(path) if path is not None else {})
    doc.apply_env(os.environ if env is None else env)
    return doc.build()


def _read_toml(path: Path) -> dict[str, object]:
    try:
        data = path.read_bytes()
    except FileNotFoundError as exc:
        raise ConfigError(f"config: file not found: {path}") from exc
    except OSError as exc:
        raise ConfigError(f"config: cannot read {path}: {exc.strerror or exc}") from exc
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config: {path} is not UTF-8 text (byte {exc.start} cannot be decoded)") from exc
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        # Python 3.11 puts the position only in the message: "Invalid value (at line 3, column 9)".
        m = re.fullmatch(
            r"(?P<what>.*?)\s*\((?:at line (?P<line>\d+), column (?P<col>\d+)|at end of document)\)", str(exc)
        )
        if m is None:
            raise ConfigError(f"config: TOML syntax error in {path}: {exc}") from exc
        where = f"line {m.group('line')}, column {m.group('col')}" if m.group("line") else "end of file"
        raise ConfigError(f"config: TOML syntax error in {path} at {where}: {m.group('what')}") from exc


class _Invalid(Exception):
    """Raised by a converter: the value is not ``expected``."""

    def __init__(self, expected: str) -> None:
        super().__init__(expected)
        self.expected = expected


@dataclass(frozen=True, slots=True)
class _Val:
    """One raw value and where it came from: ``env`` is the variable, None for the file."""

    value: object
    env: str | None = None


_T = TypeVar("_T")
_Converter = Callable[[object, bool], _T]

_SECTIONS: Final[dict[str, type]] = {
    "source": SourceConfig,
    "target": TargetConfig,
    "batch": BatchConfig,
    "snapshot": SnapshotConfig,
    "state": StateConfig,
    "server": ServerConfig,
    "log": LogConfig,
    "watermark": WatermarkConfig,
}
_NESTED: Final = {("target", "storage_options")}  # keys that are TOML tables, not scalars


def _keys(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def _scalar_keys(section: str) -> list[str]:
    return [k for k in _keys(_SECTIONS[section]) if (section, k) not in _NESTED]


def _env_name(*parts: str) -> str:
    return ENV_PREFIX + "__".join(parts).upper()


def _suggest(word: str, candidates: list[str], fmt: Callable[[str], str] = str, fallback: str = "") -> str:
    """`` (did you mean X?)`` for the closest candidate, else ``fallback`` or the list of candidates."""
    close = difflib.get_close_matches(word, candidates, n=1, cutoff=0.6)
    if close:
        return f" (did you mean {fmt(close[0])}?)"
    return fallback or f" (expected one of: {', '.join(fmt(c) for c in candidates)})"


def _describe(value: object) -> str:
    """How a wrong file value shows in a message: its TOML spelling and, where it helps, its type."""
    if isinstance(value, bool):
        return f"{str(value).lower()} (a boolean)"
    if isinstance(value, str):
        return f"{json.dumps(value)} (a string)"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    return f"{value} (a {type(value).__name__})"


def _label(path: str, v: _Val) -> str:
    return f"{path} (from {v.env})" if v.env else path


class _Document:
    """The merged raw configuration: file values, then environment overrides, not yet validated."""

    def __init__(self) -> None:
        self.sections: dict[str, dict[str, _Val]] = {name: {} for name in _SECTIONS}
        self.storage_options: dict[str, _Val] = {}
        self.tables: list[dict[str, _Val]] = []
        self.tables_env: str | None = None  # the variable that replaced the list, if any

    @classmethod
    def from_toml(cls, raw: Mapping[str, object]) -> _Document:
        doc = cls()
        known = [*_SECTIONS, "tables"]
        for name, body in raw.items():
            if name == "tables":
                doc._read_tables(body)
                continue
            if name not in _SECTIONS:
                raise ConfigError(f"config: unknown section [{name}]" + _suggest(name, known, "[{}]".format))
            if not isinstance(body, dict):
                raise ConfigError(f"config: {name} must be a table ([{name}]), got {_describe(body)}")
            keys = _keys(_SECTIONS[name])
            for key, value in body.items():
                if key not in keys:
                    raise ConfigError(
                        f"config: unknown key {name}.{key}" + _suggest(key, keys, f"{name}.{{}}".format)
                    )
                if (name, key) == ("target", "storage_options"):
                    doc._read_storage_options(value)
                else:
                    doc.sections[name][key] = _Val(value)
        return doc

    def _read_storage_options(self, body: object) -> None:
        if not isinstance(body, dict):
            raise ConfigError(
                "config: target.storage_options must be a table of strings ([target.storage_options]), "
                f"got {_describe(body)}"
            )
        seen: dict[str, str] = {}
        for key, value in body.items():
            if not isinstance(value, str):
                raise ConfigError(
                    f"config: target.storage_options.{key} must be a string, got {_describe(value)}"
                )
            if key.lower() in seen:
                raise ConfigError(
                    f"config: target.storage_options.{key} repeats target.storage_options.{seen[key.lower()]} "
                    "(option names are case-insensitive); keep one"
                )
            seen[key.lower()] = key
            self.storage_options[key] = _Val(value)

    def _read_tables(self, body: object) -> None:
        if not isinstance(body, list):
            raise ConfigError(
                f"config: tables must be an array of tables ([[tables]] entries), got {_describe(body)}"
            )
        keys = _keys(TableConfig)
        for i, entry in enumerate(body):
            if not isinstance(entry, dict):
                raise ConfigError(
                    f'config: tables[{i}] must be a table like {{ name = "public.orders" }}, '
                    f"got {_describe(entry)}"
                )
            for key in entry:
                if key not in keys:
                    raise ConfigError(
                        f"config: unknown key tables[{i}].{key}"
                        + _suggest(key, keys, f"tables[{i}].{{}}".format)
                    )
            self.tables.append({key: _Val(value) for key, value in entry.items()})

    # -- environment --

    def apply_env(self, env: Mapping[str, str]) -> None:
        """Apply every ``CDC_REPLICATOR_*`` variable; one that names no key is an error."""
        whole = _env_name("tables")
        # The list first, so that per-table indexes refer to the resulting list.
        if whole in env:
            self.tables_env = whole
            items = (item.strip() for item in env[whole].split(","))
            self.tables = [{"name": _Val(item, whole)} for item in items if item]
        per_table: list[tuple[str, int, str]] = []
        for name in sorted(env):
            if not name.startswith(ENV_PREFIX) or name in _RESERVED_ENV or name == whole:
                continue
            parts = name[len(ENV_PREFIX) :].split("__", 2)
            value = _Val(env[name], name)
            if len(parts) == 2 and _is_upper(parts) and parts[0].lower() in _SECTIONS:
                section, key = parts[0].lower(), parts[1].lower()
                if key in _scalar_keys(section):
                    self.sections[section][key] = value
                    continue
            elif len(parts) == 3 and parts[:2] == ["TARGET", "STORAGE_OPTIONS"] and parts[2]:
                option = parts[2].lower()
                for existing in [k for k in self.storage_options if k.lower() == option]:
                    del self.storage_options[existing]
                self.storage_options[option] = value
                continue
            elif len(parts) == 3 and parts[0] == "TABLES" and _is_index(parts[1]) and _is_upper(parts):
                if parts[2].lower() in _keys(TableConfig):
                    per_table.append((name, int(parts[1]), parts[2].lower()))
                    continue
            hint = " (config/example.toml lists every variable)"
            raise ConfigError(
                f"config: unknown environment variable {name}"
                + _suggest(
                    name[len(ENV_PREFIX) :].upper(), _env_names(parts), (ENV_PREFIX + "{}").format, hint
                )
            )
        for name, index, key in per_table:
            if index >= len(self.tables):
                raise ConfigError(
                    f"config: {name} refers to tables[{index}], but only {len(self.tables)} "
                    "table(s) are configured (indexes start at 0)"
                )
            self.tables[index][key] = _Val(env[name], name)

    # -- validation --

    def build(self) -> Config:
        src = _Section(self, "source", SourceConfig)
        tgt = _Section(self, "target", TargetConfig)
        batch = _Section(self, "batch", BatchConfig)
        snap = _Section(self, "snapshot", SnapshotConfig)
        server = _Section(self, "server", ServerConfig)
        log = _Section(self, "log", LogConfig)
        state = _Section(self, "state", StateConfig)
        wm = _Section(self, "watermark", WatermarkConfig)
        mode = cast(SourceMode, src.get("mode", _choice(get_args(SourceMode))))
        cfg = Config(
            source=SourceConfig(
                dsn=src.get("dsn", _nonempty_str),
                mode=mode,
                slot=src.get("slot", _slot_name),
                publication=src.get("publication", _pg_name),
                streaming=src.get("streaming", _bool),
                status_interval_seconds=src.get("status_interval_seconds", _positive_float),
                connect_timeout_seconds=src.get("connect_timeout_seconds", _positive_float),
                retry_max_seconds=src.get("retry_max_seconds", _positive_float),
                retry_give_up_seconds=src.get("retry_give_up_seconds", _nonnegative_float),
                heartbeat_interval_seconds=src.get("heartbeat_interval_seconds", _nonnegative_float),
                heartbeat=cast(HeartbeatKind, src.get("heartbeat", _choice(get_args(HeartbeatKind)))),
                reader=cast(ReaderKind, src.get("reader", _choice(get_args(ReaderKind)))),
                slot_check_interval_seconds=src.get("slot_check_interval_seconds", _positive_float),
                max_retained_wal_bytes=src.get("max_retained_wal_bytes", _nonnegative_int),
                slot_create_timeout_seconds=src.get("slot_create_timeout_seconds", _positive_float),
            ),
            target=TargetConfig(
                uri=tgt.get("uri", _nonempty_str),
                storage_options=tuple(
                    sorted((k, cast(str, v.value)) for k, v in self.storage_options.items())
                ),
                target_file_size=tgt.get("target_file_size", _positive_int),
            ),
            tables=self._build_tables(mode),
            batch=BatchConfig(
                max_rows=batch.get("max_rows", _positive_int),
                max_bytes=batch.get("max_bytes", _positive_int),
                max_seconds=batch.get("max_seconds", _positive_float),
            ),
            snapshot=SnapshotConfig(
                parallel=snap.get("parallel", _nonnegative_int),
                chunk_rows=snap.get("chunk_rows", _positive_int),
            ),
            state=StateConfig(url=state.get("url", _sqlalchemy_url)),
            server=ServerConfig(
                listen=server.get("listen", _listen),
                enabled=server.get("enabled", _bool),
                liveness_timeout_seconds=server.get("liveness_timeout_seconds", _positive_float),
                stop_timeout_seconds=server.get("stop_timeout_seconds", _nonnegative_float),
            ),
            log=LogConfig(
                level=log.get("level", _log_level),
                format=cast(LogFormat, log.get("format", _choice(get_args(LogFormat)))),
            ),
            watermark=WatermarkConfig(
                poll_interval_seconds=wm.get("poll_interval_seconds", _positive_float),
                page_size=wm.get("page_size", _positive_int),
                lookback_seconds=wm.get("lookback_seconds", _nonnegative_float),
                statement_timeout_seconds=wm.get("statement_timeout_seconds", _positive_float),
                reconcile_interval_seconds=wm.get("reconcile_interval_seconds", _nonnegative_float),
                reconcile_range_rows=wm.get("reconcile_range_rows", _positive_int),
                reconcile_max_rows_per_second=wm.get("reconcile_max_rows_per_second", _positive_int),
            ),
        )
        return cfg

    def _build_tables(self, mode: SourceMode) -> tuple[TableConfig, ...]:
        if not self.tables:
            source = f"{self.tables_env} is empty" if self.tables_env else "none is configured"
            raise ConfigError(
                f"config: tables: at least one table is required, but {source} "
                f'(add a [[tables]] entry with name = "schema.table", or set {_env_name("tables")})'
            )
        out: list[TableConfig] = []
        first: dict[TableId, int] = {}
        for i, raw in enumerate(self.tables):
            entry = _Section(self, f"tables[{i}]", TableConfig, raw)
            name = entry.get("name", _table_name)
            if name in first:
                raise ConfigError(
                    f"config: tables[{i}].name {name} is listed twice (also tables[{first[name]}].name); "
                    "list each table once"
                )
            first[name] = i
            cursor = entry.get("cursor", _column_list)
            columns = entry.get("columns", _column_list)
            excluded = entry.get("exclude_columns", _column_list)
            if columns and excluded:
                raise ConfigError(
                    f"config: tables[{i}] sets both columns and exclude_columns; choose one "
                    "(columns lists what to replicate, exclude_columns what to leave out)"
                )
            if mode == "watermark" and not cursor:
                raise ConfigError(
                    f"config: tables[{i}].cursor is required in watermark mode: the column(s) whose "
                    f'value grows with every change of {name}, e.g. cursor = "updated_at"'
                )
            out.append(
                TableConfig(
                    name=name,
                    soft_delete=entry.get("soft_delete", _bool),
                    contract=cast(ContractName, entry.get("contract", _choice(get_args(ContractName)))),
                    columns=columns,
                    exclude_columns=excluded,
                    cursor=cursor,
                    delete_column=entry.get("delete_column", _pg_name)
                    if "delete_column" in entry.values
                    else "",
                    poll_interval_seconds=entry.get("poll_interval_seconds", _nonnegative_float),
                    page_size=entry.get("page_size", _nonnegative_int),
                )
            )
        return tuple(out)


def _is_index(text: str) -> bool:
    return text.isascii() and text.isdigit()


def _is_upper(parts: list[str]) -> bool:
    return all(p == p.upper() for p in parts)


def _env_names(parts: list[str]) -> list[str]:
    """Every variable name a config key can take, without the prefix, for suggestions.

    Table indexes and storage option names are taken from ``parts`` (the name being checked).
    """
    names = [_env_name(s, k) for s in _SECTIONS for k in _scalar_keys(s)]
    names.append(_env_name("tables"))
    index = parts[1] if len(parts) > 1 and _is_index(parts[1]) else "0"
    names += [_env_name("tables", index, k) for k in _keys(TableConfig)]
    names.append(_env_name("target", "storage_options", parts[-1] if len(parts) == 3 else "<name>"))
    return [n[len(ENV_PREFIX) :] for n in names]


class _Section:
    """Typed access to one section's raw values; defaults come from the dataclass fields."""

    def __init__(self, doc: _Document, path: str, cls: type, values: dict[str, _Val] | None = None) -> None:
        self.path = path
        self.values = doc.sections[path] if values is None else values
        self.defaults = {f.name: f.default for f in dataclasses.fields(cls)}

    def get(self, key: str, convert: _Converter[_T]) -> _T:
        path = f"{self.path}.{key}"
        v = self.values.get(key)
        if v is None:
            default = self.defaults[key]
            if default is dataclasses.MISSING:
                raise ConfigError(f"config: {path} is required ({self._where_to_set(key)})")
            return cast(_T, default)
        try:
            return convert(v.value, v.env is not None)
        except _Invalid as exc:
            got = repr(v.value) if v.env is not None else _describe(v.value)
            raise ConfigError(f"config: {_label(path, v)} must be {exc.expected}, got {got}") from None

    def _where_to_set(self, key: str) -> str:
        if self.path.startswith("tables["):
            return f"set {key} in that [[tables]] entry"
        return f"set it in [{self.path}] or {_env_name(self.path, key)}"


# ---- converters: (raw value, came from env?) -> typed value, or _Invalid(expected) ---------------


def _nonempty_str(value: object, from_env: bool) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _Invalid("a non-empty string")
    return value


_SLOT_RE: Final = re.compile(r"[a-z0-9_]{1,63}")


def _slot_name(value: object, from_env: bool) -> str:
    if not isinstance(value, str) or not _SLOT_RE.fullmatch(value):
        raise _Invalid("a replication slot name (1 to 63 lower-case letters, digits and underscores)")
    return value


def _pg_name(value: object, from_env: bool) -> str:
    # Longer names would be truncated by PostgreSQL (NAMEDATALEN), so "create if missing" would not find them.
    if not isinstance(value, str) or not value or len(value.encode()) > 63:
        raise _Invalid("a PostgreSQL name of 1 to 63 bytes")
    return value


def _positive_int(value: object, from_env: bool) -> int:
    expected = "a positive integer"
    if from_env and isinstance(value, str):
        try:
            value = int(value.strip())
        except ValueError:
            raise _Invalid(expected) from None
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise _Invalid(expected)
    return value


def _float(value: object, from_env: bool, expected: str) -> float:
    if from_env and isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            raise _Invalid(expected) from None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise _Invalid(expected)
    return float(value)


def _positive_float(value: object, from_env: bool) -> float:
    expected = "a positive number"
    result = _float(value, from_env, expected)
    if result <= 0:
        raise _Invalid(expected)
    return result


def _nonnegative_int(value: object, from_env: bool) -> int:
    if value == 0 or value == "0":
        return 0
    return _positive_int(value, from_env)


def _nonnegative_float(value: object, from_env: bool) -> float:
    expected = "a number >= 0"
    result = _float(value, from_env, expected)
    if result < 0:
        raise _Invalid(expected)
    return result


_ENV_BOOLS: Final = {"true": True, "false": False, "1": True, "0": False}


def _bool(value: object, from_env: bool) -> bool:
    if from_env and isinstance(value, str):
        if value.strip().lower() in _ENV_BOOLS:
            return _ENV_BOOLS[value.strip().lower()]
        raise _Invalid("true or false (or 1 or 0)")
    if not isinstance(value, bool):
        raise _Invalid("true or false")
    return value


def _choice(options: tuple[str, ...]) -> _Converter[str]:
    def convert(value: object, from_env: bool) -> str:
        if not isinstance(value, str) or value not in options:
            raise _Invalid("one of " + ", ".join(json.dumps(o) for o in options))
        return value

    return convert


def _log_level(value: object, from_env: bool) -> str:
    if not isinstance(value, str) or value.lower() not in _LOG_LEVELS:
        raise _Invalid("one of " + ", ".join(json.dumps(o) for o in _LOG_LEVELS))
    return value.lower()


def _listen(value: object, from_env: bool) -> str:
    expected = "host:port with a port from 0 to 65535 (IPv6 as [::1]:9187)"
    if not isinstance(value, str):
        raise _Invalid(expected)
    host, colon, port = value.rpartition(":")
    if not colon or not host or not port.isascii() or not port.isdigit() or int(port) > 65535:
        raise _Invalid(expected)
    if ":" in host and not (host.startswith("[") and host.endswith("]")):
        raise _Invalid(expected)
    return value


_URL_RE: Final = re.compile(r"[A-Za-z][A-Za-z0-9+._-]*://.*", re.DOTALL)


def _sqlalchemy_url(value: object, from_env: bool) -> str:
    if not isinstance(value, str) or not _URL_RE.fullmatch(value):
        raise _Invalid("a SQLAlchemy URL such as sqlite:///./state/cdc.db")
    return value


def _column_list(value: object, from_env: bool) -> tuple[str, ...]:
    """A column name, a list of names, or (from the environment) names separated by commas."""
    if from_env and isinstance(value, str):
        value = [v.strip() for v in value.split(",")]
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items or not all(isinstance(v, str) and v.strip() for v in items):
        raise _Invalid('a column name or a list of column names, e.g. "updated_at" or ["updated_at", "id"]')
    names = tuple(str(v).strip() for v in items)
    if len(set(names)) != len(names):
        raise _Invalid("distinct column names")
    return names


def _table_name(value: object, from_env: bool) -> TableId:
    expected = "a table name like public.orders (orders means public.orders)"
    if not isinstance(value, str) or not value or value != value.strip():
        raise _Invalid(expected)
    try:
        tid = TableId.parse(value)
    except ValueError:
        raise _Invalid(expected) from None
    if not tid.schema or not tid.name:
        raise _Invalid(expected)
    return tid
