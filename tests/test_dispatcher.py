"""SPEC 3 and 4 in depth: check order, errors, backpressure, cancellation, unload, handlers.

Every test runs on both twins (``impl``) and both loops. Nothing sleeps: tests wait on
handler events (``Gate``), parked-sender tasks or ``wait_idle``, under the loop timeout.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import re
from typing import Any

import cbor2
import msgspec
import pytest
from nyx_helpers import (
    ALL_PERMISSIONS,
    CONTROL,
    DATA,
    ERROR,
    HANDSHAKE,
    Gate,
    Ledger,
    Recorder,
    assert_accounting,
    info,
)

import nyxplug
from nyxplug import (
    AlreadyLoaded,
    DispatchStatus,
    FrameTooLarge,
    HeaderDecodeError,
    Permission,
    PermissionDenied,
    PluginClosed,
    PluginNotLoaded,
    PluginNotRegistered,
    SandboxViolation,
    UnknownFrameType,
    WouldBlock,
)
from nyxplug.sandbox import SandboxPolicy

DA = Permission.DATA_ACCESS
HS = Permission.HANDSHAKE
CT = Permission.CONTROL
ER = Permission.ERROR_REPORTING


def exact(text: str) -> str:
    """An anchored regex matching ``text`` literally."""
    return "^" + re.escape(text) + "$"


def not_registered_msg(plugin_id: int, frame: str) -> str:
    return (
        f"Plugin {plugin_id} is not registered - frame {frame} was refused; "
        "load it with Dispatcher.load_plugin() first"
    )


def named(plugin_id: int) -> str:
    """How errors name the test's ``info(plugin_id)``, which the registry knows."""
    return f"plugin 'plugin_{plugin_id}' (id {plugin_id})"


def not_loaded_msg(plugin_id: int, frame: str) -> str:
    return (
        f"P{named(plugin_id)[1:]} is not loaded - frame {frame} was refused; "
        "load it with Dispatcher.load_plugin() first"
    )


def would_block_msg(plugin_id: int, capacity: int, frame: str) -> str:
    """The refusal for ``info(plugin_id)``: named, capacity raised in code."""
    return (
        f"Queue of {named(plugin_id)} is full (capacity {capacity}) - frame {frame} was not "
        "enqueued; await dispatch() to wait for space, retry later, or raise "
        f"load_plugin(capacity=...) for 'plugin_{plugin_id}'"
    )


def denied_msg(plugin_id: int, permission: str, frame: str) -> str:
    """The refusal for the test's ``info(plugin_id)``: named, fixed in PluginInfo (code)."""
    name = f"plugin_{plugin_id}"
    return (
        f"Plugin {name!r} (id {plugin_id}) lacks permission {permission} required by frame "
        f"{frame} - grant it in PluginInfo.permissions of {name!r}"
    )


def unknown_type_msg(code: str, plugin_id: int) -> str:
    return (
        f"Expected a frame type this dispatcher routes, got {code} - for plugin {plugin_id}; "
        "the built-in types are 0x51..0x54, register_frame_type() adds others in 0x50..0x5f"
    )


def closed_msg(plugin_id: int, frame: str) -> str:
    return (
        f"P{named(plugin_id)[1:]} was unloaded while frame {frame} waited for queue space - "
        "the frame was not enqueued"
    )


async def started_task(make: Any) -> asyncio.Task:
    """Run ``await make()`` in a task; return once the task has taken its first step.

    For ``dispatch`` that means: enqueued, failed, or parked among the waiting senders;
    for ``unload_plugin``: the unload has begun and waits for the worker.
    """
    started = asyncio.Event()

    async def run() -> Any:
        started.set()
        return await make()

    task = asyncio.create_task(run())
    await started.wait()
    return task


async def start_sender(d: Any, frame_type: int, header: Any, payload: bytes = b"") -> asyncio.Task:
    """Start ``await d.dispatch(...)`` in a task and return once it has run (parked or done)."""
    return await started_task(lambda: d.dispatch(frame_type, header, payload))


async def tasks_started() -> None:
    """Return once every task created before this call has taken its first step."""
    started = asyncio.Event()
    asyncio.get_running_loop().call_soon(started.set)
    await started.wait()


async def full_plugin(impl: Any, d: Any, plugin_id: int = 7, capacity: int = 1,
                      permissions: Any = ALL_PERMISSIONS) -> tuple[Gate, Any]:  # fmt: skip
    """Load a plugin whose handler holds frame ``A`` and whose queue is then full."""
    gate = Gate()
    await d.load_plugin(info(plugin_id, permissions), gate, capacity=capacity)
    header = impl.PluginHeader(plugin_id)
    d.dispatch_nowait(DATA, header, b"A")
    assert (await gate.entered()).payload == b"A"
    for i in range(capacity):
        d.dispatch_nowait(DATA, header, b"B%d" % i)
    return gate, header


# -- SPEC 3: check order ---------------------------------------------------------------


async def test_size_is_checked_before_decoding(impl) -> None:
    d = impl.Dispatcher(max_header_size=8)
    garbage = b"\xff" * 9  # not CBOR, unknown frame type, no plugin: size wins
    with pytest.raises(
        FrameTooLarge,
        match=exact(
            "Expected a header of at most 8 bytes, got 9 bytes - in header of frame 0x10; "
            "raise max_header_size or send less"
        ),
    ) as excinfo:
        d.dispatch_nowait(0x10, garbage)
    err = excinfo.value
    assert (err.part, err.size, err.limit, err.frame_type, err.plugin_id) == (
        "header", 9, 8, 0x10, None,
    )  # fmt: skip
    assert isinstance(err, ValueError)
    assert d.try_dispatch(0x10, garbage) is DispatchStatus.FRAME_TOO_LARGE
    # exactly at the limit the header is decoded (and found wanting)
    with pytest.raises(HeaderDecodeError):
        d.dispatch_nowait(0x10, garbage[:8])
    assert d.dispatch_stats().dispatch_errors == 3


async def test_payload_size_is_checked_before_decoding(impl) -> None:
    d = impl.Dispatcher(max_payload_size=4)
    with pytest.raises(
        FrameTooLarge,
        match=exact(
            "Expected a payload of at most 4 bytes, got 5 bytes - in payload of frame "
            "0x52 (DATA); raise max_payload_size or send less"
        ),
    ) as excinfo:
        d.dispatch_nowait(DATA, b"\xff", b"12345")
    assert (excinfo.value.part, excinfo.value.size, excinfo.value.limit) == ("payload", 5, 4)
    # the header limit is checked before the payload limit
    d2 = impl.Dispatcher(max_header_size=1, max_payload_size=4)
    with pytest.raises(FrameTooLarge) as excinfo:
        d2.dispatch_nowait(DATA, b"\xff\xff", b"12345")
    assert excinfo.value.part == "header"
    # a payload exactly at the limit passes the size check
    with pytest.raises(HeaderDecodeError):
        d.dispatch_nowait(DATA, b"\xff", b"1234")


