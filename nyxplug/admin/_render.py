"""The /metrics render process: ``python -m nyxplug.admin._render``.

Reads requests from stdin and answers on stdout, each a 4-byte big-endian length and a
msgpack array: ``[accept, snapshot]`` in (``snapshot`` a ``PackedSnapshot``), ``[content
type, body]`` out. A plain child with pipes rather than a multiprocessing pool: no
re-import of the host's main module, no pickling thread holding the host's GIL, and the
host reads the answer on its loop like any other stream. It runs at a lower priority
(``nice`` 10) than the host, so rendering never takes a core from serving. Exits at end
of input.
"""

from __future__ import annotations

import os
import struct
import sys

import msgspec

from .metrics import PackedSnapshot, render

__all__ = ("main",)

_Request = tuple[str | None, PackedSnapshot]


def main() -> None:
    # Below the host: on a busy machine the scheduler runs the host's loop first.
    os.nice(10)
    read, write = sys.stdin.buffer, sys.stdout.buffer
    decoder = msgspec.msgpack.Decoder(_Request)
    while True:
        head = read.read(4)
        if len(head) < 4:
            return
        (size,) = struct.unpack(">I", head)
        accept, snapshot = decoder.decode(read.read(size))
        body, content_type = render(snapshot, accept)
        answer = msgspec.msgpack.encode((content_type, body))
        write.write(struct.pack(">I", len(answer)) + answer)
        write.flush()


if __name__ == "__main__":
    main()
