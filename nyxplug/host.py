"""``python -I -B -m nyxplug.host``: the process an isolated plugin runs in.

Three ways to start it, all from the parent (never by hand):

- ``--fd N``: one child; its ``Launch`` arrives on stdin, the parent's socket is fd N.
- ``--fork-server --fd N``: the fork server (see ``nyxplug.isolation.forkserver``).
- ``--report``: apply the isolation layers to itself and print what took effect (JSON),
  which is what ``nyxplug.isolation_report()`` shows.
"""

from __future__ import annotations

import argparse
import struct
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nyxplug.host")
    parser.add_argument("--fd", type=int, help="the socket to the parent")
    parser.add_argument("--fork-server", action="store_true")
    parser.add_argument("--report", action="store_true")
    args = parser.parse_args(argv)
    if args.report:
        from .isolation.report import print_own_report

        return print_own_report(sys.stdin.buffer.read())
    if args.fd is None:
        parser.error("--fd is required (this module is started by nyxplug, not by hand)")
    if args.fork_server:
        from .isolation.forkserver import serve_forks

        return serve_forks(args.fd)
    import os

    import msgspec

    from .isolation.child import Launch, run_child, set_parent_death_signal

    set_parent_death_signal(os.getppid())
    stdin = sys.stdin.buffer
    (size,) = struct.unpack("<I", stdin.read(4))
    launch = msgspec.msgpack.decode(stdin.read(size), type=Launch)
    stdin.close()
    run_child(args.fd, launch)


if __name__ == "__main__":
    sys.exit(main())
