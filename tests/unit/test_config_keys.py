"""Specification of the key declarations: every fact about a key comes from its one field.

The list of keys is read from the dataclass fields (``cdc_replicator.config.keys``), never written
out here, so a key added to a section is held to all of these at once: a one-line doc, a line in
config/example.toml with its environment variable, a variable that reaches it, a sane default.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from cdc_replicator.config import Config, SourceConfig, TableConfig, TargetConfig, load_config
from cdc_replicator.config.keys import KeySpec, Section, env_name, sections_of
from cdc_replicator.errors import ConfigError
from cdc_replicator.model import TableId

EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "example.toml"
MINIMAL = '[source]\ndsn = "dbname=app"\n[target]\nuri = "./lake"\n[[tables]]\nname = "public.orders"\n'


@dataclass(frozen=True, slots=True)
class Declared:
    """One declared key, with the TOML header it lives under and its environment variable."""

    section: Section
    spec: KeySpec

    @property
    def path(self) -> str:
        return f"{self.section.name}.{self.spec.name}"

    @property
    def header(self) -> str:
        if self.section.array:
            return f"[[{self.section.name}]]"
        return f"[{self.path}]" if self.spec.options else f"[{self.section.name}]"

    @property
    def env(self) -> str:
        """The variable, with index 0 for a table key and ``<NAME>`` for an option."""
        if self.section.array:
            return env_name(self.section.name, "0", self.spec.name)
        if self.spec.options:
            return env_name(self.section.name, self.spec.name) + "__<NAME>"
        return env_name(self.section.name, self.spec.name)


DECLARED = [Declared(s, k) for s in sections_of(Config) for k in s.keys]


def example_lines() -> list[tuple[str, str]]:
    """(header, line) for every line of the example, the header being the last ``[...]`` above it."""
    header, out = "", []
    for line in EXAMPLE.read_text(encoding="utf-8").splitlines():
        if re.fullmatch(r"\[\[?[a-z_.]+\]\]?", line.strip()):
            header = line.strip()
        out.append((header, line))
    return out


def documented_keys() -> set[tuple[str, str]]:
    """(header, key) of each ``key = ...`` line of the example, commented out or not."""
    found = set()
    for header, line in example_lines():
        m = re.match(r"#?\s*([a-z_]+)\s*=", line)
        if m:
            found.add((header, m.group(1)))
    return found


def test_the_keys_are_read_from_the_declarations() -> None:
    paths = [d.path for d in DECLARED]

    assert {d.section.name for d in DECLARED} == {
        "source",
        "target",
        "tables",
        "batch",
        "snapshot",
        "state",
        "server",
        "log",
        "watermark",
        "verify",
        "maintenance",
    }
    assert "source.dsn" in paths and "tables.cursor" in paths and "target.storage_options" in paths
    assert len(paths) == len(set(paths))


@pytest.mark.parametrize("declared", DECLARED, ids=lambda d: d.path)
def test_every_key_has_a_one_line_doc(declared: Declared) -> None:
    doc = declared.spec.doc

    assert doc.strip() == doc and doc, "a key needs a doc: metadata=key(convert, 'What it does.')"
    assert "\n" not in doc and len(doc) <= 100, "the doc is one short line; the story goes in example.toml"
    assert doc.endswith("."), "the doc is a sentence"


@pytest.mark.parametrize("declared", DECLARED, ids=lambda d: d.path)
def test_the_example_documents_every_key_under_its_header(declared: Declared) -> None:
    if declared.spec.options:
        assert any(line.strip() == declared.header for _, line in example_lines())
    else:
        key = declared.spec.name
        assert (declared.header, key) in documented_keys(), (
            f"config/example.toml lacks a line `{key} = ...` (or `# {key} = ...`) under {declared.header}"
        )


@pytest.mark.parametrize("declared", DECLARED, ids=lambda d: d.path)
def test_the_example_names_the_env_variable_of_every_key(declared: Declared) -> None:
    assert declared.env in EXAMPLE.read_text(encoding="utf-8")


def test_the_example_documents_no_key_that_is_not_declared() -> None:
    declared = {(d.header, d.spec.name) for d in DECLARED if not d.spec.options}
    option_headers = {d.header for d in DECLARED if d.spec.options}

    stale = {(h, k) for h, k in documented_keys() if h not in option_headers and (h, k) not in declared}

    assert stale == set()


def test_every_env_variable_the_example_names_is_one_the_loader_accepts() -> None:
    text = EXAMPLE.read_text(encoding="utf-8")
    names = set(re.findall(r"CDC_REPLICATOR_[A-Z0-9_]*[A-Z0-9](?![A-Z0-9_<])", text))
    assert len(names) > 40

    for name in sorted(names):
        try:
            load_config(EXAMPLE, env={name: "1"})
        except ConfigError as exc:
            assert "unknown environment variable" not in exc.message, name


@pytest.mark.parametrize("declared", [d for d in DECLARED if not d.spec.options], ids=lambda d: d.path)
def test_every_key_is_reached_by_its_env_variable(tmp_path: Path, declared: Declared) -> None:
    path = tmp_path / "cdc.toml"
    path.write_text(MINIMAL, encoding="utf-8")
    value = {"name": "public.other", "dsn": "dbname=other", "uri": "./other"}.get(declared.spec.name, "7")

    try:
        cfg = load_config(path, env={declared.env: value})
    except ConfigError as exc:  # "7" is not a value of every key; then the error names key and variable
        assert exc.message.startswith(
            f"config: {declared.path.replace('tables.', 'tables[0].')} (from {declared.env})"
        )
        return
    section = cfg.tables[0] if declared.section.array else getattr(cfg, declared.section.name)
    assert getattr(section, declared.spec.name) == declared.spec.convert(value, True)


@pytest.mark.parametrize("declared", [d for d in DECLARED if not d.spec.required], ids=lambda d: d.path)
def test_every_default_is_a_value_its_key_accepts_or_means_unset(declared: Declared) -> None:
    default = declared.spec.default
    if default in ("", ()):  # unset: no column list, no delete column, no storage option
        return

    assert declared.spec.convert(default, False) == default
    assert type(declared.spec.convert(default, False)) is type(default)


def test_repr_redacts_every_key_declared_secret_and_nothing_else() -> None:
    cfg = Config(
        source=SourceConfig(dsn="postgresql://u:hunter2@h/db", slot="my_slot"),
        target=TargetConfig(
            uri="s3://b", storage_options=(("aws_secret_access_key", "hunter3"), ("region", "eu"))
        ),
        tables=(TableConfig(TableId("public", "t")),),
    )

    text = repr(cfg)

    assert "hunter2" not in text and "hunter3" not in text
    assert "dsn='postgresql://u:***@h/db'" in text and "slot='my_slot'" in text
    assert "storage_options=(('aws_secret_access_key', '***'), ('region', 'eu'))" in text
    assert [d.path for d in DECLARED if d.spec.redact] == ["source.dsn", "target.storage_options"]
