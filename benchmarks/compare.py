"""One table: nyxplug (compiled and pure) side by side with what users would otherwise write.

Run ``python -m benchmarks.compare`` (or ``nyxplug bench``). Every scenario runs in this one
process; repetitions are interleaved (A, B, C, A, B, C, ...) so drift on a noisy machine hits
every row alike, and each row reports the median (and min) ns per frame. Only ratios from
one run are meaningful; compare rows, not runs.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import gc
import importlib
import itertools
import platform
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import cbor2

from benchmarks._corpus import encoded_headers, ready_headers

try:
    import uvloop
except ImportError:  # pragma: no cover - uvloop is optional
    uvloop = None  # type: ignore[assignment]

DATA = 0x52
PLUGIN = 7


def _loop_factory(kind: str) -> Callable[[], asyncio.AbstractEventLoop]:
    if kind == "uvloop":
        assert uvloop is not None
        return uvloop.new_event_loop
    return asyncio.new_event_loop


def _run(kind: str, coro: Any) -> Any:
    with asyncio.Runner(loop_factory=_loop_factory(kind)) as runner:
        return runner.run(coro)


def _info() -> Any:
    from nyxplug import Permission, PluginInfo

    return PluginInfo(PLUGIN, "bench", Permission.DATA_ACCESS)


# -- scenarios: each returns elapsed ns for n frames ---------------------------------


def _closed_breaker(d: Any, plugin_id: int = PLUGIN) -> None:
    """Give a plugin a circuit breaker that stays CLOSED (nothing fails)."""
    from nyxplug import BreakerConfig

    d.set_breaker(plugin_id, BreakerConfig())


async def _nowait(impl: Any, n: int, ready: bool, breaker: bool = False) -> int:
    """dispatch_nowait alone: decode (or not) + route + permission + enqueue + counters
    (``breaker``: with a closed circuit breaker on the plugin)."""
    d = impl.Dispatcher()
    await d.load_plugin(_info(), None, capacity=1024)
    if breaker:
        _closed_breaker(d)
    corpus = ready_headers(impl) if ready else encoded_headers()
    send = d.dispatch_nowait
    frames = itertools.cycle(corpus)
    elapsed = 0
    done = 0
    while done < n:
        chunk = list(itertools.islice(frames, min(1000, n - done)))  # fits the queue
        t0 = time.perf_counter_ns()
        for header in chunk:
            send(DATA, header)
        elapsed += time.perf_counter_ns() - t0
        done += len(chunk)
        await d.wait_idle(PLUGIN)  # the worker drains between timed chunks
    await d.aclose()
    return elapsed


async def _batch(impl: Any, n: int, mode: str) -> int:
    """The frames of "nowait, ready header" (no payload) sent 1000 at a time: one
    ``try_dispatch`` per frame (``mode="each"``), one ``try_dispatch_many`` per chunk
    (``"many"``), or one ``try_dispatch_framed`` over the chunk's SPEC 8 framed messages
    (``"framed"``, decoding included)."""
    from nyxplug import frame_message

    d = impl.Dispatcher()
    await d.load_plugin(_info(), None, capacity=1024)
    frames = [impl.PluginFrame(DATA, h) for h in ready_headers(impl)]
    buffer = b"".join(frame_message(f.encode()) for f in frames)
    try_dispatch = d.try_dispatch
    elapsed = 0
    done = 0
    while done < n:
        count = min(len(frames), n - done)  # 1024 fills the queue exactly
        chunk = frames[:count]
        if mode == "each":
            t0 = time.perf_counter_ns()
            for frame in chunk:
                try_dispatch(frame.frame_type, frame.header, frame.payload)
            elapsed += time.perf_counter_ns() - t0
        elif mode == "many":
            t0 = time.perf_counter_ns()
            result = d.try_dispatch_many(chunk)
            elapsed += time.perf_counter_ns() - t0
            assert result.dispatched == count, result
        else:
            data = (
                buffer
                if count == len(frames)
                else b"".join(frame_message(f.encode()) for f in chunk)
            )
            t0 = time.perf_counter_ns()
            result = d.try_dispatch_framed(data)
            elapsed += time.perf_counter_ns() - t0
            assert result.dispatched == count, result
        done += count
        await d.wait_idle(PLUGIN)  # the worker drains between timed chunks
    await d.aclose()
    return elapsed


def _call_floor(n: int) -> int:
    """A Python->C call that does nothing (``id(x)``): the floor under any dispatch call."""
    chunk = list(itertools.islice(itertools.cycle(encoded_headers()), 1000))
    elapsed = 0
    for _ in range(n // len(chunk)):
        t0 = time.perf_counter_ns()
        for header in chunk:
            id(header)
        elapsed += time.perf_counter_ns() - t0
    return elapsed


async def _refused_when_full(impl: Any, n: int) -> int:
    """try_dispatch into a full queue: every check runs, the frame is refused with a status."""
    from nyxplug import DispatchStatus

    d = impl.Dispatcher()
    await d.load_plugin(_info(), None, capacity=1024)
    corpus = encoded_headers()
    try_dispatch = d.try_dispatch
    for header in corpus:  # fill the queue; the worker cannot run until we await
        try_dispatch(DATA, header)
    frames = itertools.islice(itertools.cycle(corpus), n)
    t0 = time.perf_counter_ns()
    for header in frames:
        try_dispatch(DATA, header)
    elapsed = time.perf_counter_ns() - t0
    assert try_dispatch(DATA, corpus[0]) is DispatchStatus.WOULD_BLOCK
    await d.aclose()
    return elapsed


def _run_end_to_end(kind: str, impl: Any, *args: Any) -> int:
    return int(_run(kind, _end_to_end(impl, *args)))


def _noop(message: Any) -> None:
    """The smallest real handler: a synchronous Python function that does nothing."""


async def _end_to_end(
    impl: Any,
    n: int,
    ready: bool,
    capacity: int,
    plugins: int,
    wait: bool,
    handler: Callable[[Any], None] | None = None,
    breaker: bool = False,
) -> int:
    """Producer task -> each plugin's worker -> handler, until every frame is handled.

    ``handler=None`` is nyxplug's built-in no-op consumer (counts and frees in C);
    ``breaker``: the first plugin has a closed circuit breaker recording every outcome.
    """
    from nyxplug import DispatchStatus, Permission, PluginInfo

    d = impl.Dispatcher()
    ids = tuple(range(1, plugins + 1))
    for plugin_id in ids:
        await d.load_plugin(
            PluginInfo(plugin_id, "bench", Permission.DATA_ACCESS), handler, capacity=capacity
        )
    if breaker:
        _closed_breaker(d, ids[0])
    corpus = ready_headers(impl, ids) if ready else encoded_headers(ids)
    frames = itertools.islice(itertools.cycle(corpus), n)
    t0 = time.perf_counter_ns()
    if wait:
        dispatch = d.dispatch
        for header in frames:
            await dispatch(DATA, header)
    else:
        try_dispatch, dispatch, ok = d.try_dispatch, d.dispatch, DispatchStatus.OK
        for header in frames:
            if try_dispatch(DATA, header) is not ok:
                await dispatch(DATA, header)
    await d.wait_idle()
    elapsed = time.perf_counter_ns() - t0
    await d.aclose()
    return elapsed


async def _asyncio_queue(n: int, capacity: int, plugins: int) -> int:
    """The hand-rolled baseline: an asyncio.Queue per plugin, cbor2.loads, a draining consumer."""
    queues = {i: asyncio.Queue(capacity) for i in range(1, plugins + 1)}
    done = asyncio.Event()
    handled = 0

    async def consume(queue: asyncio.Queue[Any]) -> None:
        nonlocal handled
        while True:
            item = await queue.get()
            handled += 1
            while True:
                try:
                    item = queue.get_nowait()
                except asyncio.QueueEmpty:
                    break
                handled += 1
            del item
            if handled >= n:
                done.set()

    tasks = [asyncio.create_task(consume(q)) for q in queues.values()]
    corpus = encoded_headers(tuple(queues))
    t0 = time.perf_counter_ns()
    for raw in itertools.islice(itertools.cycle(corpus), n):
        header = cbor2.loads(raw)
        queue = queues.get(header["id"])
        if queue is None:
            raise LookupError(header["id"])
        await queue.put((DATA, header, b""))
    await done.wait()
    elapsed = time.perf_counter_ns() - t0
    for task in tasks:
        task.cancel()
    return elapsed


async def _anyio_streams(n: int, capacity: int) -> int:
    """anyio memory object streams used idiomatically: await send / async for, cbor2.loads."""
    import anyio

    send, receive = anyio.create_memory_object_stream[Any](capacity)
    corpus = encoded_headers()
    t0 = time.perf_counter_ns()

    async def consume() -> None:
        async with receive:
            async for _item in receive:
                pass

    async with anyio.create_task_group() as tg:
        tg.start_soon(consume)
        async with send:
            for raw in itertools.islice(itertools.cycle(corpus), n):
                await send.send((DATA, cbor2.loads(raw), b""))
    return time.perf_counter_ns() - t0


def _codec(impl: Any, n: int, what: str) -> int:
    corpus = encoded_headers()
    frames = list(itertools.islice(itertools.cycle(corpus), n))
    if what == "decode":
        fn: Callable[[Any], Any] = impl.PluginHeader.decode if impl is not None else cbor2.loads
        t0 = time.perf_counter_ns()
        for raw in frames:
            fn(raw)
        return time.perf_counter_ns() - t0
    if impl is not None:
        objs = [impl.PluginHeader.decode(raw) for raw in frames[:1024]]
        encode = [h.encode for h in objs]
        t0 = time.perf_counter_ns()
        for fn_ in itertools.islice(itertools.cycle(encode), n):
            fn_()
        return time.perf_counter_ns() - t0
    maps = [cbor2.loads(raw) for raw in frames[:1024]]
    dumps = cbor2.dumps
    t0 = time.perf_counter_ns()
    for m in itertools.islice(itertools.cycle(maps), n):
        dumps(m)
    return time.perf_counter_ns() - t0


async def _load_unload(impl: Any, count: int) -> int:
    from nyxplug import Permission, PluginInfo

    d = impl.Dispatcher()
    infos = [PluginInfo(i, f"p{i}", Permission.DATA_ACCESS) for i in range(count)]
    t0 = time.perf_counter_ns()
    for info in infos:
        await d.load_plugin(info)
    for info in infos:
        await d.unload_plugin(info.id)
    return time.perf_counter_ns() - t0


# -- the table ---------------------------------------------------------------------


def build_rows(
    n: int, loops: list[str], impls: dict[str, Any]
) -> list[tuple[str, str, int, Callable[[], int]]]:
    """(group, row name, frames per rep, runner) for every scenario."""
    rows: list[tuple[str, str, int, Callable[[], int]]] = []

    def add(group: str, name: str, frames: int, fn: Callable[[], int]) -> None:
        rows.append((group, name, frames, fn))

    for kind in loops:
        for tag, impl in impls.items():
            small = n if tag == "cython" else max(n // 25, 10_000)
            add(
                "nowait, CBOR bytes",
                f"nyxplug {tag} [{kind}]",
                small,
                lambda impl=impl, k=kind, m=small: _run(k, _nowait(impl, m, False)),
            )
            add(
                "nowait, ready header",
                f"nyxplug {tag} [{kind}]",
                small,
                lambda impl=impl, k=kind, m=small: _run(k, _nowait(impl, m, True)),
            )
            add(
                "nowait, ready header",
                f"nyxplug {tag}, closed breaker [{kind}]",
                small,
                lambda impl=impl, k=kind, m=small: _run(k, _nowait(impl, m, True, True)),
            )
            for label, mode in (
                ("try_dispatch per frame, ready frame", "each"),
                ("try_dispatch_many, ready frames", "many"),
                ("try_dispatch_framed, SPEC 8 buffer", "framed"),
            ):
                add(
                    label,
                    f"nyxplug {tag} [{kind}]",
                    small,
                    lambda impl=impl, k=kind, m=small, md=mode: _run(k, _batch(impl, m, md)),
                )
            add(
                "try_dispatch, queue full (refused)",
                f"nyxplug {tag} [{kind}]",
                small,
                lambda impl=impl, k=kind, m=small: _run(k, _refused_when_full(impl, m)),
            )
            for label, ready, cap, plugins, wait, handler in (
                ("e2e, CBOR bytes, cap 1024", False, 1024, 1, False, None),
                ("e2e, ready header, cap 1024", True, 1024, 1, False, None),
                ("e2e, await dispatch, CBOR bytes", False, 1024, 1, True, None),
                ("e2e, 8 plugins, CBOR bytes", False, 1024, 8, True, None),
                ("e2e, cap 8, CBOR bytes", False, 8, 1, True, None),
                ("e2e, CBOR bytes, Python no-op handler", False, 1024, 1, False, _noop),
            ):
                add(
                    label,
                    f"nyxplug {tag} [{kind}]",
                    small,
                    functools.partial(
                        _run_end_to_end, kind, impl, small, ready, cap, plugins, wait, handler
                    ),
                )
        base = max(n // 10, 10_000)
        for label, cap, plugins in (
            ("e2e, CBOR bytes, cap 1024", 1024, 1),
            ("e2e, await dispatch, CBOR bytes", 1024, 1),
            ("e2e, 8 plugins, CBOR bytes", 1024, 8),
            ("e2e, cap 8, CBOR bytes", 8, 1),
            ("e2e, CBOR bytes, Python no-op handler", 1024, 1),
        ):
            add(
                label,
                f"asyncio.Queue + cbor2 [{kind}]",
                base,
                lambda k=kind, m=base, c=cap, p=plugins: _run(k, _asyncio_queue(m, c, p)),
            )
        try:
            import anyio  # noqa: F401
        except ImportError:
            pass
        else:
            small_anyio = max(n // 40, 5_000)
            add(
                "e2e, CBOR bytes, cap 1024",
                f"anyio streams + cbor2 [{kind}]",
                small_anyio,
                lambda k=kind, m=small_anyio: _run(k, _anyio_streams(m, 1024)),
            )
    add("floor: a Python->C call doing nothing", "id(x)", n, lambda: _call_floor(n))
    for what in ("decode", "encode"):
        for tag, impl in impls.items():
            add(
                f"header {what}",
                f"PluginHeader.{what} {tag}",
                n,
                lambda impl=impl, w=what: _codec(impl, n, w),
            )
        add(
            f"header {what}",
            f"cbor2.{'loads' if what == 'decode' else 'dumps'}",
            n,
            lambda w=what: _codec(None, n, w),
        )
    for tag, impl in impls.items():
        add(
            "load + unload 1000 plugins",
            f"nyxplug {tag} [{loops[0]}]",
            1000,
            lambda impl=impl: _run(loops[0], _load_unload(impl, 1000)),
        )
    return rows


def measure(
    rows: list[tuple[str, str, int, Callable[[], int]]], reps: int
) -> dict[str, list[float]]:
    samples: dict[str, list[float]] = {f"{g}|{name}": [] for g, name, _, _ in rows}
    for _g, _name, _frames, fn in rows:  # one warm-up each
        fn()
    for _ in range(reps):
        for group, name, frames, fn in rows:
            gc.collect()
            samples[f"{group}|{name}"].append(fn() / frames)
    return samples


def render(
    rows: list[tuple[str, str, int, Callable[[], int]]], samples: dict[str, list[float]]
) -> str:
    lines = []
    header = (
        f"{'scenario / implementation':<58} {'median ns':>10} {'min ns':>8} "
        f"{'frames/s':>12} {'vs asyncio.Queue':>17}"
    )
    groups: dict[str, list[tuple[str, float, float]]] = {}
    for group, name, _frames, _fn in rows:
        values = samples[f"{group}|{name}"]
        groups.setdefault(group, []).append((name, statistics.median(values), min(values)))
    for group, entries in groups.items():
        lines.append("")
        lines.append(f"## {group}")
        lines.append(header)
        baselines = {
            name.split("[")[-1]: med for name, med, _ in entries if name.startswith("asyncio.Queue")
        }
        for name, med, low in entries:
            loop = name.split("[")[-1] if "[" in name else ""
            base = baselines.get(loop)
            ratio = f"{base / med:.1f}x" if base else ""
            rate = 1e9 / med if med else 0.0
            lines.append(f"{name:<58} {med:>10.1f} {low:>8.1f} {rate:>12,.0f} {ratio:>17}")
    return "\n".join(lines)


def versions() -> str:
    import nyxplug

    parts = [
        f"Python {platform.python_version()} ({platform.python_implementation()})",
        f"{platform.machine()}, {platform.processor() or 'cpu'}",
        f"nyxplug {nyxplug.__version__}",
    ]
    for name in ("Cython", "uvloop", "anyio", "cbor2", "msgspec"):
        try:
            parts.append(f"{name} {importlib.import_module(name).__version__}")
        except Exception:
            pass
    return ", ".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="nyxplug bench", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--frames", type=int, default=1_000_000, help="frames per repetition (compiled rows)"
    )
    parser.add_argument("--reps", type=int, default=5, help="interleaved repetitions per row")
    parser.add_argument("--loop", choices=["uvloop", "asyncio", "both"], default="both")
    parser.add_argument("--no-pure", action="store_true", help="skip the pure-Python twin")
    parser.add_argument(
        "--memory", action="store_true", help="also print the memory table (benchmarks/memory.py)"
    )
    args = parser.parse_args(argv)
    impls = {"cython": importlib.import_module("nyxplug._dispatch")}
    if not args.no_pure:
        impls["python"] = importlib.import_module("nyxplug._dispatch_py")
    loops = ["uvloop", "asyncio"] if args.loop == "both" else [args.loop]
    if "uvloop" in loops and uvloop is None:
        loops = ["asyncio"]
    rows = build_rows(args.frames, loops, impls)
    t0 = time.perf_counter()
    samples = measure(rows, args.reps)
    print(f"nyxplug benchmark - {versions()}")
    print(f"{args.reps} interleaved reps per row; median and min ns per frame; lower is better")
    print(render(rows, samples))
    if args.memory:
        from benchmarks import memory

        print("\n## memory")
        memory.main(["--no-pure"] if args.no_pure else [])
    print(f"\n(total {time.perf_counter() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
