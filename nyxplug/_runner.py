"""``nyxplug.run``: run a coroutine on uvloop when it is installed, asyncio otherwise."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

__all__ = ("loop_factory", "run", "uvloop_available")

T = TypeVar("T")


def uvloop_available() -> bool:
    """True when uvloop can be imported (it is optional, never needed for correctness)."""
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True


def loop_factory(use_uvloop: bool | None = None) -> Callable[[], asyncio.AbstractEventLoop]:
    """The event-loop factory ``run`` uses: uvloop's when wanted and present."""
    if use_uvloop is None:
        use_uvloop = uvloop_available()
    if use_uvloop:
        import uvloop

        return uvloop.new_event_loop
    return asyncio.new_event_loop


def run(
    main: Coroutine[Any, Any, T], *, use_uvloop: bool | None = None, debug: bool | None = None
) -> T:
    """Run ``main`` to completion on a fresh loop (uvloop when present) and return its result."""
    with asyncio.Runner(debug=debug, loop_factory=loop_factory(use_uvloop)) as runner:
        return runner.run(main)
