"""Issue 15, section A: the engine keeps the promises a user takes for granted.

1. a refused ``dispatch`` fails its awaitable (as a coroutine would), not the call;
3. refusals are counted by reason, backpressure apart from errors;
4. a call from a thread other than the dispatcher's own is refused with ``WrongThread``.

Every test runs on both twins and, when async, on both loops.
"""

from __future__ import annotations

import asyncio
import gc
import re
import threading
from typing import Any

import pytest
from nyx_helpers import ALL_PERMISSIONS, DATA, Gate, assert_accounting, info

import nyxplug
from nyxplug import (
    DispatchStatus,
    FrameTooLarge,
    HeaderDecodeError,
    NyxplugError,
    Permission,
    PermissionDenied,
    PluginClosed,
    PluginNotLoaded,
    PluginNotRegistered,
    SandboxViolation,
    UnknownFrameType,
    WrongThread,
)
from nyxplug.sandbox import SandboxPolicy

CONTROL = 0x53
DA = Permission.DATA_ACCESS

#: Every refusal ``dispatch`` can meet at the call: the error and its DispatchStats field.
REFUSALS = {
    "not_registered": (PluginNotRegistered, "plugin_not_registered"),
    "not_loaded": (PluginNotLoaded, "plugin_not_loaded"),
    "permission": (PermissionDenied, "permission_denied"),
    "sandbox": (SandboxViolation, "sandbox_violation"),
    "header": (HeaderDecodeError, "header_decode_error"),
    "too_large": (FrameTooLarge, "frame_too_large"),
    "unknown_type": (UnknownFrameType, "unknown_frame_type"),
}
REASONS = [status.name.lower() for status in DispatchStatus if status]


async def refusing_dispatcher(impl: Any) -> tuple[Any, dict[str, tuple[int, Any, bytes]]]:
    """A dispatcher with plugin 4 loaded (data only, under a strict sandbox), plugin 2
    registered but not loaded, and one frame per refusal kind."""
    registry = impl.PluginRegistry()
    registry.register(info(2, DA))
    d = impl.Dispatcher(registry, max_header_size=64, sandbox=SandboxPolicy.strict())
    await d.load_plugin(info(4, DA | Permission.CONTROL))
    await d.load_plugin(info(5, DA))
    frames = {
        "not_registered": (DATA, impl.PluginHeader(3), b"p"),
        "not_loaded": (DATA, impl.PluginHeader(2), b"p"),
        "permission": (CONTROL, impl.PluginHeader(5), b"p"),
        "sandbox": (CONTROL, impl.PluginHeader(4, 0, b"SBX:OPEN /etc/passwd"), b"p"),
        "header": (DATA, b"\xa0", b"p"),
        "too_large": (DATA, bytes(65), b"p"),
        "unknown_type": (0x10, impl.PluginHeader(4), b"p"),
    }
    return d, frames


async def tasks_started() -> None:
    """Return once every task created before this call has taken its first step."""
    started = asyncio.Event()
    asyncio.get_running_loop().call_soon(started.set)
    await started.wait()


def reasons(d: Any) -> dict[str, int]:
    """The non-zero refusal counters of ``d.dispatch_stats()``."""
    stats = d.dispatch_stats()
    return {name: getattr(stats, name) for name in REASONS if getattr(stats, name)}


# -- item 1: the refusal is in the awaitable ---------------------------------------------


@pytest.mark.parametrize("case", list(REFUSALS))
async def test_refused_dispatch_fails_when_awaited_and_is_counted_at_the_call(
    impl: Any, case: str
) -> None:
    error, reason = REFUSALS[case]
    d, frames = await refusing_dispatcher(impl)
    pending = d.dispatch(*frames[case])  # does not raise
    assert reasons(d) == {reason: 1}  # counted once, at the call
    with pytest.raises(error) as excinfo:
        await pending
    with pytest.raises(error, match="^" + re.escape(str(excinfo.value)) + "$"):
        d.dispatch_nowait(*frames[case])  # the same refusal, the same message
    assert reasons(d) == {reason: 2}
    assert_accounting(d, {}, calls=2)
    await d.aclose()


