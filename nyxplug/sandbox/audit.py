"""Enforcing a guard while plugin code runs: one PEP 578 audit hook (SPEC 7).

A ``ContextVar`` holds the active ``SandboxGuard``. The dispatcher calls
``enter_guard`` once at the start of each plugin's worker task; asyncio gives every
task its own copy of the context, so every handler call of that task, and every task
it spawns, is attributed to that plugin at no per-frame cost. One process-wide hook,
installed the first time a guard is entered, asks the active guard about:

* ``open`` (``open()``, ``io.open``, ``os.open``; a write is a mode with ``w``, ``a``,
  ``x`` or ``+``, or flags with ``O_WRONLY|O_RDWR|O_CREAT|O_TRUNC|O_APPEND``);
* reads ``os.listdir``, ``os.scandir``;
* writes ``os.remove``, ``os.rename`` (both paths), ``os.mkdir``, ``os.rmdir``,
  ``os.truncate``, ``os.chmod``, ``os.chown``, ``os.utime``, ``os.symlink`` (the new
  link), ``os.link`` (both paths: a hard link shares its target), ``os.setxattr``,
  ``os.removexattr``, ``shutil.rmtree``;
* ``socket.connect``, ``socket.sendto``, ``socket.sendmsg``: the host of an
  ``AF_INET``/``AF_INET6`` address; a Unix socket path is a file, so it needs write
  access to that path; an abstract Unix name (leading NUL) counts as the host ``@name``.

A refusal adds 1 to ``guard.violations`` and raises ``SandboxViolation`` out of the
audited call. Files the import system and ``linecache`` open on their own behalf
(modules, bytecode caches, source lines for tracebacks) and the directory walk inside
a ``shutil.rmtree`` that was itself allowed are not checked. The hook cannot be
removed, so with no guard active it costs one ``ContextVar.get()`` per audit event.

What this cannot stop - it is guard rails for honest plugins, not a security boundary
(CPython's own documentation says audit hooks cannot be a sandbox):

* native code doing its own I/O: C extensions (uvloop's ``create_connection`` connects
  inside libuv; ``sqlite3`` opens its files itself) and ``ctypes`` calls into libc;
* other programs: ``os.system``, ``subprocess``, ``os.exec*``, ``os.posix_spawn``;
* file descriptors and sockets opened before the guard was entered or outside it;
  ``os.mkfifo``/``os.mknod`` (no audit event); ``bind``/``listen``; DNS lookups;
* threads started with ``threading.Thread`` or ``loop.run_in_executor`` (they begin
  with an empty context; ``asyncio.to_thread`` copies it and stays guarded);
* code that means to escape: it can clear the ``ContextVar``, or reach the guard
  through ``gc`` and change it.

Known gaps of the checks themselves: a name in ``network_allowlist`` matches only
when the connect call is given that name - code that resolves first
(``socket.create_connection``, asyncio's ``create_connection``) connects to an
address, which then has to be allowed as such. ``dir_fd`` paths and fd-based writes
(``os.fchmod``) resolve through ``/proc/self/fd`` (elsewhere they are refused when a
``filesystem_allowlist`` applies); the ``open`` event carries no ``dir_fd``, so
``os.open(name, dir_fd=fd)`` is judged relative to the working directory.
``memory_limit`` is not measured: ``check_memory`` is there for code that asks.

Untrusted code needs out-of-process isolation (a child process with kernel-enforced
limits), not this module.
"""

from __future__ import annotations

import contextlib
import linecache
import os
import shutil
import sys
import threading
import tokenize
from collections.abc import Callable, Iterator
from contextvars import ContextVar, Token
from types import CodeType, FrameType
from typing import Any

from .._errors import SandboxViolation
from .guard import SandboxGuard

__all__ = ("current_guard", "enter_guard", "guarded", "unguarded")

_Check = Callable[[SandboxGuard, tuple[Any, ...]], str | None]

#: The guard of the code running now; None outside any plugin.
_ACTIVE: ContextVar[SandboxGuard | None] = ContextVar("nyxplug_sandbox_guard", default=None)

