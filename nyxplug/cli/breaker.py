"""``nyxplug breaker NAME [--version V] [--set STATE]``: a running host's circuit breaker.

It asks the control socket of the host running with this state dir (``nyxplug run
--watch`` or ``nyxplug serve``): the breaker's state, its window (calls, failures, slow
calls, the rates), trips, refusals by reason, the retry-after and the recovery ladder's
step. ``--set`` is an operator's transition - ``closed`` resets it, ``forced-open``
refuses every frame, ``disabled`` admits all and records nothing, ``metrics-only``
records but never trips - written to the host's audit log with the caller (the local
user the host reads from the socket). ``--version`` picks a version loaded beside the
stable one (a candidate to force off, say). Exit status 0 when shown (and set), 1
otherwise.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from . import _host
from ._common import OPERATOR_STATES, Problem

if TYPE_CHECKING:
    from ..plugins import VersionStatus
    from .control import BreakerReply

__all__ = ("COMMANDS", "add_commands", "describe", "run")

COMMANDS = ("breaker",)
#: How long the command waits for the host (the breaker calls never wait on a plugin).
_TIMEOUT = 30.0


def add_commands(commands: _host.Commands, host: argparse.ArgumentParser) -> None:
    """Add ``breaker`` to ``nyxplug``'s subparsers; ``host`` holds the host options."""
    breaker = commands.add_parser(
        "breaker",
        parents=[host],
        help="show or set a plugin's circuit breaker on the running host",
        description=(
            "Show NAME's circuit breaker on the host running with this state dir (nyxplug "
            "run --watch or nyxplug serve): state, window, failure and slow-call rates, "
            "trips, refusals by reason, retry-after, recovery step. --set changes it "
            "(audited with your user name). Exit status 0 when done, 1 when not."
        ),
    )
    breaker.add_argument("name", metavar="NAME", help="the plugin's name")
    breaker.add_argument(
        "--version",
        metavar="VERSION",
        help="the breaker of this loaded version (a candidate beside the stable one; "
        "`nyxplug versions NAME` lists them), not the stable version's",
    )
    breaker.add_argument(
        "--set",
        dest="state",
        choices=OPERATOR_STATES,
        help="closed resets it (fresh window), forced-open refuses every frame, disabled "
        "admits all and records nothing, metrics-only records but never trips",
    )


def run(args: argparse.Namespace) -> int:
    """Run ``nyxplug breaker``; returns the exit status."""
    return _host.run("breaker", _breaker, args)


def _breaker(args: argparse.Namespace) -> int:
    from .control import BreakerReply, BreakerRequest, Failure, NoHost, request, socket_path

    path = socket_path(_host.host_config(args).runtime.state_dir)
    try:
        message = BreakerRequest(name=args.name, state=args.state, version=args.version)
        reply = request(path, message, timeout=_TIMEOUT)
    except NoHost as exc:
        what = "set" if args.state else "show"
        of = f"{args.name} {args.version}" if args.version else args.name
        raise Problem(
            f"cannot {what} the circuit breaker of {of}: {exc} (breakers live in a running host)"
        ) from None
    if isinstance(reply, Failure):
        raise Problem(reply.message)
    if not isinstance(reply, BreakerReply):
        raise Problem(f"Expected a breaker reply from {path}, got a {type(reply).__name__} reply")
    print("\n".join(describe(reply)))
    return 0


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f} %"


def describe(reply: BreakerReply) -> list[str]:
    """The lines ``nyxplug breaker`` prints for ``reply``; versions loaded side by side
    get one line each after the stable version's breaker."""
    return _stable(reply) + [f"version {v.version} ({v.role}): {_lane(v)}" for v in reply.others]


def _lane(version: VersionStatus) -> str:
    b = version.breaker
    if b is None:
        return "no circuit breaker"
    refused = b.refused_open + b.refused_forced_open + b.refused_half_open
    state = b.state.name.lower().replace("_", "-")
    return f"{state}, {b.calls} calls, {b.failures} failures, {b.trips} trips, {refused} refused"


def _stable(reply: BreakerReply) -> list[str]:
    stable = reply.role == "stable"
    role = "" if stable else f"{reply.role}, "
    who = f"{reply.name} {reply.version or '-'} ({role}id {reply.plugin_id})"
    b = reply.breaker
    if b is None:
        also = "" if stable else f" --version {reply.version}"
        return [
            f"{who}: no circuit breaker - its manifest has no [breaker] and the host no "
            f"[defaults.breaker]; `nyxplug breaker {reply.name}{also} --set closed` gives it "
            "the default one"
        ]
    state = b.state.name.lower().replace("_", "-")
    lines = [f"{who}: {state}" + (f" (set by {reply.changed_by})" if reply.changed_by else "")]
    if b.forced_by:
        lines.append(f"  forced by: {b.forced_by}")
    c = reply.config
    window = f"{c.window} window of {c.window_size}" if c is not None else "window"
    if c is not None and c.window == "time":
        window += " s"
    lines.append(
        f"  {window}: {b.calls} calls, {b.failures} failures, {b.slow_calls} slow - failure "
        f"rate {_rate(b.failure_rate)}, slow-call rate {_rate(b.slow_call_rate)}"
    )
    if c is not None:
        lines.append(
            f"  trips at: failure rate {c.failure_rate * 100:g} % or slow-call rate "
            f"{c.slow_call_rate * 100:g} % over {c.effective_minimum_calls} calls"
        )
    lines.append(f"  trips: {b.trips} ({b.consecutive_trips} in a row)")
    lines.append(
        f"  refused: open {b.refused_open}, forced-open {b.refused_forced_open}, half-open "
        f"{b.refused_half_open}"
    )
    lines.append("  retry after: " + ("-" if b.retry_after is None else f"{b.retry_after:.3f} s"))
    if b.state.name == "HALF_OPEN":
        lines.append(f"  probes: {b.probes_admitted} admitted, {b.probes_recorded} recorded")
    r = reply.recovery
    if not stable:
        lines.append("  recovery: - (the ladder repairs the stable version; a rollout judges "
                     "this one)")  # fmt: skip
    elif r is None:
        lines.append("  recovery: none ([recovery] not configured)")
    else:
        now = f"repairing: {r.repairing}" if r.repairing else "idle"
        lines.append(f"  recovery: {now}; {r.episodes} episodes, {r.recoveries} recovered")
        if b.repairing:
            lines.append(f"  step running: {b.repairing}")
        steps = ", ".join(
            f"{step} {s.successes}/{s.attempts}" for step, s in r.steps.items() if s.attempts
        )
        if steps:
            lines.append(f"  steps (worked/ran): {steps}")
        if r.last_failure:
            lines.append(f"  last failure: {r.last_failure}")
    return lines
