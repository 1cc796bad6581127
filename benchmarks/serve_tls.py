"""Frames/s through the interop listener (SPEC 8) over loopback: plaintext against TLS 1.3,
and what the per-peer checks (access list, rate limit) add, side by side in one run.

A client pipelines 64-byte payloads to a no-op plugin, then one frame to a plugin that
replies; that reply comes back after every frame before it was dispatched (answers keep
``seq`` order), which ends the timing once the no-op plugin has handled them all. TLS has
no half-close in asyncio, hence the closing request instead of ``serve_interop``'s EOF.

Rows:
  plain          no policy (FrameService's default: no checks at all)
  plain+policy   LocalPolicy: permissions checked per frame, a token bucket per batch
  tls            mutual TLS 1.3, TlsPolicy without an access list (the CA is the gate)
  tls+acl        mutual TLS 1.3, the client's certificate in an access list by CN, with
                 a rate far above what is reached (the bucket is asked on every batch)

Run: ``.venv/bin/python -m benchmarks.serve_tls [--frames N] [--rounds R] [--loop ...]``.
"""

from __future__ import annotations

import argparse
import asyncio
import ssl
import struct
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from nyxplug import Dispatcher, Permission, PluginInfo
from nyxplug._serve import FrameService
from nyxplug.serving.security import (
    AccessList,
    LocalPolicy,
    TlsPolicy,
    client_tls_context,
    server_tls_context,
)

from .serve_interop import _frame

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from tls_helpers import Pki  # noqa: E402

MODES = ("plain", "plain+policy", "tls", "tls+acl")


def _done(message: Any) -> bytes:
    return b"done"


async def measure(frames: int, mode: str, pki: Pki) -> float:
    d = Dispatcher()
    data_access = [Permission.DATA_ACCESS]
    await d.load_plugin(PluginInfo(1, "noop", data_access), None, capacity=4096)
    await d.load_plugin(PluginInfo(2, "done", data_access), _done)
    server_context = client_context = None
    policy: Any = None
    if mode.startswith("tls"):
        server = pki.server()
        client = pki.client("bench-client")
        server_context = server_tls_context(server.cert, server.key, client_ca=pki.ca)
        client_context = client_tls_context(pki.ca, cert=client.cert, key=client.key)
        acl = None
        if mode == "tls+acl":
            acl = AccessList.parse(
                '[[peers]]\ncn = "bench-client"\nrate = 1e12\n'
                'plugins = { noop = ["DATA_ACCESS"], "2" = ["DATA_ACCESS"] }'
            )
        policy = TlsPolicy(acl, registry=d.registry)
    elif mode == "plain+policy":
        policy = LocalPolicy(rate=1e12)
    service = FrameService(d, policy=policy)
    loop = asyncio.get_running_loop()
    listener = await loop.create_server(service.protocol, "127.0.0.1", 0, ssl=server_context)
    port = listener.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection(
        "127.0.0.1",
        port,
        ssl=client_context,
        server_hostname="localhost" if client_context else None,
    )
    payload = _frame(1, b"x" * 64) * frames + _frame(2, b"")
    start = time.perf_counter()
    writer.write(payload)
    (size,) = struct.unpack(">I", await reader.readexactly(4))
    await reader.readexactly(size)  # the reply to the last frame
    await d.wait_idle()
    elapsed = time.perf_counter() - start
    assert service.stats().dispatched == frames + 1, service.stats()
    writer.close()
    listener.close()
    await service.drain()
    await listener.wait_closed()
    await d.aclose()
    return frames / elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--frames", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=3, help="best of R runs per row")
    parser.add_argument("--loop", choices=("asyncio", "uvloop", "both"), default="both")
    args = parser.parse_args()
    loops = ("uvloop", "asyncio") if args.loop == "both" else (args.loop,)
    print(f"OpenSSL: {ssl.OPENSSL_VERSION}; {args.frames} frames of 64-byte payloads per run")
    with tempfile.TemporaryDirectory() as folder:
        pki = Pki(Path(folder))
        for kind in loops:
            best = dict.fromkeys(MODES, 0.0)
            for _ in range(args.rounds):  # rows interleaved, so drift hits them alike
                for mode in MODES:
                    if kind == "uvloop":
                        import uvloop

                        rate = uvloop.run(measure(args.frames, mode, pki))
                    else:
                        rate = asyncio.run(measure(args.frames, mode, pki))
                    best[mode] = max(best[mode], rate)
            for mode in MODES:
                ratio = best[mode] / best["plain"]
                print(f"{kind:8} {mode:13} {best[mode]:>11,.0f} frames/s  {ratio:5.2f}x plain")


if __name__ == "__main__":
    main()
