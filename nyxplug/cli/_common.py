"""Pieces every ``nyxplug`` subcommand module shares."""

from __future__ import annotations

from pathlib import Path

__all__ = ("Problem", "relative_path")


class Problem(Exception):
    """A reported problem: one line for stderr, exit status 1."""


def relative_path(path: Path) -> str:
    """``path`` relative to the current directory when it is inside it."""
    try:
        return str(path.absolute().relative_to(Path.cwd()))
    except ValueError:
        return str(path)
