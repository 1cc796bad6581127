"""Plugin code under time limits: lifecycle hooks, and the handler-timeout watchdog.

``on_load``, ``health()`` and ``on_unload`` run under the plugin's sandbox and
``LIFECYCLE_TIMEOUT``; an async handler runs under the plugin's handler timeout,
kept by one watchdog timer per plugin (``supervise``); a synchronous one cannot be
interrupted, so the dispatcher's worker times each call and an overrun is counted and
logged here.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

from .._constants import frame_type_name
from ..sandbox import SandboxGuard, guarded
from .errors import HandlerTimeout

if TYPE_CHECKING:  # the catalog imports reload, which imports this module
    from .catalog import PluginRecord

__all__ = ("LIFECYCLE_TIMEOUT", "Supervision", "call_on_unload", "lifecycle_call", "supervise")

#: How long ``on_load`` / ``health()`` / ``on_unload`` may take before the plugin fails.
LIFECYCLE_TIMEOUT = 30.0

logger = logging.getLogger("nyxplug.runtime")


async def lifecycle_call(guard: SandboxGuard | None, instance: Any, hook: str, *args: Any) -> Any:
    """Await a plugin hook under its sandbox and the lifecycle timeout."""
    method = getattr(instance, hook, None)
    if method is None:
        return None
    with guarded(guard):
        async with asyncio.timeout(LIFECYCLE_TIMEOUT):
            result = method(*args)
            if inspect.isawaitable(result):
                result = await result
    return result


async def call_on_unload(name: str, guard: SandboxGuard | None, instance: Any) -> str | None:
    """``on_unload``; a raising one is logged and its reason returned, never raised."""
    try:
        await lifecycle_call(guard, instance, "on_unload")
    except Exception as exc:  # the instance is gone either way; keep why
        reason = f"on_unload raised {type(exc).__name__}: {exc}"
        logger.error("Plugin %r: %s", name, reason, extra={"plugin": name})
        return reason
    return None


@dataclass(frozen=True, slots=True)
class Supervision:
    """What the dispatcher is given for one plugin: its handler, and for a synchronous
    one under a timeout, the limit and callback the worker times each call against."""

    handler: Any
    overrun_limit: float | None = None
    on_overrun: Callable[[Any, float], object] | None = None


def supervise(
    record: PluginRecord, instance: Any, plugin_id: int, timeout: float | None
) -> Supervision:
    """The handler the dispatcher calls: the plugin's, under its timeout.

    A synchronous handler cannot be interrupted (it holds the loop until it returns),
    so it is handed over as it is; with a timeout, the dispatcher's worker times each
    call (in C, only for plugins that ask) and a call over the limit is counted and
    logged by ``_overran``.
    """
    batch = getattr(instance, "handle_batch", None)
    if callable(batch):
        if inspect.iscoroutinefunction(batch):
            return Supervision(_SupervisedBatch(record, batch, plugin_id, timeout))
        handler: Any = _SyncBatch(batch)
    elif inspect.iscoroutinefunction(instance.handle):
        return Supervision(_Supervised(record, instance.handle, plugin_id, timeout))
    else:
        handler = instance.handle
    if timeout is None:
        return Supervision(handler)
    return Supervision(handler, timeout, partial(_overran, record, plugin_id, timeout))


class _SyncBatch:
    """A synchronous ``handle_batch``, as the dispatcher expects to find it."""

    __slots__ = ("handle_batch",)

    def __init__(self, call: Callable[[list[Any]], Any]) -> None:
        self.handle_batch = call


def _overran(
    record: PluginRecord, plugin_id: int, timeout: float, arg: Any, elapsed: float
) -> None:
    """``on_overrun`` of a synchronous handler (bound with ``partial``): the call could
    not be interrupted, so count it in the record's ``timeouts`` and log it in one line."""
    record.timeouts += 1
    first = arg[0] if isinstance(arg, list) else arg  # a batch, or one frame
    what = f"a {frame_type_name(int(first.frame_type))} frame"
    if isinstance(arg, list) and len(arg) > 1:
        what = f"a batch of {len(arg)} frames starting with {what}"
    logger.warning(  # the dispatcher calls this outside the plugin's sandbox
        "Handler of plugin %r (id %d) took %.3g s on %s, over its %g s "
        "timeout; a synchronous handler cannot be interrupted - make it async "
        "(then it is cancelled at the limit) or faster",
        record.name,
        plugin_id,
        elapsed,
        what,
        timeout,
        extra={
            "plugin": record.name,
            "plugin_id": plugin_id,
            "version": record.manifest.plugin.version if record.manifest else None,
            "frame_type": int(first.frame_type),
        },
    )


class _Supervised:
    """Calls an async ``handle`` per frame; cancels it after ``timeout`` seconds, counted.

    One watchdog timer per plugin instead of one timer per frame: each call only
    notes when it started; the timer, when it fires, cancels the worker task if the
    running call is past its deadline and otherwise re-arms for the current call.
    (``asyncio.timeout`` per frame costs several microseconds; this costs a clock read.)
    """

    __slots__ = (
        "_call", "_record", "_plugin_id", "_timeout", "_loop", "_task", "_timer", "_started",
        "_running", "_expired",
    )  # fmt: skip

    def __init__(
        self, record: PluginRecord, call: Any, plugin_id: int, timeout: float | None
    ) -> None:
        self._record = record
        self._call = call
        self._plugin_id = plugin_id
        self._timeout = timeout
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[Any] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._started = 0.0
        self._running = False
        self._expired = False

    async def handle(self, message: Any) -> Any:
        return await self._run(message, message.frame_type)

    async def _run(self, arg: Any, frame_type: int) -> Any:
        """The handler's result (its reply to a ``request``, SPEC 8), awaited if needed."""
        result = self._call(arg)
        if not inspect.isawaitable(result):
            return result
        if self._timeout is None:
            return await result
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        # Every call: a swap rolled back restarts this handler on a new worker task.
        self._task = asyncio.current_task()
        self._started = loop.time()
        self._running = True
        if self._timer is None:
            self._timer = loop.call_at(self._started + self._timeout, self._watch)
        try:
            reply = await result
        except asyncio.CancelledError:
            if not self._expired:
                raise  # cancelled from outside (unload, shutdown): not ours to swallow
            self._timed_out(frame_type)
        finally:
            self._running = False
        if self._expired:  # the handler swallowed our cancellation and returned
            self._timed_out(frame_type)
        return reply

    def _timed_out(self, frame_type: int) -> None:
        self._expired = False
        assert self._task is not None
        self._task.uncancel()
        self._record.timeouts += 1
        timeout = self._timeout or 0.0
        raise HandlerTimeout(self._record.name, self._plugin_id, frame_type, timeout) from None

    def _watch(self) -> None:
        self._timer = None
        if not self._running or self._loop is None or self._timeout is None:
            return  # idle: the next call re-arms
        deadline = self._started + self._timeout
        if self._loop.time() >= deadline:
            self._expired = True
            assert self._task is not None
            self._task.cancel()
        else:
            self._timer = self._loop.call_at(deadline, self._watch)


class _SupervisedBatch(_Supervised):
    """``handle_batch`` under the same timeout (one per batch)."""

    __slots__ = ()

    async def handle_batch(self, messages: list[Any]) -> Any:
        return await self._run(messages, messages[0].frame_type)
