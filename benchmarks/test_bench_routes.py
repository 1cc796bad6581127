"""Versions side by side: ``dispatch_nowait`` with an active keyed rollout, and end to end
at a 10 % canary. ``python -m benchmarks.routes`` runs the rows interleaved with their
baselines (and against another tree with ``--before``); the smoke run here keeps them
from rotting.
"""

from __future__ import annotations

import asyncio
from typing import Any

from benchmarks import routes

FRAMES = 20_000


def test_paired_nowait_rollout(benchmark: Any, impl: Any, loop: asyncio.AbstractEventLoop) -> None:
    benchmark.pedantic(lambda: loop.run_until_complete(routes.paired_nowait(impl, 4)), rounds=3)


def test_end_to_end_canary_10pct(
    benchmark: Any, impl: Any, loop: asyncio.AbstractEventLoop
) -> None:
    benchmark.pedantic(
        lambda: loop.run_until_complete(routes.end_to_end(impl, FRAMES, True)), rounds=5
    )
