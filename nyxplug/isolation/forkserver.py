"""The fork server: a pre-imported, loop-less process that forks isolated children.

Started once per host as ``python -I -B -m nyxplug.host --fork-server`` with a
stripped environment. It imports everything a child needs, freezes the GC so the
forked children share those pages, and then only forks: it never runs plugin code
itself. Children start in ~milliseconds instead of an interpreter start, and cost
only the pages they write.

Chain of custody against orphans: the server dies with the host (parent-death
signal, and EOF on its control socket; the host starts it from the thread that reads
its socket, which lives as long as the server, because Linux ties the signal to the
thread that forked, not the process), every child dies with the server (its own
parent-death signal), each child leads its own process group (the host kills the
group), and the server is a child subreaper, so anything a child forked is reaped
here rather than left as a zombie.
"""

from __future__ import annotations

import ctypes
import gc
import os
import selectors
import signal
import socket
import sys
from typing import Any

import msgspec

from .child import Launch, run_child, set_parent_death_signal

__all__ = ("Exit", "Ready", "Spawn", "SpawnFailed", "Spawned", "serve_forks")

_PR_SET_CHILD_SUBREAPER = 36
#: One control message (a Launch with its limits) is far below this.
CONTROL_LIMIT = 1 << 16


class Spawn(msgspec.Struct, frozen=True, tag=True):
    """Host → server: fork a child for ``launch``; fds [socket, stderr] ride along."""

    req: int
    launch: Launch


class Spawned(msgspec.Struct, frozen=True, tag=True):
    req: int
    pid: int


class SpawnFailed(msgspec.Struct, frozen=True, tag=True):
    req: int
    error: str


class Exit(msgspec.Struct, frozen=True, tag=True):
    """A child (or a grandchild the server reaped) ended with this wait status."""

    pid: int
    status: int


class Ready(msgspec.Struct, frozen=True, tag=True):
    pid: int


ServerMessage = Spawned | SpawnFailed | Exit | Ready
ENCODER = msgspec.msgpack.Encoder()
SERVER_DECODER = msgspec.msgpack.Decoder(ServerMessage)
SPAWN_DECODER = msgspec.msgpack.Decoder(Spawn)


def _preload() -> None:
    """Import what children use, so they share it instead of importing it each.

    The child side (``child``, ``layers``, ``nyxplug.source``) is imported with this
    module; never the host's runtime (``nyxplug.plugins``).
    """
    import asyncio  # noqa: F401
    import faulthandler  # noqa: F401
    import json  # noqa: F401
    import logging  # noqa: F401

    from .. import _impl  # noqa: F401

    try:
        import uvloop  # noqa: F401
    except ImportError:
        pass
    try:
        import pyseccomp  # type: ignore[import-untyped]  # noqa: F401
    except (ImportError, OSError):
        pass


def serve_forks(control_fd: int) -> int:
    """The server loop: fork on request, report exits, stop when the host goes."""
    set_parent_death_signal(os.getppid())
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    control = socket.socket(fileno=control_fd)
    _preload()
    gc.collect()
    gc.freeze()  # children then share these pages instead of touching them in a GC pass
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    selector = selectors.DefaultSelector()
    selector.register(control, selectors.EVENT_READ)
    selector.register(wake_r, selectors.EVENT_READ)
    children: set[int] = set()
    control.send(ENCODER.encode(Ready(os.getpid())))
    try:
        while True:
            for key, _ in selector.select():
                if key.fileobj is control:
                    data, fds, _flags, _addr = socket.recv_fds(control, CONTROL_LIMIT, 2)
                    if not data:
                        return 0  # the host closed us: children are killed below
                    _spawn(control, data, fds, children, (selector, wake_r, wake_w))
                else:
                    try:
                        os.read(wake_r, 4096)
                    except BlockingIOError:
                        pass
                    _reap(control, children)
    finally:
        for pid in children:
            try:
                os.killpg(pid, signal.SIGKILL)
            except OSError:
                pass


def _reap(control: socket.socket, children: set[int]) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        if pid in children:
            children.discard(pid)
            control.send(ENCODER.encode(Exit(pid, status)))


def _spawn(
    control: socket.socket,
    data: bytes,
    fds: list[int],
    children: set[int],
    inherited: tuple[Any, int, int],
) -> None:
    try:
        request = SPAWN_DECODER.decode(data)
        if len(fds) != 2:
            raise ValueError(f"Expected 2 file descriptors with a spawn request, got {len(fds)}")
    except (msgspec.DecodeError, msgspec.ValidationError, ValueError) as exc:
        for fd in fds:
            os.close(fd)
        control.send(ENCODER.encode(SpawnFailed(-1, str(exc))))
        return
    sock_fd, err_fd = fds
    server = os.getpid()
    try:
        pid = os.fork()
    except OSError as exc:
        os.close(sock_fd)
        os.close(err_fd)
        control.send(ENCODER.encode(SpawnFailed(request.req, f"fork failed: {exc}")))
        return
    if pid == 0:  # the child: shed the server's state, then become the plugin host
        try:
            selector, wake_r, wake_w = inherited
            signal.set_wakeup_fd(-1)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            selector.close()
            os.close(wake_r)
            os.close(wake_w)
            control.close()
            os.setpgid(0, 0)
            set_parent_death_signal(server)
            os.dup2(err_fd, 2)
            os.close(err_fd)
            run_child(sock_fd, request.launch)
        finally:
            os._exit(70)
    os.close(sock_fd)
    os.close(err_fd)
    children.add(pid)
    control.send(ENCODER.encode(Spawned(request.req, pid)))
