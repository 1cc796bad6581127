"""``overrun_limit`` / ``on_overrun``: the worker times a synchronous handler call.

A synchronous handler cannot be interrupted, so a call that took longer than the
limit is reported after it returns, as ``on_overrun(message_or_batch, elapsed)``.
A slow call here is a handler spinning on the monotonic clock (a CPU-bound handler),
never a sleep. Every test runs on both twins and both loops (issue 15 item 18).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from typing import Any

import pytest
from nyx_helpers import info

import nyxplug

PID = 7
DATA = nyxplug.FrameType.DATA
HEADER = nyxplug.PluginHeader(PID).encode()
SPIN = 0.02  # how long a slow call holds the loop
LIMIT = 0.005  # well under SPIN
EVENT_TIMEOUT = 5.0


def exact(text: str) -> str:
    return "^" + re.escape(text) + "$"


def spin(seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        pass


class Reports:
    """An ``on_overrun`` that records what it was told."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, float]] = []

    def __call__(self, arg: Any, elapsed: float) -> None:
        self.calls.append((arg, elapsed))


def slow_on(payload: bytes, seen: list[Any]) -> Any:
    """A sync handler that spins ``SPIN`` seconds on frames carrying ``payload``."""

    def handle(message: Any) -> None:
        seen.append(message)
        if message.payload == payload:
            spin(SPIN)

    return handle


async def settle(d: Any) -> None:
    async with asyncio.timeout(EVENT_TIMEOUT):
        await d.wait_idle(PID)


async def test_a_sync_call_over_the_limit_is_reported_once_with_its_frame_and_time(
    impl: Any,
) -> None:
    d = impl.Dispatcher()
    seen: list[Any] = []
    reports = Reports()
    await d.load_plugin(info(PID), slow_on(b"slow", seen), overrun_limit=LIMIT, on_overrun=reports)
    d.dispatch_nowait(DATA, HEADER, b"slow")
    await settle(d)
    [(message, elapsed)] = reports.calls
    assert message is seen[0] and message.payload == b"slow"
    assert SPIN <= elapsed < EVENT_TIMEOUT
    assert d.plugin_stats(PID).errors == 0
    await d.aclose()


async def test_calls_under_the_limit_report_nothing(impl: Any) -> None:
    d = impl.Dispatcher()
    seen: list[Any] = []
    reports = Reports()
    await d.load_plugin(info(PID), seen.append, overrun_limit=60.0, on_overrun=reports)
    for n in range(5):
        d.dispatch_nowait(DATA, HEADER, b"%d" % n)
    await settle(d)
    assert [m.payload for m in seen] == [b"0", b"1", b"2", b"3", b"4"]
    assert reports.calls == []
    await d.aclose()


async def test_a_batch_handler_is_timed_per_batch(impl: Any) -> None:
    batches: list[list[Any]] = []

    class Batcher:
        def handle_batch(self, messages: list[Any]) -> None:
            batches.append(messages)
            spin(SPIN)

    d = impl.Dispatcher()
    reports = Reports()
    await d.load_plugin(info(PID), Batcher(), overrun_limit=LIMIT, on_overrun=reports)
    d.dispatch_nowait(DATA, HEADER, b"a")
    d.dispatch_nowait(DATA, HEADER, b"b")  # queued before the worker runs: one batch
    await settle(d)
    assert [[m.payload for m in batch] for batch in batches] == [[b"a", b"b"]]
    [(batch, elapsed)] = reports.calls
    assert batch is batches[0] and elapsed >= SPIN
    await d.aclose()


async def test_a_slow_call_that_raises_is_reported_and_counted(impl: Any) -> None:
    def handle(message: Any) -> None:
        spin(SPIN)
        raise RuntimeError("late and wrong")

    d = impl.Dispatcher()
    reports = Reports()
    await d.load_plugin(info(PID), handle, overrun_limit=LIMIT, on_overrun=reports)
    d.dispatch_nowait(DATA, HEADER, b"x")
    await settle(d)
    assert len(reports.calls) == 1 and reports.calls[0][0].payload == b"x"
    assert d.plugin_stats(PID).errors == 1
    await d.aclose()


async def test_the_await_of_an_async_handler_is_not_timed(impl: Any) -> None:
    """Async handlers are cancelled at their limit by the runtime's watchdog instead."""
    done: list[Any] = []

    async def handle(message: Any) -> None:
        spin(SPIN)  # runs while the worker awaits the coroutine, not during the call
        done.append(message)

    d = impl.Dispatcher()
    reports = Reports()
    await d.load_plugin(info(PID), handle, overrun_limit=LIMIT, on_overrun=reports)
    d.dispatch_nowait(DATA, HEADER, b"x")
    await settle(d)
    assert len(done) == 1 and reports.calls == []
    await d.aclose()


