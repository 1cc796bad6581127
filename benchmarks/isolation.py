"""Out-of-process plugins: round trip, pipelined throughput, start time, memory, crash recovery.

Run ``python -m benchmarks.isolation`` (``--json`` for machine-readable output). Each
figure is next to what a user would compare it with, measured in the same run:

* **round trip** - one 64-byte frame to an isolated echo plugin and its receipt back
  (``IsolatedPlugin.handle_batch([frame])``: encode, socket, decode, the plugin's
  ``handle``, ack), p50/p99, beside the kernel floor: a blocking ``socketpair``
  ping-pong of 64 bytes between two processes. Target: <= 2x the floor. The floor and
  the round trip are measured in alternating blocks (the machine may be shared: each
  block's percentiles, then the median over blocks), on each host loop (asyncio and
  uvloop; the child runs uvloop when it is installed). ``request`` is the same frame
  through ``Dispatcher.request`` (the dispatcher's queue and worker in front, and the
  reply carried back: ASK before the frame, RESULT before the ACK).
* **pipelined** - frames dispatched as fast as the sender can (``await dispatch``,
  capacity 4096) through the dispatcher into the isolated plugin, batched on the
  wire, until every frame is acknowledged by the child. Target: >= 1 M frames/s.
* **start to ready** - ``on_load`` (spawn, layers, handshake, plugin import and
  ``on_load`` in the child) through the fork server, and with one exec per child.
  Target: <= 50 ms.
* **memory** - unique memory (USS: private clean + dirty pages, /proc/PID/smaps_rollup)
  of each of 8 idle isolated children. Target: <= 10 MiB each.
* **crash** - a child SIGKILLed with frames in it: time until the host has counted
  them lost, and until a new child serves.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import sys
import time
from typing import Any

from nyxplug import FrameType, Permission, PluginHeader, PluginInfo, PluginMessage
from nyxplug.isolation import IsolatedPlugin, IsolationOptions

ECHO = b"""
class Entry:
    def __init__(self):
        self.count = 0

    async def handle(self, message):
        self.count += 1

    def export_state(self):
        return self.count
"""

BATCH_ECHO = b"""
class Entry:
    def __init__(self):
        self.count = 0

    def handle_batch(self, messages):
        self.count += len(messages)

    def export_state(self):
        return self.count
"""

PLUGIN_ID = 77


def make_plugin(
    source: bytes = ECHO, *, spawn: str = "fork-server", dispatcher: Any = None, **options: Any
) -> IsolatedPlugin:
    """The echo plugin; with ``dispatcher``, it answers requests as the manager wires it."""
    pending = None if dispatcher is None else (lambda: dispatcher._pending_replies(PLUGIN_ID))
    return IsolatedPlugin(
        name="bench-echo", plugin_id=PLUGIN_ID, version="1.0.0", entry_module="echo",
        entry_attr="Entry", files={"echo.py": source}, pending_replies=pending,
        options=IsolationOptions(spawn=spawn, **options),  # type: ignore[arg-type]
    )  # fmt: skip


def frame(size: int = 64) -> PluginMessage:
    header = PluginHeader(PLUGIN_ID, 0, b"")
    payload = b"x" * max(0, size - len(header.encode()))
    return PluginMessage(FrameType.DATA, header, payload)


def percentiles(samples: list[float]) -> dict[str, float]:
    samples = sorted(samples)
    return {
        "p50_us": samples[len(samples) // 2] * 1e6,
        "p99_us": samples[int(len(samples) * 0.99)] * 1e6,
    }


def median_of(blocks: list[dict[str, float]]) -> dict[str, float]:
    """Each figure's median over blocks measured apart (noise on a shared machine)."""
    return {key: statistics.median(block[key] for block in blocks) for key in blocks[0]}


class KernelFloor:
    """A blocking 64-byte socketpair ping-pong with a forked echo process."""

    def __init__(self) -> None:
        self.sock, echo = socket.socketpair()
        self.pid = os.fork()
        if self.pid == 0:
            self.sock.close()
            try:
                while data := echo.recv(64):
                    echo.sendall(data)
            finally:
                os._exit(0)
        echo.close()

    def block(self, rounds: int) -> dict[str, float]:
        sock, message = self.sock, b"x" * 64
        samples = []
        clock = time.perf_counter
        for _ in range(rounds):
            start = clock()
            sock.sendall(message)
            sock.recv(64)
            samples.append(clock() - start)
        return percentiles(samples)

    def close(self) -> None:
        self.sock.close()
        os.waitpid(self.pid, 0)


