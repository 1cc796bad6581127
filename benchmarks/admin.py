"""What the admin API costs a running host (issue 18).

``scrape``: a host with N plugins (default 1,000, code plugins on one manager); a 1 ms
ticker measures the event loop's lag while a client in another process scrapes
``/metrics`` over loopback, uncached, again and again - side by side with the lag of the
same render done on the loop (what a plain ``generate_latest`` in the handler would do).

``percall``: the loop's CPU time per admin call, calls back to back from another process -
the cost a poller adds, free of the round-to-round noise of a throughput comparison.

``poll``: the serving benchmark (``benchmarks/serve_interop.py``: a cbor2 client pipelines
64-byte frames to a no-op plugin over loopback) run through a ``PluginManager`` host with
the admin API on the same loop, alternately without and with a client in another process
calling ``GET /api/v1/plugins`` every 100 ms; the median of each is reported.

Run: ``.venv/bin/python -m benchmarks.admin [scrape|poll|all] [--loop uvloop|asyncio]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import secrets
import statistics
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

from nyxplug.admin import AdminAddress, AdminServer, build_app
from nyxplug.plugins import PluginManager, plugin

#: A client in its own process (so it does not take the host's GIL): GETs ``path`` with
#: the token every ``interval`` seconds (0: back to back) until stdin closes.
CLIENT = r"""
import http.client, sys, threading, time
port, path, token, interval = int(sys.argv[1]), sys.argv[2], sys.argv[3], float(sys.argv[4])
stop = threading.Event()
threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
calls = 0
while not stop.is_set():
    started = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("GET", path, headers={"Authorization": "Bearer " + token})
    response = conn.getresponse(); response.read(); conn.close()
    assert response.status == 200, response.status
    calls += 1
    if calls == 1:
        print("ready", flush=True)  # started and answered: the measurement may begin
    stop.wait(max(0.0, interval - (time.perf_counter() - started)))
