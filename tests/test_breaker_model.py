"""The circuit breaker under a hypothesis state machine: both twins, on both loops, and
a naive reference model take the same steps - dispatch, let the worker run, advance the
clock, an operator's transition - and must agree on every status, state and counter.

The reference keeps every recorded outcome in a plain list and recomputes each window
from it (no rings, no buckets, no running totals), and models the dispatcher's queue
and its worker's groups of ``record_every`` frames, so a window boundary bug or a twin
that groups, gates or counts differently shows up as a divergence (armeria#2761).
Hypothesis has no async rules: each twin runs its own event loop from ordinary rules.
"""

from __future__ import annotations

import logging
import math
import random
from typing import Any

import pytest
from breaker_helpers import FakeClock, Outcomes
from conftest import available_impls, loop_factory
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule
from nyx_helpers import DATA, info

from nyxplug import BreakerConfig, BreakerState, DispatchStatus

CAPACITY = 6
SEED = 19
CLOSED, OPEN, HALF_OPEN = BreakerState.CLOSED, BreakerState.OPEN, BreakerState.HALF_OPEN
DISABLED, FORCED_OPEN = BreakerState.DISABLED, BreakerState.FORCED_OPEN
METRICS_ONLY = BreakerState.METRICS_ONLY
PASSING = (CLOSED, DISABLED, METRICS_ONLY)


class Twin:
    """One dispatcher twin on its own event loop, with one plugin behind a breaker."""

    def __init__(self, mod: Any, loop_kind: str, config: BreakerConfig) -> None:
        self.mod = mod
        self.loop = loop_factory(loop_kind)()
        self.clock = FakeClock()
        self.d = mod.Dispatcher()
        self.loop.run_until_complete(
            self.d.load_plugin(info(7), Outcomes(self.clock), capacity=CAPACITY)
        )
        self.d.set_breaker(7, config, clock=self.clock, random=random.Random(SEED).random)
        self.header = mod.PluginHeader(7)

    def dispatch(self, payload: bytes) -> DispatchStatus:
        return self.d.try_dispatch(DATA, self.header, payload)

    def pump(self) -> None:
        self.loop.run_until_complete(self.d.wait_idle(7))

    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)

    def operator(self, state: BreakerState) -> None:
        self.d.set_breaker_state(7, state)

    def view(self) -> dict[str, Any]:
        stats = self.d.breaker_stats(7)
        plugin = self.d.plugin_stats(7)
        return {
            **{name: getattr(stats, name) for name in stats.__struct_fields__},
            "processed": plugin.messages_processed,
            "queue_depth": plugin.queue_depth,
            "circuit_open": plugin.circuit_open,
            "would_block": plugin.would_block,
        }

    def close(self) -> None:
        self.loop.run_until_complete(self.d.aclose())
        self.loop.close()