async def test_ready_header_too_large_uses_its_canonical_size(impl) -> None:
    d = impl.Dispatcher(max_header_size=32)
    await d.load_plugin(info(7))
    fits = impl.PluginHeader(7, 0, bytes(32 - 18))  # 18 bytes of map overhead for id 7
    assert len(fits.encode()) == 32
    d.dispatch_nowait(DATA, fits)
    too_big = impl.PluginHeader(7, 0, bytes(15))
    with pytest.raises(
        FrameTooLarge,
        match=exact(
            "Expected a header of at most 32 bytes, got 33 bytes - in header of frame "
            "0x52 (DATA); raise max_header_size or send less"
        ),
    ):
        d.dispatch_nowait(DATA, too_big)
    assert d.try_dispatch(DATA, too_big.encode()) is DispatchStatus.FRAME_TOO_LARGE
    await d.wait_idle(7)
    assert d.plugin_stats(7).messages_processed == 1
    await d.aclose()


async def test_header_is_decoded_before_the_frame_type_is_checked(impl) -> None:
    d = impl.Dispatcher()
    with pytest.raises(
        HeaderDecodeError,
        match=exact(
            "Expected a CBOR map {id, flags, data} or array [id, flags, data], got an "
            "unsigned integer at byte 0 - in plugin header of frame 0x10"
        ),
    ) as excinfo:
        d.dispatch_nowait(0x10, b"\x01")
    err = excinfo.value
    assert (err.frame_type, err.plugin_id, err.offset) == (0x10, None, 0)
    assert isinstance(err, ValueError)
    assert d.try_dispatch(0x10, b"\x01") is DispatchStatus.HEADER_DECODE_ERROR


@pytest.mark.parametrize("frame_type", [0x00, 0x10, 0x50, 0x55, 0x5F, 0x60, 0xFF])
async def test_frame_type_is_checked_before_the_registry(impl, frame_type: int) -> None:
    d = impl.Dispatcher()
    await d.load_plugin(info(7))
    for plugin_id in (7, 99):  # loaded with every permission, and unknown
        with pytest.raises(
            UnknownFrameType, match=exact(unknown_type_msg(f"0x{frame_type:02x}", plugin_id))
        ) as excinfo:
            d.dispatch_nowait(frame_type, impl.PluginHeader(plugin_id))
        assert (excinfo.value.frame_type, excinfo.value.plugin_id) == (frame_type, plugin_id)
        assert d.try_dispatch(frame_type, impl.PluginHeader(plugin_id)) is (
            DispatchStatus.UNKNOWN_FRAME_TYPE
        )
    assert d.dispatch_stats().dispatch_errors == 4
    assert d.plugin_stats(7).permission_violations == 0
    await d.aclose()


@pytest.mark.parametrize("frame_type", [-1, 256, 0x152, 2**40])
async def test_frame_types_outside_a_byte_are_unknown(impl, frame_type: int) -> None:
    d = impl.Dispatcher()
    await d.load_plugin(info(7))
    code = str(frame_type) if frame_type < 0 else f"0x{frame_type:02x}"
    with pytest.raises(UnknownFrameType, match=exact(unknown_type_msg(code, 7))):
        d.dispatch_nowait(frame_type, impl.PluginHeader(7))
    assert d.try_dispatch(frame_type, impl.PluginHeader(7)) is DispatchStatus.UNKNOWN_FRAME_TYPE
    await d.aclose()


async def test_registry_is_checked_before_the_runtime(impl) -> None:
    registry = impl.PluginRegistry()
    registry.register(info(8, DA))  # registered, never loaded
    d = impl.Dispatcher(registry)
    with pytest.raises(PluginNotRegistered, match=exact(not_registered_msg(9, "0x52 (DATA)"))) as e:
        d.dispatch_nowait(DATA, impl.PluginHeader(9))
    assert (e.value.plugin_id, e.value.frame_type) == (9, DATA)
    with pytest.raises(PluginNotLoaded, match=exact(not_loaded_msg(8, "0x52 (DATA)"))) as e:
        d.dispatch_nowait(DATA, impl.PluginHeader(8))
    assert (e.value.plugin_id, e.value.frame_type) == (8, DATA)
    assert d.try_dispatch(DATA, impl.PluginHeader(9)) is DispatchStatus.PLUGIN_NOT_REGISTERED
    assert d.try_dispatch(DATA, impl.PluginHeader(8)) is DispatchStatus.PLUGIN_NOT_LOADED
    assert d.dispatch_stats().dispatch_errors == 4


async def test_runtime_is_checked_before_the_permission(impl) -> None:
    registry = impl.PluginRegistry()
    registry.register(info(8, HS))  # lacks DATA_ACCESS and is not loaded
    d = impl.Dispatcher(registry)
    with pytest.raises(PluginNotLoaded):
        d.dispatch_nowait(DATA, impl.PluginHeader(8))
    await d.load_plugin(info(8, HS))
    # the registry entry was kept (load registers only unknown ids)
    assert d.plugin_stats(8).permission_violations == 0
    with pytest.raises(PermissionDenied):
        d.dispatch_nowait(DATA, impl.PluginHeader(8))
    assert d.plugin_stats(8).permission_violations == 1
    await d.aclose()


async def test_unregistering_a_loaded_plugin_makes_it_not_registered(impl) -> None:
    d = impl.Dispatcher()
    await d.load_plugin(info(7, DA))
    d.registry.unregister(7)
    with pytest.raises(PluginNotRegistered, match=exact(not_registered_msg(7, "0x52 (DATA)"))):
        d.dispatch_nowait(DATA, impl.PluginHeader(7))
    d.registry.register(info(7, HS))  # back, with other rights: they apply at once
    with pytest.raises(PermissionDenied):
        d.dispatch_nowait(DATA, impl.PluginHeader(7))
    d.dispatch_nowait(HANDSHAKE, impl.PluginHeader(7))
    final = await d.unload_plugin(7)
    assert (final.messages_processed, final.permission_violations) == (1, 1)


async def test_permission_is_checked_before_the_queue(impl) -> None:
    d = impl.Dispatcher()
    gate, header = await full_plugin(impl, d, permissions=DA)
    with pytest.raises(WouldBlock):
        d.dispatch_nowait(DATA, header)
    with pytest.raises(
        PermissionDenied, match=exact(denied_msg(7, "CONTROL", "0x53 (CONTROL)"))
    ) as excinfo:
        d.dispatch_nowait(CONTROL, header)
    assert (excinfo.value.plugin_id, excinfo.value.frame_type) == (7, CONTROL)
    assert excinfo.value.required == CT
    with pytest.raises(PermissionDenied):
        await d.dispatch(ERROR, header)  # a waiting dispatch fails at once too
    assert d.plugin_stats(7).permission_violations == 2
    gate.open()
    final = await d.unload_plugin(7)
    assert final.permission_violations == 2
    assert_accounting(d, {7: 2}, calls=5, final_stats={7: final})


