"""The admin API's costs (``benchmarks/admin.py``), small, so CI's smoke run keeps the
script working; ``python -m benchmarks.admin`` gives the figures in the README."""

from __future__ import annotations

import asyncio
from typing import Any

from benchmarks import admin


def test_metrics_scrape_loop_lag(benchmark: Any, loop: asyncio.AbstractEventLoop) -> None:
    benchmark.pedantic(lambda: loop.run_until_complete(admin.scrape(50, 0.3)), rounds=1)


def test_admin_call_loop_cpu(benchmark: Any, loop: asyncio.AbstractEventLoop) -> None:
    benchmark.pedantic(lambda: loop.run_until_complete(admin.per_call(0.3)), rounds=1)
