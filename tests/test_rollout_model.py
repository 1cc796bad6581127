"""The rollout controller under a hypothesis state machine: a real ``Dispatcher`` (both
twins, on both loops) with a ``RolloutController`` on a fake clock, and a naive reference
model of the controller and the router, take the same steps - dispatch keyed and keyless
frames to seeded failing versions, let the workers run, advance the clock, tick, an operator's
action - and must agree on every state, weight, event and counter.

The reference keeps every lane's outcomes as plain lists, routes each key with the
specified hash formula (``route_point`` against ``weight / 100 * 2**53``), each keyless
frame with the specified error diffusion (an accumulator the weight steps keep) and re-reads
the state machine from ``RolloutController``'s documentation; the invariants are the
issue's: terminal states never change, the candidate's weight only rises while the
rollout moves, every frame is accounted for per version, operator actions are accepted
in every non-terminal state and refused with ``RolloutStateError`` in a terminal one,
and no state outlives its deadline. Hypothesis has no async rules: each twin runs its
own event loop from ordinary rules (like ``test_breaker_model.py``).
"""

from __future__ import annotations

import logging
import random
import re
from typing import Any

import pytest
from breaker_helpers import FakeClock
from conftest import available_impls, loop_factory
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)
from nyx_helpers import DATA, info

from nyxplug import route_point
from nyxplug.plugins.errors import RolloutStateError
from nyxplug.plugins.rollout import RolloutConfig, RolloutController, RolloutState

CAPACITY = 100_000  # no backpressure here: test_resilience_stress.py has it
KEYS = 500  # route keys are drawn from 0..KEYS-1, so sessions repeat
KEYLESS = 0.25  # the share of frames sent without a key
ACTIONS = ("pause", "resume", "promote", "rollback", "abort")
#: Operator actions are rarer than traffic (None: none), so runs get past a few checks;
#: pause and resume come most often, as they do not end the rollout.
OPERATOR = st.sampled_from([None] * 6 + ["pause", "resume", "pause", "resume", *ACTIONS])
TERMINAL = {"succeeded", "rolled_back", "aborted"}
#: The events that start a state, and so its deadline.
ENTERS = {"started", "step", "paused", "resumed", "awaiting_promotion", "promoted"}


class VersionFailed(Exception):
    """What a version's handler raises for a frame whose payload fails that version."""


def handler(version: bytes) -> Any:
    """Fails a frame whose payload names ``version`` (``b"s"`` stable, ``b"c"``
    candidate, ``b"sc"`` both)."""

    def handle(msg: Any) -> None:
        if version in msg.payload:
            raise VersionFailed(msg.payload)

    return handle


class Twin:
    """One dispatcher twin on its own event loop: plugin 7 with "base" and "v2" lanes,
    and a controller moving it from one to the other."""

    def __init__(self, mod: Any, loop_kind: str, config: RolloutConfig) -> None:
        self.loop = loop_factory(loop_kind)()
        self.clock = FakeClock()
        self.d = mod.Dispatcher()
        self.loop.run_until_complete(self.d.load_plugin(info(7), handler(b"s"), capacity=CAPACITY))
        self.loop.run_until_complete(self.d.load_version(7, "v2", handler(b"c"), capacity=CAPACITY))
        self.header = mod.PluginHeader(7)
        self.ctl = RolloutController(self.d, 7, "base", "v2", config, clock=self.clock)
        self.ctl.start()
        self.weights: list[float] = [self.d.route_info(7).weight]
        self.ended: tuple[RolloutState, int] | None = None

    def dispatch(self, frames: list[tuple[int | None, bytes]]) -> None:
        for key, payload in frames:
            self.d.dispatch_nowait(DATA, self.header, payload, key=key)
        self.note_route()

    def pump(self) -> None:
        self.loop.run_until_complete(self.d.wait_idle())

    def note_route(self) -> None:
        """Record the candidate's weight while a rollout routes (for the rising check)."""
        route = self.d.route_info(7)
        if route.candidate is not None:
            self.weights.append(route.weight)

    def close(self) -> None:
        self.loop.run_until_complete(self.d.aclose())
        self.loop.close()


