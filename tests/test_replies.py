"""SPEC 8 replies: ``Dispatcher.request``, ``HandlerError``, ``ReplyTimeout``, batch replies.

Every test runs on both twins (``impl``) and both loops. Nothing sleeps to wait for work:
handlers hold frames on a ``Gate`` and tests await its events, under the loop timeout.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import os
import pickle
import re
import subprocess
import sys
from typing import Any

import pytest
from conftest import ROOT
from nyx_helpers import DATA, Gate, Ledger, assert_accounting, info
from test_dispatcher import full_plugin, started_task

import nyxplug
from nyxplug import (
    DispatchError,
    FrameType,
    HandlerError,
    Permission,
    PermissionDenied,
    PluginClosed,
    PluginNotRegistered,
    ReplySink,
    ReplyTimeout,
    RequestDropped,
)
from nyxplug.plugins.api import PluginContext
from nyxplug.sandbox import SandboxPolicy, current_guard


def handler_error_msg(plugin_id: int, frame: str, error: str) -> str:
    return (
        rf"^Handler of plugin 'plugin_{plugin_id}' \(id {plugin_id}\) raised on frame "
        rf"{re.escape(frame)}: "
        rf"{re.escape(error)} - the frame was handled and counted in PluginStats\.errors; "
        r"fix the plugin, or catch the error in its handler$"
    )


def echo(message: Any) -> bytes | None:
    """Reply with the payload upper-cased; no reply to an empty payload."""
    if message.payload == b"boom":
        raise ValueError("boom")
    return message.payload.upper() or None


class ReplyingGate(Gate):
    """A ``Gate`` that replies ``b"re:" + payload`` once the test lets the frame go."""

    async def __call__(self, message: Any) -> bytes:  # type: ignore[override]
        await super().__call__(message)
        return b"re:" + message.payload


# -- replies and handler errors ----------------------------------------------------------


async def test_request_returns_the_handlers_reply(impl) -> None:
    d = impl.Dispatcher()
    await d.load_plugin(info(7), echo)
    header = impl.PluginHeader(7)
    assert await d.request(DATA, header, b"hi") == b"HI"
    assert await d.request(DATA, header) is None
    assert await d.request(DATA, header.encode(), bytearray(b"raw")) == b"RAW"
    assert_accounting(d, {7: 3}, calls=3)
    await d.aclose()


async def test_async_handlers_and_bytes_like_replies(impl) -> None:
    async def handler(message: Any) -> Any:
        await asyncio.sleep(0)
        return bytearray(message.payload) if message.payload else memoryview(b"mv")

    d = impl.Dispatcher()
    await d.load_plugin(info(7), handler)
    reply = await d.request(DATA, impl.PluginHeader(7), b"ba")
    assert reply == b"ba" and type(reply) is bytes
    assert await d.request(DATA, impl.PluginHeader(7)) == b"mv"
    await d.aclose()


async def test_a_raising_handler_fails_the_request_and_is_counted(impl, caplog) -> None:
    d = impl.Dispatcher()
    await d.load_plugin(info(7), echo)
    with caplog.at_level(logging.ERROR, logger="nyxplug"):
        with pytest.raises(
            HandlerError, match=handler_error_msg(7, "0x52 (DATA)", "ValueError: boom")
        ) as caught:
            await d.request(DATA, impl.PluginHeader(7), b"boom")
    assert isinstance(caught.value.__cause__, ValueError)
    assert str(caught.value.__cause__) == "boom"
    assert (caught.value.plugin_id, caught.value.frame_type) == (7, DATA)
    assert d.plugin_stats(7).errors == 1
    assert (
        "Handler of plugin 'plugin_7' (id 7) raised on frame 0x52 (DATA)" in caplog.text
    )  # logged as ever
    assert await d.request(DATA, impl.PluginHeader(7), b"ok") == b"OK"  # the worker goes on
    assert_accounting(d, {7: 2}, calls=2)
    await d.aclose()


async def test_a_reply_that_is_not_bytes_is_a_handler_error(impl) -> None:
    d = impl.Dispatcher()
    await d.load_plugin(info(7), lambda message: 42)
    error = "TypeError: Expected the handler to return a reply (bytes-like) or None, got int"
    with pytest.raises(HandlerError, match=handler_error_msg(7, "0x52 (DATA)", error)) as caught:
        await d.request(DATA, impl.PluginHeader(7))
    assert isinstance(caught.value.__cause__, TypeError)
    assert d.plugin_stats(7).errors == 1
    d.dispatch_nowait(DATA, impl.PluginHeader(7))  # a plain frame's return value is ignored
    await d.wait_idle(7)
    assert d.plugin_stats(7).errors == 1
    await d.aclose()


async def test_the_no_op_consumer_replies_none(impl) -> None:
    d = impl.Dispatcher()
    await d.load_plugin(info(7), None)
    d.dispatch_nowait(DATA, impl.PluginHeader(7), b"plain")
    assert await d.request(DATA, impl.PluginHeader(7), b"req") is None
    assert_accounting(d, {7: 2}, calls=2)
    await d.aclose()


# -- refusals, backpressure, timeout, cancellation ---------------------------------------


async def test_a_refusal_surfaces_by_awaiting_and_is_counted_once(impl) -> None:
    d = impl.Dispatcher()
    await d.load_plugin(info(7, Permission.HANDSHAKE), echo)
    unknown = d.request(DATA, impl.PluginHeader(99))  # nothing raised by the call
    denied = d.request(DATA, impl.PluginHeader(7))
    results = await asyncio.gather(unknown, denied, return_exceptions=True)
    assert [type(r) for r in results] == [PluginNotRegistered, PermissionDenied]
    stats = d.dispatch_stats()
    assert (stats.plugin_not_registered, stats.permission_denied) == (1, 1)
    assert d.plugin_stats(7).permission_violations == 1
    assert_accounting(d, {7: 0}, calls=2)
    await d.aclose()


async def test_request_waits_for_room_in_fifo_order_with_dispatch(impl) -> None:
    d = impl.Dispatcher()
    gate, header = await full_plugin(impl, d, capacity=1)
    ledger_calls = 2  # A and B0, enqueued by full_plugin
    first = await started_task(lambda: d.dispatch(DATA, header, b"C"))
    request = await started_task(lambda: d.request(DATA, header, b"R"))
    last = await started_task(lambda: d.dispatch(DATA, header, b"D"))
    assert not request.done()
    with pytest.raises(nyxplug.WouldBlock):  # a parked request's slot is not up for grabs
        d.dispatch_nowait(DATA, header, b"X")
    gate.open()
    await asyncio.gather(first, last)
    assert await request is None  # a Gate returns None: no reply
    await d.wait_idle(7)
    assert gate.payloads == [b"A", b"B0", b"C", b"R", b"D"]
    assert_accounting(d, {7: 5}, calls=ledger_calls + 4)
    await d.aclose()


async def test_timeout_after_enqueue_still_handles_the_frame(impl) -> None:
    d = impl.Dispatcher()
    gate = ReplyingGate()
    await d.load_plugin(info(7), gate)
    with pytest.raises(ReplyTimeout) as caught:
        await d.request(DATA, impl.PluginHeader(7), b"slow", timeout=0.01)
    assert re.match(
        r"^No reply from plugin 'plugin_7' \(id 7\) to frame 0x52 \(DATA\) within 0\.01 s - "
        r"the frame is still "
        r"handled and counted; its reply will be dropped; raise the timeout or make the "
        r"handler faster$",
        str(caught.value),
    )
    assert caught.value.enqueued is True
    assert isinstance(caught.value, TimeoutError) and isinstance(caught.value, DispatchError)
    assert (await gate.entered()).payload == b"slow"
    gate.open()
    await d.wait_idle(7)
    assert gate.finished[0].payload == b"slow"
    assert d.plugin_stats(7).messages_processed == 1
    assert await d.request(DATA, impl.PluginHeader(7), b"next", timeout=5) == b"re:next"
    assert_accounting(d, {7: 2}, calls=2)
    await d.aclose()


async def test_timeout_while_parked_enqueued_nothing(impl) -> None:
    d = impl.Dispatcher()
    gate, header = await full_plugin(impl, d, capacity=1)
    before = d.dispatch_stats()
    with pytest.raises(
        ReplyTimeout, match=r"the queue stayed full, so the frame was not enqueued;"
    ) as caught:
        await d.request(DATA, header, b"late", timeout=0)
    assert caught.value.enqueued is False
    assert d.dispatch_stats() == before
    gate.open()
    await d.wait_idle(7)
    assert gate.payloads == [b"A", b"B0"]
    assert_accounting(d, {7: 2}, calls=2)
    await d.aclose()


async def test_cancelled_before_enqueue_did_not_happen(impl) -> None:
    d = impl.Dispatcher()
    gate, header = await full_plugin(impl, d, capacity=1)
    parked = await started_task(lambda: d.request(DATA, header, b"R"))
    before = d.dispatch_stats()
    parked.cancel()
    with pytest.raises(asyncio.CancelledError):
        await parked
    assert d.dispatch_stats() == before
    never = d.request(DATA, header, b"never")  # never awaited: never happened
    never.close()
    assert d.dispatch_stats() == before
    gate.open()
    await d.wait_idle(7)
    assert gate.payloads == [b"A", b"B0"]
    await d.aclose()


async def test_cancelled_after_enqueue_is_handled_and_the_reply_dropped(impl) -> None:
    d = impl.Dispatcher()
    gate = ReplyingGate()
    await d.load_plugin(info(7), gate)
    waiting = await started_task(lambda: d.request(DATA, impl.PluginHeader(7), b"R"))
    assert (await gate.entered()).payload == b"R"
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    gate.open()
    await d.wait_idle(7)
    assert [m.payload for m in gate.finished] == [b"R"]
    assert d.plugin_stats(7).errors == 0
    assert_accounting(d, {7: 1}, calls=1)
    await d.aclose()


async def test_a_request_dropped_by_unload_fails_with_request_dropped(impl) -> None:
    d = impl.Dispatcher()
    gate = ReplyingGate()
    await d.load_plugin(info(7), gate, capacity=4)
    header = impl.PluginHeader(7)
    first = await started_task(lambda: d.request(DATA, header, b"in flight"))
    await gate.entered()
    queued = await started_task(lambda: d.request(DATA, header, b"queued"))
    unload = await started_task(lambda: d.unload_plugin(7, drain=False))
    gate.open()
    stats = await unload
    assert await first == b"re:in flight"
    with pytest.raises(
        RequestDropped,
        match=r"^Plugin 'plugin_7' \(id 7\) was unloaded before it handled frame 0x52 \(DATA\) - "
        r"the frame was "
        r"dropped \(PluginStats\.dropped\) and has no reply; unload with drain=True to let "
        r"queued requests finish$",
    ):
        await queued
    assert (stats.messages_processed, stats.dropped) == (1, 1)
    assert_accounting(d, {7: 2}, calls=2, final_stats={7: stats})


async def test_a_request_parked_at_unload_is_plugin_closed(impl) -> None:
    d = impl.Dispatcher()
    gate, header = await full_plugin(impl, d, capacity=1)
    parked = await started_task(lambda: d.request(DATA, header, b"R"))
    unload = await started_task(lambda: d.unload_plugin(7))
    gate.open()
    stats = await unload
    with pytest.raises(PluginClosed):
        await parked
    assert d.dispatch_stats().plugin_closed == 1
    assert_accounting(d, {7: 2}, calls=3, final_stats={7: stats})


@pytest.mark.parametrize(
    ("timeout", "error", "message"),
    [
        ("1", TypeError, r"^Expected `timeout` to be a number of seconds or None, got str$"),
        (True, TypeError, r"^Expected `timeout` to be a number of seconds or None, got bool$"),
        (-1, ValueError, r"^Expected `timeout` >= 0 seconds or None, got -1$"),
        (float("nan"), ValueError, r"^Expected `timeout` >= 0 seconds or None, got nan$"),
    ],
)
async def test_timeout_is_checked(impl, timeout: Any, error: type, message: str) -> None:
    d = impl.Dispatcher()
    await d.load_plugin(info(7), echo)
    with pytest.raises(error, match=message):
        await d.request(DATA, impl.PluginHeader(7), timeout=timeout)
    assert d.dispatch_stats().frames_dispatched == 0
    await d.aclose()


async def test_the_ledger_holds_with_requests_mixed_in(impl) -> None:
    d = impl.Dispatcher()
    await d.load_plugin(info(7), echo, capacity=2)
    ledger = Ledger(d, impl)
    header = impl.PluginHeader(7)
    for i in range(20):
        if i % 3 == 0:
            assert await d.request(DATA, header, b"r%d" % i) == b"R%d" % i
            ledger.calls += 1
            ledger.enqueued[7] += 1
        else:
            await ledger.send(DATA, header, b"p")
    with pytest.raises(PluginNotRegistered):
        await d.request(DATA, impl.PluginHeader(8))
    ledger.calls += 1
    await d.wait_idle(7)
    assert_accounting(d, ledger.enqueued, ledger.calls)
    await d.aclose()


# -- reply targets: submit(reply_to=...) and ReplySink -------------------------------------


class Sink:
    """What a ``ReplySink`` delivered, with the context and guard it ran under."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.events: list[str] = []

    def __call__(self, tag: str, value: bytes | None, error: BaseException | None) -> None:
        self.calls.append((tag, value, error, SINK_VAR.get(), current_guard()))
        self.events.append("sink")