_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
_WRITE_MODES = frozenset("wax+")
#: Where an fd's path can be read back (Linux); elsewhere such paths resolve to nothing allowed.
_FD_DIR = "/proc/self/fd"

# Callers whose file access is the interpreter's, not the plugin's (see the module doc).
_INTERPRETER_FILES = frozenset(
    {
        "<frozen importlib._bootstrap>",
        "<frozen importlib._bootstrap_external>",
        "<frozen zipimport>",
    }
)
_INTERPRETER_CODES = frozenset(
    func.__code__
    for func in (
        linecache.updatecache,
        getattr(shutil, "_rmtree_safe_fd", None),  # walks below a checked rmtree by dir_fd
    )
    if func is not None
)
#: Frames that only pass a call on (linecache reads through tokenize.open).
_RELAYS = frozenset({tokenize.open.__code__})


def current_guard() -> SandboxGuard | None:
    """The guard checking the code that calls this, or None."""
    return _ACTIVE.get()


def enter_guard(guard: SandboxGuard | None) -> Token[SandboxGuard | None]:
    """Check everything the current context runs from now on against ``guard``.

    Meant for the first line of a plugin's worker task: the task's context is its
    own, so nothing else is affected. ``None`` stops checking. Returns the token
    that ``ContextVar.reset`` takes, for callers that want to undo it.
    """
    if guard is not None and not isinstance(guard, SandboxGuard):
        raise TypeError(
            f"Expected `guard` to be a SandboxGuard or None, got {type(guard).__name__}"
        )
    _install_hook()
    return _ACTIVE.set(guard)


@contextlib.contextmanager
def guarded(guard: SandboxGuard | None) -> Iterator[SandboxGuard | None]:
    """Check the body of the ``with`` against ``guard`` (sync code, tests); None: unchecked."""
    token = enter_guard(guard)
    try:
        yield guard
    finally:
        _ACTIVE.reset(token)


@contextlib.contextmanager
def unguarded() -> Iterator[None]:
    """Run the body unchecked: for the runtime's own work inside a plugin's task (logging)."""
    token = _ACTIVE.set(None)
    try:
        yield
    finally:
        _ACTIVE.reset(token)


# -- the hook ----------------------------------------------------------------------

_hook_lock = threading.Lock()
_hook_installed = False


def _install_hook() -> None:
    global _hook_installed
    if _hook_installed:
        return
    with _hook_lock:
        if not _hook_installed:
            sys.addaudithook(_audit)
            _hook_installed = True


def _audit(event: str, args: tuple[Any, ...]) -> None:
    guard = _ACTIVE.get()
    if guard is None:
        return
    check = _CHECKS.get(event)
    if check is None:
        return
    # Our own work (realpath, fspath, _getframe) must not be checked again.
    token = _ACTIVE.set(None)
    try:
        detail = check(guard, args)
        if detail is not None and _for_interpreter(sys._getframe(1)):
            detail = None
    finally:
        _ACTIVE.reset(token)
    if detail is not None:
        guard.violations += 1
        raise SandboxViolation(guard.plugin_id, None, detail, guard.info)


def _for_interpreter(frame: FrameType | None) -> bool:
    """Whether the Python code behind the event is the import system or linecache."""
    if frame is not None and frame.f_code in _RELAYS:
        frame = frame.f_back
    if frame is None:
        return False
    code: CodeType = frame.f_code
    return code in _INTERPRETER_CODES or code.co_filename in _INTERPRETER_FILES


# -- one check per event -----------------------------------------------------------


def _arg(args: tuple[Any, ...], index: int | None) -> Any:
    return args[index] if index is not None and index < len(args) else None


def _path(target: object, dir_fd: object = None, *, fd_ok: bool = False) -> str | None:
    """``target`` as a str path; an fd is None (already open) or, with ``fd_ok``, its path."""
    if isinstance(target, int):
        return f"{_FD_DIR}/{target}" if fd_ok else None
    if isinstance(target, str):
        path = target
    elif isinstance(target, bytearray):
        path = os.fsdecode(bytes(target))
    elif isinstance(target, (bytes, os.PathLike)):
        try:
            path = os.fsdecode(os.fspath(target))
        except TypeError:
            return None  # a broken PathLike: the operation fails by itself
    else:
        return None
    if isinstance(dir_fd, int) and dir_fd >= 0 and not os.path.isabs(path):
        path = f"{_FD_DIR}/{dir_fd}/{path}"
    return path


