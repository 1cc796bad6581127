"""TLS 1.3, mutual TLS mapped to plugin permissions, and the per-peer rate limit (issue 16,
item 5) - over real loopback TLS with certificates made in the test.

Clients build frames with ``cbor2`` alone (SPEC 8), and the ``nyxplug serve`` client
below is ``ssl`` + ``cbor2`` + a socket, nothing of nyxplug's.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import ssl
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nyx_helpers import CONTROL, DATA, info
from plugin_helpers import write_plugin
from test_serve import Served, assert_refusal, echo, nyx_frame, read_answer
from tls_helpers import Issued, Pki

from nyxplug import FrameProtocol, FrameService, Permission
from nyxplug._errors import AccessListError, TlsSetupError
from nyxplug.serving.policy import OPEN_POLICY, PeerAccess, PeerPolicy
from nyxplug.serving.security import (
    ALPN_PROTOCOL,
    AccessList,
    LocalPolicy,
    TlsPolicy,
    TokenBucket,
    client_tls_context,
    server_tls_context,
)

DENIED = (
    r"^Peer '{peer}' may not send frame 0x{ft:02x} \({name}\) to plugin 'plugin_{pid}' "
    r"\(id {pid}\): its access lacks {perm} - grant it in the peer's entry of the "
    r"listener's access list \(nyxplug serve --acl\)$"
)


def denied(peer: str, frame_type: int, plugin_id: int) -> str:
    name, perm = {DATA: ("DATA", "DATA_ACCESS"), CONTROL: ("CONTROL", "CONTROL")}[frame_type]
    return DENIED.format(peer=re.escape(peer), ft=frame_type, name=name, pid=plugin_id, perm=perm)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def server_cert(pki: Pki) -> Issued:
    return pki.server()


class TlsServed(Served):
    """A ``FrameService`` behind a TLS listener on loopback."""

    def __init__(self, service: FrameService, context: ssl.SSLContext) -> None:
        super().__init__(service)
        self.context = context

    async def start(self) -> int:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(self.factory, "127.0.0.1", 0, ssl=self.context)
        return int(self.server.sockets[0].getsockname()[1])


async def tls_serve(d: Any, pki: Pki, server: Issued, **options: Any) -> tuple[TlsServed, int]:
    context = server_tls_context(server.cert, server.key, client_ca=pki.ca)
    served = TlsServed(FrameService(d, **options), context)
    return served, await served.start()


async def connect(port: int, pki: Pki, client: Issued | None) -> tuple[Any, Any]:
    context = client_tls_context(
        pki.ca,
        cert=None if client is None else client.cert,
        key=None if client is None else client.key,
    )
    return await asyncio.open_connection(
        "127.0.0.1", port, ssl=context, server_hostname="localhost"
    )


async def load_echoes(d: Any, *plugin_ids: int) -> None:
    for plugin_id in plugin_ids:
        await d.load_plugin(info(plugin_id), echo)


# -- the handshake ----------------------------------------------------------------------------


def test_contexts_are_tls_1_3_only_with_alpn(pki: Pki, server_cert: Issued) -> None:
    server = server_tls_context(server_cert.cert, server_cert.key, client_ca=pki.ca)
    assert server.minimum_version is ssl.TLSVersion.TLSv1_3
    assert server.verify_mode is ssl.CERT_REQUIRED
    assert server_tls_context(server_cert.cert, server_cert.key).verify_mode is ssl.CERT_NONE
    client = client_tls_context(pki.ca)
    assert client.minimum_version is ssl.TLSVersion.TLSv1_3
    assert (client.verify_mode, client.check_hostname) == (ssl.CERT_REQUIRED, True)


def test_unusable_tls_files_are_typed_errors(pki: Pki, server_cert: Issued, tmp_path: Path) -> None:
    missing = tmp_path / "missing.pem"
    with pytest.raises(TlsSetupError, match=r"^Expected a PEM client CA certificate file, got "):
        server_tls_context(server_cert.cert, server_cert.key, client_ca=missing)
    with pytest.raises(TlsSetupError, match=r"^Expected a PEM certificate file, got `.*` from "
                       r"OpenSSL - in .*ca\.pem; check the path"):  # fmt: skip
        server_tls_context(pki.ca, None)  # a certificate without its key
    with pytest.raises(ValueError, match=r"^Expected `cert` with `key`, got a key alone"):
        client_tls_context(pki.ca, key=pki.ca)


async def test_without_a_client_certificate_the_handshake_fails(
    impl: Any, pki: Pki, server_cert: Issued
) -> None:
    d = impl.Dispatcher()
    await load_echoes(d, 7)
    acl = AccessList.parse('[[peers]]\ncn = "ingest-1"\nplugins = { "*" = ["DATA_ACCESS"] }')
    served, port = await tls_serve(d, pki, server_cert, policy=TlsPolicy(acl))
    with pytest.raises((ssl.SSLError, ConnectionError)) as failed:
        reader, writer = await connect(port, pki, None)
        try:
            # TLS 1.3: the client has finished its side; the server's alert comes next.
            writer.write(nyx_frame(DATA, 7, b"hello"))
            await writer.drain()
            assert await reader.read() == b"", "the server must not answer"
            raise ConnectionError("closed without an alert")
        finally:
            writer.close()
    if isinstance(failed.value, ssl.SSLError):
        assert "CERTIFICATE_REQUIRED" in str(failed.value), failed.value
    await served.close()
    stats = served.service.stats()
    assert (stats.connections, stats.frames, stats.refused_connections) == (0, 0, 0)
    assert d.dispatch_stats().frames_dispatched == 0
    await d.aclose()


async def test_a_tls_1_2_client_is_refused(impl: Any, pki: Pki, server_cert: Issued) -> None:
    d = impl.Dispatcher()
    served, port = await tls_serve(d, pki, server_cert, policy=TlsPolicy())
    client = pki.client("old-client")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(pki.ca)
    context.load_cert_chain(client.cert, client.key)
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    with pytest.raises((ssl.SSLError, ConnectionError)) as failed:  # the alert, or a reset
        await asyncio.open_connection("127.0.0.1", port, ssl=context, server_hostname="localhost")
    if isinstance(failed.value, ssl.SSLError):
        assert re.search(r"(?i)protocol.version|unsupported.protocol", str(failed.value))
    await served.close()
    assert served.service.stats().connections == 0
    await d.aclose()


async def test_a_plaintext_connection_to_a_tls_policy_is_refused_and_counted(impl: Any) -> None:
    d = impl.Dispatcher()
    served = Served(FrameService(d, policy=TlsPolicy()))
    port = await served.start()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(nyx_frame(DATA, 7))
    try:
        assert await reader.read() == b""
    except ConnectionResetError:
        pass  # the abort may reach us as a reset
    writer.close()
    await served.close()
    stats = served.service.stats()
    assert (stats.refused_connections, stats.connections, stats.frames) == (1, 0, 0)
    await d.aclose()


# -- the access list --------------------------------------------------------------------------


async def exchange(port: int, pki: Pki, client: Issued, frames: list[bytes]) -> list[Any]:
    reader, writer = await connect(port, pki, client)
    ssl_object = writer.get_extra_info("ssl_object")
    assert (ssl_object.version(), ssl_object.selected_alpn_protocol()) == ("TLSv1.3", "nyx/1")
    writer.write(b"".join(frames))  # one answer each here (TLS has no half-close in asyncio)
    answers = [await read_answer(reader) for _ in frames]
    writer.close()
    await writer.wait_closed()
    return answers


async def test_a_certificate_outside_the_acl_gets_permission_denied_for_every_frame(
    impl: Any, pki: Pki, server_cert: Issued
) -> None:
    d = impl.Dispatcher()
    await load_echoes(d, 7)
    acl = AccessList.parse('[[peers]]\ncn = "ingest-1"\nplugins = { "*" = ["DATA_ACCESS"] }')
    served, port = await tls_serve(d, pki, server_cert, policy=TlsPolicy(acl))
    stranger = pki.client("stranger")
    frames = [nyx_frame(DATA, 7, b"a"), nyx_frame(CONTROL, 7, b"b"), nyx_frame(DATA, 8, b"c")]
    answers = await exchange(port, pki, stranger, frames)
    assert len(answers) == 3
    assert_refusal(answers[0], 0, 7, "PermissionDenied", denied("stranger", DATA, 7))
    assert_refusal(answers[1], 1, 7, "PermissionDenied", denied("stranger", CONTROL, 7))
    # plugin 8 is not registered: the peer learns nothing about it beyond "denied"
    assert_refusal(
        answers[2], 2, 8, "PermissionDenied",
        denied("stranger", DATA, 8).replace("'plugin_8' \\(id 8\\)", "8"),
    )  # fmt: skip
    await served.close()
    stats = served.service.stats()
    assert (stats.frames, stats.refused, stats.denied, stats.dispatched) == (3, 3, 3, 0)
    assert served.protocols[0].peer == "stranger"
    assert d.dispatch_stats().frames_dispatched == 0
    await d.aclose()


async def test_a_certificate_in_the_acl_passes_only_for_its_plugins_and_frame_types(
    impl: Any, pki: Pki, server_cert: Issued
) -> None:
    d = impl.Dispatcher()
    await load_echoes(d, 7, 8)
    by_cn, by_sha256, by_spki = pki.client("by-cn"), pki.client("by-sha"), pki.client("by-spki")
    fingerprint = ":".join(f"{b:02X}" for b in bytes.fromhex(by_sha256.names.sha256))
    acl = AccessList.parse(
        f"""
        [[peers]]
        cn = "by-cn"
        plugins = {{ plugin_7 = ["DATA_ACCESS"] }}

        [[peers]]
        sha256 = "{fingerprint}"
        plugins = {{ "8" = ["CONTROL"] }}

        [[peers]]
        spki_sha256 = "{by_spki.names.spki_sha256}"
        plugins = {{ "*" = ["DATA_ACCESS"], plugin_8 = ["CONTROL"] }}
        """
    )
    served, port = await tls_serve(d, pki, server_cert, policy=TlsPolicy(acl, registry=d.registry))
    frames = [
        nyx_frame(DATA, 7, b"d7"),
        nyx_frame(CONTROL, 7, b"c7"),
        nyx_frame(DATA, 8, b"d8"),
        nyx_frame(CONTROL, 8, b"c8"),
    ]
    outcomes = {}
    for client in (by_cn, by_sha256, by_spki):
        answers = await exchange(port, pki, client, frames)
        outcomes[client.names.cn] = [
            answer["payload"]
            if answer["frame_type"] != 0x54
            else cbor2.loads(answer["payload"])["error"]
            for answer in answers
        ]
        for answer in answers:
            if answer["frame_type"] == 0x54:
                body = cbor2.loads(answer["payload"])
                ft = [DATA, CONTROL][body["seq"] % 2]
                pid = 7 + body["seq"] // 2
                assert re.match(denied(str(client.names.cn), ft, pid), body["message"])
    no = "PermissionDenied"
    assert outcomes == {
        "by-cn": [b"D7", no, no, no],
        "by-sha": [no, no, no, b"C8"],
        "by-spki": [b"D7", no, b"D8", b"C8"],
    }
    await served.close()
    stats = served.service.stats()
    assert (stats.frames, stats.dispatched, stats.denied, stats.refused) == (12, 5, 7, 7)
    assert sorted(p.peer or "" for p in served.protocols) == ["by-cn", "by-sha", "by-spki"]
    await d.aclose()


def test_the_acl_file_is_checked_strictly(tmp_path: Path) -> None:
    cases = {
        '[[peers]]\ncn = "a"\nplugns = 3': (
            "peers[0].plugns", r"Unknown key `plugns` \(did you mean `plugins`\?\)"
        ),
        '[[peers]]\ncn = "a"\nsha256 = "' + "ab" * 32 + '"': (
            "peers[0].sha256",
            "Expected exactly one of `cn`, `sha256`, `spki_sha256` to name the peer, got "
            "`cn` and `sha256`",
        ),
        "[[peers]]\nrate = 5": (
            "peers[0].cn",
            "Expected exactly one of `cn`, `sha256`, `spki_sha256` to name the peer, got none",
        ),
        '[[peers]]\nsha256 = "12:34"': (
            "peers[0].sha256",
            r"Expected a SHA-256 certificate fingerprint \(64 hex digits, colons allowed\), "
            "got `12:34`",
        ),
        '[[peers]]\nspki_sha256 = "bm90IGEgcGlu"': (
            "peers[0].spki_sha256",
            r"Expected the base64 SHA-256 of the certificate's public key \(44 characters\), "
            "got `bm90IGEgcGlu`",
        ),
        '[[peers]]\ncn = "a"\nplugins = { echo = ["DATA"] }': (
            "peers[0].plugins.echo[0]",
            "Expected one of `HANDSHAKE`, `DATA_ACCESS`, `CONTROL`, `ERROR_REPORTING`, got "
            "`DATA`",
        ),
        '[[peers]]\ncn = "a"\nplugins = { "Echo!" = ["CONTROL"] }': (
            'peers[0].plugins."Echo!"',
            r'Expected a plugin name, a plugin id in 0\.\.4294967295 or "\*", got `Echo!`',
        ),
        '[[peers]]\ncn = "a"\nrate = 0': ("peers[0].rate", r"Expected `float` > 0\.0, got `0`"),
        '[[peers]]\ncn = "a"\nburst = 5': (
            "peers[0].burst", "Expected `rate` beside `burst`, got `burst` alone"
        ),
        '[[peers]]\ncn = "a"\n[[peers]]\ncn = "a"': (
            "peers[1].cn", r"Expected each peer once, got `a` again \(first in peers\[0\]\)"
        ),
        "[[peers]\n": ("$", "Invalid TOML: .*"),
    }  # fmt: skip
    for text, (key, problem) in cases.items():
        with pytest.raises(AccessListError) as raised:
            AccessList.parse(text, source="acl.toml")
        assert (raised.value.key, raised.value.source) == (key, "acl.toml"), text
        assert re.fullmatch(problem, raised.value.problem), (text, raised.value.problem)
    with pytest.raises(
        AccessListError, match=r"^Invalid access list .*nowhere\.toml: Expected an "
    ):
        AccessList.load(tmp_path / "nowhere.toml")
    acl_file = tmp_path / "acl.toml"
    acl_file.write_text(
        '[[peers]]\ncn = "a"\nrate = 10\nburst = 2\nplugins = { "3" = ["CONTROL"] }'
    )
    acl = AccessList.load(acl_file)
    (rule,) = acl.rules
    assert (rule.key, rule.rate, rule.burst) == (("cn", "a"), 10.0, 2)
    assert rule.by_id == {3: Permission.CONTROL} and not acl.names_plugins
    with pytest.raises(ValueError, match=r"^Expected a `registry` to resolve the plugin names"):
        TlsPolicy(AccessList.parse('[[peers]]\ncn = "a"\nplugins = { echo = ["CONTROL"] }'))


# -- the rate limit ---------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_token_bucket_holds_its_rate_and_burst() -> None:
    clock = FakeClock()
    bucket = TokenBucket(128, 10, clock=clock)
    assert bucket.take(25) == 10  # the burst, at once
    assert bucket.take(1) == 0
    passed = 10
    for _ in range(1280):  # 10 s in steps of 1/128 s (exact in binary), asking for 7 each
        clock.now += 1 / 128
        passed += bucket.take(7)
    assert passed == 10 + 128 * 10  # burst + rate x time, exactly
    clock.now += 60
    assert bucket.take(10_000) == 10  # an idle minute saves up only the burst
    assert TokenBucket(2.5, clock=clock).burst == 3  # default: one second of frames
    clock.now -= 5  # a clock that steps back grants nothing extra
    assert TokenBucket(1, 1, clock=clock).take(5) == 1
    for bad in (0, -1, float("inf"), float("nan")):
        with pytest.raises(ValueError, match=r"^Expected `rate` > 0 frames/s, got "):
            TokenBucket(bad)
    with pytest.raises(ValueError, match=r"^Expected `burst` to be an int >= 1, got 0$"):
        TokenBucket(1, 0)


@settings(max_examples=300)
@given(
    rate=st.floats(0.5, 1e6),
    burst=st.integers(1, 10_000),
    steps=st.lists(st.tuples(st.floats(0, 2), st.integers(0, 20_000)), max_size=60),
)
def test_no_span_ever_passes_more_than_burst_plus_rate_times_its_length(
    rate: float, burst: int, steps: list[tuple[float, int]]
) -> None:
    """Whatever the timing of the asks: from a full bucket, over any suffix of the run, at
    most ``burst + rate * span`` frames pass (float rounding aside)."""
    clock = FakeClock()
    bucket = TokenBucket(rate, burst, clock=clock)
    history: list[tuple[float, int]] = []
    for dt, n in steps:
        clock.now += dt
        granted = bucket.take(n)
        assert 0 <= granted <= n
        history.append((clock.now, granted))
    for start in range(len(history)):
        begun = history[start - 1][0] if start else 0.0
        passed = sum(granted for _, granted in history[start:])
        span = history[-1][0] - begun
        assert passed <= burst + rate * span + 1e-6 * (1 + rate * span), (start, passed)


class Watched:
    """A real policy whose accesses report every ``take`` to the test (what was asked, what
    was granted), so the test can await the moment the listener is held back."""

    def __init__(self, policy: PeerPolicy) -> None:
        self.policy = policy
        self.takes: asyncio.Queue[tuple[int, int]] = asyncio.Queue()

    def admit(self, transport: asyncio.BaseTransport) -> PeerAccess | None:
        access = self.policy.admit(transport)
        return None if access is None else _WatchedAccess(access, self.takes)

    async def granted(self, total: int, so_far: int) -> int:
        """Wait until ``total`` frames were granted in all, then for a refusal (the
        listener is now waiting for tokens); the new total."""
        while so_far < total:
            so_far += (await self.takes.get())[1]
        assert so_far == total
        _, granted = await self.takes.get()
        assert granted == 0, "granted more than the rate allows"
        return so_far


class _WatchedAccess:
    def __init__(self, access: PeerAccess, takes: asyncio.Queue[tuple[int, int]]) -> None:
        self.identity = access.identity
        self._access = access
        self._takes = takes

    def permissions(self, plugin_id: int) -> Permission:
        return self._access.permissions(plugin_id)

    def take(self, n: int) -> int:
        granted = self._access.take(n)
        self._takes.put_nowait((n, granted))
        return granted


async def test_the_rate_limit_pauses_reading_and_holds_frames_per_second(impl: Any) -> None:
    d = impl.Dispatcher()
    seen: list[bytes] = []
    await d.load_plugin(info(7), lambda message: seen.append(message.payload), capacity=1000)
    clock = FakeClock()
    watched = Watched(LocalPolicy(rate=40, burst=10, clock=clock))
    served = Served(FrameService(d, policy=watched))
    port = await served.start()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"".join(nyx_frame(DATA, 7, b"%d" % i) for i in range(50)))
    await writer.drain()
    total = await watched.granted(10, 0)  # the burst; then held back
    protocol = served.protocols[0]
    assert not protocol.reading
    stats = served.service.stats()
    assert (stats.dispatched, stats.waiting, stats.throttled) == (10, 40, 0)
    clock.now += 0.25  # 10 more tokens (times a float holds exactly)
    total = await watched.granted(20, total)
    clock.now += 1.0  # idle long enough for 40, but only the burst is saved up
    total = await watched.granted(30, total)
    assert served.service.stats().dispatched == 30
    clock.now += 0.25
    total = await watched.granted(40, total)
    clock.now += 0.25  # the last 10: 50 frames in 1.75 s = burst 10 + 40/s x 1 s of use
    while total < 50:
        total += (await watched.takes.get())[1]
    writer.write_eof()
    assert await reader.read() == b""
    await d.wait_idle()
    assert seen == [b"%d" % i for i in range(50)]  # all of them, in order: delayed, not lost
    writer.close()
    await served.close()
    stats = served.service.stats()
    assert (stats.frames, stats.dispatched, stats.throttled, stats.abandoned) == (50, 50, 40, 0)
    await d.aclose()


async def test_frames_still_waiting_for_the_rate_when_a_drain_times_out_are_abandoned(
    impl: Any,
) -> None:
    """A drain that runs out of time aborts the connection: the frames still waiting for
    tokens were never dispatched, and are counted as abandoned."""
    d = impl.Dispatcher()
    await d.load_plugin(info(7), lambda message: None)
    watched = Watched(LocalPolicy(rate=1, burst=1, clock=FakeClock()))
    served = Served(FrameService(d, policy=watched))
    port = await served.start()
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"".join(nyx_frame(DATA, 7) for _ in range(5)))
    await writer.drain()
    await watched.granted(1, 0)
    assert served.service.stats().waiting == 4
    assert served.server is not None
    served.server.close()
    await served.service.drain(timeout=0)
    stats = served.service.stats()
    assert (stats.frames, stats.dispatched, stats.abandoned, stats.waiting) == (5, 1, 4, 0)
    writer.close()
    await served.server.wait_closed()
    await d.aclose()


class Failing:
    def admit(self, transport: asyncio.BaseTransport) -> PeerAccess | None:
        raise RuntimeError("policy bug")


async def test_a_policy_that_fails_refuses_the_connection_and_logs_it(
    impl: Any, caplog: pytest.LogCaptureFixture
) -> None:
    d = impl.Dispatcher()
    served = Served(FrameService(d, policy=Failing()))
    port = await served.start()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(nyx_frame(DATA, 7))
    try:
        assert await reader.read() == b""
    except ConnectionResetError:
        pass
    writer.close()
    await served.close()
    stats = served.service.stats()
    assert (stats.refused_connections, stats.connections, stats.frames) == (1, 0, 0)
    assert "the listener's policy failed on a new connection; refusing it" in caplog.text
    await d.aclose()


async def test_peers_of_one_identity_share_a_bucket_and_open_access_is_unlimited(
    impl: Any,
) -> None:
    clock = FakeClock()
    policy = LocalPolicy(rate=10, burst=4, clock=clock)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(asyncio.Protocol, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    transports = [
        (await loop.create_connection(asyncio.Protocol, "127.0.0.1", port))[0] for _ in range(2)
    ]
    first, second = (policy.admit(t) for t in transports)
    assert first is not None and second is not None
    assert (first.identity, second.identity) == ("loopback", "loopback")
    assert (first.take(3), second.take(3)) == (3, 1)  # one peer, one bucket of 4
    assert first.permissions(7) == Permission.HANDSHAKE | Permission.DATA_ACCESS | \
        Permission.CONTROL | Permission.ERROR_REPORTING  # fmt: skip
    assert TlsPolicy().admit(transports[0]) is None  # no TLS: refused
    assert OPEN_POLICY.admit(transports[0]) is not None
    open_access = OPEN_POLICY.admit(transports[0])
    assert open_access is not None and open_access.take(10**9) == 10**9
    for transport in transports:
        transport.close()
    server.close()
    await server.wait_closed()


# -- nyxplug serve over TLS, a real subprocess ------------------------------------------------

REPLIER = """
from nyxplug.plugins import Plugin