@pytest.mark.parametrize(
    ("frame_type", "required", "frame"),
    [
        (HANDSHAKE, HS, "0x51 (HANDSHAKE)"),
        (DATA, DA, "0x52 (DATA)"),
        (CONTROL, CT, "0x53 (CONTROL)"),
        (ERROR, ER, "0x54 (ERROR)"),
    ],
)
async def test_default_routing_table(impl, frame_type: int, required: Permission,
                                     frame: str) -> None:  # fmt: skip
    d = impl.Dispatcher()
    await d.load_plugin(info(1, required))
    await d.load_plugin(info(2, ALL_PERMISSIONS & ~required))
    d.dispatch_nowait(frame_type, impl.PluginHeader(1))
    with pytest.raises(PermissionDenied, match=exact(denied_msg(2, required.name, frame))):
        d.dispatch_nowait(frame_type, impl.PluginHeader(2))
    await d.aclose()


# -- try_dispatch ------------------------------------------------------------------

TRY_CASES = {
    "ok": (DispatchStatus.OK, None),
    "would_block": (DispatchStatus.WOULD_BLOCK, WouldBlock),
    "not_registered": (DispatchStatus.PLUGIN_NOT_REGISTERED, PluginNotRegistered),
    "not_loaded": (DispatchStatus.PLUGIN_NOT_LOADED, PluginNotLoaded),
    "permission": (DispatchStatus.PERMISSION_DENIED, PermissionDenied),
    "header": (DispatchStatus.HEADER_DECODE_ERROR, HeaderDecodeError),
    "too_large": (DispatchStatus.FRAME_TOO_LARGE, FrameTooLarge),
    "unknown_type": (DispatchStatus.UNKNOWN_FRAME_TYPE, UnknownFrameType),
}


async def _try_setup(impl: Any) -> tuple[Any, Gate, dict[str, tuple[int, Any, bytes]]]:
    registry = impl.PluginRegistry()
    registry.register(info(2, DA))
    d = impl.Dispatcher(registry, max_header_size=64)
    gate, full = await full_plugin(impl, d, 1, capacity=1, permissions=DA)
    await d.load_plugin(info(4, DA))
    frames = {
        "ok": (DATA, impl.PluginHeader(4), b"p"),
        "would_block": (DATA, full, b"p"),
        "not_registered": (DATA, impl.PluginHeader(3), b"p"),
        "not_loaded": (DATA, impl.PluginHeader(2), b"p"),
        "permission": (CONTROL, full, b"p"),
        "header": (DATA, b"\xa0", b"p"),
        "too_large": (DATA, bytes(65), b"p"),
        "unknown_type": (0x10, full, b"p"),
    }
    return d, gate, frames


def _snapshot(d: Any) -> tuple[Any, ...]:
    return (d.dispatch_stats(), d.plugin_stats(1), d.plugin_stats(4))


@pytest.mark.parametrize("case", list(TRY_CASES))
async def test_try_dispatch_counts_exactly_like_dispatch_nowait(impl, case: str) -> None:
    status, error = TRY_CASES[case]
    d_try, gate_try, frames_try = await _try_setup(impl)
    d_raise, gate_raise, frames_raise = await _try_setup(impl)
    before = _snapshot(d_try)
    assert before == _snapshot(d_raise)
    result = d_try.try_dispatch(*frames_try[case])
    assert result is status
    assert isinstance(result, DispatchStatus)
    if error is None:
        assert d_raise.dispatch_nowait(*frames_raise[case]) is None
    else:
        with pytest.raises(error):
            d_raise.dispatch_nowait(*frames_raise[case])
    assert _snapshot(d_try) == _snapshot(d_raise) != before
    for d, gate in ((d_try, gate_try), (d_raise, gate_raise)):
        gate.open()
        await d.aclose()


def test_dispatch_status_names_one_member_per_error() -> None:
    assert DispatchStatus.OK == 0
    camel = {
        "".join(part.title() for part in member.name.split("_")): member
        for member in DispatchStatus
        if member is not DispatchStatus.OK
    }
    assert set(camel) == {
        "WouldBlock", "PluginClosed", "PluginNotRegistered", "PluginNotLoaded",
        "PermissionDenied", "SandboxViolation", "HeaderDecodeError", "FrameTooLarge",
        "UnknownFrameType", "CircuitOpen",
    }  # fmt: skip
    for name in camel:
        assert issubclass(getattr(nyxplug, name), nyxplug.DispatchError)


# -- order -------------------------------------------------------------------------


async def test_frames_of_one_plugin_are_handled_in_order(impl) -> None:
    d = impl.Dispatcher()
    rec = Recorder()
    await d.load_plugin(info(7), rec, capacity=8)
    ledger = Ledger(d, impl)
    header = impl.PluginHeader(7)
    sent = []
    for i in range(300):
        payload = i.to_bytes(2, "big")
        how = i % 3
        if how == 0:
            await ledger.send(DATA, header, payload)
        elif how == 1:
            try:
                ledger.nowait(DATA, header.encode(), payload)
            except WouldBlock:
                await ledger.send(DATA, header, payload)
        else:
            if ledger.try_(DATA, header, payload) is DispatchStatus.WOULD_BLOCK:
                await ledger.send(DATA, header, payload)
        sent.append(payload)
    await d.wait_idle(7)
    assert rec.payloads == sent
    assert_accounting(d, ledger.enqueued, ledger.calls)
    await d.aclose()


async def test_waiting_senders_are_served_first_in_first_out(impl) -> None:
    d = impl.Dispatcher()
    gate, header = await full_plugin(impl, d, capacity=2)
    senders = [await start_sender(d, DATA, header, b"S%d" % i) for i in range(6)]
    assert not any(t.done() for t in senders)
    assert d.plugin_stats(7).queue_depth == 2
    gate.open()
    await asyncio.gather(*senders)
    await d.wait_idle(7)
    assert gate.payloads == [b"A", b"B0", b"B1"] + [b"S%d" % i for i in range(6)]
    assert_accounting(d, {7: 9}, calls=9)
    await d.aclose()


