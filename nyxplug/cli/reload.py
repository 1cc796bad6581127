"""``nyxplug run --watch`` (a host that stays up), ``nyxplug reload`` and ``nyxplug send``.

The watching host starts the plugins, reloads them when their folders change
(``PluginWatcher``), answers ``nyxplug reload`` / ``nyxplug list`` on its control
socket (``nyxplug.cli.control``), prints one line per reload outcome, and on
SIGINT/SIGTERM unloads everything (draining) and exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from . import _host
from ._common import Problem, status_line

if TYPE_CHECKING:  # imported when used: `nyxplug --help` stays a cheap import
    from ..plugins import PluginManager, ReloadStats
    from ..plugins.watch import PluginWatcher
    from .control import ControlServer, Failure

__all__ = ("COMMANDS", "add_commands", "describe", "reload_count", "run", "serve")

#: The subcommands this module adds to ``nyxplug``.
COMMANDS = ("reload", "send")
#: How long ``nyxplug reload`` waits for the host's answer: retries and lifecycle
#: timeouts (30 s per hook) can make one reload slow, never endless.
RELOAD_TIMEOUT = 300.0


def add_commands(commands: _host.Commands, host: argparse.ArgumentParser) -> None:
    """Add ``reload`` to ``nyxplug``'s subparsers; ``host`` holds the host options."""
    reload = commands.add_parser(
        "reload",
        parents=[host],
        help="ask the running host (nyxplug run --watch) to reload a plugin now",
        description=(
            "Connect to the control socket of the host running with this state dir and "
            "reload NAME from its folder: stage, verify, import, on_load, health, swap. On "
            "failure the running version keeps serving. Exit status 0 when swapped, 1 when not."
        ),
    )
    reload.add_argument("name", metavar="NAME", help="the plugin's name")
    reload.add_argument(
        "--allow-downgrade",
        action="store_true",
        help="accept a new version lower than the running one",
    )

    send = commands.add_parser(
        "send",
        parents=[host],
        help="send one frame to a plugin of the running host (nyxplug run --watch)",
        description=(
            "Dispatch one frame to NAME on the host running with this state dir, as any "
            "sender would (every check and counter applies), wait until it was handled, and "
            "print the outcome: the typed refusal, or the plugin's counters after it. Exit "
            "status 0 when handled, 1 when refused."
        ),
    )
    send.add_argument(
        "name",
        metavar="NAME",
        help="the plugin's name (its id goes in the header); with --to, the plugin's id",
    )
    send.add_argument(
        "--to",
        metavar="ADDRESS",
        help="send over nyxplug's session protocol to `nyxplug serve` at HOST:PORT or "
        "unix:PATH instead of the local host's control socket; prints the replies "
        "(--request) and the ledger: sent = acknowledged by status + lost + in flight",
    )
    send.add_argument(
        "--request", action="store_true", help="with --to: wait for each reply and print it"
    )
    send.add_argument("--stdin", action="store_true", help="with --to: one frame per line of stdin")
    send.add_argument(
        "--type",
        dest="frame_type",
        type=_frame_type,
        default=0x52,
        metavar="T",
        help="frame type: HANDSHAKE, DATA, CONTROL, ERROR or a number such as 0x5a (default: DATA)",
    )
    send.add_argument("--payload", default="", metavar="TEXT", help="the payload, as UTF-8")
    send.add_argument(
        "--payload-hex", metavar="HEX", help="the payload as hex digits (instead of --payload)"
    )
    send.add_argument(
        "--header-data", default="", metavar="TEXT", help="the header's data field, as UTF-8"
    )
    send.add_argument(
        "--flags", type=_flags, default=0, metavar="N", help="the header's flags, 0..255"
    )


def _frame_type(text: str) -> int:
    from .._constants import FrameType

    name = text.strip().upper()
    if name in FrameType.__members__:
        return int(FrameType[name])
    try:
        return int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected HANDSHAKE, DATA, CONTROL, ERROR or a number such as 0x5a, got {text!r}"
        ) from None


def _flags(text: str) -> int:
    try:
        value = int(text, 0)
    except ValueError:
        value = -1
    if not 0 <= value <= 255:
        raise argparse.ArgumentTypeError(f"expected flags in 0..255, got {text!r}")
    return value


def run(args: argparse.Namespace) -> int:
    """Run one of :data:`COMMANDS`; returns the exit status."""
    return _host.run(args.command, _send if args.command == "send" else _reload, args)


