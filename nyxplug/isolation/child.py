"""The isolated child: apply the layers, prove itself, load one plugin, serve its frames.

Runs in ``python -I -B -m nyxplug.host`` (or a process forked from the fork server
before any event loop exists). Nothing here trusts the plugin; the parent trusts
nothing here.
"""

from __future__ import annotations

import asyncio
import contextvars
import ctypes
import faulthandler
import hashlib
import hmac
import inspect
import logging
import os
import signal
import socket
import sys
import traceback
import types
from asyncio.tasks import _enter_task, _leave_task
from collections import deque
from collections.abc import Awaitable, Coroutine, Generator
from pathlib import Path
from typing import Any, NoReturn

import msgspec

from .._constants import DEFAULT_MAX_HEADER_SIZE, DEFAULT_MAX_PAYLOAD_SIZE
from ..source.importer import import_entry
from ..source.snapshot import Snapshot
from . import wire
from .layers import IsolationReport, apply_layers
from .options import Limits
from .wire import Kind

__all__ = ("Launch", "hello_proof", "run_child", "set_parent_death_signal")

_PR_SET_PDEATHSIG = 1
_FRAMES = Kind.FRAMES


class Launch(msgspec.Struct, frozen=True, kw_only=True):
    """What the parent tells a child before it starts (over stdin or the fork server)."""

    name: str
    secret: bytes
    limits: Limits = Limits()
    cgroup_procs: tuple[str, ...] = ()
    cgroup_reason: str = ""
    #: Tests only: the protocol range the child claims in its HELLO.
    hello_protocol: int | None = None


def hello_proof(secret: bytes, pid: int, protocol_min: int, protocol_max: int) -> bytes:
    """HMAC over the HELLO fields with the per-launch secret: only our child knows it."""
    text = f"nyxplug-hello {pid} {protocol_min} {protocol_max}".encode()
    return hmac.new(secret, text, hashlib.sha256).digest()


def set_parent_death_signal(expected_parent: int) -> None:
    """Die with SIGKILL when the parent goes; exit now if it is already gone."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != expected_parent:
        os._exit(1)


def run_child(sock_fd: int, launch: Launch) -> NoReturn:
    """Isolate this process, then serve the parent on ``sock_fd`` until told to stop."""
    code = 70
    try:
        faulthandler.enable(file=sys.stderr, all_threads=True)
        # The parent sends SIGUSR1 to a child that missed its heartbeats: the stack of
        # every thread goes to stderr (the parent keeps it), even while stuck in C.
        faulthandler.register(signal.SIGUSR1, file=sys.stderr, all_threads=True)
        report = apply_layers(
            launch.limits, cgroup_procs=launch.cgroup_procs, cgroup_reason=launch.cgroup_reason
        )
        code = _serve(sock_fd, launch, report)
    except BaseException:
        traceback.print_exc()
    finally:
        try:
            sys.stderr.flush()
        finally:
            os._exit(code)


def _serve(sock_fd: int, launch: Launch, report: IsolationReport) -> int:
    try:
        import uvloop

        loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    except ImportError:
        loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        return loop.run_until_complete(_main(sock_fd, launch, report))
    finally:
        loop.close()


async def _main(sock_fd: int, launch: Launch, report: IsolationReport) -> int:
    loop = asyncio.get_running_loop()
    sock = socket.socket(fileno=sock_fd)
    sock.setblocking(False)
    side = ChildSide(launch, report)
    await loop.create_unix_connection(lambda: side, sock=sock)
    return await side.start_worker()


class _ParentLog(logging.Handler):
    """Sends the plugin's log records to the parent (which logs them under its name)."""

    def __init__(self, side: ChildSide) -> None:
        super().__init__()
        self.side = side

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record)[: wire.TEXT_LIMIT]
            self.side.send(wire.encode(Kind.LOG, wire.Log(record.levelno, text)))
        except Exception:
            self.handleError(record)


