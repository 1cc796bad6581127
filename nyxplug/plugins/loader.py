"""Import a plugin from the bytes the runtime read, never from the folder again.

``Snapshot.read(folder)`` reads every source file of a plugin folder once; the
importer below compiles modules from those bytes. So what was checked (and, with
signed packages, verified) is exactly what runs: no stale or planted ``.pyc`` is
ever used, and editing a file between the check and the import changes nothing.

Each loaded plugin gets its own synthetic package (``nyxplug_plugin_<name>_<n>``):
two plugins may both have a ``util.py``. Inside a plugin, import sibling modules
relatively (``from . import util``).
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import itertools
import os
import stat
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

__all__ = (
    "MAX_SNAPSHOT_BYTES",
    "MAX_SOURCE_FILE",
    "SKIP_DIRS",
    "LoadedCode",
    "Snapshot",
    "import_entry",
    "read_regular",
    "unload_code",
)

#: Files above this size are not plugin source; refuse rather than read them into memory.
MAX_SOURCE_FILE = 16 * 1024 * 1024
#: A plugin folder with more source than this is refused (a runaway folder, not a plugin).
MAX_SNAPSHOT_BYTES = 64 * 1024 * 1024

SKIP_DIRS = frozenset({"__pycache__", ".git", ".hg", ".svn", ".venv", "node_modules"})


@dataclass(frozen=True)
class Snapshot:
    """The bytes of a plugin folder's source files, keyed by POSIX relative path."""

    root: Path
    files: dict[str, bytes]

    @classmethod
    def read(cls, root: Path, extra: tuple[str, ...] = ()) -> Snapshot:
        """Read every ``.py`` file under ``root`` and the ``extra`` names (e.g. the manifest).

        Symlinks are refused and ``__pycache__`` is never looked at.
        """
        root = root.resolve()
        files: dict[str, bytes] = {}
        total = 0
        for dirpath, dirnames, filenames in os.walk(root, onerror=_raise, followlinks=False):
            dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS)
            for filename in sorted(filenames):
                path = Path(dirpath, filename)
                rel = path.relative_to(root).as_posix()
                if not filename.endswith(".py") and rel not in extra:
                    continue
                if path.is_symlink():
                    raise ValueError(
                        f"Expected regular files in plugin folder {root}, got a symlink "
                        f"{rel} - copy the file instead"
                    )
                data = read_regular(path)
                total += len(data)
                if total > MAX_SNAPSHOT_BYTES:
                    raise ValueError(
                        f"Plugin folder {root} holds more than {MAX_SNAPSHOT_BYTES} bytes of "
                        "Python source - is it the right folder?"
                    )
                files[rel] = data
        return cls(root, files)

    def source_of(self, module: str) -> tuple[str, bytes, bool] | None:
        """``(relative path, bytes, is_package)`` of a dotted module name, or None."""
        base = module.replace(".", "/")
        for rel, is_package in ((f"{base}/__init__.py", True), (f"{base}.py", False)):
            data = self.files.get(rel)
            if data is not None:
                return rel, data, is_package
        return None


def _raise(error: OSError) -> None:
    """``os.walk`` skips what it cannot list; a plugin read half-way must fail instead."""
    raise error


def read_regular(
    path: Path, limit: int = MAX_SOURCE_FILE, what: str = "plugin source files"
) -> bytes:
    """Read a regular file of at most ``limit`` bytes, never through a planted symlink.

    ``ValueError`` for anything else: a link, a FIFO (opened without blocking, so it
    cannot hang the host), a device such as ``/dev/zero``, or a file over ``limit``.
    """
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(path, flags)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ValueError(f"Expected a regular file, got something else at {path}")
        if info.st_size > limit:
            raise ValueError(f"Expected {what} under {limit} bytes, got {info.st_size} in {path}")
        chunks = []
        total = 0
        while chunk := os.read(fd, 1 << 20):
            total += len(chunk)
            if total > limit:  # grew while we read it
                raise ValueError(f"Expected {what} under {limit} bytes, got more in {path}")
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


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
