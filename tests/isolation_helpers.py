"""The hostile helper plugin for the isolation tests, and small utilities around it.

``HELPER_SOURCE`` is one plugin module (``class Entry``) whose behaviour comes from
``ctx.config["mode"]``; the fault fires on frame ``ctx.config["n"]`` (1-based).
Everything it observes inside the child is returned by ``export_state()``, which the
tests read with ``await plugin._call("export_state")``.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import os
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from nyxplug import FrameType, Permission, PluginHeader
from nyxplug._info import PluginInfo
from nyxplug.isolation import IsolatedPlugin, IsolationOptions, IsolationStats
from nyxplug.isolation.launch import ForkServer

HELPER_SOURCE = '''
"""nyxplug isolation test helper: misbehaves on purpose, records what it saw."""

import asyncio
import ctypes
import errno
import os
import socket
import stat
import struct
import time


def _err(exc):
    return f"{type(exc).__name__}:{errno.errorcode.get(exc.errno, exc.errno)}"


def spin_forever_in_helper():
    """The hang: a sync busy loop that blocks the child's event loop (no pongs)."""
    spins = 0
    while True:
        spins += 1


class Entry:
    def __init__(self):
        self.count = 0
        self.payloads = []
        self.result = {}

    async def on_load(self, ctx):
        self.mode = ctx.config.get("mode", "echo")
        self.n = int(ctx.config.get("n", 1))
        self.config = ctx.config
        after = ctx.config.get("slow_load_after")  # a wall-clock time: later starts are slow
        if after is not None and time.time() >= after:
            await asyncio.sleep(float(ctx.config["load_seconds"]))

    def export_state(self):
        if "state_mib" in self.config:  # a legitimately large state
            return {"blob": b"x" * (int(self.config["state_mib"]) << 20)}
        return {"count": self.count, "payloads": self.payloads, **self.result}

    async def handle(self, message):
        self.count += 1
        self.payloads.append(bytes(message.payload))
        mode = self.mode
        if mode == "raise":
            raise ValueError(f"helper refuses frame {self.count}")
        if mode == "reply":
            return self.reply(bytes(message.payload))
        if mode == "slow":
            await asyncio.sleep(float(self.config["seconds"]))
            return
        if mode == "echo" or self.count != self.n:
            return
        action = getattr(self, "do_" + mode)
        result = action()
        if asyncio.iscoroutine(result):
            await result

    def reply(self, payload):
        """Requests' answers by payload: a reply, none, an error, 2 MiB, a crash."""
        if payload == b"none":
            return None
        if payload == b"boom":
            raise ValueError("boom on request")
        if payload == b"big":
            return b"x" * (2 << 20)
        if payload == b"crash":
            os._exit(3)
        return b"re:" + payload

    # -- the faults, each on frame n ---------------------------------------------

    def do_crash_on(self):
        os._exit(3)

    def do_segfault(self):
        ctypes.string_at(0)

    def do_hang(self):
        spin_forever_in_helper()

    def do_alloc(self):
        chunks = []
        size = 64 << 20
        cap = int(self.config.get("cap_mib", 2048)) << 20
        try:
            while len(chunks) * size < cap:
                chunks.append(bytearray(size))  # zero-filled: every page is touched
            outcome = "cap"
        except MemoryError:
            outcome = "MemoryError"
        held = len(chunks)
        chunks.clear()
        self.result["alloc"] = {"outcome": outcome, "chunks": held}

    def do_fork_bomb(self):
        forked, error = 0, None
        for _ in range(int(self.config.get("forks", 64))):
            try:
                pid = os.fork()
            except OSError as exc:
                error = _err(exc)
                break
            if pid == 0:
                os._exit(0)
            forked += 1  # not reaped: the test counts them (zombies) as our children
        self.result["fork"] = {"forked": forked, "error": error}

    def do_forbidden_file(self):
        outcome = {}
        try:
            with open("/etc/passwd", "rb") as f:
                f.read(1)
            outcome["read"] = "ok"
        except OSError as exc:
            outcome["read"] = _err(exc)
        path = f"/tmp/nyxplug-isolation-probe-{os.getpid()}"
        try:
            with open(path, "wb") as f:
                f.write(b"written from an isolated child")
            outcome["write"] = "ok"
            os.unlink(path)
        except OSError as exc:
            outcome["write"] = _err(exc)
        self.result["files"] = outcome

    def do_connect_out(self):
        sock = None
        try:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.settimeout(2.0)  # loopback answers at once; never long enough to look hung
            sock.connect((self.config["host"], int(self.config["port"])))
            outcome = "connected"
        except OSError as exc:
            outcome = _err(exc)
        finally:
            if sock is not None:
                sock.close()
        self.result["connect"] = outcome

    def do_connect_unix(self):
        """Reach the pathname Unix sockets the test made reachable (stream and datagram)."""
        outcome = {}
        for kind, path in (("stream", self.config["stream"]), ("dgram", self.config["dgram"])):
            sock = None
            try:
                sock = socket.socket(
                    socket.AF_UNIX, socket.SOCK_STREAM if kind == "stream" else socket.SOCK_DGRAM
                )
                if kind == "stream":
                    sock.connect(path)
                    sock.sendall(b"escaped")
                else:
                    sock.sendto(b"escaped", path)
                outcome[kind] = "reached"
            except OSError as exc:
                outcome[kind] = _err(exc)
            finally:
                if sock is not None:
                    sock.close()
        try:  # a datagram socketpair could sendto() a path: it must not be made either
            pair = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
            pair[0].sendto(b"escaped", self.config["dgram"])
            outcome["dgram_pair"] = "reached"
        except OSError as exc:
            outcome["dgram_pair"] = _err(exc)
        self.result["unix"] = outcome

    def do_garbage(self):
        self.result["garbage_fds"] = self._write_to_host(b"\\xff" * 64)

    def do_stray_result(self):
        """A RESULT for a request the host never asked about (batch 999)."""
        self._write_to_host(struct.pack("<IBQIB", 14, 7, 999, 0, 1))

    def do_nested_reply(self):
        """A REPLY whose value nests 200,000 arrays deep (valid msgpack, hostile depth)."""
        depth = 200_000
        body = bytes([5]) + b"\\x93\\x01" + b"\\x91" * depth + b"\\xc0\\xa0"
        self._write_to_host(struct.pack("<I", len(body)) + body)

    def _write_to_host(self, data):
        me = os.getpid()
        written = []
        for name in os.listdir("/proc/self/fd"):
            fd = int(name)
            try:
                if not stat.S_ISSOCK(os.fstat(fd).st_mode):
                    continue
                probe = socket.socket(fileno=os.dup(fd))
                try:
                    cred = probe.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
                finally:
                    probe.close()
                if struct.unpack("3i", cred)[0] == me:
                    continue  # a socketpair this process made itself (its loop's), not the host's
                os.write(fd, data)
                written.append(fd)
            except OSError:
                continue
        return written

    async def do_resolve(self):
        loop = asyncio.get_running_loop()
        try:
            await asyncio.wait_for(loop.getaddrinfo(self.config.get("name", "localhost"), 80), 2)
            outcome = "resolved"
        except Exception as exc:  # gaierror, a refused thread, a timeout: all fine here
            outcome = type(exc).__name__
        self.result["resolve"] = outcome

    def do_env(self):
        fds = {}
        for name in os.listdir("/proc/self/fd"):
            try:
                fds[name] = os.readlink(f"/proc/self/fd/{name}")
            except OSError:
                pass
        self.result["env"] = dict(os.environ)
        self.result["fds"] = fds
        self.result["uid"] = os.getuid()
