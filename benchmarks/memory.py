"""Memory: what an idle plugin and a queued frame cost, compiled and pure, against the targets.

Run ``python -m benchmarks.memory`` (or ``nyxplug bench --memory``). The issue's targets:
an idle loaded plugin (capacity 100, no-op handler) <= 16 KiB; a queued frame <= 200 bytes
beyond its header and payload bytes; 10,000 idle plugins fit in 200 MiB.

tracemalloc counts what Python's allocators hand out (PyMem/PyObject, so the compiled ring
too) but not libuv's own mallocs nor allocator slack; RSS counts everything but is coarse.
RSS is read in a fresh child process with tracemalloc off, because tracemalloc's own traces
and the free memory left by earlier measurements would distort it. Small RSS deltas move
with pymalloc arena reuse: the 10,000-plugin delta is the steadier per-plugin RSS figure.
``--sites`` prints where an idle plugin's bytes are allocated.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import json
import os
import subprocess
import sys
import time
import tracemalloc
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks._corpus import header_fields
from nyxplug import FrameType, Permission, PluginInfo
from nyxplug._runner import loop_factory, run

ROOT = Path(__file__).resolve().parent.parent
IMPLEMENTATIONS = {"compiled": "nyxplug._dispatch", "pure twin": "nyxplug._dispatch_py"}
CAPACITY = 100  # the idle plugin
NOOP_HANDLER = None  # nyxplug's built-in no-op consumer; a no-op function is one shared ref too
QUEUED_PLUGIN = 7
KIB = 1024
MIB = 1024 * 1024
PLUGIN_TARGET = 16 * KIB
FRAME_TARGET = 200
IDLE_TARGET = 200 * MIB


def rss_bytes() -> int:
    """This process's resident set size now (peak RSS where /proc is missing)."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * KIB


@contextmanager
def _tracing(frames: int = 1) -> Iterator[None]:
    """tracemalloc on for the block, left as found (pytest or -X tracemalloc may own it)."""
    was_tracing = tracemalloc.is_tracing()
    if not was_tracing:
        tracemalloc.start(frames)
    try:
        yield
    finally:
        if not was_tracing:
            tracemalloc.stop()


def _traced_now() -> int:
    gc.collect()
    return tracemalloc.get_traced_memory()[0]


async def _load_idle(dispatcher: Any, count: int) -> None:
    """Load ``count`` plugins and wait until every worker is parked on its empty queue."""
    for plugin_id in range(1, count + 1):
        info = PluginInfo(plugin_id, f"idle-{plugin_id}", Permission.DATA_ACCESS)
        await dispatcher.load_plugin(info, NOOP_HANDLER, capacity=CAPACITY)
    await dispatcher.wait_idle()


# -- (a) an idle plugin ---------------------------------------------------------------


def idle_plugin_bytes(impl: Any, count: int = 1000) -> float:
    """tracemalloc bytes per idle loaded plugin: runtime, ring, worker task, registry entry."""

    async def scenario() -> float:
        dispatcher = impl.Dispatcher()
        with _tracing():
            before = _traced_now()
            await _load_idle(dispatcher, count)
            after = _traced_now()
        await dispatcher.aclose()
        return (after - before) / count

    return run(scenario())


def idle_plugins_rss(module: str, count: int) -> tuple[int, int]:
    """(RSS before, RSS after) loading ``count`` idle plugins, in a fresh child process."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    child = subprocess.run(
        [sys.executable, "-m", "benchmarks.memory", "--child", module, str(count)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if child.returncode != 0:
        raise RuntimeError(f"memory child for {module} failed:\n{child.stderr}")
    result = json.loads(child.stdout.splitlines()[-1])
    return result["before"], result["after"]


def _child(module: str, count: int) -> None:
    """The child's side of ``idle_plugins_rss``: one JSON line on stdout."""
    impl = importlib.import_module(module)

    async def scenario() -> tuple[int, int]:
        dispatcher = impl.Dispatcher()
        gc.collect()
        before = rss_bytes()
        await _load_idle(dispatcher, count)
        gc.collect()
        after = rss_bytes()
        await dispatcher.aclose()
        return before, after

    before, after = run(scenario())
    print(json.dumps({"before": before, "after": after}))


