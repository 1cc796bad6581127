"""The operator's list of disabled plugins, kept in a JSON file across restarts."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from .._atomic import write_atomic
from ..source.snapshot import read_regular

__all__ = ("read_disabled", "write_disabled")

#: The state file lists plugin names; anything this big is not one nyxplug wrote.
MAX_STATE_FILE = 1024 * 1024


def read_disabled(path: Path) -> set[str]:
    """The names in the state file at ``path`` (none when there is no file yet)."""
    try:
        data = json.loads(read_regular(path, MAX_STATE_FILE, "a state file"))
    except FileNotFoundError:
        return set()
    except (OSError, ValueError) as exc:
        raise ValueError(
            f"Expected {path} to be the JSON state nyxplug wrote, could not read it: {exc}"
            " - fix or delete the file"
        ) from exc
    disabled = data.get("disabled", []) if isinstance(data, dict) else None
    if not isinstance(disabled, list) or not all(isinstance(n, str) for n in disabled):
        raise ValueError(
            f"Expected `disabled` in {path} to be a list of plugin names, got {disabled!r}"
        )
    return set(disabled)


def write_disabled(path: Path, names: Iterable[str]) -> None:
    """Replace the state file at ``path`` (atomically) with ``names``, creating its folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps({"disabled": sorted(names)}, indent=2).encode() + b"\n")
