"""Frames/s through the interop listener (SPEC 8) over loopback: a cbor2 client pipelines
64-byte payloads to a no-op plugin, then half-closes and reads until the server is done.

Run: ``.venv/bin/python -m benchmarks.serve_interop [--frames N] [--loop asyncio|uvloop]``.
"""

from __future__ import annotations

import argparse
import asyncio
import struct
import time

import cbor2

from nyxplug import Dispatcher, Permission, PluginInfo
from nyxplug._serve import FrameService


def _frame(plugin_id: int, payload: bytes) -> bytes:
    body = cbor2.dumps(
        {
            "frame_type": 0x52,
            "header": {"id": plugin_id, "flags": 0, "data": b""},
            "payload": payload,
        }
    )
    return struct.pack(">I", len(body)) + body


async def measure(frames: int) -> float:
    d = Dispatcher()
    await d.load_plugin(PluginInfo(1, "noop", [Permission.DATA_ACCESS]), None, capacity=4096)
    service = FrameService(d)
    server = await asyncio.get_running_loop().create_server(service.protocol, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    one = _frame(1, b"x" * 64)
    data = one * frames
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    start = time.perf_counter()
    writer.write(data)
    writer.write_eof()
    assert await reader.read() == b""  # no replies from a no-op plugin; closed when done
    await d.wait_idle()
    elapsed = time.perf_counter() - start
    assert service.stats().dispatched == frames
    writer.close()
    server.close()
    await server.wait_closed()
    await d.aclose()
    return frames / elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--frames", type=int, default=200_000)
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="uvloop")
    args = parser.parse_args()
    if args.loop == "uvloop":
        import uvloop

        rate = uvloop.run(measure(args.frames))
    else:
        rate = asyncio.run(measure(args.frames))
    print(f"{args.loop}: {rate:,.0f} frames/s ({args.frames} frames, 64-byte payloads)")


if __name__ == "__main__":
    main()
