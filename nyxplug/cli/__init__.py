"""The ``nyxplug`` command line. For now it has one subcommand, ``demo``."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``nyxplug`` script and of ``python -m nyxplug``."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "demo":
        from .._runner import uvloop_available
        from .demo import print_demo

        if args.loop == "uvloop" and not uvloop_available():
            parser.error("--loop uvloop: uvloop is not installed (pip install 'nyxplug[uvloop]')")

        use_uvloop = {"auto": None, "asyncio": False, "uvloop": True}[args.loop]
        print_demo(frames=args.frames, use_uvloop=use_uvloop)
        return 0
    parser.print_help()
    return 0