'''

DATA = int(FrameType.DATA)
PLUGIN_ID = 7
NAME = "helper"
EVENT_TIMEOUT = 10.0

#: Small heartbeats and backoff so faults are found and handled within a second.
FAST = IsolationOptions(
    heartbeat_interval=0.05,
    heartbeat_timeout=0.3,
    restart_backoff=0.01,
    max_restarts=2,
    start_timeout=10,
)


def make_plugin(
    mode: str,
    *,
    options: IsolationOptions = FAST,
    handler_timeout: float | None = None,
    on_failed: Callable[[str], None] | None = None,
    on_timeouts: Callable[[int], None] | None = None,
    hello_protocol: int | None = None,
    pending_replies: Callable[[], Any] | None = None,
    **config: Any,
) -> IsolatedPlugin:
    """An ``IsolatedPlugin`` running the helper in ``mode`` (extra config keys as given)."""
    return IsolatedPlugin(
        name=NAME,
        plugin_id=PLUGIN_ID,
        version="1.0.0",
        entry_module="helper",
        entry_attr="Entry",
        files={"helper.py": HELPER_SOURCE.encode()},
        config={"mode": mode, **config},
        handler_timeout=handler_timeout,
        options=options,
        on_failed=on_failed,
        on_timeouts=on_timeouts,
        hello_protocol=hello_protocol,
        pending_replies=pending_replies,
    )


class Run:
    """An isolated helper loaded on a dispatcher, and the child pids it has had."""

    def __init__(self, plugin: IsolatedPlugin, dispatcher: Any) -> None:
        self.plugin = plugin
        self.dispatcher = dispatcher
        self.pids: list[int] = []
        self.note_pid()

    def note_pid(self) -> int | None:
        pid = self.plugin.pid
        if pid is not None and pid not in self.pids:
            self.pids.append(pid)
        return pid

    def send_nowait(self, *payloads: bytes) -> None:
        """Queue frames without yielding: the worker then takes them as one batch."""
        header = PluginHeader(PLUGIN_ID).encode()
        for payload in payloads:
            self.dispatcher.dispatch_nowait(DATA, header, payload)

    async def send(self, *payloads: bytes) -> None:
        """Queue the frames as one batch and wait until the plugin handled (or lost) it."""
        self.send_nowait(*payloads)
        await self.idle()

    async def idle(self) -> None:
        async with asyncio.timeout(EVENT_TIMEOUT):
            await self.dispatcher.wait_idle(PLUGIN_ID)
        self.note_pid()

    async def state(self) -> dict[str, Any]:
        """What the helper recorded in its (current) child."""
        value = await self.plugin._call("export_state")
        assert isinstance(value, dict)
        return value

    def plugin_stats(self) -> Any:
        return self.dispatcher.plugin_stats(PLUGIN_ID)

    def stats(self) -> IsolationStats:
        return self.plugin.stats()

    def check_ledger(self) -> IsolationStats:
        return check_ledger(self.plugin.stats(), self.plugin_stats())

    async def unload(self) -> None:
        if self.dispatcher.is_loaded(PLUGIN_ID):
            await self.dispatcher.unload_plugin(PLUGIN_ID)
        await self.plugin.on_unload()


def check_ledger(stats: IsolationStats, plugin_stats: Any = None) -> IsolationStats:
    """Both ledger identities of an isolated plugin at a quiet moment."""
    assert stats.frames_sent == stats.frames_completed + stats.lost_to_crash + stats.in_child, stats
    assert stats.in_child >= 0, stats
    if plugin_stats is not None:
        # One frame, one truth: both records count the same frames and the same failures.
        assert plugin_stats.messages_processed == stats.frames_sent + stats.refused, (
            plugin_stats,
            stats,
        )
        assert plugin_stats.errors == stats.failed_batches, (plugin_stats, stats)
    return stats


@contextlib.asynccontextmanager
async def running(
    impl: Any, mode: str, *, capacity: int = 100, **kwargs: Any
) -> AsyncIterator[Run]:
    """Start the helper's child and load it on ``impl.Dispatcher()``; stop both after."""
    before = spawned_processes()
    cgroups_before = set(leftover_cgroups())
    dispatcher = impl.Dispatcher()
    plugin = make_plugin(
        mode, pending_replies=lambda: dispatcher._pending_replies(PLUGIN_ID), **kwargs
    )
    await plugin.on_load(None)
    run = Run(plugin, dispatcher)
    try:
        await dispatcher.load_plugin(
            PluginInfo(PLUGIN_ID, NAME, Permission.DATA_ACCESS), plugin, capacity=capacity
        )
        yield run
    finally:
        try:
            if dispatcher.is_loaded(PLUGIN_ID):
                await dispatcher.unload_plugin(PLUGIN_ID, drain=False)
            await dispatcher.aclose()
        finally:
            await plugin.aclose()
    for pid in run.pids:
        assert pid_gone(pid), f"child {pid} outlived its plugin: {process_state(pid)}"
    # Every child of every generation (and whatever they forked) is gone; the fork server
    # reaps reparented grandchildren a moment after their parent died.
    await wait_for(lambda: spawned_processes() <= before)
    left = set(leftover_cgroups()) - cgroups_before
    assert not left, f"a child's cgroup outlived it: {sorted(left)}"


def leftover_cgroups() -> list[str]:
    """Cgroups the host made for children of this process that exist now (v1 or v2, nested)."""
    return sorted(glob.glob(f"/sys/fs/cgroup/**/nyxplug/*-{os.getpid()}-*", recursive=True))


def open_fds() -> dict[int, str]:
    """This process's open file descriptors and what each points at."""
    fds = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            fds[int(name)] = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            pass  # the listing's own fd, closed by now
    return fds


def pid_gone(pid: int) -> bool:
    """The process is gone and reaped (a zombie still counts as left behind)."""
    return not os.path.exists(f"/proc/{pid}")


def process_state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0].decode()
    except (OSError, IndexError):
        return "gone"


def spawned_processes() -> set[int]:
    """Processes whose parent is this process or the fork server (where children live)."""
    parents = [os.getpid()]
    server = ForkServer.running()
    if server is not None and server.pid is not None:
        parents.append(server.pid)
    found: set[int] = set()
    for parent in parents:
        found.update(children_of(parent))
    if server is not None:
        found.discard(server.proc.pid)
    return found


def children_of(pid: int) -> list[int]:
    """Pids whose parent is ``pid`` (zombies included), from /proc/*/stat."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(name))
    return sorted(found)


async def wait_for(condition: Callable[[], object], timeout: float = 5.0) -> None:
    """Poll ``condition`` every 10 ms (for state no event announces), up to ``timeout``."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition not met within {timeout} s")
        await asyncio.sleep(0.01)  # ok-sleep: a bounded poll for state no event announces


def layer_details(plugin: IsolatedPlugin) -> str:
    """Every layer the child reported, for skip and failure messages."""
    report = plugin.report
    if report is None:
        return "no report"
    return "; ".join(
        f"{x.name}={'applied' if x.applied else 'missing'} ({x.detail})" for x in report.layers
    )
