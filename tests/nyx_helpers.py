"""Shared helpers: plugin infos, real handlers that record and block, accounting checks.

Nothing here stands in for nyxplug: the handlers are ordinary plugin handlers (they
record what they are given and, for ``Gate``, wait for the test to let them go), and
``Ledger`` only counts the calls a test makes so SPEC 4's identities can be checked.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

import nyxplug
from nyxplug import NyxplugError, Permission, PluginInfo, PluginStats

ALL_PERMISSIONS = (
    Permission.HANDSHAKE | Permission.DATA_ACCESS | Permission.CONTROL | Permission.ERROR_REPORTING
)
DATA = nyxplug.FrameType.DATA
HANDSHAKE = nyxplug.FrameType.HANDSHAKE
CONTROL = nyxplug.FrameType.CONTROL
ERROR = nyxplug.FrameType.ERROR


def info(plugin_id: int, permissions: Permission | Iterable[Permission] = ALL_PERMISSIONS,
         name: str | None = None) -> PluginInfo:  # fmt: skip
    return PluginInfo(plugin_id, name or f"plugin_{plugin_id}", permissions)


class Recorder:
    """A sync handler that records every message it is given, in order."""

    def __init__(self) -> None:
        self.messages: list[Any] = []

    def __call__(self, message: Any) -> None:
        self.messages.append(message)

    @property
    def payloads(self) -> list[bytes]:
        return [m.payload for m in self.messages]


class Gate:
    """An async handler that records each message, reports it, then waits for a permit.

    ``await gate.entered()`` returns the next message the handler was given; the
    handler holds it until ``release()`` (one message) or ``open()`` (all, from now on).
    """

    def __init__(self) -> None:
        self.seen: list[Any] = []
        self.finished: list[Any] = []
        self._entered: asyncio.Queue[Any] = asyncio.Queue()
        self._permits = asyncio.Semaphore(0)
        self._blocked = 0
        self.is_open = False

    async def __call__(self, message: Any) -> None:
        self.seen.append(message)
        self._entered.put_nowait(message)
        if not self.is_open:
            self._blocked += 1
            try:
                await self._permits.acquire()
            finally:
                self._blocked -= 1
        self.finished.append(message)

    async def entered(self) -> Any:
        return await self._entered.get()

    def release(self) -> None:
        self._permits.release()

    def open(self) -> None:
        self.is_open = True
        for _ in range(self._blocked):
            self._permits.release()

    @property
    def payloads(self) -> list[bytes]:
        return [m.payload for m in self.seen]


class Ledger:
    """Counts dispatch calls the way SPEC 4 does, and the frames enqueued per plugin.

    A call counts when it returned or raised a nyxplug error; a cancelled ``dispatch``
    does not count. ``enqueued`` is keyed by plugin id.
    """

    def __init__(self, dispatcher: Any, impl: Any) -> None:
        self.d = dispatcher
        self.impl = impl
        self.calls = 0
        self.enqueued: Counter[int] = Counter()

    def _plugin_id(self, header: Any) -> int:
        if isinstance(header, (bytes, bytearray, memoryview)):
            return int(self.impl.PluginHeader.decode(bytes(header)).id)
        return int(header.id)

    def nowait(self, frame_type: int, header: Any, payload: bytes = b"") -> None:
        try:
            self.d.dispatch_nowait(frame_type, header, payload)
        except NyxplugError:
            self.calls += 1
            raise
        self.calls += 1
        self.enqueued[self._plugin_id(header)] += 1

    def try_(self, frame_type: int, header: Any, payload: bytes = b"") -> Any:
        status = self.d.try_dispatch(frame_type, header, payload)
        self.calls += 1
        if status == nyxplug.DispatchStatus.OK:
            self.enqueued[self._plugin_id(header)] += 1
        return status

    async def send(self, frame_type: int, header: Any, payload: bytes = b"") -> None:
        try:
            await self.d.dispatch(frame_type, header, payload)
        except NyxplugError:
            self.calls += 1
            raise
        self.calls += 1
        self.enqueued[self._plugin_id(header)] += 1


def assert_accounting(
    d: Any,
    enqueued_by_plugin: Mapping[int, int],
    calls: int,
    final_stats: Mapping[int, PluginStats] | None = None,
) -> None:
    """SPEC 4 at a quiet moment: nothing was lost, every call was counted once.

    ``enqueued_by_plugin`` must name every plugin that was sent a frame; a plugin
    that is no longer loaded is checked against ``final_stats`` (what
    ``unload_plugin`` returned).
    """
    final_stats = final_stats or {}
    for plugin_id, enqueued in enqueued_by_plugin.items():
        stats = d.plugin_stats(plugin_id)
        if stats is None:
            stats = final_stats[plugin_id]
        assert enqueued == stats.messages_processed + stats.dropped + stats.queue_depth, (
            plugin_id,
            enqueued,
            stats,
        )
    ds = d.dispatch_stats()
    assert ds.frames_dispatched == sum(enqueued_by_plugin.values()), ds
    assert ds.frames_dispatched + ds.dispatch_errors == calls, (ds, calls)


async def wait_all(*aws: Any) -> list[Any]:
    """Gather, returning exceptions instead of raising (for parked-sender tasks)."""
    return await asyncio.gather(*aws, return_exceptions=True)