class Reference:
    """The breaker's specification, naively: every outcome kept, windows recomputed."""

    def __init__(self, config: BreakerConfig) -> None:
        self.c = config
        self.random = random.Random(SEED).random
        self.t = FakeClock().t
        self.state = CLOSED
        self.epoch = 1  # set_breaker's first epoch
        self.stale_until = 0
        self.outcomes: list[tuple[float, int, int]] = []  # (time, failed, slow), oldest first
        self.open_until = 0.0
        self.trips = self.consecutive = 0
        self.admitted = self.recorded = self.probe_failed = self.probe_slow = 0
        self.deadline: float | None = None
        self.refused = {"open": 0, "forced": 0, "half": 0}
        self.fresh = self.stale = 0
        self.queue: list[bytes] = []
        self.processed = self.would_block = 0

    # -- the breaker ------------------------------------------------------------------

    def to(self, state: BreakerState) -> None:
        self.state = state
        self.epoch += 1
        self.stale_until = self.processed + len(self.queue)
        self.admitted = self.recorded = self.probe_failed = self.probe_slow = 0
        self.deadline = None
        if state == OPEN:
            c = self.c
            self.trips += 1
            self.consecutive += 1
            wait = min(
                c.open_wait * c.open_wait_multiplier ** (self.consecutive - 1), c.max_open_wait
            )
            self.open_until = self.t + wait * (1.0 + c.jitter * (2.0 * self.random() - 1.0))
        elif state in PASSING:
            self.outcomes = []

    def window(self) -> list[tuple[float, int, int]]:
        if self.c.window == "count":
            return self.outcomes[-self.c.window_size :] if self.outcomes else []
        oldest = math.floor(self.t) - self.c.window_size
        return [o for o in self.outcomes if math.floor(o[0]) > oldest]

    def minimum(self) -> int:
        c = self.c
        return min(c.minimum_calls, c.window_size) if c.window == "count" else c.minimum_calls

    def advance_due(self) -> None:
        if self.state == OPEN and self.t >= self.open_until:
            self.to(HALF_OPEN)
        if self.state == HALF_OPEN and self.deadline is not None and self.t >= self.deadline:
            self.probe_failed += self.admitted - self.recorded
            self.recorded = self.admitted
            self.verdict()

    def verdict(self) -> None:
        n = self.recorded
        tripped = (
            self.probe_failed / n >= self.c.failure_rate
            or self.probe_slow / n >= self.c.slow_call_rate
        )
        self.to(OPEN if tripped else CLOSED)

    def admit(self) -> str | None:
        if self.state == FORCED_OPEN:
            self.refused["forced"] += 1
            return "forced"
        self.advance_due()
        if self.state == OPEN:
            self.refused["open"] += 1
            return "open"
        if self.state == HALF_OPEN:
            if self.admitted < self.c.half_open_probes:
                if not self.admitted:
                    self.deadline = self.t + self.c.half_open_deadline
                self.admitted += 1
                return None
            self.refused["half"] += 1
            return "half"
        return None

    def record(self, first: int, n: int, failed: int, elapsed: float) -> None:
        self.advance_due()
        if self.state == DISABLED:
            return
        stale = min(max(self.stale_until - first + 1, 0), n)
        total = n
        if stale:
            self.stale += stale
            if stale == n:
                return
            n -= stale
            failed = n if failed else 0
        if self.state not in PASSING and self.state != HALF_OPEN:
            self.stale += n
            return
        slow = int(elapsed > self.c.slow_call_duration * total)
        self.fresh += n
        if self.state == HALF_OPEN:
            self.recorded += n
            self.probe_failed += failed
            self.probe_slow += n * slow
            if self.recorded >= self.c.half_open_probes:
                self.verdict()
            return
        self.outcomes += [(self.t, 0, slow)] * (n - failed) + [(self.t, 1, slow)] * failed
        window = self.window()
        calls = len(window)
        if calls < self.minimum():
            return
        failures = sum(o[1] for o in window)
        slows = sum(o[2] for o in window)
        if failures / calls >= self.c.failure_rate or slows / calls >= self.c.slow_call_rate:
            if self.state == CLOSED:
                self.to(OPEN)
        elif self.state == CLOSED:
            self.consecutive = 0

    # -- the dispatcher and its worker ---------------------------------------------------

    def dispatch(self, payload: bytes) -> DispatchStatus:
        if self.state not in PASSING and self.admit() is not None:
            return DispatchStatus.CIRCUIT_OPEN
        if len(self.queue) >= CAPACITY:
            self.would_block += 1
            if self.state == HALF_OPEN and self.admitted > self.recorded:
                self.admitted -= 1  # the probe's permit goes back
                if not self.admitted:
                    self.deadline = None
            return DispatchStatus.WOULD_BLOCK
        self.queue.append(payload)
        return DispatchStatus.OK

    def pump(self) -> None:
        first = 0
        since = self.t
        while self.queue:
            payload = self.queue.pop(0)
            self.processed += 1
            if not first:
                first, failed, epoch = self.processed, 0, self.epoch
                stop = first + self.c.record_every - 1
                if first <= self.stale_until < stop:
                    stop = self.stale_until
            if payload.startswith(b"slow"):
                self.t += float(payload.split(b":")[1])
            failed += payload.startswith((b"fail", b"slowfail"))
            if self.processed >= stop or self.epoch != epoch:
                self.record(first, self.processed - first + 1, failed, self.t - since)
                since = self.t
                first = 0
        if first:
            self.record(first, self.processed - first + 1, failed, self.t - since)

    def view(self) -> dict[str, Any]:
        self.advance_due()
        state = self.state
        if state == HALF_OPEN:
            calls, failures, slow = self.recorded, self.probe_failed, self.probe_slow
            verdict = calls > 0
        else:
            window = self.window()
            calls = len(window)
            failures = sum(o[1] for o in window)
            slow = sum(o[2] for o in window)
            verdict = calls >= self.minimum() and state != DISABLED
        if state == OPEN:
            retry_after: float | None = max(self.open_until - self.t, 0.0)
        elif state == HALF_OPEN and self.deadline is not None:
            retry_after = max(self.deadline - self.t, 0.0)
        else:
            retry_after = None
        refused = self.refused
        return {
            "state": state,
            "epoch": self.epoch,
            "calls": calls,
            "failures": failures,
            "slow_calls": slow,
            "failure_rate": failures / calls if verdict else None,
            "slow_call_rate": slow / calls if verdict else None,
            "retry_after": retry_after,
            "trips": self.trips,
            "consecutive_trips": self.consecutive,
            "probes_admitted": self.admitted,
            "probes_recorded": self.recorded,
            "refused_open": refused["open"],
            "refused_forced_open": refused["forced"],
            "refused_half_open": refused["half"],
            "outcomes_recorded": self.fresh,
            "stale_outcomes": self.stale,
            "processed": self.processed,
            "queue_depth": len(self.queue),
            "circuit_open": sum(refused.values()),
            "would_block": self.would_block,
        }


