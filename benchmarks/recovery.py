"""The recovery ladder: a SIGKILLed isolated plugin from the kill back to a closed breaker.

Run ``python -m benchmarks.recovery`` (``--json`` for machine-readable output,
``--rounds N``). One isolated plugin runs from a real folder under a ``PluginManager``
with a breaker that trips on its first failure and a ``[recovery]`` ladder whose first
step is ``restart``. Each round sends a frame that stays in the child, SIGKILLs the
child, and times, from the kill:

* **open** - the lost frame counted as a failure and the breaker tripped;
* **repairing** - the ladder's ``restart`` step shown on the breaker;
* **half-open** - a new child serves and the ladder sent the breaker half-open;
* **closed** - one probe frame, sent the moment it went half-open, handled by the
  new child and the breaker closed (the target: <= 50 ms p50).

Beside it, measured in the same run: the isolated plugin's own restart without a
breaker or ladder (``benchmarks.isolation``'s crash row: kill to a new child serving),
so the ladder's cost is the difference. The child's restart backoff is 0 in both, as
in that row; a host keeps its default (50 ms) unless it sets ``restart_backoff``.
Both dispatcher twins; uvloop on the host side when installed.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks import isolation
from benchmarks._timings import timings_main
from nyxplug import BreakerState, CircuitOpen, FrameType, PluginHeader
from nyxplug.config import HostConfig
from nyxplug.isolation import IsolationOptions
from nyxplug.plugins import PluginManager

PLUGIN_ID = 78
NAME = "bench-ladder"

#: A frame with payload ``hold`` stays in the child (it is killed meanwhile).
SOURCE = """
import time

class Entry:
    async def handle(self, message):
        if message.payload == b"hold":
            time.sleep(30)
"""

MANIFEST = f"""
[plugin]
name = "{NAME}"
id = {PLUGIN_ID}
version = "1.0.0"
entry = "main:Entry"
api = ">=1.0, <2"

[permissions]
frames = ["DATA_ACCESS"]

[resources]
isolation = "process"

[breaker]
window_size = 1
minimum_calls = 1
open_wait = 60.0
half_open_probes = 1
record_every = 1

[recovery]
steps = ["restart", "quarantine"]
step_timeout = 5.0
"""

MILESTONES = ("open", "repairing", "half_open", "closed")


def _ms(samples: list[float]) -> dict[str, float]:
    return {"p50_ms": statistics.median(samples) * 1e3, "max_ms": max(samples) * 1e3}


async def ladder(impl: Any, rounds: int) -> dict[str, dict[str, float]]:
    """Kill -> open -> repairing -> half-open -> closed, ``rounds`` times."""
    with tempfile.TemporaryDirectory(prefix="nyxplug-bench-") as tmp:
        root = Path(tmp)
        folder = root / NAME
        folder.mkdir()
        (folder / "nyxplug.toml").write_text(MANIFEST)
        (folder / "main.py").write_text(SOURCE)
        options = IsolationOptions(restart_backoff=0.0, stable_after=0.0, max_restarts=rounds + 5)
        manager = PluginManager(
            HostConfig(isolation=options), dispatcher=impl.Dispatcher(), plugin_dirs=[root],
            state_dir=root / ".state", entry_points=False, include_registered=False,
            require_signatures=False,
        )  # fmt: skip
        async with manager:
            return await _rounds(manager, rounds)


async def _rounds(manager: PluginManager, rounds: int) -> dict[str, dict[str, float]]:
    d = manager.dispatcher
    record = manager._record(NAME)
    ladder = record.recovery
    assert ladder is not None
    stamps: dict[str, float] = {}
    reached: dict[str, asyncio.Event] = {name: asyncio.Event() for name in MILESTONES}
    names = {BreakerState.OPEN: "open", BreakerState.HALF_OPEN: "half_open",
             BreakerState.CLOSED: "closed"}  # fmt: skip

    def note(state: BreakerState) -> None:  # the ladder's listener, timed on the way
        name = names.get(state)
        if name is not None and name not in stamps:
            stamps[name] = time.perf_counter()
            reached[name].set()
        ladder.breaker_changed(state)

    d.watch_breaker(PLUGIN_ID, note)
    mark = ladder._mark

    def marked(step: str | None) -> None:
        if step == "restart" and "repairing" not in stamps:
            stamps["repairing"] = time.perf_counter()
        mark(step)

    ladder._mark = marked  # type: ignore[method-assign]
    header = PluginHeader(PLUGIN_ID).encode()
    samples: dict[str, list[float]] = {name: [] for name in MILESTONES}
    for _ in range(rounds):
        stamps.clear()
        for event in reached.values():
            event.clear()
        plugin = manager.instance(NAME)
        pid = plugin.pid
        await d.dispatch(FrameType.DATA, header, b"hold")
        while plugin.stats().in_child == 0:
            await asyncio.sleep(0)  # the frame is on its way to the child
        killed = time.perf_counter()
        os.kill(pid, signal.SIGKILL)
        async with asyncio.timeout(10.0):
            await reached["half_open"].wait()
            await d.dispatch(FrameType.DATA, header, b"probe")
            await reached["closed"].wait()
        for name in MILESTONES:
            samples[name].append(stamps[name] - killed)
        try:
            await d.dispatch(FrameType.DATA, header, b"after")
        except CircuitOpen:  # pragma: no cover - it is closed
            raise
        await d.wait_idle(PLUGIN_ID)
    recovery = manager.status(NAME).recovery
    assert recovery is not None and recovery.recoveries == rounds, recovery
    return {name: _ms(values) for name, values in samples.items()}


async def run_all(rounds: int) -> dict[str, Any]:
    logging.getLogger("nyxplug").setLevel(logging.CRITICAL)  # every kill is logged: quiet
    results: dict[str, Any] = {}
    restart = await isolation.crash_recovery(rounds)
    results["isolated restart alone (no breaker, no ladder)"] = {
        "p50_ms": restart["restart_p50_ms"], "max_ms": restart["restart_max_ms"],
    }  # fmt: skip
    for label, name in (("compiled", "nyxplug._dispatch"), ("pure twin", "nyxplug._dispatch_py")):
        impl = importlib.import_module(name)
        for milestone, values in (await ladder(impl, rounds)).items():
            results[f"kill -> {milestone} ({label})"] = values
    return results


def main(argv: list[str] | None = None) -> int:
    return timings_main("python -m benchmarks.recovery", run_all, argv, width=50, digits=1)


if __name__ == "__main__":
    sys.exit(main())
