"""Pieces every ``nyxplug`` subcommand module shares."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..plugins import PluginStatus

__all__ = ("OPERATOR_STATES", "ROLLOUT_VERBS", "Problem", "quoted", "relative_path", "status_line")

#: The breaker states an operator may set, as the command line spells them.
OPERATOR_STATES = ("closed", "forced-open", "disabled", "metrics-only")
#: What ``nyxplug rollout`` may ask: start one, show it, or act on it.
ROLLOUT_VERBS = ("start", "status", "pause", "resume", "promote", "rollback", "abort")


class Problem(Exception):
    """A reported problem: one line for stderr, exit status 1."""


def relative_path(path: Path) -> str:
    """``path`` relative to the current directory when it is inside it."""
    try:
        return str(path.absolute().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def quoted(text: str) -> str:
    """``text`` as one shell word, for a command the output suggests."""
    return shlex.quote(text)


def status_line(status: PluginStatus, *, state: bool = True) -> str:
    """``name version (id N): state - reason``; a plugin without a valid manifest says so.

    ``state=False`` leaves the state out: ``name version (id N): reason``.
    """
    who = f"(id {status.id})" if status.id is not None else "(no valid manifest)"
    head = f"{status.name} {status.version or '-'} {who}:"
    if not state:
        return f"{head} {status.reason}"
    return f"{head} {status.state}" + (f" - {status.reason}" if status.reason else "")
