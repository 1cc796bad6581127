"""``nyxplug serve``: the host's plugins behind a socket (SPEC 8's interop listener).

Starts the plugins of the host configuration (as ``nyxplug run``), then listens on TCP
(``--listen HOST:PORT``) and/or a Unix socket (``--unix PATH``) with
``nyxplug._serve.FrameService``: one framed Nyx ``PluginFrame`` per message, replies and
refusals in ``seq`` order. SIGTERM or SIGINT drains: stop accepting, dispatch and answer
what was read, unload the plugins, exit 0.

``--codec nyx`` is the only codec for now: nyxplug's own session protocol (credits,
acknowledgements, batches) is a later step.

Security (``nyxplug.serving.security``): ``--tls-cert``/``--tls-key`` serve TLS 1.3 on every
listener; ``--tls-client-ca`` requires client certificates that CA signed (mutual TLS),
and ``--acl FILE`` maps them to the plugins and frame types each may send; ``--rate N``
limits every peer to N frames/s. Plaintext is refused off loopback unless
``--allow-remote-plaintext`` says the network is trusted.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import math
import signal
import ssl
import sys
from typing import TYPE_CHECKING, Any

from . import _host
from ._common import Problem, status_line

if TYPE_CHECKING:
    from ..plugins import PluginManager
    from ..serving.security import AccessList
    from ._host import Commands

__all__ = ("COMMANDS", "add_commands", "parse_address", "run")

COMMANDS = ("serve",)


def add_commands(commands: Commands, host: argparse.ArgumentParser) -> None:
    serve = commands.add_parser(
        "serve",
        parents=[host],
        help="start the host's plugins and take frames from TCP or Unix-socket peers",
        description=(
            "Start every enabled plugin (as `nyxplug run`), then serve frames until SIGTERM "
            "or Ctrl-C: every message is a 4-byte big-endian length and one CBOR Nyx "
            "PluginFrame (SPEC 8); replies and refusals come back framed, in order. On "
            "SIGTERM/SIGINT it stops accepting, answers what it read, unloads and exits 0. "
            "Only --codec nyx exists for now: nyxplug's own session protocol (credits, "
            "acknowledgements, batches) is a later step. With --tls-cert every listener "
            "speaks TLS 1.3; --tls-client-ca requires client certificates and --acl maps "
            "them to the plugins and frame types each may send; --rate limits each peer."
        ),
    )
    serve.add_argument(
        "--listen",
        metavar="HOST:PORT",
        help="TCP address to listen on (port 0: any free port, printed at start)",
    )
    serve.add_argument("--unix", metavar="PATH", help="Unix socket to listen on")
    serve.add_argument(
        "--codec",
        choices=("nyx",),
        default="nyx",
        help="wire format: nyx = one framed Nyx PluginFrame per message (SPEC 8); the "
        "default for now - nyxplug's session protocol is a later step",
    )
    serve.add_argument(
        "--allow-remote-plaintext",
        action="store_true",
        help="listen on a non-loopback address without TLS (a trusted network only)",
    )
    serve.add_argument(
        "--tls-cert",
        metavar="PEM",
        help="serve TLS 1.3 on every listener with this certificate (chain)",
    )
    serve.add_argument(
        "--tls-key",
        metavar="PEM",
        help="the private key of --tls-cert (default: the key inside the --tls-cert file)",
    )
    serve.add_argument(
        "--tls-client-ca",
        metavar="PEM",
        help="mutual TLS: require a client certificate this CA signed (no certificate, no "
        "handshake)",
    )
    serve.add_argument(
        "--acl",
        metavar="FILE",
        help="access list (TOML): which client certificates may send which frame types to "
        "which plugins, and how fast; a certificate it does not name gets PermissionDenied "
        "for every frame (needs --tls-client-ca)",
    )
    serve.add_argument(
        "--rate",
        metavar="N",
        type=_rate,
        help="at most N frames/s per peer (frames over it wait: reading pauses); an --acl "
        "entry's own rate wins",
    )
    serve.add_argument(
        "--burst",
        metavar="N",
        type=_burst,
        help="frames a peer may send at once above --rate (default: one second's worth)",
    )


def _rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a number of frames/s > 0, got {text!r}")
    return value


def _burst(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of frames >= 1, got {text!r}")
    return int(text)


def parse_address(text: str, *, allow_remote: bool) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` too) as a (host, port) pair; plaintext must stay on
    loopback unless ``allow_remote`` (or TLS protects it)."""
    host, sep, port_text = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port_text.isdigit() or int(port_text) > 65535:
        raise Problem(f"--listen {text}: expected HOST:PORT with PORT in 0..65535")
    if not allow_remote and not _loopback(host):
        raise Problem(
            f"--listen {text}: {host} is not a loopback address and frames would cross the "
            "network in plaintext - give --tls-cert and --tls-key, listen on 127.0.0.1, ::1 "
            "or a --unix socket, or pass --allow-remote-plaintext on a trusted network"
        )
    return host, int(port_text)


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def run(args: argparse.Namespace) -> int:
    return _host.run(args.command, _serve, args)


