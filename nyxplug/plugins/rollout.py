"""The rollout controller: moves one plugin's traffic from a stable to a candidate version.

It drives ``Dispatcher.set_route`` (issue 19 item 5; the study is
``reference/operations.md`` section 2) and judges the candidate from the dispatcher's
per-version counters, once per ``interval``, on an injected clock: ``tick()`` does
everything that is due, so tests and simulations need no sleeps and no event loop.

Each interval the candidate's error rate is checked against an absolute limit and
against the stable version's in the same interval (Kayenta's baseline idea at the cost
of one subtraction). With ``max_slow_rate`` its slow-call rate is checked too, as the
candidate's breaker measures it (one clock read per worker group, never per frame), and
against the stable version's breaker when it has one. Fewer than ``min_frames``
candidate frames is *inconclusive* - never a pass (flagger#1011, #1581;
argo-rollouts#3850): ``inconclusive_limit`` of them in a row pause the rollout.
``threshold`` failed checks roll it back. Every state has a deadline, and abort, pause,
resume, promote and rollback are accepted in every state that is not terminal; after a
promotion the old version stays loaded (``promoted``, for ``rollback_window`` seconds)
so a rollback is one route change.

Canary, blue-green and a fixed hash split are configurations of one machine
(``RolloutConfig.canary`` / ``blue_green`` / ``split``).
"""

from __future__ import annotations

import enum
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Final

from .._breaker import BreakerState
from .._routing import MatchRule
from .errors import RolloutStateError

__all__ = (
    "RolloutConfig",
    "RolloutController",
    "RolloutEvent",
    "RolloutState",
    "Rollouts",
)


class RolloutState(enum.Enum):
    """Where a rollout is. The last three are terminal."""

    PROGRESSING = "progressing"
    PAUSED = "paused"
    AWAITING_PROMOTION = "awaiting_promotion"
    PROMOTED = "promoted"
    SUCCEEDED = "succeeded"
    ROLLED_BACK = "rolled_back"
    ABORTED = "aborted"


TERMINAL: Final = frozenset(
    {RolloutState.SUCCEEDED, RolloutState.ROLLED_BACK, RolloutState.ABORTED}
)
_OPEN = frozenset({BreakerState.OPEN, BreakerState.FORCED_OPEN})


def _check_number(name: str, value: object, low: float, high: float = math.inf) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"Expected `{name}` to be a number, got {type(value).__name__}")
    if not low <= value <= high or math.isnan(value):
        raise ValueError(
            f"Expected `{name}` in {low:g}..{high:g}, got {value!r} - in RolloutConfig"
        )
    return float(value)