class Reference:
    """The controller and the router, naively: lists of outcomes, the documented rules."""

    def __init__(self, config: RolloutConfig, t0: float) -> None:
        self.c = config
        self.t = self.t0 = t0
        self.state = "progressing"
        self.step = self.passes = self.failed = self.inconclusive = 0
        self.next_check = t0 + config.interval
        assert config.deadline is not None
        self.deadline = t0 + config.deadline
        # the router: (stable, candidate or None, weight), and the keyless frames'
        # accumulator (kept while stable and candidate stay)
        self.route: tuple[str, str | None, float] = ("base", "v2", config.steps[0])
        self.acc = 0
        self.queued: dict[str, list[bool]] = {"base": [], "v2": []}  # failed?
        self.done: dict[str, list[bool]] = {"base": [], "v2": []}
        self.routed = {"base": 0, "v2": 0}
        self.sent = 0
        self.snapshot = self.counts()
        self.events: list[tuple[float, str, str, float, str]] = []
        self.emit(t0, "started", "base -> v2")

    # -- the router and the lanes ----------------------------------------------------

    def dispatch(self, frames: list[tuple[int | None, bytes]]) -> None:
        stable, candidate, weight = self.route
        threshold = round(weight / 100 * 2**53)
        for key, payload in frames:
            lane = stable
            if candidate is not None:
                assert self.c.salt is not None
                if key is None:
                    self.acc += threshold
                    if self.acc >= 2**53:
                        self.acc -= 2**53
                        lane = candidate
                elif route_point(key, self.c.salt) < threshold:
                    lane = candidate
                self.routed[lane] += 1
            self.queued[lane].append((b"s" if lane == "base" else b"c") in payload)
            self.sent += 1

    def pump(self) -> None:
        for lane, queue in self.queued.items():
            self.done[lane] += queue
            queue.clear()

    def counts(self) -> dict[str, tuple[int, int]]:
        return {lane: (len(done), sum(done)) for lane, done in self.done.items()}

    # -- the controller --------------------------------------------------------------

    @property
    def weight(self) -> float:
        if self.state in TERMINAL or self.state == "promoted":
            return 0.0
        return self.c.steps[self.step]

    def emit(self, at: float, kind: str, detail: str) -> None:
        self.events.append((round(at - self.t0, 9), kind, self.state, self.weight, detail))

    def enter(self, at: float, state: str, kind: str, detail: str) -> None:
        self.state = state
        if state == "promoted":
            self.deadline = at + self.c.rollback_window
        elif state not in TERMINAL:
            assert self.c.deadline is not None
            self.deadline = at + self.c.deadline
        self.emit(at, kind, detail)

    def promote(self, at: float, why: str) -> None:
        self.route, self.acc = ("v2", None, 0.0), 0
        self.enter(at, "promoted", "promoted", f"{why}; base kept warm")

    def end(self, at: float, state: str, kind: str, why: str) -> None:
        self.route, self.acc = ("base", None, 0.0), 0
        self.enter(at, state, kind, why)

    def judge(self, at: float) -> None:
        now = self.counts()
        (cf, ce), (sf, se) = (
            (now[lane][0] - self.snapshot[lane][0], now[lane][1] - self.snapshot[lane][1])
            for lane in ("v2", "base")
        )
        self.snapshot = now
        summary = f"failed: candidate {ce}/{cf}, stable {se}/{sf}"
        c = self.c
        why = ""
        if cf < c.min_frames:
            verdict, why = "inconclusive", f"fewer than {c.min_frames} frames"
        elif ce / cf > c.max_error_rate:
            verdict, why = "fail", f"error rate above {c.max_error_rate:g}"
        elif sf >= c.min_frames and ce / cf > se / sf + c.max_error_rate_over_stable:
            verdict, why = "fail", f"error rate above stable + {c.max_error_rate_over_stable:g}"
        else:
            verdict = "pass"
        if verdict == "fail":
            self.failed += 1
            self.emit(
                at, "check_failed", f"{self.failed} of {c.threshold} to roll back: {why}; {summary}"
            )
            if self.failed >= c.threshold:
                self.end(at, "rolled_back", "rolled_back", "failed checks")
        elif verdict == "inconclusive":
            self.inconclusive += 1
            limit = c.inconclusive_limit
            count = (
                f"{self.inconclusive} of {limit} to pause"
                if self.state == "progressing"
                else f"{self.inconclusive} in a row"
            )
            self.emit(at, "inconclusive", f"{count}: {why}; {summary}")
            if self.inconclusive >= limit and self.state == "progressing":
                self.enter(at, "paused", "paused", "inconclusive checks")
        else:
            self.inconclusive = 0
            self.emit(at, "check_passed", summary)
            if self.state != "progressing":
                return
            self.passes += 1
            if self.passes < c.iterations:
                return
            self.passes = 0
            if self.step + 1 < len(c.steps):
                self.step += 1
                self.route = ("base", "v2", c.steps[self.step])  # acc goes on
                self.enter(at, "progressing", "step", f"step {self.step + 1}")
            elif c.auto_promote:
                self.promote(at, "checks passed")
            else:
                self.enter(at, "awaiting_promotion", "awaiting_promotion", "last step")

    def tick(self) -> None:
        while self.state not in TERMINAL and self.state != "promoted":
            if self.t < self.next_check:
                break
            self.judge(self.next_check)
            self.next_check += self.c.interval
        if self.state not in TERMINAL and self.t >= self.deadline:
            if self.state == "promoted":
                self.enter(self.t, "succeeded", "finalised", "rollback window over")
            else:
                spent = f"{self.c.deadline:g}s in {self.state}"
                self.end(self.t, "rolled_back", "deadline", spent)

    def operator(self, action: str) -> bool:
        """The action's effect; False when a terminal state refuses it. What is due by
        the clock is taken first."""
        self.tick()
        if self.state in TERMINAL:
            return False
        if action == "pause" and self.state in ("progressing", "awaiting_promotion"):
            self.enter(self.t, "paused", "paused", "by operator")
        elif action == "resume" and self.state == "paused":
            self.inconclusive = self.passes = 0
            self.enter(self.t, "progressing", "resumed", "by operator")
        elif action == "promote" and self.state != "promoted":
            self.promote(self.t, "by operator")
        elif action == "rollback":
            self.end(self.t, "rolled_back", "rolled_back", "by operator")
        elif action == "abort":
            self.end(self.t, "aborted", "aborted", "by operator")
        return True


