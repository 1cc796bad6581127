"""The recovery ladder: a SIGKILLed isolated plugin back to a closed breaker.

``test_kill_to_closed`` is one round of ``python -m benchmarks.recovery`` per twin
(kill -> open -> repairing -> half-open -> closed through a real child); that module
prints the milestones' p50 next to the isolated plugin's own restart. The smoke run
here keeps it from rotting.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from benchmarks import recovery


def test_kill_to_closed(benchmark: Any, impl: Any, loop: asyncio.AbstractEventLoop) -> None:
    logging.getLogger("nyxplug").setLevel(logging.CRITICAL)
    result = benchmark.pedantic(
        lambda: loop.run_until_complete(recovery.ladder(impl, 3)), rounds=1, iterations=1
    )
    assert result["closed"]["p50_ms"] >= result["half_open"]["p50_ms"] > 0
