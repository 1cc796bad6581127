"""The interop listener of SPEC 8 over real loopback sockets (issue 16 items 4 and 5).

Clients build every frame with ``cbor2`` alone, exactly as SPEC 8 writes them, and read
the answers the same way: nyxplug's own codec is only on the server side.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import cbor2
import pytest
from nyx_helpers import DATA, Gate, info
from plugin_helpers import write_plugin

from nyxplug import FrameProtocol, FrameService

#: What ``data_received`` may be handed at once (asyncio and uvloop read 256 KiB).
CHUNK = 256 * 1024


def nyx_frame(frame_type: int, plugin_id: int, payload: bytes = b"", *, flags: int = 0,
              data: bytes = b"") -> bytes:  # fmt: skip
    """One framed Nyx PluginFrame, built by cbor2 as SPEC 8 writes it."""
    body = cbor2.dumps(
        {
            "frame_type": frame_type,
            "header": {"id": plugin_id, "flags": flags, "data": data},
            "payload": payload,
        }
    )
    return struct.pack(">I", len(body)) + body


async def read_answer(reader: asyncio.StreamReader) -> dict[str, Any] | None:
    """The next answer as the CBOR map it is (``None`` at a clean end of stream)."""
    try:
        head = await reader.readexactly(4)
    except asyncio.IncompleteReadError as exc:
        assert exc.partial == b""
        return None
    (size,) = struct.unpack(">I", head)
    answer = cbor2.loads(await reader.readexactly(size))
    assert isinstance(answer, dict)
    return answer


def assert_refusal(answer: dict[str, Any] | None, seq: int, plugin_id: int, error: str,
                   message: str) -> None:  # fmt: skip
    assert answer is not None
    assert answer["frame_type"] == 0x54
    assert answer["header"] == {"id": plugin_id, "flags": 0, "data": b""}
    body = cbor2.loads(answer["payload"])
    assert sorted(body) == ["error", "message", "seq"]
    assert (body["seq"], body["error"]) == (seq, error)
    assert re.match(message, body["message"]), body["message"]


def echo(message: Any) -> bytes | None:
    if message.payload == b"boom":
        raise ValueError("boom")
    return message.payload.upper() or None


class Served:
    """A ``FrameService`` on a loopback port, and the protocols it created."""

    def __init__(self, service: FrameService) -> None:
        self.service = service
        self.protocols: list[FrameProtocol] = []
        self.connected = asyncio.Event()
        self.server: asyncio.Server | None = None

    def factory(self) -> FrameProtocol:
        protocol = self.service.protocol()
        self.protocols.append(protocol)
        self.connected.set()
        return protocol

    async def start(self) -> int:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(self.factory, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        assert self.server is not None
        self.server.close()
        await self.service.drain()
        await self.server.wait_closed()


async def serve(d: Any, **options: Any) -> tuple[Served, int]:
    served = Served(FrameService(d, **options))
    return served, await served.start()


# -- replies and refusals ------------------------------------------------------------------


async def test_replies_and_refusals_come_back_in_seq_order(impl) -> None:
    d = impl.Dispatcher()
    await d.load_plugin(info(7), echo)
    served, port = await serve(d)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        nyx_frame(DATA, 7, b"hi", flags=1, data=b"ctx")  # 0: a reply
        + nyx_frame(DATA, 7, b"")  # 1: nothing to say
        + nyx_frame(DATA, 7, b"boom")  # 2: the handler raised
        + struct.pack(">I", 3) + b"\xa1\x00\x00"  # 3: not a PluginFrame; the connection goes on
        + nyx_frame(DATA, 99, b"x")  # 4: refused by the dispatcher
        + nyx_frame(0x99, 7, b"x")  # 5: unknown frame type
        + nyx_frame(DATA, 7, b"last")  # 6: a reply again
    )  # fmt: skip
    writer.write_eof()
    first = await read_answer(reader)
    assert first == {
        "frame_type": DATA,
        "header": {"id": 7, "flags": 1, "data": (0).to_bytes(8, "big")},
        "payload": b"HI",
    }
    assert_refusal(
        await read_answer(reader), 2, 7, "HandlerError",
        r"^Handler of plugin 'plugin_7' \(id 7\) raised on frame 0x52 \(DATA\): ValueError: "
        r"boom - the frame was handled and counted in PluginStats\.errors; fix the plugin, or "
        r"catch the error in its handler$",
    )  # fmt: skip
    assert_refusal(
        await read_answer(reader), 3, 0, "FrameDecodeError",
        r"^Expected key `frame_type`, got a map without it at byte 0 - in plugin frame$",
    )  # fmt: skip
    assert_refusal(
        await read_answer(reader), 4, 99, "PluginNotRegistered",
        r"^Plugin 99 is not registered - frame 0x52 \(DATA\) was refused; load it with "
        r"Dispatcher\.load_plugin\(\) first$",
    )  # fmt: skip
    assert_refusal(
        await read_answer(reader), 5, 7, "UnknownFrameType",
        r"^Expected a frame type this dispatcher routes, got 0x99 - for plugin 7; the built-in "
        r"types are 0x51\.\.0x54, register_frame_type\(\) adds others in 0x50\.\.0x5f$",
    )  # fmt: skip
    last = await read_answer(reader)
    assert last is not None and last["header"]["data"] == (6).to_bytes(8, "big")
    assert last["payload"] == b"LAST"
    assert await read_answer(reader) is None  # the server closed after answering
    writer.close()
    await served.protocols[0].wait_closed()
    stats = served.service.stats()
    assert (stats.frames, stats.dispatched, stats.refused, stats.undecodable) == (7, 4, 2, 1)
    assert (stats.replies, stats.handler_errors, stats.waiting) == (2, 1, 0)
    await served.close()
    await d.aclose()


async def test_a_later_frame_answered_first_still_waits_for_its_turn(impl) -> None:
    """Answers leave in seq order even when another plugin finishes a later frame first."""
    d = impl.Dispatcher()
    gate = Gate()
    fast_done = asyncio.Event()

    def fast(message: Any) -> bytes:
        fast_done.set()
        return b"second"

    async def slow(message: Any) -> bytes:
        await gate(message)
        return b"first"

    await d.load_plugin(info(1), slow)
    await d.load_plugin(info(2), fast)
    served, port = await serve(d)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(nyx_frame(DATA, 1, b"first") + nyx_frame(DATA, 2, b"x"))
    await asyncio.wait_for(gate.entered(), 5)
    await asyncio.wait_for(fast_done.wait(), 5)
    await asyncio.wait_for(d.wait_idle(2), 5)  # frame 1's reply is done, frame 0's is not
    assert len(served.protocols[0]._answers) == 2
    gate.release()
    writer.write_eof()
    first = await read_answer(reader)
    assert first is not None and first["header"]["data"] == (0).to_bytes(8, "big")
    assert first["payload"] == b"first"
    second = await read_answer(reader)
    assert second is not None and second["header"]["data"] == (1).to_bytes(8, "big")
    assert second["payload"] == b"second"
    writer.close()
    await served.close()
    await d.aclose()


@pytest.mark.parametrize(
    ("length", "error", "message"),
    [
        (0, "FramingError", r"^Expected a message length in 1\.\.\d+, got a length of 0"),
        (1 << 30, "FrameTooLarge", r"^.*\b1073741824\b"),
    ],
)
async def test_a_bad_length_is_refused_with_the_next_seq_and_closes(
    impl, length: int, error: str, message: str
) -> None:
    d = impl.Dispatcher()
    await d.load_plugin(info(7), echo)
    served, port = await serve(d)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(nyx_frame(DATA, 7, b"a") + nyx_frame(DATA, 7, b"b") + struct.pack(">I", length))
    writer.write(nyx_frame(DATA, 7, b"never read"))
    assert [(await read_answer(reader) or {}).get("payload") for _ in range(2)] == [b"A", b"B"]
    assert_refusal(await read_answer(reader), 2, 0, error, message)
    assert await read_answer(reader) is None
    writer.close()
    await served.protocols[0].wait_closed()
    stats = served.service.stats()
    assert (stats.frames, stats.dispatched, stats.framing_errors) == (2, 2, 1)
    await served.close()
    await d.aclose()


# -- backpressure and accounting ------------------------------------------------------------


async def test_a_full_queue_pauses_reading_and_memory_stays_bounded(impl) -> None:
    d = impl.Dispatcher()
    gate = Gate()
    await d.load_plugin(info(7), gate, capacity=2)
    service = FrameService(d)
    paused = asyncio.Event()

    class Watched(FrameProtocol):
        def _pause(self) -> None:
            super()._pause()
            paused.set()

    served = Served(service)
    served.service.protocol = lambda: Watched(service)  # type: ignore[method-assign]
    port = await served.start()
    count = 40_000  # about 1.5 MiB: several reads, more than the queue and one chunk
    frames = b"".join(nyx_frame(DATA, 7, b"p" * 16) for _ in range(count))
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(frames)
    await paused.wait()
    protocol = served.protocols[0]
    assert protocol._transport is not None
    assert not protocol.reading and not protocol._transport.is_reading()
    # Held: the reader's unfinished message and at most two chunks of read frames.
    assert protocol.buffered <= service.max_size + 4 + 2 * CHUNK
    assert d.plugin_stats(7).high_watermark == 2  # full: the next frame waits for a slot
    gate.open()
    await writer.drain()
    writer.write_eof()
    assert await read_answer(reader) is None  # no replies: the gate answers None
    writer.close()
    await protocol.wait_closed()
    await d.wait_idle()
    stats = service.stats()
    assert (stats.frames, stats.dispatched, stats.waiting) == (count, count, 0)
    assert d.plugin_stats(7).messages_processed == count
    assert d.plugin_stats(7).high_watermark == 2
    await served.close()
    await d.aclose()


async def test_a_client_gone_mid_stream_leaves_every_frame_accounted(impl) -> None:
    d = impl.Dispatcher()
    gate = Gate()
    await d.load_plugin(info(7), gate, capacity=4)
    served, port = await serve(d)
    count = 500
    sock = socket.create_connection(("127.0.0.1", port))
    # Every frame, then half of one more; then gone without reading a single answer.
    sock.sendall(
        b"".join(nyx_frame(DATA, 7, b"%d" % n) for n in range(count)) + b"\x00\x00\x00\x09\xa3"
    )
    sock.close()
    await served.connected.wait()
    protocol = served.protocols[0]
    await gate.entered()  # the plugin has begun
    gate.open()
    await protocol.wait_closed()
    await d.wait_idle()
    stats = served.service.stats()
    assert (stats.frames, stats.dispatched, stats.refused, stats.undecodable) == (
        count,
        count,
        0,
        0,
    )
    assert (stats.waiting, stats.framing_errors, stats.open_connections) == (0, 1, 0)
    assert d.plugin_stats(7).messages_processed == count
    assert [m.payload for m in gate.finished] == [b"%d" % n for n in range(count)]
    await served.close()
    await d.aclose()


async def test_drain_answers_what_was_read_then_closes(impl) -> None:
    d = impl.Dispatcher()
    gate = Gate()
    await d.load_plugin(info(7), gate, capacity=8)
    served, port = await serve(d)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(nyx_frame(DATA, 7, b"a") + nyx_frame(DATA, 7, b"b"))
    await gate.entered()
    assert served.server is not None
    served.server.close()
    draining = asyncio.create_task(served.service.drain())
    gate.open()
    await draining
    assert await read_answer(reader) is None
    assert [m.payload for m in gate.finished] == [b"a", b"b"]
    writer.close()
    await served.server.wait_closed()
    await d.aclose()


def test_the_embedding_example_in_the_readme_runs() -> None:
    """The README's embedding example is this code; keep them in step."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    start = readme.index("<!-- serve-embed-example -->")
    block = readme[start:].split("```python\n", 1)[1].split("```", 1)[0]
    done = subprocess.run(
        [sys.executable, "-c", block], capture_output=True, text=True, timeout=60,
        stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert (done.returncode, done.stderr) == (0, ""), done.stderr
    assert done.stdout == "reply seq 0: b'HELLO'\n"


# -- nyxplug serve, a real subprocess -------------------------------------------------------

REPLIER = """
from nyxplug.plugins import Plugin

class Entry(Plugin):
    async def handle(self, message):
        return b"re:" + message.payload
"""


def test_nyxplug_serve_answers_and_drains_on_sigterm(tmp_path: Path) -> None:
    write_plugin(tmp_path / "plugins", "replier", 7, REPLIER)
    env = {k: v for k, v in os.environ.items() if not k.startswith("NYXPLUG_")}
    env.update(HOME=str(tmp_path / "home"), NYXPLUG_ENTRY_POINTS="0")
    if "NYXPLUG_REQUIRE_EXTENSIONS" in os.environ:
        env["NYXPLUG_REQUIRE_EXTENSIONS"] = os.environ["NYXPLUG_REQUIRE_EXTENSIONS"]
    unix = tmp_path / "serve.sock"
    proc = subprocess.Popen(
        [sys.executable, "-m", "nyxplug", "serve", "--listen", "127.0.0.1:0",
         "--unix", str(unix), "--codec", "nyx", "--plugin-dir", str(tmp_path / "plugins"),
         "--state-dir", str(tmp_path / "state"), "--allow-unsigned"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path,
        stdin=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        lines = []
        port = None
        while port is None:
            line = proc.stdout.readline()
            assert line, (lines, proc.stderr.read() if proc.stderr else "")
            lines.append(line)
            found = re.match(r"^listening on 127\.0\.0\.1:(\d+) \(codec nyx\)$", line.strip())
            port = int(found.group(1)) if found else None
        assert proc.stdout.readline().strip() == f"listening on unix:{unix} (codec nyx)"
        tcp = socket.create_connection(("127.0.0.1", port), timeout=30)
        tcp.sendall(nyx_frame(DATA, 7, b"one") + nyx_frame(DATA, 8, b"nobody"))
        via_unix = socket.socket(socket.AF_UNIX)
        via_unix.settimeout(30)
        via_unix.connect(str(unix))
        via_unix.sendall(nyx_frame(DATA, 7, b"two"))
        tcp_answers = tcp.makefile("rb")
        first = cbor2.loads(tcp_answers.read(struct.unpack(">I", tcp_answers.read(4))[0]))
        assert first["payload"] == b"re:one"
        assert first["header"] == {"id": 7, "flags": 0, "data": bytes(8)}
        second = cbor2.loads(tcp_answers.read(struct.unpack(">I", tcp_answers.read(4))[0]))
        assert cbor2.loads(second["payload"])["error"] == "PluginNotRegistered"
        unix_answers = via_unix.makefile("rb")
        third = cbor2.loads(unix_answers.read(struct.unpack(">I", unix_answers.read(4))[0]))
        assert third["payload"] == b"re:two"
        proc.send_signal(signal.SIGTERM)
        assert tcp_answers.read() == b"" and unix_answers.read() == b""  # closed by the drain
        for file in (tcp_answers, unix_answers, tcp, via_unix):
            file.close()
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert (proc.returncode, err) == (0, "")
    assert (
        "served 2 connections: 3 frames, 2 dispatched, 1 refused, 0 undecodable, 2 replies" in out
    )


def test_plaintext_off_loopback_is_refused(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "nyxplug", "serve", "--listen", "0.0.0.0:0",
         "--state-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert done.returncode == 1
    assert re.match(
        r"^nyxplug serve: --listen 0\.0\.0\.0:0: 0\.0\.0\.0 is not a loopback address and "
        r"frames would cross the network in plaintext - give --tls-cert and --tls-key, "
        r"listen on 127\.0\.0\.1, ::1 or a --unix socket, or pass --allow-remote-plaintext "
        r"on a trusted network\n$",
        done.stderr,
    )


# -- Dispatcher.submit: request in two steps --------------------------------------------------


async def test_submit_returns_a_reply_future_once_enqueued(impl) -> None:
    d = impl.Dispatcher()
    gate = Gate()
    await d.load_plugin(info(7), gate, capacity=1)
    header = impl.PluginHeader(7)
    first = await d.submit(DATA, header, b"a")
    second = await d.submit(DATA, header, b"b")  # the first is in the handler: room for one
    parked = asyncio.create_task(d.submit(DATA, header, b"c"))
    await gate.entered()
    assert not parked.done() and d.plugin_stats(7).queue_depth == 1
    gate.open()
    third = await parked
    assert [await first, await second, await third] == [None, None, None]
    with pytest.raises(impl.PluginNotRegistered):
        await d.submit(DATA, impl.PluginHeader(8))
    assert d.dispatch_stats().frames_dispatched == 3
    assert d.dispatch_stats().dispatch_errors == 1
    await d.aclose()
