"""Helpers for the circuit-breaker tests: a settable clock and a plugin whose frames say
what happens to them.

Nothing stands in for nyxplug: ``Outcomes`` is an ordinary plugin handler - it fails a
frame whose payload says ``fail`` and, for ``slow:<seconds>``, moves the test clock on
as a slow call would - and ``FakeClock`` is the clock the breaker is given.
"""

from __future__ import annotations

from typing import Any

from nyx_helpers import DATA, info

import nyxplug


class FakeClock:
    """A monotonic clock the test moves by hand (seconds)."""

    def __init__(self, start: float = 1000.0) -> None:
        self.t = start

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


class FrameFailed(Exception):
    """What ``Outcomes`` raises for a frame whose payload asks to fail."""


class Outcomes:
    """A sync handler: ``fail`` raises, ``slow:<s>`` takes ``s`` seconds of the test clock,
    ``slowfail:<s>`` both; anything else succeeds."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.handled: list[bytes] = []

    def __call__(self, msg: Any) -> None:
        payload = msg.payload
        self.handled.append(payload)
        if payload.startswith(b"slow"):
            self.clock.advance(float(payload.split(b":")[1]))
        if payload.startswith(b"fail") or payload.startswith(b"slowfail"):
            raise FrameFailed(payload.decode())


def payloads(step: str) -> list[bytes]:
    """``"3 ok"`` -> three ``ok`` frames; ``"2 slow:1.5"``; ``"fail-then-ok 2 2"``."""
    parts = step.split()
    if parts[0] == "fail-then-ok":
        return [b"fail"] * int(parts[1]) + [b"ok"] * int(parts[2])
    return [parts[1].encode()] * int(parts[0])


async def with_breaker(
    impl: Any,
    *,
    plugin_id: int = 7,
    capacity: int = 10_000,
    handler: Any = None,
    random: Any = None,
    **config: Any,
) -> tuple[Any, FakeClock, Outcomes]:
    """A dispatcher with one loaded plugin and a breaker on a fake clock."""
    clock = FakeClock()
    outcomes = Outcomes(clock)
    d = impl.Dispatcher()
    await d.load_plugin(
        info(plugin_id), outcomes if handler is None else handler, capacity=capacity
    )
    d.set_breaker(
        plugin_id,
        nyxplug.BreakerConfig(**config),
        clock=clock,
        random=(lambda: 0.5) if random is None else random,
    )
    return d, clock, outcomes


async def send(d: Any, impl: Any, frames: list[bytes], plugin_id: int = 7) -> list[Any]:
    """``try_dispatch`` each frame, then wait until the worker has handled them all."""
    header = impl.PluginHeader(plugin_id)
    statuses = [d.try_dispatch(DATA, header, payload) for payload in frames]
    await d.wait_idle(plugin_id)
    return statuses
