"""Starting isolated children from the host: through the fork server, or one exec each.

Either way the host gets a ``ChildProcess``: its pid, a future that resolves with
the wait status the moment it ends, the tail of its stderr (where faulthandler
writes stacks), and a way to kill it and everything it started.
"""

from __future__ import annotations

import asyncio
import atexit
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import Callable
from typing import Any

import msgspec

from .child import Launch
from .errors import IsolationError
from .forkserver import ENCODER, SERVER_DECODER, Exit, Ready, Spawn, Spawned, SpawnFailed

__all__ = ("ChildProcess", "ForkServer", "child_environment", "describe_status", "spawn_child")

#: Bytes of a child's stderr kept (the end of it: the last stack dump, the last traceback).
STDERR_TAIL = 32 * 1024
HOST_MODULE = "nyxplug.host"


def child_environment() -> dict[str, str]:
    """The whole environment a child gets: no secrets, no PYTHON* switches of the host's."""
    return {"PATH": os.defpath, "LANG": "C.UTF-8", "MALLOC_ARENA_MAX": "2"}


def host_command(*args: str) -> list[str]:
    return [sys.executable, "-I", "-B", "-m", HOST_MODULE, *args]


def describe_status(status: int) -> str:
    """A wait status in words: "exited with code 3", "was killed by SIGSEGV (segfault)"."""
    if os.WIFEXITED(status):
        return f"exited with code {os.WEXITSTATUS(status)}"
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = f"signal {sig}"
        extra = {
            int(signal.SIGSEGV): " (segmentation fault)",
            int(signal.SIGXCPU): " (CPU time limit)",
            int(signal.SIGABRT): " (abort)",
            int(signal.SIGBUS): " (bus error)",
        }.get(sig, "")
        return f"was killed by {name}{extra}"
    return f"ended with wait status {status}"


