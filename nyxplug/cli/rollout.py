"""``nyxplug versions NAME`` and ``nyxplug rollout ...``: versions side by side, by hand.

Both ask the control socket of the host running with this state dir (``nyxplug run
--watch`` or ``nyxplug serve``), which calls the manager's runtime versions API:

* ``nyxplug versions NAME [--load VERSION | --unload VERSION]`` - every version the host
  found: role (stable, candidate, warm, loaded, available...), share of the route keys,
  frames, errors, breaker and health of each loaded one.
* ``nyxplug rollout start NAME VERSION [--strategy canary|blue-green|split] [--steps
  5,10,25,50] [--interval S] [--min-frames N] [--max-error-rate R] ...`` - options left
  out keep the plugin's own configuration (its manifest's ``[rollout]``, else the host's
  ``[defaults.rollout]``); ``status`` shows the rollout and its events; ``pause``,
  ``resume``, ``promote``, ``rollback`` and ``abort`` act on it, audited with the caller
  (the local user the host reads from the socket).

Exit status 0 when the host did what was asked, 1 when it did not (the message names the
plugin, the version and the fix); ``rollout status`` of a rollout that rolled back or was
aborted still exits 0 - it was shown.
"""

from __future__ import annotations

import argparse
import time
from typing import TYPE_CHECKING

from . import _host
from ._common import ROLLOUT_VERBS, Problem

if TYPE_CHECKING:
    from ..admin.operations import RolloutOptions
    from ..plugins import RolloutStatus, VersionStatus
    from .control import Reply, Request

__all__ = ("COMMANDS", "add_commands", "describe_rollout", "run", "versions_table")

COMMANDS = ("versions", "rollout")
#: Loading a version runs its on_load and health(); unloading drains its queue.
_TIMEOUT = 300.0
_STRATEGIES = {"canary": "canary", "blue-green": "blue_green", "split": "split"}


def add_commands(commands: _host.Commands, host: argparse.ArgumentParser) -> None:
    """Add ``versions`` and ``rollout`` to ``nyxplug``'s subparsers."""
    versions = commands.add_parser(
        "versions",
        parents=[host],
        help="the versions of a plugin on the running host (and load or unload one)",
        description=(
            "List every version of NAME the host running with this state dir found: role, "
            "share of the route keys, frames, errors, breaker and health. --load loads a "
            "found version beside the running one (no traffic until a rollout); --unload "
            "drains and unloads one no route uses. Exit status 0 when done, 1 when not."
        ),
    )
    versions.add_argument("name", metavar="NAME", help="the plugin's name")
    change = versions.add_mutually_exclusive_group()
    change.add_argument("--load", metavar="VERSION", help="load this found version beside")
    change.add_argument("--unload", metavar="VERSION", help="drain and unload this version")

    rollout = commands.add_parser(
        "rollout",
        parents=[host],
        help="move a plugin's traffic to another version: start, status, pause, resume, "
        "promote, rollback, abort",
        description=(
            "Start a rollout of NAME to VERSION on the host running with this state dir, "
            "show it, or act on it. Options of start left out keep the plugin's own "
            "configuration (its manifest's [rollout], else the host's [defaults.rollout]). "
            "Exit status 0 when done, 1 when not."
        ),
    )
    rollout.add_argument("verb", choices=ROLLOUT_VERBS, metavar="ACTION",
                         help=f"one of {', '.join(ROLLOUT_VERBS)}")  # fmt: skip
    rollout.add_argument("name", metavar="NAME", help="the plugin's name")
    rollout.add_argument("version", nargs="?", metavar="VERSION",
                         help="start: the candidate version (one the host found)")  # fmt: skip
    options = rollout.add_argument_group("start options (default: the plugin's [rollout])")
    options.add_argument("--strategy", choices=tuple(_STRATEGIES),
                         help="canary: rising steps; blue-green: all at once, checked, then "
                         "promoted; split: --weight %% for --hold seconds")  # fmt: skip
    options.add_argument(
        "--steps",
        type=_steps,
        metavar="P,P,...",
        help="canary: the candidate's shares in percent, rising (5,10,25,50)",
    )
    options.add_argument("--weight", type=float, metavar="P", help="split: the share in percent")
    options.add_argument("--hold", type=float, metavar="S", help="split: seconds it holds")
    options.add_argument("--interval", type=float, metavar="S", help="seconds per check")
    options.add_argument("--iterations", type=int, metavar="N",
                         help="passing checks each step needs")  # fmt: skip
    options.add_argument(
        "--min-frames",
        type=int,
        metavar="N",
        help="fewer candidate frames in a check is inconclusive, never a pass",
    )
    options.add_argument(
        "--max-error-rate",
        type=float,
        metavar="R",
        help="the candidate's highest error rate, a fraction (0.01 = 1 %%)",
    )
    options.add_argument(
        "--max-error-rate-over-stable",
        type=float,
        metavar="R",
        help="how far above the stable version's rate it may be (fraction)",
    )
    options.add_argument(
        "--max-slow-rate",
        type=float,
        metavar="R",
        help="the candidate's highest share of slow calls, as its circuit breaker times them "
        "(fraction; the candidate needs a breaker)",
    )
    options.add_argument(
        "--max-slow-rate-over-stable",
        type=float,
        metavar="R",
        help="how far above the stable version's slow-call rate it may be (fraction)",
    )
    options.add_argument("--threshold", type=int, metavar="N",
                         help="failed checks that roll it back")  # fmt: skip
    options.add_argument(
        "--deadline",
        type=float,
        metavar="S",
        help="the longest time in any state before it rolls back",
    )
    options.add_argument(
        "--rollback-window",
        type=float,
        metavar="S",
        help="seconds the old version stays warm after a promotion",
    )
    promote = options.add_mutually_exclusive_group()
    promote.add_argument(
        "--auto-promote",
        dest="auto_promote",
        action="store_true",
        default=None,
        help="promote after the last step by itself",
    )
    promote.add_argument(
        "--no-auto-promote",
        dest="auto_promote",
        action="store_false",
        help="wait for `nyxplug rollout promote` after the last step",
    )


