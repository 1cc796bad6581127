"""Batch dispatch (issue 16 item 3): ``try_dispatch_many`` and ``try_dispatch_framed``.

A batch must be exactly one ``try_dispatch`` per frame, stopping at the first
``WOULD_BLOCK``: the same statuses and the same counters. Every test runs on both twins
and both loops; the lockstep test also compares the twins with each other.
"""

from __future__ import annotations

import asyncio
import re
import threading
from typing import Any

import cbor2
import pytest
from conftest import available_impls, loop_factory
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nyx_helpers import CONTROL, DATA, Gate, Recorder, info

import nyxplug
from nyxplug import (
    BatchResult,
    DispatchStatus,
    FrameTooLarge,
    FramingError,
    Permission,
    WrongThread,
    frame_message,
)
from nyxplug.sandbox import SandboxPolicy

DA = Permission.DATA_ACCESS
CT = Permission.CONTROL
S = DispatchStatus


def exact(text: str) -> str:
    return "^" + re.escape(text) + "$"


def framed(*frames: Any) -> bytes:
    """``frames`` (PluginFrame objects or raw message bytes) as a SPEC 8 stream."""
    return b"".join(frame_message(f if isinstance(f, bytes) else f.encode()) for f in frames)


def snapshot(d: Any, *plugin_ids: int) -> tuple[Any, ...]:
    return (d.dispatch_stats(), *(d.plugin_stats(p) for p in plugin_ids))


def one_by_one(d: Any, frames: list[Any]) -> list[DispatchStatus]:
    """The reference: one ``try_dispatch`` per frame, stopping at ``WOULD_BLOCK``."""
    statuses = []
    for frame in frames:
        status = d.try_dispatch(frame.frame_type, frame.header, frame.payload)
        statuses.append(status)
        if status is S.WOULD_BLOCK:
            break
    return statuses


# -- every refusal kind in one batch -------------------------------------------------


async def _refusals_setup(impl: Any) -> tuple[Any, Gate, list[Any]]:
    """Plugin 1 (DA+CT, sandboxed, queue of 1, held by its handler), 2 registered only,
    4 (DA); a frame for each way a batch frame can end, the full queue last."""
    registry = impl.PluginRegistry()
    registry.register(info(2, DA))
    d = impl.Dispatcher(registry, max_header_size=64)
    gate = Gate()
    await d.load_plugin(info(1, DA | CT), gate, capacity=1, sandbox=SandboxPolicy())
    await d.load_plugin(info(4, DA))
    h1, frame = impl.PluginHeader(1), impl.PluginFrame
    d.dispatch_nowait(DATA, h1, b"A")
    assert (await gate.entered()).payload == b"A"  # held: the queue of 1 is free
    frames = [
        frame(DATA, impl.PluginHeader(4), b"ok"),
        frame(DATA, impl.PluginHeader(3), b"not registered"),
        frame(DATA, impl.PluginHeader(2), b"not loaded"),
        frame(0x54, impl.PluginHeader(4), b"permission"),  # ERROR needs ERROR_REPORTING
        frame(CONTROL, impl.PluginHeader(1, 0, b"SBX:CONNECT evil.example:443"), b"sandbox"),
        frame(DATA, impl.PluginHeader(4, 0, bytes(64)), b"too large"),
        frame(0x10, impl.PluginHeader(4), b"unknown type"),
        frame(DATA, h1, b"fills the queue"),
        frame(DATA, impl.PluginHeader(4), b"after"),
        frame(DATA, h1, b"would block"),
        frame(DATA, impl.PluginHeader(4), b"never tried"),
    ]
    return d, gate, frames


REFUSALS = [
    S.OK, S.PLUGIN_NOT_REGISTERED, S.PLUGIN_NOT_LOADED, S.PERMISSION_DENIED,
    S.SANDBOX_VIOLATION, S.FRAME_TOO_LARGE, S.UNKNOWN_FRAME_TYPE, S.OK, S.OK, S.WOULD_BLOCK,
]  # fmt: skip


@pytest.mark.parametrize("form", ["many", "framed"])
async def test_each_refusal_in_a_batch_counts_like_try_dispatch(impl, form: str) -> None:
    d_batch, gate_batch, frames = await _refusals_setup(impl)
    d_each, gate_each, frames_each = await _refusals_setup(impl)
    before = snapshot(d_batch, 1, 4)
    assert before == snapshot(d_each, 1, 4)
    if form == "many":
        result = d_batch.try_dispatch_many(frames)
        used = 0
    else:
        result = d_batch.try_dispatch_framed(framed(*frames))
        used = len(framed(*frames[:9]))
    assert isinstance(result, BatchResult)
    assert result.statuses == REFUSALS
    assert all(type(s) is DispatchStatus for s in result.statuses)
    assert (result.dispatched, result.consumed, result.used, result.error) == (3, 9, used, None)
    assert (result.blocked, result.refused) == (True, 6)
    assert one_by_one(d_each, frames_each) == REFUSALS
    assert snapshot(d_batch, 1, 4) == snapshot(d_each, 1, 4) != before
    stats = d_batch.dispatch_stats()
    assert (stats.frames_dispatched, stats.dispatch_errors, stats.would_block) == (4, 7, 1)
    for d, gate in ((d_batch, gate_batch), (d_each, gate_each)):
        gate.open()
        await d.aclose()


