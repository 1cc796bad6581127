"""Resilience under load (issue 19, "How it is tested"): many concurrent senders, per-version
breakers tripping and recovering, full queues shedding frames, and three rollouts at once
- one promoted (and later rolled back by the recovery ladder's rung), two rolled back by
their checks - on both twins and loops. Afterwards every frame is
accounted for, in total and per version: what the senders sent equals what was
dispatched plus what was refused, by reason; each version's lane explains every frame
that reached it; the routed counts match the frames sent while a rollout routed.

The clock is a fake one that a timer task moves forward each time the senders have sent
another ``TICK_EVERY`` frames (an event, never a sleep), and ticks the rollouts; so the
run is bounded by the frame count, not by wall time.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import Counter
from typing import Any

import pytest
from breaker_helpers import FakeClock
from nyx_helpers import DATA, info

from nyxplug import BreakerConfig, BreakerState, CircuitOpen, DispatchStatus
from nyxplug.plugins.rollout import RolloutConfig, Rollouts, RolloutState

GOOD, BAD, BROKEN = 7, 8, 9  # candidate promoted / fails 20 % / fails all after a while
PLUGINS = (GOOD, BAD, BROKEN)
SENDERS = 1000  # a third await dispatch() (parking on full queues), the rest try_dispatch()
FRAMES = 60  # per sender
CHUNK = 8  # frames a try_dispatch sender sends before it yields
TICK_EVERY = 1000  # frames sent between two moves of the clock
STEP = 0.25  # seconds the clock moves each time
CAPACITY = 64
ROLLBACK_RUNG_AT = 40  # clock 10.0: plugin 7's rollout succeeded long before
FLAKY = (3.0, 5.0)  # while the clock is in this range, plugin 9's stable version fails
ROUTING = frozenset(
    {RolloutState.PROGRESSING, RolloutState.PAUSED, RolloutState.AWAITING_PROMOTION}
)
BREAKER = BreakerConfig(
    window_size=50, minimum_calls=20, failure_rate=0.5, open_wait=1.0,
    open_wait_multiplier=1.0, max_open_wait=1.0, jitter=0.0, half_open_probes=5,
    half_open_deadline=5.0, record_every=16,
)  # fmt: skip


@pytest.fixture(autouse=True)
def quiet_handler_errors(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.CRITICAL, logger="nyxplug")


class Failed(Exception):
    """What a failing version raises."""


def version(handled: Counter[tuple[int, str]], plugin_id: int, name: str, fails: Any) -> Any:
    """A handler counting what it handles; ``fails(n)`` says whether its n-th frame fails."""

    def handle(msg: Any) -> None:
        handled[plugin_id, name] += 1
        if fails(handled[plugin_id, name]):
            raise Failed(plugin_id, name)

    return handle


@pytest.mark.async_timeout(60)
async def test_every_frame_is_accounted_for_under_load(impl: Any) -> None:
    clock = FakeClock(start=0.0)
    rng = random.Random(19)
    handled: Counter[tuple[int, str]] = Counter()
    d = impl.Dispatcher()
    flaky_start, flaky_end = FLAKY
    lanes = {
        (GOOD, "base"): lambda n: False,
        (GOOD, "v2"): lambda n: False,
        (BAD, "base"): lambda n: False,
        (BAD, "v2"): lambda n: rng.random() < 0.2,
        (BROKEN, "base"): lambda n: flaky_start <= clock() < flaky_end,
        (BROKEN, "v2"): lambda n: n > 30,
    }
    for (plugin_id, name), fails in lanes.items():
        handler = version(handled, plugin_id, name, fails)
        if name == "base":
            await d.load_plugin(info(plugin_id), handler, capacity=CAPACITY)
        else:
            await d.load_version(plugin_id, name, handler, capacity=CAPACITY)
        d.set_breaker(plugin_id, BREAKER, clock=clock, random=rng.random, version=name)
    rollouts = Rollouts(d, clock=clock)
    config = RolloutConfig.canary(
        steps=(5.0, 25.0, 50.0), interval=1.0, min_frames=10, rollback_window=2.0
    )
    for plugin_id in PLUGINS:
        rollouts.start(plugin_id, "base", "v2", config)

    # -- the load ------------------------------------------------------------------
    sent: Counter[int] = Counter()  # by plugin
    routed_sent: Counter[int] = Counter()  # by plugin, while its rollout routed
    statuses: Counter[DispatchStatus] = Counter()
    progress = asyncio.Event()
    since_tick = due = 0  # frames since the last tick was due; ticks due, not yet taken
    headers = {plugin_id: impl.PluginHeader(plugin_id) for plugin_id in PLUGINS}

    def note(plugin_id: int) -> None:
        nonlocal since_tick, due
        sent[plugin_id] += 1
        controller = rollouts.get(plugin_id)
        assert controller is not None
        if controller.state in ROUTING:
            routed_sent[plugin_id] += 1
        since_tick += 1
        if since_tick >= TICK_EVERY:
            since_tick = 0
            due += 1
            progress.set()

    async def awaiting_sender(index: int) -> None:
        for i in range(FRAMES):
            plugin_id = PLUGINS[(index + i) % 3]
            note(plugin_id)
            try:
                await d.dispatch(DATA, headers[plugin_id], b"", key=index * 1000 + i // 10)
            except CircuitOpen:
                statuses[DispatchStatus.CIRCUIT_OPEN] += 1
            else:
                statuses[DispatchStatus.OK] += 1

    async def nowait_sender(index: int) -> None:
        for i in range(FRAMES):
            plugin_id = PLUGINS[(index + i) % 3]
            note(plugin_id)
            key = index * 1000 + i // 10
            statuses[d.try_dispatch(DATA, headers[plugin_id], b"", key=key)] += 1
            if i % CHUNK == CHUNK - 1:
                await asyncio.sleep(0)  # a yield, as a socket reader's would be

    ticks = 0
    rung: list[str | None] = []
    done = asyncio.Event()

    async def timer() -> None:
        """The rollouts' timer, and an operator who pauses and resumes plugin 7's."""
        nonlocal due
        while not done.is_set() or due:
            await progress.wait()
            progress.clear()
            while due:
                due -= 1
                take_tick()
                await asyncio.sleep(0)  # a yield: senders and workers run between ticks

    def take_tick() -> None:
        """Move the clock a step and tick the rollouts; the operator acts on some ticks."""
        nonlocal ticks
        clock.advance(STEP)
        ticks += 1
        good = rollouts.get(GOOD)
        assert good is not None
        if ticks == 6:
            good.pause()
        elif ticks == 9:
            good.resume()
        elif ticks == ROLLBACK_RUNG_AT:
            # the recovery ladder's rung, long after the promotion: base is stable again,
            # still loaded (kept warm), while frames keep coming
            rung.append(rollouts.rollback(GOOD))
        rollouts.tick()

    timer_task = asyncio.create_task(timer())
    async with asyncio.TaskGroup() as group:
        for index in range(SENDERS):
            sender = awaiting_sender if index % 3 == 0 else nowait_sender
            group.create_task(sender(index))
    await d.wait_idle()
    done.set()
    progress.set()
    await timer_task

    # -- the ledger ----------------------------------------------------------------
    total = SENDERS * FRAMES
    assert ticks == total // TICK_EVERY  # every tick due was taken
    ds = d.dispatch_stats()
    assert sum(sent.values()) == sum(statuses.values()) == total
    refused = {status: n for status, n in statuses.items() if status != DispatchStatus.OK}
    assert ds.frames_dispatched == statuses[DispatchStatus.OK]
    assert ds.frames_dispatched + ds.dispatch_errors == total
    assert {s: n for s, n in ds.by_status().items() if n} == refused
    assert refused[DispatchStatus.WOULD_BLOCK] > 0  # shedding happened
    assert refused[DispatchStatus.CIRCUIT_OPEN] > 0  # so did refusals by breakers
    enqueued = 0
    for plugin_id in PLUGINS:
        stats = d.version_stats(plugin_id)
        route = d.route_info(plugin_id)
        reached = 0
        for name, s in stats.items():
            assert s.queue_depth == s.dropped == s.plugin_closed == 0, (plugin_id, name, s)
            assert s.messages_processed == handled[plugin_id, name], (plugin_id, name)
            breaker = d.breaker_stats(plugin_id, version=name)
            assert breaker is not None
            by_reason = breaker.refused_open + breaker.refused_forced_open
            assert by_reason + breaker.refused_half_open == s.circuit_open, (plugin_id, name)
            assert route.routed[name] <= s.messages_processed + s.would_block + s.circuit_open
            reached += s.messages_processed + s.would_block + s.circuit_open
            enqueued += s.messages_processed
        assert reached == sent[plugin_id], plugin_id
        assert sum(route.routed.values()) == routed_sent[plugin_id], plugin_id
        assert route.candidate is None  # every rollout has ended its route
    assert enqueued == ds.frames_dispatched
    assert sum(s.would_block for p in PLUGINS for s in d.version_stats(p).values()) == (
        ds.would_block
    )

    # -- what the rollouts and breakers did meanwhile -------------------------------
    outcome = {p: rollouts.get(p).state for p in PLUGINS}  # type: ignore[union-attr]
    assert outcome[GOOD] is RolloutState.SUCCEEDED, (
        rollouts.get(GOOD).events  # type: ignore[union-attr]
    )
    assert outcome[BAD] is outcome[BROKEN] is RolloutState.ROLLED_BACK, outcome
    assert rung == ["base"] and d.route_info(GOOD).stable == "base"
    kinds = [e.kind for e in rollouts.get(GOOD).events]  # type: ignore[union-attr]
    assert "paused" in kinds and "resumed" in kinds
    flaky = d.breaker_stats(BROKEN, version="base")
    broken = d.breaker_stats(BROKEN, version="v2")
    assert flaky is not None and broken is not None
    assert flaky.trips >= 1 and flaky.state is BreakerState.CLOSED, flaky  # recovered
    assert broken.trips >= 1, broken
    assert clock() > FLAKY[1] + BREAKER.open_wait
    await d.aclose()
