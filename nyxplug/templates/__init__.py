"""The files ``nyxplug new`` writes: ``str.format`` templates (braces in them are doubled).

Fields: ``name`` (the plugin name), ``id``, ``module`` (``name`` with ``_`` for ``-``,
plus ``_plugin``) and ``class_name``; the test also gets ``plugin_dir`` (the folder holding
the plugin's folder, relative to the test's folder) and ``test_path`` (where it was written).
"""

from __future__ import annotations

__all__ = ("MANIFEST", "PLUGIN", "TEST")

MANIFEST = """\
# nyxplug.toml - the manifest of the plugin "{name}".
# Only [plugin] is required; the other tables show their defaults. Unknown keys are errors.
# Check the folder with: nyxplug validate <this folder>

[plugin]
name = "{name}"                   # ^[a-z][a-z0-9_-]{{0,63}}$, unique in the host
id = {id}                         # the plugin id in frame headers (0..4294967295), unique
version = "0.1.0"                 # semantic version of this plugin
entry = "{module}:{class_name}"   # module:attr - a Plugin class (or a factory) in this folder
api = ">=1.0, <2"                 # the plugin-API versions this plugin works with
description = "Counts the frames it receives"
authors = []
tags = []

[permissions]
# Frame types it may receive and send: HANDSHAKE, DATA_ACCESS, CONTROL, ERROR_REPORTING.
frames = ["DATA_ACCESS"]

[sandbox]
# Checked while its code runs (cooperative: stops mistakes, not a determined attacker).
network = false                   # may it open sockets at all?
network_allowlist = []            # when network = true: "api.example.com", "*.example.com"
filesystem = "none"               # "none", "read-only" or "full"
filesystem_allowlist = []         # path prefixes it may open
# memory_limit = "64MiB"          # only with isolation = "process": the child's cgroup

[resources]
# capacity = 100                  # queue slots (default: the host's defaults.capacity)
# handler_timeout = 5.0           # seconds per frame (default: defaults.handler_timeout)
isolation = "in-process"          # or "process"

[config]
# A free table, handed to the plugin as ctx.config (read-only).
greeting = "hello"

[dependencies]
# Other plugins this one needs, loaded before it: name = "version range".
# other-plugin = ">=1.0, <2"
"""

PLUGIN = '''\
"""The "{name}" plugin: counts the frames it receives (written by `nyxplug new`)."""

from __future__ import annotations

from typing import Any

from nyxplug import PluginMessage
from nyxplug.plugins import Plugin, PluginContext


class {class_name}(Plugin):
    """Counts frames and bytes; put the plugin's work in ``handle``."""

    def __init__(self) -> None:
        self.frames = 0
        self.bytes = 0
        self.last_payload: bytes | None = None

    async def on_load(self, ctx: PluginContext) -> None:
        """Called once before the first frame (``self.ctx`` is set); raise to refuse."""
        ctx.logger.info("%s %s loaded as id %d: %s", ctx.name, ctx.version, ctx.id,
                        ctx.config.get("greeting", "hello"))

    async def handle(self, message: PluginMessage) -> None:
        """One frame; an exception is counted and logged, and the next frame follows."""
        self.frames += 1
        self.bytes += message.size
        self.last_payload = message.payload
        self.ctx.logger.debug("frame 0x%02x, %d bytes", message.frame_type, message.size)

    async def health(self) -> bool:
        """True when the plugin can take traffic (checked after on_load)."""
        return True

    async def on_unload(self) -> None:
        """Called once after the last frame was handled."""
        self.ctx.logger.info("%s unloaded after %d frames (%d bytes)", self.ctx.name,
                             self.frames, self.bytes)

    def export_state(self) -> Any:
        """Handed to the next version of this plugin on a hot swap."""
        return {{"frames": self.frames, "bytes": self.bytes}}

    def import_state(self, state: Any) -> None:
        """Take over what the previous version exported."""
        if isinstance(state, dict):
            self.frames = int(state.get("frames", 0))
            self.bytes = int(state.get("bytes", 0))
'''

TEST = '''\
"""The "{name}" plugin in a real host: load it, send frames, read its stats.

Written by `nyxplug new` outside the plugin folder (tests stay out of its package). It
talks to the plugin only through the host, so it keeps working whatever you do to the
class: run it with `python -m pytest -q {test_path}`.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from nyxplug import FrameType, PluginHeader, PluginStats
from nyxplug.plugins import PluginManager

#: The folder that holds the plugin's folder (what `--plugin-dir` names).
PLUGIN_DIR = (Path(__file__).resolve().parent / {plugin_dir!r}).resolve()
NAME = "{name}"


async def send(payloads: list[bytes], state_dir: Path) -> PluginStats:
    """Load the plugin as `nyxplug run` does, send DATA frames, return its stats."""
    manager = PluginManager(
        plugin_dirs=[PLUGIN_DIR],
        state_dir=state_dir,
        entry_points=False,
        include_registered=False,
        require_signatures=False,  # the folder, straight from your editor
    )
    manager.discover()
    try:
        status = await manager.load(NAME)
        assert status.state == "active", status.reason
        assert status.id is not None
        for payload in payloads:
            await manager.dispatcher.dispatch(FrameType.DATA, PluginHeader(status.id), payload)
        await manager.dispatcher.wait_idle()  # every frame handled
        stats = manager.stats(NAME)
        assert stats is not None
        return stats
    finally:
        await manager.aclose()


def test_{module}_handles_data_frames(tmp_path: Path) -> None:
    stats = asyncio.run(send([b"ping", b"pong"], tmp_path))
    assert stats.messages_processed == 2
    assert stats.errors == 0, "the handler raised: see the log above"
    assert stats.sandbox_violations == 0
'''
