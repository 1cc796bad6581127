"""Active health checks: a plugin's ``health()`` (liveness) and ``ready()`` (readiness) on a
schedule, on their own task, with Envoy's thresholds.

Each check runs every ``interval`` seconds (times a jitter of ``1 ± jitter``, so plugins
loaded together do not check together) under ``timeout``; a check that returns False,
raises or times out is a failure, anything else a success. A probe turns unhealthy after
``unhealthy_threshold`` failures in a row and healthy again after ``healthy_threshold``
successes in a row (Envoy's ``unhealthy_threshold`` / ``healthy_threshold``); every
check, failure and timeout is counted.

The checks never run on the plugin's worker, so a slow or hung ``health()`` never delays
a frame (a *synchronous* hook that blocks holds the whole loop, as any blocking code
does: make it async). While either probe is unhealthy the plugin's circuit breaker is
held ``FORCED_OPEN``, so frames are refused with ``CircuitOpen`` instead of reaching a
plugin that says it cannot take them (a plugin without a breaker gets one for that
time); when both are healthy again the breaker goes back to what it was. A readiness
failure only routes traffic away; a liveness failure also calls ``on_liveness_failure``
(where a recovery ladder - restart, reload - takes over).

With versions side by side each loaded version has its own monitor, bound to its lane
(``version=``): the verdicts hold that lane's breaker, so a candidate that is not ready
stops taking its share of the frames without touching the stable version's.
"""

from __future__ import annotations

import asyncio
import inspect
import random as _random
from collections.abc import Awaitable, Callable
from typing import Any

from .._breaker import BreakerConfig, BreakerState
from .._health import HealthConfig, HealthStats

__all__ = ("HealthConfig", "HealthMonitor", "HealthStats")


class _Probe:
    """One kind of check with Envoy's thresholds; starts healthy (the plugin passed
    ``health()`` when it was loaded)."""

    __slots__ = ("healthy", "in_a_row", "failures")

    def __init__(self) -> None:
        self.healthy = True
        self.in_a_row = 0  # failures while healthy, successes while unhealthy
        self.failures = 0

    def observe(self, ok: bool, config: HealthConfig) -> bool:
        """Count one result; True when it changed the verdict."""
        if not ok:
            self.failures += 1
        if ok == self.healthy:
            self.in_a_row = 0
            return False
        self.in_a_row += 1
        needed = config.healthy_threshold if ok else config.unhealthy_threshold
        if self.in_a_row < needed:
            return False
        self.healthy = ok
        self.in_a_row = 0
        return True


