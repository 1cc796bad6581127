"""Fuzz the session protocol's decoders and its server with seeded hostile bytes.

    python -m benchmarks.fuzz_session --count 1000000            # both twins
    python -m benchmarks.fuzz_session --count 1000000 --twin python

Each input is a mutated valid client stream (HELLO, BATCHes, REQUESTs, in random
shapes), a mutated server stream (WELCOME, ACK, CREDIT, REPLY, GOAWAY, ERROR), or random
bytes. It goes, in random chunks, through a ``SessionReader`` and the decoders
(``decode`` for control messages, the twin's ``decode_batch`` for frame batches), and
the client streams also through a live ``SessionProtocol`` of a ``SessionService`` on
the twin's dispatcher (an in-memory transport: a million sockets would measure the
kernel). Allowed outcomes: messages, ``SessionViolation`` (a ``ValueError`` from
``decode_batch`` for a batch body), and for the server an ERROR message and a close.
Anything else raised is an untyped error, counted and printed; a crash ends the
process (the seed printed first reproduces it). After the run the same service must
still serve a well-behaved session.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import random
import time
from typing import Any

from benchmarks.fuzz_frames import mutate
from nyxplug import Permission, PluginInfo, SessionViolation
from nyxplug.serving import SessionService
from nyxplug.serving.wire import (
    CLIENT_KINDS,
    SERVER_KINDS,
    Ack,
    Credit,
    Error,
    GoAway,
    Hello,
    Kind,
    PluginGrant,
    Reply,
    SessionReader,
    Welcome,
    decode,
    encode,
)

TWINS = {"cython": "nyxplug._dispatch", "python": "nyxplug._dispatch_py"}


class MemoryTransport:
    """Just enough of an ``asyncio.Transport`` for a protocol fed in memory."""

    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.closing = False
        self.reading = True

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    abort = close

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default


def client_streams(twin: Any, rng: random.Random, count: int) -> list[bytes]:
    out = []
    for _ in range(count):
        parts = [encode(Kind.HELLO, Hello(1, "nyx/1", rng.choice(["", "c", "x" * 300])))]
        seq = 0
        for _ in range(rng.randrange(4)):
            messages = [
                twin.PluginMessage(
                    rng.choice([0x51, 0x52, 0x53, 0x54, 0x99]),
                    twin.PluginHeader(rng.choice([1, 2, 7]), rng.randrange(2), rng.randbytes(3)),
                    rng.randbytes(rng.choice([0, 1, 64])),
                )
                for _ in range(rng.randrange(1, 5))
            ]
            if rng.random() < 0.7:
                parts.append(twin.encode_batch(Kind.BATCH, seq, messages))
                seq += 1
            else:
                parts.append(twin.encode_batch(Kind.REQUEST, rng.randrange(9), messages[:1]))
        out.append(b"".join(parts))
    return out


def server_streams(rng: random.Random, count: int) -> list[bytes]:
    out = []
    for _ in range(count):
        grants = [PluginGrant(rng.randrange(9), 15, rng.randrange(100)) for _ in range(2)]
        parts = [
            encode(Kind.WELCOME, Welcome(1, "s", grants, 1 << 20, 256)),
            encode(Kind.ACK, Ack(1, [rng.randrange(5) for _ in range(10)], [(1, 2)])),
            encode(Kind.CREDIT, Credit([(7, 3)])),
            encode(Kind.REPLY, Reply(0, 0, rng.choice([None, b"r"]), "", "")),
            encode(Kind.GOAWAY, GoAway(1, "bye")),
            encode(Kind.ERROR, Error("credit", "no")),
        ]
        rng.shuffle(parts)
        out.append(b"".join(parts[: rng.randrange(1, 7)]))
    return out


def chunks(rng: random.Random, data: bytes) -> list[bytes]:
    cuts = sorted(rng.randrange(len(data) + 1) for _ in range(rng.randrange(3)))
    edges = [0, *cuts, len(data)]
    return [data[a:b] for a, b in zip(edges, edges[1:], strict=False)]


class Outcomes:
    def __init__(self) -> None:
        self.messages = 0
        self.violations = 0
        self.untyped = 0
        self.errors_sent = 0

    def untyped_error(self, where: str, data: bytes, exc: BaseException) -> None:
        self.untyped += 1
        if self.untyped <= 5:
            print(f"UNTYPED in {where}: {type(exc).__name__}: {exc} - input {data[:80].hex()}")


def decode_stream(twin: Any, data: bytes, pieces: list[bytes], server: bool, out: Outcomes) -> None:
    reader = SessionReader(CLIENT_KINDS if server else SERVER_KINDS, 1 << 16)
    try:
        for piece in pieces:
            for kind, body in reader.feed(piece):
                out.messages += 1
                if kind in (Kind.BATCH, Kind.REQUEST):
                    try:
                        twin.decode_batch(body, 0xFFFF, 1 << 16)
                    except ValueError:
                        out.violations += 1
                else:
                    decode(kind, body)
    except SessionViolation:
        out.violations += 1
    except Exception as exc:
        out.untyped_error("decoders", data, exc)


def feed_server(service: SessionService, data: bytes, pieces: list[bytes], out: Outcomes) -> None:
    protocol = service.protocol()
    transport = MemoryTransport()
    protocol.connection_made(transport)  # type: ignore[arg-type]
    try:
        for piece in pieces:
            if transport.closing:
                break
            protocol.data_received(piece)
    except Exception as exc:
        out.untyped_error("server", data, exc)
    if any(chunk[4:5] == bytes([Kind.ERROR]) for chunk in transport.written):
        out.errors_sent += 1
    protocol.connection_lost(None)


async def fuzz_twin(name: str, count: int, seed: int) -> Outcomes:
    twin = importlib.import_module(TWINS[name])
    rng = random.Random(seed)
    d = twin.Dispatcher()
    for plugin_id in (1, 2):
        await d.load_plugin(
            PluginInfo(plugin_id, f"p{plugin_id}", [Permission.DATA_ACCESS]), None, capacity=64
        )
    service = SessionService(d, credit=1 << 20, max_message=1 << 16, hello_timeout=3600)
    bases = client_streams(twin, rng, 64)
    server_bases = server_streams(rng, 64)
    out = Outcomes()
    started = time.perf_counter()
    for index in range(count):
        shape = rng.random()
        if shape < 0.6:
            data = mutate(rng, rng.choice(bases))
            server = True
        elif shape < 0.9:
            data = mutate(rng, rng.choice(server_bases))
            server = False
        else:
            data = rng.randbytes(rng.randrange(40))
            server = rng.random() < 0.5
        pieces = chunks(rng, data)
        decode_stream(twin, data, pieces, server, out)
        if server:
            feed_server(service, data, pieces, out)
        if index % 256 == 0:
            await asyncio.sleep(0)  # let the plugins' workers drain their queues
            for protocol in list(service.connections):
                if protocol._task is not None:
                    await protocol.wait_closed()
    await d.wait_idle()
    elapsed = time.perf_counter() - started
    stats = service.stats()
    assert stats.frames == stats.decided + stats.discarded + stats.in_flight, stats
    # still serving: a clean session after a million hostile ones
    protocol = service.protocol()
    transport = MemoryTransport()
    protocol.connection_made(transport)  # type: ignore[arg-type]
    good = client_streams(twin, random.Random(0), 1)[0]
    protocol.data_received(encode(Kind.HELLO, Hello(1, "nyx/1", "good")))
    assert not transport.closing and transport.written[0][4] == Kind.WELCOME
    del good
    protocol.connection_lost(None)
    await d.aclose()
    print(
        f"{name}: {count:,} inputs in {elapsed:.1f} s: {out.messages:,} messages decoded, "
        f"{out.violations:,} typed refusals, {out.errors_sent:,} sessions ended with ERROR, "
        f"{out.untyped} untyped errors, 0 crashes; server ledger {stats.frames:,} frames = "
        f"{stats.decided:,} decided + {stats.discarded:,} discarded + {stats.in_flight} in flight"
    )
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=16)
    parser.add_argument("--twin", choices=(*TWINS, "both"), default="both")
    args = parser.parse_args()
    print(f"seed {args.seed}, {args.count:,} inputs per twin")
    untyped = 0
    for name in TWINS if args.twin == "both" else (args.twin,):
        untyped += asyncio.run(fuzz_twin(name, args.count, args.seed)).untyped
    raise SystemExit(1 if untyped else 0)


if __name__ == "__main__":
    main()
