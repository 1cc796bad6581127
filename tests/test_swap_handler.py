"""``Dispatcher.swap_handler``: a plugin's handler replaced while frames keep flowing.

The queue, its frames and the counters stay; the frame (or batch) in flight finishes on
the old handler; ``between()`` runs while nothing is handled; the new handler takes the
next frame. Under a continuous sequenced load nothing is lost, duplicated or reordered,
and senders never see an error. Every test runs on both twins and both loops; the last
one runs one scripted scenario on both twins and compares what they did.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

import pytest
from conftest import available_impls
from nyx_helpers import Gate, info
from reload_helpers import (
    DATA,
    EVENT_TIMEOUT,
    Sender,
    runs,
    seq_of,
    seq_payload,
    settle,
    wait_until,
)

import nyxplug
from nyxplug import PluginNotLoaded

PID = 1
HEADER = nyxplug.PluginHeader(PID).encode()


class Log:
    """One record of who handled which frame, shared by the handlers of a test."""

    def __init__(self) -> None:
        self.entries: list[tuple[int, str]] = []  # (seq, handler name)
        self.progress = asyncio.Event()
        self.active = 0  # async handler calls in progress
        self.max_active = 0  # one worker per plugin: never more than 1

    def add(self, seq: int, name: str) -> None:
        self.entries.append((seq, name))
        self.progress.set()

    def seqs(self) -> list[int]:
        return [seq for seq, _ in self.entries]

    def names(self) -> list[str]:
        return [name for _, name in self.entries]

    def of(self, name: str) -> list[int]:
        return [seq for seq, who in self.entries if who == name]

    async def wait_for(self, predicate: Any) -> None:
        await wait_until(lambda: predicate(self), self.progress)


def sync_handler(log: Log, name: str) -> Any:
    """A plain function handler."""

    def handle(message: Any) -> None:
        log.add(seq_of(message.payload), name)

    return handle


class AsyncHandler:
    """An object with ``async handle(message)`` that really yields on every frame."""

    def __init__(self, log: Log, name: str) -> None:
        self.log = log
        self.name = name

    async def handle(self, message: Any) -> None:
        self.log.active += 1
        self.log.max_active = max(self.log.max_active, self.log.active)
        try:
            await asyncio.sleep(0)  # ok-sleep: a real async handler yields to the loop
            self.log.add(seq_of(message.payload), self.name)
        finally:
            self.log.active -= 1


class BatchHandler:
    """An object with ``handle_batch``; records every batch it was given."""

    def __init__(self, log: Log, name: str, *, is_async: bool = False) -> None:
        self.log = log
        self.name = name
        self.batches: list[list[int]] = []
        self.handle_batch = self._async_batch if is_async else self._sync_batch

    def _sync_batch(self, messages: list[Any]) -> None:
        seqs = [seq_of(m.payload) for m in messages]
        self.batches.append(seqs)
        for seq in seqs:
            self.log.add(seq, self.name)

    async def _async_batch(self, messages: list[Any]) -> None:
        await asyncio.sleep(0)  # ok-sleep: a real async handler yields to the loop
        self._sync_batch(messages)


class HeldBatch:
    """An async ``handle_batch`` that holds each batch until the test releases it."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.finished: list[list[int]] = []
        self.entered = asyncio.Event()
        self.release = asyncio.Event()

    async def handle_batch(self, messages: list[Any]) -> None:
        seqs = [seq_of(m.payload) for m in messages]
        self.batches.append(seqs)
        self.entered.set()
        async with asyncio.timeout(EVENT_TIMEOUT):
            await self.release.wait()
        self.finished.append(seqs)


def send_nowait(d: Any, *seqs: int) -> None:
    for seq in seqs:
        d.dispatch_nowait(DATA, HEADER, seq_payload(seq))


def gate_seqs(gate: Gate) -> list[int]:
    return [seq_of(m.payload) for m in gate.seen]


