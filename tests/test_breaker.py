"""Circuit breakers (issue 19, item 1): resilience4j's rules in a table, the half-open
edge under 1,000 concurrent senders, the probe deadline, stale outcomes, backpressure,
operator states, errors and the ledger.

Every test runs on both twins and both loops. The breaker gets a ``FakeClock``; the
handler moves it for slow frames, so no test sleeps or depends on the machine's speed.
"""

from __future__ import annotations

import asyncio
import logging
import pickle
import random
import re
from pathlib import Path
from typing import Any

import msgspec
import pytest
from breaker_helpers import FakeClock, Outcomes, payloads, send, with_breaker
from conftest import ROOT
from nyx_helpers import DATA, Gate, Ledger, assert_accounting, info
from test_readme_example import run_snippet

import nyxplug
from nyxplug import (
    BreakerConfig,
    BreakerNotSet,
    BreakerState,
    CircuitOpen,
    DispatchStatus,
    PluginNotLoaded,
    VersionError,
)

OK = DispatchStatus.OK
REFUSED = DispatchStatus.CIRCUIT_OPEN

#: The configuration the table starts from; each row overrides some of it.
BASE = dict(
    window_size=10,
    minimum_calls=5,
    failure_rate=0.5,
    open_wait=10.0,
    jitter=0.0,
    half_open_probes=3,
    half_open_deadline=5.0,
)


@pytest.fixture(autouse=True)
def quiet_handler_errors(caplog: pytest.LogCaptureFixture) -> None:
    """Failing frames are the point here: keep their logged tracebacks off the output."""
    caplog.set_level(logging.CRITICAL, logger="nyxplug")


def exact(text: str) -> str:
    return "^" + re.escape(text) + "$"


# -- the table: resilience4j's rules ------------------------------------------------

