"""``nyxplug isolation``: which isolation layers a plugin's child gets on this machine."""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ("COMMANDS", "add_commands", "run")

COMMANDS = frozenset({"isolation"})


def add_commands(commands: Any) -> None:
    command = commands.add_parser(
        "isolation",
        help="start a probe child and show which isolation layers took effect here",
        description=(
            "Start a child exactly as an isolated plugin's is started, and print each "
            "isolation layer (cgroup, privileges, rlimits, landlock, seccomp): applied, or "
            "why not. Nothing is inferred; the child reports what it did."
        ),
    )
    command.add_argument("--json", action="store_true", help="machine-readable output")


def run(args: argparse.Namespace) -> int:
    import msgspec

    from ..isolation import isolation_report

    report = isolation_report()
    if args.json:
        print(msgspec.json.encode(report).decode())
        return 0
    for layer in report.layers:
        mark = "applied" if layer.applied else "missing"
        print(f"{layer.name:<11} {mark:<8} {layer.detail}")
    return 0
