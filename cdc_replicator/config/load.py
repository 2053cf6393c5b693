"""Load the config: read the TOML file, merge ``CDC_REPLICATOR_*`` overrides, validate into ``Config``.

``load_config(path, env)`` reads the file (if any), applies ``CDC_REPLICATOR_*`` environment
overrides, validates every value and returns a frozen ``Config``. Every problem is a
``ConfigError`` whose message is one line naming the key (``batch.max_rows``, ``tables[2].name``),
the environment variable when the value came from one, what is wrong and what is expected.
Which keys exist, their defaults, converters and variables all come from the field declarations
of ``sections.py`` (see ``keys.py``); this module knows only the shape of the file.

Environment overrides (values are strings, parsed to the key's type and validated like the file):

- ``CDC_REPLICATOR_<SECTION>__<KEY>``: one scalar key, e.g. ``CDC_REPLICATOR_BATCH__MAX_ROWS=5000``.
- ``CDC_REPLICATOR_TARGET__STORAGE_OPTIONS__<NAME>``: adds or replaces the storage option ``<name>``
  (lower-cased; an option of the same name in any case is replaced).
- ``CDC_REPLICATOR_TABLES=public.orders,customers``: replaces the whole table list (default options).
- ``CDC_REPLICATOR_TABLES__<i>__<KEY>``: one key of the table at 0-based index ``i`` of the
  resulting list, e.g. ``CDC_REPLICATOR_TABLES__0__SOFT_DELETE=true``.

Any other variable that starts with ``CDC_REPLICATOR_`` is an error (typo protection), except
``CDC_REPLICATOR_CONFIG`` (the config file path read by the command line) and
``CDC_REPLICATOR_MIGRATIONS`` (a directory of migrations, for packagers).

Paths: a relative ``target.uri`` and a relative sqlite path in ``state.url`` are kept as given and
so resolve against the working directory of the process, not the directory of the config file.
The source password never has to be in the file: libpq also reads ``PGPASSWORD`` and ``PGPASSFILE``,
and ``source.password_file`` names a file holding it (``secrets.py``).
"""

from __future__ import annotations

import difflib
import json
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TypeVar, cast

from cdc_replicator.config.converters import Invalid
from cdc_replicator.config.keys import ENV_PREFIX, KeySpec, Section, env_name, keys_of, sections_of
from cdc_replicator.config.secrets import with_password_file
from cdc_replicator.config.sections import Config, SourceConfig, TableConfig
from cdc_replicator.errors import ConfigError
from cdc_replicator.model import TableId

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

# Variables with the prefix that are not config keys (so not typos).
# (CDC_REPLICATOR_MIGRATIONS: a directory holding state/ and source/ migrations, for packagers)
_RESERVED_ENV: Final = frozenset({"CDC_REPLICATOR_CONFIG", "CDC_REPLICATOR_MIGRATIONS"})

_SECTIONS: Final = sections_of(Config)
_TABLES: Final = next(s for s in _SECTIONS if s.array)  # [[tables]]; CDC_REPLICATOR_TABLES lists names
_D = TypeVar("_D", bound="DataclassInstance")


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


@dataclass(frozen=True, slots=True)
class _Val:
    """One raw value and where it came from: ``env`` is the variable, None for the file."""

    value: object
    env: str | None = None


# ---- the environment variables, derived from the declarations ------------------------------------

# CDC_REPLICATOR_<SECTION>__<KEY> → (section, key), for every scalar key of a [section]
_SCALAR_ENV: Final = {
    env_name(s.name, k.name): (s.name, k.name)
    for s in _SECTIONS
    if not s.array
    for k in s.keys
    if not k.options
}
# CDC_REPLICATOR_<SECTION>__<KEY>__ (followed by an option name) → "section.key", for every options key
_OPTION_ENV: Final = {
    env_name(s.name, k.name) + "__": f"{s.name}.{k.name}"
    for s in _SECTIONS
    if not s.array
    for k in s.keys
    if k.options
}
# the <KEY> of CDC_REPLICATOR_TABLES__<i>__<KEY> → key
_TABLE_KEY_ENV: Final = {k.name.upper(): k.name for k in _TABLES.keys}