#: (id, config overrides, steps, expected statuses, expected BreakerStats fields).
#: A step is ``"<n> <payload>"`` (n frames, then wait until handled: one recorded group),
#: ``"fail-then-ok <f> <o>"`` (one group), ``"+<seconds>"`` (advance the clock) or
#: ``"state <NAME>"`` (an operator's transition).
TABLE: list[tuple[str, dict[str, Any], list[str], dict[str, int], dict[str, Any]]] = [
    ("below-minimum-calls-never-trips", {}, ["4 fail"], {"ok": 4},
     dict(state=BreakerState.CLOSED, calls=4, failures=4, failure_rate=None, trips=0)),
    ("trips-at-minimum-calls", {}, ["4 fail", "1 fail"], {"ok": 5},
     dict(state=BreakerState.OPEN, calls=5, failures=5, failure_rate=1.0, trips=1)),
    ("rate-equal-to-threshold-trips", {"minimum_calls": 10}, ["5 ok", "5 fail"], {"ok": 10},
     dict(state=BreakerState.OPEN, failure_rate=0.5, trips=1, retry_after=10.0)),
    ("rate-below-threshold-stays-closed", {"minimum_calls": 10}, ["6 ok", "4 fail"],
     {"ok": 10}, dict(state=BreakerState.CLOSED, failure_rate=0.4, trips=0)),
    ("rate-of-one-tenth-trips-at-one-tenth", {"minimum_calls": 10, "failure_rate": 0.1},
     ["9 ok", "1 fail"], {"ok": 10}, dict(state=BreakerState.OPEN, failure_rate=0.1)),
    ("count-window-forgets-oldest-calls",
     {"window_size": 4, "minimum_calls": 4, "failure_rate": 0.75},
     ["2 fail", "2 ok", "2 ok", "2 fail"], {"ok": 8},
     dict(state=BreakerState.CLOSED, calls=4, failures=2, failure_rate=0.5)),
    ("count-window-trips-once-the-rate-is-reached",
     {"window_size": 4, "minimum_calls": 4, "failure_rate": 0.75},
     ["2 fail", "2 ok", "2 ok", "2 fail", "1 fail"], {"ok": 9},
     dict(state=BreakerState.OPEN, calls=4, failures=3, failure_rate=0.75)),
    ("failures-are-the-newest-calls-of-a-group",
     {"window_size": 4, "minimum_calls": 4, "failure_rate": 1.0},
     ["fail-then-ok 2 2", "2 ok"], {"ok": 6},
     dict(state=BreakerState.CLOSED, calls=4, failures=2)),
    ("minimum-calls-capped-at-count-window-size", {"window_size": 5, "minimum_calls": 100},
     ["5 fail"], {"ok": 5}, dict(state=BreakerState.OPEN, trips=1)),
    ("time-window-forgets-calls-older-than-it",
     {"window": "time", "window_size": 10, "minimum_calls": 3},
     ["2 fail", "+10", "2 ok"], {"ok": 4},
     dict(state=BreakerState.CLOSED, calls=2, failures=0, failure_rate=None)),
    ("time-window-keeps-calls-inside-it",
     {"window": "time", "window_size": 10, "minimum_calls": 3},
     ["2 fail", "+9.5", "1 fail"], {"ok": 3},
     dict(state=BreakerState.OPEN, calls=3, failures=3)),
    ("time-window-minimum-calls-is-not-capped",
     {"window": "time", "window_size": 2, "minimum_calls": 3},
     ["2 fail", "+1", "1 fail"], {"ok": 3}, dict(state=BreakerState.OPEN)),
    ("slow-call-rate-trips",
     {"minimum_calls": 10, "slow_call_rate": 0.5, "slow_call_duration": 1.0},
     ["5 slow:2.0", "5 ok"], {"ok": 10},
     dict(state=BreakerState.OPEN, slow_calls=5, failures=0, slow_call_rate=0.5)),
    ("a-call-of-exactly-the-slow-duration-is-not-slow",
     {"minimum_calls": 10, "slow_call_rate": 0.5, "slow_call_duration": 1.0},
     ["10 slow:1.0"], {"ok": 10}, dict(state=BreakerState.CLOSED, slow_calls=0)),
    ("a-slow-failure-counts-in-both-rates",
     {"slow_call_rate": 1.0, "slow_call_duration": 1.0, "failure_rate": 1.0},
     ["5 slowfail:2.0"], {"ok": 5},
     dict(state=BreakerState.OPEN, slow_calls=5, failures=5)),
    ("open-refuses-until-its-wait-is-over", {}, ["5 fail", "+9.9", "3 ok"],
     {"ok": 5, "refused": 3},
     dict(state=BreakerState.OPEN, refused_open=3, retry_after=pytest.approx(0.1))),
    ("half-open-admits-exactly-the-probes-and-closes", {}, ["5 fail", "+10", "5 ok"],
     {"ok": 8, "refused": 2},
     dict(state=BreakerState.CLOSED, calls=0, refused_half_open=2, trips=1)),
    ("probes-below-threshold-close", {}, ["5 fail", "+10", "fail-then-ok 1 2"],
     {"ok": 8}, dict(state=BreakerState.CLOSED, trips=1)),
    ("probes-at-threshold-reopen-with-doubled-wait", {},
     ["5 fail", "+10", "fail-then-ok 2 1"], {"ok": 8},
     dict(state=BreakerState.OPEN, trips=2, consecutive_trips=2, retry_after=20.0)),
    ("open-time-is-capped", {"max_open_wait": 25.0},
     ["5 fail", "+10", "3 fail", "+20", "3 fail"], {"ok": 11},
     dict(state=BreakerState.OPEN, trips=3, retry_after=25.0)),
    ("consecutive-trips-grow-until-a-healthy-verdict", {},
     ["5 fail", "+10", "3 fail", "+20", "3 ok", "5 fail"], {"ok": 16},
     dict(state=BreakerState.OPEN, trips=3, consecutive_trips=3, retry_after=40.0)),
    ("a-healthy-verdict-resets-the-growth", {},
     ["5 fail", "+10", "3 fail", "+20", "3 ok", "5 ok", "5 fail"], {"ok": 21},
     dict(state=BreakerState.OPEN, trips=3, consecutive_trips=1, retry_after=10.0)),
    ("forced-open-refuses-everything", {}, ["state FORCED_OPEN", "+1000", "3 ok"],
     {"refused": 3},
     dict(state=BreakerState.FORCED_OPEN, refused_forced_open=3, retry_after=None)),
    ("disabled-admits-and-records-nothing", {}, ["state DISABLED", "10 fail"], {"ok": 10},
     dict(state=BreakerState.DISABLED, calls=0, outcomes_recorded=0, failure_rate=None)),
    ("metrics-only-records-and-never-trips", {}, ["state METRICS_ONLY", "10 fail"],
     {"ok": 10},
     dict(state=BreakerState.METRICS_ONLY, calls=10, failure_rate=1.0, trips=0)),
    ("closed-resets-an-open-breaker", {}, ["5 fail", "state CLOSED", "3 ok"], {"ok": 8},
     dict(state=BreakerState.CLOSED, calls=3, failures=0, trips=1, consecutive_trips=0)),
]  # fmt: skip


