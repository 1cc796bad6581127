"""Imports inside nyxplug go one way: down the layers in the table below.

Every import statement of the package is read from the source (top level, inside
functions and under ``TYPE_CHECKING`` alike: a lazy import is still a dependency), each
module is mapped to its layer, and an import is refused unless the table allows it.

Layers, bottom up. A module may import its own layer and the layers listed for it:

===========  =========================================  ====================================
layer        modules                                    may import
===========  =========================================  ====================================
engine       nyxplug._* (incl. the compiled _dispatch)  (nothing else)
             nyxplug.sandbox
source       nyxplug.source                             engine
trust        nyxplug.trust                              source, engine
isolation    nyxplug.isolation                          source, engine
config       nyxplug.config                             isolation, source, engine
plugins      nyxplug.plugins  (the runtime)             config, trust, isolation, source,
                                                        engine
serving      nyxplug.serving (listeners, access, the    plugins, config, trust, isolation,
             session protocol and its client)           source, engine
testing      nyxplug.testing  (the plugin author's kit: plugins, config, trust, isolation,
             a pytest plugin)                           source, engine
admin        nyxplug.admin  (the admin API, metrics)    facade, plugins, config, trust,
                                                        isolation, source, engine
facade       nyxplug (its __init__)                     engine (serving: lazily, see below)
host         nyxplug.host  (the isolated child's entry) isolation, engine
cli          nyxplug.cli, nyxplug.__main__,             everything above but host
             nyxplug.templates
===========  =========================================  ====================================

The sandbox sits in the engine layer: the dispatcher enters a plugin's sandbox guard
around every handler call and checks policies when a plugin is loaded, so the sandbox is
part of the hot path's contract, and it imports nothing but the engine's errors.
``serving``'s session server and client need only the dispatcher today (the server takes
a ``Dispatcher``, the client mirrors one), but they are a network front end for a running
host, so they sit above the runtime, beside the access policies. ``trust`` and
``isolation`` stand side by side and never import each other. The facade re-exports the
engine only, so ``import nyxplug`` stays small; ``RemoteDispatcher`` and
``SessionService`` it exports lazily (loaded on first use, imported for type checkers
only). An upward import that another change removes is listed in ``PENDING`` with that
change, until it lands.

The isolated child (``nyxplug.host`` and the fork server) must never reach the runtime:
checked on the import graph and in real children, exec'd and forked.
"""

from __future__ import annotations

import ast
import asyncio
from dataclasses import dataclass
from pathlib import Path

from package_modules import PACKAGE, package_modules

from nyxplug.isolation import IsolatedPlugin, IsolationOptions

#: Which layers each layer may import besides its own (the table above).
ALLOWED: dict[str, frozenset[str]] = {
    "engine": frozenset(),
    "source": frozenset({"engine"}),
    "trust": frozenset({"source", "engine"}),
    "isolation": frozenset({"source", "engine"}),
    "config": frozenset({"isolation", "source", "engine"}),
    "plugins": frozenset({"config", "trust", "isolation", "source", "engine"}),
    "serving": frozenset({"plugins", "config", "trust", "isolation", "source", "engine"}),
    "testing": frozenset({"plugins", "config", "trust", "isolation", "source", "engine"}),
    "admin": frozenset({"facade", "plugins", "config", "trust", "isolation", "source", "engine"}),
    "facade": frozenset({"engine", "serving"}),
    "host": frozenset({"isolation", "engine"}),
    "cli": frozenset(
        {
            "admin",
            "facade",
            "serving",
            "testing",
            "plugins",
            "config",
            "trust",
            "isolation",
            "source",
            "engine",
        }
    ),
}

#: Known upward imports, each with the change that removes it. An entry that no longer
#: matches an import fails the test, so the list only ever shrinks.
PENDING: dict[tuple[str, str], str] = {}

#: Where the isolated child starts: ``python -m nyxplug.host`` and the fork server.
CHILD_ENTRIES = ("nyxplug.host", "nyxplug.isolation.forkserver")

MODULES = package_modules()


def layer_of(module: str) -> str:
    """The layer of a nyxplug module (by its dotted name)."""
    parts = module.split(".")
    if parts == ["nyxplug"]:
        return "facade"
    top = parts[1]
    if (top.startswith("_") and top != "__main__") or top == "sandbox":
        return "engine"
    layers = (
        "source",
        "trust",
        "isolation",
        "config",
        "plugins",
        "serving",
        "testing",
        "admin",
        "host",
    )
    if top in layers:
        return top
    if top in ("cli", "__main__", "templates"):
        return "cli"
    raise AssertionError(f"{module} has no layer - add it to the table in {__file__}")


@dataclass(frozen=True)
class Import:
    importer: str
    line: int
    imported: str


def _resolve(module: str, path: Path, node: ast.ImportFrom) -> str:
    """The absolute name ``from ... import`` reads from, in ``module`` (a file at ``path``)."""
    if node.level == 0:
        return node.module or ""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    base = package.split(".")
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _cython_imports(path: Path) -> str:
    """The Python-level import statements of a ``.pyx`` (``cimport`` lines left out)."""
    statements, current, depth = [], [], 0
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not current and not (
            stripped.startswith(("import ", "from ")) and " cimport " not in stripped
        ):
            continue
        current.append(stripped)
        depth += stripped.count("(") - stripped.count(")")
        if depth == 0:
            statements.append(" ".join(current))
            current = []
    return "\n".join(statements)


