"""``RemoteDispatcher``: the session protocol's client, with the local dispatcher's API.

``await RemoteDispatcher.connect(address)`` opens a session (TCP, TLS or a Unix socket);
``dispatch`` / ``dispatch_nowait`` / ``try_dispatch`` / ``request`` then behave like the
local ``Dispatcher``'s, with the plugin's remote credit in the role of its queue space:
``dispatch`` waits for credit (FIFO per plugin), ``dispatch_nowait`` raises ``WouldBlock``
without it, ``try_dispatch`` returns the status. Frames given in the same event-loop
iteration leave in one BATCH message (one write), which is where the throughput comes
from. The server's verdict on each fire-and-forget frame comes back in cumulative ACKs
and is counted in ``statistics()``: ``sent`` = acknowledged by status + ``lost`` (the
session ended first) + ``in_flight``.
"""

from __future__ import annotations

import asyncio
import ssl as _ssl
from collections import deque
from collections.abc import Iterable
from types import ModuleType
from typing import Any, cast

import msgspec

from .. import _impl
from .._constants import DispatchStatus
from .._errors import (
    FrameTooLarge,
    PluginNotRegistered,
    ReplyTimeout,
    SessionClosed,
    SessionViolation,
    WouldBlock,
)
from .._replies import check_timeout
from .wire import (
    ALPN,
    PROTOCOL_VERSION,
    SERVER_KINDS,
    SERVER_MESSAGE_LIMIT,
    Hello,
    Kind,
    SessionReader,
    decode,
    encode,
    remote_error,
)

__all__ = ("ClientStats", "RemoteDispatcher", "parse_target")

_STATUSES = len(DispatchStatus)
#: What a REPLY resolves its request's future with: (status, value, error name, message).
_Answer = tuple[int, bytes | None, str, str]
#: A BATCH of one frame: the message prefix (5), seq and count (12), the frame's entry (7).
_BATCH_OVERHEAD = 24
_OK = DispatchStatus.OK
_WOULD_BLOCK = DispatchStatus.WOULD_BLOCK
_NOT_REGISTERED = DispatchStatus.PLUGIN_NOT_REGISTERED
# Message kinds as plain ints: comparing them costs a fraction of an IntEnum member lookup.
_BATCH, _REQUEST = int(Kind.BATCH), int(Kind.REQUEST)
_WELCOME, _ACK, _CREDIT, _REPLY, _GOAWAY = (
    int(Kind.WELCOME),
    int(Kind.ACK),
    int(Kind.CREDIT),
    int(Kind.REPLY),
    int(Kind.GOAWAY),
)


class ClientStats(msgspec.Struct, frozen=True, kw_only=True):
    """The client's ledger at the moment of the call.

    Every frame a dispatch call took is in exactly one bucket: ``sent`` =
    ``sum(by_status)`` (acknowledged by the server, each with its ``DispatchStatus``) +
    ``lost`` (the session ended before its acknowledgement) + ``in_flight``.
    """

    #: Frames taken by ``dispatch*`` / ``request`` (credit spent on them).
    sent: int = 0
    #: Acknowledged frames by ``DispatchStatus`` (index = status value).
    by_status: tuple[int, ...] = (0,) * _STATUSES
    #: Frames whose acknowledgement never came: the session ended first.
    lost: int = 0
    #: Frames sent and not yet acknowledged.
    in_flight: int = 0
    #: BATCH messages written.
    batches: int = 0
    #: REQUEST messages written.
    requests: int = 0
    #: Requests whose handler raised (``HandlerError``).
    handler_errors: int = 0
    #: ``dispatch`` / ``request`` calls that had to wait for credit.
    credit_waits: int = 0
    #: ``dispatch_nowait`` / ``try_dispatch`` calls refused for lack of credit (not sent).
    would_block: int = 0

    @property
    def acknowledged(self) -> int:
        """Frames the server acknowledged (``sum(by_status)``)."""
        return sum(self.by_status)

    def count(self, status: DispatchStatus) -> int:
        """Acknowledged frames that ended with ``status``."""
        return self.by_status[status]


def parse_target(target: str | tuple[str, int]) -> tuple[str, int] | str:
    """``(host, port)`` for ``"HOST:PORT"`` / ``"[v6]:PORT"`` / a pair, or the socket path for
    ``"unix:PATH"`` (or anything containing a ``/``)."""
    if isinstance(target, tuple):
        return target
    if target.startswith("unix:"):
        return target[5:]
    if "/" in target:
        return target
    host, sep, port = target.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(
            f"Expected an address HOST:PORT or unix:PATH, got {target!r} - e.g. 127.0.0.1:7878"
        )
    return host.strip("[]"), int(port)


