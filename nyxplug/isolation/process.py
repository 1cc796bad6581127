"""The host's side of an isolated plugin: a handler that forwards frames to a child.

To the dispatcher an ``IsolatedPlugin`` is a plugin like any other: it has
``on_load``, ``handle_batch``, ``health`` and ``on_unload``. Behind them it starts a
child, proves it, ships the plugin's bytes, and supervises it: crashes, hangs,
garbage and breached limits end the child; frames that were in it are counted
``lost_to_crash``; it is restarted with exponential backoff until the limit, after
which the plugin is failed.

Ledger (at any quiet moment): ``frames_sent = frames_completed + lost_to_crash +
in_child``, and the dispatcher's ``messages_processed = frames_sent + refused``.

One frame, one truth: a frame lost to a crash was handed to the plugin, so the
dispatcher counts it in ``PluginStats.messages_processed`` and its batch once in
``PluginStats.errors``; ``IsolationStats`` counts the frame in ``lost_to_crash`` (never in
``frames_completed``) and its batch once in ``failed_batches``. ``failed_batches`` counts
every ``handle_batch`` that raised (lost to a crash, a handler that raised or timed out
in the child, refused by a failed plugin), so it equals ``PluginStats.errors``.
"""

from __future__ import annotations

import asyncio
import contextvars
import hmac
import logging
import os
import signal
import time
from collections.abc import Callable
from typing import Any, NoReturn

import msgspec

from .._errors import HandlerError
from . import wire
from .cgroup import Cgroup
from .child import Launch, hello_proof
from .errors import (
    ChildCrashed,
    ChildHandlerError,
    HandshakeFailed,
    IsolatedPluginFailed,
    IsolationError,
    ProtocolViolation,
    ReplyTooLarge,
)
from .launch import ChildProcess, describe_status, spawn_child
from .layers import IsolationReport, Layer
from .options import IsolationOptions, Limits
from .wire import Kind

__all__ = ("IsolatedPlugin", "IsolationStats")

logger = logging.getLogger("nyxplug.isolation")
_ACK = Kind.ACK

#: faulthandler's dump says this once per thread; its arrival means the stack is in.
_STACK_MARKER = b"most recent call first"
_PAGE = os.sysconf("SC_PAGE_SIZE")
_TICKS = os.sysconf("SC_CLK_TCK")
#: Log records a child may send per heartbeat interval before the rest are dropped (counted).
LOG_BUDGET = 200


class IsolationStats(msgspec.Struct, frozen=True, kw_only=True):
    """An isolated plugin's child, its faults and its ledger, at the moment of the call."""

    state: str  # "starting", "running", "restarting", "failed", "stopped"
    pid: int | None
    #: The isolation layers the current (or last) child reported.
    layers: tuple[Layer, ...] = ()
    starts: int = 0
    restarts: int = 0
    crashes: int = 0
    hangs: int = 0
    protocol_violations: int = 0
    limit_breaches: int = 0
    last_crash: str | None = None
    last_stack: str | None = None
    last_limit: str | None = None
    #: Seconds from spawn to the plugin loaded, for the last start.
    start_seconds: float = 0.0
    frames_sent: int = 0
    #: FRAMES messages written (frames_sent / batches_sent = the mean batch).
    batches_sent: int = 0
    frames_completed: int = 0
    #: Frames that were in the child when it died.
    lost_to_crash: int = 0
    #: Frames sent and not yet acknowledged.
    in_child: int = 0
    #: Frames the failed plugin refused (never sent).
    refused: int = 0
    #: Batches whose ``handle_batch`` raised: lost to a crash, a handler error or timeout in
    #: the child, or refused. The dispatcher's ``PluginStats.errors`` for this plugin.
    failed_batches: int = 0
    child_errors: int = 0
    child_timeouts: int = 0
    #: Replies to requests the child refused to send: over ``wire.REPLY_LIMIT`` bytes.
    replies_refused: int = 0
    logs_dropped: int = 0
    #: Sampled from /proc by the host with each heartbeat (the child is not asked).
    cpu_seconds: float = 0.0
    rss_bytes: int = 0
    open_files: int = 0
    queue_depth: int = 0


