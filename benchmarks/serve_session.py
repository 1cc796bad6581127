"""The session protocol end to end over loopback, side by side with what a user would write.

    python -m benchmarks.serve_session [--frames N] [--loop uvloop|asyncio] [--rounds R]

Every server runs in its own process (a second core, as a real deployment has) with a
no-op plugin; the client is this process. Each scenario pipelines ``--frames`` frames of
64-byte payloads from the client's API to the plugin and ends when the server has handled
them all; frames/s is the best of ``--rounds`` runs:

- ``session`` (and ``session-tls``, the same over TLS 1.3 with a P-256 certificate made for
  the run): ``RemoteDispatcher.dispatch_many`` -> ``SessionService`` -> ``try_dispatch_many``;
  the end is a final ``request`` (the plugin's queue is FIFO, so its reply means every
  frame before it was handled).
- ``interop``: SPEC 8's listener (``--codec nyx``): one framed CBOR ``PluginFrame`` per
  message, encoded by ``PluginFrame.encode`` once, before the clock starts (as the baseline's
  frames: those rows measure the server, not a Python client); the end is the server
  closing after the client's half-close (once every frame was dispatched and answered).
- ``baseline``: what a user writes by hand: asyncio streams, a 4-byte length prefix,
  ``cbor2`` frames, an ``asyncio.Queue`` and a worker task; the end is a marker frame the
  worker answers.

Then the request round trip (one frame, p50 and p99 of 2,000; ``--blocks B`` alternates B
blocks of each and reports the medians; ``--only round-trip`` runs just that) against a
plain asyncio echo server on the same loop kind, and the server's RSS while peers flood it
ignoring their credit.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import ssl
import statistics
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import cbor2

PAYLOAD = b"x" * 64
_LEN = struct.Struct(">I")

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from tls_helpers import Pki  # noqa: E402  (the suite's CA: one certificate recipe)

# -- servers (run in a child process: ``--serve KIND``) --------------------------------


def _client_tls() -> ssl.SSLContext | None:
    ca = os.environ.get("NYXPLUG_BENCH_CA")
    return ssl.create_default_context(cafile=ca) if ca else None


async def _serve(kind: str, credit: int) -> None:
    from nyxplug import Dispatcher, Permission, PluginInfo
    from nyxplug._serve import FrameService
    from nyxplug.serving import SessionService

    loop = asyncio.get_running_loop()
    d = Dispatcher()
    await d.load_plugin(PluginInfo(1, "noop", [Permission.DATA_ACCESS]), None, capacity=4096)
    factory: Any
    tls = None
    if kind == "session-tls":
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls.minimum_version = ssl.TLSVersion.TLSv1_3
        tls.load_cert_chain(os.environ["NYXPLUG_BENCH_CERT"], os.environ["NYXPLUG_BENCH_KEY"])
        factory = SessionService(d, credit=credit).protocol
    elif kind == "session":
        factory = SessionService(d, credit=credit).protocol
    elif kind == "interop":
        factory = FrameService(d).protocol
    elif kind == "echo":
        factory = _Echo
    else:
        factory = None
    if factory is None:
        server = await asyncio.start_server(_baseline_connection, "127.0.0.1", 0)
    else:
        server = await loop.create_server(factory, "127.0.0.1", 0, ssl=tls)
    print(server.sockets[0].getsockname()[1], flush=True)
    await loop.run_in_executor(None, sys.stdin.read)  # until the parent closes our stdin
    server.close()
    await d.aclose()


class _Echo(asyncio.Protocol):
    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)


async def _baseline_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """The hand-written server: length prefix, cbor2, an asyncio.Queue and a worker."""
    queue: asyncio.Queue[Any] = asyncio.Queue(4096)

    async def worker() -> None:
        while True:
            frame = await queue.get()
            if frame["payload"] == b"END":
                writer.write(b"done")
                return
            # the no-op plugin

    task = asyncio.create_task(worker())
    try:
        while True:
            head = await reader.readexactly(4)
            frame = cbor2.loads(await reader.readexactly(_LEN.unpack(head)[0]))
            await queue.put(frame)
    except asyncio.IncompleteReadError:
        pass
    await task
    writer.close()


class Server:
    """A server process of one kind; ``port`` once it listens."""

    def __init__(self, kind: str, loop_kind: str, credit: int) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.serve_session", "--serve", kind,
             "--loop", loop_kind, "--credit", str(credit)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert self.proc.stdout is not None
        self.port = int(self.proc.stdout.readline())

    def rss_kib(self) -> int:
        with open(f"/proc/{self.proc.pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return 0

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(30)


# -- clients -----------------------------------------------------------------------------


async def session_tls_run(port: int, frames: int) -> float:
    return await session_run(port, frames, _client_tls())


async def session_run(port: int, frames: int, tls: ssl.SSLContext | None = None) -> float:
    from nyxplug import FrameType, PluginFrame, PluginHeader
    from nyxplug.serving import RemoteDispatcher

    header = PluginHeader(1)
    batch = [PluginFrame(FrameType.DATA, header, PAYLOAD) for _ in range(1000)]
    client = await RemoteDispatcher.connect(("127.0.0.1", port), ssl=tls)
    start = time.perf_counter()
    for _ in range(frames // 1000):
        await client.dispatch_many(batch)
    await client.request(FrameType.DATA, header, b"END")
    elapsed = time.perf_counter() - start
    stats = client.statistics()
    assert stats.count(0) == stats.sent == frames // 1000 * 1000 + 1, stats
    await client.aclose()
    return (frames // 1000 * 1000) / elapsed


async def interop_run(port: int, frames: int) -> float:
    from nyxplug import FrameType, PluginFrame, PluginHeader, frame_message

    # One block of 1,000 framed messages, encoded before the clock starts: the row measures
    # the server's decoding and dispatching, not a Python client encoding frame by frame.
    block = frame_message(PluginFrame(FrameType.DATA, PluginHeader(1), PAYLOAD).encode()) * 1000
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    start = time.perf_counter()
    for _ in range(frames // 1000):
        writer.write(block)
        await writer.drain()
    writer.write_eof()
    assert await reader.read() == b""
    elapsed = time.perf_counter() - start
    writer.close()
    return (frames // 1000 * 1000) / elapsed


async def baseline_run(port: int, frames: int) -> float:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)

    def frame(payload: bytes) -> bytes:
        body = cbor2.dumps(
            {"frame_type": 0x52, "header": {"id": 1, "flags": 0, "data": b""}, "payload": payload}
        )
        return _LEN.pack(len(body)) + body

    # Encoded before the clock starts, as the interop row's block: both rows measure the
    # server, and the client's cbor2 calls do not slow the baseline down.
    block = frame(PAYLOAD) * 1000
    start = time.perf_counter()
    for _ in range(frames // 1000):
        writer.write(block)
        await writer.drain()
    writer.write(frame(b"END"))
    writer.write_eof()
    assert await reader.read() == b"done"
    elapsed = time.perf_counter() - start
    writer.close()
    return (frames // 1000 * 1000) / elapsed


async def session_round_trips(port: int, count: int) -> list[float]:
    from nyxplug import FrameType, PluginHeader
    from nyxplug.serving import RemoteDispatcher

    header = PluginHeader(1)
    client = await RemoteDispatcher.connect(("127.0.0.1", port))
    times = []
    for _ in range(count):
        start = time.perf_counter()
        await client.request(FrameType.DATA, header, PAYLOAD)
        times.append(time.perf_counter() - start)
    await client.aclose()
    return times


class _EchoClient(asyncio.Protocol):
    def __init__(self) -> None:
        self.waiter: asyncio.Future[None] | None = None
        self.want = 0
        self.got = 0

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.got += len(data)
        if self.got >= self.want and self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)


async def echo_round_trips(port: int, count: int) -> list[float]:
    loop = asyncio.get_running_loop()
    _transport, protocol = await loop.create_connection(_EchoClient, "127.0.0.1", port)
    message = _LEN.pack(len(PAYLOAD)) + PAYLOAD
    times = []
    for _ in range(count):
        start = time.perf_counter()
        protocol.waiter = loop.create_future()
        protocol.got = 0
        protocol.want = len(message)
        protocol.transport.write(message)
        await protocol.waiter
        times.append(time.perf_counter() - start)
    protocol.transport.close()
    return times


async def flood(port: int, credit: int, seconds: float, server: Server) -> tuple[int, int]:
    """Eight peers that never read an ACK, for ``seconds``: four send one batch beyond their
    credit after another, four send credit-sized batches back to back (within credit only
    while the server grants faster than they send; when the plugin's queue is full the
    server stops reading them and their writes block in the kernel). Returns (peak server
    RSS in KiB, peers disconnected)."""
    from nyxplug import FrameType, PluginHeader, PluginMessage
    from nyxplug._impl import encode_batch
    from nyxplug.serving.wire import Hello, Kind, encode

    peak = server.rss_kib()
    refused = 0
    message = PluginMessage(FrameType.DATA, PluginHeader(1), PAYLOAD)
    deadline = time.perf_counter() + seconds

    async def peer(frames_per_batch: int) -> None:
        nonlocal refused
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(encode(Kind.HELLO, Hello(1, "nyx/1", "flood")))
        seq = 0
        try:
            while time.perf_counter() < deadline:
                writer.write(encode_batch(Kind.BATCH, seq, [message] * frames_per_batch))
                seq += 1
                async with asyncio.timeout(max(deadline - time.perf_counter(), 0.01)):
                    await writer.drain()
        except (ConnectionError, OSError):
            refused += 1
        except TimeoutError:
            pass  # blocked by backpressure until the end: the server stopped reading us
        writer.transport.abort()

    async def sample() -> None:
        nonlocal peak
        while True:
            peak = max(peak, server.rss_kib())
            await asyncio.sleep(0.005)

    sampler = asyncio.create_task(sample())
    await asyncio.gather(*(peer(credit + 1) for _ in range(4)), *(peer(credit) for _ in range(4)))
    sampler.cancel()
    return peak, refused


def _percentile(times: list[float], q: float) -> float:
    ordered = sorted(times)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def round_trip_report(args: argparse.Namespace) -> None:
    """The request round trip against the echo server, in ``--blocks`` alternating blocks
    (session, echo, session, echo...) of ``--round-trips`` each, so a change in the other
    work on a shared machine hits both alike; prints the median over blocks of each
    block's p50 and p99."""
    session = Server("session", args.loop, args.credit)
    echo = Server("echo", args.loop, args.credit)
    p50: dict[str, list[float]] = {"session": [], "echo": []}
    p99: dict[str, list[float]] = {"session": [], "echo": []}
    try:
        await session_round_trips(session.port, 200)  # warm up
        await echo_round_trips(echo.port, 200)
        for _ in range(args.blocks):
            for kind, measure, port in (
                ("session", session_round_trips, session.port),
                ("echo", echo_round_trips, echo.port),
            ):
                times = await measure(port, args.round_trips)
                p50[kind].append(statistics.median(times))
                p99[kind].append(_percentile(times, 0.99))
    finally:
        session.close()
        echo.close()
    ours, theirs = statistics.median(p50["session"]), statistics.median(p50["echo"])
    print(
        f"request round trip p50: session {ours * 1e6:.1f} us, asyncio echo {theirs * 1e6:.1f} "
        f"us, ratio {ours / theirs:.2f}; p99: session "
        f"{statistics.median(p99['session']) * 1e6:.1f} us, asyncio echo "
        f"{statistics.median(p99['echo']) * 1e6:.1f} us (medians of {args.blocks} alternating "
        f"blocks of {args.round_trips})"
    )
    if args.blocks > 1:
        blocks = ", ".join(
            f"{a * 1e6:.1f}/{b * 1e6:.1f}" for a, b in zip(p50["session"], p50["echo"], strict=True)
        )
        print(f"  p50 per block, session/echo (us): {blocks}")


