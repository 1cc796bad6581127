"""nyxplug's session protocol over real loopback sockets (issue 16 items 5 and 6).

``SessionService`` on a loopback port with ``RemoteDispatcher`` (or a raw socket playing a
hostile peer) on the same loop, on both twins and both loops; ``nyxplug serve`` and
``nyxplug send`` as real subprocesses. Every test ends by checking both ledgers: every
frame in exactly one bucket on each side.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nyx_helpers import DATA, HANDSHAKE, Gate, info
from plugin_helpers import write_plugin

import nyxplug
from nyxplug import DispatchStatus, Permission
from nyxplug.serving import (
    RemoteDispatcher,
    SessionClosed,
    SessionService,
    SessionStats,
    SessionViolation,
)
from nyxplug.serving.client import ClientStats
from nyxplug.serving.wire import (
    CLIENT_KINDS,
    PREFIX,
    SERVER_KINDS,
    Ack,
    Credit,
    Error,
    Hello,
    Kind,
    Reply,
    SessionReader,
    Welcome,
    decode,
    encode,
)
from nyxplug.testing.strategies import mutations

OK = DispatchStatus.OK


def echo(message: Any) -> bytes | None:
    if message.payload == b"boom":
        raise ValueError("boom")
    return message.payload.upper() or None


class Served:
    """A ``SessionService`` on a loopback port."""

    def __init__(self, service: SessionService) -> None:
        self.service = service
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(self.service.protocol, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        assert self.server is not None
        self.server.close()
        await self.service.drain(timeout=10)
        await self.server.wait_closed()


async def serve(d: Any, **options: Any) -> tuple[Served, int]:
    served = Served(SessionService(d, **options))
    return served, await served.start()


def check_server_ledger(stats: SessionStats) -> None:
    assert stats.frames == stats.decided + stats.discarded + stats.in_flight, stats


def check_client_ledger(stats: ClientStats) -> None:
    assert stats.sent == stats.acknowledged + stats.lost + stats.in_flight, stats


async def wait_for(predicate: Any, what: str) -> None:
    """Await a condition the loop makes true (polled once per loop iteration)."""
    async with asyncio.timeout(10):
        while not predicate():
            await asyncio.sleep(0)
    assert predicate(), what


async def hello(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> Welcome:
    """A raw peer's handshake."""
    writer.write(encode(Kind.HELLO, Hello(1, "nyx/1", "raw")))
    kind, body = await read_message(reader)
    assert kind == Kind.WELCOME
    welcome: Welcome = decode(kind, body)
    return welcome


