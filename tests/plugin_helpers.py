"""Write real plugin folders for the runtime tests."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

#: A plugin that records every frame and signals each arrival.
RECORDER = """
import asyncio
from nyxplug.plugins import Plugin

class Entry(Plugin):
    def __init__(self):
        self.seen = []
        self.arrived = asyncio.Event()
        self.loaded = False
        self.unloaded = False

    async def on_load(self, ctx):
        self.loaded = True

    async def handle(self, message):
        self.seen.append(message.payload)
        self.arrived.set()

    async def on_unload(self):
        self.unloaded = True
"""


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(value)


def manifest_text(
    name: str,
    plugin_id: int,
    *,
    version: str = "1.0.0",
    entry: str = "main:Entry",
    frames: tuple[str, ...] = ("DATA_ACCESS",),
    tags: tuple[str, ...] = (),
    **tables: dict[str, Any],
) -> str:
    lines = [
        "[plugin]",
        f'name = "{name}"',
        f"id = {plugin_id}",
        f'version = "{version}"',
        f'entry = "{entry}"',
        'api = ">=1.0, <2"',
        f"tags = {_toml_value(tags)}",
        "",
        "[permissions]",
        f"frames = {_toml_value(frames)}",
    ]
    for table, values in tables.items():
        lines += ["", f"[{table}]"]
        lines += [f'"{key}" = {_toml_value(value)}' for key, value in values.items()]
    return "\n".join(lines) + "\n"


def write_plugin(
    root: Path,
    name: str,
    plugin_id: int,
    code: str = RECORDER,
    *,
    files: dict[str, str] | None = None,
    **manifest: Any,
) -> Path:
    """``root/name/`` with a ``nyxplug.toml`` and ``main.py`` holding ``code``."""
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "nyxplug.toml").write_text(manifest_text(name, plugin_id, **manifest))
    (folder / "main.py").write_text(textwrap.dedent(code))
    for rel, text in (files or {}).items():
        path = folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return folder