async def test_dispatch_nowait_never_overtakes_a_parked_sender(impl) -> None:
    d = impl.Dispatcher()
    gate = Gate()
    header = impl.PluginHeader(7)
    seen_while_b: list[Any] = []

    async def handler(message: Any) -> None:
        if message.payload == b"B":
            # B was just taken from the queue, so its slot went to the parked sender C
            # at once - before C had a chance to run. Nobody may take it.
            seen_while_b.append(d.plugin_stats(7).queue_depth)
            try:
                d.dispatch_nowait(DATA, header, b"D")
            except WouldBlock as exc:
                seen_while_b.append(exc)
            seen_while_b.append(d.try_dispatch(DATA, header, b"E"))
        await gate(message)

    await d.load_plugin(info(7), handler, capacity=1)
    d.dispatch_nowait(DATA, header, b"A")
    assert (await gate.entered()).payload == b"A"
    d.dispatch_nowait(DATA, header, b"B")
    sender = await start_sender(d, DATA, header, b"C")
    assert not sender.done()
    with pytest.raises(WouldBlock, match=exact(would_block_msg(7, 1, "0x52 (DATA)"))):
        d.dispatch_nowait(DATA, header, b"X")
    gate.release()  # A finishes; the worker takes B and grants C's reservation
    assert (await gate.entered()).payload == b"B"
    depth, error, status = seen_while_b
    assert depth == 0
    assert isinstance(error, WouldBlock) and error.plugin_id == 7
    assert status is DispatchStatus.WOULD_BLOCK
    gate.open()
    await sender
    await d.wait_idle(7)
    assert gate.payloads == [b"A", b"B", b"C"]
    ds = d.dispatch_stats()
    assert (ds.frames_dispatched, ds.dispatch_errors) == (3, 3)
    assert_accounting(d, {7: 3}, calls=6)
    await d.aclose()


# -- cancellation --------------------------------------------------------------------


async def test_cancelled_parked_dispatch_enqueued_and_counted_nothing(impl) -> None:
    d = impl.Dispatcher()
    gate, header = await full_plugin(impl, d, capacity=1)
    first = await start_sender(d, DATA, header, b"C")
    second = await start_sender(d, DATA, header, b"S")
    before = d.dispatch_stats()
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    assert d.dispatch_stats() == before
    assert d.plugin_stats(7).queue_depth == 1
    gate.open()
    await second
    await d.wait_idle(7)
    assert gate.payloads == [b"A", b"B0", b"S"]
    assert_accounting(d, {7: 3}, calls=3)
    await d.aclose()


async def test_cancelled_dispatch_via_timeout_enqueued_nothing(impl) -> None:
    d = impl.Dispatcher()
    gate, header = await full_plugin(impl, d, capacity=1)
    before = d.dispatch_stats()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(d.dispatch(DATA, header, b"late"), timeout=0.01)
    assert d.dispatch_stats() == before
    gate.open()
    await d.wait_idle(7)
    assert gate.payloads == [b"A", b"B0"]
    await d.aclose()


async def test_cancel_after_the_grant_passes_the_reservation_on(impl) -> None:
    d = impl.Dispatcher()
    gate = Gate()
    header = impl.PluginHeader(7)
    senders: dict[bytes, asyncio.Task] = {}
    observed: list[Any] = []

    async def handler(message: Any) -> None:
        if message.payload == b"B":
            # C was granted B's slot a moment ago and has not run yet: cancel it now.
            observed.append(d.plugin_stats(7).queue_depth)
            senders[b"C"].cancel()
            observed.append(d.dispatch_stats())
        await gate(message)

    await d.load_plugin(info(7), handler, capacity=1)
    d.dispatch_nowait(DATA, header, b"A")
    assert (await gate.entered()).payload == b"A"
    d.dispatch_nowait(DATA, header, b"B")
    for name in (b"C", b"S"):
        senders[name] = await start_sender(d, DATA, header, name)
    before = d.dispatch_stats()
    gate.release()
    assert (await gate.entered()).payload == b"B"
    with pytest.raises(asyncio.CancelledError):
        await senders[b"C"]
    await senders[b"S"]  # the reservation went on to the next waiter
    depth, stats_at_cancel = observed
    assert depth == 0
    assert stats_at_cancel == before
    gate.open()
    await d.wait_idle(7)
    assert gate.payloads == [b"A", b"B", b"S"]
    ds = d.dispatch_stats()
    assert (ds.frames_dispatched, ds.dispatch_errors) == (3, 0)
    assert_accounting(d, {7: 3}, calls=3)
    await d.aclose()


async def test_cancelled_before_it_ran_means_not_enqueued_or_returned(impl) -> None:
    # SPEC 3: "if dispatch is cancelled, the frame was not enqueued and nothing was
    # counted; if it returned, the frame was enqueued exactly once" - also when the
    # awaitable is wrapped in a task that is cancelled before its first step.
    d = impl.Dispatcher()
    gate = Gate()
    await d.load_plugin(info(7), gate, capacity=10)
    header = impl.PluginHeader(7)
    task = asyncio.create_task(d.dispatch(DATA, header, b"x"))
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        assert task.cancelled()
        assert d.dispatch_stats().frames_dispatched == 0
        expected: list[bytes] = []
    else:
        assert d.dispatch_stats().frames_dispatched == 1
        expected = [b"x"]
    # wait_for with no time left cancels the wrapping task before its first step too
    try:
        await asyncio.wait_for(d.dispatch(DATA, header, b"y"), timeout=0)
    except TimeoutError:
        assert d.dispatch_stats().frames_dispatched == len(expected)
    else:
        expected.append(b"y")
        assert d.dispatch_stats().frames_dispatched == len(expected)
    gate.open()
    await d.wait_idle(7)
    assert gate.payloads == expected
    assert d.dispatch_stats().dispatch_errors == 0
    await d.aclose()


# -- unload ----------------------------------------------------------------------------


async def test_unload_with_drain_handles_every_queued_frame(impl) -> None:
    registry = impl.PluginRegistry()
    d = impl.Dispatcher(registry)
    gate, header = await full_plugin(impl, d, capacity=4)
    unload = await started_task(lambda: d.unload_plugin(7))
    assert not unload.done()
    assert not d.is_loaded(7) and len(d) == 0 and d.loaded_plugins() == []
    assert d.plugin_stats(7) is None
    # from its start, frames for the id are refused as not loaded
    with pytest.raises(PluginNotLoaded, match=exact(not_loaded_msg(7, "0x52 (DATA)"))):
        d.dispatch_nowait(DATA, header)
    assert d.try_dispatch(DATA, header) is DispatchStatus.PLUGIN_NOT_LOADED
    with pytest.raises(PluginNotLoaded):
        await d.dispatch(DATA, header)
    # and loading it again is refused until the unload returns
    with pytest.raises(
        AlreadyLoaded,
        match=exact(
            "Plugin 7 is still unloading - await its unload_plugin() before loading it again"
        ),
    ) as excinfo:
        await d.load_plugin(info(7))
    assert excinfo.value.plugin_id == 7
    gate.open()
    final = await unload
    assert gate.payloads == [b"A", b"B0", b"B1", b"B2", b"B3"]
    assert (final.messages_processed, final.dropped, final.queue_depth) == (5, 0, 0)
    assert not registry.is_registered(7)
    ds = d.dispatch_stats()
    assert (ds.plugins_loaded, ds.plugins_unloaded, ds.frames_dispatched) == (1, 1, 5)
    assert_accounting(d, {7: 5}, calls=8, final_stats={7: final})
    await d.load_plugin(info(7))  # a fresh start
    assert d.plugin_stats(7) == nyxplug.PluginStats()
    await d.aclose()