SINK_VAR: contextvars.ContextVar[str] = contextvars.ContextVar("SINK_VAR", default="unset")


async def test_a_reply_sink_is_called_in_the_workers_step(impl) -> None:
    loop = asyncio.get_running_loop()
    sink = Sink()

    guards: list[Any] = []

    def handler(message: Any) -> bytes:
        guards.append(current_guard())
        # anything the handler schedules runs on the next loop iteration: after the sink
        loop.call_soon(sink.events.append, "next iteration")
        return b"re:" + message.payload

    d = impl.Dispatcher()
    await d.load_plugin(info(7), handler, sandbox=SandboxPolicy.permissive())
    token = SINK_VAR.set("the submitter's")
    target = ReplySink(sink, "one")
    SINK_VAR.reset(token)
    assert repr(target).startswith("<ReplySink <") and repr(target).endswith(" pending>")
    assert await d.submit(DATA, impl.PluginHeader(7), b"x", reply_to=target) is target
    await d.wait_idle(7)
    # run in a copy of the submitter's context, outside the plugin's sandbox guard
    assert sink.calls == [("one", b"re:x", None, "the submitter's", None)]
    assert guards[0] is not None
    assert target.done() and repr(target).endswith(" done>")
    await asyncio.sleep(0)  # let "next iteration" run
    assert sink.events == ["sink", "next iteration"]

    # a future's callbacks, by contrast, run a loop iteration after the worker answered
    future = await d.submit(DATA, impl.PluginHeader(7), b"y")
    future.add_done_callback(lambda _f: sink.events.append("future callback"))
    sink.events.clear()
    await future
    await asyncio.sleep(0)
    assert sink.events == ["next iteration", "future callback"]
    assert_accounting(d, {7: 2}, calls=2)
    await d.aclose()


