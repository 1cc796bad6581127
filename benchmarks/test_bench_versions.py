"""Versions side by side in the runtime: load a version, roll it out, promote, roll back,
unload.

``test_switch`` is one round of ``python -m benchmarks.versions`` per twin; that module
prints each step's p50 and max. The smoke run here keeps it from rotting.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from benchmarks import versions


def test_switch(benchmark: Any, impl: Any, loop: asyncio.AbstractEventLoop) -> None:
    logging.getLogger("nyxplug").setLevel(logging.CRITICAL)
    result = benchmark.pedantic(
        lambda: loop.run_until_complete(versions.switch(impl, 2)), rounds=1, iterations=1
    )
    assert all(values["p50_ms"] > 0 for values in result.values())
