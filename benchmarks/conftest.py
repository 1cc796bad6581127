"""Benchmark fixtures: the implementation (compiled / pure) and the event loop.

Run ``pytest benchmarks --benchmark-group-by=func`` to see compiled and pure rows of each
scenario side by side; ``python -m benchmarks.compare`` prints the full comparison table.
"""

from __future__ import annotations

import asyncio
import importlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


@pytest.fixture(params=["cython", "python"], scope="session")
def impl(request: pytest.FixtureRequest) -> Any:
    """The dispatcher module: ``nyxplug._dispatch`` or ``nyxplug._dispatch_py``."""
    name = {"cython": "nyxplug._dispatch", "python": "nyxplug._dispatch_py"}[request.param]
    return importlib.import_module(name)


@pytest.fixture(params=["uvloop", "asyncio"])
def loop_kind(request: pytest.FixtureRequest) -> str:
    """The event loop kind (for the testing kit's host, which makes its own loop)."""
    if request.param == "uvloop":
        pytest.importorskip("uvloop")
    return str(request.param)


@pytest.fixture
def nyx_host_options(impl: Any, loop_kind: str) -> dict[str, Any]:
    """The testing kit's ``nyx_host`` on each twin and loop: rows side by side."""
    return {"dispatcher_factory": impl.Dispatcher, "loop": loop_kind}


@pytest.fixture(params=["uvloop", "asyncio"])
def loop(request: pytest.FixtureRequest) -> Iterator[asyncio.AbstractEventLoop]:
    """A fresh event loop of each kind; benchmarks drive it with run_until_complete."""
    if request.param == "uvloop":
        uvloop = pytest.importorskip("uvloop")
        new_loop = uvloop.new_event_loop()
    else:
        new_loop = asyncio.new_event_loop()
    yield new_loop
    new_loop.close()