# -- (b) a queued frame ---------------------------------------------------------------


def queued_frame_bytes(impl: Any, count: int = 50_000) -> float:
    """tracemalloc bytes per queued frame, beyond the header object and payload bytes.

    Headers and payloads (0-511 bytes) are built first and kept alive, so only what
    nyxplug adds is counted: the message object and its queue slot (ring growth included).
    The frames are sent without awaiting, so the parked worker cannot drain any of them.
    """

    async def scenario() -> float:
        dispatcher = impl.Dispatcher()
        info = PluginInfo(QUEUED_PLUGIN, "queued", Permission.DATA_ACCESS)
        await dispatcher.load_plugin(info, NOOP_HANDLER, capacity=count)
        await dispatcher.wait_idle(QUEUED_PLUGIN)
        fields = header_fields((QUEUED_PLUGIN,), count)
        headers = [impl.PluginHeader(i, flags, data) for i, flags, data in fields]
        payloads = [bytes(n % 512) for n in range(count)]
        send, frame_type = dispatcher.dispatch_nowait, FrameType.DATA
        with _tracing():
            before = _traced_now()
            for header, payload in zip(headers, payloads, strict=True):
                send(frame_type, header, payload)
            after = _traced_now()
        queued = dispatcher.plugin_stats(QUEUED_PLUGIN).queue_depth
        await dispatcher.aclose()
        if queued != count:
            raise AssertionError(f"expected {count} queued frames, found {queued}")
        return (after - before) / count

    return run(scenario())


# -- where an idle plugin's bytes go -----------------------------------------------------


def allocation_sites(
    impl: Any, count: int = 1000, key_type: str = "lineno", limit: int = 10
) -> list[tracemalloc.StatisticDiff]:
    """The allocation sites that grew most while loading ``count`` idle plugins.

    Code compiled by Cython has no Python frames: its allocations land on the calling
    Python line, or on ``<unknown>`` when the event loop (C) called it.
    """

    async def scenario() -> list[tracemalloc.StatisticDiff]:
        dispatcher = impl.Dispatcher()
        with _tracing(25 if key_type == "traceback" else 1):
            gc.collect()
            before = tracemalloc.take_snapshot()
            await _load_idle(dispatcher, count)
            gc.collect()
            after = tracemalloc.take_snapshot()
        await dispatcher.aclose()
        ignore = [tracemalloc.Filter(False, tracemalloc.__file__)]
        diffs = after.filter_traces(ignore).compare_to(before.filter_traces(ignore), key_type)
        return diffs[:limit]

    return run(scenario())


def new_objects_by_type(impl: Any, count: int = 1000, limit: int = 10) -> list[tuple[str, int]]:
    """(type name, sys.getsizeof bytes) of the GC-tracked objects idle plugins added.

    Names what the compiled code allocates, where tracemalloc's line numbers cannot.
    """

    async def scenario() -> list[tuple[str, int]]:
        dispatcher = impl.Dispatcher()
        gc.collect()
        known = {id(obj) for obj in gc.get_objects()}
        known.add(id(known))
        await _load_idle(dispatcher, count)
        gc.collect()
        now = gc.get_objects()
        known.add(id(now))
        sizes: Counter[str] = Counter()
        for obj in now:
            if id(obj) not in known:
                sizes[type(obj).__qualname__] += sys.getsizeof(obj)
        del now
        await dispatcher.aclose()
        return sizes.most_common(limit)

    return run(scenario())


# -- the table ---------------------------------------------------------------------------


@dataclass(frozen=True)
class MemoryReport:
    """One implementation's numbers, in bytes."""

    plugin_traced: float
    plugin_rss: float
    frame_traced: float
    idle_rss_total: int
    idle_rss_delta: int


