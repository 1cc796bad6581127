"""The "fast" example plugin: counts frames and bytes, nothing else."""

from __future__ import annotations

from typing import Any

from nyxplug import PluginMessage
from nyxplug.plugins import Plugin, PluginContext


class FastPlugin(Plugin):
    """The cheapest useful handler: one frame, two additions."""

    def __init__(self) -> None:
        self.frames = 0
        self.bytes = 0

    async def on_load(self, ctx: PluginContext) -> None:
        ctx.logger.info("fast: ready as plugin %d", ctx.id)

    async def handle(self, message: PluginMessage) -> None:
        self.frames += 1
        self.bytes += message.size

    async def on_unload(self) -> None:
        self.ctx.logger.info("fast: handled %d frames (%d bytes)", self.frames, self.bytes)

    def export_state(self) -> Any:
        return {"frames": self.frames, "bytes": self.bytes}

    def import_state(self, state: Any) -> None:
        if isinstance(state, dict):
            self.frames = int(state.get("frames", 0))
            self.bytes = int(state.get("bytes", 0))
