"""Hot reload speed: a whole ``PluginManager.reload`` and the bare ``Dispatcher.swap_handler``.

Rows, compiled and pure twin side by side (``--benchmark-group-by=func``):

* ``reload`` - the full pipeline for a small plugin with nothing queued: read the folder,
  import, ``on_load``, ``health()``, swap with state, old ``on_unload``;
* ``swap_handler`` - the dispatcher's part alone: stop the worker, hand over, restart.

The pause under sustained load and the file-change-to-serving time are in
``python -m benchmarks.reload``; the smoke tests here run both on a small scale.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from benchmarks import reload as bench
from nyxplug import Permission, PluginInfo


@pytest.fixture
def folder() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="nyxplug-bench-") as tmp:
        yield Path(tmp)


def test_reload(benchmark: Any, impl: Any, loop: asyncio.AbstractEventLoop, folder: Path) -> None:
    import sys

    sys.modules["nyxplug_bench_reload_sink"] = bench._Sink()  # type: ignore[assignment]
    bench.write_version(folder / "counter", "1.0.0")
    manager = bench._manager(impl, folder)
    loop.run_until_complete(manager.start())
    benchmark(lambda: loop.run_until_complete(manager.reload("counter")))
    assert manager.status("counter").reloads.rolled_back == 0
    loop.run_until_complete(manager.aclose())


def test_swap_handler(benchmark: Any, impl: Any, loop: asyncio.AbstractEventLoop) -> None:
    dispatcher = impl.Dispatcher()
    info = PluginInfo(1, "p", Permission.DATA_ACCESS)
    loop.run_until_complete(dispatcher.load_plugin(info, lambda message: None))
    benchmark(lambda: loop.run_until_complete(dispatcher.swap_handler(1, lambda message: None)))
    loop.run_until_complete(dispatcher.aclose())


def test_swap_pauses_smoke(impl: Any, loop: asyncio.AbstractEventLoop) -> None:
    run = loop.run_until_complete(bench.swap_pauses(impl, 5, spacing=0.0))
    assert run.lost_or_reordered == 0
    assert len(run.pauses) == 5 and all(p >= 0 for p in run.pauses)


def test_change_to_serving_smoke(impl: Any, loop: asyncio.AbstractEventLoop) -> None:
    times = loop.run_until_complete(bench.change_to_serving(impl, 1, debounce=0.05))
    assert len(times) == 1 and times[0] > 0