class _Channel(asyncio.BufferedProtocol):
    """The host's end of one child's socket; every byte read is treated as hostile.

    A buffered protocol: the transport reads into the reader's buffer (asyncio's plain
    ``data_received`` path allocates and frees a 256 KiB buffer per read, which cost more
    than the round trip itself), and an ACK completes its batch's future right here."""

    def __init__(self, child: _Child) -> None:
        self.child = child
        self.reader = wire.MessageReader(wire.CHILD_KINDS, wire.CHILD_MESSAGE_LIMIT)
        self.get_buffer = self.reader.get_buffer  # type: ignore[method-assign]  # one call less per read
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.reader.get_buffer(sizehint)  # (the reader's own is bound in __init__)

    def buffer_updated(self, nbytes: int) -> None:
        child = self.child
        try:
            ack = self.reader.plain_ack(nbytes) if child.greeted else None
            if ack is not None:
                child.on_ack(ack[0], ack[1], ack[2], ack[3], "")
                return
            for kind, body in self.reader.update(nbytes):
                child.on_message(kind, body)
        except ProtocolViolation as exc:
            child.owner.violation(child, exc.detail)
        except Exception as exc:  # whatever else a child's bytes caused is its violation too
            child.owner.violation(child, f"unreadable message ({type(exc).__name__}: {exc})")

    def connection_lost(self, exc: Exception | None) -> None:
        self.child.owner.lost(self.child, "closed its socket")


class _Child:
    """One generation of the plugin's child process and what is outstanding with it."""

    def __init__(self, owner: IsolatedPlugin, process: ChildProcess, secret: bytes,
                 cgroup: Cgroup | None) -> None:  # fmt: skip
        self.loop = loop = asyncio.get_running_loop()
        self.owner = owner
        self.process = process
        self.secret = secret
        self.cgroup = cgroup
        self.channel = _Channel(self)
        self.hello: asyncio.Future[wire.Hello] = loop.create_future()
        self.greeted = False  # its HELLO arrived
        self.loaded: asyncio.Future[wire.Loaded] = loop.create_future()
        #: Batches in the child: seq -> (future of their errors or None, frames, first type)
        self.acks: dict[int, tuple[asyncio.Future[tuple[int, int, str] | None], int, int]] = {}
        self.replies: dict[int, asyncio.Future[wire.Reply]] = {}
        #: Batches holding requests: seq -> (the positions asked, the RESULTs so far)
        self.results: dict[int, tuple[frozenset[int], dict[int, tuple[int, bytes]]]] = {}
        self.seq = 0
        self.ready = False
        self.dead = False
        self.reason: str | None = None  # why the host ended it (hang, garbage, limit)
        self.cause = "crashed"  # how it ended, in words, once it did
        self.started = time.monotonic()
        self.ping_seq = 0
        self.ping_sent: float | None = None
        self.logs = 0
        self.batch = False

    def send(self, data: bytes) -> None:
        transport = self.channel.transport
        if transport is not None and not transport.is_closing():
            transport.write(data)

    def on_message(self, kind: Kind, body: bytes) -> None:
        owner = self.owner
        if kind is _ACK and self.greeted:  # the receipt for a batch: the common case first
            self.on_ack(*wire.decode_ack(body))
        elif kind is Kind.RESULT and self.greeted:  # a request's answer, before its ACK
            seq, index, status, data = wire.decode_result(body)
            asked = self.results.get(seq)
            if asked is None or index not in asked[0] or index in asked[1]:
                raise ProtocolViolation(f"RESULT {seq}/{index} answers no request asked")
            asked[1][index] = (status, data)
        elif not self.greeted:
            if kind is not Kind.HELLO or self.hello.done():
                raise ProtocolViolation(f"Expected HELLO first, got {kind.name}")
            self.hello.set_result(wire.decode(kind, body))
            self.greeted = True
        elif kind is Kind.PONG:
            if wire.decode_seq(kind, body) == self.ping_seq:
                self.ping_sent = None
        elif kind is Kind.LOADED:
            if self.loaded.done():
                raise ProtocolViolation("a second LOADED")
            self.loaded.set_result(wire.decode(kind, body))
        elif kind is Kind.REPLY:
            reply: wire.Reply = wire.decode(kind, body)
            waiter = self.replies.pop(reply.seq, None)
            if waiter is None:
                raise ProtocolViolation(f"REPLY {reply.seq} answers no call")
            if not waiter.done():
                waiter.set_result(reply)
        elif kind is Kind.LOG:
            owner.child_log(self, wire.decode(kind, body))
        else:  # HELLO again
            raise ProtocolViolation(f"unexpected {kind.name}")

    def on_ack(self, seq: int, handled: int, errors: int, timeouts: int, first: str) -> None:
        """A batch's receipt: count it, and wake its sender (``None``: all handled)."""
        entry = self.acks.pop(seq, None)
        if entry is None or handled != entry[1]:
            raise ProtocolViolation(f"ACK {seq} for {handled} frames matches no batch sent")
        future, count, _ = entry
        if not future.done():  # first: its sender resumes after this callback either way
            future.set_result((errors, timeouts, first) if errors or timeouts else None)
        c = self.owner._c  # the ledger
        c["in_child"] -= count
        c["frames_completed"] += count
        if errors or timeouts:
            c["child_errors"] += errors
            c["child_timeouts"] += timeouts

    def next_seq(self) -> int:
        self.seq += 1
        return self.seq