def _send(args: argparse.Namespace) -> int:
    from .._constants import frame_type_name
    from .control import Failure, SendRequest, Sent, request, socket_path

    if args.payload_hex is not None:
        if args.payload:
            raise Problem("give --payload or --payload-hex, not both")
        try:
            payload = bytes.fromhex(args.payload_hex)
        except ValueError:
            raise Problem(
                f"expected hex digits in --payload-hex, got {args.payload_hex!r}"
            ) from None
    else:
        payload = args.payload.encode()
    if args.to is not None:
        from .serve import send_session

        return send_session(args, payload)
    if args.request or args.stdin:
        raise Problem("--request and --stdin need --to ADDRESS (a `nyxplug serve` session)")
    path = socket_path(_host.host_config(args).runtime.state_dir)
    message = SendRequest(
        name=args.name, frame_type=args.frame_type, payload=payload,
        header_data=args.header_data.encode(), flags=args.flags,
    )  # fmt: skip
    reply = request(path, message, timeout=RELOAD_TIMEOUT)
    if isinstance(reply, Failure):
        kind = f"{reply.reason}: " if reply.error == "refused" else ""
        raise Problem(f"refused - {kind}{reply.message}" if kind else reply.message)
    if not isinstance(reply, Sent):
        raise Problem(f"Expected a send reply from {path}, got a {type(reply).__name__} reply")
    before, after = reply.before, reply.stats
    print(
        f"Sent frame {frame_type_name(reply.frame_type)} ({len(payload)} bytes) to "
        f"{reply.name} (id {reply.plugin_id}): handled"
    )
    if after.errors > before.errors:
        print("  its handler raised (errors +1) - the host's output has the traceback")
    # Replies (SPEC 8) do not exist yet: Sent.answer is where one will be printed.
    if reply.answer is not None:
        print(f"  reply: {reply.answer!r}")
    print(
        f"  stats: {after.messages_processed} frames, {after.errors} errors, "
        f"{after.bytes_processed} bytes, {after.permission_violations} permission and "
        f"{after.sandbox_violations} sandbox violations, queue {after.queue_depth}"
    )
    return 0


def _reload(args: argparse.Namespace) -> int:
    from .control import Failure, Reloaded, ReloadRequest, request, socket_path

    path = socket_path(_host.host_config(args).runtime.state_dir)
    message = ReloadRequest(name=args.name, allow_downgrade=args.allow_downgrade)
    reply = request(path, message, timeout=RELOAD_TIMEOUT)
    if isinstance(reply, Reloaded):
        print(describe(reply.result))
        return 0
    if isinstance(reply, Failure):
        raise Problem(_failure_text(reply))
    raise Problem(f"Expected a reload reply from {path}, got a {type(reply).__name__} reply")


def _failure_text(reply: Failure) -> str:
    if reply.error != "reload-failed":
        return str(reply.message)
    running = f" ({reply.running})" if reply.running else ""
    again = " (transient, still failing after the retries)" if reply.transient else ""
    return (
        f"reload of {reply.name} failed at {reply.step}: {reply.reason}{again} - the old "
        f"version keeps serving{running}; fix the new version and reload again"
    )


def describe(outcome: object, name: str | None = None) -> str:
    """One line for a reload outcome, a load by the watcher, or a failure (of plugin ``name``)."""
    from ..plugins import PluginLoadError, PluginStatus, ReloadFailed, ReloadResult

    if isinstance(outcome, ReloadResult):
        if outcome.outcome == "rollout":  # [rollout] on_new_version: a rollout, not a swap
            return (
                f"rolling out {outcome.name} {outcome.from_version or '-'} -> "
                f"{outcome.to_version or '-'} instead of a reload ([rollout] on_new_version) - "
                f"`nyxplug rollout status {outcome.name}` follows it"
            )
        if outcome.outcome != "swapped":
            return f"{outcome.name} {outcome.to_version or '-'} {outcome.outcome}: same code"
        pause = f"pause {outcome.pause * 1000:.2f} ms" if outcome.pause is not None else "swapped"
        tries = f", {outcome.attempts} attempts" if outcome.attempts > 1 else ""
        return (
            f"reloaded {outcome.name} {outcome.from_version or '-'} -> "
            f"{outcome.to_version or '-'} ({pause}{tries})"
        )
    if isinstance(outcome, ReloadFailed):
        keeps = outcome.running or "the running version"
        return (
            f"reload of {outcome.name} failed at {outcome.step}: {outcome.reason}; "
            f"{keeps} keeps serving"
        )
    if isinstance(outcome, PluginLoadError):
        return f"load of {outcome.name} failed at {outcome.step}: {outcome.reason}"
    if isinstance(outcome, PluginStatus):
        return f"loaded {outcome.name} {outcome.version or '-'} (id {outcome.id}): {outcome.state}"
    if isinstance(outcome, BaseException):  # not found, wrong state, or a bug
        return f"{name or 'watcher'}: {type(outcome).__name__}: {outcome}"
    return str(outcome)