async def test_a_raising_on_overrun_is_logged_and_the_worker_goes_on(
    impl: Any, caplog: pytest.LogCaptureFixture
) -> None:
    def report(arg: Any, elapsed: float) -> None:
        raise ValueError("report failed")

    d = impl.Dispatcher()
    seen: list[Any] = []
    await d.load_plugin(info(PID), slow_on(b"slow", seen), overrun_limit=LIMIT, on_overrun=report)
    with caplog.at_level(logging.ERROR, logger="nyxplug"):
        d.dispatch_nowait(DATA, HEADER, b"slow")
        await settle(d)
        d.dispatch_nowait(DATA, HEADER, b"next")
        await settle(d)
    assert [m.payload for m in seen] == [b"slow", b"next"]
    [record] = [r for r in caplog.records if "on_overrun" in r.getMessage()]
    assert re.match(exact(f"on_overrun of plugin {PID} raised; the worker goes on"), record.message)
    assert record.exc_info is not None and isinstance(record.exc_info[1], ValueError)
    assert d.plugin_stats(PID).errors == 0  # the handler did not fail
    assert d.is_loaded(PID)
    await d.aclose()


async def test_the_setting_goes_with_the_handler_through_swap_handler(impl: Any) -> None:
    """Like ``sandbox``: a swap given the setting keeps timing; one given none stops."""
    d = impl.Dispatcher()
    first, second = Reports(), Reports()
    seen: list[Any] = []
    await d.load_plugin(info(PID), slow_on(b"slow", seen), overrun_limit=LIMIT, on_overrun=first)
    await d.swap_handler(PID, slow_on(b"slow", seen), overrun_limit=LIMIT, on_overrun=second)
    d.dispatch_nowait(DATA, HEADER, b"slow")
    await settle(d)
    assert first.calls == [] and [m.payload for m, _ in second.calls] == [b"slow"]
    await d.swap_handler(PID, slow_on(b"slow", seen))
    d.dispatch_nowait(DATA, HEADER, b"slow")
    await settle(d)
    assert len(seen) == 2 and len(second.calls) == 1 and first.calls == []
    await d.aclose()


async def test_a_failed_swap_keeps_the_old_setting(impl: Any) -> None:
    d = impl.Dispatcher()
    reports = Reports()
    seen: list[Any] = []
    await d.load_plugin(info(PID), slow_on(b"slow", seen), overrun_limit=LIMIT, on_overrun=reports)

    def between() -> None:
        raise RuntimeError("handover failed")

    with pytest.raises(RuntimeError, match=exact("handover failed")):
        await d.swap_handler(PID, seen.append, between=between)
    d.dispatch_nowait(DATA, HEADER, b"slow")
    await settle(d)
    assert [m.payload for m, _ in reports.calls] == [b"slow"]
    await d.aclose()


def noop(arg: Any, elapsed: float) -> None:
    pass


INVALID = [
    (
        {"overrun_limit": 1.0},
        TypeError,
        f"Expected `on_overrun` with `overrun_limit`, got only `overrun_limit` - for plugin {PID}",
    ),
    (
        {"on_overrun": noop},
        TypeError,
        f"Expected `overrun_limit` with `on_overrun`, got only `on_overrun` - for plugin {PID}",
    ),
    (
        {"overrun_limit": "1", "on_overrun": noop},
        TypeError,
        "Expected `overrun_limit` to be a float, got str",
    ),
    (
        {"overrun_limit": True, "on_overrun": noop},
        TypeError,
        "Expected `overrun_limit` to be a float, got bool",
    ),
    (
        {"overrun_limit": 0, "on_overrun": noop},
        ValueError,
        f"Expected `overrun_limit` > 0 and finite, got 0 - for plugin {PID}",
    ),
    (
        {"overrun_limit": -1.5, "on_overrun": noop},
        ValueError,
        f"Expected `overrun_limit` > 0 and finite, got -1.5 - for plugin {PID}",
    ),
    (
        {"overrun_limit": float("nan"), "on_overrun": noop},
        ValueError,
        f"Expected `overrun_limit` > 0 and finite, got nan - for plugin {PID}",
    ),
    (
        {"overrun_limit": float("inf"), "on_overrun": noop},
        ValueError,
        f"Expected `overrun_limit` > 0 and finite, got inf - for plugin {PID}",
    ),
    (
        {"overrun_limit": 1.0, "on_overrun": 3},
        TypeError,
        "Expected `on_overrun` to be callable, got int",
    ),
]
INVALID_IDS = [
    "limit-only", "callback-only", "str", "bool", "zero", "negative", "nan", "inf",
    "not-callable",
]  # fmt: skip


@pytest.mark.parametrize(("kwargs", "error", "message"), INVALID, ids=INVALID_IDS)
async def test_invalid_settings_are_refused_at_load(
    impl: Any, kwargs: dict[str, Any], error: type[Exception], message: str
) -> None:
    d = impl.Dispatcher()
    with pytest.raises(error, match=exact(message)):
        await d.load_plugin(info(PID), lambda m: None, **kwargs)
    assert not d.is_loaded(PID) and not d.registry.is_registered(PID)
    await d.aclose()


@pytest.mark.parametrize(("kwargs", "error", "message"), INVALID, ids=INVALID_IDS)
async def test_invalid_settings_are_refused_at_swap(
    impl: Any, kwargs: dict[str, Any], error: type[Exception], message: str
) -> None:
    d = impl.Dispatcher()
    seen: list[Any] = []
    await d.load_plugin(info(PID), seen.append)
    with pytest.raises(error, match=exact(message)):
        await d.swap_handler(PID, lambda m: None, **kwargs)
    d.dispatch_nowait(DATA, HEADER, b"x")  # the old handler still serves
    await settle(d)
    assert len(seen) == 1
    await d.aclose()