def _steps(text: str) -> list[float]:
    try:
        return [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected percentages separated by commas such as 5,10,25,50, got {text!r}"
        ) from None


def run(args: argparse.Namespace) -> int:
    """Run ``nyxplug versions`` or ``nyxplug rollout``; returns the exit status."""
    if args.command == "versions":
        return _host.run("versions", _versions, args)
    return _host.run("rollout", _rollout, args)


def _ask(args: argparse.Namespace, message: Request, what: str) -> Reply:
    from .control import Failure, NoHost, request, socket_path

    path = socket_path(_host.host_config(args).runtime.state_dir)
    try:
        reply = request(path, message, timeout=_TIMEOUT)
    except NoHost as exc:
        raise Problem(
            f"cannot {what} of {args.name}: {exc} (versions run in a running host)"
        ) from None
    if isinstance(reply, Failure):
        raise Problem(reply.message)
    return reply


def _versions(args: argparse.Namespace) -> int:
    from .control import VersionsReply, VersionsRequest

    what = "load a version" if args.load else "unload a version" if args.unload else "list "
    message = VersionsRequest(name=args.name, load=args.load, unload=args.unload)
    reply = _ask(args, message, what.rstrip() + ("s" if what == "list " else ""))
    if not isinstance(reply, VersionsReply):
        raise Problem(f"Expected a versions reply, got a {type(reply).__name__} reply")
    if args.load:
        print(f"loaded {reply.name} {args.load} beside the running version (no traffic until "
              f"`nyxplug rollout start {reply.name} {args.load}`)")  # fmt: skip
    elif args.unload:
        done = reply.stats.messages_processed if reply.stats is not None else 0
        print(f"unloaded {reply.name} {args.unload} ({done} frames handled)")
    print("\n".join(versions_table(reply.versions)))
    return 0


def _breaker_text(version: VersionStatus) -> str:
    if version.breaker is None:
        return "-"
    state = version.breaker.state.name.lower().replace("_", "-")
    return state if version.breaker.repairing is None else f"{state}: {version.breaker.repairing}"


def _health_text(version: VersionStatus) -> str:
    h = version.health
    if h is None:
        return "-"
    if not h.live:
        return "not live"
    return "ok" if h.ready else "not ready"