async def test_unload_without_drain_drops_the_queue_but_finishes_the_handler(impl) -> None:
    d = impl.Dispatcher()
    gate, header = await full_plugin(impl, d, capacity=4)
    unload = await started_task(lambda: d.unload_plugin(7, drain=False))
    assert d.plugin_stats(7) is None
    assert gate.finished == []
    gate.open()
    final = await unload
    assert gate.payloads == [b"A"]
    assert [m.payload for m in gate.finished] == [b"A"]
    assert (final.messages_processed, final.dropped, final.queue_depth) == (1, 4, 0)
    assert final.high_watermark == 4
    assert_accounting(d, {7: 5}, calls=5, final_stats={7: final})


async def test_unload_fails_parked_senders_with_plugin_closed(impl) -> None:
    d = impl.Dispatcher()
    gate, header = await full_plugin(impl, d, capacity=1)
    parked = [await start_sender(d, DATA, header, b"S%d" % i) for i in range(3)]
    direct = asyncio.ensure_future(d.dispatch(CONTROL, header, b"T"))
    before = d.dispatch_stats()
    unload = asyncio.create_task(d.unload_plugin(7))
    results = await asyncio.gather(*parked, direct, return_exceptions=True)
    for result, frame in zip(results, ["0x52 (DATA)"] * 3 + ["0x53 (CONTROL)"], strict=True):
        assert isinstance(result, PluginClosed), result
        assert re.match(exact(closed_msg(7, frame)), str(result))
        assert result.plugin_id == 7
    assert results[-1].frame_type == CONTROL
    after = d.dispatch_stats()
    assert after.dispatch_errors == before.dispatch_errors + 4
    assert after.frames_dispatched == before.frames_dispatched
    gate.open()
    final = await unload
    assert gate.payloads == [b"A", b"B0"]
    assert_accounting(d, {7: 2}, calls=6, final_stats={7: final})


async def test_load_and_unload_errors(impl) -> None:
    d = impl.Dispatcher()
    with pytest.raises(ValueError, match=exact("Expected `capacity` >= 1, got 0 - for plugin 7")):
        await d.load_plugin(info(7), capacity=0)
    with pytest.raises(ValueError):
        await d.load_plugin(info(7), capacity=-3)
    assert not d.is_loaded(7) and not d.registry.is_registered(7)
    await d.load_plugin(info(7), capacity=1)
    with pytest.raises(
        AlreadyLoaded, match=exact("Plugin 7 is already loaded - unload it first or use another id")
    ) as excinfo:
        await d.load_plugin(info(7))
    assert excinfo.value.plugin_id == 7
    assert d.dispatch_stats().plugins_loaded == 1
    unload_msg = exact("Plugin 8 is not loaded - load it with Dispatcher.load_plugin() first")
    with pytest.raises(PluginNotLoaded, match=unload_msg) as e:
        await d.unload_plugin(8)
    assert (e.value.plugin_id, e.value.frame_type) == (8, None)
    await d.unload_plugin(7)
    with pytest.raises(PluginNotLoaded):
        await d.unload_plugin(7)
    ds = d.dispatch_stats()
    assert (ds.plugins_loaded, ds.plugins_unloaded, ds.dispatch_errors) == (1, 1, 0)


async def test_load_keeps_an_existing_registration(impl) -> None:
    registry = impl.PluginRegistry()
    registry.register(info(7, HS, "registered-first"))
    d = impl.Dispatcher(registry)
    await d.load_plugin(info(7, DA, "loaded-later"))
    assert registry.get(7).name == "registered-first"
    d.dispatch_nowait(HANDSHAKE, impl.PluginHeader(7))
    with pytest.raises(PermissionDenied):
        d.dispatch_nowait(DATA, impl.PluginHeader(7))
    await d.unload_plugin(7)
    assert not registry.is_registered(7)  # unload unregisters the id either way


async def test_async_with_unloads_every_plugin_draining(impl) -> None:
    recs = {n: Recorder() for n in (3, 1, 2)}
    async with impl.Dispatcher() as d:
        assert isinstance(d, impl.Dispatcher)
        for n, rec in recs.items():
            await d.load_plugin(info(n), rec, capacity=10)
            for i in range(5):
                d.dispatch_nowait(DATA, impl.PluginHeader(n), bytes([i]))
    assert len(d) == 0 and len(d.registry) == 0
    assert all(rec.payloads == [bytes([i]) for i in range(5)] for rec in recs.values())
    ds = d.dispatch_stats()
    assert (ds.plugins_loaded, ds.plugins_unloaded, ds.frames_dispatched) == (3, 3, 15)


async def test_async_with_unloads_on_error_too(impl) -> None:
    rec = Recorder()
    with pytest.raises(RuntimeError, match="^boom$"):
        async with impl.Dispatcher() as d:
            await d.load_plugin(info(1), rec)
            d.dispatch_nowait(DATA, impl.PluginHeader(1), b"x")
            raise RuntimeError("boom")
    assert len(d) == 0
    assert rec.payloads == [b"x"]


# -- handlers ------------------------------------------------------------------------


class SyncHandle:
    def __init__(self) -> None:
        self.calls: list[list[bytes]] = []

    def handle(self, message: Any) -> None:
        self.calls.append([message.payload])


class AsyncHandle(SyncHandle):
    async def handle(self, message: Any) -> None:  # type: ignore[override]
        await asyncio.sleep(0)  # a real async handler yields to the loop
        self.calls.append([message.payload])


class SyncBatch(SyncHandle):
    def handle_batch(self, messages: list[Any]) -> None:
        assert messages, "handle_batch was called with no frames"
        self.calls.append([m.payload for m in messages])


class AsyncBatch(SyncHandle):
    async def handle_batch(self, messages: list[Any]) -> None:
        await asyncio.sleep(0)
        self.calls.append([m.payload for m in messages])


def make_handler(kind: str) -> tuple[Any, list[list[bytes]] | None]:
    if kind == "none":
        return None, None
    if kind == "sync_function":
        calls: list[list[bytes]] = []
        return (lambda m: calls.append([m.payload])), calls
    if kind == "async_function":
        calls = []

        async def handler(m: Any) -> None:
            calls.append([m.payload])

        return handler, calls
    obj = {"sync_handle": SyncHandle, "async_handle": AsyncHandle, "sync_batch": SyncBatch,
           "async_batch": AsyncBatch}[kind]()  # fmt: skip
    return obj, obj.calls