def measure(
    module: str, plugins: int = 1000, frames: int = 50_000, idle: int = 10_000
) -> MemoryReport:
    """Every measure for one implementation module."""
    impl = importlib.import_module(module)
    rss_before, rss_after = idle_plugins_rss(module, plugins)
    idle_before, idle_after = idle_plugins_rss(module, idle)
    return MemoryReport(
        plugin_traced=idle_plugin_bytes(impl, plugins),
        plugin_rss=(rss_after - rss_before) / plugins,
        frame_traced=queued_frame_bytes(impl, frames),
        idle_rss_total=idle_after,
        idle_rss_delta=idle_after - idle_before,
    )


def render(
    reports: dict[str, MemoryReport], plugins: int = 1000, frames: int = 50_000, idle: int = 10_000
) -> str:
    """A table: one row per measure, one column per implementation, the target, met or not."""
    rows: list[tuple[str, str, int | None]] = [
        (f"idle plugin, tracemalloc (N={plugins:,})", "plugin_traced", PLUGIN_TARGET),
        (f"idle plugin, RSS (N={plugins:,})", "plugin_rss", PLUGIN_TARGET),
        (f"queued frame, tracemalloc (N={frames:,})", "frame_traced", FRAME_TARGET),
        (f"{idle:,} idle plugins, process RSS", "idle_rss_total", IDLE_TARGET),
        (f"{idle:,} idle plugins, RSS added", "idle_rss_delta", None),
    ]
    names = list(reports)
    columns = "".join(f"{name:>14}" for name in names)
    lines = [f"{'measure':<40}{columns}{'target':>13}  met?"]
    for label, field, target in rows:
        values = [getattr(reports[name], field) for name in names]
        cells = "".join(f"{_human(value):>14}" for value in values)
        if target is None:
            lines.append(f"{label:<40}{cells}")
            continue
        met = " / ".join("yes" if value <= target else "NO" for value in values)
        lines.append(f"{label:<40}{cells}{'<= ' + _human(target):>13}  {met}")
    return "\n".join(lines)


def _human(size: float) -> str:
    if abs(size) >= MIB:
        return f"{size / MIB:,.1f} MiB"
    if abs(size) >= 10 * KIB:
        return f"{size / KIB:,.1f} KiB"
    return f"{size:,.0f} B"


def _print_sites(name: str, module: str, plugins: int) -> None:
    impl = importlib.import_module(module)
    print(f"\n## {name}: top allocation sites per idle plugin (tracemalloc, by line)")
    for diff in allocation_sites(impl, plugins):
        frame = diff.traceback[0]
        print(
            f"{diff.size_diff / plugins:>9,.0f} B {diff.count_diff / plugins:>6.1f} blocks  "
            f"{frame.filename}:{frame.lineno}"
        )
    print(f"## {name}: new GC-tracked objects per idle plugin (sys.getsizeof)")
    for type_name, size in new_objects_by_type(impl, plugins):
        print(f"{size / plugins:>9,.0f} B  {type_name}")


def main(argv: list[str] | None = None) -> int:
    """Print the memory table; ``--child`` is the RSS child's entry, not for people."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.memory", description=__doc__)
    parser.add_argument("--plugins", type=int, default=1000, help="plugins for the per-plugin cost")
    parser.add_argument("--frames", type=int, default=50_000, help="frames for the per-frame cost")
    parser.add_argument("--idle", type=int, default=10_000, help="plugins for the RSS target")
    parser.add_argument("--no-pure", action="store_true", help="skip the pure-Python twin")
    parser.add_argument("--sites", action="store_true", help="also print where the bytes go")
    parser.add_argument("--child", nargs=2, metavar=("MODULE", "COUNT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        _child(args.child[0], int(args.child[1]))
        return 0
    implementations = dict(IMPLEMENTATIONS)
    if args.no_pure:
        del implementations["pure twin"]
    loop_name = loop_factory().__module__.split(".")[0]
    started = time.perf_counter()
    reports = {
        name: measure(module, args.plugins, args.frames, args.idle)
        for name, module in implementations.items()
    }
    print(f"nyxplug memory - {loop_name} loop, capacity {CAPACITY}, built-in no-op handler")
    print(render(reports, args.plugins, args.frames, args.idle))
    if args.sites:
        for name, module in implementations.items():
            _print_sites(name, module, args.plugins)
    print(f"\n(memory measures took {time.perf_counter() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