async def test_a_reply_sink_gets_handler_errors_and_dropped_requests(impl) -> None:
    sink = Sink()
    d = impl.Dispatcher()
    await d.load_plugin(info(7), echo)
    header = impl.PluginHeader(7)
    await d.submit(DATA, header, b"boom", reply_to=ReplySink(sink, "raised"))
    await d.submit(DATA, header, b"", reply_to=ReplySink(sink, "none"))
    await d.wait_idle(7)
    [(tag, value, error, _, _), none] = sink.calls
    assert (tag, value, none[:3]) == ("raised", None, ("none", None, None))
    assert isinstance(error, HandlerError) and isinstance(error.__cause__, ValueError)
    assert str(error) == str(HandlerError.caused_by(7, DATA, ValueError("boom"), info(7)))

    gate = ReplyingGate()
    await d.load_plugin(info(8), gate, capacity=4)
    dropped = ReplySink(sink, "dropped")
    await d.submit(DATA, impl.PluginHeader(8), b"in flight")
    await gate.entered()
    await d.submit(DATA, impl.PluginHeader(8), b"queued", reply_to=dropped)
    unload = await started_task(lambda: d.unload_plugin(8, drain=False))
    gate.open()
    await unload
    assert dropped.done() and isinstance(sink.calls[-1][2], RequestDropped)
    await d.aclose()