def _table_key(name: str) -> tuple[int, str] | None:
    """(index, key) when ``name`` is ``CDC_REPLICATOR_TABLES__<i>__<KEY>``, else None."""
    parts = name[len(ENV_PREFIX) :].split("__", 2)
    if (
        len(parts) == 3
        and parts[0] == _TABLES.name.upper()
        and _is_index(parts[1])
        and parts[2] in _TABLE_KEY_ENV
    ):
        return int(parts[1]), _TABLE_KEY_ENV[parts[2]]
    return None


def _is_index(text: str) -> bool:
    return text.isascii() and text.isdigit()


def _env_names(parts: list[str]) -> list[str]:
    """Every variable name a config key can take, without the prefix, for suggestions.

    Table indexes and option names are taken from ``parts`` (the name being checked, split on ``__``).
    """
    names = [*_SCALAR_ENV, env_name(_TABLES.name)]
    index = parts[1] if len(parts) > 1 and _is_index(parts[1]) else "0"
    names += [env_name(_TABLES.name, index, k.name) for k in _TABLES.keys]
    names += [prefix + (parts[-1] if len(parts) == 3 else "<NAME>").upper() for prefix in _OPTION_ENV]
    return [n[len(ENV_PREFIX) :] for n in names]


# ---- messages ------------------------------------------------------------------------------------


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


def _convert(path: str, spec: KeySpec, v: _Val) -> object:
    try:
        return spec.convert(v.value, v.env is not None)
    except Invalid as exc:
        secret = spec.redact is not None and not spec.options and isinstance(v.value, str)
        shown = spec.redact(v.value) if secret and spec.redact is not None else v.value
        got = repr(shown) if v.env is not None else _describe(shown)
        raise ConfigError(f"config: {_label(path, v)} must be {exc.expected}, got {got}") from None


# ---- the merged document -------------------------------------------------------------------------


