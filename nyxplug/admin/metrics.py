"""Prometheus ``/metrics``: the existing counters, read at scrape time.

Nothing is counted for Prometheus on the hot path (a labelled ``Counter.inc()`` costs
more than a whole dispatch): a scrape reads the dispatcher's ``PluginStats``, the reload
counters and the isolation ledger that exist anyway. The read is a plain snapshot taken
on the event loop in slices of ``SLICE`` plugins (the loop runs other work between
slices); turning it into metric families and text runs in a worker thread, which touches
the snapshot only, never a live nyxplug object. The text is cached for ``cache_seconds``
and concurrent scrapes share one render, so a scrape storm costs one render a second.

Names and labels follow Prometheus' conventions: ``nyxplug_`` prefix, ``_total`` for
counters, base units, and bounded labels only (``plugin``, ``version``, ``reason``,
``result``, ``state``) - never a frame id or a peer address.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .._stats import DispatchStats, PluginStats

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

    from ..plugins.manager import PluginManager

__all__ = ("SLICE", "HostSnapshot", "MetricsEndpoint", "SnapshotCollector", "take_snapshot")

#: Plugins read per loop iteration while taking a snapshot.
SLICE = 100

#: ``PluginStats`` refusal counters and the ``reason`` label they get.
_REFUSALS = (
    ("would_block", "would_block"),
    ("permission_violations", "permission_denied"),
    ("sandbox_violations", "sandbox_violation"),
    ("plugin_closed", "plugin_closed"),
)


@dataclass(frozen=True, slots=True)
class PluginSample:
    name: str
    version: str
    state: str
    stats: PluginStats | None
    timeouts: int
    reloads_succeeded: int
    reloads_rolled_back: int
    reload_retries: int
    isolation: Any  # IsolationStats | None


@dataclass(frozen=True, slots=True)
class HostSnapshot:
    taken: float
    dispatcher: DispatchStats
    plugins: tuple[PluginSample, ...]


async def take_snapshot(manager: PluginManager) -> HostSnapshot:
    """Every plugin's counters, read on the loop ``SLICE`` plugins at a time."""
    names = manager.names()
    samples: list[PluginSample] = []
    for start in range(0, len(names), SLICE):
        if start:
            await asyncio.sleep(0)
        for name in names[start : start + SLICE]:
            sample = _sample(manager, name)
            if sample is not None:
                samples.append(sample)
    return HostSnapshot(time.time(), manager.dispatcher.dispatch_stats(), tuple(samples))


def _sample(manager: PluginManager, name: str) -> PluginSample | None:
    try:
        record = manager.status(name)
    except LookupError:  # gone between the two slices
        return None
    return PluginSample(
        name=name,
        version=record.version or "",
        state=record.state,
        stats=manager.stats(name) if record.id is not None else None,
        timeouts=record.handler_timeouts,
        reloads_succeeded=record.reloads.succeeded,
        reloads_rolled_back=record.reloads.rolled_back,
        reload_retries=record.reloads.retries,
        isolation=record.isolation,
    )


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
        by_state: dict[str, int] = {}
        for p in snap.plugins:
            by_state[p.state] = by_state.get(p.state, 0) + 1
            labels = [p.name, p.version]
            up.add_metric(labels, 1.0 if p.state == "active" else 0.0)
            timeouts.add_metric([p.name], p.timeouts)
            reloads.add_metric([p.name, "swapped"], p.reloads_succeeded)
            reloads.add_metric([p.name, "rolled_back"], p.reloads_rolled_back)
            retries.add_metric([p.name], p.reload_retries)
            s = p.stats
            if s is not None:
                processed.add_metric(labels, s.messages_processed)
                processed_bytes.add_metric(labels, s.bytes_processed)
                errors.add_metric(labels, s.errors)
                dropped.add_metric(labels, s.dropped)
                depth.add_metric(labels, s.queue_depth)
                high.add_metric(labels, s.high_watermark)
                for field, reason in _REFUSALS:
                    refused.add_metric(labels + [reason], getattr(s, field))
            iso = p.isolation
            if iso is not None:
                restarts.add_metric([p.name], iso.restarts)
                crashes.add_metric([p.name], iso.crashes)
                hangs.add_metric([p.name], iso.hangs)
                breaches.add_metric([p.name], iso.limit_breaches)
                rss.add_metric([p.name], iso.rss_bytes)
        for state, count in sorted(by_state.items()):
            states.add_metric([state], count)
        d = snap.dispatcher
        dispatched = counter("dispatched_frames", "Frames the dispatcher enqueued", [])
        dispatched.add_metric([], d.frames_dispatched)
        refusals = counter("dispatch_errors", "Dispatch calls refused, by reason", ["reason"])
        for status, count in d.by_status().items():
            refusals.add_metric([status.name.lower()], count)
        yield from (states, up, processed, processed_bytes, errors, refused, dropped, depth)
        yield from (high, timeouts, reloads, retries, restarts, crashes, hangs, breaches, rss)
        yield from (dispatched, refusals)


def render(snapshot: HostSnapshot, accept: str | None) -> tuple[bytes, str]:
    """The exposition text of ``snapshot`` in the format ``accept`` asks for."""
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
        self._cache: dict[str, tuple[float, bytes, str]] = {}
        self._pending: dict[str, asyncio.Future[tuple[bytes, str]]] = {}
        #: Renders done (a cached answer is not one): for tests and the benchmark.
        self.renders = 0

    async def render(self, accept: str | None) -> tuple[bytes, str]:
        from prometheus_client.openmetrics.exposition import CONTENT_TYPE_LATEST

        key = "openmetrics" if accept and CONTENT_TYPE_LATEST.split(";")[0] in accept else "text"
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
        body, content_type = await asyncio.to_thread(render, snapshot, accept)
        self.renders += 1
        self._cache[key] = (started, body, content_type)
        return body, content_type