@pytest.mark.parametrize(
    ("overrides", "steps", "statuses", "expected"),
    [pytest.param(*row[1:], id=row[0]) for row in TABLE],
)
async def test_semantics_table(
    impl: Any,
    overrides: dict[str, Any],
    steps: list[str],
    statuses: dict[str, int],
    expected: dict[str, Any],
) -> None:
    d, clock, _ = await with_breaker(impl, **{**BASE, **overrides})
    seen: list[Any] = []
    for step in steps:
        if step.startswith("+"):
            clock.advance(float(step[1:]))
        elif step.startswith("state "):
            d.set_breaker_state(7, BreakerState[step.split()[1]])
        else:
            seen += await send(d, impl, payloads(step))
    assert {"ok": seen.count(OK), "refused": seen.count(REFUSED)} == {
        "ok": statuses.get("ok", 0),
        "refused": statuses.get("refused", 0),
    }
    stats = d.breaker_stats(7)
    assert {name: getattr(stats, name) for name in expected} == expected
    await d.aclose()


async def test_jitter_scales_the_open_time(impl: Any) -> None:
    d, _clock, _ = await with_breaker(impl, **{**BASE, "jitter": 0.2}, random=lambda: 0.0)
    await send(d, impl, [b"fail"] * 5)
    assert d.breaker_stats(7).retry_after == pytest.approx(8.0)
    d.set_breaker(
        7, BreakerConfig(**{**BASE, "jitter": 0.2}), clock=FakeClock(), random=lambda: 0.75
    )
    await send(d, impl, [b"fail"] * 5)
    assert d.breaker_stats(7).retry_after == pytest.approx(11.0)
    await d.aclose()


# -- refusals: the error, the status, the counters ---------------------------------


async def test_refusal_is_typed_counted_and_names_the_fix(impl: Any) -> None:
    d, clock, _ = await with_breaker(impl, **BASE)
    await send(d, impl, [b"fail"] * 5)
    clock.advance(2.5)
    header = impl.PluginHeader(7)
    with pytest.raises(CircuitOpen) as caught:
        d.dispatch_nowait(DATA, header, b"ok")
    exc = caught.value
    assert isinstance(exc, nyxplug.DispatchError)
    assert (exc.plugin_id, exc.frame_type, exc.reason, exc.retry_after) == (7, DATA, "open", 7.5)
    assert re.match(
        exact(
            "Circuit breaker of plugin 'plugin_7' (id 7) is open after too many failed or "
            "slow calls - frame 0x52 (DATA) was not enqueued; retry after 7.500 s, or see "
            "Dispatcher.breaker_stats(7) and reset it with "
            "set_breaker_state(7, BreakerState.CLOSED)"
        ),
        str(exc),
    )
    assert str(pickle.loads(pickle.dumps(exc))) == str(exc)
    assert d.try_dispatch(DATA, header, b"ok") is REFUSED
    with pytest.raises(CircuitOpen):
        await d.dispatch(DATA, header, b"ok")
    with pytest.raises(CircuitOpen):
        await d.request(DATA, header, b"ok")
    with pytest.raises(CircuitOpen):
        await d.submit(DATA, header, b"ok")
    result = d.try_dispatch_many([impl.PluginFrame(DATA, header, b"ok")] * 2)
    assert result.statuses == [REFUSED, REFUSED]
    assert d.dispatch_stats().circuit_open == 7
    assert d.dispatch_stats().by_status()[REFUSED] == 7
    assert d.plugin_stats(7).circuit_open == 7
    assert d.breaker_stats(7).refused_open == 7
    d.set_breaker_state(7, BreakerState.FORCED_OPEN)
    with pytest.raises(CircuitOpen, match=r"forced open by an operator .* retry once an operator"):
        d.dispatch_nowait(DATA, header, b"ok")
    await d.aclose()