HANDLER_KINDS = ["none", "sync_function", "async_function", "sync_handle", "async_handle",
                 "sync_batch", "async_batch"]  # fmt: skip


@pytest.mark.parametrize("kind", HANDLER_KINDS)
async def test_every_handler_kind_gets_each_frame_once_in_order(impl, kind: str) -> None:
    handler, calls = make_handler(kind)
    d = impl.Dispatcher()
    await d.load_plugin(info(7), handler, capacity=16)
    ledger = Ledger(d, impl)
    header = impl.PluginHeader(7, 1, b"hd")
    sent = []
    for i in range(60):
        payload = b"%03d" % i
        if i % 7 == 0:
            await d.wait_idle(7)
        await ledger.send(DATA, header, payload)
        sent.append(payload)
    await d.wait_idle(7)
    stats = d.plugin_stats(7)
    assert stats.messages_processed == 60
    assert stats.bytes_processed == 60 * (len(header.encode()) + 3)
    assert stats.errors == 0
    if calls is not None:
        assert [p for call in calls for p in call] == sent
        if kind.endswith("_batch"):
            assert all(call for call in calls)
        else:
            assert all(len(call) == 1 for call in calls)
    assert_accounting(d, ledger.enqueued, ledger.calls)
    await d.aclose()


async def test_object_with_handle_and_handle_batch_gets_each_frame_once(impl) -> None:
    class Both:
        def __init__(self) -> None:
            self.got: list[bytes] = []

        def handle(self, message: Any) -> None:
            self.got.append(message.payload)

        def handle_batch(self, messages: list[Any]) -> None:
            self.got.extend(m.payload for m in messages)

    both = Both()
    d = impl.Dispatcher()
    await d.load_plugin(info(7), both, capacity=50)
    for i in range(40):
        d.dispatch_nowait(DATA, impl.PluginHeader(7), bytes([i]))
    await d.wait_idle(7)
    assert both.got == [bytes([i]) for i in range(40)]
    await d.aclose()


HANDLER_LOG = re.compile(
    r"^Handler of plugin 'plugin_7' \(id 7\) raised on "
    r"(frame 0x52 \(DATA\)|a batch of \d+ frames starting with frame 0x52 \(DATA\)); "
    r"counted in PluginStats\.errors, the worker goes on$"
)


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
async def test_raising_handler_is_counted_logged_and_the_worker_goes_on(
    impl, caplog: pytest.LogCaptureFixture, is_async: bool
) -> None:
    caplog.set_level(logging.ERROR, logger="nyxplug")
    seen: list[bytes] = []

    def body(message: Any) -> None:
        seen.append(message.payload)
        if message.payload.startswith(b"bad"):
            raise KeyError(message.payload)

    async def async_body(message: Any) -> None:
        body(message)

    d = impl.Dispatcher()
    await d.load_plugin(info(7), async_body if is_async else body, capacity=10)
    payloads = [b"ok1", b"bad1", b"ok2", b"bad2", b"bad3", b"ok3"]
    for p in payloads:
        await d.dispatch(DATA, impl.PluginHeader(7), p)
    await d.wait_idle(7)
    assert seen == payloads
    stats = d.plugin_stats(7)
    assert (stats.messages_processed, stats.errors) == (6, 3)
    records = [r for r in caplog.records if r.name == "nyxplug"]
    assert len(records) == 3
    for record, payload in zip(records, [b"bad1", b"bad2", b"bad3"], strict=True):
        assert record.levelno == logging.ERROR
        assert HANDLER_LOG.match(record.getMessage()), record.getMessage()
        assert record.getMessage().startswith(
            "Handler of plugin 'plugin_7' (id 7) raised on frame 0x52"
        )
        assert isinstance(record.exc_info[1], KeyError)
        assert record.exc_info[1].args == (payload,)
    # the worker is alive
    await d.dispatch(DATA, impl.PluginHeader(7), b"ok4")
    await d.wait_idle(7)
    assert seen[-1] == b"ok4"
    await d.aclose()


async def test_raising_batch_handler_counts_one_error_per_call(
    impl, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="nyxplug")

    class Failing:
        def __init__(self) -> None:
            self.calls: list[list[bytes]] = []

        def handle_batch(self, messages: list[Any]) -> None:
            self.calls.append([m.payload for m in messages])
            raise ValueError(len(messages))

    handler = Failing()
    d = impl.Dispatcher()
    await d.load_plugin(info(7), handler, capacity=10)
    for rnd in range(3):
        for i in range(4):
            d.dispatch_nowait(DATA, impl.PluginHeader(7), bytes([rnd, i]))
        await d.wait_idle(7)
    assert [p for call in handler.calls for p in call] == [
        bytes([r, i]) for r in range(3) for i in range(4)
    ]
    stats = d.plugin_stats(7)
    assert stats.messages_processed == 12
    assert stats.errors == len(handler.calls)
    records = [r for r in caplog.records if r.name == "nyxplug"]
    assert len(records) == len(handler.calls)
    for record, call in zip(records, handler.calls, strict=True):
        message = record.getMessage()
        assert HANDLER_LOG.match(message), message
        if len(call) > 1:
            assert f"a batch of {len(call)} frames" in message
        assert record.exc_info[1].args == (len(call),)
    await d.aclose()


async def test_load_refuses_what_is_not_a_handler(impl) -> None:
    d = impl.Dispatcher()
    with pytest.raises(TypeError):
        await d.load_plugin(info(7), 42)
    assert not d.is_loaded(7)
    assert d.dispatch_stats().plugins_loaded == 0


# -- frame types and permissions ---------------------------------------------------


async def test_register_frame_type_in_the_plugin_range(impl) -> None:
    d = impl.Dispatcher()
    rec = Recorder()
    await d.load_plugin(info(7, CT), rec)
    await d.load_plugin(info(8, DA))
    header = impl.PluginHeader(7)
    with pytest.raises(UnknownFrameType, match=exact(unknown_type_msg("0x5a", 7))):
        d.dispatch_nowait(0x5A, header)
    d.register_frame_type(0x5A, Permission.CONTROL)
    d.dispatch_nowait(0x5A, header, b"custom")
    with pytest.raises(PermissionDenied, match=exact(denied_msg(8, "CONTROL", "0x5a"))):
        d.dispatch_nowait(0x5A, impl.PluginHeader(8))
    for code in (0x50, 0x5F):
        d.register_frame_type(code, Permission.CONTROL)
        d.dispatch_nowait(code, header)
    d.register_frame_type(0x53, Permission.CONTROL)  # the built-in mapping, unchanged
    await d.wait_idle(7)
    assert [m.frame_type for m in rec.messages] == [0x5A, 0x50, 0x5F]
    assert rec.messages[0].payload == b"custom"
    # another dispatcher does not route it
    other = impl.Dispatcher()
    await other.load_plugin(info(7, CT))
    with pytest.raises(UnknownFrameType):
        other.dispatch_nowait(0x5A, impl.PluginHeader(7))
    await d.aclose()
    await other.aclose()