@pytest.mark.parametrize("item", ["frame", "message"])
async def test_a_shut_breaker_refuses_every_frame_of_a_batch(impl, item: str) -> None:
    """The batch fast path meets the breaker's gate as ``try_dispatch`` does, for the
    ``PluginFrame``s of an embedder and the ``PluginMessage``s a decoded batch holds."""
    d = impl.Dispatcher()
    await d.load_plugin(info(1), None)
    d.set_breaker(1, nyxplug.BreakerConfig())
    d.set_breaker_state(1, nyxplug.BreakerState.FORCED_OPEN)
    kind = impl.PluginFrame if item == "frame" else impl.PluginMessage
    items = [kind(DATA, impl.PluginHeader(1), b"x%d" % n) for n in range(4)]
    result = d.try_dispatch_many(items)
    assert result.statuses == [DispatchStatus.CIRCUIT_OPEN] * 4
    assert (result.dispatched, result.consumed) == (0, 4)
    stats = d.plugin_stats(1)
    assert (stats.queue_depth, stats.circuit_open) == (0, 4)
    await d.aclose()


# -- where a batch stops ---------------------------------------------------------------


async def test_many_stops_at_would_block_and_resumes_from_consumed(impl) -> None:
    d = impl.Dispatcher()
    seen = Recorder()
    await d.load_plugin(info(7, DA), seen, capacity=2)
    frames = [impl.PluginFrame(DATA, impl.PluginHeader(7), b"%d" % i) for i in range(5)]
    result = d.try_dispatch_many(frames)
    assert result.statuses == [S.OK, S.OK, S.WOULD_BLOCK]
    assert (result.consumed, result.dispatched, result.blocked) == (2, 2, True)
    rest = frames[result.consumed :]
    while rest:
        await d.wait_idle(7)  # the embedder's pause: the queue drains, then it resumes
        result = d.try_dispatch_many(rest)
        rest = rest[result.consumed :]
    await d.wait_idle(7)
    assert seen.payloads == [b"0", b"1", b"2", b"3", b"4"]  # in order, none twice
    stats = d.dispatch_stats()
    assert (stats.frames_dispatched, stats.would_block) == (5, 2)
    await d.aclose()


async def test_framed_stops_at_would_block_and_resumes_from_used(impl) -> None:
    d = impl.Dispatcher()
    seen = Recorder()
    await d.load_plugin(info(7, DA), seen, capacity=2)
    frames = [impl.PluginFrame(DATA, impl.PluginHeader(7), b"%d" % i) for i in range(5)]
    buf = bytearray(framed(*frames))
    result = d.try_dispatch_framed(buf)
    assert result.statuses == [S.OK, S.OK, S.WOULD_BLOCK]
    assert result.used == len(framed(*frames[:2]))
    while result.used < len(buf) or result.blocked:
        del buf[: result.used]
        await d.wait_idle(7)
        result = d.try_dispatch_framed(memoryview(buf))
        assert result.error is None
    await d.wait_idle(7)
    assert seen.payloads == [b"0", b"1", b"2", b"3", b"4"]
    await d.aclose()


async def test_the_first_frame_blocked_consumes_nothing(impl) -> None:
    d = impl.Dispatcher()
    gate = Gate()
    await d.load_plugin(info(7, DA), gate, capacity=1)
    h = impl.PluginHeader(7)
    d.dispatch_nowait(DATA, h)
    await gate.entered()
    d.dispatch_nowait(DATA, h)
    frames = [impl.PluginFrame(DATA, h)] * 3
    expected = BatchResult([S.WOULD_BLOCK], 0, 0, 0, None)
    assert d.try_dispatch_many(frames) == expected
    assert d.try_dispatch_framed(framed(*frames)) == expected
    assert d.dispatch_stats().would_block == 2
    gate.open()
    await d.aclose()


# -- malformed buffers -------------------------------------------------------------------