def imports_of(module: str, path: Path) -> list[Import]:
    """Every nyxplug module that ``module`` (its source at ``path``) imports, anywhere."""
    if path.suffix == ".pyx":
        tree = ast.parse(_cython_imports(path), str(path))
    else:
        tree = ast.parse(path.read_text(), str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            source = _resolve(module, path, node)
            # ``from pkg import sub`` imports the module pkg.sub; ``from pkg import name`` pkg.
            names = [
                f"{source}.{alias.name}" if f"{source}.{alias.name}" in MODULES else source
                for alias in node.names
            ]
        else:
            continue
        for name in dict.fromkeys(names):  # once per module and statement
            if name == "nyxplug" or name.startswith("nyxplug."):
                found.append(Import(module, node.lineno, name))
    return found


def all_imports() -> list[Import]:
    return [found for module, path in MODULES.items() for found in imports_of(module, path)]


def broken_rule(found: Import) -> str | None:
    """Why ``found`` goes against the table, or None if it is allowed."""
    source, target = layer_of(found.importer), layer_of(found.imported)
    if source == target or target in ALLOWED[source]:
        return None
    may = ", ".join(sorted(ALLOWED[source])) or "nothing outside itself"
    return f"{source} may import {may}; {found.imported} is {target}"


def test_every_module_has_a_layer() -> None:
    for module in MODULES:
        assert layer_of(module) in ALLOWED


def test_imports_go_down_the_layers() -> None:
    upward = []
    used = set()
    for found in all_imports():
        rule = broken_rule(found)
        if rule is None:
            continue
        key = (found.importer, found.imported)
        if key in PENDING:
            used.add(key)
            continue
        path = MODULES[found.importer].relative_to(PACKAGE.parent)
        upward.append(f"{path}:{found.line}: {found.importer} imports {found.imported} ({rule})")
    assert not upward, "upward imports:\n" + "\n".join(upward)
    stale = set(PENDING) - used
    assert not stale, f"PENDING entries no longer needed - remove them: {sorted(stale)}"


def test_the_checker_refuses_an_upward_import() -> None:
    rule = broken_rule(Import("nyxplug.trust.verify", 1, "nyxplug.plugins.manager"))
    assert rule == ("trust may import engine, source; nyxplug.plugins.manager is plugins")
    assert broken_rule(Import("nyxplug.plugins.manager", 1, "nyxplug.trust")) is None
    assert broken_rule(Import("nyxplug._validate", 1, "nyxplug.sandbox")) is None


def test_the_checker_sees_lazy_and_type_checking_imports(tmp_path: Path) -> None:
    path = tmp_path / "probe.py"
    path.write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n"
        "    from ..plugins import manager\n"
        "def later():\n"
        "    from ..source.layout import NAME_PATTERN\n"
    )
    found = sorted((i.line, i.imported) for i in imports_of("nyxplug.trust.probe", path))
    assert found == [(3, "nyxplug.plugins.manager"), (5, "nyxplug.source.layout")]


def closure(starts: tuple[str, ...]) -> set[str]:
    """Every nyxplug module reachable from ``starts`` through any import (and parents)."""
    graph: dict[str, set[str]] = {}
    for found in all_imports():
        graph.setdefault(found.importer, set()).add(found.imported)
    seen: set[str] = set()
    todo = list(starts)
    while todo:
        module = todo.pop()
        if module in seen or module not in MODULES:
            continue
        seen.add(module)
        todo.extend(graph.get(module, ()))
        parts = module.split(".")
        todo.extend(".".join(parts[:n]) for n in range(1, len(parts)))  # packages run first
    return seen


def test_the_isolated_child_never_reaches_the_runtime() -> None:
    reached = closure(CHILD_ENTRIES)
    assert "nyxplug.source.importer" in reached
    runtime = sorted(m for m in reached if layer_of(m) in ("plugins", "config", "trust", "cli"))
    assert not runtime, f"the child's imports reach {runtime}"


COUNTER = b"""
import sys

class Entry:
    async def handle(self, message):
        pass

    def export_state(self):
        return sorted(m for m in sys.modules if m == "nyxplug" or m.startswith("nyxplug."))
"""


async def test_a_running_child_holds_no_runtime_module() -> None:
    """The real child, exec'd and forked, after loading a plugin: what it imported."""
    for spawn in ("exec", "fork-server"):
        plugin = IsolatedPlugin(
            name="counter", plugin_id=5, version="1.0.0", entry_module="counter",
            entry_attr="Entry", files={"counter.py": COUNTER}, config={},
            handler_timeout=None, options=IsolationOptions(spawn=spawn),
        )  # fmt: skip
        try:
            async with asyncio.timeout(30):
                await plugin.on_load(None)
                modules = await plugin._call("export_state")
        finally:
            await plugin.aclose()
        assert "nyxplug.source.importer" in modules, modules
        runtime = [m for m in modules if layer_of(m) in ("plugins", "config", "trust", "cli")]
        assert not runtime, f"{spawn} child imported {runtime}"