async def test_a_raising_reply_sink_goes_to_the_loop_not_the_worker(impl) -> None:
    loop = asyncio.get_running_loop()
    reported: list[dict[str, Any]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: reported.append(context))

    def broken(value: bytes | None, error: BaseException | None) -> None:
        raise RuntimeError("sink failed")

    try:
        d = impl.Dispatcher()
        await d.load_plugin(info(7), echo)
        header = impl.PluginHeader(7)
        target = await d.submit(DATA, header, b"a", reply_to=ReplySink(broken))
        assert await d.request(DATA, header, b"b") == b"B"  # the worker still works
    finally:
        loop.set_exception_handler(previous)
    [context] = reported
    assert context["message"] == f"Exception in reply sink {broken!r}"
    assert isinstance(context["exception"], RuntimeError)
    with pytest.raises(asyncio.InvalidStateError, match=r"^Expected one reply, got a second - "):
        target.set_result(b"again")
    assert d.plugin_stats(7).errors == 0
    await d.aclose()


async def test_submit_takes_a_future_as_its_reply_target(impl) -> None:
    d = impl.Dispatcher()
    await d.load_plugin(info(7), echo)
    mine: asyncio.Future[bytes | None] = asyncio.get_running_loop().create_future()
    assert await d.submit(DATA, impl.PluginHeader(7), b"hi", reply_to=mine) is mine
    assert await mine == b"HI"
    await d.aclose()