async def test_a_frame_that_does_not_decode_is_refused_and_the_batch_goes_on(impl) -> None:
    d = impl.Dispatcher()
    seen = Recorder()
    await d.load_plugin(info(7, DA), seen)
    good = impl.PluginFrame(DATA, impl.PluginHeader(7), b"good")
    # not the canonical layout but valid (keys reordered): the shared strict decoder
    reordered = cbor2.dumps({"payload": b"reordered", "frame_type": DATA,
                             "header": {"id": 7, "flags": 0, "data": b""}})  # fmt: skip
    bad = [b"\xa0", b"\xff" * 9, good.encode() + b"\x00", good.encode()[:-1]]
    result = d.try_dispatch_framed(framed(good, *bad, reordered, good))
    assert result.statuses == [S.OK, *[S.HEADER_DECODE_ERROR] * 4, S.OK, S.OK]
    assert (result.dispatched, result.consumed, result.error) == (3, 7, None)
    await d.wait_idle(7)
    assert seen.payloads == [b"good", b"reordered", b"good"]
    stats = d.dispatch_stats()
    assert (stats.header_decode_error, stats.dispatch_errors, stats.frames_dispatched) == (4, 4, 3)
    await d.aclose()


@pytest.mark.parametrize(
    ("prefix", "error", "message"),
    [
        (
            b"\x00\x00\x00\x00",
            FramingError,
            "Expected a message length in 1..1000, got a length of 0 at stream byte {at} - in a "
            "length-prefixed stream; nothing after it can be trusted, close the connection",
        ),
        (
            b"\x00\x00\x03\xe9",
            FrameTooLarge,
            "Expected a message of at most 1000 bytes, got 1001 bytes - in message; "
            "raise max_size or send less",
        ),
    ],
)
async def test_a_bad_length_ends_the_buffer_and_is_reported(
    impl, prefix: bytes, error: type, message: str
) -> None:
    d = impl.Dispatcher()
    seen = Recorder()
    await d.load_plugin(info(7, DA), seen)
    good = impl.PluginFrame(DATA, impl.PluginHeader(7), b"before")
    head = framed(good, good)
    after = framed(impl.PluginFrame(DATA, impl.PluginHeader(7), b"after"))
    result = d.try_dispatch_framed(head + prefix + after, max_size=1000)
    assert result.statuses == [S.OK, S.OK]
    assert (result.dispatched, result.consumed, result.used) == (2, 2, len(head))
    assert type(result.error) is error
    assert re.match(exact(message.format(at=len(head))), str(result.error))
    await d.wait_idle(7)
    assert seen.payloads == [b"before", b"before"]  # nothing after the bad length
    assert d.dispatch_stats().dispatch_errors == 0  # a broken stream is not a frame
    await d.aclose()


async def test_a_message_cut_short_is_left_for_the_next_call(impl) -> None:
    d = impl.Dispatcher()
    seen = Recorder()
    await d.load_plugin(info(7, DA), seen)
    stream = framed(*(impl.PluginFrame(DATA, impl.PluginHeader(7), b"%d" % i) for i in range(3)))
    first = len(framed(impl.PluginFrame(DATA, impl.PluginHeader(7), b"0")))
    for cut in (first + 2, first + 4, first + 10):  # inside the prefix, at it, inside the frame
        result = d.try_dispatch_framed(stream[:cut])
        assert (result.statuses, result.used, result.error) == ([S.OK], first, None)
        assert not result.blocked
        result = d.try_dispatch_framed(stream[result.used :])
        assert (result.dispatched, result.used) == (2, len(stream) - first)
    await d.wait_idle(7)
    assert seen.payloads == [b"0", b"1", b"2"] * 3
    await d.aclose()


async def test_empty_input_changes_nothing(impl) -> None:
    d = impl.Dispatcher()
    await d.load_plugin(info(7, DA))
    before = snapshot(d, 7)
    nothing = BatchResult([], 0, 0, 0, None)
    assert d.try_dispatch_many([]) == nothing
    assert d.try_dispatch_many(iter(())) == nothing
    assert d.try_dispatch_framed(b"") == nothing
    assert d.try_dispatch_framed(b"\x00\x00\x00") == nothing  # a prefix cut short
    assert snapshot(d, 7) == before
    assert repr(nothing) == "BatchResult(dispatched=0, consumed=0, used=0, statuses=[])"
    await d.aclose()


# -- arguments ------------------------------------------------------------------------------


async def test_a_non_frame_is_a_type_error_before_anything_is_dispatched(impl) -> None:
    d = impl.Dispatcher()
    await d.load_plugin(info(7, DA))
    before = snapshot(d, 7)
    frame = impl.PluginFrame(DATA, impl.PluginHeader(7))
    with pytest.raises(
        TypeError, match=exact("Expected `frames[1]` to be a PluginFrame, got tuple")
    ):
        d.try_dispatch_many([frame, (DATA, impl.PluginHeader(7), b"")])
    with pytest.raises(TypeError, match=exact("Expected `buf` to be bytes-like, got str")):
        d.try_dispatch_framed("abc")
    with pytest.raises(ValueError, match=r"^Expected `max_size`"):
        d.try_dispatch_framed(b"", max_size=-1)
    assert snapshot(d, 7) == before
    await d.aclose()