def _on_open(guard: SandboxGuard, args: tuple[Any, ...]) -> str | None:
    path = _path(_arg(args, 0))
    if path is None:
        return None
    mode, flags = _arg(args, 1), _arg(args, 2)
    write = (isinstance(flags, int) and flags & _WRITE_FLAGS != 0) or (
        isinstance(mode, str) and not _WRITE_MODES.isdisjoint(mode)
    )
    return guard._path_refusal(path, write, "write to" if write else "read of")


def _read_dir(event: str) -> _Check:
    action = f"{event} of"

    def check(guard: SandboxGuard, args: tuple[Any, ...]) -> str | None:
        target = _arg(args, 0)
        path = _path("." if target is None else target)
        return None if path is None else guard._path_refusal(path, False, action)

    return check


def _write(event: str, index: int, dir_fd: int | None, *, fd_ok: bool = False) -> _Check:
    action = f"{event} of"

    def check(guard: SandboxGuard, args: tuple[Any, ...]) -> str | None:
        path = _path(_arg(args, index), _arg(args, dir_fd), fd_ok=fd_ok)
        return None if path is None else guard._path_refusal(path, True, action)

    return check


def _write_two(event: str, src: int | None, dst: int, src_fd: int | None, dst_fd: int) -> _Check:
    """Events naming a source and a destination (rename, link; symlink has no real source)."""
    src_action, dst_action = f"{event} of", f"{event} to"

    def check(guard: SandboxGuard, args: tuple[Any, ...]) -> str | None:
        if src is not None:
            path = _path(_arg(args, src), _arg(args, src_fd))
            if path is not None:
                detail = guard._path_refusal(path, True, src_action)
                if detail is not None:
                    return detail
        path = _path(_arg(args, dst), _arg(args, dst_fd))
        return None if path is None else guard._path_refusal(path, True, dst_action)

    return check


def _socket(action: str) -> _Check:
    def check(guard: SandboxGuard, args: tuple[Any, ...]) -> str | None:
        address = _arg(args, 1)
        if address is None:
            return None  # sendmsg on a connected socket: the connect was checked
        if isinstance(address, (bytes, bytearray)):
            address = os.fsdecode(bytes(address))
        if isinstance(address, str):  # AF_UNIX
            if address.startswith("\x00"):
                return guard._connect_refusal(("@" + address[1:],), action)
            if not address:
                return None  # autobind: nothing is reached
            return guard._path_refusal(address, True, action)
        if isinstance(address, tuple):
            return guard._connect_refusal(address, action)
        return guard._connect_refusal((repr(address),), action)

    return check


_CHECKS: dict[str, _Check] = {
    "open": _on_open,
    "os.listdir": _read_dir("os.listdir"),
    "os.scandir": _read_dir("os.scandir"),
    "os.remove": _write("os.remove", 0, 1),
    "os.rmdir": _write("os.rmdir", 0, 1),
    "os.mkdir": _write("os.mkdir", 0, 2),
    "os.truncate": _write("os.truncate", 0, None, fd_ok=True),
    "os.chmod": _write("os.chmod", 0, 2, fd_ok=True),
    "os.chown": _write("os.chown", 0, 3, fd_ok=True),
    "os.utime": _write("os.utime", 0, 3, fd_ok=True),
    "os.setxattr": _write("os.setxattr", 0, None, fd_ok=True),
    "os.removexattr": _write("os.removexattr", 0, None, fd_ok=True),
    "shutil.rmtree": _write("shutil.rmtree", 0, 1),
    "os.rename": _write_two("os.rename", 0, 1, 2, 3),
    "os.link": _write_two("os.link", 0, 1, 2, 3),
    "os.symlink": _write_two("os.symlink", None, 1, None, 2),
    "socket.connect": _socket("connect to"),
    "socket.sendto": _socket("send to"),
    "socket.sendmsg": _socket("send to"),
}
