"""The recovery ladder: what the runtime does while a plugin's circuit breaker is open.

A breaker that trips only keeps frames away from a failing plugin; the ladder repairs
it. One ladder per plugin, on its own task, hears of every transition of the plugin's
breaker (``Dispatcher.watch_breaker``) and of liveness failures (``HealthMonitor``'s
hook). When the breaker trips while the ladder is idle an *episode* starts and the
first step runs at once:

- ``restart`` - an isolated plugin gets a new child (``IsolatedPlugin.restart``);
- ``reset`` - an in-process plugin gets a new instance of the same code, without the
  old one's state (a state that went bad is not carried over);
- ``reload`` - the plugin's last verified package or folder, through hot reload;
- ``rollback`` - the previous good version: a rollout in progress (or promoted and kept
  warm) rolls back, else the version that was stable before is made stable again (not
  available when there is none: the step raises ``StepNotAvailable``);
- ``degrade`` - traffic held off with refusals that name a declared fallback plugin;
- ``quarantine`` - the plugin is ``failed`` with the reason, as a load failure leaves it.

While a step runs the breaker stays OPEN and says so (``BreakerStats.repairing``; a
refusal names the step). A step that works sends the breaker HALF_OPEN: its probe
frames decide. If they fail, the breaker trips again and, after its open time (which
grows with every trip in a row: the *backoff*), the next step runs. The episode ends
when the breaker closes (counted as a recovery, with the time it took), or at
``degrade`` / ``quarantine``, or when the steps run out (the breaker is left to its
own open/half-open cycle). Every step is bounded by ``step_timeout`` and counted. A
step that fails is followed by the next at once (it is another remedy, not a retry);
the backoff only separates a step whose probes failed from the next one.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from .._breaker import BreakerState
from .._recovery import RecoveryConfig, RecoveryStats, StepStats
from .errors import StepNotAvailable

__all__ = ("Action", "RecoveryConfig", "RecoveryLadder", "RecoveryStats", "StepStats")

#: A step's work: returns when the step is done, raises when it failed. ``None`` in the
#: ladder's actions: the step does not apply to this plugin (counted as not available);
#: a step that applies but finds nothing to work with this time raises ``StepNotAvailable``
#: (counted the same way).
Action = Callable[[], Awaitable[object]]

#: Steps after which the plugin no longer takes its own traffic: the episode ends there.
_FINAL = frozenset({"degrade", "quarantine"})


class _Counts:
    __slots__ = ("attempts", "successes", "failures", "timeouts", "not_available")

    def __init__(self) -> None:
        self.attempts = self.successes = self.failures = self.timeouts = 0
        self.not_available = 0

    def snapshot(self) -> StepStats:
        return StepStats(
            attempts=self.attempts, successes=self.successes, failures=self.failures,
            timeouts=self.timeouts, not_available=self.not_available,
        )  # fmt: skip


class RecoveryLadder:
    """One plugin's ladder (``start`` / ``aclose``); see the module doc.

    ``actions`` maps each step of ``config.steps`` to its work, or None where it does
    not apply. ``on_recovered`` is called after a step worked, before the breaker goes
    half-open (the health checks start over from healthy: the instance is new).
    ``on_event(decision, fields)`` hears of every episode and step - ``started``,
    ``worked``, ``failed``, ``timed_out``, ``recovered``, ``exhausted`` - from the
    ladder's own task (the manager writes them to the audit log).
    """

    def __init__(
        self,
        dispatcher: Any,
        plugin_id: int,
        config: RecoveryConfig,
        actions: Mapping[str, Action | None],
        *,
        on_recovered: Callable[[], object] | None = None,
        on_event: Callable[[str, dict[str, object]], object] | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if not isinstance(config, RecoveryConfig):
            raise TypeError(
                f"Expected `config` to be a RecoveryConfig, got {type(config).__name__}"
            )
        self.dispatcher = dispatcher
        self.plugin_id = plugin_id
        self.config = config
        self._actions = dict(actions)
        self._on_recovered = on_recovered
        self._on_event = on_event
        self._clock = clock
        self._sleep = sleep
        self._counts = {step: _Counts() for step in config.steps}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._repairing: str | None = None
        self._episodes = 0
        self._recoveries = 0
        self._last_recovery: float | None = None
        self._degraded_to: str | None = None
        self._last_failure: str | None = None
        self._began: float | None = None  # the episode's start; None while idle
        self._rung = 0  # the next step of the episode
        self._attempted = False  # a step has run in this episode
        self._backoff_first = False  # the breaker tripped again: back off before the next
        self._liveness: str | None = None  # a liveness failure not yet repaired
        self._changed = asyncio.Event()

    # -- running -------------------------------------------------------------------

    def start(self) -> None:
        """Listen to the plugin's breaker and start the ladder's task."""
        d = self.dispatcher
        d.watch_breaker(self.plugin_id, self.breaker_changed)
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name=f"nyxplug-recovery-{self.plugin_id}"
            )

    async def aclose(self) -> None:
        """Stop the ladder (a step running is cancelled); the breaker is left as it is.
        From the ladder's own task (its quarantine step) it only stops listening."""
        d = self.dispatcher
        if d.is_loaded(self.plugin_id) and d.breaker_stats(self.plugin_id) is not None:
            d.watch_breaker(self.plugin_id, None)
        task, self._task = self._task, None
        if task is None or task is asyncio.current_task():
            return
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            if not task.cancelled():  # our caller was cancelled, not the task
                raise

    def set_actions(self, actions: Mapping[str, Action | None]) -> None:
        """Each step's work from now on (another version became the stable one: an
        isolated one restarts where an in-process one resets); the next step run uses it."""
        self._actions = dict(actions)

    def breaker_changed(self, state: BreakerState) -> None:
        self._wake.set()  # called inside a dispatch or the worker: only note it

    def liveness_failed(self, reason: str) -> None:
        """The health checks found the plugin dead: climb even though nothing tripped."""
        self._liveness = reason
        self._wake.set()

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            await self._react()
            self._changed.set()
            self._changed = asyncio.Event()

    async def _react(self) -> None:
        d = self.dispatcher
        if not d.is_loaded(self.plugin_id):
            return
        stats = d.breaker_stats(self.plugin_id)
        if stats is None:
            return
        state = stats.state
        if self._began is None:
            if state == BreakerState.CLOSED:
                self._degraded_to = None  # an operator closed it: no longer degraded
            tripped = state == BreakerState.OPEN and stats.repairing is None
            if not (tripped or self._liveness is not None):
                return
            self._episodes += 1
            why = "liveness" if self._liveness is not None and not tripped else "tripped"
            self._event("started", {"episode": self._episodes, "cause": why})
            self._began = self._clock()
            self._rung = 0
            self._attempted = False
            self._backoff_first = False
        elif state == BreakerState.CLOSED and self._liveness is None:
            self._recoveries += 1
            self._last_recovery = self._clock() - self._began
            self._began = None
            self._event(
                "recovered", {"episode": self._episodes, "seconds": round(self._last_recovery, 3)}
            )
            return
        elif state != BreakerState.OPEN and self._liveness is None:
            return  # half-open: the probes decide; forced open: an operator's
        else:
            self._backoff_first = True  # tripped again after a step: wait its open time
        await self._climb()

    async def _climb(self) -> None:
        """Run steps until one works (probes decide next) or the ladder ends."""
        d = self.dispatcher
        pid = self.plugin_id
        steps = self.config.steps
        while self._rung < len(steps):
            step = steps[self._rung]
            self._rung += 1
            counts = self._counts[step]
            action = self._actions.get(step)
            if action is None:
                counts.not_available += 1
                continue
            if self._backoff_first:
                self._backoff_first = False
                await self._backoff()
            attempted_before = self._attempted
            self._attempted = True
            self._mark(step)
            counts.attempts += 1
            try:
                async with asyncio.timeout(self.config.step_timeout):
                    await action()
            except StepNotAvailable as exc:  # nothing to work with this time: not a failure
                counts.attempts -= 1
                counts.not_available += 1
                self._attempted = attempted_before
                if not attempted_before:
                    self._mark(None)
                self._event("not_available", {"step": step, "reason": exc.why})
                continue
            except TimeoutError:
                counts.timeouts += 1
                counts.failures += 1
                self._last_failure = f"{step} took longer than {self.config.step_timeout} s"
                self._event("timed_out", {"step": step, "reason": self._last_failure})
                continue  # still marked: the breaker stays held until the next step
            except Exception as exc:
                counts.failures += 1
                self._last_failure = f"{step} raised {type(exc).__name__}: {exc}"
                self._event("failed", {"step": step, "reason": self._last_failure})
                continue
            counts.successes += 1
            self._event("worked", {"step": step})
            if step in _FINAL:
                if step == "degrade":
                    self._degraded_to = self.config.fallback
                self._repairing = None
                self._began = None  # the episode ends unrepaired: no recovery counted
                return
            self._liveness = None
            if self._on_recovered is not None:
                self._on_recovered()
            self._repairing = None
            if d.is_loaded(pid) and d.breaker_stats(pid) is not None:
                d.set_breaker_repairing(pid, None, recovered=True)
            return
        if self._attempted:
            self._mark(None)
        self._event("exhausted", {"episode": self._episodes, "reason": self._last_failure})
        self._began = None  # out of steps: the breaker's own cycle goes on

    async def _backoff(self) -> None:
        """Wait out what is left of the breaker's open time (it grows with each trip)."""
        d = self.dispatcher
        stats = d.breaker_stats(self.plugin_id)
        wait = stats.retry_after if stats is not None and stats.retry_after else 0.0
        if wait > 0.0:
            self._mark("backoff")
            await self._sleep(wait)

    def _event(self, decision: str, fields: dict[str, object]) -> None:
        if self._on_event is not None:
            self._on_event(decision, fields)

    def _mark(self, step: str | None) -> None:
        """Show the step on the breaker (``repairing``) while it runs."""
        self._repairing = step
        d = self.dispatcher
        if d.is_loaded(self.plugin_id) and d.breaker_stats(self.plugin_id) is not None:
            d.set_breaker_repairing(self.plugin_id, step)

    # -- reading -------------------------------------------------------------------

    async def wait_changed(self) -> None:
        """Wait until the ladder has next reacted to its breaker or a liveness failure."""
        await self._changed.wait()

    def stats(self) -> RecoveryStats:
        return RecoveryStats(
            repairing=self._repairing,
            episodes=self._episodes,
            recoveries=self._recoveries,
            last_recovery_seconds=self._last_recovery,
            degraded_to=self._degraded_to,
            steps={step: counts.snapshot() for step, counts in self._counts.items()},
            last_failure=self._last_failure,
        )