async def test_operator_calls_check_their_arguments(impl: Any) -> None:
    d = impl.Dispatcher()
    with pytest.raises(PluginNotLoaded):
        d.set_breaker(7, BreakerConfig())
    await d.load_plugin(info(7), None)
    assert d.breaker_stats(7) is None
    with pytest.raises(BreakerNotSet, match=exact(
        "Expected plugin 'plugin_7' (id 7) to have a circuit breaker, got none - give it one "
        "with Dispatcher.set_breaker(7, BreakerConfig(...))"
    )):  # fmt: skip
        d.set_breaker_state(7, BreakerState.FORCED_OPEN)
    d.set_breaker(7, BreakerConfig())
    for state in (BreakerState.OPEN, BreakerState.HALF_OPEN):
        with pytest.raises(ValueError, match=r"^Expected `state` to be BreakerState.CLOSED"):
            d.set_breaker_state(7, state)
    assert d.breaker_stats(7).state is BreakerState.CLOSED
    d.set_breaker(7, None)
    assert d.breaker_stats(7) is None
    await d.aclose()


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("window", "sliding", 'Expected `window` to be "count" or "time", got \'sliding\''),
        ("window_size", 0, "Expected `window_size` to be an int >= 1, got 0"),
        ("minimum_calls", True, "Expected `minimum_calls` to be an int >= 1, got True"),
        ("failure_rate", 0.0, "Expected `failure_rate` in (0, 1], got 0.0"),
        ("slow_call_rate", 1.5, "Expected `slow_call_rate` in (0, 1], got 1.5"),
        ("open_wait", float("inf"), "Expected `open_wait` to be a finite number of seconds > 0"),
        ("open_wait_multiplier", 0.5, "Expected `open_wait_multiplier` to be >= 1, got 0.5"),
        ("max_open_wait", 1.0, "Expected `max_open_wait` >= open_wait (60.0), got 1.0"),
        ("jitter", 1.0, "Expected `jitter` in [0, 1), got 1.0"),
        ("half_open_probes", 0, "Expected `half_open_probes` to be an int >= 1, got 0"),
    ],
)
def test_config_is_checked_when_created(field: str, value: Any, message: str) -> None:
    with pytest.raises(ValueError, match="^" + re.escape(message)):
        BreakerConfig(**{field: value})


def test_config_round_trips_as_msgspec() -> None:
    config = BreakerConfig(window="time", window_size=30, failure_rate=0.25)
    assert msgspec.json.decode(msgspec.json.encode(config), type=BreakerConfig) == config


# -- half-open: exactly N probes, and a deadline ------------------------------------


async def test_exactly_n_probes_pass_with_1000_concurrent_senders(impl: Any) -> None:
    d, clock, outcomes = await with_breaker(impl, **{**BASE, "half_open_probes": 10})
    await send(d, impl, [b"fail"] * 5)
    outcomes.handled.clear()
    clock.advance(10.0)  # the OPEN -> HALF_OPEN edge: the next frame finds it due
    header = impl.PluginHeader(7)
    start = asyncio.Event()

    async def sender() -> str:
        await start.wait()
        try:
            await d.dispatch(DATA, header, b"ok")
        except CircuitOpen as exc:
            return exc.reason
        return "sent"

    tasks = [asyncio.create_task(sender()) for _ in range(1000)]
    await asyncio.sleep(0)  # every sender is now waiting on `start`
    start.set()
    results = await asyncio.gather(*tasks)
    await d.wait_idle(7)
    assert results.count("sent") == 10
    assert results.count("half_open") == 990
    assert len(outcomes.handled) == 10
    stats = d.breaker_stats(7)
    assert (stats.state, stats.refused_half_open) == (BreakerState.CLOSED, 990)
    await d.aclose()


async def test_a_probe_that_never_finishes_reopens_after_its_deadline(impl: Any) -> None:
    clock = FakeClock()
    outcomes = Outcomes(clock)
    hold = asyncio.Event()

    async def handler(msg: Any) -> None:
        if msg.payload == b"hang":
            await hold.wait()  # a probe that does not finish
        outcomes(msg)

    d = impl.Dispatcher()
    await d.load_plugin(info(7), handler)
    d.set_breaker(7, BreakerConfig(**BASE), clock=clock, random=lambda: 0.5)
    await send(d, impl, [b"fail"] * 5)
    clock.advance(10.0)
    header = impl.PluginHeader(7)
    assert d.try_dispatch(DATA, header, b"hang") is OK  # probe 1: hangs in the handler
    assert d.try_dispatch(DATA, header, b"ok") is OK
    assert d.try_dispatch(DATA, header, b"ok") is OK
    assert d.try_dispatch(DATA, header, b"ok") is REFUSED
    stats = d.breaker_stats(7)
    assert (stats.state, stats.probes_admitted, stats.retry_after) == (
        BreakerState.HALF_OPEN, 3, 5.0,
    )  # fmt: skip
    clock.advance(4.9)
    assert d.breaker_stats(7).state is BreakerState.HALF_OPEN
    clock.advance(0.1)  # the deadline: 3 unfinished probes of 3 are failures
    stats = d.breaker_stats(7)
    assert (stats.state, stats.trips, stats.retry_after) == (BreakerState.OPEN, 2, 20.0)
    hold.set()  # the probes finish now: stale, they cannot close or re-trip it
    await d.wait_idle(7)
    stats = d.breaker_stats(7)
    assert (stats.state, stats.trips, stats.stale_outcomes) == (BreakerState.OPEN, 2, 3)
    await d.aclose()


