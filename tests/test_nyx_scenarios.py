"""The Nyx dispatcher's own tests (reference/nyx-dispatcher.md section 6), ported.

Where Nyx sleeps to let its workers run, these await ``wait_idle`` under the test's
timeout; where Nyx ignores a result or double-counts bytes, these assert what SPEC
promises instead (noted on each test).
"""

from __future__ import annotations

import asyncio

import cbor2
import pytest
from nyx_helpers import CONTROL, DATA, HANDSHAKE, Ledger, assert_accounting, info

from nyxplug import (
    DispatchStatus,
    Permission,
    PermissionDenied,
    PluginNotRegistered,
    WouldBlock,
)

DA = Permission.DATA_ACCESS
HS = Permission.HANDSHAKE
CT = Permission.CONTROL


# -- 6.1 plugin_integration_tests.rs -------------------------------------------------


async def test_complete_plugin_lifecycle(impl) -> None:
    registry = impl.PluginRegistry()
    d = impl.Dispatcher(registry)
    await d.load_plugin(info(1, [DA, HS], "lifecycle_test_plugin"))
    assert d.is_loaded(1)
    assert len(d) == 1
    assert registry.is_registered(1)
    header = impl.PluginHeader(1, 0, bytes([1, 2, 3, 4]))
    assert len(header.encode()) == 22
    await d.dispatch(HANDSHAKE, header.encode())
    await d.dispatch(DATA, header.encode())
    await d.wait_idle(1)
    stats = d.plugin_stats(1)
    assert stats.messages_processed == 2
    assert stats.bytes_processed == 2 * 22
    ds = d.dispatch_stats()
    assert (ds.plugins_loaded, ds.frames_dispatched, ds.dispatch_errors) == (1, 2, 0)
    final = await d.unload_plugin(1)
    assert final.messages_processed == 2
    assert not d.is_loaded(1)
    assert len(d) == 0
    assert d.dispatch_stats().plugins_unloaded == 1
    assert not registry.is_registered(1)
    assert_accounting(d, {1: 2}, calls=2, final_stats={1: final})


async def test_plugin_id_2_needs_no_capability_negotiation(impl) -> None:
    # Nyx's sandbox integration test had to negotiate capability 2 for PluginId(2)
    # because of a hard-coded table; nyxplug has no such table.
    d = impl.Dispatcher(impl.PluginRegistry())
    await d.load_plugin(info(2, DA, "sandbox_test_plugin"))
    assert d.is_loaded(2)
    await d.dispatch(DATA, impl.PluginHeader(2, 0, bytes([5, 6, 7, 8])))
    final = await d.unload_plugin(2)
    assert final.messages_processed == 1


async def test_permission_enforcement(impl) -> None:
    d = impl.Dispatcher(impl.PluginRegistry())
    await d.load_plugin(info(3, HS, "limited_permission_plugin"))
    header = impl.PluginHeader(3, 0, bytes([9, 10, 11, 12])).encode()
    await d.dispatch(HANDSHAKE, header)
    with pytest.raises(
        PermissionDenied,
        match=r"^Plugin 'limited_permission_plugin' \(id 3\) lacks permission DATA_ACCESS "
        r"required by frame 0x52 \(DATA\) - grant it in PluginInfo\.permissions of "
        r"'limited_permission_plugin'$",
    ):
        await d.dispatch(DATA, header)
    await d.wait_idle(3)
    stats = d.plugin_stats(3)
    assert stats.permission_violations == 1
    assert stats.messages_processed == 1
    final = await d.unload_plugin(3)
    assert_accounting(d, {3: 1}, calls=2, final_stats={3: final})


async def test_multiple_plugins_concurrent(impl) -> None:
    d = impl.Dispatcher(impl.PluginRegistry())
    ids = (10, 11, 12)
    for n in ids:
        await d.load_plugin(info(n, [DA, HS, CT], f"concurrent_plugin_{n}"))
    assert len(d) == 3

    async def feed(plugin_id: int) -> None:
        header = impl.PluginHeader(plugin_id, 0, bytes([13, 14, 15, 16]))
        for frame_type in (HANDSHAKE, DATA, CONTROL):
            await d.dispatch(frame_type, header)

    await asyncio.gather(*(feed(n) for n in ids))
    await d.wait_idle()
    for n in ids:
        assert d.plugin_stats(n).messages_processed == 3
    assert d.dispatch_stats().frames_dispatched == 9
    assert_accounting(d, {n: 3 for n in ids}, calls=9)
    for n in ids:
        await d.unload_plugin(n)
    assert len(d) == 0


