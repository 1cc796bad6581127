"""The ``nyxplug`` command line: ``demo``, ``bench`` and the plugin commands.

``new``, ``validate``, ``list``, ``info``, ``run``, ``enable`` and ``disable`` live in
``nyxplug.cli.plugins``; ``keygen`` and ``sign`` in ``nyxplug.cli.keys``; ``package``,
``verify``, ``install`` and ``uninstall`` in ``nyxplug.cli.packages``; ``trust`` and
``audit`` in ``nyxplug.cli.trust``; ``reload`` (and the watching host of ``run --watch``)
in ``nyxplug.cli.reload``; ``isolation`` in ``nyxplug.cli.isolation``; ``serve`` in
``nyxplug.cli.serve``; ``top`` (a live view through the admin API) in ``nyxplug.cli.top``;
``breaker`` in ``nyxplug.cli.breaker``; ``versions`` and ``rollout`` in ``nyxplug.cli.rollout``.
The host options
they share, and how a problem is reported, are ``nyxplug.cli._host``'s.
"""

from __future__ import annotations

import argparse
import tomllib
from collections.abc import Sequence
from pathlib import Path

from . import (
    _host,
    breaker,
    isolation,
    keys,
    packages,
    plugins,
    reload,
    rollout,
    serve,
    top,
    trust,
)

__all__ = ("main",)


def _positive_int(text: str) -> int:
    try:
        value = int(text.replace("_", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 2:
        raise argparse.ArgumentTypeError(f"expected at least 2, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nyxplug",
        description="nyxplug: an asyncio frame-dispatch engine for Nyx protocol plugins.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = commands.add_parser(
        "demo",
        help="load three example plugins and push frames through them (a few seconds)",
        description=(
            "Load three example plugins (fast, slow, limited), drive a burst of frames "
            "through the dispatcher, and print what happened: throughput, backpressure, "
            "the typed errors, and the statistics."
        ),
    )
    demo.add_argument(
        "--frames",
        type=_positive_int,
        default=200_000,
        metavar="N",
        help="frames in the burst to the fast plugin (default: 200000)",
    )
    demo.add_argument(
        "--loop",
        choices=("auto", "asyncio", "uvloop"),
        default="auto",
        help="event loop: uvloop when installed (auto, the default), or force one",
    )
    bench = commands.add_parser(
        "bench",
        help="compare nyxplug with asyncio.Queue and anyio in one table (needs a source checkout)",
        description="Run benchmarks/compare.py: every scenario in one process, one table.",
        add_help=False,
    )
    bench.add_argument("bench_args", nargs=argparse.REMAINDER)
    host = _host.host_options()
    plugins.add_commands(commands, host)
    reload.add_commands(commands, host)
    serve.add_commands(commands, host)
    breaker.add_commands(commands, host)
    rollout.add_commands(commands, host)
    # Listed in the order they are used: a publisher's keygen, package, sign; a host's
    # verify and install.
    keys.add_keygen(commands)
    packages.add_package(commands)
    keys.add_sign(commands)
    packages.add_install_commands(commands)
    trust.add_commands(commands)
    isolation.add_commands(commands)
    top.add_commands(commands)
    return parser


def _source_checkout() -> Path | None:
    """The nyxplug source checkout this package was installed from (editable), if any.

    ``benchmarks/`` ships with the source, not the wheel. Only the checkout that holds this
    very package counts - never the working directory, so no stray ``benchmarks/`` runs.
    """
    root = Path(__file__).resolve().parents[2]
    try:
        with open(root / "pyproject.toml", "rb") as file:
            name = tomllib.load(file)["project"]["name"]
    except (OSError, tomllib.TOMLDecodeError, KeyError, TypeError):
        return None
    return root if name == "nyxplug" and (root / "benchmarks" / "compare.py").is_file() else None


def _run_bench(args: list[str]) -> int:
    """Run ``python -m benchmarks.compare`` in the package's own checkout, in a child process."""
    import subprocess
    import sys

    checkout = _source_checkout()
    if checkout is None:
        print(
            "nyxplug bench needs a source checkout: this nyxplug is installed without its "
            "benchmarks/ - in a checkout, run `make install` and then "
            "`.venv/bin/python -m benchmarks.compare`",
            file=sys.stderr,
        )
        return 2
    return subprocess.call([sys.executable, "-m", "benchmarks.compare", *args], cwd=checkout)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``nyxplug`` script and of ``python -m nyxplug``."""
    import sys

    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments[:1] == ["bench"]:
        # Everything after "bench" (--help included) belongs to compare.py's own parser.
        return _run_bench(arguments[1:])
    parser = build_parser()
    args = parser.parse_args(arguments)
    if args.command == "demo":
        from .._runner import uvloop_available
        from .demo import print_demo

        if args.loop == "uvloop" and not uvloop_available():
            parser.error("--loop uvloop: uvloop is not installed (pip install 'nyxplug[uvloop]')")

        use_uvloop = {"auto": None, "asyncio": False, "uvloop": True}[args.loop]
        print_demo(frames=args.frames, use_uvloop=use_uvloop)
        return 0
    if args.command == "bench":
        return _run_bench(list(args.bench_args))
    if args.command in plugins.COMMANDS:
        return plugins.run(args)
    if args.command in reload.COMMANDS:
        return reload.run(args)
    if args.command in serve.COMMANDS:
        return serve.run(args)
    if args.command in breaker.COMMANDS:
        return breaker.run(args)
    if args.command in rollout.COMMANDS:
        return rollout.run(args)
    if args.command in top.COMMANDS:
        return top.run(args)
    if args.command in keys.COMMANDS:
        return keys.run(args)
    if args.command in packages.COMMANDS:
        return packages.run(args)
    if args.command in trust.COMMANDS:
        return trust.run(args)
    if args.command in isolation.COMMANDS:
        return isolation.run(args)
    parser.print_help()
    return 0