async def round_trips(rounds: int, blocks: int) -> dict[str, dict[str, float]]:
    """The kernel floor, ``handle_batch`` of one frame and ``Dispatcher.request`` of one
    frame, in ``blocks`` alternating blocks of ``rounds`` each; medians over the blocks."""
    from nyxplug import Dispatcher

    dispatcher = Dispatcher()
    plugin = make_plugin(dispatcher=dispatcher)  # a request carries its (None) reply back
    await plugin.on_load(None)
    await dispatcher.load_plugin(
        PluginInfo(PLUGIN_ID, "bench-echo", Permission.DATA_ACCESS), plugin, capacity=4096
    )
    floor = KernelFloor()
    batch = [frame()]
    header, payload = batch[0].header, batch[0].payload
    clock = time.perf_counter

    async def block(call: Any, *args: Any) -> dict[str, float]:
        samples = []
        for _ in range(rounds):
            start = clock()
            await call(*args)
            samples.append(clock() - start)
        return percentiles(samples)

    one_batch = (plugin.handle_batch, batch)
    one_request = (dispatcher.request, FrameType.DATA, header, payload)

    results: dict[str, list[dict[str, float]]] = {"floor": [], "round trip": [], "request": []}
    try:
        floor.block(1000)  # warm up
        await block(*one_batch)
        await block(*one_request)
        for _ in range(blocks):
            results["floor"].append(floor.block(rounds))
            results["round trip"].append(await block(*one_batch))
            results["request"].append(await block(*one_request))
    finally:
        floor.close()
        await dispatcher.aclose()
        await plugin.aclose()
    return {name: median_of(values) for name, values in results.items()}


async def pipelined(impl: Any, frames: int, source: bytes = ECHO) -> dict[str, float]:
    dispatcher = impl.Dispatcher()
    plugin = make_plugin(source, dispatcher=dispatcher)
    await plugin.on_load(None)
    await dispatcher.load_plugin(
        PluginInfo(PLUGIN_ID, "bench-echo", Permission.DATA_ACCESS), plugin, capacity=4096
    )
    header = PluginHeader(PLUGIN_ID, 0, b"")
    payload = b"x" * (64 - len(header.encode()))
    dispatch = dispatcher.dispatch
    try:
        start = time.perf_counter()
        for _ in range(frames):
            await dispatch(FrameType.DATA, header, payload)
        await dispatcher.wait_idle(PLUGIN_ID)
        elapsed = time.perf_counter() - start
        stats = plugin.stats()
        assert stats.frames_completed == frames, stats
    finally:
        await dispatcher.aclose()
        await plugin.aclose()
    stats = plugin.stats()
    return {"frames_per_s": frames / elapsed, "mean_batch": frames / max(1, stats.batches_sent)}


