"""Versions side by side in the runtime: what loading a version and switching the stable
version cost a host.

Run ``python -m benchmarks.versions`` (``--json`` for machine-readable output,
``--rounds N``). A ``PluginManager`` runs the plugin ``bench-geo`` from a real folder
(1.0.0), with a folder of version 2.0.0 beside it. Each round times (``perf_counter``):

* **load_version** - 2.0.0 staged as a hot reload stages code (read, import, instantiate,
  ``on_load``, ``health()``) and started on a lane of its own;
* **start_rollout** - the rollout's first route (10 %) and its audit line;
* **promote** / **rollback** - ``rollout_action``: the route switch, the record's versions
  exchanged, ``versions.json`` written atomically (with fsync) and the audit line. Both
  run on the event loop without awaiting: the time is how long every plugin's frames wait;
* **unload_version** - 2.0.0's lane drained and stopped.

Both dispatcher twins; uvloop when installed.
"""

from __future__ import annotations

import importlib
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks._timings import timings_main
from nyxplug.plugins import PluginManager, RolloutConfig

PLUGIN_ID = 79
NAME = "bench-geo"

SOURCE = """
class Entry:
    async def handle(self, message):
        pass
"""


def _write(root: Path, version: str) -> None:
    folder = root / f"{NAME}-{version}"
    folder.mkdir()
    (folder / "nyxplug.toml").write_text(
        f'[plugin]\nname = "{NAME}"\nid = {PLUGIN_ID}\nversion = "{version}"\n'
        'entry = "main:Entry"\napi = ">=1.0, <2"\n\n[permissions]\nframes = ["DATA_ACCESS"]\n'
    )
    (folder / "main.py").write_text(SOURCE)


def _ms(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {"p50_ms": statistics.median(ordered) * 1e3, "max_ms": ordered[-1] * 1e3}


async def switch(impl: Any, rounds: int) -> dict[str, dict[str, float]]:
    """``rounds`` rounds of load, roll out, promote, roll back, unload on ``impl``."""
    samples: dict[str, list[float]] = {
        name: []
        for name in ("load_version", "start_rollout", "promote", "rollback", "unload_version")
    }
    with tempfile.TemporaryDirectory(prefix="nyxplug-bench-versions-") as tmp:
        root = Path(tmp)
        _write(root, "1.0.0")
        manager = PluginManager(
            dispatcher=impl.Dispatcher(), plugin_dirs=[root], state_dir=root / "state",
            entry_points=False, include_registered=False, require_signatures=False,
        )  # fmt: skip
        async with manager:
            _write(root, "2.0.0")
            manager.discover()
            config = RolloutConfig.canary(steps=(10.0,), interval=3600.0)
            clock = time.perf_counter
            for _ in range(rounds):
                began = clock()
                await manager.load_version(NAME, "2.0.0")
                samples["load_version"].append(clock() - began)
                began = clock()
                await manager.start_rollout(NAME, "2.0.0", config)
                samples["start_rollout"].append(clock() - began)
                began = clock()
                manager.rollout_action(NAME, "promote")
                samples["promote"].append(clock() - began)
                began = clock()
                manager.rollout_action(NAME, "rollback")
                samples["rollback"].append(clock() - began)
                began = clock()
                await manager.unload_version(NAME, "2.0.0")
                samples["unload_version"].append(clock() - began)
    return {name: _ms(values) for name, values in samples.items()}


async def run_all(rounds: int) -> dict[str, Any]:
    logging.getLogger("nyxplug").setLevel(logging.CRITICAL)
    results: dict[str, Any] = {}
    for label, name in (("compiled", "nyxplug._dispatch"), ("pure twin", "nyxplug._dispatch_py")):
        impl = importlib.import_module(name)
        for step, values in (await switch(impl, rounds)).items():
            results[f"{step} ({label})"] = values
    return results


def main(argv: list[str] | None = None) -> int:
    return timings_main("python -m benchmarks.versions", run_all, argv, width=36, digits=2)


if __name__ == "__main__":
    sys.exit(main())
