"""The same calls through the stub of the compiled module (``nyxplug/_dispatch.pyi``).

``tests/test_public_api.py`` keeps the stub's signatures equal to the twin's; this file
checks that the stub itself resolves as users of ``nyxplug._dispatch`` see it.
"""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any, assert_type

from nyxplug import (
    BreakerConfig,
    BreakerState,
    BreakerStats,
    DispatchStatus,
    FrameType,
    PluginStats,
)
from nyxplug._dispatch import Dispatcher, PluginHeader, PluginMessage, decode_batch


class Echo:
    async def handle(self, message: PluginMessage) -> None:
        print(message.payload)


async def compiled(d: Dispatcher) -> None:
    header = PluginHeader(7, data=bytearray(b"x"))
    waiting = d.dispatch(FrameType.DATA, header)
    await assert_type(waiting, Coroutine[Any, Any, None])
    assert_type(d.try_dispatch(FrameType.DATA, memoryview(header.encode())), DispatchStatus)
    assert_type(await d.swap_handler(7, Echo()), float)
    assert_type(await d.unload_plugin(7), PluginStats)
    assert_type(decode_batch(b"", 1, 1), tuple[int, list[PluginMessage]])
    assert_type(await d.request(FrameType.DATA, header, b"x", timeout=1.0), bytes | None)
    await d.request(FrameType.DATA, header, timeout="1")  # type: ignore[arg-type]
    d.try_dispatch(FrameType.DATA, "header")  # type: ignore[arg-type]
    d.set_breaker(7, BreakerConfig(), clock=lambda: 0.0)
    d.set_breaker_state(7, BreakerState.DISABLED)
    assert_type(d.breaker_stats(7), BreakerStats | None)
    d.set_breaker(7, {"window": "count"})  # type: ignore[arg-type]
