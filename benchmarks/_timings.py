"""The command line shared by the benchmarks that time named steps over ``--rounds``
(``benchmarks.recovery``, ``benchmarks.versions``): run on uvloop when it is there, print
one row per step, or ``--json``."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Callable, Coroutine
from typing import Any

Results = dict[str, dict[str, float]]


def timings_main(
    prog: str,
    run_all: Callable[[int], Coroutine[Any, Any, Results]],
    argv: list[str] | None,
    *,
    width: int,
    digits: int,
) -> int:
    """Parse ``--json`` and ``--rounds``, run ``run_all(rounds)`` and report it."""
    parser = argparse.ArgumentParser(prog=prog)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--rounds", type=int, default=50)
    args = parser.parse_args(argv)
    try:
        import uvloop

        runner: Any = uvloop.run
    except ImportError:
        runner = asyncio.run
    results = runner(run_all(args.rounds))
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cores, {args.rounds} rounds")
    for name, values in results.items():
        shown = ", ".join(f"{key} {value:,.{digits}f}" for key, value in values.items())
        print(f"{name:<{width}} {shown}")
    return 0
