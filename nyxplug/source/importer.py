"""Import a plugin from the bytes of its :class:`~nyxplug.source.snapshot.Snapshot`.

Each loaded plugin gets its own synthetic package (``nyxplug_plugin_<name>_<n>``):
two plugins may both have a ``util.py``. Inside a plugin, import sibling modules
relatively (``from . import util``). The importer compiles from the snapshot's bytes
only, never from the folder, so no ``.pyc`` is read or written.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import itertools
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from .snapshot import Snapshot

__all__ = ("LoadedCode", "import_entry", "unload_code")


@dataclass
class LoadedCode:
    """A plugin's imported code: its synthetic package and the entry object."""

    package: str
    entry: Any
    snapshot: Snapshot


class _SnapshotImporter(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Serves the modules of every loaded snapshot, each under its own package name."""

    def __init__(self) -> None:
        self.packages: dict[str, Snapshot] = {}

    def find_spec(
        self, fullname: str, path: Sequence[str] | None = None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        package, _, rest = fullname.partition(".")
        snapshot = self.packages.get(package)
        if snapshot is None:
            return None
        if not rest:  # the synthetic package itself: a namespace over the snapshot
            spec = importlib.machinery.ModuleSpec(fullname, self, is_package=True)
            spec.submodule_search_locations = []
            return spec
        found = snapshot.source_of(rest)
        if found is None:
            return None
        rel, _data, is_package = found
        spec = importlib.machinery.ModuleSpec(
            fullname, self, origin=str(snapshot.root / rel), is_package=is_package
        )
        spec.has_location = True
        if is_package:
            spec.submodule_search_locations = []
        return spec

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return None  # the default module object

    def exec_module(self, module: ModuleType) -> None:
        package, _, rest = module.__name__.partition(".")
        if not rest:
            return
        snapshot = self.packages[package]
        found = snapshot.source_of(rest)
        assert found is not None  # find_spec just saw it
        rel, data, _ = found
        code = compile(data, str(snapshot.root / rel), "exec", dont_inherit=True)
        exec(code, module.__dict__)  # noqa: S102 - this is the plugin's own code


_IMPORTER = _SnapshotImporter()
_IMPORTER_LOCK = threading.Lock()
_COUNTER = itertools.count(1)


def import_entry(name: str, snapshot: Snapshot, entry_module: str, entry_attr: str) -> LoadedCode:
    """Import ``entry_module`` from ``snapshot`` and return ``entry_attr`` from it."""
    slug = "".join(ch if ch.isalnum() else "_" for ch in name)
    package = f"nyxplug_plugin_{slug}_{next(_COUNTER)}"
    with _IMPORTER_LOCK:
        _IMPORTER.packages[package] = snapshot
        if _IMPORTER not in sys.meta_path:
            sys.meta_path.insert(0, _IMPORTER)
    try:
        if snapshot.source_of(entry_module) is None:
            raise ImportError(
                f"Expected module {entry_module!r} in {snapshot.root} "
                f"({entry_module.replace('.', '/')}.py or its package), found none"
            )
        module = importlib.import_module(f"{package}.{entry_module}")
        try:
            entry = getattr(module, entry_attr)
        except AttributeError:
            raise ImportError(
                f"Expected {entry_attr!r} in module {entry_module!r} of {snapshot.root}, "
                "found none - check [plugin] entry"
            ) from None
    except BaseException:
        unload_code(package)
        raise
    return LoadedCode(package, entry, snapshot)


def unload_code(package: str) -> None:
    """Forget a plugin's modules, so a later load imports fresh bytes."""
    with _IMPORTER_LOCK:
        _IMPORTER.packages.pop(package, None)
        for module_name in [m for m in sys.modules if m == package or m.startswith(package + ".")]:
            del sys.modules[module_name]
