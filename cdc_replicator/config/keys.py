"""Declare each config key once, in its dataclass field, and read every derived fact back from there.

A section is a frozen dataclass each field of which is one key::

    max_rows: int = field(default=100_000, metadata=key(positive_int, "Changed rows per batch."))

The field gives the key's name, type and default (a field without a default is a required key);
``key()`` adds the converter, a one-line doc and, for a secret, how ``repr`` hides it. The
environment variable is derived from section and key: ``CDC_REPLICATOR_<SECTION>__<KEY>``. The root
dataclass (``Config``) names the sections: a dataclass field is a ``[section]``, a tuple of one is an
array of ``[[section]]`` entries. Loading, environment overrides, ``repr`` and the test that
config/example.toml documents every key all read these declarations; only the rules that tie
several keys together (``load.py``) name keys again.
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, cast

from cdc_replicator.config.converters import Converter

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

ENV_PREFIX: Final = "CDC_REPLICATOR_"
_META: Final = "cdc_replicator.config"  # the metadata entry of a key's field


@dataclass(frozen=True, slots=True)
class Key:
    """What a field's metadata adds to its name, type and default."""

    convert: Converter[object]
    doc: str  # one line: what the key does, for readers of the code and of config/example.toml
    redact: Callable[[Any], object] | None = None  # repr shows redact(value), not the value
    options: bool = False  # a [section.key] table of string options, one env variable per option


def key(
    convert: Converter[object],
    doc: str,
    *,
    redact: Callable[[Any], object] | None = None,
    options: bool = False,
) -> Mapping[str, Key]:
    """The ``metadata`` of a key's ``dataclasses.field``; for ``options``, ``convert`` checks each value."""
    return {_META: Key(convert, doc, redact, options)}


@dataclass(frozen=True, slots=True)
class KeySpec:
    """Everything declared about one key: its field and its ``Key`` metadata together."""

    name: str
    default: object  # dataclasses.MISSING: the key is required
    convert: Converter[object]
    doc: str
    redact: Callable[[Any], object] | None
    options: bool

    @property
    def required(self) -> bool:
        return self.default is dataclasses.MISSING


@dataclass(frozen=True, slots=True)
class Section:
    """One section of the root dataclass: ``[name]``, or ``[[name]]`` entries when ``array``."""

    name: str
    cls: type[DataclassInstance]
    array: bool

    @property
    def keys(self) -> tuple[KeySpec, ...]:
        return keys_of(self.cls)

    def find(self, name: str) -> KeySpec | None:
        return next((k for k in self.keys if k.name == name), None)


@functools.cache
def keys_of(cls: type[DataclassInstance]) -> tuple[KeySpec, ...]:
    """The keys of section ``cls``, in field order; TypeError for a field declared without ``key()``."""
    specs = []
    for f in dataclasses.fields(cls):
        meta = f.metadata.get(_META)
        if not isinstance(meta, Key) or f.default_factory is not dataclasses.MISSING:
            raise TypeError(
                f"{cls.__name__}.{f.name} is not declared as field(default=..., metadata=key(...))"
            )
        specs.append(KeySpec(f.name, f.default, meta.convert, meta.doc, meta.redact, meta.options))
    return tuple(specs)


@functools.cache
def sections_of(root: type[DataclassInstance]) -> tuple[Section, ...]:
    """The sections of ``root``, in field order, read from its type hints (``X`` or ``tuple[X, ...]``)."""
    hints = typing.get_type_hints(root)
    out = []
    for f in dataclasses.fields(root):
        hint, args = hints[f.name], typing.get_args(hints[f.name])
        if dataclasses.is_dataclass(hint):
            out.append(Section(f.name, cast("type[DataclassInstance]", hint), array=False))
        elif typing.get_origin(hint) is tuple and len(args) == 2 and args[1] is Ellipsis:
            out.append(Section(f.name, cast("type[DataclassInstance]", args[0]), array=True))
        else:
            raise TypeError(f"{root.__name__}.{f.name} is neither a section dataclass nor a tuple of one")
    return tuple(out)


def env_name(*parts: str) -> str:
    """The variable of a key path: ``env_name("batch", "max_rows")`` is ``CDC_REPLICATOR_BATCH__MAX_ROWS``."""
    return ENV_PREFIX + "__".join(parts).upper()


def redacted_repr(self: DataclassInstance) -> str:
    """The dataclass ``repr``, with every key declared with ``redact`` shown redacted."""
    shown = []
    for spec in keys_of(type(self)):
        value = getattr(self, spec.name)
        if spec.redact is not None:
            value = spec.redact(value)
        shown.append(f"{spec.name}={value!r}")
    return f"{type(self).__qualname__}({', '.join(shown)})"
