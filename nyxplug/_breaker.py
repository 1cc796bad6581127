"""Per-plugin circuit breakers, shared by both dispatcher twins.

The state machine lives here, once, in plain Python: it runs only off the hot path
(when a frame meets a breaker that is not plain CLOSED, and once per worker batch to
record outcomes), so both twins call the same code and cannot drift apart. What each
twin keeps in its own hot path is a ``gate`` on the plugin's runtime - 0 when frames
pass without asking the breaker - and the per-batch bookkeeping of its worker.

Semantics are resilience4j's (the reference) with the fixes its users asked for:

- A **window** of the last ``window_size`` calls (``window="count"``) or seconds
  (``window="time"``, one-second buckets). No verdict before ``minimum_calls`` calls
  are in the window (for a count window, at most ``window_size``). The breaker trips
  when the failure rate **or** the slow-call rate is **at or above** its threshold.
- A **failure** is a handler call that raised (a raising batch handler fails every
  frame of its batch). A full queue is load, not failure: it never reaches here.
- A **slow call** takes more than ``slow_call_duration`` seconds. The worker reads the
  clock once per batch, not per frame, so a call's duration is its batch's duration
  divided by its frames. Within one recorded batch the failures are the newest calls.
- **OPEN** refuses every frame with ``CircuitOpen`` for ``open_wait`` seconds, growing
  by ``open_wait_multiplier`` for each consecutive trip up to ``max_open_wait``, times
  a jitter of ``±jitter``. A healthy verdict while CLOSED resets the growth.
- **HALF_OPEN** admits exactly ``half_open_probes`` frames (counted at admission, so a
  thousand concurrent senders get exactly that many through) and refuses the rest.
  When all have been recorded, their rates decide CLOSED or OPEN. ``half_open_deadline``
  seconds after the first probe, probes not finished count as failures and the verdict
  is taken over the probes admitted.
- **Epochs**: every transition starts a new epoch. The breaker remembers how many
  frames had been enqueued for the plugin when it did (``stale_until``); outcomes of
  frames with an ordinal up to that are stale - admitted in an earlier state - and are
  counted as such, never recorded (they cannot re-trip or double count).
- **Operator states**: DISABLED (admit all, record nothing), FORCED_OPEN (refuse all),
  METRICS_ONLY (record, never trip); CLOSED resets the breaker (fresh window, growth
  reset). Each starts a new epoch too.

There is no timer: transitions that depend on time (OPEN -> HALF_OPEN, the half-open
deadline) are taken when the breaker is next asked (a frame, a batch, a statistics
read), from the injected clock. So tests drive it with a fake clock and a seeded
random source and get the same sequence on both twins.
"""

from __future__ import annotations

import enum
import math
import random as _random
from collections import deque
from collections.abc import Callable
from typing import Literal

import msgspec

__all__ = ("BreakerConfig", "BreakerState", "BreakerStats", "CircuitBreaker")


class BreakerState(enum.IntEnum):
    """The state of a plugin's circuit breaker (resilience4j's six)."""

    CLOSED = 0
    OPEN = 1
    HALF_OPEN = 2
    DISABLED = 3
    FORCED_OPEN = 4
    METRICS_ONLY = 5


_CLOSED = BreakerState.CLOSED
_OPEN = BreakerState.OPEN
_HALF_OPEN = BreakerState.HALF_OPEN
_DISABLED = BreakerState.DISABLED
_FORCED_OPEN = BreakerState.FORCED_OPEN
_METRICS_ONLY = BreakerState.METRICS_ONLY

#: States in which a frame passes without asking the breaker (the runtime's gate is 0).
_PASSING = frozenset({_CLOSED, _DISABLED, _METRICS_ONLY})

#: Why a frame was refused (``admit``'s answer; 0 = admitted).
REFUSED_OPEN = 1
REFUSED_FORCED_OPEN = 2
REFUSED_HALF_OPEN = 3
REFUSAL_REASONS = {
    REFUSED_OPEN: "open",
    REFUSED_FORCED_OPEN: "forced_open",
    REFUSED_HALF_OPEN: "half_open",
}


def _fail(field: str, expected: str, got: object) -> ValueError:
    return ValueError(f"Expected `{field}` {expected}, got {got!r} - in BreakerConfig")


class BreakerConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """How a plugin's circuit breaker decides; defaults are resilience4j's where it has one.

    Validated when created, so a breaker never meets a bad value on the frame path. It is
    also the ``[breaker]`` table of a plugin's manifest and ``[defaults.breaker]`` of the
    host configuration (same keys).
    """

    #: ``"count"``: the last ``window_size`` calls; ``"time"``: the last ``window_size`` s.
    window: Literal["count", "time"] = "count"
    window_size: int = 100
    #: Calls the window must hold before any verdict (capped at ``window_size`` for a
    #: count window): below it the breaker never trips, however bad the rate.
    minimum_calls: int = 100
    #: Trip when failures / calls >= this (0 < rate <= 1).
    failure_rate: float = 0.5
    #: Trip when slow calls / calls >= this (0 < rate <= 1).
    slow_call_rate: float = 1.0
    #: A call taking longer than this many seconds is slow.
    slow_call_duration: float = 60.0
    #: Seconds OPEN after the first trip; each consecutive trip multiplies it.
    open_wait: float = 60.0
    open_wait_multiplier: float = 2.0
    max_open_wait: float = 600.0
    #: The open time is scaled by a uniform factor in ``[1 - jitter, 1 + jitter]``.
    jitter: float = 0.1
    #: Frames admitted in HALF_OPEN; the rest are refused until the verdict.
    half_open_probes: int = 10
    #: Seconds after the first probe at which unfinished probes count as failures.
    half_open_deadline: float = 60.0
    #: The worker records outcomes at least every this many frames (and whenever its
    #: queue runs empty); a trip is decided at most this many frames late.
    record_every: int = 256

    def __post_init__(self) -> None:
        if self.window not in ("count", "time"):
            raise _fail("window", 'to be "count" or "time"', self.window)
        for name in ("window_size", "minimum_calls", "half_open_probes", "record_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise _fail(name, "to be an int >= 1", value)
        for name in ("failure_rate", "slow_call_rate"):
            value = getattr(self, name)
            if not 0.0 < value <= 1.0:
                raise _fail(name, "in (0, 1]", value)
        for name in ("slow_call_duration", "open_wait", "max_open_wait", "half_open_deadline"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0.0):
                raise _fail(name, "to be a finite number of seconds > 0", value)
        if not (math.isfinite(self.open_wait_multiplier) and self.open_wait_multiplier >= 1.0):
            raise _fail("open_wait_multiplier", "to be >= 1", self.open_wait_multiplier)
        if self.max_open_wait < self.open_wait:
            raise _fail("max_open_wait", f">= open_wait ({self.open_wait})", self.max_open_wait)
        if not 0.0 <= self.jitter < 1.0:
            raise _fail("jitter", "in [0, 1)", self.jitter)

    @property
    def effective_minimum_calls(self) -> int:
        """``minimum_calls``, capped at ``window_size`` for a count window (resilience4j)."""
        if self.window == "count":
            return min(self.minimum_calls, self.window_size)
        return self.minimum_calls


class BreakerStats(msgspec.Struct, frozen=True, kw_only=True):
    """A plugin's circuit breaker at the moment of the call.

    Refusals by reason add up to the ``circuit_open`` refusals counted for the plugin
    since this breaker was set.
    """

    state: BreakerState
    #: Transitions since the breaker was set (each starts a new epoch).
    epoch: int
    #: Calls, failures and slow calls in the current window (the probes in HALF_OPEN).
    calls: int
    failures: int
    slow_calls: int
    #: The window's rates, or None below ``minimum_calls`` (no verdict yet).
    failure_rate: float | None
    slow_call_rate: float | None
    #: Seconds until OPEN ends or HALF_OPEN's deadline; None otherwise.
    retry_after: float | None
    #: Transitions to OPEN since set, and in a row (the open time's growth).
    trips: int
    consecutive_trips: int
    #: Probes admitted and recorded in the current HALF_OPEN.
    probes_admitted: int
    probes_recorded: int
    #: Frames refused, by reason.
    refused_open: int
    refused_forced_open: int
    refused_half_open: int
    #: Outcomes recorded into a window, and outcomes ignored as stale (their frames were
    #: admitted before the last transition).
    outcomes_recorded: int
    stale_outcomes: int
    #: Why it is FORCED_OPEN when that was not an operator (health checks), or what
    #: holds it OPEN (a recovery step); else None.
    forced_by: str | None = None
    #: The recovery step running while the breaker is OPEN ("repairing": it does not
    #: go half-open by the clock meanwhile); None when no step runs.
    repairing: str | None = None


class _CountWindow:
    """The last ``size`` calls, as runs of equal outcomes with running totals."""

    __slots__ = ("size", "runs", "calls", "failures", "slow")

    def __init__(self, size: int) -> None:
        self.size = size
        self.runs: deque[list[int]] = deque()  # [count, failed 0/1, slow 0/1]
        self.calls = self.failures = self.slow = 0

    def add(self, n: int, failed: int, slow: bool, now: float) -> None:
        s = int(slow)
        if n - failed:
            self._push(n - failed, 0, s)
        if failed:
            self._push(failed, 1, s)

    def _push(self, count: int, failed: int, slow: int) -> None:
        runs = self.runs
        if runs and runs[-1][1] == failed and runs[-1][2] == slow:
            runs[-1][0] += count  # same outcome as the newest run: it grows
        else:
            runs.append([count, failed, slow])
        self.calls += count
        self.failures += count * failed
        self.slow += count * slow
        excess = self.calls - self.size
        while excess > 0:
            run = runs[0]
            take = run[0] if run[0] < excess else excess
            run[0] -= take
            self.calls -= take
            self.failures -= take * run[1]
            self.slow -= take * run[2]
            excess -= take
            if not run[0]:
                runs.popleft()

    def expire(self, now: float) -> None:
        return None


class _TimeWindow:
    """The calls of the last ``size`` seconds, in one-second buckets with running totals."""

    __slots__ = ("size", "buckets", "calls", "failures", "slow")

    def __init__(self, size: int) -> None:
        self.size = size
        self.buckets: deque[list[int]] = deque()  # [second, calls, failures, slow]
        self.calls = self.failures = self.slow = 0

    def add(self, n: int, failed: int, slow: bool, now: float) -> None:
        self.expire(now)
        second = math.floor(now)
        buckets = self.buckets
        if buckets and buckets[-1][0] >= second:
            bucket = buckets[-1]  # a clock never goes back; equal second: same bucket
        else:
            bucket = [second, 0, 0, 0]
            buckets.append(bucket)
        s = n if slow else 0
        bucket[1] += n
        bucket[2] += failed
        bucket[3] += s
        self.calls += n
        self.failures += failed
        self.slow += s

    def expire(self, now: float) -> None:
        oldest = math.floor(now) - self.size  # buckets at or before it left the window
        buckets = self.buckets
        while buckets and buckets[0][0] <= oldest:
            _second, calls, failures, slow = buckets.popleft()
            self.calls -= calls
            self.failures -= failures
            self.slow -= slow


class CircuitBreaker:
    """One plugin's breaker: the state machine both twins drive (see the module doc).

    Every method that can change state takes ``enqueued`` - how many frames have been
    enqueued for the plugin so far - so a transition knows which outcomes become
    stale. After any call the dispatcher copies ``gate`` and ``epoch`` to the runtime.
    """

    def __init__(
        self,
        config: BreakerConfig,
        clock: Callable[[], float],
        random: Callable[[], float] | None = None,
    ) -> None:
        if not isinstance(config, BreakerConfig):
            raise TypeError(f"Expected `config` to be a BreakerConfig, got {type(config).__name__}")
        if not callable(clock):
            raise TypeError(f"Expected `clock` to be callable, got {type(clock).__name__}")
        if random is None:
            random = _random.Random().random
        elif not callable(random):
            raise TypeError(f"Expected `random` to be callable, got {type(random).__name__}")
        self.config = config
        self.clock = clock
        self.random = random
        self.minimum_calls = config.effective_minimum_calls
        self.slow_call_duration = config.slow_call_duration
        self.state = _CLOSED
        self.gate = 0
        self.epoch = 0
        self.stale_until = 0
        self.window = self._new_window()
        self.open_until = 0.0
        self.trips = 0
        self.consecutive_trips = 0
        self.probes_admitted = 0
        self.probes_recorded = 0
        self.probe_failures = 0
        self.probe_slow = 0
        self.deadline: float | None = None
        self.refused = [0, 0, 0, 0]  # by REFUSED_* code
        self.retry_after: float | None = None  # of the last refusal
        self.forced_by: str | None = None  # why FORCED_OPEN, when not an operator's
        self.outcomes_recorded = 0
        self.stale_outcomes = 0
        # The recovery step running ("repairing"), and who hears of every transition
        # (a recovery ladder); neither is read on the frame path.
        self.repairing: str | None = None
        self.on_change: Callable[[BreakerState], object] | None = None

    def _new_window(self) -> _CountWindow | _TimeWindow:
        config = self.config
        if config.window == "count":
            return _CountWindow(config.window_size)
        return _TimeWindow(config.window_size)

    # -- transitions --------------------------------------------------------------

    def _to(self, state: BreakerState, enqueued: int, now: float) -> None:
        self.state = state
        self.gate = 0 if state in _PASSING else int(state)
        self.epoch += 1
        self.stale_until = enqueued
        self.probes_admitted = self.probes_recorded = 0
        self.probe_failures = self.probe_slow = 0
        self.deadline = None
        self.forced_by = None
        self.repairing = None
        if state == _OPEN:
            config = self.config
            self.trips += 1
            self.consecutive_trips += 1
            wait = min(
                config.open_wait * config.open_wait_multiplier ** (self.consecutive_trips - 1),
                config.max_open_wait,
            )
            wait *= 1.0 + config.jitter * (2.0 * self.random() - 1.0)
            self.open_until = now + wait
        elif state in _PASSING:
            self.window = self._new_window()
        if self.on_change is not None:
            self.on_change(state)

    def _advance(self, now: float, enqueued: int) -> None:
        """Take the transitions that are due by the clock."""
        if self.state == _OPEN and now >= self.open_until and self.repairing is None:
            self._to(_HALF_OPEN, enqueued, now)
        if self.state == _HALF_OPEN and self.deadline is not None and now >= self.deadline:
            # Probes still unfinished at the deadline count as failures.
            unfinished = self.probes_admitted - self.probes_recorded
            self.probe_failures += unfinished
            self.probes_recorded = self.probes_admitted
            self._probe_verdict(enqueued, now)

    def _probe_verdict(self, enqueued: int, now: float) -> None:
        config = self.config
        n = self.probes_recorded
        if (
            self.probe_failures / n >= config.failure_rate
            or self.probe_slow / n >= config.slow_call_rate
        ):
            self._to(_OPEN, enqueued, now)
        else:
            self._to(_CLOSED, enqueued, now)

    # -- the frame path -----------------------------------------------------------

    def admit(self, enqueued: int) -> int:
        """Admit one frame (0) or refuse it (a REFUSED_* code; ``retry_after`` set)."""
        state = self.state
        if state == _FORCED_OPEN:
            self.refused[REFUSED_FORCED_OPEN] += 1
            self.retry_after = None
            return REFUSED_FORCED_OPEN
        now = self.clock()
        self._advance(now, enqueued)
        state = self.state
        if state == _OPEN:
            self.refused[REFUSED_OPEN] += 1
            # While a recovery step runs there is no time to give: it ends with the step.
            self.retry_after = None if self.repairing is not None else self.open_until - now
            return REFUSED_OPEN
        if state == _HALF_OPEN:
            if self.probes_admitted < self.config.half_open_probes:
                if not self.probes_admitted:
                    self.deadline = now + self.config.half_open_deadline
                self.probes_admitted += 1
                return 0
            self.refused[REFUSED_HALF_OPEN] += 1
            assert self.deadline is not None
            self.retry_after = max(self.deadline - now, 0.0)
            return REFUSED_HALF_OPEN
        return 0

    def unadmit(self) -> None:
        """Give back the probe just admitted: its frame met a full queue (load, not failure)."""
        if self.state == _HALF_OPEN and self.probes_admitted > self.probes_recorded:
            self.probes_admitted -= 1
            if not self.probes_admitted:
                self.deadline = None

    def record(self, first: int, n: int, failed: int, elapsed: float, now: float,
               enqueued: int) -> None:  # fmt: skip
        """Record the outcomes of ``n`` frames with ordinals ``first .. first + n - 1``
        (1-based, in enqueue order), ``failed`` of them failures, handled in ``elapsed``
        seconds in all, at ``now``.

        Frames up to ``stale_until`` were admitted before the last transition: ignored,
        counted as stale. A group that spans that boundary is all-success or all-failure
        (the workers cut mixed groups there), so it splits exactly.
        """
        if self.gate:
            self._advance(now, enqueued)
        state = self.state
        if state is _DISABLED:
            return
        stale = 0
        if first <= self.stale_until:
            stale = self.stale_until - first + 1
            if stale > n:
                stale = n
            self.stale_outcomes += stale
            fresh = n - stale
            if not fresh:
                return
            failed = fresh if failed else 0
            n = fresh
        if state is _OPEN or state is _FORCED_OPEN:
            self.stale_outcomes += n  # cannot happen: nothing is admitted while open
            return
        config = self.config
        slow = elapsed > self.slow_call_duration * (n + stale)
        self.outcomes_recorded += n
        if state is _HALF_OPEN:
            extra = self.probes_recorded + n - self.probes_admitted
            if extra > 0:  # cannot happen: only admitted probes carry a fresh ordinal
                self.stale_outcomes += extra
                self.outcomes_recorded -= extra
                failed = max(failed - extra, 0)
                n -= extra
            self.probes_recorded += n
            self.probe_failures += failed
            self.probe_slow += n if slow else 0
            if self.probes_recorded >= config.half_open_probes:
                self._probe_verdict(enqueued, now)
            return
        window = self.window
        window.add(n, failed, slow, now)
        calls = window.calls
        if calls < self.minimum_calls:
            return
        if window.failures / calls >= config.failure_rate or (
            window.slow and window.slow / calls >= config.slow_call_rate
        ):
            if state is _CLOSED:
                self._to(_OPEN, enqueued, now)
        elif state is _CLOSED:
            self.consecutive_trips = 0  # a healthy verdict: the open time starts over

    # -- operators and readers -------------------------------------------------------

    def set_state(self, state: BreakerState, enqueued: int, why: str | None = None) -> None:
        """An operator's transition: CLOSED (a reset), DISABLED, FORCED_OPEN, METRICS_ONLY;
        ``why`` says who forced it open when it was not an operator (a refusal names it)."""
        if not isinstance(state, BreakerState) or state in (_OPEN, _HALF_OPEN):
            raise ValueError(
                "Expected `state` to be BreakerState.CLOSED, DISABLED, FORCED_OPEN or "
                f"METRICS_ONLY, got {state!r} - OPEN and HALF_OPEN are reached by the "
                "breaker itself; force traffic off with FORCED_OPEN"
            )
        if why is not None and not isinstance(why, str):
            raise TypeError(f"Expected `why` to be a str or None, got {type(why).__name__}")
        if state == _CLOSED:
            self.consecutive_trips = 0
        self._to(state, enqueued, self.clock())
        if state == _FORCED_OPEN:
            self.forced_by = why

    def repair(self, step: str | None, enqueued: int, recovered: bool = False) -> None:
        """A recovery step starts (``step``) or ends (None). While one runs an OPEN
        breaker stays OPEN whatever the clock says, and refusals name the step; when it
        ends ``recovered``, an OPEN or FORCED_OPEN breaker goes HALF_OPEN so probes decide.
        """
        if step is not None and not isinstance(step, str):
            raise TypeError(f"Expected `step` to be a str or None, got {type(step).__name__}")
        if step is not None:
            self.repairing = step
            if self.state == _OPEN:
                self.forced_by = f"its recovery ladder ({step} running)"
            return
        if self.repairing is not None and self.state == _OPEN:
            self.forced_by = None
        self.repairing = None
        if recovered and self.state in (_OPEN, _FORCED_OPEN):
            self._to(_HALF_OPEN, enqueued, self.clock())

    def poll(self, enqueued: int) -> float:
        """Take the transitions due by now; return now."""
        now = self.clock()
        self._advance(now, enqueued)
        self.window.expire(now)
        return now

    def stats(self, enqueued: int) -> BreakerStats:
        now = self.poll(enqueued)
        state = self.state
        config = self.config
        if state == _HALF_OPEN:
            calls, failures, slow = self.probes_recorded, self.probe_failures, self.probe_slow
            verdict = calls > 0
        else:
            window = self.window
            calls, failures, slow = window.calls, window.failures, window.slow
            verdict = calls >= config.effective_minimum_calls and state != _DISABLED
        if state == _OPEN:
            retry_after: float | None = max(self.open_until - now, 0.0)
        elif state == _HALF_OPEN and self.deadline is not None:
            retry_after = max(self.deadline - now, 0.0)
        else:
            retry_after = None
        return BreakerStats(
            state=state,
            epoch=self.epoch,
            calls=calls,
            failures=failures,
            slow_calls=slow,
            failure_rate=failures / calls if verdict else None,
            slow_call_rate=slow / calls if verdict else None,
            retry_after=retry_after,
            trips=self.trips,
            consecutive_trips=self.consecutive_trips,
            probes_admitted=self.probes_admitted,
            probes_recorded=self.probes_recorded,
            refused_open=self.refused[REFUSED_OPEN],
            refused_forced_open=self.refused[REFUSED_FORCED_OPEN],
            refused_half_open=self.refused[REFUSED_HALF_OPEN],
            outcomes_recorded=self.outcomes_recorded,
            stale_outcomes=self.stale_outcomes,
            forced_by=self.forced_by,
            repairing=self.repairing,
        )