@pytest.mark.parametrize("code", [0x4F, 0x60, 0x00, 0xFF, 0x100, -1])
def test_register_frame_type_outside_the_plugin_range(impl, code: int) -> None:
    d = impl.Dispatcher()
    name = str(code) if code < 0 else f"0x{code:02x}"
    with pytest.raises(
        UnknownFrameType,
        match=exact(
            f"Expected a frame type in 0x50..0x5f, got {name} - the Nyx protocol reserves "
            "only that range for plugins"
        ),
    ) as excinfo:
        d.register_frame_type(code, Permission.DATA_ACCESS)
    assert (excinfo.value.frame_type, excinfo.value.plugin_id) == (code, None)
    assert isinstance(excinfo.value, ValueError)


async def test_registry_permission_change_applies_to_the_next_frame(impl) -> None:
    d = impl.Dispatcher()
    rec = Recorder()
    await d.load_plugin(info(7, DA), rec)
    header = impl.PluginHeader(7)
    d.dispatch_nowait(DATA, header, b"1")
    with pytest.raises(PermissionDenied):
        d.dispatch_nowait(CONTROL, header, b"2")
    new = d.registry.set_permissions(7, [DA, CT])
    assert new.permissions == DA | CT
    assert d.registry.has_permission(7, CT)
    d.dispatch_nowait(CONTROL, header, b"3")
    d.registry.set_permissions(7, HS)
    with pytest.raises(PermissionDenied):
        d.dispatch_nowait(DATA, header, b"4")
    d.dispatch_nowait(HANDSHAKE, header, b"5")
    await d.wait_idle(7)
    assert rec.payloads == [b"1", b"3", b"5"]
    assert d.plugin_stats(7).permission_violations == 2
    await d.aclose()


# -- queue introspection -----------------------------------------------------------


async def test_queue_depth_and_high_watermark(impl) -> None:
    d = impl.Dispatcher()
    gate = Gate()
    await d.load_plugin(info(7), gate, capacity=5)
    header = impl.PluginHeader(7)
    d.dispatch_nowait(DATA, header, b"A")
    assert d.plugin_stats(7).queue_depth == 1
    await gate.entered()  # the frame in the handler does not occupy a slot
    assert d.plugin_stats(7).queue_depth == 0
    for i in range(3):
        d.dispatch_nowait(DATA, header, bytes([i]))
    stats = d.plugin_stats(7)
    assert (stats.queue_depth, stats.high_watermark) == (3, 3)
    d.dispatch_nowait(DATA, header)
    d.dispatch_nowait(DATA, header)
    with pytest.raises(WouldBlock):
        d.dispatch_nowait(DATA, header)
    assert d.plugin_stats(7).high_watermark == 5
    gate.open()
    await d.wait_idle(7)
    stats = d.plugin_stats(7)
    assert (stats.queue_depth, stats.high_watermark, stats.messages_processed) == (0, 5, 6)
    await d.aclose()


async def test_stats_are_immutable_snapshots(impl) -> None:
    d = impl.Dispatcher()
    await d.load_plugin(info(7))
    ps, ds = d.plugin_stats(7), d.dispatch_stats()
    assert isinstance(ps, nyxplug.PluginStats) and isinstance(ds, nyxplug.DispatchStats)
    with pytest.raises(AttributeError):
        ps.messages_processed = 5  # type: ignore[misc]
    with pytest.raises(AttributeError):
        ds.frames_dispatched = 5  # type: ignore[misc]
    d.dispatch_nowait(DATA, impl.PluginHeader(7))
    await d.wait_idle(7)
    assert ps.messages_processed == 0 and ds.frames_dispatched == 0
    assert d.plugin_stats(7).messages_processed == 1
    assert msgspec.structs.asdict(d.dispatch_stats())["frames_dispatched"] == 1
    await d.aclose()


async def test_wait_idle_of_an_unknown_plugin(impl) -> None:
    d = impl.Dispatcher()
    with pytest.raises(PluginNotLoaded):
        await d.wait_idle(3)
    await d.wait_idle()  # nothing loaded: returns at once


# -- what the handler receives ---------------------------------------------------------


async def test_plugin_message_fields_and_size(impl) -> None:
    d = impl.Dispatcher()
    rec = Recorder()
    await d.load_plugin(info(7), rec)
    ready = impl.PluginHeader(7, 1, b"data")
    as_array = cbor2.dumps([7, 0, b"xy"])
    with_extras = cbor2.dumps({"note": "hi", "data": b"", "flags": 3, "id": 7})
    d.dispatch_nowait(DATA, ready, b"payload")
    d.dispatch_nowait(CONTROL, bytearray(as_array), memoryview(b"pp"))
    d.dispatch_nowait(HANDSHAKE, memoryview(with_extras))
    await d.wait_idle(7)
    first, second, third = rec.messages
    assert first.frame_type == DATA and isinstance(first.frame_type, int)
    assert first.header == ready and first.header.encode() == ready.encode()
    assert first.payload == b"payload" and type(first.payload) is bytes
    assert (first.plugin_id, first.is_required) == (7, True)
    assert first.size == len(ready.encode()) + 7
    # size counts the header bytes as received, each byte once
    assert second.header == impl.PluginHeader(7, 0, b"xy")
    assert (second.frame_type, second.payload, second.is_required) == (CONTROL, b"pp", False)
    assert second.size == len(as_array) + 2
    assert third.header == impl.PluginHeader(7, 3, b"")
    assert third.is_required
    assert third.size == len(with_extras)
    assert d.plugin_stats(7).bytes_processed == first.size + second.size + third.size
    await d.aclose()


# -- the dispatch awaitable ----------------------------------------------------------


async def test_dispatch_result_is_awaitable_by_tasks_futures_and_gather(impl) -> None:
    d = impl.Dispatcher()
    gate = Gate()
    await d.load_plugin(info(7), gate, capacity=4)
    header = impl.PluginHeader(7)
    ready = d.dispatch(DATA, header, b"1")
    assert inspect.isawaitable(ready)
    await ready
    assert await asyncio.create_task(d.dispatch(DATA, header, b"2")) is None
    assert await asyncio.ensure_future(d.dispatch(DATA, header, b"3")) is None
    await gate.entered()
    assert await asyncio.gather(d.dispatch(DATA, header, b"4"),
                                d.dispatch(DATA, header, b"5")) == [None, None]  # fmt: skip
    # now the queue is full: the same calls park until there is space
    parked = [
        asyncio.create_task(d.dispatch(DATA, header, b"6")),
        asyncio.ensure_future(d.dispatch(DATA, header, b"7")),
    ]
    gathered = asyncio.gather(d.dispatch(DATA, header, b"8"), d.dispatch(DATA, header, b"9"))
    awaited = asyncio.create_task(asyncio.wait_for(d.dispatch(DATA, header, b"10"), 30))
    await tasks_started()  # they have parked
    assert not any(t.done() for t in parked) and not gathered.done() and not awaited.done()
    gate.open()
    assert await asyncio.gather(*parked) == [None, None]
    assert await gathered == [None, None]
    assert await awaited is None
    await d.wait_idle(7)
    assert gate.payloads == [b"%d" % i for i in range(1, 11)]
    assert_accounting(d, {7: 10}, calls=10)
    await d.aclose()


