"""``nyx_bench``: a plugin's throughput through pytest-benchmark, on one long-lived loop.

pytest-benchmark has no asyncio support, and ``asyncio.run`` per round measures loop
creation (~1000x a frame). Here one round is: every payload dispatched to the plugin
in order (awaiting room, as a socket reader does), then wait until it handled them
all - run on the host's loop, which lives as long as the test. pytest-benchmark times
the round on the host's loop thread (handing it over is left out), and the kit divides
each round's time by its frame count, so the table's times are per frame and its OPS
column reads frames per second.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from .._constants import FrameType
from .._errors import NyxplugError
from ._host import PluginHandle

__all__ = ("DEFAULT_ROUNDS", "DEFAULT_WARMUP_ROUNDS", "bench")

#: Fixed, so that two runs time the same work (pytest-benchmark's calibration would not).
DEFAULT_ROUNDS = 20
DEFAULT_WARMUP_ROUNDS = 2


async def _burst(
    handle: PluginHandle, frame_type: int, header: bytes, payloads: Any, times: list[float]
) -> None:
    host = handle.host
    dispatcher = host.manager.dispatcher
    dispatch = dispatcher.dispatch
    sent = 0
    start = time.perf_counter()
    try:
        for payload in payloads:
            await dispatch(frame_type, header, payload)
            sent += 1
    except NyxplugError:
        host.refused[handle.id] += 1
        host.calls += 1
        raise
    finally:
        host.sent[handle.id] += sent
        host.calls += sent
    await dispatcher.wait_idle(handle.id)
    times.append(time.perf_counter() - start)


def bench(
    benchmark: Any,
    handle: PluginHandle,
    payloads: Sequence[bytes],
    *,
    frame_type: int = FrameType.DATA,
    flags: int = 0,
    data: bytes = b"",
    rounds: int = DEFAULT_ROUNDS,
    warmup_rounds: int = DEFAULT_WARMUP_ROUNDS,
) -> dict[str, Any]:
    """Time ``payloads`` through ``handle``'s plugin; returns the benchmark's extra info.

    Frames are built before the timer starts (one encoded header, the payloads as
    given). ``extra_info`` gets ``frames_per_second``, ``ns_per_frame``,
    ``frames_per_round``, the loop and dispatcher kinds, and ``round_handoff_ns`` (what
    handing a round to the host's loop thread and back cost, left out of the times).
    """
    from .._impl import PluginHeader

    payloads = list(payloads)
    if not payloads:
        raise ValueError("Expected at least one payload, got none - in nyx_bench")
    if rounds < 1:
        raise ValueError(f"Expected rounds >= 1, got {rounds} - in nyx_bench")
    host = handle.host
    header = PluginHeader(handle.id, flags, data).encode()

    inner: list[float] = []

    def one_round() -> None:
        host.run(_burst(handle, frame_type, header, payloads, inner))

    benchmark.pedantic(one_round, rounds=rounds, warmup_rounds=warmup_rounds, iterations=1)
    info: dict[str, Any] = benchmark.extra_info
    loop = host.run(_loop_name())
    info.update(
        frames_per_round=len(payloads),
        loop=loop,
        dispatcher=type(host.manager.dispatcher).__module__,
        plugin=handle.name,
    )
    metadata = getattr(benchmark, "stats", None)
    if metadata is None:  # --benchmark-disable: the round ran once, untimed
        return info
    stats = metadata.stats
    # The rounds as the host's loop thread timed them (from the first dispatch to the
    # last frame handled), per frame - set before anything reads the cached statistics.
    # pytest-benchmark's own clock also counted handing each round to that thread.
    outer = sum(stats.data) / len(stats.data)
    timed = inner[-len(stats.data) :]
    stats.data[:] = [duration / len(payloads) for duration in timed]
    info.update(
        frames_per_second=round(1.0 / stats.mean),
        ns_per_frame=round(stats.mean * 1e9, 1),
        round_handoff_ns=round((outer - sum(timed) / len(timed)) * 1e9),
        unit="times are per frame (round time on the host's loop / frames); OPS = frames/s",
    )
    return info


async def _loop_name() -> str:
    import asyncio

    loop = asyncio.get_running_loop()
    return f"{type(loop).__module__}.{type(loop).__name__}"
