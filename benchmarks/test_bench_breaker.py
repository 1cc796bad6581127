"""Circuit breakers: ``dispatch_nowait`` with a closed breaker, and trip latency.

The closed-breaker rows sit next to ``test_dispatch_nowait_ready_header`` in
``--benchmark-group-by=func`` output; ``python -m benchmarks.breaker`` runs the pairs
interleaved in one table with the differences, and the trip-latency scenario at
100,000 frames/s. The smoke run here keeps both from rotting.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from benchmarks import breaker, compare

FRAMES = 20_000


def test_dispatch_nowait_ready_header_closed_breaker(
    benchmark: Any, impl: Any, loop: asyncio.AbstractEventLoop
) -> None:
    benchmark.pedantic(
        lambda: loop.run_until_complete(compare._nowait(impl, FRAMES, True, True)), rounds=5
    )


def test_end_to_end_noop_handler_closed_breaker(
    benchmark: Any, impl: Any, loop: asyncio.AbstractEventLoop
) -> None:
    benchmark.pedantic(
        lambda: loop.run_until_complete(
            compare._end_to_end(impl, FRAMES, True, 1024, 1, False, compare._noop, True)
        ),
        rounds=5,
    )


def test_trip_latency(
    impl: Any, loop: asyncio.AbstractEventLoop, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.CRITICAL, logger="nyxplug")  # failing frames are the point
    result = loop.run_until_complete(breaker.trip_latency(impl, warmup=2_000))
    assert result["recorded_failures_at_trip"] <= result["bound_frames"]