async def entered(gate: Gate) -> int:
    async with asyncio.timeout(EVENT_TIMEOUT):
        return seq_of((await gate.entered()).payload)


def assert_pause(pause: Any) -> None:
    assert type(pause) is float and pause >= 0, pause


# -- under load ---------------------------------------------------------------------------


async def test_100_swaps_under_load_lose_nothing_duplicate_nothing_keep_order(impl: Any) -> None:
    d = impl.Dispatcher()
    log = Log()
    handlers = {"A": sync_handler(log, "A"), "B": AsyncHandler(log, "B")}
    await d.load_plugin(info(PID), handlers["A"], capacity=4)
    sender = Sender(d, PID).start()
    await log.wait_for(lambda lg: len(lg.entries) > 0)
    pauses = []
    expected_runs = ["A"]
    for i in range(100):
        name = "B" if i % 2 == 0 else "A"
        pauses.append(await d.swap_handler(PID, handlers[name]))
        expected_runs.append(name)
        # the new handler takes frames before the next swap (the sender never stopped)
        await log.wait_for(lambda lg, name=name: lg.names()[-1] == name)
        assert sender.error is None
    sent = await sender.stop()
    await d.wait_idle(PID)
    assert sender.error is None
    assert log.seqs() == list(range(sent)), "a frame was lost, duplicated or reordered"
    assert runs(log.names()) == expected_runs, "a handler took a frame after its swap"
    assert log.max_active == 1, "two workers ran the plugin's handlers at once"
    for pause in pauses:
        assert_pause(pause)
    stats = d.plugin_stats(PID)
    assert (stats.messages_processed, stats.errors, stats.dropped, stats.queue_depth) == (
        sent, 0, 0, 0,
    )  # fmt: skip
    assert stats.high_watermark <= 4
    assert d.dispatch_stats().frames_dispatched == sent
    assert d.dispatch_stats().dispatch_errors == 0
    await d.aclose()


async def test_batch_handlers_swap_under_load_too(impl: Any) -> None:
    d = impl.Dispatcher()
    log = Log()
    cycle = [
        BatchHandler(log, "X"),
        BatchHandler(log, "Y", is_async=True),
        AsyncHandler(log, "Z"),
        sync_handler(log, "W"),
    ]
    await d.load_plugin(info(PID), cycle[0], capacity=8)
    sender = Sender(d, PID).start()
    await log.wait_for(lambda lg: len(lg.entries) > 0)
    expected_runs = ["X"]
    for i in range(1, 41):
        handler = cycle[i % len(cycle)]
        name = "XYZW"[i % len(cycle)]
        assert_pause(await d.swap_handler(PID, handler))
        expected_runs.append(name)
        await log.wait_for(lambda lg, name=name: lg.names()[-1] == name)
    sent = await sender.stop()
    await d.wait_idle(PID)
    assert log.seqs() == list(range(sent))
    assert runs(log.names()) == expected_runs
    for batcher in cycle[:2]:
        assert isinstance(batcher, BatchHandler)
        for batch in batcher.batches:
            assert batch == list(range(batch[0], batch[0] + len(batch))), batch
    assert d.plugin_stats(PID).messages_processed == sent
    await d.aclose()


async def test_parked_senders_keep_their_turn_and_see_no_error_across_a_swap(impl: Any) -> None:
    d = impl.Dispatcher()
    a, log = Gate(), Log()
    await d.load_plugin(info(PID), a, capacity=2)
    send_nowait(d, 0)
    assert await entered(a) == 0
    send_nowait(d, 1, 2)  # the queue is full now
    senders = [asyncio.ensure_future(d.dispatch(DATA, HEADER, seq_payload(s))) for s in (3, 4, 5)]
    await settle()
    assert not any(s.done() for s in senders)
    swap = asyncio.ensure_future(d.swap_handler(PID, sync_handler(log, "B")))
    await settle()
    a.open()
    assert_pause(await swap)
    async with asyncio.timeout(EVENT_TIMEOUT):
        assert await asyncio.gather(*senders) == [None, None, None]
    await d.wait_idle(PID)
    assert gate_seqs(a) == [0]
    assert log.of("B") == [1, 2, 3, 4, 5]
    assert d.dispatch_stats().dispatch_errors == 0
    await d.aclose()


