"""What mypy tells a user of ``nyxplug``: checked by ``make typecheck`` (mypy --strict), never run.

An ``assert_type`` fails the check when a public annotation drifts; a line ending in
``# type: ignore[<code>]`` is a call mypy must refuse (strict mode reports an unused ignore).
mypy reads the pure twin here (``nyxplug._impl``); ``stub_types.py`` reads the stub.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, assert_type

from nyxplug import (
    BreakerConfig,
    BreakerState,
    BreakerStats,
    CircuitOpen,
    Dispatcher,
    DispatchStats,
    DispatchStatus,
    FrameType,
    Permission,
    PluginHeader,
    PluginInfo,
    PluginMessage,
    PluginRegistry,
    PluginStats,
)
from nyxplug._impl import decode_batch, encode_batch
from nyxplug.plugins import Plugin, PluginContext
from nyxplug.sandbox import SandboxGuard, SandboxPolicy

INFO = PluginInfo(7, "echo", [Permission.DATA_ACCESS, Permission.CONTROL])


class Echo:
    async def handle(self, message: PluginMessage) -> None:
        print(message.payload)


class Collector:
    def handle_batch(self, messages: list[PluginMessage]) -> None:
        print(len(messages))


class Greeter(Plugin):
    async def on_load(self, ctx: PluginContext) -> None:
        waiting = ctx.dispatch(FrameType.DATA, PluginHeader(8))
        await assert_type(waiting, Coroutine[Any, Any, None])
        assert_type(await ctx.request(FrameType.DATA, PluginHeader(8), timeout=2), bytes | None)


async def on_frame(message: PluginMessage) -> None:
    print(message.frame_type)


async def handlers(d: Dispatcher) -> None:
    await d.load_plugin(INFO)
    await d.load_plugin(INFO, Echo(), capacity=8, sandbox=SandboxPolicy(allow_network=True))
    await d.load_plugin(INFO, Collector(), sandbox=SandboxGuard(SandboxPolicy(), 7))
    await d.load_plugin(INFO, Greeter())
    await d.load_plugin(INFO, on_frame)
    await d.load_plugin(INFO, lambda message: print(message.plugin_id))
    await d.load_plugin(INFO, 42)  # type: ignore[arg-type]
    await d.load_plugin(INFO, Echo(), sandbox="strict")  # type: ignore[arg-type]
    assert_type(await d.swap_handler(7, Collector(), between=lambda: None), float)
    assert_type(await d.unload_plugin(7, drain=False), PluginStats)
    Dispatcher(sandbox=SandboxGuard(SandboxPolicy(), 7))  # type: ignore[arg-type]


async def sending(d: Dispatcher, header: PluginHeader) -> None:
    waiting = d.dispatch(FrameType.DATA, header, b"x")
    await assert_type(waiting, Coroutine[Any, Any, None])  # so create_task takes it too
    await d.dispatch(FrameType.DATA, header.encode(), bytearray(b"x"))
    d.dispatch(FrameType.DATA, header)  # type: ignore[unused-coroutine]  # a forgotten await
    task = asyncio.create_task(d.dispatch(FrameType.DATA, memoryview(header.encode())))
    assert_type(task, asyncio.Task[None])
    assert_type(d.try_dispatch(FrameType.CONTROL, header), DispatchStatus)
    assert_type(await d.request(FrameType.DATA, header.encode(), bytearray(b"x")), bytes | None)
    d.try_dispatch(FrameType.DATA, "header")  # type: ignore[arg-type]
    d.dispatch_nowait(FrameType.DATA, header, payload=[1, 2])  # type: ignore[arg-type]
    assert_type(d.dispatch_stats(), DispatchStats)
    assert_type(d.plugin_stats(7), PluginStats | None)
    assert_type(d.registry, PluginRegistry)
    async with Dispatcher() as inner:
        assert_type(inner, Dispatcher)


def headers_and_registry(registry: PluginRegistry) -> None:
    header = PluginHeader.required(7, bytearray(b"x"))
    assert_type(header.data, bytes)
    assert_type(PluginHeader.decode(memoryview(header.encode()), max_size=64), PluginHeader)
    PluginHeader(7, data="x")  # type: ignore[arg-type]
    message = PluginMessage(FrameType.DATA, header, memoryview(b"payload"))
    assert_type(message.payload, bytes)
    assert_type(registry.set_permissions(7, [Permission.DATA_ACCESS]), PluginInfo)
    assert_type(registry.set_permissions(7, Permission.CONTROL), PluginInfo)
    registry.set_permissions(7, "CONTROL")  # type: ignore[arg-type]
    assert_type(7 in registry, bool)
    assert_type(list(registry), list[PluginInfo])
    assert_type(encode_batch(18, 1, [message]), bytes)
    encode_batch(18, 1, (message,))  # type: ignore[arg-type]
    assert_type(decode_batch(bytearray(), 4096, 4096), tuple[int, list[PluginMessage]])


class MyHeader(PluginHeader):  # type: ignore[misc]  # final, as the compiled class is
    pass


def breakers(d: Dispatcher) -> None:
    config = BreakerConfig(window="time", window_size=30, failure_rate=0.25)
    d.set_breaker(7, config, clock=lambda: 0.0, random=lambda: 0.5)
    d.set_breaker(7, None)
    BreakerConfig(window="sliding")  # type: ignore[arg-type]
    d.set_breaker_state(7, BreakerState.FORCED_OPEN)
    d.set_breaker_state(7, "closed")  # type: ignore[arg-type]
    stats = d.breaker_stats(7)
    assert_type(stats, BreakerStats | None)
    if stats is not None:
        assert_type(stats.retry_after, float | None)
    try:
        d.dispatch_nowait(FrameType.DATA, PluginHeader(7))
    except CircuitOpen as exc:
        assert_type(exc.retry_after, float | None)
        assert_type(exc.reason, str)