async def test_the_other_twins_frames_are_accepted(impl) -> None:
    d = impl.Dispatcher()
    seen = Recorder()
    await d.load_plugin(info(7, DA), seen)
    frames = [
        m.PluginFrame(DATA, m.PluginHeader(7), m.__name__.encode()) for m in available_impls()
    ]
    result = d.try_dispatch_many(tuple(frames))
    assert result.statuses == [S.OK] * len(frames)
    await d.wait_idle(7)
    assert seen.payloads == [f.payload for f in frames]
    await d.aclose()


# -- lockstep: both twins, batch and one call per frame ---------------------------------------

frame_specs = st.tuples(
    st.sampled_from((DATA, DATA, DATA, CONTROL, 0x10)),
    st.sampled_from((1, 1, 1, 3, 3, 2, 9)),  # 1 and 3 loaded (3 without CONTROL), 2 not
    st.sampled_from((b"", b"d", bytes(40))),  # 40 bytes of data: over max_header_size
)
step = st.one_of(
    st.tuples(st.just("batch"), st.lists(frame_specs, max_size=8)),
    st.tuples(st.just("drain"), st.none()),
)


async def _lockstep(impl: Any, how: str, steps: list[Any]) -> list[Any]:
    """Run ``steps`` through one dispatcher sending batches ``how``; what every step saw.

    Nothing awaits between drains, so no worker runs and every queue fills; a drain
    waits until every queue is empty, so all runs see the same queues."""
    registry = impl.PluginRegistry()
    registry.register(info(2, DA))
    d = impl.Dispatcher(registry, max_header_size=40)
    await d.load_plugin(info(1, DA | CT), capacity=2)
    await d.load_plugin(info(3, DA), capacity=3)
    seen = []
    for kind, arg in steps:
        if kind == "drain":
            await d.wait_idle()
            seen.append(("drain", snapshot(d, 1, 3)))
            continue
        frames = [impl.PluginFrame(ft, impl.PluginHeader(pid, 0, data)) for ft, pid, data in arg]
        if how == "each":
            statuses = one_by_one(d, frames)
        elif how == "many":
            statuses = d.try_dispatch_many(frames).statuses
        else:
            result = d.try_dispatch_framed(framed(*frames))
            consumed = len(result.statuses) - result.blocked
            assert result.used == len(framed(*frames[:consumed]))
            statuses = result.statuses
        seen.append((list(statuses), snapshot(d, 1, 3)))
    await d.wait_idle()
    seen.append(snapshot(d, 1, 3))
    await d.aclose()
    return seen


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=st.lists(step, min_size=1, max_size=12))
def test_lockstep_batches_equal_one_try_dispatch_per_frame(steps: list[Any]) -> None:
    results = {}
    for impl in available_impls():
        for how in ("each", "many", "framed"):
            with asyncio.Runner(loop_factory=loop_factory("asyncio")) as runner:
                key = f"{impl.__name__}:{how}"
                results[key] = runner.run(_lockstep(impl, how, steps))
    reference = results.pop(f"{available_impls()[0].__name__}:each")
    for key, seen in results.items():
        assert seen == reference, key


@pytest.mark.parametrize("method", ["try_dispatch_many", "try_dispatch_framed"])
async def test_a_batch_from_another_thread_is_refused(impl, method: str) -> None:
    d = impl.Dispatcher()
    await d.load_plugin(info(7, DA))
    frame = impl.PluginFrame(DATA, impl.PluginHeader(7))
    arg = [frame] if method == "try_dispatch_many" else framed(frame)
    before = snapshot(d, 7)
    outcome: list[BaseException] = []

    def run() -> None:
        try:
            getattr(d, method)(arg)
        except BaseException as exc:  # handed back to the test
            outcome.append(exc)

    thread = threading.Thread(target=run, name="intruder")
    thread.start()
    thread.join(10)
    [exc] = outcome
    assert isinstance(exc, WrongThread)
    fix = f"loop.call_soon_threadsafe(dispatcher.{method}, ...)"
    assert re.match(
        rf"^Dispatcher\.{method}\(\) was called from thread 'intruder' \(id \d+\), but this "
        rf"dispatcher belongs to thread '{threading.current_thread().name}' \(id \d+\), which "
        rf"runs its event loop; it is not thread-safe - from another thread use {re.escape(fix)}$",
        str(exc),
    ), str(exc)
    assert snapshot(d, 7) == before
    await d.aclose()