def versions_table(versions: list[VersionStatus]) -> list[str]:
    """The rows ``nyxplug versions`` prints."""
    lines = [
        f"{'VERSION':<14} {'ROLE':<10} {'WEIGHT':>7} {'FRAMES':>10} {'ERRORS':>8} "
        f"{'BREAKER':<14} {'HEALTH':<10} LOCATION"
    ]
    for v in versions:
        frames = f"{v.stats.messages_processed}" if v.stats is not None else "-"
        errors = f"{v.stats.errors}" if v.stats is not None else "-"
        weight = f"{v.weight:g}%" if v.loaded else "-"
        lines.append(
            f"{v.version:<14} {v.role:<10} {weight:>7} {frames:>10} {errors:>8} "
            f"{_breaker_text(v):<14} {_health_text(v):<10} {v.location}"
        )
    return lines


def _options(args: argparse.Namespace) -> RolloutOptions | None:
    from ..admin.operations import RolloutOptions

    given = {
        field: getattr(args, field)
        for field in (
            "steps",
            "weight",
            "hold",
            "interval",
            "iterations",
            "min_frames",
            "max_error_rate",
            "max_error_rate_over_stable",
            "max_slow_rate",
            "max_slow_rate_over_stable",
            "threshold",
            "deadline",
            "rollback_window",
            "auto_promote",
        )  # fmt: skip
        if getattr(args, field) is not None
    }
    if args.strategy is not None:
        given["strategy"] = _STRATEGIES[args.strategy]
    if not given:
        return None
    import msgspec

    try:
        return msgspec.convert(given, RolloutOptions)
    except msgspec.ValidationError as exc:
        flag = _flag_of(str(exc))
        raise Problem(f"{flag}: {exc} - for the rollout of {args.name}") from None


def _flag_of(message: str) -> str:
    import re

    found = re.search(r"`\$\.(\w+)", message)
    return "--" + found.group(1).replace("_", "-") if found else "options"


def _rollout(args: argparse.Namespace) -> int:
    from .control import RolloutReply, RolloutRequest

    verb = args.verb
    options = None
    if verb == "start":
        if args.version is None:
            raise Problem(
                f"which version? give the candidate: `nyxplug rollout start {args.name} "
                f"VERSION` (`nyxplug versions {args.name}` lists the ones found)"
            )
        options = _options(args)
    else:
        if args.version is not None:
            raise Problem(f"`nyxplug rollout {verb}` takes no VERSION, got {args.version!r}")
        start_only = ("strategy", "steps", "weight", "hold", "interval", "min_frames",
                      "max_error_rate", "auto_promote")  # fmt: skip
        used = [f for f in start_only if getattr(args, f) is not None]
        if used:
            flag = "--" + used[0].replace("_", "-")
            raise Problem(f"{flag} is an option of `nyxplug rollout start`, not of {verb}")
    message = RolloutRequest(name=args.name, verb=verb, version=args.version, options=options)
    what = "start a rollout" if verb == "start" else f"{verb} the rollout"
    reply = _ask(args, message, what)
    if not isinstance(reply, RolloutReply):
        raise Problem(f"Expected a rollout reply, got a {type(reply).__name__} reply")
    if reply.rollout is None:
        print(
            f"{reply.name}: no rollout yet - start one with `nyxplug rollout start "
            f"{reply.name} VERSION` (`nyxplug versions {reply.name}` lists the versions)"
        )
        return 0
    print("\n".join(describe_rollout(reply.rollout, events=verb == "status")))
    return 0


def describe_rollout(status: RolloutStatus, *, events: bool = True) -> list[str]:
    """The lines ``nyxplug rollout`` prints: the head line, then the events."""
    strategy = status.strategy.replace("_", "-")
    head = f"{status.plugin}: {strategy} {status.stable} -> {status.candidate}: {status.state}"
    if status.state in ("progressing", "paused", "awaiting_promotion"):
        head += f", weight {status.weight:g}%, step {status.step + 1}"
    lines = [
        head,
        "  started " + time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(status.started_at)),
    ]
    if events:
        for e in status.events:
            detail = f" - {e.detail}" if e.detail else ""
            lines.append(f"  {e.at:>9.3f}s {e.kind:<18} {e.state:<18} {e.weight:>5g}%{detail}")
    elif status.events:
        last = status.events[-1]
        lines.append(f"  last event: {last.kind}" + (f" - {last.detail}" if last.detail else ""))
    return lines
