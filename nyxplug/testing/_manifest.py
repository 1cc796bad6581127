"""Manifest overrides for ``nyx_host.load(..., **overrides)`` and a small TOML writer.

The keywords are ``@plugin``'s: ``[plugin]`` keys at the top (``name``, ``id``,
``version``, ...), ``permissions`` for ``[permissions] frames``, and the other tables
by name (``sandbox={...}``, ``resources={...}``, ``config={...}``,
``dependencies={...}``), merged key by key into what the plugin's own manifest says.
"""

from __future__ import annotations

import json
import math
import re
import zlib
from collections.abc import Mapping
from typing import Any

from .._constants import Permission

__all__ = ("apply_overrides", "class_manifest", "dumps")

PLUGIN_KEYS = frozenset({"name", "id", "version", "entry", "api", "description", "authors", "tags"})
TABLES = ("sandbox", "resources", "config", "dependencies")
_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def _frames(value: Any) -> list[str]:
    if isinstance(value, Permission):
        return [str(member.name) for member in Permission if member in value]
    if isinstance(value, str):
        return [value]
    return [str(m.name) if isinstance(m, Permission) else str(m) for m in value]


def apply_overrides(document: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``document`` (a manifest laid out like ``nyxplug.toml``) with ``overrides`` merged in.

    Raises ``TypeError`` naming the valid keywords for an unknown one.
    """
    merged: dict[str, Any] = {key: dict(value) if isinstance(value, Mapping) else value
                              for key, value in document.items()}  # fmt: skip
    for key, value in overrides.items():
        if key in PLUGIN_KEYS:
            merged.setdefault("plugin", {})[key] = value
        elif key == "permissions":
            merged["permissions"] = {**merged.get("permissions", {}), "frames": _frames(value)}
        elif key in TABLES:
            if not isinstance(value, Mapping):
                raise TypeError(
                    f"Expected a mapping for the manifest table {key!r}, got "
                    f"{type(value).__name__} - in nyx_host.load({key}=...)"
                )
            merged[key] = {**merged.get(key, {}), **value}
        else:
            valid = ", ".join(sorted(PLUGIN_KEYS | {"permissions", *TABLES}))
            raise TypeError(
                f"Expected a manifest keyword ({valid}), got {key!r} - in nyx_host.load()"
            )
    return merged


def class_manifest(cls: type, overrides: Mapping[str, Any]) -> dict[str, Any]:
    """The manifest document of a plugin class: its ``@plugin`` manifest, or (unmarked)
    a name from the class name, a stable id, and DATA_ACCESS - then ``overrides``."""
    import msgspec

    marked = getattr(cls, "__nyxplug_manifest__", None)
    if marked is not None:
        document: dict[str, Any] = msgspec.to_builtins(marked)
    else:
        words = re.findall(r"[A-Z]+(?![a-z])|[A-Z]?[a-z0-9]+", cls.__name__)
        name = "-".join(w.lower() for w in words if w.lower() != "plugin") or "plugin"
        document = {
            "plugin": {
                "name": name,
                "id": zlib.crc32(name.encode()) & 0x7FFFFFFF,
                "version": "0.1.0",
                "entry": "__code__:__code__",
                "api": ">=1.0, <2",
            },
            "permissions": {"frames": ["DATA_ACCESS"]},
        }
    return apply_overrides(document, overrides)


def _value(value: Any, where: str) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"Expected a finite number, got {value!r} - in manifest key {where}")
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a TOML basic string: JSON's escapes are TOML's
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_value(item, where) for item in value) + "]"
    if isinstance(value, Mapping):
        items = (f"{_key(k)} = {_value(v, f'{where}.{k}')}" for k, v in value.items())
        return "{" + ", ".join(items) + "}"
    raise TypeError(
        f"Expected a TOML value (str, int, float, bool, list, dict), got "
        f"{type(value).__name__} - in manifest key {where}"
    )


def _key(key: Any) -> str:
    text = str(key)
    return text if _BARE_KEY.match(text) else json.dumps(text)


def dumps(document: Mapping[str, Any]) -> str:
    """A manifest document as ``nyxplug.toml`` text (one table per section)."""
    lines = ["# Written by nyxplug.testing: the plugin's manifest with the test's overrides."]
    for table, values in document.items():
        if not isinstance(values, Mapping):
            raise TypeError(f"Expected a table for {table!r}, got {type(values).__name__}")
        lines += ["", f"[{_key(table)}]"]
        lines += [f"{_key(k)} = {_value(v, f'{table}.{k}')}" for k, v in values.items()]
    return "\n".join(lines) + "\n"