async def test_probe_deadline_is_reached_by_the_next_frame_too(impl: Any) -> None:
    hold = asyncio.Event()

    async def handler(msg: Any) -> None:
        if msg.payload == b"hang":
            await hold.wait()
        elif msg.payload == b"fail":
            raise RuntimeError("failing frame")

    clock = FakeClock()
    d = impl.Dispatcher()
    await d.load_plugin(info(7), handler)
    d.set_breaker(7, BreakerConfig(**BASE), clock=clock, random=lambda: 0.5)
    await send(d, impl, [b"fail"] * 5)
    clock.advance(10.0)
    header = impl.PluginHeader(7)
    assert d.try_dispatch(DATA, header, b"hang") is OK
    clock.advance(5.0)
    with pytest.raises(CircuitOpen) as caught:  # verdict taken on this frame's admission
        d.dispatch_nowait(DATA, header, b"ok")
    assert (caught.value.reason, caught.value.retry_after) == ("open", 20.0)
    hold.set()
    await d.aclose()


# -- stale outcomes, backpressure, parked senders, batches -------------------------


async def test_outcomes_of_frames_admitted_before_a_trip_are_stale(impl: Any) -> None:
    d, clock, _ = await with_breaker(impl, **{**BASE, "record_every": 5})
    # 15 failing frames queued at once: the first group of 5 trips the breaker; the
    # 10 queued behind it finish later and must neither re-trip nor count.
    statuses = await send(d, impl, [b"fail"] * 15)
    assert statuses == [OK] * 15
    stats = d.breaker_stats(7)
    assert (stats.state, stats.trips, stats.outcomes_recorded, stats.stale_outcomes) == (
        BreakerState.OPEN, 1, 5, 10,
    )  # fmt: skip
    assert stats.retry_after == 10.0  # not pushed out by the stale failures
    clock.advance(10.0)
    assert await send(d, impl, [b"ok"] * 3) == [OK] * 3
    assert d.breaker_stats(7).state is BreakerState.CLOSED
    await d.aclose()


async def test_operator_transition_makes_queued_outcomes_stale(impl: Any) -> None:
    gate = Gate()
    d, _clock, _ = await with_breaker(impl, handler=gate, **BASE)
    header = impl.PluginHeader(7)
    for _ in range(4):
        d.dispatch_nowait(DATA, header, b"x")
    await gate.entered()  # the first frame is in the handler, 3 queued
    d.set_breaker_state(7, BreakerState.METRICS_ONLY)
    gate.open()
    await d.wait_idle(7)
    stats = d.breaker_stats(7)
    assert (stats.state, stats.calls, stats.stale_outcomes) == (BreakerState.METRICS_ONLY, 0, 4)
    await d.aclose()


async def test_backpressure_is_load_not_failure(impl: Any) -> None:
    gate = Gate()
    d, _clock, _ = await with_breaker(impl, handler=gate, capacity=2, **BASE)
    header = impl.PluginHeader(7)
    assert [d.try_dispatch(DATA, header, b"x") for _ in range(6)] == [OK, OK] + [
        DispatchStatus.WOULD_BLOCK
    ] * 4
    assert d.breaker_stats(7).calls == 0
    assert d.plugin_stats(7).would_block == 4
    gate.open()
    await d.wait_idle(7)
    stats = d.breaker_stats(7)
    assert (stats.state, stats.calls, stats.failures) == (BreakerState.CLOSED, 2, 0)
    await d.aclose()


async def test_a_probe_that_meets_a_full_queue_gives_its_permit_back(impl: Any) -> None:
    hold = asyncio.Event()

    async def handler(msg: Any) -> None:
        if msg.payload == b"fail":
            raise RuntimeError("failing frame")
        await hold.wait()

    clock = FakeClock()
    d = impl.Dispatcher()
    await d.load_plugin(info(7), handler, capacity=1)
    d.set_breaker(7, BreakerConfig(**BASE), clock=clock, random=lambda: 0.5)
    header = impl.PluginHeader(7)
    for _ in range(5):
        d.dispatch_nowait(DATA, header, b"fail")
        await d.wait_idle(7)
    assert d.breaker_stats(7).state is BreakerState.OPEN
    clock.advance(10.0)
    assert d.try_dispatch(DATA, header, b"ok") is OK  # probe 1 reaches the handler
    await asyncio.sleep(0)
    assert d.try_dispatch(DATA, header, b"ok") is OK  # probe 2 waits in the queue
    for _ in range(5):  # full: refused as load, the permit goes back each time
        assert d.try_dispatch(DATA, header, b"ok") is DispatchStatus.WOULD_BLOCK
    assert d.breaker_stats(7).probes_admitted == 2
    hold.set()
    await d.wait_idle(7)
    assert d.try_dispatch(DATA, header, b"ok") is OK  # probe 3: the verdict
    await d.wait_idle(7)
    assert d.breaker_stats(7).state is BreakerState.CLOSED
    await d.aclose()


