"""Circuit breakers: what a closed breaker costs a frame, and how fast a failing plugin trips.

Run ``python -m benchmarks.breaker`` (``--json`` for machine-readable output). Issue 19's
targets, compiled (the pure twin within 10 %):

* **closed-breaker cost** - ``dispatch_nowait`` with a ready header (``compare._nowait``)
  for a plugin without a breaker and for one with a breaker configured and CLOSED, in
  the same process, repetitions interleaved (A, B, A, B, ...): median ns per frame and
  the difference. Target: <= +2 ns compiled. The same pair end to end with a Python
  no-op handler shows what recording outcomes (once per group of frames) costs.
* **trip latency** - a producer paced at 100,000 frames/s on the real loop; after a
  healthy warm-up the handler starts failing every frame. Reported: the failing frames
  the breaker had recorded when it tripped (target: <= ``minimum_calls`` +
  ``record_every``, one group), the failing frames the handler saw in all (those queued
  before the trip are handled, their outcomes stale), and the time from the first
  failing frame sent to the trip.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib
import json
import logging
import statistics
import sys
import time
from typing import Any

from benchmarks import compare
from benchmarks._corpus import ready_headers

IMPLEMENTATIONS = {"compiled": "nyxplug._dispatch", "pure twin": "nyxplug._dispatch_py"}
RATE = 100_000
TICK = 0.001  # the producer sends the frames due every millisecond


def cost_rows(frames: int, loop: str, reps: int) -> dict[str, dict[str, float]]:
    """Median and min ns per frame of each (implementation, scenario, breaker) cell."""
    cells: dict[str, Any] = {}
    for label, name in IMPLEMENTATIONS.items():
        impl = importlib.import_module(name)
        n = frames if label == "compiled" else max(frames // 20, 10_000)
        for breaker in (False, True):
            suffix = "closed breaker" if breaker else "no breaker"
            cells[f"{label} | dispatch_nowait, ready header | {suffix}"] = (
                n,
                lambda impl=impl, n=n, b=breaker: compare._run(
                    loop, compare._nowait(impl, n, True, b)
                ),
            )
            cells[f"{label} | e2e, Python no-op handler | {suffix}"] = (
                n,
                lambda impl=impl, n=n, b=breaker: compare._run(
                    loop,
                    compare._end_to_end(impl, n, True, 1024, 1, False, compare._noop, b),
                ),
            )
    samples: dict[str, list[float]] = {key: [] for key in cells}
    for _n, fn in cells.values():  # warm-up
        fn()
    for _ in range(reps):
        for key, (n, fn) in cells.items():
            gc.collect()
            samples[key].append(fn() / n)
    return {
        key: {"median": statistics.median(values), "min": min(values)}
        for key, values in samples.items()
    }


async def paired_nowait(impl: Any, chunks: int, size: int = 1000) -> dict[str, float]:
    """``dispatch_nowait`` to two plugins of one dispatcher, one with a closed breaker, in
    alternating chunks of ``size`` frames: the fastest chunk of each, in ns per frame. The
    same loop, corpus and moment for both, so a busy machine shifts both alike."""
    from nyxplug import BreakerConfig, Permission, PluginInfo

    d = impl.Dispatcher()
    plain, guarded = 7, 8
    for plugin_id in (plain, guarded):
        info = PluginInfo(plugin_id, f"p{plugin_id}", Permission.DATA_ACCESS)
        await d.load_plugin(info, None, capacity=size)
    d.set_breaker(guarded, BreakerConfig())
    corpus = {pid: ready_headers(impl, (pid,), size) for pid in (plain, guarded)}
    send = d.dispatch_nowait
    best = {plain: float("inf"), guarded: float("inf")}
    clock = time.perf_counter_ns
    for i in range(chunks):
        for pid in (plain, guarded) if i % 2 else (guarded, plain):
            headers = corpus[pid]
            t0 = clock()
            for header in headers:
                send(compare.DATA, header)
            best[pid] = min(best[pid], (clock() - t0) / size)
        await d.wait_idle()
    await d.aclose()
    return {"no breaker": best[plain], "closed breaker": best[guarded]}


async def trip_latency(
    impl: Any, *, minimum_calls: int = 100, record_every: int = 256, warmup: int = 20_000
) -> dict[str, float]:
    """One run of the trip scenario (see the module doc) on the running loop."""
    from nyxplug import BreakerConfig, BreakerState, DispatchStatus, FrameType

    failing_seen = 0
    clock = time.monotonic

    def handler(msg: Any) -> None:
        nonlocal failing_seen
        if msg.payload == b"fail":
            failing_seen += 1
            raise RuntimeError("failing frame")

    d = impl.Dispatcher()
    await d.load_plugin(compare._info(), handler, capacity=1024)
    config = BreakerConfig(
        window_size=minimum_calls,
        minimum_calls=minimum_calls,
        failure_rate=0.5,
        open_wait=60.0,
        jitter=0.0,
        record_every=record_every,
    )
    d.set_breaker(compare.PLUGIN, config, clock=clock)
    header = impl.PluginHeader(compare.PLUGIN)
    try_dispatch = d.try_dispatch
    refused = DispatchStatus.CIRCUIT_OPEN
    sent = 0
    onset = tripped = None
    start = clock()
    while tripped is None:
        due = int((clock() - start) * RATE) - sent
        for _ in range(due):
            payload = b"ok" if sent < warmup else b"fail"
            status = try_dispatch(FrameType.DATA, header, payload)
            if status is refused:
                tripped = clock()
                break
            if payload == b"fail" and onset is None:
                onset = clock()
            sent += 1
        await asyncio.sleep(TICK)
    now = clock()
    stats = d.breaker_stats(compare.PLUGIN)
    assert stats is not None and stats.state is BreakerState.OPEN and stats.retry_after
    open_at = now + stats.retry_after - config.open_wait  # when it tripped (no jitter)
    await d.wait_idle()
    await d.aclose()
    assert onset is not None
    return {
        "recorded_failures_at_trip": float(stats.failures),
        "failing_frames_handled": float(failing_seen),
        "onset_to_trip_ms": (open_at - onset) * 1e3,
        "bound_frames": float(minimum_calls + record_every),
        "rate": sent / (tripped - start),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.breaker", description=__doc__)
    parser.add_argument("--frames", type=int, default=200_000, help="frames per rep (compiled)")
    parser.add_argument("--reps", type=int, default=15, help="interleaved repetitions")
    parser.add_argument("--loop", choices=["uvloop", "asyncio"], default="uvloop")
    parser.add_argument("--trips", type=int, default=5, help="trip-latency runs per twin")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    logging.getLogger("nyxplug").setLevel(logging.CRITICAL)  # failing frames are the point
    costs = cost_rows(args.frames, args.loop, args.reps)
    paired = {
        label: compare._run(
            args.loop,
            paired_nowait(importlib.import_module(name), 400 if label == "compiled" else 40),
        )
        for label, name in IMPLEMENTATIONS.items()
    }
    trips: dict[str, list[dict[str, float]]] = {}
    for label, name in IMPLEMENTATIONS.items():
        impl = importlib.import_module(name)
        trips[label] = [compare._run(args.loop, trip_latency(impl)) for _ in range(args.trips)]
    if args.json:
        print(json.dumps({"costs": costs, "paired": paired, "trips": trips}, indent=2))
        return 0
    print(f"nyxplug breaker benchmark - {compare.versions()} [{args.loop}]")
    print(f"{args.reps} interleaved reps; ns per frame (median / min); lower is better\n")
    print(f"{'implementation | scenario | breaker':<66} {'median':>8} {'min':>8} {'delta':>8}")
    for key, cell in costs.items():
        delta = ""
        if key.endswith("closed breaker"):
            base = costs[key.replace("closed breaker", "no breaker")]["median"]
            delta = f"{cell['median'] - base:+.1f}"
        print(f"{key:<66} {cell['median']:>8.1f} {cell['min']:>8.1f} {delta:>8}")
    print("\ndispatch_nowait to two plugins of one dispatcher, alternating chunks of 1000 (best)")
    for label, pair in paired.items():
        delta = pair["closed breaker"] - pair["no breaker"]
        print(
            f"{label:<10} no breaker {pair['no breaker']:.1f} ns, closed breaker "
            f"{pair['closed breaker']:.1f} ns, delta {delta:+.1f} ns "
            f"({delta / pair['no breaker']:+.1%})"
        )
    print(
        "\ntrip latency at ~100k frames/s (window = minimum_calls = 100, rate 50 %, "
        "record_every 256, the default)"
    )
    for label, runs in trips.items():
        med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        worst = max(r["recorded_failures_at_trip"] for r in runs)
        print(
            f"{label:<10} failing frames recorded at trip: median "
            f"{med['recorded_failures_at_trip']:.0f}"
            f", max {worst:.0f} (bound {med['bound_frames']:.0f}); handled in all "
            f"{med['failing_frames_handled']:.0f}; onset -> trip {med['onset_to_trip_ms']:.2f} ms"
            f"; producer {med['rate']:,.0f} frames/s"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