class ChildContext:
    """The isolated plugin's ``ctx``: identity, config and a logger, as in process."""

    def __init__(self, load: wire.Load, logger: logging.Logger) -> None:
        self.name = load.name
        self.id = load.plugin_id
        self.version = load.version
        self.config = load.config
        self.logger = logger

    def dispatch(self, *args: Any) -> Any:
        raise NotImplementedError(
            f"Plugin {self.name!r} runs isolated: ctx.dispatch is not available in the child "
            "yet - send results back through the frames your handler receives"
        )

    dispatch_nowait = try_dispatch = request = dispatch

    def __repr__(self) -> str:
        return f"<ChildContext {self.name!r} id={self.id} version={self.version}>"


class ChildSide(asyncio.BufferedProtocol):
    """The child's end of the socket.

    A frame batch that arrives while nothing else is running is answered in the read
    callback itself (decode, the plugin's handler, ack written), with no hop through the
    event loop: that is most of a lone frame's round trip. Its handler runs as it would
    in the worker task (that task is current, in that task's context); if the handler
    suspends, the worker takes it over from there. Everything else, and every batch that
    arrives behind other work, goes to the worker in order; pings are answered at once.
    Acks written in one callback leave in one write.
    """

    def __init__(self, launch: Launch, report: IsolationReport) -> None:
        self.launch = launch
        self.report = report
        self.loop = asyncio.get_running_loop()
        self.reader = wire.MessageReader(wire.PARENT_KINDS, wire.PARENT_MESSAGE_LIMIT)
        self.get_buffer = self.reader.get_buffer  # type: ignore[method-assign]  # one call less per read
        # (kind, body), or (None, a batch's coroutine that suspended in a callback)
        self.work: deque[tuple[Kind | None, Any]] = deque()
        self.wakeup: asyncio.Future[None] | None = None
        self.idle = False  # the worker waits for work: a batch may run in the callback
        self.out: list[bytes] | None = None  # what the current callback will write
        self.finished: asyncio.Future[int] = self.loop.create_future()
        self.transport: asyncio.Transport | None = None
        self.plugin: Any = None
        self.handle: Any = None
        self.batch = False
        self.timeout: float | None = None
        self.welcomed = False
        self.asked: dict[int, list[int]] = {}  # batch seq -> positions of its requests
        # The worker and its context; a batch run in a callback runs in both.
        self.context = contextvars.copy_context()
        self.task: asyncio.Task[int] | None = None
        # The handler watchdog: one timer, re-armed per call (see _watch).
        self.started = 0.0
        self.running = False
        self.expired = False
        self.timer: asyncio.TimerHandle | None = None

    def start_worker(self) -> asyncio.Task[int]:
        """The task that runs everything not answered in a callback; its result is the
        child's exit code."""
        self.task = self.loop.create_task(self.run(), context=self.context)
        return self.task

    # -- transport callbacks ----------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass
        low, high = wire.PROTOCOL_VERSION, wire.PROTOCOL_VERSION
        if self.launch.hello_protocol is not None:
            low = high = self.launch.hello_protocol
        pid = os.getpid()
        layers = [wire.LayerReport(x.name, x.applied, x.detail) for x in self.report.layers]
        proof = hello_proof(self.launch.secret, pid, low, high)
        self.send(wire.encode(Kind.HELLO, wire.Hello(low, high, pid, proof, layers)))

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.reader.get_buffer(sizehint)  # (the reader's own is bound in __init__)

    def buffer_updated(self, nbytes: int) -> None:
        work = self.work
        out: list[bytes] = []
        try:
            messages = self.reader.update(nbytes)
            if len(messages) > 1:
                self.out = out  # what they answer leaves in one write, at the end
            for kind, body in messages:
                if kind is _FRAMES and self.idle and not work and self.handle is not None:
                    self._frames_now(body)
                elif kind is Kind.PING:
                    self.send(wire.encode_seq(Kind.PONG, wire.decode_seq(kind, body)))
                elif kind is Kind.ASK:  # precedes its batch: known before the batch runs
                    seq, positions = wire.decode_ask(body)
                    self.asked[seq] = positions
                else:
                    work.append((kind, body))
        except Exception as exc:  # the parent broke the protocol: nothing sane to do
            print(f"nyxplug child: {exc}", file=sys.stderr)
            self._finish(3)
        finally:
            self.out = None
            if out:
                self.send(out[0] if len(out) == 1 else b"".join(out))
        if work:
            self._wake()

    def connection_lost(self, exc: Exception | None) -> None:
        self._finish(0)  # the parent is gone (or closed us): so are we

    def send(self, data: bytes) -> None:
        if self.out is not None:
            self.out.append(data)
        elif self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def _wake(self) -> None:
        if self.wakeup is not None and not self.wakeup.done():
            self.wakeup.set_result(None)

    def _finish(self, code: int) -> None:
        if not self.finished.done():
            self.finished.set_result(code)
        self._wake()

    def _frames_now(self, body: bytes) -> None:
        """Run a batch in this callback as the worker would: that task current, in its
        context. If a handler suspends, the worker finishes the batch."""
        loop, task = self.loop, self.task
        assert task is not None
        _enter_task(loop, task)
        try:
            rest = self.context.run(self._start_frames, body)
        except (Exception, asyncio.CancelledError) as exc:  # ends the worker, as it would have
            rest = _raise(exc)
        finally:
            _leave_task(loop, task)
        if rest is not None:
            self.work.append((None, rest))

    # -- the work loop ----------------------------------------------------------

    async def run(self) -> int:
        work = self.work
        while not self.finished.done():
            if not work:
                self.wakeup = self.loop.create_future()
                self.idle = True
                try:
                    await self.wakeup
                except asyncio.CancelledError:
                    if not (work and work[0][0] is None):
                        raise
                    # Meant for the handler that began in a callback (its watchdog, or
                    # its own asyncio.timeout) before this task took it over: pass it on.
                    assert self.task is not None
                    self.task.uncancel()
                    self.task.cancel()
                finally:
                    self.idle = False
                continue
            kind, body = work.popleft()
            if kind is None:
                await body
            elif kind is Kind.FRAMES:
                rest = self._start_frames(body)
                if rest is not None:
                    await rest
            elif kind is Kind.WELCOME:
                welcome: wire.Welcome = wire.decode(kind, body)
                if welcome.protocol != wire.PROTOCOL_VERSION:
                    return 4
                self.welcomed = True
            elif not self.welcomed:
                return 4
            elif kind is Kind.LOAD:
                await self._load(wire.decode(kind, body))
            elif kind is Kind.CALL:
                await self._call(wire.decode(kind, body))
            elif kind is Kind.STOP:
                self._finish(0)
        if self.transport is not None:
            self.transport.close()
        return self.finished.result()

    async def _load(self, load: wire.Load) -> None:
        error = ""
        try:
            if self.plugin is not None:
                raise RuntimeError("a plugin is loaded already")
            snapshot = Snapshot(Path(f"/isolated/{load.name}"), dict(load.files))
            code = import_entry(load.name, snapshot, load.entry_module, load.entry_attr)
            entry = code.entry
            plugin = entry() if callable(entry) else entry
            batch = getattr(plugin, "handle_batch", None)
            handle = batch if callable(batch) else getattr(plugin, "handle", None)
            if not callable(handle):
                raise TypeError(
                    f"Expected the entry object to have handle(message), got {plugin!r}"
                )
            logger = logging.getLogger(f"nyxplug.plugin.{load.name}")
            logger.propagate = False
            logger.handlers[:] = [_ParentLog(self)]
            logger.setLevel(logging.DEBUG)
            plugin.ctx = ChildContext(load, logger)
            on_load = getattr(plugin, "on_load", None)
            if on_load is not None:
                result = on_load(plugin.ctx)
                if inspect.isawaitable(result):
                    await result
            self.plugin, self.handle, self.batch = plugin, handle, callable(batch)
            self.timeout = load.handler_timeout
        except Exception as exc:
            error = _describe(exc)
        self.send(wire.encode(Kind.LOADED, wire.Loaded(error, self.batch)))

    async def _call(self, call: wire.Call) -> None:
        try:
            if call.method not in _HOOKS:
                raise ValueError(f"Expected a hook in {sorted(_HOOKS)}, got {call.method!r}")
            method = getattr(self.plugin, call.method, None)
            value: Any = None
            if method is not None:
                value = method(call.arg) if call.method == "import_state" else method()
                if inspect.isawaitable(value):
                    value = await value
            reply = wire.encode(Kind.REPLY, wire.Reply(call.seq, value, ""))
            if len(reply) > wire.CHILD_MESSAGE_LIMIT:
                raise ValueError(
                    f"Expected a {call.method}() value of at most {wire.CHILD_MESSAGE_LIMIT} "
                    f"bytes encoded, got {len(reply)}"
                )
        except Exception as exc:  # the hook raised, or returned what msgpack cannot carry
            reply = wire.encode(Kind.REPLY, wire.Reply(call.seq, None, _describe(exc)))
        self.send(reply)

    def _start_frames(self, body: bytes) -> Awaitable[None] | None:
        """Decode a batch and call its handler until a call suspends: ``None`` when every
        call is done (the ack is sent), else what finishes the batch when awaited."""
        seq, messages = wire.decode_frames(body, DEFAULT_MAX_HEADER_SIZE, DEFAULT_MAX_PAYLOAD_SIZE)
        count = len(messages)
        asked = self.asked.pop(seq, None) if self.asked else None
        if asked is not None or (not self.batch and count != 1):
            # Requests wait on this batch, or it is a call per frame: one coroutine.
            coro = (
                self._frames(seq, messages) if asked is None
                else self._asked_frames(seq, messages, asked)
            )  # fmt: skip
            try:
                waiting_on = coro.send(None)
            except StopIteration:
                return None
            return _resume(coro, waiting_on)
        try:  # one call: driven here, without a coroutine of ours around it
            result = self.handle(messages if self.batch else messages[0])
            if result is not None:
                if type(result) is types.CoroutineType:
                    try:
                        waiting_on = result.send(None)
                    except StopIteration:
                        result = None
                    else:
                        result = _resume(result, waiting_on)
                elif not inspect.isawaitable(result):
                    result = None
                if result is not None:
                    return self._finish_call(seq, count, result)
        except Exception as exc:
            self.send(wire.encode_ack(seq, count, *self._failed(exc)))
            return None
        self.send(wire.encode_ack(seq, count, 0, 0, ""))
        return None

    async def _finish_call(self, seq: int, count: int, awaitable: Awaitable[Any]) -> None:
        """The rest of a batch's one call that suspended: await it, then ack."""
        failed = 0, 0, ""
        try:
            if self.timeout is None:
                await awaitable
            else:
                await self._timed(awaitable)
        except Exception as exc:
            failed = self._failed(exc)
        self.send(wire.encode_ack(seq, count, *failed))

    async def _frames(self, seq: int, messages: list[Any]) -> None:
        errors = timeouts = 0
        first = ""
        handle = self.handle
        for message in messages:
            try:
                result = handle(message)
                if result is not None and (
                    type(result) is types.CoroutineType or inspect.isawaitable(result)
                ):
                    if self.timeout is None:
                        await result
                    else:
                        await self._timed(result)
            except Exception as exc:
                failed = self._failed(exc)
                errors += failed[0]
                timeouts += failed[1]
                first = first or failed[2]
        self.send(wire.encode_ack(seq, len(messages), errors, timeouts, first))

    async def _asked_frames(self, seq: int, messages: list[Any], asked: list[int]) -> None:
        """A batch holding requests: as :meth:`_frames`, and a RESULT for each request
        (its reply, or why there is none) before the ACK."""
        errors = timeouts = 0
        first = ""
        count = len(messages)
        answers: dict[int, tuple[int, bytes]] = {}

        def failed(text: str, positions: Any) -> None:
            for i in positions:
                answers[i] = (wire.REPLY_ERROR, text.encode("utf-8", "replace")[: wire.TEXT_LIMIT])

        if self.batch:
            try:
                result = await self._handled(messages)
            except Exception as exc:
                errors, timeouts, first = self._failed(exc)
                failed(first, asked)
            else:
                if result is None:
                    answers = dict.fromkeys(asked, (wire.NO_REPLY, b""))
                elif isinstance(result, list) and len(result) == count:
                    for i in asked:
                        answers[i], text = _as_reply(result[i])
                        if text:
                            errors, first = errors + 1, first or text
                else:
                    got = f"a list of {len(result)}" if isinstance(result, list) else (
                        type(result).__name__
                    )  # fmt: skip
                    first = (
                        f"TypeError: Expected handle_batch to return None or a list of {count} "
                        f"replies (one per message), got {got}"
                    )
                    errors = 1
                    failed(first, asked)
        else:
            wanted = set(asked)
            for i, message in enumerate(messages):
                try:
                    result = await self._handled(message)
                except Exception as exc:
                    e, t, text = self._failed(exc)
                    errors, timeouts, first = errors + e, timeouts + t, first or text
                    if i in wanted:
                        failed(text, (i,))
                    continue
                if i in wanted:
                    answers[i], text = _as_reply(result)
                    if text:
                        errors, first = errors + 1, first or text
        out = [wire.encode_result(seq, i, *answers[i]) for i in asked]
        out.append(wire.encode_ack(seq, count, errors, timeouts, first))
        self.send(b"".join(out))  # one write: the host wakes once for the lot

    async def _handled(self, arg: Any) -> Any:
        """One handler call, awaited (under the watchdog) if it returns an awaitable."""
        result = self.handle(arg)
        if result is not None and inspect.isawaitable(result):
            if self.timeout is None:
                result = await result
            else:
                result = await self._timed(result)
        return result

    def _failed(self, exc: Exception) -> tuple[int, int, str]:
        """``(errors, timeouts, text)`` for a handler call that raised."""
        if isinstance(exc, TimeoutError) and self.expired:
            self.expired = False
            return 0, 1, f"handler timed out after {self.timeout} s"
        return 1, 0, _describe(exc)

    async def _timed(self, awaitable: Any) -> Any:
        """Await a handler call; the watchdog cancels it past the timeout (raises TimeoutError)."""
        self.started = self.loop.time()
        self.running = True
        if self.timer is None and self.timeout is not None:
            self.timer = self.loop.call_at(self.started + self.timeout, self._watch)
        try:
            return await awaitable
        except asyncio.CancelledError:
            if not self.expired:
                raise
            assert self.task is not None
            self.task.uncancel()
            raise TimeoutError from None
        finally:
            self.running = False

    def _watch(self) -> None:
        self.timer = None
        if not self.running or self.timeout is None:
            return
        deadline = self.started + self.timeout
        if self.loop.time() >= deadline:
            self.expired = True
            assert self.task is not None
            self.task.cancel()
        else:
            self.timer = self.loop.call_at(deadline, self._watch)