print(calls, flush=True)
"""


class Noop:
    async def handle(self, message: Any) -> None:
        pass


def code_plugins(count: int, first_id: int = 100) -> list[str]:
    names = []
    for n in range(count):
        name = f"bulk-{n:04d}"
        plugin(name=name, id=first_id + n, version="1.0.0", permissions=["DATA_ACCESS"])(
            type(f"Bulk{n}", (Noop,), {})
        )
        names.append(name)
    return names


@contextlib.asynccontextmanager
async def admin_host(manager: PluginManager) -> AsyncIterator[tuple[AdminAddress, str]]:
    token = secrets.token_hex(32)
    app = build_app(manager, token.encode())
    app.metrics.cache_seconds = 0.0  # every scrape renders: the worst case
    async with AdminServer(app, AdminAddress(host="127.0.0.1", port=0)) as server:
        assert server.bound is not None
        yield server.bound, token


@contextlib.asynccontextmanager
async def client(
    address: AdminAddress, path: str, token: str, interval: float
) -> AsyncIterator[list[int]]:
    """The client process; the list gets its call count when it stops (awaited: the
    host's loop must keep answering while it finishes its last call)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CLIENT, str(address.port), path, token, str(interval),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    calls: list[int] = []
    assert proc.stdout is not None
    # Python's start-up in the client (~0.1 s of CPU) must not fall into the measurement.
    assert await asyncio.wait_for(proc.stdout.readline(), 60) == b"ready\n"
    try:
        yield calls
    finally:
        out, _ = await asyncio.wait_for(proc.communicate(b""), 60)
        calls.append(int(out.strip() or 0) - 1)  # the start-up call is not counted


class Ticker:
    """A 1 ms ticker: how late each tick woke up (the loop's lag, wall clock), and the CPU
    time the loop's thread used between two ticks (the part of the lag the loop's own
    work caused: on a shared machine the wall-clock lag also counts time the kernel gave
    the CPU to other processes)."""

    def __init__(self) -> None:
        self.lags: list[float] = []
        self.busy: list[float] = []
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            started, cpu = time.perf_counter(), time.thread_time()
            await asyncio.sleep(0.001)
            self.lags.append(time.perf_counter() - started - 0.001)
            self.busy.append(time.thread_time() - cpu)

    def __enter__(self) -> Ticker:
        self._task = asyncio.ensure_future(self._run())
        return self

    def __exit__(self, *exc_info: object) -> None:
        assert self._task is not None
        self._task.cancel()

    def summary(self) -> str:
        lags = sorted(self.lags)
        p99 = lags[int(len(lags) * 0.99)] if lags else 0.0
        return (
            f"lag max {max(lags) * 1e3:6.2f} ms, p99 {p99 * 1e3:5.2f} ms, "
            f"median {statistics.median(lags) * 1e3:5.2f} ms; loop CPU between ticks max "
            f"{max(self.busy) * 1e3:6.2f} ms ({len(lags)} ticks)"
        )


async def scrape(plugins: int, seconds: float) -> None:
    from nyxplug.admin.metrics import render, take_snapshot

    code_plugins(plugins)
    manager = PluginManager(entry_points=False)
    started = time.perf_counter()
    await manager.start()
    print(f"host: {len(manager.names())} plugins started in {time.perf_counter() - started:.1f} s")
    try:
        async with admin_host(manager) as (address, token):
            with Ticker() as idle:
                await asyncio.sleep(seconds)
            print(f"idle loop lag:                        {idle.summary()}")
            async with client(address, "/metrics", token, 0.0) as calls:
                with Ticker() as ticker:
                    await asyncio.sleep(seconds)
            size = len((await render_once(manager))[0])
            print(
                f"lag while scraping /metrics back to back ({calls[0]} scrapes, "
                f"{size / 1024:.0f} KiB each, uncached): {ticker.summary()}"
            )
            # The naive way, for comparison: snapshot and render on the loop.
            with Ticker() as naive:
                for _ in range(5):
                    render(await take_snapshot(manager), None)
                    await asyncio.sleep(0.01)
            print(f"lag if rendered on the loop instead:  {naive.summary()}")
    finally:
        await manager.aclose()


async def render_once(manager: PluginManager) -> tuple[bytes, str]:
    from nyxplug.admin.metrics import render, take_snapshot

    snapshot = await take_snapshot(manager)
    return await asyncio.to_thread(render, snapshot, None)


async def per_call(seconds: float) -> None:
    """The loop's CPU time per admin call (calls back to back from another process): the
    cost a poller adds to the loop, without the noise of a throughput A/B test."""
    plugin(name="noop", id=1, version="1.0.0", permissions=["DATA_ACCESS"])(
        type("NoopPlugin", (Noop,), {})
    )
    code_plugins(20)
    manager = PluginManager(entry_points=False)
    await manager.start()
    try:
        async with admin_host(manager) as (address, token):
            for path in ("/health/live", "/api/v1/plugins", "/api/v1/stats"):
                async with client(address, path, token, 0.0) as calls:
                    cpu, wall = time.thread_time(), time.perf_counter()
                    await asyncio.sleep(seconds)
                    cpu, wall = time.thread_time() - cpu, time.perf_counter() - wall
                per = cpu / calls[0]
                print(
                    f"GET {path:<18} {calls[0]:6} calls: loop CPU {per * 1e3:.3f} ms per call "
                    f"= {per * 10 * 100:.2f} % of the loop at one call per 100 ms"
                )
    finally:
        await manager.aclose()


async def poll(frames: int, rounds: int, path: str = "/api/v1/plugins") -> None:
    from benchmarks.serve_interop import _frame
    from nyxplug._serve import FrameService

    plugin(name="noop", id=1, version="1.0.0", permissions=["DATA_ACCESS"])(
        type("NoopPlugin", (Noop,), {})
    )
    code_plugins(20)  # a catalog with some weight to list
    manager = PluginManager(entry_points=False)
    await manager.start()
    service = FrameService(manager.dispatcher)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(service.protocol, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    data = _frame(1, b"x" * 64) * frames

    async def run_once() -> float:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        started = time.perf_counter()
        writer.write(data)
        writer.write_eof()
        assert await reader.read() == b""
        await manager.dispatcher.wait_idle()
        elapsed = time.perf_counter() - started
        writer.close()
        return frames / elapsed

    try:
        async with admin_host(manager) as (address, token):
            await run_once()  # warm up
            plain: list[float] = []
            polled: list[float] = []
            total_calls = 0
            for n in range(rounds):
                # Alternate which goes first, so a drift of the machine hits both alike.
                if n % 2:
                    plain.append(await run_once())
                async with client(address, path, token, 0.1) as calls:
                    polled.append(await run_once())
                total_calls += calls[0]
                if not n % 2:
                    plain.append(await run_once())
            base, with_poll = statistics.median(plain), statistics.median(polled)
            spread = (max(plain) - min(plain)) / base * 100
            print(
                f"serve, no admin calls:        {base:12,.0f} frames/s (median of {rounds}; "
                f"rounds spread {spread:.1f} %)"
            )
            print(
                f"serve, GET {path} every 100 ms: {with_poll:12,.0f} frames/s "
                f"({total_calls} calls in all)"
            )
            print(f"cost of polling: {(1 - with_poll / base) * 100:+.2f} % throughput")
            pairs = sorted((1 - p / b) * 100 for b, p in zip(plain, polled, strict=True))
            print(f"per adjacent pair: {', '.join(f'{c:+.1f}' for c in pairs)} %")
    finally:
        server.close()
        await server.wait_closed()
        await manager.aclose()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "what", choices=("scrape", "percall", "poll", "all"), nargs="?", default="all"
    )
    parser.add_argument("--plugins", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--frames", type=int, default=500_000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="uvloop")
    parser.add_argument("--poll-path", default="/api/v1/plugins", help="what poll GETs")
    args = parser.parse_args()
    runner: Any = asyncio.run
    if args.loop == "uvloop":
        import uvloop

        runner = uvloop.run
    print(f"{args.loop}, Python {sys.version.split()[0]}, {os.cpu_count()} CPUs")
    if args.what in ("scrape", "all"):
        runner(scrape(args.plugins, args.seconds))
    if args.what in ("percall", "all"):
        runner(per_call(args.seconds))
    if args.what in ("poll", "all"):
        runner(poll(args.frames, args.rounds, args.poll_path))


if __name__ == "__main__":
    main()