async def start_to_ready(spawn: str, rounds: int) -> dict[str, float]:
    samples = []
    for _ in range(rounds):
        plugin = make_plugin(spawn=spawn)
        start = time.perf_counter()
        await plugin.on_load(None)
        samples.append(time.perf_counter() - start)
        await plugin.aclose()
    samples.sort()
    return {"p50_ms": samples[len(samples) // 2] * 1e3, "max_ms": samples[-1] * 1e3}


def unique_memory(pid: int) -> int:
    total = 0
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith(("Private_Clean:", "Private_Dirty:")):
                total += int(line.split()[1]) * 1024
    return total


async def memory(children: int) -> dict[str, float]:
    plugins = [make_plugin() for _ in range(children)]
    try:
        for plugin in plugins:
            await plugin.on_load(None)
            await plugin.handle_batch([frame()])
        sizes = [unique_memory(plugin.pid) for plugin in plugins if plugin.pid is not None]
    finally:
        for plugin in plugins:
            await plugin.aclose()
    return {"uss_mib_mean": statistics.mean(sizes) / 2**20, "uss_mib_max": max(sizes) / 2**20}


async def crash_recovery(rounds: int) -> dict[str, float]:
    """SIGKILL the child while a batch is in it; time to 'lost' and to serving again."""
    plugin = make_plugin(
        source=b"import time\nclass Entry:\n    async def handle(self, m):\n"
        b"        time.sleep(10)\n",
        restart_backoff=0.0, max_restarts=rounds + 1, stable_after=0.0,
    )  # fmt: skip
    await plugin.on_load(None)
    detect, restart = [], []
    try:
        for _ in range(rounds):
            pid = plugin.pid
            assert pid is not None
            task = asyncio.ensure_future(plugin.handle_batch([frame()]))
            while plugin.stats().in_child == 0:
                await asyncio.sleep(0)
            killed = time.perf_counter()
            os.kill(pid, signal.SIGKILL)
            try:
                await task
            except Exception:
                pass
            detect.append(time.perf_counter() - killed)
            while plugin.stats().state != "running" or plugin.pid == pid:
                await asyncio.sleep(0.0005)
            restart.append(time.perf_counter() - killed)
    finally:
        await plugin.aclose()
    return {
        "detect_p50_ms": statistics.median(detect) * 1e3,
        "detect_max_ms": max(detect) * 1e3,
        "restart_p50_ms": statistics.median(restart) * 1e3,
        "restart_max_ms": max(restart) * 1e3,
    }


async def run_all(quick: bool) -> dict[str, Any]:
    import importlib

    scale = 10 if quick else 1
    results: dict[str, Any] = {}
    trips = await round_trips(2000 // scale, 11 // scale + 1)
    results["kernel floor (64 B ping-pong)"] = trips["floor"]
    results["round trip (64 B frame)"] = trips["round trip"]
    results["request through the dispatcher (64 B frame)"] = trips["request"]
    for label, name in (("compiled", "nyxplug._dispatch"), ("pure twin", "nyxplug._dispatch_py")):
        impl = importlib.import_module(name)
        results[f"pipelined, handle per frame ({label})"] = await pipelined(impl, 400000 // scale)
        results[f"pipelined, handle_batch ({label})"] = await pipelined(
            impl, 400000 // scale, BATCH_ECHO
        )
    results["start to ready (fork server)"] = await start_to_ready("fork-server", 20 // scale + 3)
    results["start to ready (exec)"] = await start_to_ready("exec", 10 // scale + 2)
    results["unique memory per child"] = await memory(8 // (2 if quick else 1))
    results["crash detection and restart"] = await crash_recovery(20 // scale + 2)
    return results


async def run_trips(quick: bool) -> dict[str, Any]:
    """Only the round trip beside its floor, and the pipelined rows (``--round-trip``)."""
    import importlib

    scale = 10 if quick else 1
    trips = await round_trips(2000 // scale, 11 // scale + 1)
    results: dict[str, Any] = {
        "kernel floor (64 B ping-pong)": trips["floor"],
        "round trip (64 B frame)": trips["round trip"],
        "request through the dispatcher (64 B frame)": trips["request"],
    }
    impl = importlib.import_module("nyxplug._dispatch")
    for _ in range(3):  # best of three: the machine may be shared
        for label, source in (("handle per frame", ECHO), ("handle_batch", BATCH_ECHO)):
            row = await pipelined(impl, 400000 // scale, source)
            key = f"pipelined, {label} (compiled, best of 3)"
            if row["frames_per_s"] > results.get(key, {}).get("frames_per_s", 0):
                results[key] = row
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.isolation")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--quick", action="store_true", help="a tenth of the work (smoke run)")
    parser.add_argument(
        "--loop", choices=("uvloop", "asyncio", "both"), default="uvloop",
        help="the host's event loop (both: one after the other, in this run)",
    )  # fmt: skip
    parser.add_argument(
        "--round-trip", action="store_true",
        help="only the round trip beside its kernel floor, and the pipelined rows",
    )  # fmt: skip
    args = parser.parse_args(argv)
    loops = ("asyncio", "uvloop") if args.loop == "both" else (args.loop,)
    work = run_trips if args.round_trip else run_all
    every: dict[str, Any] = {}
    for name in loops:
        if name == "uvloop":
            import uvloop

            every[name] = uvloop.run(work(args.quick))
        else:
            every[name] = asyncio.run(work(args.quick))
    if args.json:
        print(json.dumps(every if len(loops) > 1 else every[loops[0]], indent=2))
        return 0
    for name, results in every.items():
        print(f"python {sys.version.split()[0]}, {os.cpu_count()} cores, {name} on the host side")
        for row, values in results.items():
            shown = ", ".join(f"{key} {value:,.1f}" for key, value in values.items())
            print(f"  {row:<50} {shown}")
        floor = results["kernel floor (64 B ping-pong)"]["p50_us"]
        trip = results["round trip (64 B frame)"]["p50_us"]
        print(f"  {'round trip p50 / kernel floor p50':<50} {trip / floor:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