class HealthMonitor:
    """The checks of one loaded plugin, on their own task (``start`` / ``aclose``).

    ``liveness`` and ``readiness`` are called with no arguments and may return an
    awaitable; ``readiness`` None means always ready. ``check()`` runs one round at
    once (tests and ``nyxplug`` commands use it; the task calls it on the schedule).
    """

    def __init__(
        self,
        dispatcher: Any,
        plugin_id: int,
        config: HealthConfig,
        liveness: Callable[[], Any],
        readiness: Callable[[], Any] | None = None,
        *,
        on_liveness_failure: Callable[[str], object] | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        random: Callable[[], float] | None = None,
        version: str | None = None,
    ) -> None:
        if not isinstance(config, HealthConfig):
            raise TypeError(f"Expected `config` to be a HealthConfig, got {type(config).__name__}")
        self.dispatcher = dispatcher
        self.plugin_id = plugin_id
        #: The dispatcher lane (version) whose breaker the verdicts hold; None: the
        #: stable one, whichever that is.
        self.version = version
        self.config = config
        self._liveness = liveness
        self._readiness = readiness
        self._on_liveness_failure = on_liveness_failure
        self._sleep = sleep
        self._random = _random.Random().random if random is None else random
        self._live = _Probe()
        self._ready = _Probe()
        self._checks = 0
        self._timeouts = 0
        self._last_failure: str | None = None
        self._routed_away = False
        self._restore: BreakerState | None = None  # the breaker state to go back to
        self._own_breaker = False  # the checks gave the plugin its breaker
        self._task: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()

    # -- running -------------------------------------------------------------------

    def start(self) -> None:
        """Start the checks' task (the first check one interval from now)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name=f"nyxplug-health-{self.plugin_id}"
            )

    async def aclose(self) -> None:
        """Stop the checks; the breaker is left as it is (the plugin is going away)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                if not task.cancelled():  # our caller was cancelled, not the task
                    raise

    async def _run(self) -> None:
        config = self.config
        while True:
            factor = 1.0 + config.jitter * (2.0 * self._random() - 1.0)
            await self._sleep(config.interval * factor)
            await self.check()

    async def check(self) -> None:
        """One round: liveness, then readiness; apply the verdicts to the breaker."""
        self._checks += 1
        config = self.config
        live_ok = await self._probe(self._liveness, "health()")
        became_dead = self._live.observe(live_ok, config) and not self._live.healthy
        if self._readiness is not None:
            self._ready.observe(await self._probe(self._readiness, "ready()"), config)
        self._route()
        if became_dead and self._on_liveness_failure is not None:
            self._on_liveness_failure(self._last_failure or "health() failed")
        self._changed.set()
        self._changed = asyncio.Event()

    async def _probe(self, call: Callable[[], Any], what: str) -> bool:
        try:
            async with asyncio.timeout(self.config.timeout):
                result = call()
                if inspect.isawaitable(result):
                    result = await result
        except TimeoutError:
            self._timeouts += 1
            self._last_failure = f"{what} took longer than {self.config.timeout} s"
            return False
        except Exception as exc:
            self._last_failure = f"{what} raised {type(exc).__name__}: {exc}"
            return False
        if result is False:
            self._last_failure = f"{what} returned False"
            return False
        return True

    def _route(self) -> None:
        """Hold the breaker forced open while a probe is unhealthy; give it back after."""
        d, plugin_id, version = self.dispatcher, self.plugin_id, self.version
        away = not (self._live.healthy and self._ready.healthy)
        if away == self._routed_away or not self._loaded():
            return
        if away:
            stats = d.breaker_stats(plugin_id, version=version)
            if stats is None:
                d.set_breaker(plugin_id, BreakerConfig(), version=version)
                self._own_breaker = True
            elif stats.state == BreakerState.FORCED_OPEN:
                return  # an operator's: theirs to undo, not ours
            else:
                self._own_breaker = False
                self._restore = stats.state
            why = "its health checks"
            if self._last_failure is not None:
                why += f" ({self._last_failure})"
            d.set_breaker_state(plugin_id, BreakerState.FORCED_OPEN, why=why, version=version)
            self._routed_away = True
            return
        self._routed_away = False
        stats = d.breaker_stats(plugin_id, version=version)
        if stats is None or stats.state != BreakerState.FORCED_OPEN:
            return  # someone changed it meanwhile: leave it
        if self._own_breaker:
            d.set_breaker(plugin_id, None, version=version)
        elif self._restore in (BreakerState.DISABLED, BreakerState.METRICS_ONLY):
            d.set_breaker_state(plugin_id, self._restore, version=version)
        else:
            d.set_breaker_state(plugin_id, BreakerState.CLOSED, version=version)

    def _loaded(self) -> bool:
        d = self.dispatcher
        if not d.is_loaded(self.plugin_id):
            return False
        return self.version is None or self.version in d.version_stats(self.plugin_id)

    def recovered(self) -> None:
        """The plugin was repaired (a new instance or child): both probes start over
        healthy, as after a load. The breaker is not touched - the recovery ladder that
        calls this sends it half-open itself."""
        self._live = _Probe()
        self._ready = _Probe()
        self._routed_away = False
        self._restore = None

    # -- reading -------------------------------------------------------------------

    async def wait_checked(self) -> None:
        """Wait until the next check round has finished."""
        await self._changed.wait()

    def stats(self) -> HealthStats:
        return HealthStats(
            live=self._live.healthy,
            ready=self._ready.healthy,
            routed_away=self._routed_away,
            checks=self._checks,
            liveness_failures=self._live.failures,
            readiness_failures=self._ready.failures,
            timeouts=self._timeouts,
            last_failure=self._last_failure,
        )