class IsolatedPlugin:
    """A plugin running in a child process, presented to the dispatcher as a handler."""

    def __init__(
        self,
        *,
        name: str,
        plugin_id: int,
        version: str,
        entry_module: str,
        entry_attr: str,
        files: dict[str, bytes],
        config: dict[str, Any] | None = None,
        handler_timeout: float | None = None,
        options: IsolationOptions | None = None,
        on_failed: Callable[[str], None] | None = None,
        on_timeouts: Callable[[int], None] | None = None,
        queue_depth: Callable[[], int] | None = None,
        hello_protocol: int | None = None,
        limits: Limits | None = None,
        memory_required: bool = False,
        pending_replies: Callable[[], dict[Any, Any] | None] | None = None,
    ) -> None:
        """``limits`` (the plugin's own, ``manifest_limits.child_limits``) replace the
        host's ``options.limits``; ``memory_required``: no child starts without a cgroup
        to hold its memory limit. ``pending_replies``: the dispatcher's requests waiting
        on this plugin (``Dispatcher._pending_replies``); without it, requests get ``None``."""
        self.name = name
        self.plugin_id = plugin_id
        self.version = version
        self.options = options if options is not None else IsolationOptions()
        self.limits = limits if limits is not None else self.options.limits
        self._memory_required = memory_required
        self._load = wire.Load(
            name, plugin_id, version, entry_module, entry_attr, dict(files), dict(config or {}),
            handler_timeout,
        )  # fmt: skip
        self._on_failed = on_failed
        self._on_timeouts = on_timeouts
        self._queue_depth = queue_depth
        self._hello_protocol = hello_protocol
        self._pending_replies = pending_replies
        self._replies: dict[Any, Any] | None = None  # the dispatcher's, once it is known
        self._log = logging.getLogger(f"nyxplug.plugin.{name}")
        self._child: _Child | None = None
        self._ready: asyncio.Event | None = None
        self._state = "new"
        self._closing = False
        self._failure: str | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._unreaped: set[_Child] = set()  # dead children whose fds and cgroup remain
        self._heartbeat: asyncio.Task[None] | None = None
        self._in_a_row = 0
        self.report: IsolationReport | None = None
        # the ledger and the fault counters
        self._c = dict.fromkeys(
            ("starts", "restarts", "crashes", "hangs", "protocol_violations", "limit_breaches",
             "frames_sent", "batches_sent", "frames_completed", "lost_to_crash", "in_child",
             "refused", "failed_batches", "child_errors", "child_timeouts", "logs_dropped",
             "replies_refused"), 0,
        )  # fmt: skip
        self._last: dict[str, Any] = {"crash": None, "stack": None, "limit": None}
        self._usage = (0.0, 0, 0, 0)
        self._start_seconds = 0.0

    # -- the plugin face the runtime sees ------------------------------------------

    async def on_load(self, ctx: Any = None) -> None:
        """Start the child and load the plugin in it; raises if that fails."""
        self._ready = asyncio.Event()
        try:
            await self._start()
        except BaseException as exc:
            self._state = "failed"
            self._failure = f"its child did not start: {exc}"
            self._ready.set()
            raise
        self._heartbeat = self._spawn_task(self._beat())

    async def handle_batch(self, messages: list[Any]) -> None:
        """Send the frames to the child and wait for its receipt."""
        replies = self._replies
        if replies is None and self._pending_replies is not None:
            replies = self._replies = self._pending_replies()
        if replies and any(message in replies for message in messages):
            return await self._handle_requests(messages, replies)
        try:
            child = self._child
            if child is None or not child.ready:
                child = await self._wait_for_child(messages)
            future = self._post(child, messages)
            if future is None:
                await self._send_halves(messages)
            else:
                failed = await future
                if failed is not None:
                    self._child_failed(failed, messages)
        except Exception:
            self._c["failed_batches"] += 1  # once per call, as the dispatcher counts errors
            raise

    async def _handle_requests(self, messages: list[Any], replies: dict[Any, Any]) -> None:
        """``handle_batch`` for a batch holding requests: the child is asked for their
        replies and each request is answered here (the worker finds them settled)."""
        try:
            await self._send_requests(messages, replies)
        except Exception:
            self._c["failed_batches"] += 1
            raise

    async def _send_requests(self, messages: list[Any], replies: dict[Any, Any]) -> None:
        child = self._child
        if child is None or not child.ready:
            child = await self._wait_for_child(messages)
        asked = [i for i, message in enumerate(messages) if message in replies]
        future = self._post(child, messages, asked)
        if future is None:  # too large for one message: in halves, each asked again
            half = len(messages) // 2
            await self._send_requests(messages[:half], replies)
            await self._send_requests(messages[half:], replies)
            return
        seq = child.seq
        try:
            failed = await future
        finally:
            answers = child.results.pop(seq, (frozenset(), {}))[1]
        for i in asked:
            message = messages[i]
            target = replies.get(message)
            answer = answers.get(i)
            if target is None or answer is None:
                continue  # gone (timed out), or unanswered: the worker settles it
            del replies[message]
            if target.done():
                continue
            status, data = answer
            if status == wire.REPLY:
                target.set_result(data)
            elif status == wire.NO_REPLY:
                target.set_result(None)
            else:
                target.set_exception(self._request_error(message.frame_type, status, data))
        if failed is not None:
            self._child_failed(failed, messages)

    def _request_error(self, frame_type: int, status: int, data: bytes) -> HandlerError:
        """The requester's error for a RESULT that is no reply: the handler's error text
        (cause ``ChildHandlerError``), or ``ReplyTooLarge``."""
        if status == wire.REPLY_TOO_LARGE:
            self._c["replies_refused"] += 1
            size = int.from_bytes(data, "little")
            cause: Exception = ReplyTooLarge(
                self.name, self.plugin_id, frame_type, size, wire.REPLY_LIMIT
            )
            text = f"ReplyTooLarge: {cause}"
        else:
            text = data.decode("utf-8", "replace")
            cause = ChildHandlerError(self.name, self.plugin_id, frame_type, 1, text)
        error = HandlerError(self.plugin_id, int(frame_type), text)
        error.__cause__ = cause
        return error

    def _post(
        self, child: _Child, messages: list[Any], asked: list[int] | None = None
    ) -> asyncio.Future[Any] | None:
        """Write one FRAMES message (after an ASK for the requests at ``asked``); its
        receipt's future, or ``None`` when the batch is too large for one message (and
        can be split)."""
        child.seq = seq = child.seq + 1
        data = wire.encode_frames(seq, messages)
        count = len(messages)
        if len(data) > wire.PARENT_MESSAGE_LIMIT and count > 1:
            return None
        if asked is not None:  # one write: the child wakes once for both
            child.results[seq] = (frozenset(asked), {})
            data = wire.encode_ask(seq, asked) + data
        future: asyncio.Future[tuple[int, int, str] | None] = child.loop.create_future()
        child.acks[seq] = (future, count, messages[0].frame_type)
        child.send(data)  # first: the counting below overlaps with the child's work
        c = self._c
        c["frames_sent"] += count
        c["batches_sent"] += 1
        c["in_child"] += count
        return future

    async def _send_halves(self, messages: list[Any]) -> None:
        """A batch too large for one message goes as two (each split again if need be)."""
        half = len(messages) // 2
        for part in (messages[:half], messages[half:]):
            child = self._child
            if child is None or not child.ready:
                child = await self._wait_for_child(part)
            future = self._post(child, part)
            if future is None:
                await self._send_halves(part)
            else:
                failed = await future
                if failed is not None:
                    self._child_failed(failed, part)

    def _child_failed(self, failed: tuple[int, int, str], messages: list[Any]) -> NoReturn:
        errors, timeouts, first = failed
        if timeouts and self._on_timeouts is not None:
            self._on_timeouts(timeouts)
        raise ChildHandlerError(self.name, self.plugin_id, messages[0].frame_type,
                                errors + timeouts, first)  # fmt: skip

    async def health(self) -> bool:
        """The plugin's own ``health()``, asked in the child."""
        value = await self._call("health")
        return True if value is None else bool(value)  # no health() hook: healthy

    def export_state(self) -> Any:
        """Isolated plugins hand no state over on reload (it lives in the child)."""
        return None

    def import_state(self, state: Any) -> None:
        """See ``export_state``."""

    async def on_unload(self) -> None:
        """The plugin's ``on_unload`` in the child, then the child stops."""
        try:
            if self._child is not None and self._child.ready:
                await self._call("on_unload")
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        """Stop the child (STOP, then SIGKILL after ``stop_timeout``); idempotent."""
        if self._closing and self._state == "stopped":
            return
        self._closing = True
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        # A restart in progress cleans up its own child when cancelled: wait for that.
        await asyncio.gather(*tasks, return_exceptions=True)
        child = self._child
        if child is not None:
            child.send(wire.encode_stop())
            try:
                async with asyncio.timeout(self.options.stop_timeout):
                    await asyncio.shield(child.process.exited)
            except TimeoutError:
                child.reason = child.reason or "did not stop in time"
            self._end(child, "was stopped")
        for dead in list(self._unreaped):  # incl. a crash whose cleanup task never ran
            await self._reap(dead)
        if self._state != "failed":
            self._state = "stopped"
        if self._ready is not None:
            self._ready.set()

    async def restart(self) -> None:
        """A new child (the recovery ladder's ``restart``): a running child is killed -
        its frames lost and counted as in a crash - and the usual restart starts the
        next; a restart already under way is waited for. Returns once a new child
        runs; raises ``IsolatedPluginFailed`` when the plugin gave up instead.
        Cancelled means only that this caller stopped waiting: the restart goes on.
        """
        assert self._ready is not None, "on_load() first"
        old = self._child
        if old is not None and old.ready and self._state == "running":
            old.reason = old.reason or "was restarted by its recovery ladder"
            old.process.kill()
        while True:
            child = self._child
            if child is not None and child.ready and child is not old:
                return
            if self._state in ("failed", "stopped"):
                raise IsolatedPluginFailed(
                    self.name, self.plugin_id, None,
                    self._failure or "its isolated child was stopped",
                )  # fmt: skip
            self._ready.clear()
            await self._ready.wait()

    def stats(self) -> IsolationStats:
        child = self._child
        cpu, rss, files, depth = self._usage
        return IsolationStats(
            state=self._state,
            pid=child.process.pid if child is not None else None,
            layers=self.report.layers if self.report is not None else (),
            last_crash=self._last["crash"],
            last_stack=self._last["stack"],
            last_limit=self._last["limit"],
            start_seconds=self._start_seconds,
            cpu_seconds=cpu,
            rss_bytes=rss,
            open_files=files,
            queue_depth=depth,
            **self._c,
        )

    @property
    def pid(self) -> int | None:
        return self._child.process.pid if self._child is not None else None

    # -- starting ---------------------------------------------------------------------

    async def _start(self) -> None:
        self._state = "starting"
        began = time.perf_counter()
        limits = self.limits
        cgroup, cgroup_reason = Cgroup.create(self.name, limits)
        if cgroup is None and self._memory_required:
            raise IsolationError(
                f"Plugin {self.name!r}: [sandbox] memory_limit cannot be enforced: the child "
                f"gets no cgroup ({cgroup_reason}) - run the host where it can create "
                "cgroups (root, or a delegated cgroup), or remove memory_limit"
            )
        launch = Launch(
            name=self.name, secret=os.urandom(32), limits=limits,
            cgroup_procs=cgroup.procs if cgroup is not None else (),
            cgroup_reason=cgroup_reason, hello_protocol=self._hello_protocol,
        )  # fmt: skip
        child: _Child | None = None
        try:
            async with asyncio.timeout(self.options.start_timeout):
                process, sock = await spawn_child(launch, mode=self.options.spawn)
                child = _Child(self, process, launch.secret, cgroup)
                cgroup = None  # the child owns it now
                self._watch_exit(child)
                loop = asyncio.get_running_loop()
                await loop.create_unix_connection(lambda: child.channel, sock=sock)
                hello = await child.hello
                self._check_hello(child, sock, hello)
                child.send(wire.encode(Kind.WELCOME, wire.Welcome(wire.PROTOCOL_VERSION)))
                child.send(wire.encode(Kind.LOAD, self._load))
                loaded = await child.loaded
                if loaded.error:
                    raise IsolationError(
                        f"Plugin {self.name!r} failed to load in its isolated child: {loaded.error}"
                    )
        except BaseException as exc:
            if cgroup is not None:
                cgroup.remove()
            if child is not None:
                detail = _start_failure(exc, child, self.options.start_timeout)
                child.reason = child.reason or detail
                self._end(child, "failed to start")
                await self._reap(child)
                stderr = child.process.stderr.strip()
                if stderr:
                    detail += f"; its stderr ends: {stderr[-1500:]}"
                if isinstance(exc, TimeoutError | ConnectionError):
                    raise HandshakeFailed(self.name, detail) from exc
            raise
        child.ready = True
        child.batch = loaded.batch
        self._child = child
        self._state = "running"
        self._c["starts"] += 1
        self._start_seconds = time.perf_counter() - began
        assert self._ready is not None
        self._ready.set()

    def _check_hello(self, child: _Child, sock: Any, hello: wire.Hello) -> None:
        low, high = hello.protocol_min, hello.protocol_max
        if not low <= wire.PROTOCOL_VERSION <= high:
            raise HandshakeFailed(
                self.name, f"it speaks protocol {low}..{high}, this host {wire.PROTOCOL_VERSION}"
            )
        # (SO_PEERCRED cannot help: a socketpair's peer credentials are its creator's.)
        if hello.pid != child.process.pid:
            raise HandshakeFailed(
                self.name, f"it says pid {hello.pid}, the host started {child.process.pid}"
            )
        expected = hello_proof(child.secret, hello.pid, low, high)
        if not hmac.compare_digest(hello.proof, expected):
            raise HandshakeFailed(self.name, "it does not know this launch's secret")
        self.report = IsolationReport(
            tuple(Layer(x.name, x.applied, x.detail) for x in hello.layers)
        )

    def _watch_exit(self, child: _Child) -> None:
        def exited(future: asyncio.Future[int]) -> None:
            if not future.cancelled():
                self.lost(child, describe_status(future.result()))

        child.process.exited.add_done_callback(exited)

    async def _wait_for_child(self, messages: list[Any]) -> _Child:
        """Hold the batch while the child restarts; refuse it once the plugin failed."""
        assert self._ready is not None
        while True:
            child = self._child
            if child is not None and child.ready:
                return child
            if self._state in ("failed", "stopped"):
                self._c["refused"] += len(messages)
                raise IsolatedPluginFailed(
                    self.name, self.plugin_id, messages[0].frame_type,
                    self._failure or "its isolated child was stopped",
                )  # fmt: skip
            self._ready.clear()
            await self._ready.wait()

    # -- faults -------------------------------------------------------------------------

    def lost(self, child: _Child, what: str) -> None:
        """The child's socket closed or it exited: settle what was in it, then restart."""
        if child.dead:
            return
        exited = child.process.exited
        if not exited.done():
            # Wait for the exit status: it says how the child died (a signal, a code).
            self._spawn_task(self._lost_after_exit(child, what))
            return
        self._end(child, describe_status(exited.result()) if not exited.cancelled() else what)
        self._spawn_task(self._after_crash(child))

    async def _lost_after_exit(self, child: _Child, what: str) -> None:
        try:
            async with asyncio.timeout(1.0):
                await asyncio.shield(child.process.exited)
        except TimeoutError:
            child.reason = child.reason or f"{what} but did not exit"
            child.process.kill()
        if not child.dead:
            self._end(child, describe_status(child.process.exited.result())
                      if child.process.exited.done() else what)  # fmt: skip
            await self._after_crash(child)

    def violation(self, child: _Child, detail: str) -> None:
        """The child sent something it may not: kill it, count it, restart it."""
        if child.dead:
            return
        self._c["protocol_violations"] += 1
        child.reason = child.reason or f"sent garbage ({detail})"
        logger.error("Plugin %r: isolated child %s", self.name, child.reason)
        child.process.kill()
        if child.channel.transport is not None:
            child.channel.transport.abort()

    def _end(self, child: _Child, what: str) -> None:
        """Mark the child dead; every frame still in it is lost, every waiter told why."""
        if child.dead:
            return
        child.dead = True
        child.ready = False
        child.process.kill()
        cause = what
        if child.reason is not None:
            cause = f"{child.reason}; it {what}"
        if child.cgroup is not None and child.cgroup.oom_kills() > 0:
            cause += " (out of memory: its cgroup's OOM killer)"
        c = self._c
        lost = 0
        restarting = (
            not self._closing
            and self._state in ("running", "restarting")
            and self._in_a_row < self.options.max_restarts
        )
        for future, count, frame_type in child.acks.values():
            lost += count
            if not future.done():
                future.set_exception(
                    ChildCrashed(self.name, self.plugin_id, frame_type, cause, count, restarting)
                )
        child.acks.clear()
        c["lost_to_crash"] += lost
        c["in_child"] -= lost
        for waiter in child.replies.values():
            if not waiter.done():
                waiter.set_exception(IsolationError(f"Plugin {self.name!r}: the child {cause}"))
        child.replies.clear()
        if not child.hello.done():
            child.hello.set_exception(ConnectionError(cause))
        if not child.loaded.done():
            child.loaded.set_exception(ConnectionError(cause))
        starting: tuple[asyncio.Future[Any], ...] = (child.hello, child.loaded)
        for waiter in starting:
            if not waiter.cancelled():
                waiter.exception()  # retrieved: a start that gave up needs no warning
        if child.channel.transport is not None:
            child.channel.transport.abort()
        self._unreaped.add(child)
        child.cause = cause
        if self._child is child:
            self._child = None

    async def _after_crash(self, child: _Child) -> None:
        await self._reap(child)
        if self._closing or self._state not in ("running", "restarting"):
            return
        cause = child.cause
        c = self._c
        c["crashes"] += 1
        self._last["crash"] = cause
        stderr = child.process.stderr.strip()
        logger.error(
            "Plugin %r (id %d): isolated child %d %s%s", self.name, self.plugin_id,
            child.process.pid, cause, f"\n{stderr[-2000:]}" if stderr else "",
        )  # fmt: skip
        if time.monotonic() - child.started >= self.options.stable_after:
            self._in_a_row = 0
        self._state = "restarting"
        options = self.options
        while not self._closing:
            if self._in_a_row >= options.max_restarts:
                self._give_up(
                    f"its child crashed {self._in_a_row + 1} times in a row; last: {cause}"
                )
                return
            delay = min(options.restart_backoff * 2**self._in_a_row, options.restart_backoff_max)
            self._in_a_row += 1
            await asyncio.sleep(delay)  # the backoff itself, not a wait for work
            try:
                await self._start()
            except Exception as exc:
                self._state = "restarting"
                cause = f"restart failed: {exc}"
                c["crashes"] += 1
                self._last["crash"] = cause
                continue
            c["restarts"] += 1
            return

    def _give_up(self, reason: str) -> None:
        if self._child is not None:
            self._child.ready = False  # nothing more is sent to it, it is ending
        self._state = "failed"
        self._failure = reason
        logger.error(
            "Plugin %r (id %d) failed: %s", self.name, self.plugin_id, reason,
            extra={"plugin": self.name, "plugin_id": self.plugin_id, "version": self.version},
        )  # fmt: skip
        if self._ready is not None:
            self._ready.set()
        if self._on_failed is not None:
            self._on_failed(reason)

    async def _reap(self, child: _Child) -> None:
        """Wait for the dead child's exit, then release its fds and its cgroup."""
        try:
            async with asyncio.timeout(5.0):
                await asyncio.shield(child.process.exited)
        except TimeoutError:
            logger.error("Plugin %r: child %d did not exit after SIGKILL", self.name,
                         child.process.pid)  # fmt: skip
        finally:  # cancelled (aclose) or not, the fds and the cgroup go
            self._unreaped.discard(child)
            child.process.close()
            if child.cgroup is not None:
                child.cgroup.remove()
                child.cgroup = None

    # -- heartbeats, resources and limits -----------------------------------------------

    async def _beat(self) -> None:
        options = self.options
        while not self._closing:
            await asyncio.sleep(options.heartbeat_interval)  # the heartbeat period
            child = self._child
            if child is None or not child.ready or child.dead:
                continue
            child.logs = 0
            self._sample(child)
            now = time.monotonic()
            if child.ping_sent is None:
                child.ping_seq += 1
                child.ping_sent = now
                child.send(wire.encode_seq(Kind.PING, child.ping_seq))
            elif now - child.ping_sent > options.heartbeat_timeout:
                await self._hung(child)

    async def _hung(self, child: _Child) -> None:
        """No heartbeat answer: take the child's stack (faulthandler), then kill it."""
        self._c["hangs"] += 1
        child.reason = f"hung (no heartbeat answer in {self.options.heartbeat_timeout} s)"
        child.process.send_signal(signal.SIGUSR1)  # faulthandler dumps every thread's stack
        if await child.process.wait_stderr(_STACK_MARKER, 1.0):
            await asyncio.sleep(0.02)  # the dump is a few writes; let them land
        stack = _last_stack(child.process.stderr)
        self._last["stack"] = stack.strip() or None
        logger.error("Plugin %r: isolated child %d %s; its stack:\n%s", self.name,
                     child.process.pid, child.reason, stack)  # fmt: skip
        child.process.kill()

    def _sample(self, child: _Child) -> None:
        """CPU, RSS and open files from /proc (the child is not asked), and queue depth."""
        pid = child.process.pid
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
            cpu = (int(fields[11]) + int(fields[12])) / _TICKS
            rss = int(fields[21]) * _PAGE
            files = len(os.listdir(f"/proc/{pid}/fd"))
        except (OSError, IndexError, ValueError):
            return
        depth = self._queue_depth() if self._queue_depth is not None else 0
        self._usage = (cpu, rss, files, depth)
        o = self.options
        for what, value, limit in (
            ("resident memory", rss, o.max_rss), ("CPU seconds", cpu, o.max_cpu_seconds),
            ("open files", files, o.max_open_files), ("queue depth", depth, o.max_queue_depth),
        ):  # fmt: skip
            if limit is not None and value > limit:
                self._breach(child, f"{what} {value:g} > limit {limit:g}")
                return

    def _breach(self, child: _Child, what: str) -> None:
        self._c["limit_breaches"] += 1
        self._last["limit"] = what
        action = self.options.on_limit
        logger.warning("Plugin %r: isolated child %d exceeded %s (on_limit = %s)", self.name,
                       child.process.pid, what, action)  # fmt: skip
        if action == "log":
            return
        child.reason = f"exceeded {what}"
        if action == "unload":
            self._give_up(f"exceeded {what} (on_limit = unload)")
        child.process.kill()

    # -- calls and logs -----------------------------------------------------------------

    async def _call(self, method: str, arg: Any = None) -> Any:
        child = self._child
        if child is None or not child.ready:
            raise IsolationError(f"Plugin {self.name!r}: its isolated child is not running "
                                 f"({self._state}); cannot call {method}()")  # fmt: skip
        seq = child.next_seq()
        waiter: asyncio.Future[wire.Reply] = asyncio.get_running_loop().create_future()
        child.replies[seq] = waiter
        child.send(wire.encode(Kind.CALL, wire.Call(seq, method, arg)))
        async with asyncio.timeout(self.options.call_timeout):
            reply = await waiter
        if reply.error:
            raise IsolationError(f"Plugin {self.name!r}: {method}() raised in the child: "
                                 f"{reply.error}")  # fmt: skip
        return reply.value

    def child_log(self, child: _Child, record: wire.Log) -> None:
        child.logs += 1
        if child.logs > LOG_BUDGET:
            self._c["logs_dropped"] += 1
            return
        level = record.level if 0 <= record.level <= 50 else logging.WARNING
        self._log.log(level, "%s", record.message[: wire.TEXT_LIMIT])

    def _spawn_task(self, coro: Any) -> asyncio.Task[Any]:
        """A supervision task in a clean context: no plugin's sandbox guard rides along."""
        task = asyncio.get_running_loop().create_task(coro, context=contextvars.Context())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def __repr__(self) -> str:
        return f"<IsolatedPlugin {self.name!r} id={self.plugin_id} {self._state} pid={self.pid}>"


def _last_stack(text: str) -> str:
    """The faulthandler dump in a stderr tail: from its first thread line on."""
    starts = [i for i in (text.find("Current thread 0x"), text.find("Thread 0x")) if i >= 0]
    return text[min(starts) :] if starts else text[-4000:]


def _start_failure(exc: BaseException, child: _Child, timeout: float) -> str:
    if isinstance(exc, TimeoutError):
        stage = "HELLO" if not child.hello.done() else "the plugin to load"
        return f"no answer within {timeout} s (waiting for {stage})"
    if isinstance(exc, ConnectionError):
        return f"it {exc}"
    return f"{type(exc).__name__}: {exc}"