class _Document:
    """The merged raw configuration: file values, then environment overrides, not yet validated."""

    def __init__(self) -> None:
        self.sections: dict[str, dict[str, _Val]] = {s.name: {} for s in _SECTIONS if not s.array}
        self.options: dict[str, dict[str, _Val]] = {path: {} for path in _OPTION_ENV.values()}
        self.tables: list[dict[str, _Val]] = []
        self.tables_env: str | None = None  # the variable that replaced the list, if any

    @classmethod
    def from_toml(cls, raw: Mapping[str, object]) -> _Document:
        doc = cls()
        by_name = {s.name: s for s in _SECTIONS}
        known = [s.name for s in _SECTIONS if not s.array] + [s.name for s in _SECTIONS if s.array]
        for name, body in raw.items():
            section = by_name.get(name)
            if section is None:
                raise ConfigError(f"config: unknown section [{name}]" + _suggest(name, known, "[{}]".format))
            if section.array:
                doc._read_tables(body)
            else:
                doc._read_section(section, body)
        return doc

    def _read_section(self, section: Section, body: object) -> None:
        name = section.name
        if not isinstance(body, dict):
            raise ConfigError(f"config: {name} must be a table ([{name}]), got {_describe(body)}")
        for key, value in body.items():
            spec = section.find(key)
            if spec is None:
                keys = [k.name for k in section.keys]
                raise ConfigError(
                    f"config: unknown key {name}.{key}" + _suggest(key, keys, f"{name}.{{}}".format)
                )
            if spec.options:
                self._read_options(f"{name}.{key}", spec, value)
            else:
                self.sections[name][key] = _Val(value)

    def _read_options(self, path: str, spec: KeySpec, body: object) -> None:
        if not isinstance(body, dict):
            raise ConfigError(f"config: {path} must be a table of strings ([{path}]), got {_describe(body)}")
        seen: dict[str, str] = {}
        for key, value in body.items():
            _convert(f"{path}.{key}", spec, _Val(value))  # a wrong file value fails before the environment
            if key.lower() in seen:
                raise ConfigError(
                    f"config: {path}.{key} repeats {path}.{seen[key.lower()]} "
                    "(option names are case-insensitive); keep one"
                )
            seen[key.lower()] = key
            self.options[path][key] = _Val(value)

    def _read_tables(self, body: object) -> None:
        if not isinstance(body, list):
            raise ConfigError(
                f"config: tables must be an array of tables ([[tables]] entries), got {_describe(body)}"
            )
        keys = [k.name for k in _TABLES.keys]
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
        whole = env_name(_TABLES.name)
        # The list first, so that per-table indexes refer to the resulting list.
        if whole in env:
            self.tables_env = whole
            items = (item.strip() for item in env[whole].split(","))
            self.tables = [{"name": _Val(item, whole)} for item in items if item]
        per_table: list[tuple[str, int, str]] = []
        for name in sorted(env):
            if not name.startswith(ENV_PREFIX) or name in _RESERVED_ENV or name == whole:
                continue
            value = _Val(env[name], name)
            if name in _SCALAR_ENV:
                section, key = _SCALAR_ENV[name]
                self.sections[section][key] = value
            elif prefix := next((p for p in _OPTION_ENV if name.startswith(p) and name != p), None):
                self._set_env_option(_OPTION_ENV[prefix], name[len(prefix) :].lower(), value)
            elif table_key := _table_key(name):
                per_table.append((name, *table_key))
            else:
                parts = name[len(ENV_PREFIX) :].split("__", 2)
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

    def _set_env_option(self, path: str, option: str, value: _Val) -> None:
        """Add option ``option`` (lower case), replacing one of the same name in any case."""
        options = self.options[path]
        for existing in [k for k in options if k.lower() == option]:
            del options[existing]
        options[option] = value

    # -- validation --

    def build(self) -> Config:
        """Every section converted key by key, in declaration order, then the cross-key rules."""
        built: dict[str, Any] = {}
        for s in _SECTIONS:
            if s.array:
                built[s.name] = self._build_tables(cast(SourceConfig, built["source"]).mode)
            else:
                built[s.name] = self._build(s.cls, s.name, self.sections[s.name], in_entry=False)
        given = self.sections["source"].get("password_file")
        label = _label("source.password_file", given) if given else "source.password_file"
        return with_password_file(Config(**built), label=label)

    def _build(self, cls: type[_D], path: str, raw: Mapping[str, _Val], *, in_entry: bool) -> _D:
        values: dict[str, object] = {}
        for spec in keys_of(cls):
            if spec.options:
                options = self.options[f"{path}.{spec.name}"]
                values[spec.name] = tuple(
                    sorted(
                        (k, cast(str, _convert(f"{path}.{spec.name}.{k}", spec, v)))
                        for k, v in options.items()
                    )
                )
            elif (v := raw.get(spec.name)) is not None:
                values[spec.name] = _convert(f"{path}.{spec.name}", spec, v)
            elif spec.required:
                where = (
                    f"set {spec.name} in that [[tables]] entry"
                    if in_entry
                    else f"set it in [{path}] or {env_name(path, spec.name)}"
                )
                raise ConfigError(f"config: {path}.{spec.name} is required ({where})")
        return cast(Callable[..., _D], cls)(**values)

    def _build_tables(self, mode: str) -> tuple[TableConfig, ...]:
        if not self.tables:
            source = f"{self.tables_env} is empty" if self.tables_env else "none is configured"
            raise ConfigError(
                f"config: tables: at least one table is required, but {source} "
                f'(add a [[tables]] entry with name = "schema.table", or set {env_name("tables")})'
            )
        out: list[TableConfig] = []
        first: dict[TableId, int] = {}
        for i, raw in enumerate(self.tables):
            table = self._build(TableConfig, f"tables[{i}]", raw, in_entry=True)
            if table.name in first:
                raise ConfigError(
                    f"config: tables[{i}].name {table.name} is listed twice "
                    f"(also tables[{first[table.name]}].name); list each table once"
                )
            first[table.name] = i
            if table.columns and table.exclude_columns:
                raise ConfigError(
                    f"config: tables[{i}] sets both columns and exclude_columns; choose one "
                    "(columns lists what to replicate, exclude_columns what to leave out)"
                )
            if mode == "watermark" and not table.cursor:
                raise ConfigError(
                    f"config: tables[{i}].cursor is required in watermark mode: the column(s) whose "
                    f'value grows with every change of {table.name}, e.g. cursor = "updated_at"'
                )
            out.append(table)
        return tuple(out)