async def test_gather_and_ensure_future_get_the_refusal_from_its_awaitable(impl: Any) -> None:
    d, frames = await refusing_dispatcher(impl)
    ok = (DATA, impl.PluginHeader(4), b"ok")
    results = await asyncio.gather(
        d.dispatch(*ok), d.dispatch(*frames["not_registered"]), d.dispatch(*ok),
        d.dispatch(*frames["header"]), return_exceptions=True,
    )  # fmt: skip
    assert [type(r) for r in results] == [type(None), PluginNotRegistered, type(None),
                                          HeaderDecodeError]  # fmt: skip
    task = asyncio.ensure_future(d.dispatch(*frames["unknown_type"]))
    with pytest.raises(UnknownFrameType):
        await task
    task = asyncio.create_task(d.dispatch(*frames["permission"]))
    with pytest.raises(PermissionDenied):
        await task
    await d.wait_idle()
    assert_accounting(d, {4: 2}, calls=6)
    await d.aclose()


async def test_a_refused_awaitable_cancelled_before_its_first_step_still_fails(impl: Any) -> None:
    """The refusal already happened (and was counted): cancelling cannot undo it."""
    d, frames = await refusing_dispatcher(impl)
    task = asyncio.ensure_future(d.dispatch(*frames["not_loaded"]))
    task.cancel()
    with pytest.raises(PluginNotLoaded):
        await task
    assert reasons(d) == {"plugin_not_loaded": 1}
    await d.aclose()


async def test_a_refused_awaitable_is_awaited_once_and_close_discards_it(impl: Any) -> None:
    d, frames = await refusing_dispatcher(impl)
    pending = d.dispatch(*frames["not_registered"])
    with pytest.raises(PluginNotRegistered):
        await pending
    with pytest.raises(RuntimeError, match=r"^cannot reuse already awaited refused dispatch$"):
        await pending
    d.dispatch(*frames["not_registered"]).close()  # discarded on purpose: no warning
    gc.collect()
    assert reasons(d) == {"plugin_not_registered": 2}
    await d.aclose()


async def test_a_refused_awaitable_never_awaited_warns_with_the_refusal(impl: Any) -> None:
    d, frames = await refusing_dispatcher(impl)
    expected = (
        "refused dispatch was never awaited: PluginNotRegistered: Plugin 3 is not registered "
        "- frame 0x52 (DATA) was refused; load it with Dispatcher.load_plugin() first"
    )
    with pytest.warns(RuntimeWarning, match="^" + re.escape(expected) + "$"):
        d.dispatch(*frames["not_registered"])
        gc.collect()
    assert reasons(d) == {"plugin_not_registered": 1}  # and it was counted
    await d.aclose()


async def test_plugin_context_dispatch_refuses_in_its_awaitable(impl: Any) -> None:
    from nyxplug.plugins import PluginContext
    from nyxplug.sandbox import SandboxGuard

    async with impl.Dispatcher() as d:
        await d.load_plugin(info(60, ALL_PERMISSIONS), None)
        await d.load_plugin(info(61, DA), None)
        guard = SandboxGuard(SandboxPolicy(), 61)
        ctx = PluginContext(
            name="p61", plugin_id=61, version="1.0.0", config={}, dispatcher=d, guard=guard
        )
        pending = ctx.dispatch(CONTROL, impl.PluginHeader(60))  # lacks CONTROL: no raise here
        with pytest.raises(
            PermissionDenied, match=r"^Plugin 'plugin_61' \(id 61\) lacks permission CONTROL "
        ):
            await pending
        d.registry.set_permissions(61, Permission.CONTROL | DA)
        bad = impl.PluginHeader(60, 0, b"SBX:OPEN /etc/passwd")
        results = await asyncio.gather(
            ctx.dispatch(CONTROL, bad), ctx.dispatch(CONTROL, b"\xff"),
            ctx.dispatch(DATA, impl.PluginHeader(60), b"ok"), return_exceptions=True,
        )  # fmt: skip
        assert [type(r) for r in results] == [SandboxViolation, HeaderDecodeError, type(None)]
        assert guard.violations == 1


# -- item 3: refusals by reason ------------------------------------------------------------


@pytest.mark.parametrize("case", list(REFUSALS))
async def test_each_refusal_is_counted_under_its_reason(impl: Any, case: str) -> None:
    _error, reason = REFUSALS[case]
    d, frames = await refusing_dispatcher(impl)
    status = d.try_dispatch(*frames[case])
    stats = d.dispatch_stats()
    assert reasons(d) == {reason: 1}
    assert stats.dispatch_errors == 1
    assert stats.by_status() == {s: int(s is status) for s in DispatchStatus if s}
    await d.aclose()


