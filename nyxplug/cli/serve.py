"""``nyxplug serve``: the host's plugins behind a socket (SPEC 8's interop listener).

Starts the plugins of the host configuration (as ``nyxplug run``), then listens on TCP
(``--listen HOST:PORT``) and/or a Unix socket (``--unix PATH``) with
``nyxplug._serve.FrameService``: one framed Nyx ``PluginFrame`` per message, replies and
refusals in ``seq`` order. SIGTERM or SIGINT drains: stop accepting, dispatch and answer
what was read, unload the plugins, exit 0.

``--codec nyx`` is the only codec for now: nyxplug's own session protocol (credits,
acknowledgements, batches) and TLS are later steps, so plaintext is refused off
loopback unless ``--allow-remote-plaintext`` says the network is trusted.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import logging
import signal
import sys
from typing import TYPE_CHECKING

from . import _host
from ._common import Problem, status_line

if TYPE_CHECKING:
    from ..admin.options import AdminAddress
    from ..plugins import PluginManager
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
            "acknowledgements, batches) and TLS are later steps."
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
        help="listen on a non-loopback address without TLS (a trusted network only; TLS "
        "is a later step)",
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


def parse_address(text: str, *, allow_remote: bool) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` too) as a (host, port) pair; plaintext must stay on
    loopback unless ``allow_remote``."""
    host, sep, port_text = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port_text.isdigit() or int(port_text) > 65535:
        raise Problem(f"--listen {text}: expected HOST:PORT with PORT in 0..65535")
    if not allow_remote and not _loopback(host):
        raise Problem(
            f"--listen {text}: {host} is not a loopback address and frames would cross the "
            "network in plaintext (TLS is a later step) - listen on 127.0.0.1, ::1 or a "
            "--unix socket, or pass --allow-remote-plaintext on a trusted network"
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


def _serve(args: argparse.Namespace) -> int:
    if args.listen is None and args.unix is None:
        raise Problem("give --listen HOST:PORT and/or --unix PATH to say where to listen")
    address = (
        parse_address(args.listen, allow_remote=args.allow_remote_plaintext)
        if args.listen is not None
        else None
    )
    admin = _admin_options(args)
    config = _host.host_config(args)
    where = _host.host_line(args, config)
    handler = None
    if args.log_format is not None:
        from ._logs import log_to_stderr

        handler = log_to_stderr(args.log_format)
    try:
        manager = _host.plugin_manager(config)
        return asyncio.run(_serve_async(manager, address, args.unix, where, admin))
    finally:
        if handler is not None:
            logging.getLogger("nyxplug").removeHandler(handler)


def _admin_options(args: argparse.Namespace) -> tuple[AdminAddress, bytes] | None:
    """``--admin`` and its token, checked before any plugin starts."""
    from ..admin.options import AdminConfigError, parse_admin_address, read_token

    if args.admin is None:
        if args.admin_token_file is not None:
            raise Problem("--admin-token-file is for the admin API: give --admin ADDRESS too")
        return None
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
    try:
        return parse_admin_address(args.admin), read_token(args.admin_token_file)
    except AdminConfigError as exc:
        raise Problem(str(exc)) from None


async def _serve_async(
    manager: PluginManager,
    address: tuple[str, int] | None,
    unix: str | None,
    where: str,
    admin: tuple[AdminAddress, bytes] | None = None,
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
    service = FrameService(manager.dispatcher)
    servers: list[asyncio.Server] = []
    admin_server = None
    try:
        if admin is not None:
            from ..admin import AdminServer, build_app

            admin_server = AdminServer(build_app(manager, admin[1]), admin[0])
            print(f"admin API on {await admin_server.start()} (/api/v1, /openapi.json, /metrics)")
        if address is not None:
            server = await loop.create_server(service.protocol, *address)
            servers.append(server)
            for sock in server.sockets:
                host, port = sock.getsockname()[:2]
                print(f"listening on {host}:{port} (codec nyx)")
        if unix is not None:
            servers.append(await loop.create_unix_server(service.protocol, unix))
            print(f"listening on unix:{unix} (codec nyx)")
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
        await manager.aclose()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
    stats = service.stats()
    print(
        f"served {stats.connections} connections: {stats.frames} frames, "
        f"{stats.dispatched} dispatched, {stats.refused} refused, "
        f"{stats.undecodable} undecodable, {stats.replies} replies, "
        f"{stats.handler_errors} handler errors"
    )
    return 0