class _Security:
    """What the security flags ask for, checked before any plugin starts."""

    def __init__(self, args: argparse.Namespace) -> None:
        from .._errors import AccessListError, TlsSetupError
        from ..serving.security import AccessList, server_tls_context

        if args.tls_cert is None and (args.tls_key or args.tls_client_ca):
            given = "--tls-key" if args.tls_key else "--tls-client-ca"
            raise Problem(f"{given} needs --tls-cert (the server's certificate) to serve TLS")
        if args.acl is not None and args.tls_client_ca is None:
            raise Problem(
                f"--acl {args.acl} names peers by their client certificates - give "
                "--tls-client-ca too, so peers must show one"
            )
        self.context: ssl.SSLContext | None = None
        self.acl: AccessList | None = None
        self.rate: float | None = args.rate
        self.burst: int | None = args.burst
        self.allow_remote: bool = args.allow_remote_plaintext
        if self.burst is not None and self.rate is None:
            raise Problem("--burst needs --rate (the frames/s it is a burst above)")
        try:
            if args.tls_cert is not None:
                self.context = server_tls_context(
                    args.tls_cert, args.tls_key, client_ca=args.tls_client_ca
                )
            if args.acl is not None:
                self.acl = AccessList.load(args.acl)
        except (AccessListError, TlsSetupError) as exc:
            raise Problem(str(exc)) from None
        self.mutual = args.tls_client_ca is not None

    def policy(self, registry: Any) -> Any:
        from ..serving.security import LocalPolicy, TlsPolicy

        if self.context is None:
            if self.rate is None:
                return None  # every local (or allowed remote) peer may send everything: no checks
            return LocalPolicy(rate=self.rate, burst=self.burst, allow_remote=self.allow_remote)
        return TlsPolicy(self.acl, registry=registry, rate=self.rate, burst=self.burst)

    def describe(self) -> str:
        if self.context is None:
            return "codec nyx"
        if not self.mutual:
            return "codec nyx, TLS 1.3"
        return "codec nyx, TLS 1.3, client certificates required"

    def lines(self) -> list[str]:
        out = []
        if self.acl is not None:
            out.append(f"access list {self.acl.source}: {len(self.acl.rules)} peers")
        elif self.mutual:
            out.append("no --acl: every client certificate the CA signed may send every frame")
        if self.rate is not None:
            out.append(f"rate limit: {self.rate:g} frames/s per peer")
        return out


def _serve(args: argparse.Namespace) -> int:
    if args.listen is None and args.unix is None:
        raise Problem("give --listen HOST:PORT and/or --unix PATH to say where to listen")
    security = _Security(args)
    address = (
        parse_address(
            args.listen, allow_remote=args.allow_remote_plaintext or security.context is not None
        )
        if args.listen is not None
        else None
    )
    config = _host.host_config(args)
    where = _host.host_line(args, config)
    return asyncio.run(
        _serve_async(_host.plugin_manager(config), address, args.unix, where, security)
    )


async def _serve_async(
    manager: PluginManager,
    address: tuple[str, int] | None,
    unix: str | None,
    where: str,
    security: _Security,
) -> int:
    from .._serve import FrameService

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    catalog = await manager.start()
    print(where)
    for status in catalog:
        print(status_line(status))
    service = FrameService(manager.dispatcher, policy=security.policy(manager.dispatcher.registry))
    servers: list[asyncio.Server] = []
    context = security.context
    kind = security.describe()
    try:
        for line in security.lines():
            print(line)
        if address is not None:
            server = await loop.create_server(service.protocol, *address, ssl=context)
            servers.append(server)
            for sock in server.sockets:
                host, port = sock.getsockname()[:2]
                print(f"listening on {host}:{port} ({kind})")
        if unix is not None:
            servers.append(await loop.create_unix_server(service.protocol, unix, ssl=context))
            print(f"listening on unix:{unix} ({kind})")
        sys.stdout.flush()
        await stop.wait()
        print("draining: no new connections; answering what was read")
        sys.stdout.flush()
        for server in servers:
            server.close()
        await service.drain()
        for server in servers:
            await server.wait_closed()
    finally:
        for server in servers:
            server.close()
        await manager.aclose()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
    stats = service.stats()
    print(
        f"served {stats.connections} connections: {stats.frames} frames, "
        f"{stats.dispatched} dispatched, {stats.refused} refused, "
        f"{stats.undecodable} undecodable, {stats.replies} replies, "
        f"{stats.handler_errors} handler errors; {stats.denied} denied to their peer, "
        f"{stats.throttled} throttled, {stats.refused_connections} connections refused"
    )
    return 0