async def run_all(args: argparse.Namespace) -> None:
    if args.only == "round-trip":
        await round_trip_report(args)
        return
    rates: dict[str, float] = {}
    import tempfile

    folder = tempfile.mkdtemp()
    pki = Pki(Path(folder))
    server_cert = pki.server()
    os.environ.update(
        NYXPLUG_BENCH_CA=str(pki.ca),
        NYXPLUG_BENCH_CERT=str(server_cert.cert),
        NYXPLUG_BENCH_KEY=str(server_cert.key),
    )
    for kind, client in (
        ("baseline", baseline_run),
        ("interop", interop_run),
        ("session", session_run),
        ("session-tls", session_tls_run),
    ):
        server = Server(kind, args.loop, args.credit)
        try:
            rates[kind] = max([await client(server.port, args.frames) for _ in range(args.rounds)])
        finally:
            server.close()
    print(f"loop {args.loop}, {args.frames:,} frames of 64-byte payloads, best of {args.rounds}")
    print("| scenario | frames/s | vs baseline |")
    print("|---|---:|---:|")
    for kind in ("session", "session-tls", "interop", "baseline"):
        print(f"| {kind} | {rates[kind]:,.0f} | {rates[kind] / rates['baseline']:.1f}x |")

    await round_trip_report(args)

    server = Server("session", args.loop, args.credit)
    try:
        before = server.rss_kib()
        peak, refused = await flood(server.port, args.credit, args.flood_seconds, server)
        after = server.rss_kib()
    finally:
        server.close()
    frame = 7 + 3 + len(PAYLOAD)  # batch entry + canonical header of id 1 + payload
    bound = args.credit * frame / 1024 + 1024
    print(
        f"flood: 8 peers ignoring credit for {args.flood_seconds:g} s: server RSS {before} KiB "
        f"before, peak "
        f"{peak} KiB (+{peak - before} KiB, +{(peak - before) / 8:.0f} KiB per connection; "
        f"bound credits x frame + 1 MiB = {bound:.0f} KiB per connection), {after} KiB "
        f"after; {refused}/8 peers disconnected"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--frames", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="uvloop")
    parser.add_argument("--credit", type=int, default=4096)
    parser.add_argument("--flood-seconds", type=float, default=3.0)
    parser.add_argument("--round-trips", type=int, default=2000, help="per block")
    parser.add_argument("--blocks", type=int, default=1, help="alternating round-trip blocks")
    parser.add_argument("--only", choices=("all", "round-trip"), default="all")
    parser.add_argument(
        "--serve", choices=("session", "session-tls", "interop", "baseline", "echo")
    )
    args = parser.parse_args()
    if args.loop == "uvloop":
        import uvloop

        run: Any = uvloop.run
    else:
        run = asyncio.run
    if args.serve:
        run(_serve(args.serve, args.credit))
    else:
        print(f"python {sys.version.split()[0]}, {os.cpu_count()} cores")
        run(run_all(args))


if __name__ == "__main__":
    main()