# -- the watching host ----------------------------------------------------------------------


def serve(manager: PluginManager, where: str = "") -> int:
    """Run the watching host on ``manager`` until SIGINT/SIGTERM; returns the exit status.

    ``where`` (``Host: ...``) is said once the host has claimed its state dir.
    """
    from .control import ControlServer, socket_path

    if manager.state_dir is None:
        raise Problem("a watching host needs a state dir for its control socket - set one")
    server = ControlServer(
        manager,
        socket_path(manager.state_dir),
        on_outcome=lambda _request, outcome: _say(describe(outcome) + " - by nyxplug reload"),
    )
    try:
        return asyncio.run(_serve(manager, server, where))
    except asyncio.CancelledError:  # a second signal: stop without waiting for the drain
        print("nyxplug run: stopped before every plugin was unloaded", file=sys.stderr)
        return 1


def _say(line: str) -> None:
    # stdout is often a pipe (a supervisor, a test): every line must leave at once.
    print(line, flush=True)


async def _serve(manager: PluginManager, server: ControlServer, where: str) -> int:
    from ..plugins.watch import PluginWatcher

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    main = asyncio.current_task()
    assert main is not None

    def on_signal(name: str) -> None:
        if stop.is_set():
            main.cancel()
            return
        _say(f"{name}: stopping - unloading the plugins (send it again to stop at once)")
        stop.set()

    signals = (signal.SIGINT, signal.SIGTERM)
    for sig in signals:
        loop.add_signal_handler(sig, on_signal, sig.name)
    try:
        server.claim()  # before any plugin loads: a second host must not run on_load twice
        if where:
            _say(where)
        for status in await manager.start():
            _say(status_line(status))
        if not stop.is_set():
            watcher = PluginWatcher(manager)
            printer = _OutcomePrinter(watcher)
            async with watcher:
                await _until(watcher.ready, stop)
                if not stop.is_set():
                    async with server:
                        folders = len(manager.watched_paths())
                        _say(
                            f"watching {folders} plugin folder{'s' * (folders != 1)} for "
                            f"changes; control socket {_shown(server.path)} - Ctrl-C or "
                            "SIGTERM to stop"
                        )
                        follower = asyncio.create_task(printer.follow())
                        try:
                            await stop.wait()
                        finally:
                            follower.cancel()
                            await asyncio.wait([follower])
            printer.flush()  # what the watcher finished while it was stopping
    finally:
        try:
            await server.aclose()
        finally:
            active = manager.catalog(state="active")
            stats = {s.name: (manager.stats(s.name), s.reloads) for s in active}
            await manager.aclose()
            for sig in signals:
                loop.remove_signal_handler(sig)
    _say(f"\nunloaded {len(stats)} plugin{'s' * (len(stats) != 1)}")
    if stats:
        _say("plugin               frames  errors  reloads")
        for name, (counters, reloads) in stats.items():
            frames = counters.messages_processed if counters else 0
            errors = counters.errors if counters else 0
            _say(f"{name:<20} {frames:>6}  {errors:>6}  {reload_count(reloads):>7}")
    return 0


def reload_count(reloads: ReloadStats) -> str:
    """``succeeded/attempted``, or ``-`` before the first reload (``nyxplug list``'s RELOADS)."""
    return f"{reloads.succeeded}/{reloads.attempted}" if reloads.attempted else "-"


async def _until(event: asyncio.Event, stop: asyncio.Event) -> None:
    """Wait for ``event`` unless ``stop`` comes first."""
    waits = [asyncio.create_task(event.wait()), asyncio.create_task(stop.wait())]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in waits:
            task.cancel()
        await asyncio.wait(waits)


class _OutcomePrinter:
    """Prints each outcome the watcher records, once and in order."""

    def __init__(self, watcher: PluginWatcher) -> None:
        self.watcher = watcher
        self.seen = 0

    async def follow(self) -> None:
        while True:
            await self.watcher.wait_for(self._more)
            self.flush()

    def _more(self) -> bool:
        return len(self.watcher.outcomes) > self.seen

    def flush(self) -> None:
        fresh = self.watcher.outcomes[self.seen :]
        self.seen += len(fresh)
        for name, outcome in fresh:
            _say(describe(outcome, name))


def _shown(path: Path) -> str:
    from ._common import relative_path

    return relative_path(path)