async def test_unregistered_plugin_dispatch(impl) -> None:
    d = impl.Dispatcher(impl.PluginRegistry())
    header = impl.PluginHeader(99, 0, bytes([17, 18, 19, 20])).encode()
    with pytest.raises(
        PluginNotRegistered,
        match=r"^Plugin 99 is not registered - frame 0x52 \(DATA\) was refused; "
        r"load it with Dispatcher\.load_plugin\(\) first$",
    ):
        await d.dispatch(DATA, header)
    assert d.dispatch_stats().dispatch_errors == 1
    assert_accounting(d, {}, calls=1)


async def test_plugin_message_backpressure(impl) -> None:
    # Nyx ignored the non-blocking result; with capacity 1 and nothing letting the
    # worker run in between, the queue is full, so it must be WouldBlock.
    d = impl.Dispatcher(impl.PluginRegistry())
    await d.load_plugin(info(4, DA, "backpressure_test_plugin"), capacity=1)
    header = impl.PluginHeader(4, 0, bytes([21, 22, 23, 24])).encode()
    await d.dispatch(DATA, header)
    with pytest.raises(
        WouldBlock,
        match=r"^Queue of plugin 'backpressure_test_plugin' \(id 4\) is full \(capacity 1\) - "
        r"frame 0x52 \(DATA\) was not enqueued; await dispatch\(\) to wait for space, retry "
        r"later, or raise load_plugin\(capacity=\.\.\.\) for 'backpressure_test_plugin'$",
    ) as excinfo:
        d.dispatch_nowait(DATA, header)
    assert (excinfo.value.plugin_id, excinfo.value.frame_type) == (4, DATA)
    assert d.try_dispatch(DATA, header) is DispatchStatus.WOULD_BLOCK
    final = await d.unload_plugin(4)
    assert final.messages_processed == 1
    assert_accounting(d, {4: 1}, calls=3, final_stats={4: final})


async def test_plugin_stats_tracking(impl) -> None:
    d = impl.Dispatcher(impl.PluginRegistry())
    await d.load_plugin(info(5, [DA, CT], "stats_test_plugin"))
    data = bytes(range(25, 33))
    header_bytes = impl.PluginHeader(5, 0, data).encode()
    assert header_bytes == cbor2.dumps({"id": 5, "flags": 0, "data": data})
    # nyxplug counts each byte once: the 26 header bytes (which carry the 8 data
    # bytes) plus an empty payload. Nyx counted 26 + 8 = 34.
    assert len(header_bytes) == 26
    for _ in range(5):
        await d.dispatch(DATA, header_bytes)
    await d.wait_idle(5)
    stats = d.plugin_stats(5)
    assert stats.messages_processed == 5
    assert stats.bytes_processed == 5 * 26 == 130
    assert stats.errors == 0
    await d.unload_plugin(5)


async def test_loaded_plugins_listing(impl) -> None:
    d = impl.Dispatcher(impl.PluginRegistry())
    assert d.loaded_plugins() == []
    for n in (22, 20, 21):
        await d.load_plugin(info(n, DA, f"listing_test_plugin_{n}"))
    assert d.loaded_plugins() == [20, 21, 22]
    await d.unload_plugin(21)
    assert d.loaded_plugins() == [20, 22]
    await d.unload_plugin(20)
    await d.unload_plugin(22)
    assert d.loaded_plugins() == []
    ds = d.dispatch_stats()
    assert (ds.plugins_loaded, ds.plugins_unloaded) == (3, 3)


# -- 6.2 plugin_performance_tests.rs (no speed is asserted) ---------------------------


async def test_plugin_high_throughput(impl) -> None:
    d = impl.Dispatcher(impl.PluginRegistry())
    await d.load_plugin(info(100, DA, "throughput_test_plugin"), capacity=10000)
    header = impl.PluginHeader(100, 0, bytes(1024)).encode()
    assert len(header) == 1045
    for _ in range(1000):
        await d.dispatch(DATA, header)
    await d.wait_idle(100)
    stats = d.plugin_stats(100)
    assert stats.messages_processed == 1000
    assert stats.bytes_processed == 1000 * 1045
    final = await d.unload_plugin(100)
    assert_accounting(d, {100: 1000}, calls=1000, final_stats={100: final})