async def test_a_parked_sender_is_admitted_again_after_a_transition(impl: Any) -> None:
    gate = Gate()
    d, _clock, _ = await with_breaker(impl, handler=gate, capacity=1, **BASE)
    header = impl.PluginHeader(7)
    d.dispatch_nowait(DATA, header, b"a")
    await gate.entered()
    d.dispatch_nowait(DATA, header, b"b")  # fills the queue
    parked = asyncio.create_task(d.dispatch(DATA, header, b"c"))
    await asyncio.sleep(0)
    assert not parked.done()
    d.set_breaker_state(7, BreakerState.FORCED_OPEN)
    gate.open()
    with pytest.raises(CircuitOpen):
        await parked
    await d.wait_idle(7)
    assert gate.payloads == [b"a", b"b"]
    assert d.dispatch_stats().circuit_open == 1
    assert d.plugin_stats(7).circuit_open == 1
    await d.aclose()


async def test_a_failing_batch_handler_fails_every_frame_of_its_batch(impl: Any) -> None:
    class Batches:
        def handle_batch(self, batch: list[Any]) -> None:
            if any(m.payload == b"fail" for m in batch):
                raise RuntimeError("failing batch")

    clock = FakeClock()
    d = impl.Dispatcher()
    await d.load_plugin(info(7), Batches())
    d.set_breaker(
        7, BreakerConfig(**{**BASE, "minimum_calls": 10}), clock=clock, random=lambda: 0.5
    )
    await send(d, impl, [b"ok"] * 4 + [b"fail"])  # one batch of 5, all failed
    stats = d.breaker_stats(7)
    assert (stats.state, stats.calls, stats.failures) == (BreakerState.CLOSED, 5, 5)
    await send(d, impl, [b"ok"] * 5)
    stats = d.breaker_stats(7)
    assert (stats.state, stats.calls, stats.failures) == (BreakerState.OPEN, 10, 5)
    await d.aclose()


async def test_the_default_clock_is_monotonic(impl: Any) -> None:
    d = impl.Dispatcher()
    await d.load_plugin(info(7), Outcomes(FakeClock()))
    d.set_breaker(7, BreakerConfig(minimum_calls=2, window_size=2, open_wait=30.0))
    await send(d, impl, [b"fail", b"fail"])
    stats = d.breaker_stats(7)
    assert stats.state is BreakerState.OPEN
    assert 27.0 <= stats.retry_after <= 33.0  # ±10 % jitter, on time.monotonic
    await d.aclose()


# -- the ledger under tripping and recovering load -----------------------------------