# -- what the swap waits for ----------------------------------------------------------------


async def test_the_frame_in_flight_finishes_on_the_old_handler(impl: Any) -> None:
    d = impl.Dispatcher()
    a, log = Gate(), Log()
    await d.load_plugin(info(PID), a, capacity=8)
    send_nowait(d, 0)
    assert await entered(a) == 0
    send_nowait(d, 1, 2)
    swap = asyncio.ensure_future(d.swap_handler(PID, sync_handler(log, "B")))
    await settle()
    assert not swap.done(), "the swap must wait for the frame in flight"
    assert log.entries == [] and gate_seqs(a) == [0]
    a.release()
    assert_pause(await swap)
    await log.wait_for(lambda lg: len(lg.entries) == 2)
    assert [seq_of(m.payload) for m in a.finished] == [0], "the old handler finished frame 0"
    assert gate_seqs(a) == [0], "the old handler took no frame after the swap"
    assert log.of("B") == [1, 2]
    await d.aclose()


async def test_the_batch_in_flight_finishes_on_the_old_handler(impl: Any) -> None:
    d = impl.Dispatcher()
    held, log = HeldBatch(), Log()
    await d.load_plugin(info(PID), held, capacity=8)
    send_nowait(d, 0, 1, 2)
    async with asyncio.timeout(EVENT_TIMEOUT):
        await held.entered.wait()
    send_nowait(d, 3, 4)
    swap = asyncio.ensure_future(d.swap_handler(PID, BatchHandler(log, "B")))
    await settle()
    assert not swap.done() and log.entries == []
    held.release.set()
    assert_pause(await swap)
    await log.wait_for(lambda lg: len(lg.entries) == 2)
    assert held.batches == held.finished == [[0, 1, 2]]
    assert log.of("B") == [3, 4]
    await d.aclose()


async def test_between_runs_with_no_handler_active_before_the_new_handlers_first_frame(
    impl: Any,
) -> None:
    d = impl.Dispatcher()
    a, log = Gate(), Log()
    await d.load_plugin(info(PID), a, capacity=8)
    send_nowait(d, 0)
    assert await entered(a) == 0
    send_nowait(d, 1, 2, 3)
    seen_in_between: list[Any] = []

    def between() -> None:
        seen_in_between.append(
            (
                len(a.seen) - len(a.finished),  # old handler calls still running
                list(log.entries),  # what the new handler has handled
                d.plugin_stats(PID).queue_depth,
                d.is_loaded(PID),
            )
        )
        send_nowait(d, 4)  # a sender during the pause is fine: it is queued behind 1, 2, 3

    swap = asyncio.ensure_future(d.swap_handler(PID, sync_handler(log, "B"), between=between))
    await settle()
    assert seen_in_between == [], "between() must wait for the frame in flight"
    a.release()
    assert_pause(await swap)
    assert seen_in_between == [(0, [], 3, True)]
    await log.wait_for(lambda lg: len(lg.entries) == 4)
    assert log.of("B") == [1, 2, 3, 4]
    await d.aclose()


