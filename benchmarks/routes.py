"""Versions side by side: what routing costs a frame, with and without a rollout.

Run ``python -m benchmarks.routes`` (``--json`` for machine-readable output). Issue 19's
targets, compiled (the pure twin within 10 %):

* **paired dispatch_nowait** - one dispatcher, five plugins sent alternating chunks of
  1000 ready headers (the fastest chunk of each, ns per frame): no rollout and no key
  (the baseline), no rollout with ``key=`` given (it is only type-checked), an active
  keyed rollout at 10 % (hash + compare + the lane's counter; the same 1000 keys every
  chunk, as sessions send), the same rollout with keyless frames (spread by the route's
  accumulator, no hash), and with keys never seen before (the pure twin remembers a key's lane,
  so this is its cost without that). Target: keyed rollout <= +10 ns.
* **before / after, no rollout** - ``dispatch_nowait`` of a plugin without a rollout in
  this tree and in another tree (``--before DIR``: e.g. ``git archive main`` extracted
  and built in place), in separate interpreters, alternating, median of the medians.
  Target: <= +1 ns.
* **end to end at 10 % canary** - producer -> lanes' workers -> a Python no-op handler,
  every frame keyed (a key per frame; and 1000 sessions' keys in turn), against the
  same plugin without a rollout; interleaved repetitions, median. Target: within 5 %.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import itertools
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks import compare
from benchmarks._corpus import ready_headers

IMPLEMENTATIONS = {"compiled": "nyxplug._dispatch", "pure twin": "nyxplug._dispatch_py"}
ROWS = (
    "no rollout", "no rollout, key given", "rollout 10 %, keyed", "rollout 10 %, keyless",
    "rollout 10 %, keyed, new keys",
)  # fmt: skip


async def paired_nowait(impl: Any, chunks: int, size: int = 1000) -> dict[str, float]:
    """The four ``dispatch_nowait`` rows of the module doc, best chunk of each."""
    from nyxplug import Permission, PluginInfo

    d = impl.Dispatcher()
    ids = (7, 8, 9, 10, 11)
    for plugin_id in ids:
        info = PluginInfo(plugin_id, f"p{plugin_id}", Permission.DATA_ACCESS)
        await d.load_plugin(info, None, capacity=size)
    for plugin_id in (9, 10, 11):
        await d.load_version(plugin_id, "v2", None, capacity=size)
        d.set_route(plugin_id, stable="base", candidate="v2", weight=10)
    corpus = {pid: ready_headers(impl, (pid,), size) for pid in ids}
    keys = list(range(size))
    send = d.dispatch_nowait
    best = dict.fromkeys(ids, float("inf"))
    clock = time.perf_counter_ns
    data = compare.DATA
    for i in range(chunks):
        order = ids if i % 2 else ids[::-1]
        for pid in order:
            headers = corpus[pid]
            # the same loop shape for every row: only the call differs
            if pid in (8, 9, 11):
                chunk_keys = keys if pid != 11 else range(i * size, (i + 1) * size)
                t0 = clock()
                for header, key in zip(headers, chunk_keys, strict=True):
                    send(data, header, key=key)
                elapsed = clock() - t0
            else:
                t0 = clock()
                for header, _key in zip(headers, keys, strict=True):
                    send(data, header)
                elapsed = clock() - t0
            best[pid] = min(best[pid], elapsed / size)
        await d.wait_idle()
    await d.aclose()
    return dict(zip(ROWS, (best[pid] for pid in ids), strict=True))


async def end_to_end(
    impl: Any, n: int, canary: bool, capacity: int | None = None, sessions: int = 0
) -> int:
    """Every frame keyed, through the workers to a Python no-op handler (ns in all).

    Each frame has a key of its own, or with ``sessions`` one of that many keys in turn
    (sessions sending many frames each). Each lane's queue holds every frame by
    default: a full queue would park the producer, and two lanes have twice the room
    of one, which flatters the canary."""
    capacity = n if capacity is None else capacity
    from nyxplug import DispatchStatus, Permission, PluginInfo

    d = impl.Dispatcher()
    await d.load_plugin(
        PluginInfo(7, "bench", Permission.DATA_ACCESS), compare._noop, capacity=capacity
    )
    if canary:
        await d.load_version(7, "v2", compare._noop, capacity=capacity)
        d.set_route(7, stable="base", candidate="v2", weight=10)
    corpus = ready_headers(impl)
    size = len(corpus)
    try_dispatch, dispatch, ok = d.try_dispatch, d.dispatch, DispatchStatus.OK
    data = compare.DATA
    keys = range(n) if not sessions else itertools.islice(itertools.cycle(range(sessions)), n)
    t0 = time.perf_counter_ns()
    for key in keys:
        header = corpus[key % size]
        if try_dispatch(data, header, key=key) is not ok:
            await dispatch(data, header, key=key)
    await d.wait_idle()
    elapsed = time.perf_counter_ns() - t0
    await d.aclose()
    return elapsed


#: The end-to-end rows: (canary, sessions) - a key per frame, or 1000 sessions in turn.
E2E_ROWS = {
    "no rollout": (False, 0),
    "canary 10 %": (True, 0),
    "no rollout, 1000 sessions": (False, 1000),
    "canary 10 %, 1000 sessions": (True, 1000),
}


def e2e_rows(frames: int, loop: str, reps: int) -> dict[str, dict[str, float]]:
    """Median and best ns per frame, end to end, with and without the 10 % canary
    (interleaved). On a shared machine the best is the steadier of the two: load from
    other jobs only ever adds time."""
    out: dict[str, dict[str, float]] = {}
    for label, name in IMPLEMENTATIONS.items():
        impl = importlib.import_module(name)
        n = frames if label == "compiled" else max(frames // 10, 10_000)
        samples: dict[str, list[float]] = {row: [] for row in E2E_ROWS}
        for canary, sessions in E2E_ROWS.values():  # warm-up
            compare._run(loop, end_to_end(impl, n, canary, sessions=sessions))
        for _ in range(reps):
            for row, (canary, sessions) in E2E_ROWS.items():
                gc.collect()
                elapsed = compare._run(loop, end_to_end(impl, n, canary, sessions=sessions))
                samples[row].append(elapsed / n)
        out[label] = {row: statistics.median(values) for row, values in samples.items()}
        out[label] |= {f"{row} (best)": min(values) for row, values in samples.items()}
    return out


def before_after(
    before: Path, frames: int, loop: str, rounds: int, after: Path | None = None
) -> dict[str, Any]:
    """Median of per-process medians, this tree (or ``after``) vs ``before``, processes
    alternating; ``runs`` holds every process's median. ``after=before`` (a copy) shows
    the noise."""
    here = Path(__file__).resolve().parent.parent if after is None else after
    # only what both trees have: compare._nowait, the "dispatch_nowait, ready header" row
    code = (
        "import gc, importlib, statistics, nyxplug\n"
        "from benchmarks import compare\n"
        "impl = importlib.import_module('nyxplug._dispatch')\n"
        f"compare._run({loop!r}, compare._nowait(impl, {frames}, True))\n"
        "values = []\n"
        "for _ in range(7):\n"
        "    gc.collect()\n"
        f"    values.append(compare._run({loop!r}, compare._nowait(impl, {frames}, True)))\n"
        f"print(nyxplug.__file__, statistics.median(values) / {frames})\n"
    )
    medians: dict[str, list[float]] = {"before": [], "after": []}
    for i in range(rounds):
        for label in ("before", "after") if i % 2 == 0 else ("after", "before"):
            tree = before if label == "before" else here
            env = dict(os.environ, PYTHONPATH=f"{tree}{os.pathsep}{here}")
            done = subprocess.run(
                [sys.executable, "-c", code], env=env, cwd=tree, capture_output=True,
                text=True, check=True,
            )  # fmt: skip
            where, ns = done.stdout.split()
            assert where.startswith(str(tree)), (where, tree)
            medians[label].append(float(ns))
    result: dict[str, Any] = {k: statistics.median(v) for k, v in medians.items()}
    result["runs"] = medians
    return result


def load_other_build(tree: Path, package: str) -> Any:
    """Another tree's compiled ``_dispatch`` in this process, as ``<package>._dispatch``
    (its imports of the shared modules resolve to this tree's, which only add names)."""
    import importlib.util
    import types

    path = next((tree / "nyxplug").glob("_dispatch*.so"))
    holder = types.ModuleType(package)
    holder.__path__ = []
    sys.modules[package] = holder
    spec = importlib.util.spec_from_file_location(f"{package}._dispatch", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def paired_builds(mods: list[Any], chunks: int, size: int = 1000) -> list[dict[str, float]]:
    """``dispatch_nowait`` without a rollout on each build's dispatcher, alternating
    chunks of ``size`` in one process: best and median ns per frame of each."""
    from nyxplug import Permission, PluginInfo

    dispatchers, corpora = [], []
    for mod in mods:
        d = mod.Dispatcher()
        await d.load_plugin(PluginInfo(7, "p", Permission.DATA_ACCESS), None, capacity=size)
        dispatchers.append(d)
        corpora.append(ready_headers(mod, (7,), size))
    samples: list[list[float]] = [[] for _ in mods]
    clock = time.perf_counter_ns
    for i in range(chunks):
        order = range(len(mods)) if i % 2 else reversed(range(len(mods)))
        for j in order:
            send, headers = dispatchers[j].dispatch_nowait, corpora[j]
            t0 = clock()
            for header in headers:
                send(compare.DATA, header)
            samples[j].append((clock() - t0) / size)
            await dispatchers[j].wait_idle()
    for d in dispatchers:
        await d.aclose()
    return [{"best": min(v), "median": statistics.median(v)} for v in samples]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.routes", description=__doc__)
    parser.add_argument("--frames", type=int, default=200_000, help="frames per e2e rep")
    parser.add_argument("--reps", type=int, default=9, help="interleaved e2e repetitions")
    parser.add_argument("--loop", choices=["uvloop", "asyncio"], default="uvloop")
    parser.add_argument("--before", type=Path, help="a built tree to compare 'no rollout' with")
    parser.add_argument("--rounds", type=int, default=6, help="before/after process pairs")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    paired = {
        label: compare._run(
            args.loop,
            paired_nowait(importlib.import_module(name), 400 if label == "compiled" else 40),
        )
        for label, name in IMPLEMENTATIONS.items()
    }
    e2e = e2e_rows(args.frames, args.loop, args.reps)
    versus = inproc = None
    if args.before is not None:
        versus = before_after(args.before.resolve(), 100_000, args.loop, args.rounds)
        other = load_other_build(args.before.resolve(), "nyxplug_before")
        here = importlib.import_module("nyxplug._dispatch")
        inproc = compare._run(args.loop, paired_builds([other, here], 600))
    if args.json:
        out = {"paired": paired, "e2e": e2e, "before_after": versus, "in_process": inproc}
        print(json.dumps(out, indent=2))
        return 0
    print(f"nyxplug routing benchmark - {compare.versions()} [{args.loop}]")
    print("\ndispatch_nowait, five plugins of one dispatcher, alternating chunks of 1000 (best)")
    for label, rows in paired.items():
        base = rows["no rollout"]
        cells = ", ".join(f"{row} {ns:.1f} ns ({ns - base:+.1f})" for row, ns in rows.items())
        print(f"{label:<10} {cells}")
    print(f"\nend to end, Python no-op handler, every frame keyed, {args.reps} runs each")
    for label, row in e2e.items():
        for suffix in ("", ", 1000 sessions"):
            for stat in ("median", "best"):
                tail = suffix + (" (best)" if stat == "best" else "")
                plain, canary = row["no rollout" + tail], row["canary 10 %" + tail]
                print(
                    f"{label:<10} {suffix[2:] or 'a key per frame':<15} {stat:<6} no rollout "
                    f"{plain:.1f} ns/frame, canary 10 % {canary:.1f} ns/frame "
                    f"({canary / plain - 1:+.1%})"
                )
    if versus is not None and inproc is not None:
        delta = versus["after"] - versus["before"]
        print(
            f"\nno rollout, dispatch_nowait, this tree vs {args.before}, separate processes: "
            f"{versus['after']:.1f} vs {versus['before']:.1f} ns ({delta:+.1f} ns)"
        )
        before_row, after_row = inproc
        print(
            "the same, both builds in one process, 600 alternating chunks: best "
            f"{after_row['best']:.2f} vs {before_row['best']:.2f} ns "
            f"({after_row['best'] - before_row['best']:+.2f}), median "
            f"{after_row['median']:.2f} vs {before_row['median']:.2f} ns "
            f"({after_row['median'] - before_row['median']:+.2f})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