async def read_message(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    length, kind = PREFIX.unpack(await reader.readexactly(5))
    return kind, await reader.readexactly(length - 1)


# -- handshake, batches, acknowledgements, requests -----------------------------------


async def test_frames_are_acknowledged_by_status_and_requests_answered(impl) -> None:
    d = impl.Dispatcher()
    await d.load_plugin(info(7, Permission.DATA_ACCESS), echo)
    await d.load_plugin(info(8), echo)
    await d.unload_plugin(8)  # registered, not loaded: not offered
    served, port = await serve(d, credit=64)
    client = await RemoteDispatcher.connect(("127.0.0.1", port), codec=impl)
    assert client.plugins() == {7: Permission.DATA_ACCESS.value}
    assert client.credit(7) == 64
    header = impl.PluginHeader(7)
    for index in range(10):
        client.dispatch_nowait(DATA, header, b"x%d" % index)
    await client.dispatch(HANDSHAKE, header, b"no permission")
    await client.dispatch(0x99, header, b"unknown type")
    assert client.try_dispatch(DATA, impl.PluginHeader(8), b"x") == (
        DispatchStatus.PLUGIN_NOT_REGISTERED
    )
    with pytest.raises(nyxplug.PluginNotRegistered):
        client.dispatch_nowait(DATA, impl.PluginHeader(8), b"x")
    with pytest.raises(nyxplug.FrameTooLarge):  # beyond WELCOME's max_message: not sent
        client.dispatch_nowait(DATA, header, bytes(4 << 20))
    assert await client.request(DATA, header, b"hi") == b"HI"
    assert await client.request(DATA, header, b"") is None
    with pytest.raises(nyxplug.HandlerError, match=r"^HandlerError from the server: Handler "):
        await client.request(DATA, header, b"boom")
    with pytest.raises(nyxplug.PermissionDenied):
        await client.request(HANDSHAKE, header.encode(), b"x")  # header bytes work too
    await client.wait_acknowledged()
    stats = client.statistics()
    assert stats.sent == 16 and stats.in_flight == 0 and stats.lost == 0
    assert stats.count(OK) == 13  # 10 + 3 requests that reached the handler
    assert stats.count(DispatchStatus.PERMISSION_DENIED) == 2
    assert stats.count(DispatchStatus.UNKNOWN_FRAME_TYPE) == 1
    assert stats.handler_errors == 1 and stats.requests == 4
    check_client_ledger(stats)
    await client.aclose()
    await served.close()
    total = served.service.stats()
    assert total.frames == 16 and total.by_status == stats.by_status
    assert (total.handler_errors, total.replies, total.open_connections) == (1, 4, 0)
    check_server_ledger(total)
    await d.aclose()


async def test_a_breaker_refusal_crosses_the_wire_typed_and_counted(impl) -> None:
    """A frame the plugin's circuit breaker refuses is acknowledged as CIRCUIT_OPEN, and
    a request gets the server's ``CircuitOpen`` back as that class."""
    d = impl.Dispatcher()
    await d.load_plugin(info(7, Permission.DATA_ACCESS), echo)
    d.set_breaker(7, nyxplug.BreakerConfig())
    d.set_breaker_state(7, nyxplug.BreakerState.FORCED_OPEN)
    served, port = await serve(d, credit=64)
    client = await RemoteDispatcher.connect(("127.0.0.1", port), codec=impl)
    header = impl.PluginHeader(7)
    for _ in range(3):
        client.dispatch_nowait(DATA, header, b"x")
    with pytest.raises(nyxplug.CircuitOpen, match=r"^CircuitOpen from the server: "):
        await client.request(DATA, header, b"hi")
    await client.wait_acknowledged()
    stats = client.statistics()
    assert stats.count(DispatchStatus.CIRCUIT_OPEN) == 4 and stats.count(OK) == 0
    check_client_ledger(stats)
    await client.aclose()
    await served.close()
    assert served.service.stats().by_status == stats.by_status
    await d.aclose()


def test_every_refusal_has_its_status_on_the_wire() -> None:
    """Each refusal ``dispatch``/``submit`` may raise is counted under its own status (a
    new ``DispatchStatus`` must be added to the server's table)."""
    from nyxplug.serving.server import _STATUS_OF

    assert set(_STATUS_OF.values()) == set(DispatchStatus) - {OK}
    for name in _STATUS_OF:
        assert issubclass(getattr(nyxplug, name), nyxplug.DispatchError), name


async def test_credit_bounds_the_sender_fifo(impl) -> None:
    d = impl.Dispatcher()
    gate = Gate()
    await d.load_plugin(info(7), gate, capacity=100)
    served, port = await serve(d, credit=3)
    async with await RemoteDispatcher.connect(f"127.0.0.1:{port}", codec=impl) as client:
        header = impl.PluginHeader(7)
        for _ in range(3):
            client.dispatch_nowait(DATA, header, b"a")
        assert client.try_dispatch(DATA, header, b"b") == DispatchStatus.WOULD_BLOCK
        with pytest.raises(nyxplug.WouldBlock):
            client.dispatch_nowait(DATA, header, b"b")
        order: list[int] = []

        async def send(n: int) -> None:
            await client.dispatch(DATA, header, b"%d" % n)
            order.append(n)

        waiting = [asyncio.create_task(send(n)) for n in range(5)]
        await asyncio.gather(*waiting)  # credit comes back as the server enqueues
        assert order == [0, 1, 2, 3, 4]
        await client.wait_acknowledged()
        stats = client.statistics()
        assert (stats.sent, stats.count(OK), stats.credit_waits, stats.would_block) == (8, 8, 5, 2)
    gate.open()
    await served.close()
    await d.aclose()


async def test_a_full_queue_stops_reading_and_nothing_is_lost(impl) -> None:
    d = impl.Dispatcher()
    gate = Gate()
    await d.load_plugin(info(7), gate, capacity=2)
    served, port = await serve(d, credit=50)
    client = await RemoteDispatcher.connect(("127.0.0.1", port), codec=impl)
    header = impl.PluginHeader(7)
    for _ in range(50):
        client.dispatch_nowait(DATA, header, b"x")
    protocol = next(iter(served.service.connections))
    await wait_for(lambda: not protocol.reading, "the server paused reading")
    assert served.service.stats().in_flight > 0
    check_server_ledger(served.service.stats())
    gate.open()
    await client.wait_acknowledged()
    assert client.statistics().count(OK) == 50
    await client.aclose()
    await served.close()
    check_server_ledger(served.service.stats())
    await d.aclose()


# -- hostile peers --------------------------------------------------------------------


async def test_a_peer_ignoring_credit_is_disconnected_and_counted(impl) -> None:
    d = impl.Dispatcher()
    await d.load_plugin(info(7), echo)
    served, port = await serve(d, credit=4)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    welcome = await hello(reader, writer)
    assert [(g.plugin_id, g.credit) for g in welcome.plugins] == [(7, 4)]
    messages = [impl.PluginMessage(DATA, impl.PluginHeader(7), b"x") for _ in range(5)]
    writer.write(impl.encode_batch(Kind.BATCH, 0, messages))  # one beyond the credit
    kind, body = await read_message(reader)
    assert kind == Kind.ERROR
    error = decode(kind, body)
    assert error == Error(
        "credit", "Expected at most 4 frames for plugin 7 (its credit), got 5 - in BATCH 0"
    )
    assert await reader.read() == b""  # closed
    writer.close()
    await served.close()
    stats = served.service.stats()
    assert (stats.credit_violations, stats.protocol_errors, stats.discarded) == (1, 1, 5)
    assert stats.decided == 0
    check_server_ledger(stats)
    await d.aclose()


@pytest.mark.parametrize(
    ("message", "code"),
    [
        (encode(Kind.HELLO, Hello(2, "nyx/1", "x")), "version"),
        (encode(Kind.HELLO, Hello(1, "http/1.1", "x")), "version"),
        (PREFIX.pack(1, 99), "bad-kind"),
        (PREFIX.pack(0, Kind.HELLO), "too-large"),
        (PREFIX.pack(5, Kind.BATCH) + b"1234", "handshake"),
        (PREFIX.pack(3, Kind.HELLO) + b"\x93\x01", "bad-message"),
    ],
)
async def test_protocol_violations_end_the_session_with_error(impl, message, code) -> None:
    d = impl.Dispatcher()
    served, port = await serve(d)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(message)
    kind, body = await read_message(reader)
    assert (kind, decode(kind, body).code) == (Kind.ERROR, code)
    assert await reader.read() == b""
    writer.close()
    await served.close()
    assert served.service.stats().protocol_errors == 1
    await d.aclose()


async def test_a_batch_cut_short_counts_no_frame_and_earlier_ones_are_acknowledged(impl) -> None:
    d = impl.Dispatcher()
    await d.load_plugin(info(7), echo)
    served, port = await serve(d)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    await hello(reader, writer)
    messages = [impl.PluginMessage(DATA, impl.PluginHeader(7), b"x") for _ in range(3)]
    whole = impl.encode_batch(Kind.BATCH, 0, messages)
    second = impl.encode_batch(Kind.BATCH, 1, messages)
    writer.write(whole + second[: len(second) // 2])
    kind, body = await read_message(reader)
    ack = decode(kind, body)
    assert kind == Kind.ACK and ack.next_seq == 1 and ack.counts[OK] == 3
    assert ack.credits == [(7, 3)]
    writer.close()  # cut mid-batch
    await served.close()
    stats = served.service.stats()
    assert (stats.frames, stats.count(OK), stats.batches) == (3, 3, 1)
    check_server_ledger(stats)
    await d.aclose()


async def test_a_requests_grant_leaves_with_its_reply_or_after_the_credit_delay(impl) -> None:
    d = impl.Dispatcher()
    gate = Gate()
    await d.load_plugin(info(7), echo)
    await d.load_plugin(info(8), gate)
    served, port = await serve(d, credit=1)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    await hello(reader, writer)

    def request(request_id: int, plugin_id: int, payload: bytes) -> bytes:
        message = impl.PluginMessage(DATA, impl.PluginHeader(plugin_id), payload)
        return bytes(impl.encode_batch(Kind.REQUEST, request_id, [message]))

    async def next_message() -> Any:
        kind, body = await read_message(reader)
        return decode(kind, body)

    # a quick handler: the grant rides on the REPLY's write (CREDIT first)
    writer.write(request(0, 7, b"a"))
    assert await next_message() == Credit([(7, 1)])
    assert await next_message() == Reply(0, OK, b"A", "", "")
    # a held handler: the grant leaves on its own (the credit timer), before the reply
    writer.write(request(1, 8, b"held"))
    await gate.entered()
    assert await next_message() == Credit([(8, 1)])
    gate.release()
    assert await next_message() == Reply(1, OK, None, "", "")
    writer.write(request(2, 7, b"b"))  # the credit came back: within credit again
    assert await next_message() == Credit([(7, 1)])
    assert await next_message() == Reply(2, OK, b"B", "", "")
    writer.close()
    await served.close()
    stats = served.service.stats()
    assert (stats.requests, stats.replies, stats.count(OK)) == (3, 3, 3)
    check_server_ledger(stats)
    await d.aclose()


async def test_the_access_policy_refuses_peers_and_permissions(impl) -> None:
    class DataOnly:
        def __init__(self) -> None:
            self.asked: list[int] = []

        def permissions(self, plugin_id: int) -> Permission:
            return Permission.DATA_ACCESS if plugin_id == 7 else Permission(0)

        def take(self, n: int) -> int:
            self.asked.append(n)
            return min(n, 2)  # two frames at a time

    access = DataOnly()

    class Policy:
        def __init__(self) -> None:
            self.admitted = 0

        def admit(self, transport: asyncio.BaseTransport) -> Any:
            self.admitted += 1
            return access if self.admitted == 1 else None

    d = impl.Dispatcher()
    await d.load_plugin(info(7), echo)
    await d.load_plugin(info(9), echo)
    served, port = await serve(d, policy=Policy())
    client = await RemoteDispatcher.connect(("127.0.0.1", port), codec=impl)
    assert client.plugins() == {7: Permission.DATA_ACCESS.value, 9: 0}
    header = impl.PluginHeader(7)
    client.dispatch_nowait(DATA, impl.PluginHeader(9), b"to a plugin this peer may not use")
    for _ in range(5):
        client.dispatch_nowait(DATA, header, b"x")
    client.dispatch_nowait(HANDSHAKE, header, b"x")
    with pytest.raises(nyxplug.PermissionDenied, match=r"access policy"):
        await client.request(HANDSHAKE, header, b"x")
    await client.wait_acknowledged()
    stats = client.statistics()
    assert stats.count(OK) == 5 and stats.count(DispatchStatus.PERMISSION_DENIED) == 3
    assert max(access.asked) <= 5
    with pytest.raises(SessionClosed, match=r"\(refused\)"):
        await RemoteDispatcher.connect(("127.0.0.1", port), codec=impl)
    await client.aclose()
    await served.close()
    assert served.service.stats().refused_peers == 1
    await d.aclose()


# -- ending sessions: every frame in one bucket on each side -----------------------------


async def test_killing_the_client_mid_stream_keeps_both_ledgers(impl) -> None:
    d = impl.Dispatcher()
    gate = Gate()
    await d.load_plugin(info(7), gate, capacity=10)
    served, port = await serve(d, credit=200)
    client = await RemoteDispatcher.connect(("127.0.0.1", port), codec=impl)
    header = impl.PluginHeader(7)
    for _ in range(200):
        client.dispatch_nowait(DATA, header, b"x")
    protocol = next(iter(served.service.connections))
    await wait_for(lambda: not protocol.reading, "the server waits for queue space")
    assert client._transport is not None
    client._transport.abort()  # the client dies
    await client.aclose()
    stats = client.statistics()
    assert stats.lost > 0 and stats.in_flight == 0
    check_client_ledger(stats)
    gate.open()
    await served.close()
    server = served.service.stats()
    assert server.frames == 200 and server.in_flight == 0
    check_server_ledger(server)
    assert server.count(OK) == 200  # frames read are still handled
    await d.aclose()


async def test_drain_sends_goaway_after_handling_what_was_read(impl) -> None:
    d = impl.Dispatcher()
    gate = Gate()
    await d.load_plugin(info(7), gate, capacity=5)
    served, port = await serve(d, credit=100)
    client = await RemoteDispatcher.connect(("127.0.0.1", port), codec=impl)
    header = impl.PluginHeader(7)
    for _ in range(20):
        client.dispatch_nowait(DATA, header, b"x")
    protocol = next(iter(served.service.connections))
    await wait_for(lambda: not protocol.reading, "the server waits for queue space")
    assert served.server is not None
    served.server.close()
    draining = asyncio.create_task(served.service.drain(timeout=10))
    gate.open()
    await draining
    await wait_for(lambda: client.closed, "GOAWAY reached the client")
    with pytest.raises(SessionClosed, match=r"shutting down"):
        client.dispatch_nowait(DATA, header, b"late")
    await client.aclose()
    stats = client.statistics()
    assert (stats.sent, stats.count(OK), stats.lost) == (20, 20, 0)
    check_server_ledger(served.service.stats())
    await d.aclose()


# -- the decoders under hostile input -------------------------------------------------


def _valid_stream(impl: Any) -> bytes:
    messages = [impl.PluginMessage(DATA, impl.PluginHeader(7, 1, b"d"), b"payload")] * 3
    return (
        encode(Kind.HELLO, Hello(1, "nyx/1", "fuzz"))
        + impl.encode_batch(Kind.BATCH, 0, messages)
        + impl.encode_batch(Kind.REQUEST, 0, messages[:1])
    )


def decode_session_stream(impl: Any, data: bytes, server: bool = True) -> None:
    """Every way a session peer's bytes are decoded; only typed errors may escape."""
    reader = SessionReader(CLIENT_KINDS if server else SERVER_KINDS, 1 << 16)
    for kind, body in reader.feed(data):
        if kind in (Kind.BATCH, Kind.REQUEST):
            try:
                impl.decode_batch(body, 0xFFFF, 1 << 16)
            except ValueError:
                pass
        else:
            decode(kind, body)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(data=st.data())
def test_session_decoders_refuse_garbage_with_typed_errors(impl, data) -> None:
    base = _valid_stream(impl)
    blob = data.draw(st.one_of(mutations(base), st.binary(max_size=200)))
    try:
        decode_session_stream(impl, blob)
    except SessionViolation:
        pass
    for kind in (Kind.ACK, Kind.WELCOME, Kind.REPLY):
        try:
            decode(kind, blob)
        except SessionViolation:
            pass


def test_control_messages_round_trip() -> None:
    ack = Ack(3, [1] * len(DispatchStatus), [(7, 2)])
    body = encode(Kind.ACK, ack)
    assert SessionReader(SERVER_KINDS, 1024).feed(body[:3]) == []
    reader = SessionReader(SERVER_KINDS, 1024)
    assert reader.feed(body[:7]) == [] and reader.buffered == 7
    [(kind, payload)] = reader.feed(body[7:])
    assert decode(kind, payload) == ack
    with pytest.raises(SessionViolation, match=r"^Session protocol violation \(bad-message\)"):
        decode(Kind.ACK, b"\x93\x01\x02")


# -- nyxplug serve and nyxplug send, real subprocesses ---------------------------------

REPLIER = """
from nyxplug.plugins import Plugin

class Entry(Plugin):
    async def handle(self, message):
        if message.payload == b"boom":
            raise ValueError("boom")
        return b"re:" + message.payload
"""


def _env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NYXPLUG_")}
    env.update(HOME=str(tmp_path / "home"), NYXPLUG_ENTRY_POINTS="0")
    if "NYXPLUG_REQUIRE_EXTENSIONS" in os.environ:
        env["NYXPLUG_REQUIRE_EXTENSIONS"] = os.environ["NYXPLUG_REQUIRE_EXTENSIONS"]
    return env


def start_serve(tmp_path: Path) -> tuple[subprocess.Popen[str], int]:
    write_plugin(tmp_path / "plugins", "replier", 7, REPLIER)
    proc = subprocess.Popen(
        [sys.executable, "-m", "nyxplug", "serve", "--listen", "127.0.0.1:0",
         "--plugin-dir", str(tmp_path / "plugins"), "--state-dir", str(tmp_path / "state"),
         "--allow-unsigned"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(tmp_path),
        cwd=tmp_path, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert proc.stdout is not None
    lines = []
    while True:
        line = proc.stdout.readline()
        assert line, (lines, proc.stderr.read() if proc.stderr else "")
        lines.append(line)
        found = re.match(r"^listening on 127\.0\.0\.1:(\d+) \(codec session\)$", line.strip())
        if found:
            return proc, int(found.group(1))


def test_nyxplug_send_talks_to_nyxplug_serve_which_drains_on_sigterm(tmp_path: Path) -> None:
    proc, port = start_serve(tmp_path)
    try:
        sent = subprocess.run(
            [sys.executable, "-m", "nyxplug", "send", "7", "--to", f"127.0.0.1:{port}",
             "--request", "--stdin"],
            input="hi\nboom\n", capture_output=True, text=True, timeout=60, env=_env(tmp_path),
        )  # fmt: skip
        assert (sent.returncode, sent.stderr) == (1, "")  # a handler error: exit status 1
        assert sent.stdout.splitlines()[0] == "0: reply b're:hi'"
        assert sent.stdout.splitlines()[1].startswith("1: error HandlerError: HandlerError ")
        assert sent.stdout.splitlines()[2] == (
            "sent 2: acknowledged 2 (OK 2), lost 0, in flight 0; handler errors 1"
        )
        piped = subprocess.run(
            [sys.executable, "-m", "nyxplug", "send", "7", "--to", f"127.0.0.1:{port}",
             "--stdin"],
            input="a\nb\nc\n", capture_output=True, text=True, timeout=60, env=_env(tmp_path),
        )  # fmt: skip
        assert (piped.returncode, piped.stdout) == (
            0,
            "sent 3: acknowledged 3 (OK 3), lost 0, in flight 0; handler errors 0\n",
        )
        unknown = subprocess.run(
            [sys.executable, "-m", "nyxplug", "send", "8", "--to", f"127.0.0.1:{port}"],
            capture_output=True, text=True, timeout=60, env=_env(tmp_path),
        )  # fmt: skip
        assert unknown.returncode == 1
        assert unknown.stdout.startswith("not sent: Plugin 8 is not registered")
        assert f"(the server at 127.0.0.1:{port} offers plugins: 7)" in unknown.stdout
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0
    assert err.startswith("Handler of plugin 'replier' (id 7) raised on frame 0x52 (DATA)")
    assert "served 3 sessions: 5 frames, 5 dispatched, 0 refused, 0 discarded, 2 replies" in out


async def test_killing_the_server_mid_stream_keeps_the_client_ledger(tmp_path: Path) -> None:
    proc, port = await asyncio.to_thread(start_serve, tmp_path)
    try:
        client = await RemoteDispatcher.connect(("127.0.0.1", port))
        header = nyxplug.PluginHeader(7)
        for _ in range(3):
            await client.dispatch(DATA, header, b"x")
        await client.wait_acknowledged()
        for _ in range(500):
            client.dispatch_nowait(DATA, header, b"y")
        proc.kill()  # SIGKILL: no GOAWAY
        await asyncio.to_thread(proc.communicate)
        with pytest.raises(SessionClosed):
            async with asyncio.timeout(10):
                while True:
                    await client.dispatch(DATA, header, b"z")
        await client.aclose()
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
    stats = client.statistics()
    assert stats.count(OK) >= 3 and stats.in_flight == 0
    check_client_ledger(stats)


def test_the_session_layer_packs_frames_little_endian(impl) -> None:
    batch = impl.encode_batch(Kind.BATCH, 5, [impl.PluginMessage(DATA, impl.PluginHeader(7))])
    length, kind, seq, count = struct.unpack_from("<IBQI", batch)
    assert (length, kind, seq, count) == (len(batch) - 4, Kind.BATCH, 5, 1)


def test_the_session_example_in_the_readme_runs() -> None:
    """The README's RemoteDispatcher example is this code; keep them in step."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    start = readme.index("<!-- session-example -->")
    block = readme[start:].split("```python\n", 1)[1].split("```", 1)[0]
    done = subprocess.run(
        [sys.executable, "-c", block], capture_output=True, text=True, timeout=60,
        stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout == (
        "b'HELLO'\n"
        "HandlerError: Handler of plugin 'upper' (id 7) raised on frame 0x52 (DATA): "
        "ValueError: boom\n"
        "sent 102, acknowledged 102, lost 0\n"
    )


# -- Unix sockets and TLS ---------------------------------------------------------------


def self_signed(tmp_path: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key, made here (cryptography, P-256)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "nyxplug test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


async def test_sessions_over_a_unix_socket_and_tls_1_3(impl, tmp_path: Path) -> None:
    import ssl

    d = impl.Dispatcher()
    await d.load_plugin(info(7), echo)
    service = SessionService(d)
    loop = asyncio.get_running_loop()
    unix = await loop.create_unix_server(service.protocol, str(tmp_path / "s.sock"))
    cert, key = self_signed(tmp_path)
    server_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_tls.minimum_version = ssl.TLSVersion.TLSv1_3
    server_tls.load_cert_chain(cert, key)
    tls = await loop.create_server(service.protocol, "127.0.0.1", 0, ssl=server_tls)
    client_tls = ssl.create_default_context(cafile=str(cert))
    port = tls.sockets[0].getsockname()[1]
    header = impl.PluginHeader(7)
    for target, context in (
        (f"unix:{tmp_path / 's.sock'}", None),
        (("127.0.0.1", port), client_tls),
    ):
        async with await RemoteDispatcher.connect(target, ssl=context, codec=impl) as client:
            await client.dispatch_many([impl.PluginFrame(DATA, header, b"x")] * 300)
            assert await client.request(DATA, header, b"tls") == b"TLS"
            await client.wait_acknowledged()
            assert client.statistics().count(OK) == 301
    with pytest.raises(ssl.SSLError):  # a client that does not trust the certificate
        await RemoteDispatcher.connect(("127.0.0.1", port), ssl=ssl.create_default_context())
    for server in (unix, tls):
        server.close()
    await service.drain(timeout=10)
    stats = service.stats()
    assert stats.count(OK) == 602
    check_server_ledger(stats)
    await d.aclose()


async def test_sigterm_sends_goaway_and_both_ledgers_agree(tmp_path: Path) -> None:
    proc, port = await asyncio.to_thread(start_serve, tmp_path)
    try:
        client = await RemoteDispatcher.connect(("127.0.0.1", port))
        header = nyxplug.PluginHeader(7)
        await client.dispatch_many([nyxplug.PluginFrame(DATA, header, b"x")] * 2000)
        await client.wait_acknowledged()
        await client.dispatch_many([nyxplug.PluginFrame(DATA, header, b"y")] * 500)
        proc.send_signal(signal.SIGTERM)  # while frames may still be on the wire
        out, err = await asyncio.to_thread(proc.communicate, timeout=30)
        await wait_for(lambda: client.closed, "the session ended")
        assert re.match(
            r"^the server is shutting down|^the connection was lost", client._reason or ""
        )
        await client.aclose()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    stats = client.statistics()
    check_client_ledger(stats)
    assert stats.in_flight == 0 and stats.count(OK) >= 2000
    served = re.search(r"served 1 sessions: (\d+) frames, (\d+) dispatched", out)
    assert served is not None, out
    # every frame the server read was dispatched and acknowledged before GOAWAY
    assert int(served.group(1)) == int(served.group(2)) == stats.count(OK)
    assert stats.lost == stats.sent - stats.count(OK)


# -- the benchmark and the fuzz target stay runnable ------------------------------------


@pytest.mark.parametrize("twin", ["cython", "python"])
def test_a_small_run_of_the_session_fuzz_target(twin: str) -> None:
    """A seeded run of ``python -m benchmarks.fuzz_session`` (the large one: 1,000,000)."""
    from benchmarks import fuzz_session

    if twin == "cython":
        pytest.importorskip("nyxplug._dispatch")
    outcomes = asyncio.run(fuzz_session.fuzz_twin(twin, 3000, 16))
    assert outcomes.untyped == 0 and outcomes.violations > 0 and outcomes.errors_sent > 0


def test_the_session_benchmark_runs(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.serve_session", "--frames", "3000", "--rounds", "1",
         "--round-trips", "50", "--flood-seconds", "0.2", "--loop", "asyncio"],
        capture_output=True, text=True, timeout=120, cwd=Path(__file__).resolve().parents[1],
        stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert re.search(r"^\| session \| [\d,]+ \| [\d.]+x \|$", done.stdout, re.M), done.stdout
    assert "request round trip p50: session" in done.stdout
    assert re.search(r"\d/8 peers disconnected", done.stdout), done.stdout


CLIENT_SCRIPT = """
import asyncio, sys
from nyxplug import FrameType, PluginFrame, PluginHeader
from nyxplug.serving import RemoteDispatcher

async def main():
    client = await RemoteDispatcher.connect(("127.0.0.1", int(sys.argv[1])))
    frames = [PluginFrame(FrameType.DATA, PluginHeader(7), b"x")] * 256
    await client.dispatch_many(frames)
    print("sending", flush=True)
    while True:
        await client.dispatch_many(frames)

asyncio.run(main())
"""


async def test_killing_a_client_process_mid_stream_keeps_the_server_ledger(impl) -> None:
    d = impl.Dispatcher()
    gate = Gate()
    await d.load_plugin(info(7), gate, capacity=64)
    served, port = await serve(d)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CLIENT_SCRIPT, str(port), stdout=asyncio.subprocess.PIPE
    )
    assert proc.stdout is not None
    try:
        assert await proc.stdout.readline() == b"sending\n"
        protocol = next(iter(served.service.connections))
        await wait_for(lambda: not protocol.reading, "the queue is full: the server waits")
        proc.kill()
        await proc.wait()
        gate.open()
        await protocol.wait_closed()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    await served.close()
    stats = served.service.stats()
    assert stats.in_flight == 0 and stats.count(OK) >= 256 and stats.open_connections == 0
    check_server_ledger(stats)
    await d.wait_idle()
    assert len(gate.finished) == stats.count(OK)  # every frame decided OK was handled
    await d.aclose()


async def test_mutual_tls_and_an_access_list_guard_a_session(impl, tmp_path: Path) -> None:
    """No client certificate: no handshake. A certificate the access list does not name:
    every frame PermissionDenied, counted on both sides. A named one: its grants."""
    import ssl

    from tls_helpers import Pki

    from nyxplug.serving.security import (
        AccessList,
        TlsPolicy,
        client_tls_context,
        server_tls_context,
    )

    pki = Pki(tmp_path / "pki")
    server_cert = pki.server()
    acl_file = tmp_path / "acl.toml"
    acl_file.write_text('[[peers]]\ncn = "ingest"\nplugins = { "7" = ["DATA_ACCESS"] }\n')
    d = impl.Dispatcher()
    await d.load_plugin(info(7), echo)
    policy = TlsPolicy(AccessList.load(acl_file), registry=d.registry)
    service = SessionService(d, policy=policy)
    context = server_tls_context(server_cert.cert, server_cert.key, client_ca=pki.ca)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(service.protocol, "127.0.0.1", 0, ssl=context)
    port = server.sockets[0].getsockname()[1]
    header = impl.PluginHeader(7)

    def tls(cn: str | None) -> ssl.SSLContext:
        if cn is None:
            return client_tls_context(pki.ca)
        issued = pki.client(cn)
        return client_tls_context(pki.ca, cert=issued.cert, key=issued.key)

    with pytest.raises((ssl.SSLError, ConnectionError, SessionClosed)):
        await RemoteDispatcher.connect(
            ("127.0.0.1", port), ssl=tls(None), server_hostname="localhost", codec=impl
        )
    async with await RemoteDispatcher.connect(
        ("127.0.0.1", port), ssl=tls("stranger"), server_hostname="localhost", codec=impl
    ) as stranger:
        assert stranger.plugins() == {7: 0}
        for _ in range(10):
            await stranger.dispatch(DATA, header, b"x")
        with pytest.raises(nyxplug.PermissionDenied):
            await stranger.request(DATA, header, b"x")
        await stranger.wait_acknowledged()
        refused = stranger.statistics()
        assert refused.count(DispatchStatus.PERMISSION_DENIED) == 11 == refused.sent
    async with await RemoteDispatcher.connect(
        ("127.0.0.1", port), ssl=tls("ingest"), server_hostname="localhost", codec=impl
    ) as ingest:
        assert ingest.plugins() == {7: Permission.DATA_ACCESS.value}
        assert await ingest.request(DATA, header, b"ok") == b"OK"
    server.close()
    await service.drain(timeout=10)
    stats = service.stats()
    assert stats.count(DispatchStatus.PERMISSION_DENIED) == 11 and stats.count(OK) == 1
    check_server_ledger(stats)
    await d.aclose()