async def test_backpressure_is_counted_apart_from_errors(impl: Any) -> None:
    d = impl.Dispatcher()
    gate = Gate()
    await d.load_plugin(info(7, DA), gate, capacity=1)
    header = impl.PluginHeader(7)
    d.dispatch_nowait(DATA, header, b"A")
    await gate.entered()
    d.dispatch_nowait(DATA, header, b"B")  # the queue is full now
    for _ in range(3):
        assert d.try_dispatch(DATA, header) is DispatchStatus.WOULD_BLOCK
    with pytest.raises(nyxplug.WouldBlock):
        d.dispatch_nowait(DATA, header)
    d.try_dispatch(DATA, impl.PluginHeader(8))  # one real error
    parked = asyncio.ensure_future(d.dispatch(DATA, header, b"C"))
    await tasks_started()  # the sender has parked
    unload = asyncio.ensure_future(d.unload_plugin(7))
    with pytest.raises(PluginClosed):
        await parked
    gate.open()
    final = await unload
    stats = d.dispatch_stats()
    assert (stats.dispatch_errors, stats.would_block, stats.plugin_closed,
            stats.plugin_not_registered) == (6, 4, 1, 1)  # fmt: skip
    assert (final.would_block, final.plugin_closed) == (4, 1)
    assert final.messages_processed == 2
    await d.aclose()


# -- item 4: one thread -------------------------------------------------------------------


def wrong_thread_msg(method: str, caller: str, owner: str) -> str:
    fix = (
        "asyncio.run_coroutine_threadsafe(<a coroutine that awaits dispatcher.dispatch(...)>, loop)"
        if method == "dispatch"
        else f"loop.call_soon_threadsafe(dispatcher.{method}, ...)"
    )
    return (
        f"^Dispatcher.{re.escape(method)}\\(\\) was called from thread '{caller}' \\(id \\d+\\), "
        f"but this dispatcher belongs to thread '{owner}' \\(id \\d+\\), which runs its event "
        f"loop; it is not thread-safe - from another thread use {re.escape(fix)}$"
    )


def in_thread(fn: Any, name: str = "intruder") -> BaseException | None:
    """Run ``fn()`` in a new thread; return what it raised (None if nothing)."""
    outcome: list[BaseException | None] = [None]

    def run() -> None:
        try:
            fn()
        except BaseException as exc:  # handed back to the test
            outcome[0] = exc

    thread = threading.Thread(target=run, name=name)
    thread.start()
    thread.join(10)
    assert not thread.is_alive()
    return outcome[0]


@pytest.mark.parametrize("method", ["dispatch_nowait", "try_dispatch", "dispatch"])
async def test_a_call_from_another_thread_is_refused(impl: Any, method: str) -> None:
    d = impl.Dispatcher()
    await d.load_plugin(info(7, DA), None)
    header = impl.PluginHeader(7)
    before = d.dispatch_stats()
    exc = in_thread(lambda: getattr(d, method)(DATA, header, b"x"))
    assert isinstance(exc, WrongThread)
    assert isinstance(exc, NyxplugError) and isinstance(exc, RuntimeError)
    owner = threading.current_thread().name
    assert re.match(wrong_thread_msg(method, "intruder", owner), str(exc)), str(exc)
    assert exc.owner_id == threading.get_ident() != exc.caller_id
    assert d.dispatch_stats() == before  # nothing was checked, enqueued or counted
    d.dispatch_nowait(DATA, header, b"y")  # the owner's thread is fine
    await d.aclose()


async def test_the_dispatcher_binds_to_the_thread_of_its_loop(impl: Any) -> None:
    d = impl.Dispatcher()  # created here, used from a thread running its own loop

    async def serve() -> None:
        await d.load_plugin(info(7, DA), None)
        d.dispatch_nowait(DATA, impl.PluginHeader(7), b"x")
        await d.wait_idle()

    assert in_thread(lambda: asyncio.run(serve()), name="loop-thread") is None
    # plugin 7 is loaded on that thread: this one may neither dispatch nor load
    with pytest.raises(WrongThread, match=wrong_thread_msg("try_dispatch", "MainThread",
                                                           "loop-thread")):  # fmt: skip
        d.try_dispatch(DATA, impl.PluginHeader(7))
    with pytest.raises(WrongThread, match=wrong_thread_msg("load_plugin", "MainThread",
                                                           "loop-thread")):  # fmt: skip
        await d.load_plugin(info(8, DA), None)
    assert d.loaded_plugins() == [7]
