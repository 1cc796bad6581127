"""Prometheus ``/metrics``: the existing counters, read at scrape time.

Nothing is counted for Prometheus on the hot path (a labelled ``Counter.inc()`` costs
more than a whole dispatch): a scrape reads the dispatcher's ``PluginStats``, the reload
counters and the isolation ledger that exist anyway. The read is a snapshot of plain
tuples taken on the event loop in slices of ``SLICE`` plugins (the loop runs other work
between slices). Turning it into metric families and text runs in a render *process*
(``nyxplug.admin._render``, started on the first scrape): a thread would still hold the
GIL while it formats, and measured with 1,000 plugins (16,000 series, 1 MiB) that
stalled the loop by up to 55 ms (each wake-up of the loop waits for the GIL); with a
process the loop only encodes the snapshot and reads the text from a pipe.
The text is cached for ``cache_seconds`` and concurrent scrapes share one render, so a
scrape storm costs one render a second.

Names and labels follow Prometheus' conventions: ``nyxplug_`` prefix, ``_total`` for
counters, base units, and bounded labels only (``plugin``, ``version``, ``reason``,
``result``, ``state``, ``step``, ``probe``) - never a frame id or a peer address.
Breaker, recovery and health series are read the same way, from ``breaker_stats`` and
the ladder's and health monitor's counts, at scrape time only.

Versions side by side (issue 19): a plugin with more than one loaded version gets
per-version series read from the dispatcher's ``version_stats``/``route_info`` -
``nyxplug_version_frames_total{plugin,version,outcome}`` (``ok``, ``error``, ``refused``),
``nyxplug_route_weight{plugin,version}`` (the share of route keys, 0..1) - and its
breaker series carry the ``version`` of the lane they describe. A plugin running one
version has no per-version series: its plugin series are that version's. The latest
rollout is ``nyxplug_rollout_state{plugin,state}`` (1 for the current state) and
``nyxplug_rollout_events_total{plugin,kind}`` (the events of that rollout, by kind), with
``nyxplug_rollout_info{plugin,strategy,stable,candidate}`` naming it.
"""

from __future__ import annotations

import asyncio
import struct
import sys
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, NamedTuple

import msgspec

from .._breaker import BreakerStats
from .._stats import DispatchStats
from ..plugins.rollout import RolloutState

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

    from ..plugins.manager import PluginManager

__all__ = (
    "SLICE",
    "HostSnapshot",
    "MetricsEndpoint",
    "PackedSnapshot",
    "SnapshotCollector",
    "render",
    "take_snapshot",
)

#: Plugins read per loop iteration while taking a snapshot (a few us each).
SLICE = 50

#: ``PluginStats`` refusal counters and the ``reason`` label they get.
_REFUSALS = (
    ("would_block", "would_block"),
    ("permission_violations", "permission_denied"),
    ("sandbox_violations", "sandbox_violation"),
    ("plugin_closed", "plugin_closed"),
    ("circuit_open", "circuit_open"),
)

#: ``BreakerState`` names by number: one ``nyxplug_breaker_state`` series each.
_BREAKER_STATES = ("closed", "open", "half_open", "disabled", "forced_open", "metrics_only")

#: ``RolloutState`` values: one ``nyxplug_rollout_state`` series each.
_ROLLOUT_STATES = tuple(state.value for state in RolloutState)


class Counters(NamedTuple):
    """A plugin's dispatcher counters (``PluginStats``), as plain numbers."""

    processed: int
    bytes: int
    errors: int
    dropped: int
    depth: int
    high_watermark: int
    refused: tuple[int, ...]  # in ``_REFUSALS`` order


class Isolation(NamedTuple):
    restarts: int
    crashes: int
    hangs: int
    limit_breaches: int
    rss_bytes: int


class Breaker(NamedTuple):
    state: int  # ``BreakerState``
    trips: int
    refused: tuple[int, int, int]  # open, forced_open, half_open
    version: str = ""  # the lane's version ("" for the plugin's only one)


class VersionSample(NamedTuple):
    """One loaded version of a plugin that runs several side by side."""

    version: str
    processed: int
    errors: int
    refused: int
    #: Its share of the route keys, 0..1.
    weight: float
    breaker: Breaker | None


class RolloutSample(NamedTuple):
    """The plugin's latest rollout: its state and how many events of each kind it had."""

    state: str
    events: tuple[tuple[str, int], ...]
    strategy: str = ""
    stable: str = ""
    candidate: str = ""