def _check_count(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"Expected `{name}` to be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"Expected `{name}` >= 1, got {value} - in RolloutConfig")
    return value


@dataclass(frozen=True, kw_only=True)
class RolloutConfig:
    """How a rollout advances and what it checks.

    ``steps`` are the candidate's weights in percent, rising; each needs ``iterations``
    passing intervals. After the last step the candidate is promoted (``auto_promote``)
    or waits in ``awaiting_promotion`` for an operator. ``deadline`` bounds the time
    in every state (default ``interval * (iterations + threshold + inconclusive_limit)``);
    at a deadline the rollout rolls back. Error rates are fractions (0.01 = 1 %).

    ``max_slow_rate`` (None: not checked) bounds the candidate's share of slow calls -
    slower than its breaker's ``slow_call_duration`` - over that breaker's window at each
    check (a time window of ``interval`` seconds judges exactly the interval). The
    breaker times calls once per worker group, so the controller adds no clock read per
    frame; the candidate must have one (``Dispatcher.set_breaker(..., version=...)``,
    ``BreakerState.METRICS_ONLY`` if it should only measure). A window below its
    ``minimum_calls`` is inconclusive. When the stable version has a breaker with a
    verdict too, the candidate's rate must also stay within
    ``max_slow_rate_over_stable`` of it.
    """

    steps: tuple[float, ...] = (5.0, 10.0, 25.0, 50.0)
    iterations: int = 1
    interval: float = 60.0
    min_frames: int = 100
    max_error_rate: float = 0.01
    max_error_rate_over_stable: float = 0.005
    max_slow_rate: float | None = None
    max_slow_rate_over_stable: float = 0.005
    threshold: int = 2
    inconclusive_limit: int = 3
    auto_promote: bool = True
    deadline: float | None = None
    rollback_window: float = 600.0
    salt: int | None = None
    rules: tuple[MatchRule, ...] = ()
    shadow: bool = False

    def __post_init__(self) -> None:
        steps = tuple(self.steps)
        if not steps:
            raise ValueError("Expected at least one step in `steps`, got none - in RolloutConfig")
        for weight in steps:
            _check_number("steps", weight, 0.0, 100.0)
        rules = tuple(self.rules)
        for rule in rules:
            if not isinstance(rule, MatchRule):
                raise TypeError(f"Expected `rules` of MatchRule, got {type(rule).__name__}")
        floor_ok = steps[0] > 0 or (steps[0] == 0 and (bool(rules) or self.shadow))
        if any(b <= a for a, b in zip(steps, steps[1:], strict=False)) or not floor_ok:
            raise ValueError(
                f"Expected `steps` rising above 0 (from 0 only with `rules` or `shadow`), got "
                f"{steps!r} - "
                "in RolloutConfig"
            )
        object.__setattr__(self, "steps", steps)
        object.__setattr__(self, "rules", rules)
        _check_count("iterations", self.iterations)
        _check_number("interval", self.interval, 1e-9)
        _check_count("min_frames", self.min_frames)
        _check_number("max_error_rate", self.max_error_rate, 0.0, 1.0)
        _check_number("max_error_rate_over_stable", self.max_error_rate_over_stable, 0.0, 1.0)
        if self.max_slow_rate is not None:
            _check_number("max_slow_rate", self.max_slow_rate, 0.0, 1.0)
        _check_number("max_slow_rate_over_stable", self.max_slow_rate_over_stable, 0.0, 1.0)
        _check_count("threshold", self.threshold)
        _check_count("inconclusive_limit", self.inconclusive_limit)
        _check_number("rollback_window", self.rollback_window, 0.0)
        if self.deadline is None:
            spread = self.iterations + self.threshold + self.inconclusive_limit
            object.__setattr__(self, "deadline", self.interval * spread)
        else:
            _check_number("deadline", self.deadline, self.interval)

    @classmethod
    def canary(cls, **options: Any) -> RolloutConfig:
        """Raise the candidate's share step by step (default 5, 10, 25, 50 %), then promote."""
        return cls(**options)

    @classmethod
    def blue_green(
        cls, *, iterations: int = 3, mirror: bool = False, **options: Any
    ) -> RolloutConfig:
        """Switch all traffic at once, check ``iterations`` intervals, then promote; the old
        version stays warm for ``rollback_window``. With ``mirror`` the candidate takes no
        live traffic while it is checked: it is judged on shadow copies of every frame
        (only for idempotent plugins), and promotion is the switch."""
        if mirror:
            return cls(steps=(0.0,), shadow=True, iterations=iterations, **options)
        return cls(steps=(100.0,), iterations=iterations, **options)

    @classmethod
    def ab(
        cls, rules: Iterable[MatchRule], *, iterations: int = 3, **options: Any
    ) -> RolloutConfig:
        """A/B: only the frames ``rules`` match go to the versions they name (weights are
        ignored, Flagger's rule) for ``iterations`` checked intervals, then promote."""
        return cls(steps=(0.0,), rules=tuple(rules), iterations=iterations, **options)

    @classmethod
    def split(cls, weight: float, *, hold: float, **options: Any) -> RolloutConfig:
        """A fixed hash split at ``weight`` % for ``hold`` seconds, checked all along; it
        never promotes by itself, and rolls back at the end unless promoted."""
        interval = options.get("interval", cls.interval)
        return cls(steps=(weight,), auto_promote=False, deadline=max(hold, interval), **options)


@dataclass(frozen=True)
class RolloutEvent:
    """One thing the controller did, ``at`` seconds after ``start()``."""

    at: float
    kind: str
    state: RolloutState
    weight: float
    detail: str = ""

    def __str__(self) -> str:
        text = f"{self.at:.3f} {self.kind} {self.state.value} weight={self.weight:g}"
        return f"{text} {self.detail}" if self.detail else text


@dataclass
class _Window:
    frames: int = 0
    errors: int = 0

    def rate(self) -> float:
        return self.errors / self.frames if self.frames else 0.0


@dataclass
class RolloutController:
    """Moves ``plugin_id`` from version ``stable`` to ``candidate`` (both loaded: see
    ``Dispatcher.load_version``). Call ``start()``, then ``tick()`` whenever convenient
    (a timer, or a test's fake clock); read ``state`` and ``events``.
    """

    dispatcher: Any
    plugin_id: int
    stable: str
    candidate: str
    config: RolloutConfig = field(default_factory=RolloutConfig)
    clock: Callable[[], float] = time.monotonic
    on_event: Callable[[RolloutEvent], object] | None = None

    state: RolloutState = field(init=False, default=RolloutState.PROGRESSING)
    events: list[RolloutEvent] = field(init=False, default_factory=list)
    step: int = field(init=False, default=0)
    failed_checks: int = field(init=False, default=0)
    inconclusive: int = field(init=False, default=0)
    _started: float | None = field(init=False, default=None)
    _passes: int = field(init=False, default=0)
    _next_check: float = field(init=False, default=0.0)
    _deadline: float = field(init=False, default=0.0)
    _base: dict[str, tuple[int, int]] = field(init=False, default_factory=dict)
    _trips: int = field(init=False, default=0)  # the candidate breaker's, at the interval start

    # -- the machine -------------------------------------------------------------------

    @property
    def weight(self) -> float:
        """The candidate's share now, in percent (0 once promoted or ended)."""
        if self.state in TERMINAL or self.state is RolloutState.PROMOTED:
            return 0.0
        return self.config.steps[self.step]

    def start(self) -> None:
        """Route the first step's share to the candidate; the first interval begins."""
        if self._started is not None:
            raise RolloutStateError(
                self.plugin_id, "start", "already started",
                "make a new RolloutController to retry (from step 0)",
            )  # fmt: skip
        if self.config.max_slow_rate is not None and (
            self.dispatcher.breaker_stats(self.plugin_id, version=self.candidate) is None
        ):
            raise RolloutStateError(
                self.plugin_id, "start",
                f"checking slow calls of version {self.candidate!r}, which has no breaker to "
                "time them",
                f"give it one first: set_breaker({self.plugin_id}, BreakerConfig("
                f"slow_call_duration=...), version={self.candidate!r}), or leave "
                "`max_slow_rate` unset",
            )  # fmt: skip
        now = self.clock()
        self._started = now
        self._apply_route()
        self._begin_interval(now)
        self._deadline = now + self._state_deadline()
        self._emit(now, "started", f"{self.stable} -> {self.candidate}")

    def tick(self) -> None:
        """Do what is due by the clock: judge finished intervals, then the deadline."""
        self._require_started()
        self._take_due(self.clock())

    def _take_due(self, now: float) -> None:
        while self.state not in TERMINAL and self.state is not RolloutState.PROMOTED:
            if now < self._next_check:
                break
            self._judge(self._next_check)
            self._next_check += self.config.interval
        if self.state not in TERMINAL and now >= self._deadline:
            if self.state is RolloutState.PROMOTED:
                self._set(now, RolloutState.SUCCEEDED, "finalised", "rollback window over")
            else:
                self._end(now, RolloutState.ROLLED_BACK, "deadline", self._deadline_detail())

    def pause(self) -> None:
        """Hold the current share; checks keep running (failures still roll back)."""
        now = self._operator("pause")
        if self.state in (RolloutState.PROGRESSING, RolloutState.AWAITING_PROMOTION):
            self._set(now, RolloutState.PAUSED, "paused", "by operator")

    def resume(self) -> None:
        """Continue a paused rollout at its step, with a fresh inconclusive count."""
        now = self._operator("resume")
        if self.state is RolloutState.PAUSED:
            self.inconclusive = 0
            self._passes = 0
            self._set(now, RolloutState.PROGRESSING, "resumed", "by operator")

    def promote(self) -> None:
        """Make the candidate stable now; the old version stays loaded and warm."""
        now = self._operator("promote")
        if self.state is not RolloutState.PROMOTED:
            self._promote(now, "by operator")

    def rollback(self) -> None:
        """Send every frame to the previous good version now (the recovery ladder's rung)."""
        now = self._operator("rollback")
        self._end(now, RolloutState.ROLLED_BACK, "rolled_back", "by operator")

    def abort(self) -> None:
        """Stop the rollout: all traffic to the stable version; a retry starts at step 0."""
        now = self._operator("abort")
        self._end(now, RolloutState.ABORTED, "aborted", "by operator")

    # -- internals -----------------------------------------------------------------------

    def _require_started(self) -> None:
        if self._started is None:
            raise RolloutStateError(self.plugin_id, "tick", "not started", "call start() first")

    def _operator(self, action: str) -> float:
        """Take what is due by the clock first (an overdue check is judged before the
        action, so events stay in time order), then allow ``action`` unless terminal."""
        self._require_started()
        now = self.clock()
        self._take_due(now)
        if self.state in TERMINAL:
            raise RolloutStateError(
                self.plugin_id, action, self.state.value,
                "make a new RolloutController (a retry starts from step 0)",
            )  # fmt: skip
        return now

    def _state_deadline(self) -> float:
        if self.state is RolloutState.PROMOTED:
            return self.config.rollback_window
        assert self.config.deadline is not None
        return self.config.deadline

    def _deadline_detail(self) -> str:
        return f"{self._state_deadline():g}s in {self.state.value}"

    def _emit(self, now: float, kind: str, detail: str = "") -> None:
        assert self._started is not None
        event = RolloutEvent(round(now - self._started, 9), kind, self.state, self.weight, detail)
        self.events.append(event)
        if self.on_event is not None:
            self.on_event(event)

    def _set(self, now: float, state: RolloutState, kind: str, detail: str) -> None:
        self.state = state
        if state not in TERMINAL:
            self._deadline = now + self._state_deadline()
        self._emit(now, kind, detail)

    def _apply_route(self) -> None:
        self.dispatcher.set_route(
            self.plugin_id,
            stable=self.stable,
            candidate=self.candidate,
            weight=self.config.steps[self.step],
            salt=self.config.salt,
            rules=self.config.rules,
            shadow=self.candidate if self.config.shadow else None,
        )

    def _counts(self) -> dict[str, tuple[int, int]]:
        stats = self.dispatcher.version_stats(self.plugin_id)
        return {
            name: (stats[name].messages_processed, stats[name].errors)
            for name in (self.stable, self.candidate)
            if name in stats
        }

    def _candidate_trips(self, breaker: Any) -> int:
        return 0 if breaker is None else int(breaker.trips)

    def _begin_interval(self, now: float) -> None:
        self._base = self._counts()
        breaker = self.dispatcher.breaker_stats(self.plugin_id, version=self.candidate)
        self._trips = self._candidate_trips(breaker)
        self._next_check = now + self.config.interval

    def _window(self, counts: dict[str, tuple[int, int]], name: str) -> _Window:
        frames, errors = counts.get(name, (0, 0))
        base_frames, base_errors = self._base.get(name, (0, 0))
        return _Window(frames - base_frames, errors - base_errors)

    def _verdict(self) -> tuple[str, str]:
        counts = self._counts()
        cand, stable = self._window(counts, self.candidate), self._window(counts, self.stable)
        self._base = counts
        cfg = self.config
        summary = (
            f"failed: candidate {cand.errors}/{cand.frames}, stable {stable.errors}/{stable.frames}"
        )
        breaker = self.dispatcher.breaker_stats(self.plugin_id, version=self.candidate)
        if cfg.max_slow_rate is not None:
            summary += self._slow_summary(breaker)
        # A breaker that opened in the interval fails it even if it is probing again by
        # now: it let few frames through, and "too few frames" must not hide why.
        trips = self._candidate_trips(breaker)
        tripped = trips > self._trips  # a replaced breaker counts from 0 again
        self._trips = trips
        if breaker is not None and breaker.state in _OPEN:
            return "fail", f"candidate breaker {breaker.state.name.lower()}; {summary}"
        if tripped and breaker is not None:
            state = breaker.state.name.lower()
            return "fail", f"candidate breaker tripped in the interval (now {state}); {summary}"
        if cand.frames < cfg.min_frames:
            return "inconclusive", f"fewer than {cfg.min_frames} frames; {summary}"
        if cand.rate() > cfg.max_error_rate:
            return "fail", f"error rate above {cfg.max_error_rate:g}; {summary}"
        if stable.frames >= cfg.min_frames and (
            cand.rate() > stable.rate() + cfg.max_error_rate_over_stable
        ):
            return (
                "fail",
                f"error rate above stable + {cfg.max_error_rate_over_stable:g}; {summary}",
            )
        if cfg.max_slow_rate is not None:
            slow = None if breaker is None else breaker.slow_call_rate
            if slow is None:
                why = "no breaker times it" if breaker is None else "too few calls in its window"
                return "inconclusive", f"candidate slow-call rate unknown ({why}); {summary}"
            if slow > cfg.max_slow_rate:
                return "fail", f"slow-call rate above {cfg.max_slow_rate:g}; {summary}"
            base = self.dispatcher.breaker_stats(self.plugin_id, version=self.stable)
            base_slow = None if base is None else base.slow_call_rate
            if base_slow is not None and slow > base_slow + cfg.max_slow_rate_over_stable:
                return (
                    "fail",
                    f"slow-call rate above stable + {cfg.max_slow_rate_over_stable:g}; {summary}",
                )
        return "pass", summary

    def _slow_summary(self, candidate: Any) -> str:
        """The slow calls in the candidate's and stable's breaker windows, for the event."""
        parts = []
        for role, stats in (
            ("candidate", candidate),
            ("stable", self.dispatcher.breaker_stats(self.plugin_id, version=self.stable)),
        ):
            if stats is not None:
                parts.append(f"{role} {stats.slow_calls}/{stats.calls}")
        return f"; slow: {', '.join(parts)}" if parts else "; slow: unmeasured"

    def _judge(self, now: float) -> None:
        verdict, detail = self._verdict()
        if verdict == "fail":
            self.failed_checks += 1
            self._emit(
                now,
                "check_failed",
                f"{self.failed_checks} of {self.config.threshold} to roll back: {detail}",
            )
            if self.failed_checks >= self.config.threshold:
                self._end(now, RolloutState.ROLLED_BACK, "rolled_back", "failed checks")
            return
        if verdict == "inconclusive":
            self.inconclusive += 1
            limit = self.config.inconclusive_limit
            if self.state is RolloutState.PROGRESSING:
                count = f"{self.inconclusive} of {limit} to pause"
            else:
                count = f"{self.inconclusive} in a row"
            self._emit(now, "inconclusive", f"{count}: {detail}")
            if self.inconclusive >= limit and self.state is RolloutState.PROGRESSING:
                self._set(now, RolloutState.PAUSED, "paused", "inconclusive checks")
            return
        self.inconclusive = 0
        self._emit(now, "check_passed", detail)
        if self.state is not RolloutState.PROGRESSING:
            return  # paused or awaiting promotion: checks guard, they do not advance
        self._passes += 1
        if self._passes < self.config.iterations:
            return
        self._passes = 0
        if self.step + 1 < len(self.config.steps):
            self.step += 1
            self._apply_route()
            self._set(now, RolloutState.PROGRESSING, "step", f"step {self.step + 1}")
        elif self.config.auto_promote:
            self._promote(now, "checks passed")
        else:
            self._set(now, RolloutState.AWAITING_PROMOTION, "awaiting_promotion", "last step")

    def _promote(self, now: float, why: str) -> None:
        self.dispatcher.set_route(self.plugin_id, stable=self.candidate)
        self._set(now, RolloutState.PROMOTED, "promoted", f"{why}; {self.stable} kept warm")

    def _end(self, now: float, state: RolloutState, kind: str, why: str) -> None:
        self.dispatcher.set_route(self.plugin_id, stable=self.stable)
        self._set(now, state, kind, why)


class Rollouts:
    """The rollouts of one dispatcher, by plugin id: one timer can ``tick()`` them all, and
    the recovery ladder's "rollback to the previous good version" rung calls ``rollback``.
    """

    def __init__(
        self,
        dispatcher: Any,
        *,
        clock: Callable[[], float] = time.monotonic,
        on_event: Callable[[int, RolloutEvent], object] | None = None,
    ) -> None:
        self.dispatcher = dispatcher
        self.clock = clock
        self.on_event = on_event
        self._controllers: dict[int, RolloutController] = {}

    def start(
        self, plugin_id: int, stable: str, candidate: str, config: RolloutConfig | None = None
    ) -> RolloutController:
        """Start a rollout of ``plugin_id``; refused while another of it is in progress."""
        current = self._controllers.get(plugin_id)
        if current is not None and current.state not in TERMINAL:
            raise RolloutStateError(
                plugin_id, "start", f"{current.state.value} (a rollout is in progress)",
                "abort() or rollback() it first",
            )  # fmt: skip
        report = self.on_event
        controller = RolloutController(
            self.dispatcher,
            plugin_id,
            stable,
            candidate,
            RolloutConfig() if config is None else config,
            clock=self.clock,
            on_event=None if report is None else (lambda event: report(plugin_id, event)),
        )
        controller.start()
        self._controllers[plugin_id] = controller
        return controller

    def get(self, plugin_id: int) -> RolloutController | None:
        """The plugin's latest rollout (in progress or ended), or None."""
        return self._controllers.get(plugin_id)

    def tick(self) -> None:
        """``tick()`` every rollout in progress."""
        for controller in list(self._controllers.values()):
            if controller.state not in TERMINAL:
                controller.tick()

    def rollback(self, plugin_id: int) -> str | None:
        """Send the plugin's frames to its previous good version; return that version's
        name, or None when there is nothing to go back to.

        A rollout in progress (or promoted and kept warm) rolls back. After one that
        succeeded, the version it replaced is made stable again if it is still loaded.
        """
        controller = self._controllers.get(plugin_id)
        if controller is not None and controller.state not in TERMINAL:
            controller.tick()  # what is due first: it may have ended by now
        if controller is None or controller.state in (
            RolloutState.ROLLED_BACK,
            RolloutState.ABORTED,
        ):
            return None
        if controller.state is not RolloutState.SUCCEEDED:
            controller.rollback()
            return controller.stable
        if controller.stable not in self.dispatcher.version_stats(plugin_id):
            return None
        self.dispatcher.set_route(plugin_id, stable=controller.stable)
        return controller.stable

    def next_due(self) -> float | None:
        """The clock reading at which ``tick()`` next has work (a check or a deadline),
        or None with no rollout in progress: a timer sleeps until then."""
        due = [
            c._deadline if c.state is RolloutState.PROMOTED else min(c._next_check, c._deadline)
            for c in self._controllers.values()
            if c.state not in TERMINAL and c._started is not None
        ]
        return min(due, default=None)

    def forget(self, plugin_id: int) -> RolloutController | None:
        """Drop the plugin's rollout (it was unloaded: there is nothing left to route)."""
        return self._controllers.pop(plugin_id, None)
