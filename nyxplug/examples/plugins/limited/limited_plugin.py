"""The "limited" example plugin: may only receive HANDSHAKE frames."""

from __future__ import annotations

from nyxplug import FrameType, PluginMessage
from nyxplug.plugins import Plugin


class LimitedPlugin(Plugin):
    """Counts handshakes; the dispatcher never lets another frame type through."""

    def __init__(self) -> None:
        self.handshakes = 0

    async def handle(self, message: PluginMessage) -> None:
        if message.frame_type == FrameType.HANDSHAKE:
            self.handshakes += 1