class ChildProcess:
    """One running child as the host sees it."""

    def __init__(self, pid: int, stderr_fd: int, loop: asyncio.AbstractEventLoop) -> None:
        self.pid = pid
        self.loop = loop
        self.exited: asyncio.Future[int] = loop.create_future()
        self._stderr_fd = stderr_fd
        self._stderr = bytearray()
        self._stderr_waiters: list[tuple[bytes, asyncio.Future[None]]] = []
        os.set_blocking(stderr_fd, False)
        loop.add_reader(stderr_fd, self._read_stderr)
        try:
            self._pidfd: int | None = os.pidfd_open(pid)
        except (OSError, AttributeError):
            self._pidfd = None

    @property
    def stderr(self) -> str:
        """The end of what the child wrote to stderr."""
        return self._stderr.decode("utf-8", "replace")

    def _read_stderr(self) -> None:
        try:
            data = os.read(self._stderr_fd, 65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.loop.remove_reader(self._stderr_fd)
            return
        self._stderr += data
        if len(self._stderr) > STDERR_TAIL:
            del self._stderr[: len(self._stderr) - STDERR_TAIL]
        for marker, waiter in list(self._stderr_waiters):
            if marker in self._stderr and not waiter.done():
                waiter.set_result(None)

    async def wait_stderr(self, marker: bytes, timeout: float) -> bool:
        """Wait until ``marker`` appears in the stderr tail (e.g. a stack dump's end)."""
        if marker in self._stderr:
            return True
        waiter: asyncio.Future[None] = self.loop.create_future()
        entry = (marker, waiter)
        self._stderr_waiters.append(entry)
        try:
            async with asyncio.timeout(timeout):
                await waiter
            return True
        except TimeoutError:
            return False
        finally:
            self._stderr_waiters.remove(entry)

    def send_signal(self, sig: int) -> None:
        """Signal the child, never a process that reused its pid once it is gone."""
        if self.exited.done():
            return
        try:
            if self._pidfd is not None:
                signal.pidfd_send_signal(self._pidfd, sig)
            else:
                os.kill(self.pid, sig)
        except ProcessLookupError:
            pass

    def kill(self) -> None:
        """SIGKILL the child and its process group (whatever it forked)."""
        if self.exited.done():
            return
        self.send_signal(signal.SIGKILL)
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except OSError:
            pass

    def set_exit(self, status: int) -> None:
        if not self.exited.done():
            self.exited.set_result(status)

    def close(self) -> None:
        """Release the host's fds once the child is gone."""
        if self._stderr_fd >= 0:
            self._read_stderr_rest()
            self.loop.remove_reader(self._stderr_fd)
            os.close(self._stderr_fd)
            self._stderr_fd = -1
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None

    def _read_stderr_rest(self) -> None:
        for _ in range(8):
            try:
                data = os.read(self._stderr_fd, 65536)
            except OSError:
                return
            if not data:
                return
            self._stderr += data
        if len(self._stderr) > STDERR_TAIL:
            del self._stderr[: len(self._stderr) - STDERR_TAIL]


async def spawn_child(launch: Launch, *, mode: str) -> tuple[ChildProcess, socket.socket]:
    """Start a child for ``launch``; returns it and the host's end of its socket."""
    parent_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    err_r, err_w = os.pipe2(os.O_CLOEXEC)
    loop = asyncio.get_running_loop()
    try:
        if mode == "exec":
            child = _exec_child(launch, child_end, err_w, err_r, loop)
        elif mode == "fork-server":
            child = await ForkServer.get().spawn(launch, child_end.fileno(), err_w, err_r, loop)
        else:
            raise ValueError(f"Expected spawn mode 'fork-server' or 'exec', got {mode!r}")
    except BaseException:
        parent_end.close()
        os.close(err_r)
        raise
    finally:
        child_end.close()
        os.close(err_w)
    parent_end.setblocking(False)
    return child, parent_end


def _exec_child(
    launch: Launch,
    child_end: socket.socket,
    err_w: int,
    err_r: int,
    loop: asyncio.AbstractEventLoop,
) -> ChildProcess:
    fd = child_end.fileno()
    proc = subprocess.Popen(
        host_command("--fd", str(fd)),
        stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=err_w, pass_fds=(fd,),
        env=child_environment(), start_new_session=True, close_fds=True,
    )  # fmt: skip
    assert proc.stdin is not None
    data = msgspec.msgpack.encode(launch)
    try:
        proc.stdin.write(struct.pack("<I", len(data)) + data)
        proc.stdin.close()
    except BrokenPipeError:
        pass
    child = ChildProcess(proc.pid, err_r, loop)
    _watch_exit(child, proc, loop)
    return child


def _watch_exit(child: ChildProcess, proc: subprocess.Popen[bytes], loop: Any) -> None:
    """Reap an exec'd child the moment it ends (its pidfd turns readable)."""
    pidfd = os.pidfd_open(proc.pid)

    def reaped() -> None:
        try:
            pid, status = os.waitpid(proc.pid, os.WNOHANG)
        except ChildProcessError:
            pid, status = proc.pid, 0
        if pid == 0:
            return
        loop.remove_reader(pidfd)
        os.close(pidfd)
        proc.returncode = os.waitstatus_to_exitcode(status)
        child.set_exit(status)

    loop.add_reader(pidfd, reaped)


class ForkServer:
    """The host's handle on its fork server (one per host process, started on first use)."""

    _instance: ForkServer | None = None
    _instance_lock = threading.Lock()

    def __init__(self) -> None:
        self.control, server_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._lock = threading.Lock()
        self._req = 0
        self._pending: dict[int, tuple[asyncio.AbstractEventLoop, asyncio.Future[int]]] = {}
        self._children: dict[int, ChildProcess] = {}
        self._early_exits: dict[int, int] = {}
        self._abandoned: set[int] = set()  # spawned after their requester gave up
        self.ready = threading.Event()
        self.pid: int | None = None
        self.alive = True
        # The server is started by its own reader thread, which lives exactly as long as
        # the server: Linux's parent-death signal (the server's tie to the host) fires when
        # the *thread* that forked it ends, so a server started from a host's loop thread
        # would die with that loop.
        started: list[subprocess.Popen[bytes] | BaseException] = []
        launched = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(server_end, started, launched), name="nyxplug-forkserver",
            daemon=True,
        )  # fmt: skip
        self._thread.start()
        launched.wait()
        if isinstance(started[0], BaseException):
            self.alive = False
            self.control.close()
            raise started[0]
        self.proc = started[0]

    def _run(
        self,
        server_end: socket.socket,
        started: list[subprocess.Popen[bytes] | BaseException],
        launched: threading.Event,
    ) -> None:
        """The reader thread: start the server, then serve it until it is gone."""
        fd = server_end.fileno()
        try:
            started.append(subprocess.Popen(
                host_command("--fork-server", "--fd", str(fd)),
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, pass_fds=(fd,),
                env=child_environment(), start_new_session=True, close_fds=True,
            ))  # fmt: skip
        except BaseException as exc:
            started.append(exc)
            return
        finally:
            server_end.close()
            launched.set()
        self._read()

    @classmethod
    def get(cls) -> ForkServer:
        """The running fork server, started (or restarted, if it died) now."""
        with cls._instance_lock:
            server = cls._instance
            if server is None or not server.alive:
                server = cls._instance = ForkServer()
                atexit.register(server.close)
            return server

    @classmethod
    def running(cls) -> ForkServer | None:
        return cls._instance if cls._instance is not None and cls._instance.alive else None

    async def spawn(
        self, launch: Launch, sock_fd: int, err_w: int, err_r: int, loop: asyncio.AbstractEventLoop
    ) -> ChildProcess:
        future: asyncio.Future[int] = loop.create_future()
        with self._lock:
            self._req += 1
            req = self._req
            self._pending[req] = (loop, future)
        try:
            socket.send_fds(self.control, [ENCODER.encode(Spawn(req, launch))], [sock_fd, err_w])
        except OSError as exc:
            self._pending.pop(req, None)
            raise IsolationError(
                f"the fork server is gone ({exc}); it restarts on next use"
            ) from exc
        pid = await future
        child = ChildProcess(pid, err_r, loop)
        with self._lock:
            self._children[pid] = child
            status = self._early_exits.pop(pid, None)
        if status is not None:
            child.set_exit(status)
        return child

    def _read(self) -> None:
        """The reader thread: replies and exits, handed to the loop that waits for them."""
        try:
            while True:
                data = self.control.recv(65536)
                if not data:
                    break
                try:
                    message = SERVER_DECODER.decode(data)
                except (msgspec.DecodeError, msgspec.ValidationError):
                    continue
                if isinstance(message, Ready):
                    self.pid = message.pid
                    self.ready.set()
                elif isinstance(message, Spawned | SpawnFailed):
                    with self._lock:
                        entry = self._pending.pop(message.req, None)
                    if entry is not None:
                        _resolve(entry, message, self)
                elif isinstance(message, Exit):
                    with self._lock:
                        child = self._children.pop(message.pid, None)
                        if child is None and message.pid in self._abandoned:
                            self._abandoned.discard(message.pid)
                        elif child is None:
                            self._early_exits[message.pid] = message.status
                    if child is not None:
                        _call_soon(child.loop, child.set_exit, message.status)
        except OSError:
            pass
        finally:
            self.alive = False
            self.ready.set()
            with self._lock:
                pending = list(self._pending.values())
                self._pending.clear()
                children = list(self._children.values())
                self._children.clear()
            for entry in pending:
                _resolve(entry, SpawnFailed(-1, "the fork server exited"))
            for child in children:  # the server's death killed them (parent-death signal)
                _call_soon(child.loop, child.set_exit, signal.SIGKILL)

    def abandon(self, pid: int) -> None:
        """Kill a child whose spawn was cancelled before anyone took it; forget its exit."""
        with self._lock:
            if self._early_exits.pop(pid, None) is not None:
                return  # it is gone (and reaped) already
            self._abandoned.add(pid)
        try:
            os.killpg(pid, signal.SIGKILL)
        except OSError:
            pass

    def children(self) -> list[int]:
        """Pids of the children this server runs now."""
        with self._lock:
            return sorted(self._children)

    def close(self) -> None:
        """Stop the server; it kills its children as it goes."""
        self.alive = False
        try:
            self.control.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.control.close()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _resolve(
    entry: tuple[asyncio.AbstractEventLoop, asyncio.Future[int]],
    message: Spawned | SpawnFailed,
    server: ForkServer | None = None,
) -> None:
    loop, future = entry

    def settle() -> None:
        if future.done():
            if isinstance(message, Spawned) and server is not None:
                server.abandon(message.pid)  # its spawn was cancelled: nobody will run it
            return
        if isinstance(message, Spawned):
            future.set_result(message.pid)
        else:
            future.set_exception(IsolationError(f"the fork server could not start a child: "
                                                 f"{message.error}"))  # fmt: skip

    _call_soon(loop, settle)


def _call_soon(loop: asyncio.AbstractEventLoop, fn: Callable[..., Any], *args: Any) -> None:
    try:
        loop.call_soon_threadsafe(fn, *args)
    except RuntimeError:  # that loop is closed: nobody is waiting any more
        pass