class _Protocol(asyncio.Protocol):
    def __init__(self, owner: RemoteDispatcher) -> None:
        self.owner = owner

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.owner._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.owner._received(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.owner._lost_connection(exc)


class RemoteDispatcher:
    """A session with a nyxplug server; see the module's docstring. Build it with
    ``await RemoteDispatcher.connect(...)``; close it with ``aclose()`` or ``async with``."""

    def __init__(
        self,
        *,
        codec: ModuleType | None = None,
        name: str = "nyxplug-client",
        batch_frames: int = 256,
    ) -> None:
        twin = codec if codec is not None else _impl
        self._message_cls = twin.PluginMessage
        self._own_types = frozenset((twin.PluginMessage, twin.PluginFrame))
        self._header_cls = twin.PluginHeader
        self._encode_batch = twin.encode_batch
        self.name = name
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._reader = SessionReader(SERVER_KINDS, SERVER_MESSAGE_LIMIT)
        self._welcome: asyncio.Future[Any] = self._loop.create_future()
        self._credit: dict[int, int] = {}
        self._initial: dict[int, int] = {}
        self._permissions: dict[int, int] = {}
        self._waiters: dict[int, deque[asyncio.Future[bool]]] = {}
        self._batch: list[Any] = []
        self._flush_handle: asyncio.Handle | None = None
        self._max_message = 1 << 20
        self._batch_frames = batch_frames
        self._max_batch = batch_frames
        self._seq = 0
        self._next_request = 0
        self._requests: dict[int, asyncio.Future[_Answer]] = {}
        self._batch_sent = 0
        self._batch_acked = [0] * _STATUSES
        self._acked_seq = 0
        self._request_counts = [0] * _STATUSES
        self._counts = dict.fromkeys(
            ("sent", "batches", "requests", "handler_errors", "credit_waits", "would_block"), 0
        )
        self._lost = 0
        self._reason: str | None = None  # why the session is over (None: open)
        self._idle: list[asyncio.Future[None]] = []
        self._gone: asyncio.Future[None] = self._loop.create_future()
        self.server = ""

    @classmethod
    async def connect(
        cls,
        target: str | tuple[str, int],
        *,
        ssl: _ssl.SSLContext | None = None,
        server_hostname: str | None = None,
        name: str = "nyxplug-client",
        timeout: float | None = 10.0,
        codec: ModuleType | None = None,
        batch_frames: int = 256,
    ) -> RemoteDispatcher:
        """Connect to a session server at ``target`` (``"HOST:PORT"``, ``(host, port)`` or
        ``"unix:PATH"``) and complete the handshake (HELLO, WELCOME) within ``timeout``.
        ``ssl`` (an ``SSLContext``) makes it TLS. ``codec`` is the dispatcher module whose
        batch codec encodes the frames (the compiled one by default). A BATCH is written
        at the end of the loop iteration or every ``batch_frames`` frames, whichever
        comes first (so the server works on one batch while the next is built)."""
        self = cls(codec=codec, name=name, batch_frames=batch_frames)
        where = parse_target(target)
        loop = self._loop
        async with asyncio.timeout(timeout):
            if isinstance(where, str):
                await loop.create_unix_connection(
                    lambda: _Protocol(self), where, ssl=ssl, server_hostname=server_hostname
                )
            else:
                await loop.create_connection(
                    lambda: _Protocol(self), *where, ssl=ssl, server_hostname=server_hostname
                )
            assert self._transport is not None
            self._transport.write(encode(Kind.HELLO, Hello(PROTOCOL_VERSION, ALPN, name)))
            try:
                await asyncio.shield(self._welcome)
            except BaseException:
                if self._transport is not None:  # None: the server already closed it
                    self._transport.abort()
                raise
        return self

    # -- the local dispatcher's API -------------------------------------------------

    def plugins(self) -> dict[int, int]:
        """The plugins this session may send to, with the permission bits the server grants."""
        return dict(self._permissions)

    def credit(self, plugin_id: int) -> int:
        """Frames that may be sent to ``plugin_id`` now without waiting."""
        return self._credit.get(plugin_id, 0)

    def dispatch_nowait(self, frame_type: int, header: Any, payload: Any = b"") -> None:
        """Send one frame if its plugin has credit; ``WouldBlock`` otherwise. The server's
        verdict arrives later, in the ledger (``statistics()``)."""
        msg = self._message(frame_type, header, payload)
        status = self._take(msg.header.id)
        if status == _WOULD_BLOCK:
            plugin_id = msg.header.id
            raise WouldBlock(plugin_id, frame_type, self._initial[plugin_id])
        if status == _NOT_REGISTERED:
            raise PluginNotRegistered(msg.header.id, frame_type)
        self._enqueue(msg)

    def try_dispatch(self, frame_type: int, header: Any, payload: Any = b"") -> DispatchStatus:
        """``dispatch_nowait`` returning ``OK`` (sent), ``WOULD_BLOCK`` (no credit) or
        ``PLUGIN_NOT_REGISTERED`` (the server offered no such plugin) instead of raising."""
        msg = self._message(frame_type, header, payload)
        status = self._take(msg.header.id)
        if status == _OK:
            self._enqueue(msg)
        return status

    async def dispatch(self, frame_type: int, header: Any, payload: Any = b"") -> None:
        """Send one frame, waiting for its plugin's credit (FIFO among waiting senders).
        Cancelled while waiting, nothing was sent."""
        msg = self._message(frame_type, header, payload)
        if self._take(msg.header.id) != _OK:
            await self._wait_credit(msg.header.id, frame_type)
        self._enqueue(msg)

    async def dispatch_many(self, frames: Iterable[Any]) -> int:
        """``dispatch`` each ``PluginFrame`` (or ``PluginMessage``) in order, pipelined into
        batches; returns how many were sent. A run of frames of the codec's twin for one
        plugin with enough credit goes into the batch in one step, unconverted (the batch
        encoder takes them as they are): the fast way to send."""
        items = frames if type(frames) is list else list(frames)
        credit = self._credit
        waiters = self._waiters
        own = self._own_types
        step = self._max_batch
        sent = 0
        for start in range(0, len(items), step):
            chunk = items[start : start + step]
            ids = {frame.header.id for frame in chunk}
            if len(ids) == 1 and {type(frame) for frame in chunk} <= own:
                plugin_id = ids.pop()
                have = credit.get(plugin_id, 0)
                if self._reason is None and have >= len(chunk) and not waiters.get(plugin_id):
                    credit[plugin_id] = have - len(chunk)
                    self._enqueue_all(chunk)
                    sent += len(chunk)
                    continue
            for frame in chunk:
                if type(frame) not in own:
                    frame = self._message(frame.frame_type, frame.header, frame.payload)
                if self._take(frame.header.id) != _OK:
                    await self._wait_credit(frame.header.id, frame.frame_type)
                self._enqueue(frame)
                sent += 1
        return sent

    async def request(
        self,
        frame_type: int,
        header: Any,
        payload: Any = b"",
        *,
        timeout: float | None = None,
    ) -> bytes | None:
        """Send one frame and return its handler's reply (``None``: no reply). A refusal or
        a raising handler is re-raised as its own class (``HandlerError``,
        ``PermissionDenied``...; see ``RemoteError``); ``ReplyTimeout`` after ``timeout``
        seconds (the frame may still be handled; the late reply is only counted)."""
        limit = None if timeout is None else check_timeout(timeout)
        msg = self._message(frame_type, header, payload)
        plugin_id = msg.header.id
        credit = self._credit
        have = credit.get(plugin_id, 0)
        if have > 0 and self._reason is None and not self._waiters.get(plugin_id):
            credit[plugin_id] = have - 1  # _take's common case, inline
        elif self._take(plugin_id) != _OK:
            await self._wait_credit(plugin_id, frame_type)
        request_id = self._next_request
        self._next_request = request_id + 1
        future: asyncio.Future[_Answer] = self._loop.create_future()
        self._requests[request_id] = future
        if self._batch:
            self._flush()  # keep the order of the frames before it
        counts = self._counts
        counts["sent"] += 1
        counts["requests"] += 1
        self._write(self._encode_batch(_REQUEST, request_id, [msg]))
        if limit is None:
            status, value, name, text = await future
        else:
            try:
                async with asyncio.timeout(limit):
                    status, value, name, text = await future
            except TimeoutError:
                raise ReplyTimeout(plugin_id, frame_type, limit, True) from None
        if name:
            raise remote_error(name, text)
        return value

    def statistics(self) -> ClientStats:
        """The ledger now (an immutable snapshot)."""
        by_status = tuple(
            a + b for a, b in zip(self._batch_acked, self._request_counts, strict=True)
        )
        sent = self._counts["sent"]
        return ClientStats(
            **self._counts,
            by_status=by_status,
            lost=self._lost,
            in_flight=sent - sum(by_status) - self._lost,
        )

    @property
    def closed(self) -> bool:
        """True once the session is over (nothing more can be sent)."""
        return self._reason is not None

    async def wait_acknowledged(self) -> None:
        """Wait until every frame sent so far is acknowledged (or the session ended)."""
        self._flush()
        while self._reason is None and self._unacknowledged():
            idle: asyncio.Future[None] = self._loop.create_future()
            self._idle.append(idle)
            await idle

    async def aclose(self, *, timeout: float | None = 30.0) -> None:
        """Send what is pending, wait up to ``timeout`` seconds for its acknowledgement,
        then close. Frames still unacknowledged are counted ``lost``."""
        if self._transport is not None and self._reason is None:
            try:
                async with asyncio.timeout(timeout):
                    await self.wait_acknowledged()
            except TimeoutError:
                pass
        self._end("closed by the client")
        if self._transport is not None:
            self._transport.close()
        await asyncio.shield(self._gone)

    async def __aenter__(self) -> RemoteDispatcher:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        state = "open" if self._reason is None else f"closed: {self._reason}"
        return f"<RemoteDispatcher {self.server!r} {state}>"

    # -- sending ---------------------------------------------------------------------

    def _message(self, frame_type: int, header: Any, payload: Any) -> Any:
        if type(header) is not self._header_cls:
            if isinstance(header, (bytes, bytearray, memoryview)):
                header = self._header_cls.decode(header)
            else:
                header = self._header_cls(header.id, header.flags, header.data)
        msg = self._message_cls(frame_type, header, payload)
        if msg.size + _BATCH_OVERHEAD > self._max_message:
            # the server would end the session for it: refuse it here, nothing is sent
            raise FrameTooLarge("frame", msg.size, self._max_message - _BATCH_OVERHEAD, frame_type)
        return msg

    def _take(self, plugin_id: int) -> DispatchStatus:
        """Spend one credit of ``plugin_id`` if it has one and nobody waits before us."""
        if self._reason is not None:
            raise SessionClosed(self._reason)
        have = self._credit.get(plugin_id)
        if have is None:
            return _NOT_REGISTERED
        if have <= 0 or self._waiters.get(plugin_id):
            self._counts["would_block"] += 1
            return _WOULD_BLOCK
        self._credit[plugin_id] = have - 1
        return _OK

    async def _wait_credit(self, plugin_id: int, frame_type: int) -> None:
        if self._reason is not None:
            raise SessionClosed(self._reason)
        if plugin_id not in self._credit:
            raise PluginNotRegistered(plugin_id, frame_type)
        self._counts["would_block"] -= 1  # _take counted it; waiting is not a refusal
        self._counts["credit_waits"] += 1
        waiter: asyncio.Future[bool] = self._loop.create_future()
        self._waiters.setdefault(plugin_id, deque()).append(waiter)
        try:
            await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                self._add_credit(plugin_id, 1)  # granted, then cancelled: give it back
            else:
                try:
                    self._waiters[plugin_id].remove(waiter)
                except ValueError:
                    pass
            raise

    def _add_credit(self, plugin_id: int, n: int) -> None:
        have = self._credit.get(plugin_id, 0) + n
        waiters = self._waiters.get(plugin_id)
        while waiters and have > 0:
            waiter = waiters.popleft()
            if not waiter.done():
                have -= 1
                waiter.set_result(True)
        self._credit[plugin_id] = have

    def _enqueue(self, msg: Any) -> None:
        """Add a frame to the next BATCH (written at the end of this loop iteration)."""
        self._counts["sent"] += 1
        self._batch.append(msg)
        if len(self._batch) >= self._max_batch:
            self._flush()
        elif self._flush_handle is None:
            self._flush_handle = self._loop.call_soon(self._flush)

    def _enqueue_all(self, frames: list[Any]) -> None:
        self._counts["sent"] += len(frames)
        self._batch.extend(frames)
        if len(self._batch) >= self._max_batch:
            self._flush()
        elif self._flush_handle is None:
            self._flush_handle = self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        """Write the frames gathered since the last flush as BATCH messages."""
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        batch = self._batch
        if not batch:
            return
        self._batch = []
        if self._reason is not None:
            return  # the session ended: these frames are counted lost
        step = self._max_batch
        for start in range(0, len(batch), step):
            self._write_batch(batch[start : start + step])

    def _write_batch(self, frames: list[Any]) -> None:
        data = self._encode_batch(_BATCH, self._seq, frames)
        if len(data) - 4 > self._max_message and len(frames) > 1:
            half = len(frames) // 2  # too many bytes for one message: split it
            self._write_batch(frames[:half])
            self._write_batch(frames[half:])
            return
        self._seq += 1
        self._batch_sent += len(frames)
        self._counts["batches"] += 1
        self._write(data)

    def _write(self, data: bytes) -> None:
        if self._transport is not None and self._reason is None:
            self._transport.write(data)

    def _unacknowledged(self) -> int:
        return self._counts["sent"] - sum(self._batch_acked) - sum(self._request_counts)

    # -- receiving -------------------------------------------------------------------

    def _received(self, data: bytes) -> None:
        try:
            for kind, body in self._reader.feed(data):
                if kind == _REPLY:
                    self._reply(decode(kind, body))
                elif kind == _CREDIT:
                    credit, waiters = self._credit, self._waiters
                    for plugin_id, n in decode(kind, body).credits:
                        if waiters.get(plugin_id):
                            self._add_credit(plugin_id, n)
                        else:  # nobody waits: _add_credit's common case, inline
                            credit[plugin_id] = credit.get(plugin_id, 0) + n
                else:
                    self._handle(kind, body)
        except SessionViolation as exc:
            self._end(f"the server broke the protocol: {exc}")
            if self._transport is not None:
                self._transport.abort()
        if self._idle:
            self._wake_idle()

    def _reply(self, message: Any) -> None:
        """A REPLY: its request's future gets it here, in the protocol's callback."""
        future = self._requests.pop(message.request_id, None)
        if future is None or not 0 <= message.status < _STATUSES:
            raise SessionViolation("bad-reply", f"Expected a pending request, got {message}")
        self._request_counts[message.status] += 1
        if message.error == "HandlerError":
            self._counts["handler_errors"] += 1
        if not future.done():
            future.set_result((message.status, message.value, message.error, message.message))

    def _handle(self, kind: int, body: bytes) -> None:
        message = decode(kind, body)
        if kind == _ACK:
            if not self._welcome.done():
                raise SessionViolation("handshake", "Expected WELCOME first, got ACK")
            counts = message.counts
            if (
                len(counts) != _STATUSES
                or message.next_seq > self._seq
                or message.next_seq < self._acked_seq
                or sum(counts) > self._batch_sent
            ):
                raise SessionViolation("bad-ack", f"Expected a consistent ACK, got {message}")
            self._acked_seq = message.next_seq
            self._batch_acked = counts
            for plugin_id, n in message.credits:
                self._add_credit(plugin_id, n)
        elif kind == _CREDIT:
            for plugin_id, n in message.credits:
                self._add_credit(plugin_id, n)
        elif kind == _WELCOME:
            if self._welcome.done():
                raise SessionViolation("handshake", "Expected one WELCOME, got another")
            self.server = message.server
            self._max_message = message.max_message
            self._max_batch = min(message.max_batch, self._batch_frames)
            for grant in message.plugins:
                self._credit[grant.plugin_id] = grant.credit
                self._initial[grant.plugin_id] = grant.credit
                self._permissions[grant.plugin_id] = grant.permissions
            self._welcome.set_result(message)
        elif kind == _GOAWAY:
            self._end(f"the server is shutting down ({message.reason})")
        else:  # ERROR
            self._end(f"the server refused the session ({message.code}): {message.message}")

    def _wake_idle(self) -> None:
        if self._idle and (self._reason is not None or not self._unacknowledged()):
            idle, self._idle = self._idle, []
            for future in idle:
                if not future.done():
                    future.set_result(None)

    def _end(self, reason: str) -> None:
        """The session is over: nothing more is sent; waiters fail with ``SessionClosed``."""
        if self._reason is not None:
            return
        self._reason = reason
        self._batch = []
        error = SessionClosed(reason)
        if not self._welcome.done():
            self._welcome.set_exception(error)
            self._welcome.exception()  # retrieved: connect raises it
        for waiters in self._waiters.values():
            while waiters:
                waiter = waiters.popleft()
                if not waiter.done():
                    waiter.set_exception(error)
        self._wake_idle()

    def _lost_connection(self, exc: Exception | None) -> None:
        self._transport = None
        self._end("the connection was lost" if exc is None else f"the connection was lost: {exc}")
        self._lost = self._unacknowledged()
        requests, self._requests = self._requests, {}
        for future in requests.values():
            if not future.done():
                future.set_exception(SessionClosed(self._reason or "lost"))
                future.exception()  # a timed-out request's future has no awaiter
        self._wake_idle()
        if not self._gone.done():
            self._gone.set_result(None)