STEPS = st.sampled_from([(5.0,), (5.0, 25.0, 50.0), (10.0, 50.0), (100.0,), (1.0, 99.0)])
CONFIGS = st.builds(
    RolloutConfig,
    steps=STEPS,
    iterations=st.integers(1, 2),
    interval=st.sampled_from([1.0, 2.5]),
    min_frames=st.integers(1, 5),
    max_error_rate=st.sampled_from([0.0, 0.05, 0.1, 0.5]),
    max_error_rate_over_stable=st.sampled_from([0.0, 0.05]),
    threshold=st.integers(1, 3),
    inconclusive_limit=st.integers(1, 3),
    auto_promote=st.booleans(),
    deadline=st.sampled_from([None, None, 12.0, 2.5]),
    rollback_window=st.sampled_from([0.0, 0.5, 3.0]),
    salt=st.integers(0, 2**64 - 1),
)


class RolloutMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.twins: list[tuple[str, Twin]] = []
        self.ref: Reference | None = None

    @initialize(config=CONFIGS)
    def start(self, config: RolloutConfig) -> None:
        for mod in available_impls():
            for kind in ("asyncio", "uvloop"):
                self.twins.append((f"{mod.__name__}/{kind}", Twin(mod, kind, config)))
        self.ref = Reference(config, self.twins[0][1].clock())

    @rule(
        count=st.integers(1, 60),
        seed=st.integers(0, 2**32 - 1),
        candidate_fails=st.sampled_from([0.0, 0.0, 0.02, 0.2, 1.0]),
        stable_fails=st.sampled_from([0.0, 0.0, 0.02, 0.2]),
        pump=st.booleans(),
    )
    def dispatch(
        self, count: int, seed: int, candidate_fails: float, stable_fails: float, pump: bool
    ) -> None:
        """Keyed and keyless frames; a seeded draw decides which version each frame would
        fail on."""
        assert self.ref is not None
        rng = random.Random(seed)
        frames: list[tuple[int | None, bytes]] = []
        for _ in range(count):
            payload = b"s" if rng.random() < stable_fails else b""
            payload += b"c" if rng.random() < candidate_fails else b""
            key = None if rng.random() < KEYLESS else rng.randrange(KEYS)
            frames.append((key, payload))
        self.ref.dispatch(frames)
        for _name, twin in self.twins:
            twin.dispatch(frames)
        if pump:
            self.pump()

    @rule(
        count=st.integers(0, 200),
        seed=st.integers(0, 2**32 - 1),
        candidate_fails=st.sampled_from([0.0, 0.0, 0.0, 0.02, 0.2, 1.0]),
    )
    def one_interval(self, count: int, seed: int, candidate_fails: float) -> None:
        """The common case, so runs get far: an interval's traffic, handled, then checked."""
        assert self.ref is not None
        if count:
            self.dispatch(count, seed, candidate_fails, 0.02, True)
        self.advance(self.ref.c.interval, True)

    @rule()
    def pump(self) -> None:
        assert self.ref is not None
        self.ref.pump()
        for _name, twin in self.twins:
            twin.pump()

    @rule(seconds=st.sampled_from([0.25, 0.5, 1.0, 2.5, 7.0]), tick=st.booleans())
    def advance(self, seconds: float, tick: bool) -> None:
        assert self.ref is not None
        self.ref.t += seconds
        for _name, twin in self.twins:
            twin.clock.advance(seconds)
        if tick:
            self.tick()

    @rule()
    def tick(self) -> None:
        assert self.ref is not None
        self.ref.tick()
        for name, twin in self.twins:
            twin.ctl.tick()
            twin.note_route()
            self.check_deadline(name, twin)

    @rule(action=OPERATOR)
    def operator(self, action: str | None) -> None:
        assert self.ref is not None
        if action is None:
            return
        accepted = self.ref.operator(action)
        state = self.ref.state
        for name, twin in self.twins:
            if accepted:
                getattr(twin.ctl, action)()
            else:
                with pytest.raises(
                    RolloutStateError,
                    match=rf"^Expected a rollout that allows {action}\(\), got one "
                    rf"{re.escape(state)} - for plugin 7; ",
                ):
                    getattr(twin.ctl, action)()
            twin.note_route()
            assert (twin.ctl.state.value in TERMINAL) is (self.ref.state in TERMINAL), name

    @precondition(lambda self: self.ref is not None and self.ref.state == "paused")
    @rule()
    def resume_paused(self) -> None:
        """Resume is only interesting from ``paused``: offered whenever it is."""
        self.operator("resume")

    def check_deadline(self, name: str, twin: Twin) -> None:
        """After a tick no state is older than its deadline (the promoted one's is the
        rollback window)."""
        ctl = twin.ctl
        if ctl.state.value in TERMINAL:
            return
        entered = max(e.at for e in ctl.events if e.kind in ENTERS)
        limit = ctl.config.rollback_window if ctl.state is RolloutState.PROMOTED else None
        limit = ctl.config.deadline if limit is None else limit
        assert limit is not None and self.ref is not None
        assert twin.clock() - self.ref.t0 - entered < limit, (name, ctl.events)

    @invariant()
    def agree(self) -> None:
        ref = self.ref
        if ref is None:
            return
        counts = ref.counts()
        for name, twin in self.twins:
            ctl = twin.ctl
            got = [(e.at, e.kind, e.state.value, e.weight, e.detail) for e in ctl.events]
            assert got == ref.events, (name, ctl.events, ref.events)
            assert ctl.state.value == ref.state and ctl.weight == ref.weight, name
            times = [e.at for e in ctl.events]
            assert times == sorted(times), (name, ctl.events)  # events in time order
            route = twin.d.route_info(7)
            stable, candidate, weight = ref.route
            assert (route.stable, route.candidate, route.weight) == (stable, candidate, weight)
            # every frame accounted for, per version and in total
            stats = twin.d.version_stats(7)
            assert route.routed == ref.routed, name
            for lane, s in stats.items():
                assert (s.messages_processed, s.errors) == counts[lane], (name, lane)
                assert s.queue_depth == len(ref.queued[lane]), (name, lane)
            assert sum(s.messages_processed + s.queue_depth for s in stats.values()) == ref.sent
            assert twin.d.dispatch_stats().frames_dispatched == ref.sent, name

    @invariant()
    def terminal_states_never_change(self) -> None:
        for name, twin in self.twins:
            ctl = twin.ctl
            if twin.ended is not None:
                assert (ctl.state, len(ctl.events)) == twin.ended, name
            elif ctl.state.value in TERMINAL:
                twin.ended = (ctl.state, len(ctl.events))

    @invariant()
    def weight_only_rises_while_the_rollout_moves(self) -> None:
        for name, twin in self.twins:
            weights = twin.weights
            assert weights == sorted(weights), (name, weights)

    def teardown(self) -> None:
        if self.ref is not None:
            event(f"final state {self.ref.state}")
            for kind in sorted({e[1] for e in self.ref.events}):
                event(f"event {kind}")
        for _name, twin in self.twins:
            twin.close()


@pytest.fixture(autouse=True)
def quiet_handler_errors(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.CRITICAL, logger="nyxplug")


RolloutMachine.TestCase.settings = settings(
    max_examples=200,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
test_controller_twins_agree_with_the_reference = RolloutMachine.TestCase