async def test_between_raising_resumes_the_old_handler_and_propagates(impl: Any) -> None:
    d = impl.Dispatcher()
    a, log = Gate(), Log()
    await d.load_plugin(info(PID), a, capacity=8)
    send_nowait(d, 0)
    assert await entered(a) == 0
    send_nowait(d, 1, 2)

    class StateRefused(Exception):
        pass

    def between() -> None:
        raise StateRefused("the new version refused the state")

    swap = asyncio.ensure_future(d.swap_handler(PID, sync_handler(log, "B"), between=between))
    await settle()
    a.open()
    with pytest.raises(StateRefused, match=r"^the new version refused the state$"):
        async with asyncio.timeout(EVENT_TIMEOUT):
            await swap
    send_nowait(d, 3)
    await d.wait_idle(PID)
    assert gate_seqs(a) == [0, 1, 2, 3], "the old handler resumes with the queued frames"
    assert log.entries == [], "the new handler never ran"
    stats = d.plugin_stats(PID)
    assert (stats.messages_processed, stats.dropped, stats.queue_depth) == (4, 0, 0)
    # the plugin is whole: another swap works
    assert_pause(await d.swap_handler(PID, sync_handler(log, "B")))
    send_nowait(d, 4)
    await d.wait_idle(PID)
    assert log.of("B") == [4]
    await d.aclose()


async def test_wait_idle_during_a_swap_does_not_return_while_frames_are_queued(
    impl: Any,
) -> None:
    d = impl.Dispatcher()
    a, log = Gate(), Log()
    await d.load_plugin(info(PID), a, capacity=8)
    send_nowait(d, 0)
    assert await entered(a) == 0
    send_nowait(d, 1, 2, 3)
    depth_at_idle: list[int] = []
    swap = asyncio.ensure_future(d.swap_handler(PID, AsyncHandler(log, "B")))
    await settle()

    async def idle() -> None:
        await d.wait_idle(PID)
        depth_at_idle.append(d.plugin_stats(PID).queue_depth)
        depth_at_idle.append(len(log.entries))

    waiter = asyncio.ensure_future(idle())
    await settle()
    assert not waiter.done()
    a.open()
    async with asyncio.timeout(EVENT_TIMEOUT):
        await waiter
    assert depth_at_idle == [0, 3], "wait_idle returned with frames still queued"
    assert_pause(await swap)
    assert log.of("B") == [1, 2, 3]
    await d.aclose()


# -- concurrency: unload, other swaps, cancellation ------------------------------------------


async def test_unload_during_a_swap_waits_for_it_and_drains_everything(impl: Any) -> None:
    d = impl.Dispatcher()
    a, log = Gate(), Log()
    await d.load_plugin(info(PID), a, capacity=8)
    send_nowait(d, 0)
    assert await entered(a) == 0
    send_nowait(d, 1, 2, 3, 4, 5)
    swap = asyncio.ensure_future(d.swap_handler(PID, AsyncHandler(log, "B")))
    await settle()
    unload = asyncio.ensure_future(d.unload_plugin(PID))
    await settle()
    assert not swap.done() and not unload.done()
    a.open()
    async with asyncio.timeout(EVENT_TIMEOUT):
        pause, stats = await asyncio.gather(swap, unload)
    assert_pause(pause)
    assert gate_seqs(a) == [0]
    assert log.of("B") == [1, 2, 3, 4, 5], "the swapped-in handler drains the queue"
    assert (stats.messages_processed, stats.dropped, stats.queue_depth) == (6, 0, 0)
    assert not d.is_loaded(PID) and not d.registry.is_registered(PID)
    assert d.dispatch_stats().plugins_unloaded == 1


async def test_a_swap_after_the_unload_began_is_plugin_not_loaded(impl: Any) -> None:
    d = impl.Dispatcher()
    a, log = Gate(), Log()
    await d.load_plugin(info(PID), a, capacity=8)
    send_nowait(d, 0)
    assert await entered(a) == 0
    unload = asyncio.ensure_future(d.unload_plugin(PID))
    await settle()
    with pytest.raises(PluginNotLoaded):
        await d.swap_handler(PID, sync_handler(log, "B"))
    a.open()
    async with asyncio.timeout(EVENT_TIMEOUT):
        stats = await unload
    assert stats.messages_processed == 1 and log.entries == []