async def test_dispatch_works_from_many_concurrent_producers(impl) -> None:
    d = impl.Dispatcher()
    recs = {n: Recorder() for n in range(1, 5)}
    for n, rec in recs.items():
        await d.load_plugin(info(n), rec, capacity=2)
    ledger = Ledger(d, impl)

    async def produce(producer: int) -> None:
        for i in range(50):
            plugin_id = 1 + (producer + i) % 4
            await ledger.send(DATA, impl.PluginHeader(plugin_id), bytes([producer, i]))

    await asyncio.gather(*(produce(p) for p in range(6)))
    await d.wait_idle()
    for rec in recs.values():
        for producer in range(6):  # FIFO per producer within each plugin
            mine = [p[1] for p in rec.payloads if p[0] == producer]
            assert mine == sorted(mine)
    assert sum(len(r.messages) for r in recs.values()) == 300
    assert_accounting(d, ledger.enqueued, ledger.calls)
    await d.aclose()


# -- the registry (SPEC 2) -------------------------------------------------------------


def test_registry_operations_and_errors(impl) -> None:
    registry = impl.PluginRegistry()
    assert len(registry) == 0 and list(registry) == []
    registry.register(info(9, [DA, CT], "nine"))
    registry.register(info(3, HS, "three"))
    with pytest.raises(
        nyxplug.AlreadyRegistered,
        match=exact(
            "Plugin 9 is already registered (as 'nine') - unregister it first or use another id"
        ),  # fmt: skip
    ) as excinfo:
        registry.register(info(9, DA, "again"))
    assert excinfo.value.plugin_id == 9
    assert len(registry) == 2 and 9 in registry and registry.is_registered(3)
    assert sorted(i.id for i in registry) == [3, 9]
    assert registry.get(9) == info(9, [DA, CT], "nine") and registry.get(4) is None
    assert registry.has_permission(9, CT) and registry.has_permission(9, DA | CT)
    assert not registry.has_permission(9, HS) and not registry.has_permission(4, DA)
    assert registry.unregister(3) == info(3, HS, "three")
    for call in (lambda: registry.unregister(3), lambda: registry.set_permissions(3, DA)):
        with pytest.raises(
            nyxplug.NotRegistered, match=exact("Plugin 3 is not registered - register it first")
        ):
            call()
    assert len(registry) == 1


async def test_frames_follow_a_reloaded_plugin_to_its_new_queue(impl: Any) -> None:
    """Unload then load the same id: the next frame reaches the new handler, never the old."""
    d = impl.Dispatcher()
    old, new = Recorder(), Recorder()
    header = impl.PluginHeader(5, 0, b"x")
    await d.load_plugin(info(5), old)
    d.dispatch_nowait(DATA, header, b"1")
    await d.unload_plugin(5)
    with pytest.raises(PluginNotRegistered):
        d.dispatch_nowait(DATA, header, b"lost")
    await d.load_plugin(info(5), new)
    d.dispatch_nowait(DATA, header.encode(), b"2")
    d.dispatch_nowait(DATA, header, b"3")
    await d.wait_idle(5)
    assert [m.payload for m in old.messages] == [b"1"]
    assert [m.payload for m in new.messages] == [b"2", b"3"]
    await d.aclose()


# -- refusals name a code-loaded plugin and the fix in code (issue 15 item 17) -------------


def sandbox_msg(plugin_id: int, detail: str, frame: str | None) -> str:
    """A refusal under the policy given to ``load_plugin`` for ``info(plugin_id)``."""
    where = f"frame {frame} for {named(plugin_id)}" if frame else named(plugin_id)
    return (
        f"Sandbox refused {detail} - {where}; allow it in the SandboxPolicy given to "
        f"load_plugin() for 'plugin_{plugin_id}'"
    )


async def test_a_sandbox_refusal_names_the_code_loaded_plugin_and_its_policy(
    impl, tmp_path
) -> None:
    refusals: list[BaseException] = []
    done = asyncio.Event()

    def handler(message: Any) -> None:
        try:
            (tmp_path / "out.txt").write_text("x")
        except SandboxViolation as exc:
            refusals.append(exc)
        finally:
            done.set()

    d = impl.Dispatcher()
    await d.load_plugin(info(4, CT | DA), handler, sandbox=SandboxPolicy())
    # refused before the queue: the CONTROL frame's SBX: header
    header = impl.PluginHeader(4, 0, b"SBX:CONNECT evil.example:443")
    detail = "connect to 'evil.example:443' (network is disabled)"
    with pytest.raises(SandboxViolation, match=exact(sandbox_msg(4, detail, "0x53 (CONTROL)"))):
        d.dispatch_nowait(CONTROL, header)
    # refused while the handler runs: the audit hook, under the guard load_plugin made
    d.dispatch_nowait(DATA, impl.PluginHeader(4), b"write")
    async with asyncio.timeout(5):
        await done.wait()
    detail = f"write to {str(tmp_path / 'out.txt')!r} (filesystem is disabled)"
    [refusal] = refusals
    assert re.match(exact(sandbox_msg(4, detail, None)), str(refusal)), str(refusal)
    await d.aclose()


async def test_not_loaded_and_closed_name_the_plugin_the_registry_knows(impl) -> None:
    d = impl.Dispatcher()
    gate = asyncio.Event()

    async def held(message: Any) -> None:
        await gate.wait()

    await d.load_plugin(info(6, DA), held, capacity=1)
    d.dispatch_nowait(DATA, impl.PluginHeader(6))
    await d.dispatch(DATA, impl.PluginHeader(6))  # the worker took the first: room for one
    parked = await started_task(lambda: d.dispatch(DATA, impl.PluginHeader(6)))
    unloading = await started_task(lambda: d.unload_plugin(6))
    # unloading: the registry still knows it, the runtime is gone
    with pytest.raises(PluginNotLoaded, match=exact(not_loaded_msg(6, "0x52 (DATA)"))):
        d.dispatch_nowait(DATA, impl.PluginHeader(6))
    with pytest.raises(PluginClosed, match=exact(closed_msg(6, "0x52 (DATA)"))):
        await parked
    gate.set()
    await unloading
