"""Public names a package exports but imports only when first asked for.

``nyxplug``, ``nyxplug.plugins`` and ``nyxplug.isolation`` keep their light names
eager and their heavy ones (serving and cbor2, the manager and watchfiles, the
isolation host side) behind this, so plugin code and isolated children that import a
package for one small name do not load the rest.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ("lazy_exports",)


def lazy_exports(
    package: str, names: Mapping[str, str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The ``__getattr__`` and ``__dir__`` of ``package``: ``names`` maps each lazy
    public name to the submodule (relative, e.g. ``"_serve"``) that defines it."""
    namespace = sys.modules[package].__dict__

    def __getattr__(name: str) -> Any:
        module = names.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f".{module}", package), name)
        namespace[name] = value  # later look-ups skip this function
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(namespace.get("__all__", ())))

    return __getattr__, __dir__
