"""The rollout controller (issue 19, item 5) on a fake clock, on both twins and loops.

Scenarios drive real lanes whose handlers fail exactly every k-th frame; the events
they produce are compared with ``tests/data/rollout_golden.txt`` line by line (set
``NYXPLUG_REGEN_GOLDEN=1`` to rewrite it after a deliberate change, and review the diff).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import pytest
from breaker_helpers import FakeClock
from conftest import TESTS
from nyx_helpers import DATA, info

from nyxplug import BreakerConfig, BreakerState, MatchRule
from nyxplug.plugins.errors import RolloutStateError
from nyxplug.plugins.rollout import (
    RolloutConfig,
    RolloutController,
    RolloutEvent,
    Rollouts,
    RolloutState,
)

GOLDEN = TESTS / "data" / "rollout_golden.txt"


@pytest.fixture(autouse=True)
def quiet_handler_errors(caplog: pytest.LogCaptureFixture) -> None:
    """Failing frames are the point here: keep their logged tracebacks off the output."""
    caplog.set_level(logging.CRITICAL, logger="nyxplug")


class EveryKth(Exception):
    """What a scripted lane raises on its k-th frames."""


def failing_every(k: int, slow_every: int = 0, work: FakeClock | None = None) -> Any:
    """A handler that fails exactly every ``k``-th frame it handles (never if k == 0) and
    takes a second of the ``work`` clock (its breaker's) on every ``slow_every``-th."""
    seen = [0]

    def handle(msg: Any) -> None:
        seen[0] += 1
        if slow_every and seen[0] % slow_every == 0:
            assert work is not None
            work.advance(1.0)
        if k and seen[0] % k == 0:
            raise EveryKth(seen[0])

    return handle


#: The lanes' breakers in the slow-call scenarios: they only time calls (a second is
#: slow), one frame per recorded group so every slow frame counts as one slow call.
TIMING = BreakerConfig(
    window_size=100, minimum_calls=20, failure_rate=1.0, slow_call_duration=0.5, record_every=1
)


@dataclass
class Scenario:
    name: str
    config: RolloutConfig
    fail_every: int  # the candidate's; the stable lane fails every 500th frame
    frames_per_interval: int
    intervals: int
    actions: dict[int, str]  # interval number -> operator action before its tick
    #: Every n-th frame of (candidate, stable) is slow; both lanes get a TIMING breaker.
    slow_every: tuple[int, int] | None = None


SCENARIOS = [
    Scenario(
        "healthy-canary",
        RolloutConfig.canary(interval=60, min_frames=20, rollback_window=120),
        0,
        2000,
        7,
        {},
    ),
    Scenario("bad-canary-5pct", RolloutConfig.canary(interval=60, min_frames=20), 20, 2000, 5, {}),
    Scenario("no-data-pauses", RolloutConfig.canary(interval=30, min_frames=20), 0, 0, 10, {}),
    Scenario(
        "worse-than-stable",  # 0.8 % is under the 1 % limit, but above stable's 0.2 % + 0.5
        RolloutConfig.canary(steps=(50.0,), interval=60, min_frames=20, threshold=1),
        125,
        2000,
        2,
        {},
    ),
    Scenario(
        "blue-green",
        RolloutConfig.blue_green(interval=10, min_frames=50, rollback_window=25),
        0,
        400,
        7,
        {},
    ),
    Scenario(
        "blue-green-mirrored",  # judged on copies while base serves everything; fails 1 in 40
        RolloutConfig.blue_green(mirror=True, interval=10, min_frames=50, threshold=2),
        40,
        400,
        3,
        {},
    ),
    Scenario(
        "split-30-held",
        RolloutConfig.split(30, hold=100, interval=20, min_frames=20),
        0,
        300,
        7,
        {3: "promote"},
    ),
    Scenario(
        "operator-pause-resume-rollback",
        RolloutConfig.canary(interval=60, min_frames=20),
        0,
        2000,
        6,
        {1: "pause", 3: "resume", 5: "rollback"},
    ),
    Scenario(
        "ab-by-key-set",  # only every 7th key goes to v2 (healthy): promoted after 3
        RolloutConfig.ab(
            (MatchRule("v2", keys=range(0, 10_000, 7)),),
            iterations=3,
            interval=60,
            min_frames=20,
        ),  # fmt: skip
        0,
        2000,
        4,
        {},
    ),
    Scenario(
        "promoted-then-rolled-back",
        RolloutConfig.canary(steps=(50.0,), interval=60, min_frames=20),
        0,
        1000,
        3,
        {2: "rollback"},
    ),
    Scenario(
        "slow-canary-10pct",  # no errors, but 1 call in 10 is slow against a 5 % limit
        RolloutConfig.canary(interval=60, min_frames=20, max_slow_rate=0.05),
        0,
        2000,
        3,
        {},
        (10, 0),
    ),
    Scenario(
        "slower-than-stable",  # 3 % slow is under the 5 % limit, not under stable's 1 % + 1
        RolloutConfig.canary(
            steps=(50.0,),
            interval=60,
            min_frames=20,
            threshold=1,
            max_slow_rate=0.05,
            max_slow_rate_over_stable=0.01,
        ),  # fmt: skip
        0,
        2000,
        2,
        {},
        (33, 100),
    ),
    Scenario(
        "slow-check-passes",  # 1 % slow, a 5 % limit; inconclusive until the breaker's
        # window holds its minimum_calls (20), though the candidate had min_frames before
        RolloutConfig.canary(
            steps=(1.0, 50.0),
            interval=60,
            min_frames=5,
            max_slow_rate=0.05,
            max_slow_rate_over_stable=0.02,
            rollback_window=60,
        ),  # fmt: skip
        0,
        1000,
        5,
        {},
        (100, 0),
    ),
]


async def run_scenario(impl: Any, scenario: Scenario) -> list[str]:
    clock = FakeClock(start=0.0)
    d = impl.Dispatcher()
    work = FakeClock(start=0.0)  # the breakers' clock: slow handlers move it, not the rollout's
    slow_v2, slow_base = scenario.slow_every or (0, 0)
    await d.load_plugin(info(7), failing_every(500, slow_base, work), capacity=100_000)
    await d.load_version(
        7, "v2", failing_every(scenario.fail_every, slow_v2, work), capacity=100_000
    )
    if scenario.slow_every is not None:
        for version in ("base", "v2"):
            d.set_breaker(7, TIMING, clock=work, version=version)
    seen: list[RolloutEvent] = []
    ctl = RolloutController(d, 7, "base", "v2", scenario.config, clock=clock, on_event=seen.append)
    ctl.start()
    header = impl.PluginHeader(7)
    key = 0
    for interval in range(1, scenario.intervals + 1):
        for _ in range(scenario.frames_per_interval):
            d.dispatch_nowait(DATA, header, b"", key=key)
            key += 1
        await d.wait_idle()
        clock.advance(scenario.config.interval)
        action = scenario.actions.get(interval)
        if action is not None and ctl.state not in (
            RolloutState.SUCCEEDED,
            RolloutState.ROLLED_BACK,
            RolloutState.ABORTED,
        ):
            getattr(ctl, action)()
        ctl.tick()
    # the ledger: every frame on one lane, per version and in total
    stats = d.version_stats(7)
    total = sum(s.messages_processed + s.queue_depth + s.dropped for s in stats.values())
    copies = sum(d.route_info(7).shadowed.values())
    assert total - copies == d.dispatch_stats().frames_dispatched == key
    assert seen == ctl.events
    await d.aclose()
    return [f"{scenario.name}: {event}" for event in ctl.events]


async def test_golden_event_sequences(impl: Any) -> None:
    lines: list[str] = []
    for scenario in SCENARIOS:
        lines.extend(await run_scenario(impl, scenario))
    text = "\n".join(lines) + "\n"
    if os.environ.get("NYXPLUG_REGEN_GOLDEN", "").strip().lower() in {"1", "true", "yes", "on"}:
        GOLDEN.write_text(text, "utf-8")
    assert text.splitlines() == GOLDEN.read_text("utf-8").splitlines()


async def test_rollback_timing_follows_the_configuration(impl: Any) -> None:
    """5 % failing against a 1 % limit: rolled back at interval x threshold."""
    lines = await run_scenario(impl, SCENARIOS[1])
    config = SCENARIOS[1].config
    assert lines[-1].startswith(f"bad-canary-5pct: {config.interval * config.threshold:.3f} ")
    assert " rolled_back rolled_back " in lines[-1]


async def test_healthy_canary_promotes_after_interval_times_steps(impl: Any) -> None:
    lines = await run_scenario(impl, SCENARIOS[0])
    config = SCENARIOS[0].config
    promoted = [line for line in lines if " promoted promoted " in line]
    assert promoted[0].startswith(f"healthy-canary: {config.interval * len(config.steps):.3f} ")
    assert lines[-1].split()[2:4] == ["finalised", "succeeded"]


async def test_every_state_accepts_every_operator_action(impl: Any) -> None:
    """Abort, pause, resume, promote and rollback from every non-terminal state."""
    reach = {
        RolloutState.PROGRESSING: [],
        RolloutState.PAUSED: ["pause"],
        RolloutState.AWAITING_PROMOTION: [],
        RolloutState.PROMOTED: ["promote"],
    }
    for state, path in reach.items():
        for action in ("abort", "pause", "resume", "promote", "rollback"):
            clock = FakeClock(start=0.0)
            d = impl.Dispatcher()
            await d.load_plugin(info(7), capacity=1000)
            await d.load_version(7, "v2", capacity=1000)
            auto = state is not RolloutState.AWAITING_PROMOTION
            config = RolloutConfig.canary(steps=(50.0,), interval=1, min_frames=1)
            if not auto:
                config = RolloutConfig.split(50, hold=10, interval=1, min_frames=1)
            ctl = RolloutController(d, 7, "base", "v2", config, clock=clock)
            ctl.start()
            if state is RolloutState.AWAITING_PROMOTION:
                for key in range(20):
                    d.dispatch_nowait(DATA, impl.PluginHeader(7), b"", key=key)
                await d.wait_idle()
                clock.advance(1)
                ctl.tick()
            for step in path:
                getattr(ctl, step)()
            assert ctl.state is state, (state, ctl.events)
            getattr(ctl, action)()
            route = d.route_info(7)
            if action in ("abort", "rollback"):
                assert ctl.state in (RolloutState.ABORTED, RolloutState.ROLLED_BACK)
                assert (route.stable, route.candidate) == ("base", None)
                with pytest.raises(
                    RolloutStateError, match=rf"^Expected a rollout that allows {action}\(\)"
                ):
                    getattr(ctl, action)()
            elif action == "promote":
                assert ctl.state is RolloutState.PROMOTED
                assert (route.stable, route.candidate) == ("v2", None)
                assert sorted(d.version_stats(7)) == ["base", "v2"]  # kept warm
            # every non-terminal state ends by its deadline
            clock.advance(1000)
            ctl.tick()
            assert ctl.state in (
                RolloutState.SUCCEEDED,
                RolloutState.ROLLED_BACK,
                RolloutState.ABORTED,
            )
            await d.aclose()


async def test_open_candidate_breaker_fails_the_check(impl: Any) -> None:
    clock = FakeClock(start=0.0)
    d = impl.Dispatcher()
    await d.load_plugin(info(7), capacity=1000)
    await d.load_version(7, "v2", capacity=1000)
    d.set_breaker(7, BreakerConfig(), clock=clock, version="v2")
    config = RolloutConfig.canary(interval=1, min_frames=1, threshold=1)
    ctl = RolloutController(d, 7, "base", "v2", config, clock=clock)
    ctl.start()
    d.set_breaker_state(7, BreakerState.FORCED_OPEN, version="v2")
    clock.advance(1)
    ctl.tick()
    assert ctl.state is RolloutState.ROLLED_BACK
    assert "candidate breaker forced_open" in ctl.events[-2].detail
    await d.aclose()


def test_config_is_validated() -> None:
    with pytest.raises(
        ValueError,
        match=r"^Expected `steps` rising above 0 \(from 0 only with `rules` or `shadow`\)",
    ):
        RolloutConfig(steps=(10.0, 5.0))
    with pytest.raises(ValueError, match=r"^Expected `max_error_rate` in 0..1, got 2"):
        RolloutConfig(max_error_rate=2)
    with pytest.raises(TypeError, match=r"^Expected `threshold` to be an int, got float$"):
        RolloutConfig(threshold=1.5)  # type: ignore[arg-type]
    config = RolloutConfig(interval=10)
    assert config.deadline == 10 * (1 + 2 + 3)


async def test_rollouts_registry_is_the_ladders_rollback_rung(impl: Any) -> None:
    clock = FakeClock(start=0.0)
    d = impl.Dispatcher()
    await d.load_plugin(info(7), capacity=1000)
    await d.load_version(7, "v2", capacity=1000)
    await d.load_version(7, "v3", capacity=1000)
    seen: list[tuple[int, str]] = []
    rollouts = Rollouts(d, clock=clock, on_event=lambda pid, e: seen.append((pid, e.kind)))
    assert rollouts.rollback(7) is None  # nothing to go back to
    config = RolloutConfig.canary(steps=(50.0,), interval=1, min_frames=1, rollback_window=5)
    ctl = rollouts.start(7, "base", "v2", config)
    with pytest.raises(RolloutStateError, match=r"^Expected a rollout that allows start\(\)"):
        rollouts.start(7, "base", "v3", config)
    for key in range(50):
        d.dispatch_nowait(DATA, impl.PluginHeader(7), b"", key=key)
    await d.wait_idle()
    clock.advance(1)
    rollouts.tick()
    assert ctl.state is RolloutState.PROMOTED
    clock.advance(5)
    rollouts.tick()
    assert ctl.state is RolloutState.SUCCEEDED and d.route_info(7).stable == "v2"
    assert rollouts.rollback(7) == "base"  # the version the rollout replaced, still loaded
    assert d.route_info(7).stable == "base"
    second = rollouts.start(7, "base", "v3", config)
    assert rollouts.get(7) is second
    assert rollouts.rollback(7) == "base" and second.state is RolloutState.ROLLED_BACK
    assert rollouts.rollback(7) is None
    assert seen[0] == (7, "started") and seen[-1] == (7, "rolled_back")
    await d.aclose()


async def test_slow_call_checks_need_a_breaker_on_the_candidate(impl: Any) -> None:
    """Slow calls are timed by the lane's breaker (per worker group, no clock read per
    frame): without one there is nothing to judge, and start() says how to give it one."""
    clock = FakeClock(start=0.0)
    d = impl.Dispatcher()
    await d.load_plugin(info(7), capacity=1000)
    await d.load_version(7, "v2", capacity=1000)
    config = RolloutConfig.canary(interval=1, min_frames=1, max_slow_rate=0.05)
    ctl = RolloutController(d, 7, "base", "v2", config, clock=clock)
    with pytest.raises(
        RolloutStateError,
        match=r"^Expected a rollout that allows start\(\), got one checking slow calls of "
        r"version 'v2', which has no breaker to time them - for plugin 7; give it one first: "
        r"set_breaker\(7, BreakerConfig\(slow_call_duration=\.\.\.\), version='v2'\), or "
        r"leave `max_slow_rate` unset$",
    ):
        ctl.start()
    assert d.route_info(7).candidate is None  # nothing was routed
    # a metrics-only breaker measures without ever refusing a frame
    d.set_breaker(7, BreakerConfig(minimum_calls=1), clock=clock, version="v2")
    d.set_breaker_state(7, BreakerState.METRICS_ONLY, version="v2")
    ctl.start()
    for key in range(200):
        d.dispatch_nowait(DATA, impl.PluginHeader(7), b"", key=key)
    await d.wait_idle()
    clock.advance(1)
    ctl.tick()
    assert ctl.events[1].kind == "check_passed", ctl.events
    routed = d.route_info(7).routed["v2"]
    assert ctl.events[1].detail.endswith(f"; slow: candidate 0/{routed}")  # base: no breaker
    await d.aclose()


def test_slow_call_limits_are_validated() -> None:
    with pytest.raises(ValueError, match=r"^Expected `max_slow_rate` in 0..1, got 1.5"):
        RolloutConfig(max_slow_rate=1.5)
    with pytest.raises(TypeError, match=r"^Expected `max_slow_rate_over_stable` to be a number"):
        RolloutConfig(max_slow_rate_over_stable="1")  # type: ignore[arg-type]
    assert RolloutConfig().max_slow_rate is None  # off unless asked for


async def test_the_rollback_rung_takes_what_is_due_first(impl: Any) -> None:
    """A promoted rollout whose window ran out while no timer ticked: the rung finalises
    it, then makes the replaced version stable again - it never meets a terminal
    controller's refusal."""
    clock = FakeClock(start=0.0)
    d = impl.Dispatcher()
    await d.load_plugin(info(7), capacity=1000)
    await d.load_version(7, "v2", capacity=1000)
    rollouts = Rollouts(d, clock=clock)
    config = RolloutConfig.canary(steps=(50.0,), interval=1, min_frames=1, rollback_window=5)
    ctl = rollouts.start(7, "base", "v2", config)
    ctl.promote()
    clock.advance(10)  # past the rollback window, no tick
    assert rollouts.rollback(7) == "base"
    assert ctl.state is RolloutState.SUCCEEDED and d.route_info(7).stable == "base"
    assert [e.kind for e in ctl.events] == ["started", "promoted", "finalised"]
    await d.aclose()


async def test_a_candidate_breaker_that_tripped_in_the_interval_fails_the_check(
    impl: Any,
) -> None:
    """Found by the stress test: a breaker that opened and is probing again (half-open) by
    the check let too few frames through - that must fail, not be 'inconclusive'."""
    clock = FakeClock(start=0.0)
    d = impl.Dispatcher()
    await d.load_plugin(info(7), capacity=1000)
    await d.load_version(7, "v2", failing_every(1), capacity=1000)
    config = BreakerConfig(minimum_calls=5, open_wait=0.5, jitter=0.0, record_every=1)
    d.set_breaker(7, config, clock=clock, version="v2")
    rollout = RolloutConfig.canary(steps=(50.0,), interval=1, min_frames=20, threshold=1)
    ctl = RolloutController(d, 7, "base", "v2", rollout, clock=clock)
    ctl.start()
    for key in range(40):
        d.try_dispatch(DATA, impl.PluginHeader(7), b"", key=key)
        await d.wait_idle()
    clock.advance(1)  # past open_wait: the next frame would be a probe
    ctl.tick()
    assert d.breaker_stats(7, version="v2").state is BreakerState.HALF_OPEN
    assert ctl.state is RolloutState.ROLLED_BACK
    assert ctl.events[1].detail.startswith(
        "1 of 1 to roll back: candidate breaker tripped in the interval (now half_open); "
        "failed: candidate 5/5, "
    ), ctl.events[1]
    await d.aclose()