CONFIGS = st.builds(
    BreakerConfig,
    window=st.sampled_from(["count", "time"]),
    window_size=st.integers(1, 8),
    minimum_calls=st.integers(1, 10),
    failure_rate=st.sampled_from([0.1, 0.25, 0.5, 1.0]),
    slow_call_rate=st.sampled_from([0.5, 1.0]),
    slow_call_duration=st.just(1.0),
    open_wait=st.sampled_from([1.0, 2.5]),
    open_wait_multiplier=st.sampled_from([1.0, 2.0]),
    max_open_wait=st.just(6.0),
    jitter=st.sampled_from([0.0, 0.1]),
    half_open_probes=st.integers(1, 4),
    half_open_deadline=st.sampled_from([0.5, 3.0]),
    record_every=st.integers(1, 4),
)
PAYLOADS = st.sampled_from(
    [b"ok", b"ok", b"fail", b"fail", b"fail", b"slow:2.0", b"slow:0.5", b"slowfail:3.0"]
)
#: Operator actions are rare (None: none), so most runs trip and recover by themselves.
OPERATOR = st.sampled_from([None] * 8 + [CLOSED, DISABLED, FORCED_OPEN, METRICS_ONLY])


class BreakerMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.twins: list[tuple[str, Twin]] = []
        self.ref: Reference | None = None

    @initialize(config=CONFIGS)
    def start(self, config: BreakerConfig) -> None:
        for mod in available_impls():
            for kind in ("asyncio", "uvloop"):
                self.twins.append((f"{mod.__name__}/{kind}", Twin(mod, kind, config)))
        self.ref = Reference(config)

    @rule(payloads=st.lists(PAYLOADS, min_size=1, max_size=8))
    def dispatch(self, payloads: list[bytes]) -> None:
        assert self.ref is not None
        for payload in payloads:
            expected = self.ref.dispatch(payload)
            for name, twin in self.twins:
                assert twin.dispatch(payload) is expected, (name, payload)

    @rule()
    def pump(self) -> None:
        assert self.ref is not None
        self.ref.pump()
        for _name, twin in self.twins:
            twin.pump()

    @rule(payloads=st.lists(PAYLOADS, min_size=1, max_size=CAPACITY))
    def dispatch_and_pump(self, payloads: list[bytes]) -> None:
        self.dispatch(payloads)
        self.pump()

    @rule(seconds=st.sampled_from([0.25, 0.5, 1.0, 2.5, 7.0]))
    def advance(self, seconds: float) -> None:
        assert self.ref is not None
        self.ref.t += seconds
        for _name, twin in self.twins:
            twin.advance(seconds)

    @rule(state=OPERATOR)
    def operator(self, state: BreakerState | None) -> None:
        assert self.ref is not None
        if state is None:
            return
        self.ref.to(state)
        if state == CLOSED:
            self.ref.consecutive = 0
        for _name, twin in self.twins:
            twin.operator(state)

    @invariant()
    def agree(self) -> None:
        if self.ref is None:
            return
        expected = self.ref.view()
        for name, twin in self.twins:
            got = twin.view()
            diff = {k: (got[k], expected[k]) for k in expected if got[k] != expected[k]}
            assert not diff, (name, diff)

    def teardown(self) -> None:
        for _name, twin in self.twins:
            twin.close()


@pytest.fixture(autouse=True)
def quiet_handler_errors(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.CRITICAL, logger="nyxplug")


BreakerMachine.TestCase.settings = settings(
    max_examples=100,
    stateful_step_count=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
test_breaker_twins_agree_with_the_reference = BreakerMachine.TestCase