async def test_many_plugins_concurrent_load(impl) -> None:
    d = impl.Dispatcher(impl.PluginRegistry())
    ids = [200 + i for i in range(100)]
    await asyncio.gather(
        *(d.load_plugin(info(n, DA, f"concurrent_load_plugin_{n - 200}")) for n in ids)
    )
    assert len(d) == 100
    assert d.loaded_plugins() == ids
    finals = await asyncio.gather(*(d.unload_plugin(n) for n in ids))
    assert len(d) == 0
    assert all(s.messages_processed == 0 for s in finals)
    assert len(d.registry) == 0
    ds = d.dispatch_stats()
    assert (ds.plugins_loaded, ds.plugins_unloaded) == (100, 100)


async def test_plugin_message_stress(impl) -> None:
    d = impl.Dispatcher(impl.PluginRegistry())
    ids = [300 + i for i in range(10)]
    for n in ids:
        await d.load_plugin(info(n, [DA, HS, CT], f"stress_test_plugin_{n - 300}"), capacity=1000)
    ledger = Ledger(d, impl)

    async def feed(plugin_id: int) -> None:
        header = impl.PluginHeader(plugin_id, 0, bytes(512)).encode()
        assert len(header) == 534
        for j in range(100):
            frame_type = (HANDSHAKE, DATA, CONTROL)[j % 3]
            await ledger.send(frame_type, header)

    await asyncio.gather(*(feed(n) for n in ids))
    await d.wait_idle()
    assert [d.plugin_stats(n).messages_processed for n in ids] == [100] * 10
    ds = d.dispatch_stats()
    assert (ds.frames_dispatched, ds.dispatch_errors) == (1000, 0)
    assert_accounting(d, ledger.enqueued, ledger.calls)
    for n in ids:
        await d.unload_plugin(n)
    assert len(d) == 0


async def test_plugin_memory_efficiency(impl) -> None:
    d = impl.Dispatcher(impl.PluginRegistry())
    ids = [400 + i for i in range(50)]
    for n in ids:
        await d.load_plugin(info(n, DA, f"memory_test_plugin_{n - 400}"))
    assert len(d) == 50
    for i, n in enumerate(ids):
        await d.dispatch(DATA, impl.PluginHeader(n, 0, bytes([i]) * 100))
    await d.wait_idle()
    assert all(d.plugin_stats(n).messages_processed == 1 for n in ids)
    for n in ids:
        await d.unload_plugin(n)
    assert len(d) == 0


async def test_plugin_error_resilience(impl) -> None:
    d = impl.Dispatcher(impl.PluginRegistry())
    ids = [500 + i for i in range(5)]
    for n in ids:
        await d.load_plugin(info(n, DA, f"error_test_plugin_{n - 500}"))
    ledger = Ledger(d, impl)
    for n in ids:
        await ledger.send(DATA, impl.PluginHeader(n, 0, bytes([1, 2, 3, 4])).encode())
        with pytest.raises(PluginNotRegistered):
            await ledger.send(DATA, impl.PluginHeader(999, 0, bytes([5, 6, 7, 8])).encode())
    await d.wait_idle()
    assert all(d.plugin_stats(n).messages_processed == 1 for n in ids)
    ds = d.dispatch_stats()
    assert (ds.frames_dispatched, ds.dispatch_errors) == (5, 5)
    assert_accounting(d, ledger.enqueued, ledger.calls)
    for n in ids:
        await d.unload_plugin(n)
    assert len(d) == 0


# -- 6.3 unit tests in plugin_dispatch.rs (those that apply) ---------------------------


def test_fresh_dispatcher_is_empty(impl) -> None:
    d = impl.Dispatcher(impl.PluginRegistry())
    assert len(d) == 0
    assert d.loaded_plugins() == []
    ds = d.dispatch_stats()
    assert (ds.plugins_loaded, ds.plugins_unloaded, ds.frames_dispatched, ds.dispatch_errors) == (
        0,
        0,
        0,
        0,
    )


async def test_load_and_unload_updates_state(impl) -> None:
    d = impl.Dispatcher(impl.PluginRegistry())
    await d.load_plugin(info(42, DA))
    assert d.is_loaded(42) and len(d) == 1
    assert d.plugin_stats(42) is not None
    await d.unload_plugin(42)
    assert not d.is_loaded(42) and len(d) == 0
    assert d.plugin_stats(42) is None


async def test_handshake_only_plugin_refuses_data(impl) -> None:
    d = impl.Dispatcher(impl.PluginRegistry())
    await d.load_plugin(info(123, HS))
    header = impl.PluginHeader(123)
    d.dispatch_nowait(HANDSHAKE, header)
    with pytest.raises(PermissionDenied) as excinfo:
        d.dispatch_nowait(DATA, header)
    assert (excinfo.value.plugin_id, excinfo.value.frame_type) == (123, DATA)
    assert excinfo.value.required == DA
    await d.unload_plugin(123)