_HOOKS = frozenset({"health", "export_state", "import_state", "on_unload"})


async def _raise(exc: BaseException) -> None:
    raise exc


@types.coroutine
def _resume(coro: Coroutine[Any, Any, None], waiting_on: Any) -> Generator[Any, None, None]:
    """Carry on, in the worker task, a coroutine whose first step ran in a callback: the
    task first waits for what the coroutine was waiting on, then drives it as ``await``
    would (a cancel or anything else thrown in goes to the coroutine)."""
    while True:
        try:
            yield waiting_on
        except GeneratorExit:
            coro.close()
            raise
        except BaseException as exc:
            try:
                waiting_on = coro.throw(exc)
            except StopIteration:
                return
            continue
        yield from coro.__await__()
        return


def _as_reply(result: object) -> tuple[tuple[int, bytes], str]:
    """A handler's result as a RESULT ``(status, data)``, and the error text if it is
    no reply (not bytes-like, or over :data:`wire.REPLY_LIMIT`): a handler error."""
    if result is None:
        return (wire.NO_REPLY, b""), ""
    if not isinstance(result, bytes | bytearray | memoryview):
        text = (
            "TypeError: Expected the handler to return a reply (bytes-like) or None, "
            f"got {type(result).__name__}"
        )
        return (wire.REPLY_ERROR, text.encode()), text
    data = bytes(result)
    if len(data) > wire.REPLY_LIMIT:
        limit = wire.REPLY_LIMIT
        text = f"ReplyTooLarge: Expected a reply of at most {limit} bytes, got {len(data)}"
        return (wire.REPLY_TOO_LARGE, len(data).to_bytes(8, "little")), text
    return (wire.REPLY, data), ""


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[: wire.TEXT_LIMIT]
