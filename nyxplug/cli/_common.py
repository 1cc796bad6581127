"""Pieces every ``nyxplug`` subcommand module shares."""

from __future__ import annotations

import shlex
from pathlib import Path

__all__ = ("Problem", "quoted", "relative_path")


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