class Step(NamedTuple):
    step: str
    attempts: int
    successes: int
    failures: int
    timeouts: int


class Recovery(NamedTuple):
    episodes: int
    recoveries: int
    steps: tuple[Step, ...]


class Health(NamedTuple):
    checks: int
    liveness_failures: int
    readiness_failures: int


class PluginSample(NamedTuple):
    name: str
    version: str
    state: str
    counters: Counters | None
    timeouts: int
    reloads_succeeded: int
    reloads_rolled_back: int
    reload_retries: int
    isolation: Isolation | None
    breaker: Breaker | None = None
    recovery: Recovery | None = None
    health: Health | None = None
    versions: tuple[VersionSample, ...] = ()
    rollout: RolloutSample | None = None


class HostSnapshot(NamedTuple):
    """Everything a render needs, as tuples of numbers and strings (cheap to pickle)."""

    taken: float
    dispatched: int
    #: (reason, count) for every dispatch refusal reason.
    refusals: tuple[tuple[str, int], ...]
    plugins: tuple[PluginSample, ...]


class PackedSnapshot(NamedTuple):
    """A ``HostSnapshot`` whose plugins are msgpack slices: what crosses to the render
    process. Each slice is encoded as soon as it is read, so the samples die young - a
    snapshot of thousands of live tuples would be promoted by the garbage collector and
    bring on a full collection of the host's heap on the loop (measured: 45 ms)."""

    taken: float
    dispatched: int
    refusals: tuple[tuple[str, int], ...]
    slices: tuple[bytes, ...]

    def unpack(self) -> HostSnapshot:
        decoder = msgspec.msgpack.Decoder(list[PluginSample])
        plugins = tuple(p for part in self.slices for p in decoder.decode(part))
        return HostSnapshot(self.taken, self.dispatched, self.refusals, plugins)


async def take_snapshot(manager: PluginManager) -> PackedSnapshot:
    """Every plugin's counters, read on the loop ``SLICE`` plugins at a time."""
    encode = msgspec.msgpack.Encoder().encode
    names = manager.names()
    slices: list[bytes] = []
    for start in range(0, len(names), SLICE):
        if start:
            await asyncio.sleep(0)
        samples = [_sample(manager, name) for name in names[start : start + SLICE]]
        slices.append(encode([sample for sample in samples if sample is not None]))
    d: DispatchStats = manager.dispatcher.dispatch_stats()
    refusals = tuple((status.name.lower(), count) for status, count in d.by_status().items())
    return PackedSnapshot(time.time(), d.frames_dispatched, refusals, tuple(slices))


def _sample(manager: PluginManager, name: str) -> PluginSample | None:
    try:
        c = manager.counters(name)
    except LookupError:  # gone between two slices
        return None
    stats, iso, b, r, h = c.stats, c.isolation, c.breaker, c.recovery, c.health
    versions: tuple[VersionSample, ...] = ()
    if c.id is not None and c.state == "active":
        versions = _versions(manager, name, c.id)
    return PluginSample(
        name=name,
        version=c.version or "",
        state=c.state,
        counters=None
        if stats is None
        else Counters(
            stats.messages_processed,
            stats.bytes_processed,
            stats.errors,
            stats.dropped,
            stats.queue_depth,
            stats.high_watermark,
            tuple(getattr(stats, field) for field, _ in _REFUSALS),
        ),  # fmt: skip
        timeouts=c.handler_timeouts,
        reloads_succeeded=c.reloads_succeeded,
        reloads_rolled_back=c.reloads_rolled_back,
        reload_retries=c.reload_retries,
        isolation=None
        if iso is None
        else Isolation(
            iso.restarts, iso.crashes, iso.hangs, iso.limit_breaches, iso.rss_bytes
        ),  # fmt: skip
        breaker=_breaker(b, c.version or ""),
        recovery=None
        if r is None
        else Recovery(
            r.episodes,
            r.recoveries,
            tuple(
                Step(step, s.attempts, s.successes, s.failures, s.timeouts)
                for step, s in r.steps.items()
            ),
        ),  # fmt: skip
        health=None if h is None else Health(h.checks, h.liveness_failures, h.readiness_failures),
        versions=versions,
        rollout=_rollout(manager, name),
    )


def _breaker(b: BreakerStats | None, version: str) -> Breaker | None:
    if b is None:
        return None
    refused = (b.refused_open, b.refused_forced_open, b.refused_half_open)
    return Breaker(int(b.state), b.trips, refused, version)


