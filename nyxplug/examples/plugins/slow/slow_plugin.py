"""The "slow" example plugin: awaits on every frame, so its small queue fills up."""

from __future__ import annotations

import asyncio

from nyxplug import PluginMessage
from nyxplug.plugins import Plugin, PluginContext


class SlowPlugin(Plugin):
    """Stands in for a plugin doing I/O: each frame costs at least one trip to the loop."""

    def __init__(self) -> None:
        self.frames = 0
        self.yields = 1

    async def on_load(self, ctx: PluginContext) -> None:
        self.yields = int(ctx.config.get("yields_per_frame", 1))
        ctx.logger.info("slow: ready as plugin %d, %d yield(s) a frame", ctx.id, self.yields)

    async def handle(self, message: PluginMessage) -> None:
        for _ in range(self.yields):
            await asyncio.sleep(0)  # the plugin's "work": other tasks (senders) run here
        self.frames += 1

    async def on_unload(self) -> None:
        self.ctx.logger.info("slow: handled %d frames", self.frames)