# -- batch handlers ------------------------------------------------------------------------


class BatchReplies:
    """A batch handler held on a gate, replying as ``mode`` says."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.batches: list[list[bytes]] = []
        self.release = asyncio.Event()

    async def handle_batch(self, messages: list[Any]) -> Any:
        self.batches.append([m.payload for m in messages])
        if len(self.batches) == 1:
            await self.release.wait()  # the rest queue up behind the first batch
        if self.mode == "raise":
            raise ValueError("batch broke")
        if self.mode == "none":
            return None
        if self.mode == "short":
            return [b"only one"]
        return [b"re:" + m.payload for m in messages]


async def _batch_run(impl: Any, mode: str) -> tuple[Any, BatchReplies, list[Any]]:
    d = impl.Dispatcher()
    handler = BatchReplies(mode)
    await d.load_plugin(info(7), handler, capacity=8)
    header = impl.PluginHeader(7)
    d.dispatch_nowait(DATA, header, b"first")
    await started_task(lambda: asyncio.sleep(0))  # the worker takes the first batch
    d.dispatch_nowait(DATA, header, b"p1")
    tasks = [
        await started_task(lambda: d.request(DATA, header, b"r1")),
        await started_task(lambda: d.request(DATA, header, b"r2")),
    ]
    d.dispatch_nowait(DATA, header, b"p2")
    handler.release.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    await d.wait_idle(7)
    return d, handler, results


async def test_batch_handler_replies_one_per_message(impl) -> None:
    d, handler, results = await _batch_run(impl, "list")
    assert handler.batches == [[b"first"], [b"p1", b"r1", b"r2", b"p2"]]
    assert results == [b"re:r1", b"re:r2"]
    assert_accounting(d, {7: 5}, calls=5)
    await d.aclose()


async def test_batch_handler_returning_none_replies_none(impl) -> None:
    d, _handler, results = await _batch_run(impl, "none")
    assert results == [None, None]
    assert d.plugin_stats(7).errors == 0
    await d.aclose()


async def test_batch_handler_raising_fails_each_request(impl) -> None:
    d, _handler, results = await _batch_run(impl, "raise")
    for result in results:
        assert isinstance(result, HandlerError) and isinstance(result.__cause__, ValueError)
        assert re.match(handler_error_msg(7, "0x52 (DATA)", "ValueError: batch broke"), str(result))
    assert d.plugin_stats(7).errors == 2  # one per batch, as before
    await d.aclose()


async def test_batch_handler_with_a_wrong_reply_list_fails_its_requests(impl) -> None:
    d, _handler, results = await _batch_run(impl, "short")
    error = (
        "TypeError: Expected handle_batch to return None or a list of 4 replies "
        "(one per message), got a list of 1"
    )
    for result in results:
        assert isinstance(result, HandlerError)
        assert re.match(handler_error_msg(7, "0x52 (DATA)", error), str(result))
    assert d.plugin_stats(7).errors == 1  # the first batch had no request: not looked at
    await d.aclose()


# -- PluginContext.request -------------------------------------------------------------------


async def test_ctx_request_runs_under_the_plugins_own_permissions(impl) -> None:
    d = impl.Dispatcher()
    await d.load_plugin(info(7), echo)
    await d.load_plugin(info(8, Permission.DATA_ACCESS), None)
    await d.load_plugin(info(9, Permission.HANDSHAKE), None)
    allowed = PluginContext(name="eight", plugin_id=8, version="1", config={}, dispatcher=d)
    assert await allowed.request(DATA, impl.PluginHeader(7), b"x", timeout=5) == b"X"
    denied = PluginContext(name="nine", plugin_id=9, version="1", config={}, dispatcher=d)
    pending = denied.request(DATA, impl.PluginHeader(7), b"x")  # raised by awaiting
    with pytest.raises(PermissionDenied) as caught:
        await pending
    assert caught.value.plugin_id == 9
    assert d.dispatch_stats().frames_dispatched == 1
    await d.aclose()


async def test_a_supervised_plugins_reply_reaches_the_requester(impl) -> None:
    from nyxplug.plugins.supervise import supervise

    class Echo(nyxplug.plugins.Plugin):
        async def handle(self, message: Any) -> bytes:
            return b"supervised:" + message.payload

    class Record:
        name = "echo"
        timeouts = 0

    d = impl.Dispatcher()
    for timeout in (None, 5.0):
        supervision = supervise(Record(), Echo(), 7, timeout)  # type: ignore[arg-type]
        await d.load_plugin(info(7), supervision.handler)
        assert await d.request(DATA, impl.PluginHeader(7), b"x") == b"supervised:x"
        await d.unload_plugin(7)


# -- the errors ------------------------------------------------------------------------------


ERRORS = {
    "handler": HandlerError(7, FrameType.DATA, "ValueError: boom"),
    "timeout": ReplyTimeout(7, FrameType.DATA, 0.5, True),
    "timeout_parked": ReplyTimeout(7, FrameType.DATA, 2.0, False),
    "dropped": RequestDropped(7, FrameType.CONTROL),
}


@pytest.mark.parametrize("name", list(ERRORS))
def test_reply_errors_pickle_and_say_where(name: str) -> None:
    exc = ERRORS[name]
    assert isinstance(exc, DispatchError) and getattr(nyxplug, type(exc).__name__) is type(exc)
    clone = pickle.loads(pickle.dumps(exc))
    assert (type(clone), str(clone), clone.args, vars(clone)) == (
        type(exc),
        str(exc),
        exc.args,
        vars(exc),
    )
    assert re.search(r"\bplugin 7\b", str(exc), re.IGNORECASE)
    assert f"0x{int(exc.frame_type):02x} ({FrameType(exc.frame_type).name})" in str(exc)


README = (ROOT / "README.md").read_text(encoding="utf-8")
SNIPPET = re.search(
    r"### Replies\n.*?```python\n(.*?)```\n\nprints\n\n```text\n(.*?)```", README, re.S
)


@pytest.mark.parametrize("pure", [False, True], ids=["cython", "python"])
def test_readme_replies_snippet_prints_what_the_readme_says(pure: bool, tmp_path) -> None:
    assert SNIPPET is not None
    script = tmp_path / "replies.py"
    script.write_text(SNIPPET.group(1), encoding="utf-8")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("NYXPLUG_NO_EXTENSIONS", None)
    if pure:
        env.pop("NYXPLUG_REQUIRE_EXTENSIONS", None)
        env["NYXPLUG_NO_EXTENSIONS"] = "1"
    result = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == SNIPPET.group(2)
