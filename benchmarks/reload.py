"""Hot reload: the swap pause under sustained load, and file change -> new version serving.

Run ``python -m benchmarks.reload`` (``--json`` for machine-readable output). The issue's
targets: the swap pause (time during which the plugin processes nothing) <= 1 ms median
and <= 5 ms p99 under at least 100,000 frames/s for a small plugin; and <= 300 ms from a
file change to the new version serving, the 200 ms debounce included.

* **swap pause** - a sender keeps a small counter plugin's queue full with sequenced
  frames (``await dispatch``, capacity 1024) while ``PluginManager.reload`` swaps in a new
  version again and again (the whole pipeline: read, import, ``on_load``, ``health()``,
  swap with state). Reported: the dispatcher's pause (old worker's last frame to the new
  worker's start), the gap the plugin itself sees (its last frame on the old version to
  its first on the new one, which also holds the time the sender needs to refill the
  queue), the frame rate over the whole run, and the check that every frame arrived once,
  in order, with the count carried across versions.
* **change -> serving** - with a ``PluginWatcher`` (debounce 200 ms) running, the plugin's
  source is rewritten; the clock stops at the first frame handled by the new version.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import nyxplug
from nyxplug import FrameType, PluginHeader

IMPLEMENTATIONS = {"compiled": "nyxplug._dispatch", "pure twin": "nyxplug._dispatch_py"}
PLUGIN_ID = 4242
CAPACITY = 1024
SENDER_BURST = 64  # frames the sender puts in before yielding (one read's worth)
PAUSE_MEDIAN_TARGET = 1e-3
PAUSE_P99_TARGET = 5e-3
RATE_TARGET = 100_000
SERVING_TARGET = 0.3

MANIFEST = """\
[plugin]
name = "counter"
id = {plugin_id}
version = "{version}"
entry = "counter:Counter"
api = ">=1.0, <2"

[permissions]
frames = ["DATA_ACCESS"]

[resources]
capacity = {capacity}
"""

# The sink (a dict in sys.modules) is how the benchmark sees what each version handled.
SOURCE = """\
import sys
import time

from nyxplug.plugins import Plugin

VERSION = {version!r}
SINK = sys.modules["nyxplug_bench_reload_sink"]


class Counter(Plugin):
    def __init__(self):
        self.count = 0
        self.first = None
        self.last = 0.0

    def handle(self, message):
        now = time.perf_counter()
        if self.first is None:
            self.first = now
            SINK.first_seen[VERSION] = now
        self.last = now
        if int(message.payload) != self.count:
            SINK.out_of_order += 1
        self.count += 1

    def export_state(self):
        SINK.last_seen[VERSION] = self.last
        return self.count

    def import_state(self, state):
        self.count = state
