"""``nyxplug serve``: the host's plugins behind a socket; ``nyxplug send --to``: its client.

It starts the plugins of the host configuration (as ``nyxplug run``), then listens on TCP
(``--listen HOST:PORT``) and/or a Unix socket (``--unix PATH``) with one of two codecs:
``session`` (the default), nyxplug's own session protocol
(``nyxplug.serving.SessionService``: batches, per-plugin credits, cumulative
acknowledgements, replies, GOAWAY; docs/session-protocol.md), or ``nyx``, SPEC 8's interop
listener (``nyxplug._serve.FrameService``: one framed Nyx ``PluginFrame`` per message).
SIGTERM or SIGINT drains: stop accepting, handle and answer what was read (GOAWAY for
sessions), unload the plugins, exit 0. Like ``nyxplug run --watch`` it answers the control
socket of its state dir (``nyxplug.cli.control``: ``nyxplug breaker``, ``versions``,
``rollout``, ``reload``, ``list``...), and refuses to start while another host holds it.

Security (``nyxplug.serving.security``), for both codecs: ``--tls-cert``/``--tls-key`` serve
TLS 1.3 on every listener; ``--tls-client-ca`` requires client certificates that CA signed
(mutual TLS), and ``--acl FILE`` maps them to the plugins and frame types each may send;
``--rate N`` limits every peer to N frames/s. Plaintext is refused off loopback unless
``--allow-remote-plaintext`` says the network is trusted.

``nyxplug send ID --to ADDRESS`` (``send_session``, called by ``nyxplug.cli.reload``'s
``send``) opens a session (``RemoteDispatcher``), sends the payload (or one frame per line
of stdin with ``--stdin``), prints the replies (``--request``) and the ledger, and exits 0
when every frame was acknowledged.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import logging
import math
import signal
import ssl
import sys
from typing import TYPE_CHECKING, Any

from . import _host
from ._common import Problem, status_line

if TYPE_CHECKING:
    from ..admin.options import AdminAddress
    from ..plugins import PluginManager
    from ..serving.security import AccessList
    from ._host import Commands
    from .control import ControlServer

__all__ = ("COMMANDS", "add_commands", "parse_address", "run")

COMMANDS = ("serve",)


def add_commands(commands: Commands, host: argparse.ArgumentParser) -> None:
    serve = commands.add_parser(
        "serve",
        parents=[host],
        help="start the host's plugins and take frames from TCP or Unix-socket peers",
        description=(
            "Start every enabled plugin (as `nyxplug run`), then serve frames until SIGTERM "
            "or Ctrl-C. --codec session (default): nyxplug's session protocol - batches, "
            "per-plugin credits, acknowledgements, replies (docs/session-protocol.md; "
            "`nyxplug send --to` and RemoteDispatcher speak it). --codec nyx: every message "
            "is a 4-byte big-endian length and one CBOR Nyx PluginFrame (SPEC 8); replies "
            "and refusals come back framed, in order. On SIGTERM/SIGINT it stops accepting, "
            "answers what it read (GOAWAY for sessions), unloads and exits 0. With --tls-cert "
            "every listener speaks TLS 1.3; --tls-client-ca requires client certificates and "
            "--acl maps them to the plugins and frame types each may send; --rate limits "
            "each peer."
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
        choices=("session", "nyx"),
        default="session",
        help="wire format: session = nyxplug's session protocol (default); nyx = one "
        "framed Nyx PluginFrame per message (SPEC 8's interop listener)",
    )
    serve.add_argument(
        "--credit",
        type=int,
        default=4096,
        metavar="N",
        help="session codec: initial credit per plugin and connection (default 4096)",
    )
    serve.add_argument(
        "--allow-remote-plaintext",
        action="store_true",
        help="listen on a non-loopback address without TLS (a trusted network only)",
    )
    serve.add_argument(
        "--admin",
        metavar="ADDRESS",
        help="serve the admin API (/api/v1, /openapi.json, /metrics) at a loopback HOST:PORT "
        "or unix:PATH on the host's own loop; needs nyxplug[admin] and --admin-token-file",
    )
    serve.add_argument(
        "--log-format",
        choices=("text", "json"),
        default=None,
        help="log nyxplug's events (INFO and up) to stderr, as text or one JSON object per "
        "line with plugin, plugin_id, version and frame_type fields (default: warnings only, "
        "as text)",
    )
    serve.add_argument(
        "--admin-token-file",
        metavar="FILE",
        help="file (mode 0600) holding the bearer token every admin call but /health needs",
    )
    serve.add_argument(
        "--admin-tls-cert",
        metavar="PEM",
        help="serve the admin API over TLS 1.3 with this certificate (chain); then --admin "
        "may name a non-loopback address",
    )
    serve.add_argument(
        "--admin-tls-key",
        metavar="PEM",
        help="the private key of --admin-tls-cert (default: the key inside its file)",
    )
    serve.add_argument(
        "--admin-tls-client-ca",
        metavar="PEM",
        help="admin API over mutual TLS: callers must also show a certificate this CA signed",
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


def send_session(args: argparse.Namespace, payload: bytes) -> int:
    """``nyxplug send NAME --to ADDRESS``: the frames go to a ``nyxplug serve`` session
    (NAME is then the plugin id: a session knows plugins by id)."""
    if not args.name.isdigit():
        raise Problem(f"{args.name}: with --to, give the plugin's id (a session knows ids)")
    payloads = [line.rstrip("\n").encode() for line in sys.stdin] if args.stdin else [payload]
    try:
        from ..serving.client import parse_target

        parse_target(args.to)
    except ValueError as exc:
        raise Problem(f"--to {args.to}: {exc}") from None
    return asyncio.run(_send_async(args, payloads))


async def _send_async(args: argparse.Namespace, payloads: list[bytes]) -> int:
    from .._constants import DispatchStatus
    from .._errors import DispatchError, SessionError
    from .._impl import PluginHeader
    from ..serving import RemoteDispatcher

    try:
        client = await RemoteDispatcher.connect(args.to, name="nyxplug send")
    except (OSError, SessionError) as exc:
        raise Problem(f"cannot open a session with {args.to}: {exc}") from None
    header = PluginHeader(int(args.name), args.flags, args.header_data.encode())
    frame_type = args.frame_type
    refused = False  # a frame not sent at all (the client's own checks, a session ended)
    try:
        for index, payload in enumerate(payloads):
            if args.request:
                try:
                    reply = await client.request(frame_type, header, payload)
                except DispatchError as exc:
                    print(f"{index}: error {type(exc).__name__}: {exc}")
                else:
                    print(f"{index}: reply {reply!r}")
            else:
                await client.dispatch(frame_type, header, payload)
    except DispatchError as exc:
        refused = True
        offered = ", ".join(str(plugin_id) for plugin_id in sorted(client.plugins())) or "none"
        print(f"not sent: {exc} (the server at {args.to} offers plugins: {offered})")
    except SessionError as exc:
        refused = True
        print(f"session ended: {exc}")
    finally:
        await client.aclose()
    stats = client.statistics()
    statuses = ", ".join(
        f"{DispatchStatus(s).name} {n}" for s, n in enumerate(stats.by_status) if n
    )
    print(
        f"sent {stats.sent}: acknowledged {stats.acknowledged} ({statuses or 'none'}), "
        f"lost {stats.lost}, in flight {stats.in_flight}; handler errors {stats.handler_errors}"
    )
    # 0 only when every frame was enqueued (and, with --request, handled without error).
    handled = stats.count(DispatchStatus.OK) == stats.sent == stats.acknowledged
    return 0 if handled and not refused and not stats.handler_errors else 1


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

    def describe(self, codec: str) -> str:
        if self.context is None:
            return f"codec {codec}"
        if not self.mutual:
            return f"codec {codec}, TLS 1.3"
        return f"codec {codec}, TLS 1.3, client certificates required"

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
    if args.credit < 1:
        raise Problem(f"--credit {args.credit}: expected a credit of at least 1")
    admin = _admin_options(args)
    config = _host.host_config(args)
    where = _host.host_line(args, config)
    handler = None
    if args.log_format is not None:
        from ._logs import log_to_stderr

        handler = log_to_stderr(args.log_format)
    try:
        manager = _host.plugin_manager(config)
        return asyncio.run(_serve_async(manager, address, args.unix, where, security, args, admin))
    finally:
        if handler is not None:
            logging.getLogger("nyxplug").removeHandler(handler)


def _admin_options(
    args: argparse.Namespace,
) -> tuple[AdminAddress, bytes, ssl.SSLContext | None] | None:
    """``--admin``, its token and its TLS, checked before any plugin starts."""
    from ..admin.options import AdminConfigError, parse_admin_address, read_token

    tls_flags = [
        flag
        for flag, value in (
            ("--admin-tls-cert", args.admin_tls_cert),
            ("--admin-tls-key", args.admin_tls_key),
            ("--admin-tls-client-ca", args.admin_tls_client_ca),
        )
        if value is not None
    ]
    if args.admin is None:
        given = tls_flags + ["--admin-token-file"] * (args.admin_token_file is not None)
        if given:
            raise Problem(f"{given[0]} is for the admin API: give --admin ADDRESS too")
        return None
    if tls_flags and args.admin_tls_cert is None:
        raise Problem(f"{tls_flags[0]} needs --admin-tls-cert PEM (the admin API's certificate)")
    if args.admin_token_file is None:
        raise Problem(
            "--admin needs --admin-token-file FILE: every admin call but /health must carry "
            "its bearer token"
        )
    import importlib.util

    missing = [
        name
        for name in ("starlette", "uvicorn", "httptools", "prometheus_client")
        if importlib.util.find_spec(name) is None
    ]
    if missing:
        raise Problem(
            f"--admin needs the admin extra ({', '.join(missing)} missing) - "
            "pip install 'nyxplug[admin]'"
        )
    context = None
    if args.admin_tls_cert is not None:
        from ..serving.security import TlsSetupError, server_tls_context

        try:
            context = server_tls_context(
                args.admin_tls_cert, args.admin_tls_key, client_ca=args.admin_tls_client_ca
            )
        except (TlsSetupError, OSError, ValueError) as exc:
            raise Problem(f"--admin-tls-cert: {exc}") from None
        context.set_alpn_protocols(["http/1.1"])  # HTTP, not the frame listeners' nyx/1
    try:
        address = parse_admin_address(args.admin, tls=context is not None)
        return address, read_token(args.admin_token_file), context
    except AdminConfigError as exc:
        raise Problem(str(exc)) from None


async def _serve_async(
    manager: PluginManager,
    address: tuple[str, int] | None,
    unix: str | None,
    where: str,
    security: _Security,
    args: argparse.Namespace,
    admin: tuple[AdminAddress, bytes, ssl.SSLContext | None] | None = None,
) -> int:
    from .control import ControlServer, HostRunning, socket_path

    control = None
    if manager.state_dir is not None:
        control = ControlServer(manager, socket_path(manager.state_dir))
        try:  # before any plugin loads: a second host must not run on_load twice
            control.claim()
        except HostRunning:
            raise
        except Problem as problem:  # the socket is an extra here: serve frames without it
            print(
                f"nyxplug serve: no control socket ({problem}) - nyxplug breaker, versions, "
                "rollout, reload and list will not reach this host",
                file=sys.stderr,
            )
            control = None
    try:
        return await _serve_claimed(manager, address, unix, where, security, args, admin, control)
    finally:
        if control is not None:
            await control.aclose()


async def _serve_claimed(
    manager: PluginManager,
    address: tuple[str, int] | None,
    unix: str | None,
    where: str,
    security: _Security,
    args: argparse.Namespace,
    admin: tuple[AdminAddress, bytes, ssl.SSLContext | None] | None,
    control: ControlServer | None,
) -> int:
    from .._serve import FrameService
    from ..serving import SessionService

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    catalog = await manager.start()
    print(where)
    for status in catalog:
        print(status_line(status))
    policy = security.policy(manager.dispatcher.registry)
    service: FrameService | SessionService
    if args.codec == "session":
        if policy is None:
            service = SessionService(manager.dispatcher, credit=args.credit)
        else:
            service = SessionService(manager.dispatcher, credit=args.credit, policy=policy)
    else:
        service = FrameService(manager.dispatcher, policy=policy)
    servers: list[asyncio.Server] = []
    context = security.context
    kind = security.describe(args.codec)
    admin_server = None
    try:
        for line in security.lines():
            print(line)
        if control is not None:
            from ._common import relative_path

            await control.start()
            print(f"control socket {relative_path(control.path)}")
        if admin is not None:
            from ..admin import AdminServer, build_app

            admin_address, admin_token, admin_tls = admin
            app = build_app(manager, admin_token, remote=admin_tls is not None)
            admin_server = AdminServer(app, admin_address, ssl=admin_tls)
            scheme = "https" if admin_tls is not None else "http"
            print(
                f"admin API on {await admin_server.start()} ({scheme}: /api/v1, /openapi.json, "
                "/metrics)"
            )
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
        if admin_server is not None:
            await admin_server.aclose()
        if control is not None:  # no control request may act on plugins being unloaded
            await control.aclose()
        await manager.aclose()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
    if isinstance(service, SessionService):
        session = service.stats()
        print(
            f"served {session.connections} sessions: {session.frames} frames, "
            f"{session.by_status[0]} dispatched, {session.decided - session.by_status[0]} "
            f"refused, {session.discarded} discarded, {session.replies} replies, "
            f"{session.handler_errors} handler errors, "
            f"{session.credit_violations} credit violations, "
            f"{session.refused_peers} connections refused"
        )
        return 0
    stats = service.stats()
    print(
        f"served {stats.connections} connections: {stats.frames} frames, "
        f"{stats.dispatched} dispatched, {stats.refused} refused, "
        f"{stats.undecodable} undecodable, {stats.replies} replies, "
        f"{stats.handler_errors} handler errors; {stats.denied} denied to their peer, "
        f"{stats.throttled} throttled, {stats.refused_connections} connections refused"
    )
    return 0