class Entry(Plugin):
    async def handle(self, message):
        return b"re:" + message.payload
"""


def _stdlib_client(pki: Pki, client: Issued | None, where: int | Path) -> ssl.SSLSocket:
    """A TLS client from the standard library alone, to a port or a Unix socket."""
    context = ssl.create_default_context(cafile=str(pki.ca))
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    if client is not None:
        context.load_cert_chain(client.cert, client.key)
    if isinstance(where, Path):
        raw = socket.socket(socket.AF_UNIX)
        raw.settimeout(30)
        raw.connect(str(where))
    else:
        raw = socket.create_connection(("127.0.0.1", where), timeout=30)
    return context.wrap_socket(raw, server_hostname="localhost")


def _read_answer(sock: ssl.SSLSocket) -> dict[str, Any]:
    """The next framed answer, read off the socket itself (a ``makefile`` would keep the
    socket open after ``close()``, and the server's TLS shutdown waiting for it)."""

    def exactly(n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = sock.recv(n - len(data))
            assert chunk, "the server closed the connection early"
            data += chunk
        return data

    answer = cbor2.loads(exactly(struct.unpack(">I", exactly(4))[0]))
    assert isinstance(answer, dict)
    return answer


def test_nyxplug_serve_over_mutual_tls_with_an_acl(tmp_path: Path, pki: Pki,
                                                   server_cert: Issued) -> None:  # fmt: skip
    write_plugin(tmp_path / "plugins", "replier", 7, REPLIER)
    acl = tmp_path / "acl.toml"
    acl.write_text(
        '[[peers]]\ncn = "ingest-1"\nrate = 100000\nplugins = { replier = ["DATA_ACCESS"] }\n'
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("NYXPLUG_")}
    env.update(HOME=str(tmp_path / "home"), NYXPLUG_ENTRY_POINTS="0")
    if "NYXPLUG_REQUIRE_EXTENSIONS" in os.environ:
        env["NYXPLUG_REQUIRE_EXTENSIONS"] = os.environ["NYXPLUG_REQUIRE_EXTENSIONS"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "nyxplug", "serve", "--listen", "127.0.0.1:0", "--codec", "nyx",
         "--tls-cert", str(server_cert.cert), "--tls-key", str(server_cert.key),
         "--tls-client-ca", str(pki.ca), "--acl", str(acl), "--rate", "5000",
         "--unix", str(tmp_path / "serve.sock"),
         "--plugin-dir", str(tmp_path / "plugins"), "--state-dir", str(tmp_path / "state"),
         "--allow-unsigned"],
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
            lines.append(line.strip())
            found = re.match(
                r"^listening on 127\.0\.0\.1:(\d+) \(codec nyx, TLS 1\.3, client certificates "
                r"required\)$",
                line.strip(),
            )
            port = int(found.group(1)) if found else None
        assert f"access list {acl}: 1 peers" in lines
        assert "rate limit: 5000 frames/s per peer" in lines
        ingest = _stdlib_client(pki, pki.client("ingest-1"), port)
        assert ingest.selected_alpn_protocol() is None  # it offered none; nyx/1 is optional
        ingest.sendall(nyx_frame(DATA, 7, b"one") + nyx_frame(CONTROL, 7, b"two"))
        assert _read_answer(ingest)["payload"] == b"re:one"
        refused = denied("ingest-1", CONTROL, 7).replace("plugin_7", "replier")
        assert_refusal(_read_answer(ingest), 1, 7, "PermissionDenied", refused)
        # the Unix socket speaks TLS too, under the same access list
        assert proc.stdout.readline().strip() == (
            f"listening on unix:{tmp_path / 'serve.sock'} (codec nyx, TLS 1.3, client "
            "certificates required)"
        )
        stranger = _stdlib_client(pki, pki.client("stranger"), tmp_path / "serve.sock")
        stranger.sendall(nyx_frame(DATA, 7, b"three"))
        assert_refusal(_read_answer(stranger), 0, 7, "PermissionDenied",
                       denied("stranger", DATA, 7).replace("plugin_7", "replier"))  # fmt: skip
        with pytest.raises((ssl.SSLError, ConnectionError)):
            with _stdlib_client(pki, None, port) as anonymous:
                anonymous.sendall(nyx_frame(DATA, 7, b"four"))
                assert anonymous.recv(1) == b""
                raise ConnectionError("closed without an alert")
        proc.send_signal(signal.SIGTERM)
        for sock in (ingest, stranger):
            assert sock.recv(1) == b""  # closed by the drain
            sock.close()
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert (proc.returncode, err) == (0, ""), err
    assert (
        "served 2 connections: 3 frames, 1 dispatched, 2 refused, 0 undecodable, 1 replies, "
        "0 handler errors; 2 denied to their peer, 0 throttled, 0 connections refused" in out
    ), out


@pytest.mark.parametrize(
    ("flags", "problem"),
    [
        (["--tls-key", "k.pem"], r"--tls-key needs --tls-cert \(the server's certificate\)"),
        (["--acl", "acl.toml"], r"--acl acl\.toml names peers by their client certificates"),
        (["--tls-cert", "nope.pem"], r"Expected a PEM certificate file, got `No such file"),
        (["--burst", "5"], r"--burst needs --rate"),
    ],
)
def test_nyxplug_serve_refuses_inconsistent_security_flags(
    tmp_path: Path, flags: list[str], problem: str
) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "nyxplug", "serve", "--listen", "127.0.0.1:0",
         "--state-dir", str(tmp_path), *flags],
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert re.match(rf"^nyxplug serve: {problem}", done.stderr), done.stderr


def test_alpn_protocol_is_nyx_1() -> None:
    assert ALPN_PROTOCOL == "nyx/1"


async def test_a_tls_client_offering_nyx_1_gets_it(
    impl: Any, pki: Pki, server_cert: Issued
) -> None:
    d = impl.Dispatcher()
    served, port = await tls_serve(d, pki, server_cert, policy=TlsPolicy())
    _, writer = await connect(port, pki, pki.client("alpn"))
    assert writer.get_extra_info("ssl_object").selected_alpn_protocol() == ALPN_PROTOCOL
    writer.close()
    await writer.wait_closed()
    await served.close()
    protocol: FrameProtocol = served.protocols[0]
    assert protocol.peer == "alpn"
    await d.aclose()


def test_the_access_list_in_the_readme_is_valid() -> None:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    start = readme.index("<!-- serve-acl-example -->")
    block = readme[start:].split("```toml\n", 1)[1].split("```", 1)[0]
    acl = AccessList.parse(block, source="README.md")
    assert [rule.key[0] for rule in acl.rules] == ["cn", "sha256"]
    assert acl.rules[0].by_id == {7: Permission.DATA_ACCESS | Permission.CONTROL}
    assert acl.rules[0].by_name == {"echo": Permission.DATA_ACCESS}
    assert acl.rules[1].every == Permission.HANDSHAKE | Permission.DATA_ACCESS


@pytest.mark.parametrize("mode", ["plain", "plain+policy", "tls", "tls+acl"])
async def test_the_tls_benchmark_runs(mode: str, pki: Pki) -> None:
    """benchmarks/serve_tls.py is a script, not a pytest benchmark: keep it from rotting."""
    from benchmarks.serve_tls import measure

    assert await measure(300, mode, pki) > 0