def _versions(manager: PluginManager, name: str, plugin_id: int) -> tuple[VersionSample, ...]:
    """Each loaded version's counters, share and breaker, when more than one is loaded
    (one look at the route decides; ``versions()`` names them by their version strings)."""
    route = manager.dispatcher.route_info(plugin_id)
    if route is None or len(route.routed) < 2:
        return ()
    out = []
    for v in manager.versions(name):
        stats = v.stats
        if not v.loaded or stats is None:
            continue
        refused = sum(getattr(stats, field) for field, _ in _REFUSALS)
        out.append(
            VersionSample(
                v.version,
                stats.messages_processed,
                stats.errors,
                refused,
                v.weight / 100.0,
                _breaker(v.breaker, v.version),
            )  # fmt: skip
        )
    return tuple(out)


def _rollout(manager: PluginManager, name: str) -> RolloutSample | None:
    """The latest rollout's state and event counts (None before the first)."""
    status = manager.rollout(name)
    if status is None:
        return None
    kinds: dict[str, int] = {}
    for event in status.events:
        kinds[event.kind] = kinds.get(event.kind, 0) + 1
    return RolloutSample(
        status.state, tuple(sorted(kinds.items())), status.strategy, status.stable,
        status.candidate,
    )  # fmt: skip


class SnapshotCollector:
    """A ``prometheus_client`` collector over one ``HostSnapshot`` (no live objects)."""

    def __init__(self, snapshot: HostSnapshot) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        snap = self.snapshot
        pv = ["plugin", "version"]

        def counter(name: str, doc: str, labels: list[str] = pv) -> CounterMetricFamily:
            return CounterMetricFamily(f"nyxplug_{name}", doc, labels=labels)

        def gauge(name: str, doc: str, labels: list[str] = pv) -> GaugeMetricFamily:
            return GaugeMetricFamily(f"nyxplug_{name}", doc, labels=labels)

        states = gauge("plugins", "Plugins in the catalog, by lifecycle state", ["state"])
        up = gauge("plugin_active", "1 when the plugin is active (serving frames)")
        processed = counter("frames_processed", "Frames handed to the plugin's handler")
        processed_bytes = counter("processed_bytes", "Bytes of the frames handed to the handler")
        errors = counter("handler_errors", "Handler calls that raised")
        refused = counter(
            "frames_refused", "Frames refused for the plugin, by reason", pv + ["reason"]
        )
        dropped = counter("frames_dropped", "Queued frames discarded by an unload without drain")
        depth = gauge("queue_depth", "Frames waiting in the plugin's queue")
        high = gauge("queue_high_watermark", "Largest queue depth since the plugin was loaded")
        timeouts = counter(
            "handler_timeouts", "Handler calls cancelled at their timeout", ["plugin"]
        )
        reloads = counter("reloads", "Hot reloads that ran, by result", ["plugin", "result"])
        retries = counter("reload_retries", "Transient reload failures tried again", ["plugin"])
        restarts = counter("isolation_restarts", "Isolated children restarted", ["plugin"])
        crashes = counter("isolation_crashes", "Isolated children that died", ["plugin"])
        hangs = counter("isolation_hangs", "Isolated children killed as hung", ["plugin"])
        breaches = counter("isolation_limit_breaches", "Resource limits breached", ["plugin"])
        rss = gauge("isolation_resident_memory_bytes", "An isolated child's RSS", ["plugin"])
        plugin = ["plugin"]
        breaker_state = gauge(
            "breaker_state", "1 for the circuit breaker's current state, 0 for the others",
            ["plugin", "version", "state"],
        )  # fmt: skip
        trips = counter("breaker_trips", "Times the circuit breaker opened", pv)
        breaker_refused = counter(
            "breaker_refusals", "Frames the circuit breaker refused, by the state that refused",
            ["plugin", "version", "reason"],
        )  # fmt: skip
        version_frames = counter(
            "version_frames", "Frames of one of the versions loaded side by side, by outcome "
            "(ok, error: its handler raised, refused)", pv + ["outcome"],
        )  # fmt: skip
        route_weight = gauge(
            "route_weight", "The share of route keys a loaded version takes (0..1)", pv
        )
        rollout_state = gauge(
            "rollout_state", "1 for the state of the plugin's latest rollout, 0 for the others",
            ["plugin", "state"],
        )  # fmt: skip
        rollout_events = counter(
            "rollout_events", "Events of the plugin's latest rollout, by kind", ["plugin", "kind"]
        )
        rollout_info = gauge(
            "rollout_info", "1 for the plugin's latest rollout: its strategy and versions",
            ["plugin", "strategy", "stable", "candidate"],
        )  # fmt: skip
        episodes = counter("recovery_episodes", "Times the recovery ladder started", plugin)
        recovered = counter(
            "recovery_recoveries", "Recovery episodes that ended with the breaker closed", plugin
        )
        step_labels = ["plugin", "step"]
        attempts = counter("recovery_attempts", "Recovery steps run, by step", step_labels)
        successes = counter("recovery_successes", "Recovery steps that worked", step_labels)
        failures = counter(
            "recovery_failures", "Recovery steps that raised or timed out", step_labels
        )
        step_timeouts = counter(
            "recovery_timeouts", "Recovery steps cut at step_timeout", step_labels
        )
        checks = counter("health_checks", "Scheduled health checks run", plugin)
        check_failures = counter(
            "health_check_failures", "Scheduled health checks that failed, by probe",
            ["plugin", "probe"],
        )  # fmt: skip
        by_state: dict[str, int] = {}
        for p in snap.plugins:
            r, h = p.recovery, p.health
            # With versions side by side each lane's breaker is its own series.
            breakers = [v.breaker for v in p.versions] if p.versions else [p.breaker]
            for b in breakers:
                if b is None:
                    continue
                bl = [p.name, b.version]
                for number, name in enumerate(_BREAKER_STATES):
                    breaker_state.add_metric(bl + [name], 1.0 if b.state == number else 0.0)
                trips.add_metric(bl, b.trips)
                for reason, count in zip(
                    ("open", "forced_open", "half_open"), b.refused, strict=True
                ):
                    breaker_refused.add_metric(bl + [reason], count)
            for v in p.versions:
                vl = [p.name, v.version]
                version_frames.add_metric(vl + ["ok"], v.processed - v.errors)
                version_frames.add_metric(vl + ["error"], v.errors)
                version_frames.add_metric(vl + ["refused"], v.refused)
                route_weight.add_metric(vl, v.weight)
            if p.rollout is not None:
                for state in _ROLLOUT_STATES:
                    rollout_state.add_metric([p.name, state], float(p.rollout.state == state))
                for kind, count in p.rollout.events:
                    rollout_events.add_metric([p.name, kind], count)
                ro = p.rollout
                rollout_info.add_metric([p.name, ro.strategy, ro.stable, ro.candidate], 1.0)
            if r is not None:
                episodes.add_metric([p.name], r.episodes)
                recovered.add_metric([p.name], r.recoveries)
                for step in r.steps:
                    attempts.add_metric([p.name, step.step], step.attempts)
                    successes.add_metric([p.name, step.step], step.successes)
                    failures.add_metric([p.name, step.step], step.failures)
                    step_timeouts.add_metric([p.name, step.step], step.timeouts)
            if h is not None:
                checks.add_metric([p.name], h.checks)
                check_failures.add_metric([p.name, "liveness"], h.liveness_failures)
                check_failures.add_metric([p.name, "readiness"], h.readiness_failures)
            by_state[p.state] = by_state.get(p.state, 0) + 1
            labels = [p.name, p.version]
            up.add_metric(labels, 1.0 if p.state == "active" else 0.0)
            timeouts.add_metric([p.name], p.timeouts)
            reloads.add_metric([p.name, "swapped"], p.reloads_succeeded)
            reloads.add_metric([p.name, "rolled_back"], p.reloads_rolled_back)
            retries.add_metric([p.name], p.reload_retries)
            c = p.counters
            if c is not None:
                processed.add_metric(labels, c.processed)
                processed_bytes.add_metric(labels, c.bytes)
                errors.add_metric(labels, c.errors)
                dropped.add_metric(labels, c.dropped)
                depth.add_metric(labels, c.depth)
                high.add_metric(labels, c.high_watermark)
                for (_, reason), count in zip(_REFUSALS, c.refused, strict=True):
                    refused.add_metric(labels + [reason], count)
            iso = p.isolation
            if iso is not None:
                restarts.add_metric([p.name], iso.restarts)
                crashes.add_metric([p.name], iso.crashes)
                hangs.add_metric([p.name], iso.hangs)
                breaches.add_metric([p.name], iso.limit_breaches)
                rss.add_metric([p.name], iso.rss_bytes)
        for state, count in sorted(by_state.items()):
            states.add_metric([state], count)
        dispatched = counter("dispatched_frames", "Frames the dispatcher enqueued", [])
        dispatched.add_metric([], snap.dispatched)
        refusals = counter("dispatch_errors", "Dispatch calls refused, by reason", ["reason"])
        for reason, count in snap.refusals:
            refusals.add_metric([reason], count)
        yield from (states, up, processed, processed_bytes, errors, refused, dropped, depth)
        yield from (high, timeouts, reloads, retries, restarts, crashes, hangs, breaches, rss)
        yield from (dispatched, refusals)
        yield from (breaker_state, trips, breaker_refused, episodes, recovered)
        yield from (attempts, successes, failures, step_timeouts, checks, check_failures)
        yield from (version_frames, route_weight, rollout_state, rollout_events, rollout_info)