async def test_ledger_holds_while_breakers_trip_and_recover(impl: Any) -> None:
    rng = random.Random(19)
    clock = FakeClock()
    d = impl.Dispatcher()
    ledger = Ledger(d, impl)
    config = BreakerConfig(**{**BASE, "record_every": 7, "half_open_probes": 4})
    for pid in (7, 8):
        await d.load_plugin(info(pid), Outcomes(clock), capacity=64)
        d.set_breaker(pid, config, clock=clock, random=rng.random)
    states: set[BreakerState] = set()
    for round_ in range(300):
        bad = 0.9 if (round_ // 40) % 2 else 0.05  # failing phases, then healthy ones
        for _ in range(rng.randrange(1, 40)):
            pid = rng.choice((7, 8))
            payload = b"fail" if rng.random() < bad else b"ok"
            ledger.try_(DATA, impl.PluginHeader(pid), payload)
        if rng.random() < 0.5:
            await d.wait_idle()
        clock.advance(rng.choice((0.0, 0.5, 3.0)))
        if rng.random() < 0.02:
            d.set_breaker_state(rng.choice((7, 8)), BreakerState.CLOSED)
        states.update(d.breaker_stats(pid).state for pid in (7, 8))
    await d.wait_idle()
    assert {BreakerState.CLOSED, BreakerState.OPEN, BreakerState.HALF_OPEN} <= states
    assert_accounting(d, ledger.enqueued, ledger.calls)
    total_refused = 0
    for pid in (7, 8):
        ps, bs = d.plugin_stats(pid), d.breaker_stats(pid)
        refused = bs.refused_open + bs.refused_forced_open + bs.refused_half_open
        assert ps.circuit_open == refused
        assert bs.outcomes_recorded + bs.stale_outcomes == ps.messages_processed
        total_refused += refused
    ds = d.dispatch_stats()
    assert ds.circuit_open == total_refused > 0
    assert ds.dispatch_errors == ds.circuit_open + ds.would_block
    await d.aclose()


@pytest.mark.parametrize("record_every", [1, 64, 256])
async def test_a_plugin_that_starts_failing_trips_within_minimum_calls_and_a_group(
    impl: Any, record_every: int
) -> None:
    d, _clock, _ = await with_breaker(
        impl,
        window_size=100,
        minimum_calls=100,
        failure_rate=0.5,
        jitter=0.0,
        record_every=record_every,
    )
    await send(d, impl, [b"ok"] * 100)
    await send(d, impl, [b"fail"] * 1000)  # all queued at once: the worst case
    stats = d.breaker_stats(7)
    assert stats.state is BreakerState.OPEN
    assert 50 <= stats.failures <= 100 + record_every
    assert stats.failures == max(50, min(record_every, 100))
    assert stats.outcomes_recorded + stats.stale_outcomes == 1100
    await d.aclose()


README = (ROOT / "README.md").read_text(encoding="utf-8")
SNIPPET = re.search(
    r"### Circuit breakers\n.*?```python\n(.*?)```\n\nprints\n\n```text\n(.*?)```", README, re.S
)


@pytest.mark.parametrize("pure", [False, True], ids=["cython", "python"])
def test_readme_breaker_snippet_prints_what_the_readme_says(pure: bool, tmp_path: Path) -> None:
    assert SNIPPET is not None
    result = run_snippet(SNIPPET.group(1), tmp_path, pure)
    assert result.returncode == 0, result.stderr
    assert result.stdout == SNIPPET.group(2)


# -- manifests and the host configuration -------------------------------------------


async def test_manifest_and_host_config_give_plugins_their_breakers(
    impl: Any, tmp_path: Path
) -> None:
    from plugin_helpers import write_plugin

    from nyxplug.config import DefaultsSection, HostConfig, RuntimeSection
    from nyxplug.plugins import PluginManager

    write_plugin(tmp_path, "own", 61, breaker={"window_size": 20, "failure_rate": 0.25})
    write_plugin(tmp_path, "plain", 62)
    host = HostConfig(
        runtime=RuntimeSection(
            plugin_dirs=(str(tmp_path),), state_dir=str(tmp_path / "state"),
            require_signatures=False,
        ),
        defaults=DefaultsSection(breaker=BreakerConfig(minimum_calls=7)),
    )  # fmt: skip
    async with PluginManager(
        dispatcher=impl.Dispatcher(), config=host, entry_points=False, include_registered=False
    ) as manager:
        own, plain = manager.dispatcher.breaker_stats(61), manager.dispatcher.breaker_stats(62)
        assert own is not None and plain is not None
        assert (own.state, plain.state) == (BreakerState.CLOSED, BreakerState.CLOSED)
        manager.dispatcher.set_breaker_state(61, BreakerState.FORCED_OPEN)
        with pytest.raises(CircuitOpen, match=r"^Circuit breaker of plugin 'own' \(id 61\)"):
            manager.dispatcher.dispatch_nowait(DATA, impl.PluginHeader(61))


# -- repairing: the recovery ladder's hold on an OPEN breaker (issue 19, item 2) --------


async def test_repairing_holds_open_past_its_open_time_then_half_opens(impl: Any) -> None:
    d, clock, _ = await with_breaker(impl, **BASE)
    seen: list[BreakerState] = []
    d.watch_breaker(7, seen.append)
    await send(d, impl, [b"fail"] * 5)
    assert seen == [BreakerState.OPEN]
    d.set_breaker_repairing(7, "restart")
    clock.advance(60.0)  # far past open_wait: the clock alone would half-open it
    header = impl.PluginHeader(7)
    with pytest.raises(CircuitOpen) as caught:
        d.dispatch_nowait(DATA, header, b"ok")
    assert caught.value.retry_after is None
    assert re.match(
        exact(
            "Circuit breaker of plugin 'plugin_7' (id 7) is held open by its recovery ladder "
            "(restart running) - frame 0x52 (DATA) was not enqueued; retry once it recovers, "
            "or see Dispatcher.breaker_stats(7) and reset it with "
            "set_breaker_state(7, BreakerState.CLOSED)"
        ),
        str(caught.value),
    )
    stats = d.breaker_stats(7)
    assert (stats.state, stats.repairing, stats.refused_open) == (BreakerState.OPEN, "restart", 1)
    assert seen == [BreakerState.OPEN]  # a step starting is no transition
    d.set_breaker_repairing(7, None, recovered=True)
    stats = d.breaker_stats(7)
    assert (stats.state, stats.repairing, stats.forced_by) == (BreakerState.HALF_OPEN, None, None)
    assert stats.trips == 1  # half-open after a repair is no trip
    await send(d, impl, [b"ok"] * 3)
    assert d.breaker_stats(7).state is BreakerState.CLOSED
    assert seen == [BreakerState.OPEN, BreakerState.HALF_OPEN, BreakerState.CLOSED]
    await d.aclose()


async def test_a_failed_repair_leaves_it_open_on_its_own_clock(impl: Any) -> None:
    d, clock, _ = await with_breaker(impl, **BASE)
    await send(d, impl, [b"fail"] * 5)
    d.set_breaker_repairing(7, "reset")
    clock.advance(60.0)
    d.set_breaker_repairing(7, None)  # not recovered
    stats = d.breaker_stats(7)
    # Its open time is over: the next frame (here the read) takes it half-open.
    assert (stats.state, stats.repairing, stats.forced_by) == (BreakerState.HALF_OPEN, None, None)
    await d.aclose()


async def test_each_version_lane_has_its_own_breaker_watcher(impl: Any) -> None:
    """A candidate's breaker trips, half-opens and closes: its lane's watcher sees each
    transition, the stable lane's none (and the other way round)."""
    d, clock, outcomes = await with_breaker(impl, **BASE)
    await d.load_version(7, "v2", outcomes)
    d.set_breaker(7, BreakerConfig(**BASE), clock=clock, random=lambda: 0.5, version="v2")
    d.set_route(7, stable="base", candidate="v2", weight=100)  # every frame to v2
    stable: list[BreakerState] = []
    candidate: list[BreakerState] = []
    d.watch_breaker(7, stable.append)
    d.watch_breaker(7, candidate.append, version="v2")
    await send(d, impl, [b"fail"] * 5)
    assert candidate == [BreakerState.OPEN]
    clock.advance(BASE["open_wait"])
    assert d.breaker_stats(7, version="v2").state is BreakerState.HALF_OPEN
    await send(d, impl, [b"ok"] * 3)  # the probes
    assert candidate == [BreakerState.OPEN, BreakerState.HALF_OPEN, BreakerState.CLOSED]
    assert d.breaker_stats(7).calls == 0  # the stable lane took no frame
    # A new config for the lane keeps its watcher; "base" names the stable lane too.
    d.set_breaker(7, BreakerConfig(**{**BASE, "window_size": 20}), version="v2")
    d.set_breaker_state(7, BreakerState.FORCED_OPEN, version="v2")
    assert candidate[-1] is BreakerState.FORCED_OPEN
    d.set_breaker_state(7, BreakerState.METRICS_ONLY, version="base")
    assert stable == [BreakerState.METRICS_ONLY]
    assert len(candidate) == 4
    d.watch_breaker(7, None, version="v2")
    d.set_breaker_state(7, BreakerState.CLOSED, version="v2")
    assert len(candidate) == 4
    with pytest.raises(VersionError, match=r"^Expected a loaded version, got none by that name"):
        d.watch_breaker(7, candidate.append, version="v9")
    d.set_breaker(7, None, version="v2")
    with pytest.raises(BreakerNotSet):
        d.watch_breaker(7, candidate.append, version="v2")
    await d.aclose()


async def test_the_breaker_listener_survives_a_new_config_and_checks_its_arguments(
    impl: Any,
) -> None:
    d, _clock, _ = await with_breaker(impl, **BASE)
    seen: list[BreakerState] = []
    d.watch_breaker(7, seen.append)
    d.set_breaker(7, BreakerConfig(**{**BASE, "window_size": 20}))
    d.set_breaker_state(7, BreakerState.FORCED_OPEN)
    assert seen == [BreakerState.FORCED_OPEN]
    d.set_breaker_repairing(7, "reload")
    assert d.breaker_stats(7).repairing == "reload"
    d.set_breaker_repairing(7, None, recovered=True)  # a forced open one goes half-open too
    assert seen == [BreakerState.FORCED_OPEN, BreakerState.HALF_OPEN]
    d.watch_breaker(7, None)
    d.set_breaker_state(7, BreakerState.CLOSED)
    assert len(seen) == 2
    with pytest.raises(
        TypeError, match=exact("Expected `callback` to be callable or None, got int")
    ):
        d.watch_breaker(7, 5)
    with pytest.raises(TypeError, match=exact("Expected `step` to be a str or None, got int")):
        d.set_breaker_repairing(7, 5)
    d.set_breaker(7, None)
    with pytest.raises(BreakerNotSet):
        d.set_breaker_repairing(7, "reset")
    with pytest.raises(BreakerNotSet):
        d.watch_breaker(7, seen.append)
    with pytest.raises(PluginNotLoaded):
        d.set_breaker_repairing(8, "reset")
    await d.aclose()