"""


class _Sink:
    """What the versions report: when each saw its first and last frame, order errors."""

    def __init__(self) -> None:
        self.first_seen: dict[str, float] = {}
        self.last_seen: dict[str, float] = {}
        self.out_of_order = 0


@dataclass
class SwapRun:
    implementation: str
    loop: str
    reloads: int
    frames: int
    seconds: float
    pauses: list[float] = field(repr=False)  # the dispatcher's, per reload
    gaps: list[float] = field(repr=False)  # last frame on old -> first on new, per reload
    lost_or_reordered: int = 0
    final_count: int = 0

    @property
    def rate(self) -> float:
        return self.frames / self.seconds


def write_version(folder: Path, version: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "nyxplug.toml").write_text(
        MANIFEST.format(plugin_id=PLUGIN_ID, version=version, capacity=CAPACITY)
    )
    (folder / "counter.py").write_text(SOURCE.format(version=version))


def _manager(impl: Any, root: Path, **kwargs: Any) -> Any:
    from nyxplug.config import HostConfig, RuntimeSection
    from nyxplug.plugins import PluginManager

    config = HostConfig(runtime=RuntimeSection(**kwargs)) if kwargs else None
    return PluginManager(
        config, dispatcher=impl.Dispatcher(), plugin_dirs=[root], state_dir=root / ".state",
        entry_points=False, include_registered=False, require_signatures=False,
    )  # fmt: skip


async def _sender(
    dispatcher: Any, stop: asyncio.Event, sent: list[int], paced: bool = False
) -> None:
    """Send sequenced frames until ``stop``: as fast as the plugin takes them, or about
    100,000 frames/s (``paced``: 100 frames a millisecond, the loop idle in between)."""
    header = PluginHeader(PLUGIN_ID)
    n = 0
    while not stop.is_set():
        await dispatcher.dispatch(FrameType.DATA, header, b"%d" % n)
        n += 1
        if paced and n % 100 == 0:
            await asyncio.sleep(0.001)
        elif n % SENDER_BURST == 0:
            await asyncio.sleep(0)  # hand the loop over, as a socket reader would per read
    sent.append(n)


async def swap_pauses(impl: Any, reloads: int, *, spacing: float = 0.002) -> SwapRun:
    """Reload the counter ``reloads`` times under a sender that keeps its queue full."""
    sink = sys.modules["nyxplug_bench_reload_sink"] = _Sink()  # type: ignore[assignment]
    with tempfile.TemporaryDirectory(prefix="nyxplug-bench-reload-") as tmp:
        root = Path(tmp)
        folder = root / "counter"
        write_version(folder, "1.0.0")
        manager = _manager(impl, root)
        await manager.start()
        stop, sent = asyncio.Event(), []
        start = time.perf_counter()
        sender = asyncio.create_task(_sender(manager.dispatcher, stop, sent))
        pauses, gaps = [], []
        for n in range(1, reloads + 1):
            await asyncio.sleep(spacing)  # traffic between reloads, as in a running host
            old, new = f"1.0.{n - 1}" if n > 1 else "1.0.0", f"1.0.{n}"
            write_version(folder, new)
            result = await manager.reload("counter")
            await asyncio.sleep(0)  # the new worker's first frame
            pauses.append(result.pause)
            if new in sink.first_seen and old in sink.last_seen:
                gaps.append(sink.first_seen[new] - sink.last_seen[old])
        stop.set()
        await sender
        await manager.dispatcher.wait_idle()
        seconds = time.perf_counter() - start
        frames = sent[0]
        final = manager.instance("counter").count
        await manager.aclose()
    return SwapRun(
        implementation=impl.__name__, loop="", reloads=reloads, frames=frames, seconds=seconds,
        pauses=pauses, gaps=gaps, lost_or_reordered=sink.out_of_order + abs(final - frames),
        final_count=final,
    )  # fmt: skip


async def change_to_serving(
    impl: Any, rounds: int, *, debounce: float = 0.2, paced: bool = True
) -> list[float]:
    """Seconds from rewriting the plugin's source to its first frame on the new version.

    ``paced=False`` saturates the loop: then the watchfiles thread competes with it for
    the GIL and reports changes later (seconds on the pure twin) - see the README.
    """
    from nyxplug.plugins.watch import PluginWatcher

    sink = sys.modules["nyxplug_bench_reload_sink"] = _Sink()  # type: ignore[assignment]
    times = []
    with tempfile.TemporaryDirectory(prefix="nyxplug-bench-watch-") as tmp:
        root = Path(tmp)
        folder = root / "counter"
        write_version(folder, "1.0.0")
        manager = _manager(impl, root, reload_debounce=debounce)
        await manager.start()
        stop, sent = asyncio.Event(), []
        sender = asyncio.create_task(_sender(manager.dispatcher, stop, sent, paced))
        async with PluginWatcher(manager, debounce=debounce) as watcher:
            await asyncio.wait_for(watcher.ready.wait(), 10)
            for n in range(1, rounds + 1):
                version = f"1.0.{n}"
                changed = time.perf_counter()
                write_version(folder, version)
                while version not in sink.first_seen:
                    await asyncio.sleep(0.001)  # the benchmark's clock, not a test's wait
                    if time.perf_counter() - changed > 10:
                        raise TimeoutError(f"version {version} never served")
                times.append(sink.first_seen[version] - changed)
        stop.set()
        await sender
        await manager.aclose()
    return times


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def measure(reloads: int, rounds: int, pure: bool, loop: str) -> dict[str, Any]:
    import importlib

    rows: dict[str, Any] = {"swap": [], "serving": []}
    for label, name in IMPLEMENTATIONS.items():
        if label == "pure twin" and not pure:
            continue
        impl = importlib.import_module(name)
        run: SwapRun = nyxplug.run(swap_pauses(impl, reloads), use_uvloop=loop == "uvloop")
        run.loop = loop
        rows["swap"].append((label, run))
        for paced in (True, False) if rounds else ():
            times = nyxplug.run(
                change_to_serving(impl, rounds, paced=paced), use_uvloop=loop == "uvloop"
            )
            rows["serving"].append((f"{label}, {'~100k/s' if paced else 'saturated'}", times))
    return rows


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.3f} ms"


def render(rows: dict[str, Any]) -> str:
    out = [
        "swap pause under load (PluginManager.reload, whole pipeline, state carried)",
        f"{'':<10} {'reloads':>7} {'frames/s':>10} {'pause p50':>12} {'pause p99':>12} "
        f"{'seen gap p50':>13} {'seen gap p99':>13} {'lost/reordered':>15}",
    ]
    for label, run in rows["swap"]:
        gaps = run.gaps or [float("nan")]
        out.append(
            f"{label:<10} {run.reloads:>7} {run.rate:>10,.0f} "
            f"{_ms(statistics.median(run.pauses)):>12} {_ms(percentile(run.pauses, 0.99)):>12} "
            f"{_ms(statistics.median(gaps)):>13} {_ms(percentile(gaps, 0.99)):>13} "
            f"{run.lost_or_reordered:>15}"
        )
    out.append(
        f"targets: pause <= {_ms(PAUSE_MEDIAN_TARGET)} p50, <= {_ms(PAUSE_P99_TARGET)} p99, "
        f"at >= {RATE_TARGET:,} frames/s"
    )
    if rows["serving"]:
        out += ["", "file change -> new version serving (watcher, debounce 200 ms)"]
        for label, times in rows["serving"]:
            out.append(
                f"{label:<22} rounds {len(times)}: p50 {_ms(statistics.median(times))}, "
                f"max {_ms(max(times))} (target <= {_ms(SERVING_TARGET)})"
            )
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.reload", description=__doc__)
    parser.add_argument("--reloads", type=int, default=300, help="swaps per implementation")
    parser.add_argument("--rounds", type=int, default=10, help="file changes (0: skip)")
    parser.add_argument("--loop", choices=["uvloop", "asyncio"], default="uvloop")
    parser.add_argument("--no-pure", action="store_true", help="skip the pure-Python twin")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    rows = measure(args.reloads, args.rounds, not args.no_pure, args.loop)
    if args.json:
        data = {
            "swap": [{"implementation": label, **asdict(run)} for label, run in rows["swap"]],
            "serving": [{"implementation": label, "seconds": t} for label, t in rows["serving"]],
        }
        print(json.dumps(data, indent=2))
    else:
        print(render(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