async def test_concurrent_swaps_run_one_after_the_other(impl: Any) -> None:
    d = impl.Dispatcher()
    a, log = Gate(), Log()
    await d.load_plugin(info(PID), a, capacity=8)
    send_nowait(d, 0)
    assert await entered(a) == 0
    send_nowait(d, 1, 2, 3, 4, 5, 6)
    order: list[tuple[str, int]] = []

    def between(name: str) -> Any:
        return lambda: order.append((name, log.active))

    swaps = [
        asyncio.ensure_future(d.swap_handler(PID, AsyncHandler(log, name), between=between(name)))
        for name in ("B", "C", "D")
    ]
    await settle()
    assert order == [] and not any(s.done() for s in swaps)
    a.open()
    async with asyncio.timeout(EVENT_TIMEOUT):
        pauses = await asyncio.gather(*swaps)
    for pause in pauses:
        assert_pause(pause)
    assert order == [("B", 0), ("C", 0), ("D", 0)], "swaps run in turn, each with no handler busy"
    send_nowait(d, 7, 8)
    await log.wait_for(lambda lg: len(lg.entries) == 8)
    await d.wait_idle(PID)
    assert gate_seqs(a) == [0]
    assert log.seqs() == [1, 2, 3, 4, 5, 6, 7, 8]
    assert runs(log.names()) == sorted(runs(log.names())), "two handlers took turns on a queue"
    assert log.of("D")[-2:] == [7, 8]
    assert log.max_active == 1, "two workers ran the plugin's handlers at once"
    await d.aclose()


async def test_cancelling_the_caller_does_not_cancel_the_swap(impl: Any) -> None:
    d = impl.Dispatcher()
    a, log = Gate(), Log()
    await d.load_plugin(info(PID), a, capacity=8)
    send_nowait(d, 0)
    assert await entered(a) == 0
    send_nowait(d, 1)
    handed_over = asyncio.Event()
    swap = asyncio.ensure_future(
        d.swap_handler(PID, sync_handler(log, "B"), between=handed_over.set)
    )
    await settle()
    swap.cancel()
    with pytest.raises(asyncio.CancelledError):
        await swap
    a.open()
    async with asyncio.timeout(EVENT_TIMEOUT):
        await handed_over.wait()
    await log.wait_for(lambda lg: lg.seqs() == [1])
    send_nowait(d, 2)
    await d.wait_idle(PID)
    assert gate_seqs(a) == [0] and log.of("B") == [1, 2]
    await d.aclose()


# -- the small print ------------------------------------------------------------------------


async def test_swapping_an_unknown_or_unloaded_plugin_is_plugin_not_loaded(impl: Any) -> None:
    d = impl.Dispatcher()
    log = Log()
    message = r"^Plugin 9 is not loaded - load it with Dispatcher\.load_plugin\(\) first$"
    with pytest.raises(PluginNotLoaded, match=message) as caught:
        await d.swap_handler(9, sync_handler(log, "B"))
    assert caught.value.plugin_id == 9
    await d.load_plugin(info(9), sync_handler(log, "A"))
    await d.unload_plugin(9)
    with pytest.raises(PluginNotLoaded, match=message):
        await d.swap_handler(9, sync_handler(log, "B"))


async def test_a_bad_handler_is_refused_and_the_old_one_keeps_serving(impl: Any) -> None:
    d = impl.Dispatcher()
    log = Log()
    await d.load_plugin(info(PID), sync_handler(log, "A"))
    with pytest.raises(TypeError, match=r"^Expected a handler"):
        await d.swap_handler(PID, 42)
    send_nowait(d, 0)
    await d.wait_idle(PID)
    assert log.entries == [(0, "A")]
    await d.aclose()


