"""Out-of-process plugins: one 64-byte frame's round trip, and a pipelined burst.

Rows (``--benchmark-group-by=func``): ``round_trip`` is ``IsolatedPlugin.handle_batch``
of one frame (socket, child decode, the plugin's ``handle``, ack back); ``pipelined``
pushes 20,000 frames through the dispatcher (compiled and pure twin) into the
isolated plugin and waits for every receipt. The kernel floor, start time, memory per
child and crash recovery are in ``python -m benchmarks.isolation``; the smoke test
here runs a tenth of it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from benchmarks import isolation as bench
from nyxplug.isolation import IsolatedPlugin


@pytest.fixture
def plugin(loop: asyncio.AbstractEventLoop) -> Iterator[IsolatedPlugin]:
    started = bench.make_plugin()
    loop.run_until_complete(started.on_load(None))
    yield started
    loop.run_until_complete(started.aclose())


def test_round_trip(
    benchmark: Any, loop: asyncio.AbstractEventLoop, plugin: IsolatedPlugin
) -> None:
    batch = [bench.frame()]
    benchmark(lambda: loop.run_until_complete(plugin.handle_batch(batch)))
    assert plugin.stats().lost_to_crash == 0


def test_pipelined(benchmark: Any, impl: Any, loop: asyncio.AbstractEventLoop) -> None:
    result = benchmark.pedantic(
        lambda: loop.run_until_complete(bench.pipelined(impl, 20_000)), rounds=3, iterations=1
    )
    assert result["frames_per_s"] > 0


def test_everything_once_at_small_scale(loop: asyncio.AbstractEventLoop) -> None:
    results = loop.run_until_complete(bench.run_all(quick=True))
    assert results["unique memory per child"]["uss_mib_max"] > 0
