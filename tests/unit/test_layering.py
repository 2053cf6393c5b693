"""Imports point one way (see the README's Layout section): checked on the AST of every module of the package.

A failure names the importing module, the line and the import, e.g.
``cdc_replicator.sink.delta:12 imports cdc_replicator.source.checks``.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest

import cdc_replicator

PACKAGE = "cdc_replicator"
ROOT = Path(cdc_replicator.__file__).resolve().parent

# The package's folders, lowest first (see the README's Layout): a module imports only modules of
# its own level or a lower one, so data flows one way: source → engine (batch → apply → confirm) → sink,
# with the command line and the demo on top. ``source`` and ``sink`` share a level and never meet
# except in the engine.
LEVELS: tuple[frozenset[str], ...] = (
    frozenset({"model", "errors"}),
    frozenset({"types", "config"}),
    frozenset({"service"}),
    frozenset({"source", "sink", "store"}),
    frozenset({"engine"}),
    frozenset({"cli", "demo", "__main__"}),
)
# imports allowed against the levels, each with its reason (none today)
EXCEPTIONS: frozenset[tuple[str, str]] = frozenset()
# pure modules: bytes/Arrow in, values out
PURE = [
    f"{PACKAGE}.engine.batching",
    f"{PACKAGE}.engine.checkpoint",
    f"{PACKAGE}.engine.contracts",
    f"{PACKAGE}.engine.rangediff",
    f"{PACKAGE}.engine.watermarks",
    f"{PACKAGE}.engine.window",
    f"{PACKAGE}.sink.plan",
    f"{PACKAGE}.source.decoding",
    f"{PACKAGE}.source.ipc",
    f"{PACKAGE}.source.pgoutput",
    f"{PACKAGE}.source.wire",
    f"{PACKAGE}.types",
    f"{PACKAGE}.types.calendar",
    f"{PACKAGE}.types.casts",
    f"{PACKAGE}.types.kernels",
    f"{PACKAGE}.types.registry",
]
IO_MODULES = {"psycopg", "deltalake", "socket", "select", "os", "threading", "sqlalchemy"}


@dataclass(frozen=True, slots=True)
class Import:
    module: str  # the importing module
    line: int
    target: (
        str  # the absolute name imported (for ``from x import y``: ``x.y`` when y is a module, else ``x``)
    )

    def __str__(self) -> str:
        return f"{self.module}:{self.line} imports {self.target}"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@cache
def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def _is_package_module(name: str) -> bool:
    return name in modules()


@cache
def imports_of(module: str) -> tuple[Import, ...]:
    """Every import statement of ``module``, anywhere in it (functions and TYPE_CHECKING blocks too)."""
    path = modules()[module]
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    is_pkg = path.name == "__init__.py"
    found: list[Import] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [Import(module, node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".") if is_pkg else module.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.append(Import(module, node.lineno, sub if _is_package_module(sub) else base))
    return tuple(found)


def top(name: str) -> str:
    return name.split(".")[0]


def in_package(name: str) -> bool:
    return name == PACKAGE or name.startswith(PACKAGE + ".")


def layer(name: str) -> str | None:
    """'source' or 'sink' for modules of those subpackages, else None."""
    parts = name.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == PACKAGE and parts[1] in ("source", "sink") else None


def report(bad: list[Import]) -> str:
    return "forbidden imports:\n  " + "\n  ".join(dict.fromkeys(map(str, bad)))


# ---- the walker itself ------------------------------------------------------------------------


def test_the_walker_sees_every_module_of_the_package_and_their_imports() -> None:
    names = modules()
    assert {
        f"{PACKAGE}.model",
        f"{PACKAGE}.engine.batching",
        f"{PACKAGE}.sink.delta",
        f"{PACKAGE}.source.pgoutput",
    } <= set(names)
    delta_imports = {i.target for i in imports_of(f"{PACKAGE}.sink.delta")}
    assert {"deltalake", f"{PACKAGE}.sink.plan", f"{PACKAGE}.model"} <= delta_imports
    assert f"{PACKAGE}.source.wire" in {i.target for i in imports_of(f"{PACKAGE}.source.decoding")}


# ---- the rules ---------------------------------------------------------------------------------


def test_source_and_sink_never_import_each_other() -> None:
    bad = [
        imp
        for mod in modules()
        if (own := layer(mod)) is not None
        for imp in imports_of(mod)
        if (other := layer(imp.target)) is not None and other != own
    ]

    assert not bad, report(bad)


def test_model_imports_nothing_from_the_package() -> None:
    bad = [imp for imp in imports_of(f"{PACKAGE}.model") if in_package(imp.target)]

    assert not bad, report(bad)


@pytest.mark.parametrize("module", [f"{PACKAGE}.source.pgoutput", f"{PACKAGE}.source.wire"])
def test_pgoutput_imports_only_errors_and_model_from_the_package(module: str) -> None:
    allowed = {f"{PACKAGE}.errors", f"{PACKAGE}.model", f"{PACKAGE}.source.wire"}
    bad = [imp for imp in imports_of(module) if in_package(imp.target) and imp.target not in allowed]

    assert not bad, report(bad)


def folder(name: str) -> str:
    """The first part below the package: ``engine`` for ``cdc_replicator.engine.stream``."""
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else ""


def level(name: str) -> int:
    f = folder(name)
    for i, names in enumerate(LEVELS):
        if f in names:
            return i
    raise AssertionError(f"{name} is in no level of LEVELS: add its folder to the list")


def test_every_module_of_the_package_has_a_level() -> None:
    for mod in modules():
        if mod != PACKAGE:
            level(mod)


def test_a_module_imports_only_its_own_level_or_lower_ones() -> None:
    bad = [
        imp
        for mod in modules()
        if mod != PACKAGE
        for imp in imports_of(mod)
        if in_package(imp.target)
        and imp.target != PACKAGE
        and level(imp.target) > level(mod)
        and (mod, imp.target) not in EXCEPTIONS
    ]

    assert not bad, report(bad)


@pytest.mark.parametrize("module", PURE)
def test_a_pure_module_imports_no_io_module_directly_or_through_the_package(module: str) -> None:
    bad: list[Import] = []
    seen: set[str] = set()
    todo = [module]
    while todo:
        mod = todo.pop()
        if mod in seen:
            continue
        seen.add(mod)
        for imp in imports_of(mod):
            if top(imp.target) in IO_MODULES:
                bad.append(imp)
            elif in_package(imp.target) and imp.target in modules():
                todo.append(imp.target)
                # importing cdc_replicator.x.y runs the package __init__ files on the way
                parts = imp.target.split(".")
                todo += [".".join(parts[:n]) for n in range(1, len(parts))]

    assert not bad, report(bad)