async def test_counters_continue_across_swaps(impl: Any) -> None:
    d = impl.Dispatcher()
    log = Log()

    def failing(message: Any) -> None:
        log.add(seq_of(message.payload), "F")
        raise RuntimeError("counted, not fatal")

    await d.load_plugin(info(PID), sync_handler(log, "A"), capacity=8)
    send_nowait(d, 0, 1, 2, 3, 4)
    await d.wait_idle(PID)
    before = d.plugin_stats(PID)
    assert_pause(await d.swap_handler(PID, failing))
    send_nowait(d, 5, 6)
    await d.wait_idle(PID)
    assert_pause(await d.swap_handler(PID, BatchHandler(log, "B")))
    send_nowait(d, 7, 8, 9)
    await d.wait_idle(PID)
    stats = d.plugin_stats(PID)
    assert log.seqs() == list(range(10))
    assert stats.messages_processed == 10
    assert stats.errors == 2
    assert stats.bytes_processed == before.bytes_processed * 2
    assert stats.high_watermark == before.high_watermark == 5
    assert (stats.dropped, stats.queue_depth) == (0, 0)
    assert d.dispatch_stats().frames_dispatched == 10
    assert d.dispatch_stats().plugins_loaded == 1
    final = await d.unload_plugin(PID)
    assert final.messages_processed == 10


async def test_swapping_an_idle_plugin_hands_it_the_next_frame(impl: Any) -> None:
    d = impl.Dispatcher()
    log = Log()
    await d.load_plugin(info(PID), sync_handler(log, "A"))
    pause = await d.swap_handler(PID, sync_handler(log, "B"))
    assert_pause(pause)
    send_nowait(d, 0)
    await log.wait_for(lambda lg: len(lg.entries) == 1)
    assert log.entries == [(0, "B")]
    await d.aclose()


# -- the twins agree ----------------------------------------------------------------------


def _scripted(impl: Any) -> dict[str, Any]:
    """One swap scenario, with everything observable kept (pauses as their type only)."""

    async def scenario() -> dict[str, Any]:
        d = impl.Dispatcher()
        log = Log()
        out: dict[str, Any] = {}
        await d.load_plugin(info(PID), sync_handler(log, "A"), capacity=4)
        send_nowait(d, 0, 1, 2)
        await d.wait_idle(PID)
        depth: list[int] = []
        pause = await d.swap_handler(
            PID, AsyncHandler(log, "B"), between=lambda: depth.append(
                d.plugin_stats(PID).queue_depth
            )
        )  # fmt: skip
        out["pause"] = type(pause).__name__
        send_nowait(d, 3, 4)
        await d.wait_idle(PID)

        def refuse() -> None:
            raise ValueError("refused")

        try:
            await d.swap_handler(PID, sync_handler(log, "C"), between=refuse)
        except ValueError as exc:
            out["between raised"] = repr(exc)
        send_nowait(d, 5)
        await d.wait_idle(PID)
        for bad_id in (9, PID + 1):
            try:
                await d.swap_handler(bad_id, None)
            except PluginNotLoaded as exc:
                out[f"swap {bad_id}"] = (type(exc).__name__, str(exc))
        await d.swap_handler(PID, BatchHandler(log, "D"))
        send_nowait(d, 6, 7)
        await d.wait_idle(PID)
        out["depth in between"] = depth
        out["log"] = log.entries
        out["stats"] = d.plugin_stats(PID)
        out["final"] = await d.unload_plugin(PID)
        out["dispatch"] = d.dispatch_stats()
        return out

    with asyncio.Runner() as runner:
        return runner.run(scenario())


def test_the_twins_agree_on_a_scripted_swap_scenario() -> None:
    impls = available_impls()
    if len(impls) < 2:
        pytest.skip("needs both twins")
    results = [_scripted(impl) for impl in impls]
    assert results[0] == results[1]
    first = results[0]
    assert [seq for seq, _ in first["log"]] == list(range(8))
    assert re.fullmatch(r"ValueError\('refused'\)", first["between raised"])
    assert first["depth in between"] == [0]