def render(snapshot: HostSnapshot | PackedSnapshot, accept: str | None) -> tuple[bytes, str]:
    """The exposition text of ``snapshot`` in the format ``accept`` asks for."""
    if isinstance(snapshot, PackedSnapshot):
        snapshot = snapshot.unpack()
    from prometheus_client import CollectorRegistry
    from prometheus_client.exposition import choose_encoder

    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(snapshot))
    encoder, content_type = choose_encoder(accept or "")
    return encoder(registry), content_type


class MetricsEndpoint:
    """Snapshot on the loop, render in a thread, cache the text briefly."""

    def __init__(self, manager: PluginManager, *, cache_seconds: float = 1.0) -> None:
        self.manager = manager
        self.cache_seconds = cache_seconds
        self._worker: asyncio.subprocess.Process | None = None
        self._talking = asyncio.Lock()  # one request in the worker's pipe at a time
        self._cache: dict[str, tuple[float, bytes, str]] = {}
        self._pending: dict[str, asyncio.Future[tuple[bytes, str]]] = {}
        #: Renders done (a cached answer is not one): for tests and the benchmark.
        self.renders = 0

    async def render(self, accept: str | None) -> tuple[bytes, str]:
        # prometheus-client is imported in the render process only (~90 ms on the loop).
        key = "openmetrics" if accept and "application/openmetrics-text" in accept else "text"
        cached = self._cache.get(key)
        now = time.monotonic()
        if cached is not None and now - cached[0] < self.cache_seconds:
            return cached[1], cached[2]
        pending = self._pending.get(key)
        if pending is None:
            pending = self._pending[key] = asyncio.ensure_future(self._render(key, accept))
            pending.add_done_callback(lambda _: self._pending.pop(key, None))
        return await asyncio.shield(pending)

    async def _render(self, key: str, accept: str | None) -> tuple[bytes, str]:
        started = time.monotonic()
        snapshot = await take_snapshot(self.manager)
        # msgpack crosses to the render process: fast, and no objects left to collect.
        request = msgspec.msgpack.encode((accept, snapshot))
        async with self._talking:
            body, content_type = await self._ask(request)
        self.renders += 1
        self._cache[key] = (started, body, content_type)
        return body, content_type

    async def _ask(self, request: bytes) -> tuple[bytes, str]:
        worker = self._worker
        if worker is None or worker.returncode is not None:
            worker = self._worker = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "nyxplug.admin._render",
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            )  # fmt: skip
        assert worker.stdin is not None and worker.stdout is not None
        try:
            worker.stdin.write(struct.pack(">I", len(request)) + request)
            await worker.stdin.drain()
            (size,) = struct.unpack(">I", await worker.stdout.readexactly(4))
            content_type, body = msgspec.msgpack.decode(
                await worker.stdout.readexactly(size), type=tuple[str, bytes]
            )
        except (OSError, asyncio.IncompleteReadError) as exc:
            self._worker = None
            worker.kill()
            await worker.wait()
            raise RuntimeError(
                f"Expected the /metrics render process to answer, got {exc!r} (exit status "
                f"{worker.returncode}) - the next scrape starts a new one"
            ) from exc
        return body, content_type

    async def aclose(self) -> None:
        """Stop the render process: end of input, then wait for it to exit."""
        worker, self._worker = self._worker, None
        if worker is None or worker.returncode is not None:
            return
        assert worker.stdin is not None
        worker.stdin.close()
        try:
            await asyncio.wait_for(worker.wait(), 10)
        except TimeoutError:
            worker.kill()
            await worker.wait()
