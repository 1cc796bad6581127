"""The session protocol's server side (docs/session-protocol.md is the contract).

``SessionService(dispatcher)`` holds what the connections of a listener share (the
dispatcher, the access policy, the limits, the ledger of closed connections); its
``protocol`` method is the protocol factory for ``loop.create_server`` /
``loop.create_unix_server`` (asyncio and uvloop alike).

A connection handles the messages of each chunk it reads synchronously, in order, inside
``data_received``: a BATCH is decoded by the twin's C batch codec and handed to
``Dispatcher.try_dispatch_many`` in one call. Only when a frame must wait (its plugin's
queue is full although the peer had credit, because other senders share the queue; a
request being enqueued; a rate limit) does the connection stop reading and finish the
message in a task, then go on. So the peer's credit bounds what it may send, and a full
queue bounds what the server reads: backpressure is load, never memory.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections import deque
from collections.abc import Coroutine
from typing import Any, cast

import msgspec

from .._constants import DispatchStatus, Permission
from .._errors import DispatchError, HandlerError, SessionViolation
from .._impl import Dispatcher
from .._replies import ReplySink
from .._validate import check_uint
from .policy import OPEN_POLICY, PeerAccess, PeerPolicy
from .wire import (
    ALPN,
    CLIENT_KINDS,
    PROTOCOL_VERSION,
    TEXT_LIMIT,
    Ack,
    Credit,
    Error,
    GoAway,
    Kind,
    PluginGrant,
    Reply,
    SessionReader,
    Welcome,
    decode,
    encode,
)

__all__ = ("SessionProtocol", "SessionService", "SessionStats")

_log = logging.getLogger("nyxplug.serving")

_STATUSES = len(DispatchStatus)
_OK = DispatchStatus.OK
#: The status each refusal ``Dispatcher.dispatch`` / ``submit`` raises stands for.
_STATUS_OF = {
    "WouldBlock": DispatchStatus.WOULD_BLOCK,
    "PluginClosed": DispatchStatus.PLUGIN_CLOSED,
    "PluginNotRegistered": DispatchStatus.PLUGIN_NOT_REGISTERED,
    "PluginNotLoaded": DispatchStatus.PLUGIN_NOT_LOADED,
    "PermissionDenied": DispatchStatus.PERMISSION_DENIED,
    "SandboxViolation": DispatchStatus.SANDBOX_VIOLATION,
    "HeaderDecodeError": DispatchStatus.HEADER_DECODE_ERROR,
    "FrameDecodeError": DispatchStatus.HEADER_DECODE_ERROR,
    "FrameTooLarge": DispatchStatus.FRAME_TOO_LARGE,
    "UnknownFrameType": DispatchStatus.UNKNOWN_FRAME_TYPE,
    "CircuitOpen": DispatchStatus.CIRCUIT_OPEN,
}
#: How long grants for requests alone may wait to leave with their REPLY (seconds).
CREDIT_DELAY = 0.001
#: How long a connection whose rate limit let nothing through waits before asking again.
RATE_RETRY = 0.005

_HELLO, _OPEN, _DRAINING, _CLOSED = range(4)
# Message kinds as plain ints: comparing them costs a fraction of an IntEnum member lookup.
_BATCH, _REQUEST = int(Kind.BATCH), int(Kind.REQUEST)
_ACK, _CREDIT, _REPLY = Kind.ACK, Kind.CREDIT, Kind.REPLY
#: Encoded CREDIT messages by their grants: a request's single grant repeats endlessly.
_CREDIT_MESSAGES: dict[tuple[tuple[int, int], ...], bytes] = {}
_CREDIT_CACHE_SIZE = 256
#: Every permission bit: a peer holding them all for a plugin is not filtered at all.
_ALL_PERMISSIONS = sum(p.value for p in Permission)


class SessionStats(msgspec.Struct, frozen=True, kw_only=True):
    """The server's ledger (one connection's, or a service's total) at the moment of the call.

    Every frame read off a connection in a whole BATCH or REQUEST is in exactly one
    bucket: ``frames`` = ``sum(by_status)`` (decided: enqueued or refused, each with its
    ``DispatchStatus``) + ``discarded`` (in a message refused for a protocol violation,
    e.g. beyond its credit) + ``in_flight`` (read, not yet decided).
    """

    #: Connections accepted (1 for a connection's own stats).
    connections: int = 0
    #: Connections open now.
    open_connections: int = 0
    #: BATCH messages read.
    batches: int = 0
    #: REQUEST messages read.
    requests: int = 0
    #: Frames read in BATCH and REQUEST messages.
    frames: int = 0
    #: Decided frames by ``DispatchStatus`` (index = status value; ``OK`` = enqueued).
    by_status: tuple[int, ...] = (0,) * _STATUSES
    #: Frames of messages refused for a protocol violation (never dispatched).
    discarded: int = 0
    #: Frames read and not yet decided (waiting for queue space or a rate limit).
    in_flight: int = 0
    #: Requests whose handler raised (answered with the error in REPLY).
    handler_errors: int = 0
    #: REPLY messages written.
    replies: int = 0
    #: ACK, CREDIT and REPLY messages not written because the peer had gone.
    answers_lost: int = 0
    #: Peers that sent frames beyond their credit (disconnected).
    credit_violations: int = 0
    #: Connections ended with an ERROR message (credit violations included).
    protocol_errors: int = 0
    #: Peers the access policy refused.
    refused_peers: int = 0

    @property
    def decided(self) -> int:
        """Frames enqueued or refused (``sum(by_status)``)."""
        return sum(self.by_status)

    def count(self, status: DispatchStatus) -> int:
        """Decided frames that ended with ``status``."""
        return self.by_status[status]


_COUNTERS = tuple(
    name
    for name in SessionStats.__struct_fields__
    if name not in ("by_status", "open_connections", "in_flight")
)


class SessionService:
    """What the connections of one session listener share; ``protocol`` is the factory.

    ``credit`` is the initial credit per plugin and connection: the most frames a peer
    may have sent to one plugin and not yet seen granted back. ``max_message`` caps one
    message (a BATCH's bytes), ``max_batch`` its frames. ``policy`` admits peers and
    restricts them (a ``nyxplug.serving.policy.PeerPolicy``, e.g.
    ``nyxplug.serving.security.TlsPolicy``); ``None`` admits everyone to everything.
    """

    def __init__(
        self,
        dispatcher: Dispatcher,
        *,
        policy: PeerPolicy | None = None,
        credit: int = 4096,
        max_message: int = 4 << 20,
        max_batch: int = 4096,
        hello_timeout: float = 10.0,
        name: str = "nyxplug",
    ) -> None:
        self.dispatcher = dispatcher
        self.policy: PeerPolicy = OPEN_POLICY if policy is None else policy
        self.credit = check_uint("credit", credit, 2**31)
        self.max_message = check_uint("max_message", max_message, 0xFFFFFFFF)
        self.max_batch = check_uint("max_batch", max_batch, 0xFFFFFFFF)
        if self.credit < 1 or self.max_batch < 1 or self.max_message < 32:
            raise ValueError(
                f"Expected `credit` >= 1, `max_batch` >= 1 and `max_message` >= 32, got "
                f"{credit}, {max_batch} and {max_message}"
            )
        self.hello_timeout = hello_timeout
        self.name = name
        twin = sys.modules[type(dispatcher).__module__]
        self._decode_batch = twin.decode_batch  # messages of the dispatcher's own twin
        self.connections: set[SessionProtocol] = set()
        self._closed = dict.fromkeys(_COUNTERS, 0)
        self._closed_by_status = [0] * _STATUSES
        self._draining = False

    def protocol(self) -> SessionProtocol:
        """A protocol for one new connection (pass this method to ``create_server``)."""
        return SessionProtocol(self)

    def stats(self) -> SessionStats:
        """The total over every connection, closed and open."""
        counts = dict(self._closed)
        by_status = list(self._closed_by_status)
        in_flight = 0
        for protocol in self.connections:
            for name in _COUNTERS:
                counts[name] += protocol._counts[name]
            for status, n in enumerate(protocol._batch_counts):
                by_status[status] += n + protocol._request_counts[status]
            in_flight += protocol._in_flight
        return SessionStats(
            **counts,
            by_status=tuple(by_status),
            in_flight=in_flight,
            open_connections=len(self.connections),
        )

    def connection_stats(self) -> list[SessionStats]:
        """One snapshot per open connection."""
        return [protocol.stats() for protocol in self.connections]

    async def drain(self, *, timeout: float | None = 30.0) -> None:
        """Send every open session GOAWAY and close it once what it read is handled and
        its requests answered. Close the server (stop accepting) first. After ``timeout``
        seconds the connections still open are aborted (their unwritten answers are
        counted in ``answers_lost``)."""
        self._draining = True
        protocols = list(self.connections)
        for protocol in protocols:
            protocol.shutdown()
        closing = asyncio.gather(*(protocol.wait_closed() for protocol in protocols))
        try:
            await asyncio.wait_for(asyncio.shield(closing), timeout)
        except TimeoutError:
            for protocol in protocols:
                protocol.abort()
            await closing

    def _retire(self, protocol: SessionProtocol) -> None:
        if protocol in self.connections:
            self.connections.discard(protocol)
            for name in _COUNTERS:
                self._closed[name] += protocol._counts[name]
            for status in range(_STATUSES):
                self._closed_by_status[status] += (
                    protocol._batch_counts[status] + protocol._request_counts[status]
                )


class SessionProtocol(asyncio.Protocol):
    """One connection of a ``SessionService`` (see the module's docstring)."""

    def __init__(self, service: SessionService) -> None:
        self._service = service
        self._dispatcher = service.dispatcher
        self._try_many = service.dispatcher.try_dispatch_many
        self._reader = SessionReader(CLIENT_KINDS, service.max_message)
        self._transport: asyncio.Transport | None = None
        self._state = _HELLO
        self._access: PeerAccess | None = None
        self._credit: dict[int, int] = {}
        self._masks: dict[int, int] = {}
        self._grants: dict[int, int] = {}
        self._next_seq = 0  # the seq the next BATCH must carry
        self._done_seq = 0  # every BATCH below this is handled (the ACK's next_seq)
        self._inbox: deque[tuple[int, bytes]] = deque()
        self._task: asyncio.Task[None] | None = None
        self._paused = False
        self._ack_due = False
        self._goaway_sent = False
        self._lost = False
        self._in_flight = 0
        self._unanswered = 0  # requests enqueued and not yet answered
        self._granted_at = 0.0  # when the oldest grant not yet sent was made (loop time)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._hello_timer: asyncio.TimerHandle | None = None
        self._credit_timer: asyncio.TimerHandle | None = None
        self._closed: asyncio.Future[None] | None = None
        self._counts = dict.fromkeys(_COUNTERS, 0)
        self._batch_counts = [0] * _STATUSES  # what the ACKs report (BATCH frames)
        self._request_counts = [0] * _STATUSES  # REQUEST frames (reported by REPLY)
        self.peer = ""

    # -- what a test or an operator may look at ---------------------------------------

    def stats(self) -> SessionStats:
        """This connection's ledger."""
        return SessionStats(
            **self._counts,
            by_status=tuple(
                a + b for a, b in zip(self._batch_counts, self._request_counts, strict=True)
            ),
            in_flight=self._in_flight,
            open_connections=0 if self._lost else 1,
        )

    @property
    def reading(self) -> bool:
        """False while this connection has paused reading (a frame waits, or draining)."""
        return not self._paused

    @property
    def buffered(self) -> int:
        """Bytes held for this connection: an unfinished message and unhandled ones."""
        return self._reader.buffered + sum(len(body) for _kind, body in self._inbox)

    async def wait_closed(self) -> None:
        """Wait until the connection is gone and every frame it read is decided."""
        if self._closed is None:
            self._closed = asyncio.get_running_loop().create_future()
            self._check_closed()
        await asyncio.shield(self._closed)

    def shutdown(self) -> None:
        """Drain: read no more, handle what was read, send ACK and GOAWAY, answer the
        requests, then close."""
        if self._state == _HELLO:
            self._state = _CLOSED
            if self._transport is not None:
                self._transport.close()
            return
        if self._state != _OPEN:
            return
        self._state = _DRAINING
        self._pause()
        if self._task is None:
            self._finish_drain()

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    # -- asyncio.Protocol -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._transport = cast(asyncio.Transport, transport)
        self._loop = loop = asyncio.get_running_loop()
        self._service.connections.add(self)
        self._counts["connections"] += 1
        if self._service._draining:
            self.shutdown()
            return
        self._hello_timer = loop.call_later(self._service.hello_timeout, self._hello_late)

    def data_received(self, data: bytes) -> None:
        if self._state >= _DRAINING:
            return  # draining or closed: nothing more is read (the peer counts it lost)
        try:
            messages = self._reader.feed(data)
        except SessionViolation as exc:
            self._violation(exc)
            return
        if messages:
            self._inbox.extend(messages)
            if self._task is None:
                self._run()

    def eof_received(self) -> bool:
        return False  # the peer is done: close once what it sent is handled

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self._transport = None
        if self._hello_timer is not None:
            self._hello_timer.cancel()
        if self._credit_timer is not None:
            self._credit_timer.cancel()
            self._credit_timer = None
        if self._state == _HELLO:
            self._state = _CLOSED
        self._check_closed()

    # -- handling messages --------------------------------------------------------------

    def _run(self) -> None:
        """Handle the inbox in order until it is empty or a message must wait."""
        inbox = self._inbox
        try:
            while inbox:
                kind, body = inbox.popleft()
                if kind == _BATCH:
                    waiter = self._batch(body)
                elif kind == _REQUEST:
                    waiter = self._request(body)
                else:
                    self._hello(body)
                    continue
                if waiter is not None:
                    self._pause()
                    self._task = asyncio.get_running_loop().create_task(self._wait(waiter))
                    return
        except SessionViolation as exc:
            self._violation(exc)
            return
        if self._ack_due or self._state != _OPEN:
            self._send_ack()
        elif self._grants and self._credit_timer is None:
            # Only requests' grants: they usually leave with the REPLY, in the same write;
            # a slow handler's sender gets them within CREDIT_DELAY anyway. The timer is
            # not cancelled when they leave: it serves the next requests (_credit_due).
            self._credit_timer = asyncio.get_running_loop().call_later(
                CREDIT_DELAY, self._credit_due
            )
        if self._state == _DRAINING:
            self._finish_drain()
        elif self._paused and self._transport is not None:
            self._paused = False
            self._transport.resume_reading()

    async def _wait(self, waiter: Coroutine[Any, Any, None]) -> None:
        try:
            await waiter
        except BaseException:
            self._task = None
            self.abort()
            self._check_closed()
            raise
        self._task = None
        if self._state != _CLOSED:
            self._run()
        self._check_closed()

    def _hello(self, body: bytes) -> None:
        if self._state != _HELLO:
            raise SessionViolation("handshake", "Expected BATCH or REQUEST, got HELLO again")
        hello = decode(Kind.HELLO, body)
        if hello.protocol != ALPN or hello.version != PROTOCOL_VERSION:
            raise SessionViolation(
                "version",
                f"Expected protocol {ALPN!r} version {PROTOCOL_VERSION}, got "
                f"{hello.protocol[:64]!r} version {hello.version}",
            )
        assert self._transport is not None
        try:
            access = self._service.policy.admit(self._transport)
        except Exception:
            _log.exception("the access policy failed on a session peer; refusing it")
            access = None
        if access is None:
            self._counts["refused_peers"] += 1
            raise SessionViolation("refused", "the server's access policy does not admit this peer")
        self._access = access
        credit = self._service.credit
        plugins = []
        registry = self._dispatcher.registry
        for plugin_id in self._dispatcher.loaded_plugins():
            # Offered even with no permission: the peer's frames are then refused
            # PERMISSION_DENIED and counted on both sides (as the interop listener does),
            # instead of vanishing on the client as "not registered".
            mask = access.permissions(plugin_id).value
            self._credit[plugin_id] = credit
            self._masks[plugin_id] = mask
            registered = registry.get(plugin_id)
            if registered is not None:  # what its frames can get through: both must allow
                mask &= registered.permissions.value
            plugins.append(PluginGrant(plugin_id, mask, credit))
        self.peer = hello.client[:TEXT_LIMIT]
        self._state = _OPEN
        if self._hello_timer is not None:
            self._hello_timer.cancel()
            self._hello_timer = None
        welcome = Welcome(
            PROTOCOL_VERSION,
            self._service.name,
            plugins,
            self._service.max_message,
            self._service.max_batch,
        )
        self._write(encode(Kind.WELCOME, welcome))

    def _decode(self, kind: str, body: bytes) -> tuple[int, list[Any]]:
        if self._state == _HELLO:
            raise SessionViolation("handshake", f"Expected HELLO first, got {kind}")
        try:
            seq, messages = self._service._decode_batch(body, 0xFFFF, self._service.max_message)
        except ValueError as exc:
            raise SessionViolation("bad-batch", f"{kind}: {exc}") from None
        return seq, messages

    def _take_credit(self, messages: list[Any], kind: str, number: int) -> dict[int, int]:
        """Count the frames per plugin and take them from the peer's credit; beyond it,
        the message (``kind`` ``number``, for the error) is discarded and the session ends."""
        per: dict[int, int] = {}
        get = per.get
        for msg in messages:
            plugin_id = msg.header.id
            per[plugin_id] = get(plugin_id, 0) + 1
        credit = self._credit
        for plugin_id, n in per.items():
            have = credit.get(plugin_id, 0)
            if have < n:
                self._counts["credit_violations"] += 1
                self._counts["discarded"] += len(messages)
                raise SessionViolation(
                    "credit",
                    f"Expected at most {have} frames for plugin {plugin_id} (its credit), "
                    f"got {n} - in {kind} {number}",
                )
        for plugin_id, n in per.items():
            credit[plugin_id] -= n
        return per

    def _grant(self, per: dict[int, int]) -> None:
        grants = self._grants
        if not grants:
            assert self._loop is not None
            self._granted_at = self._loop.time()
        for plugin_id, n in per.items():
            grants[plugin_id] = grants.get(plugin_id, 0) + n
            self._credit[plugin_id] += n

    def _grant_one(self, plugin_id: int) -> None:
        """``_grant({plugin_id: 1})``: a request's frame is decided."""
        grants = self._grants
        if not grants:
            assert self._loop is not None
            self._granted_at = self._loop.time()
        grants[plugin_id] = grants.get(plugin_id, 0) + 1
        self._credit[plugin_id] += 1

    def _denied(self, messages: list[Any], counts: list[int]) -> list[Any]:
        """The frames this peer's access allows; the others are counted PERMISSION_DENIED."""
        required = self._dispatcher.required_permission
        masks = self._masks
        keep = []
        for msg in messages:
            need = required(msg.frame_type)
            if need is not None and need.value & ~masks.get(msg.header.id, 0):
                counts[DispatchStatus.PERMISSION_DENIED] += 1
            else:
                keep.append(msg)
        return keep

    def _batch(self, body: bytes) -> Coroutine[Any, Any, None] | None:
        seq, messages = self._decode("BATCH", body)
        if seq != self._next_seq:
            raise SessionViolation("sequence", f"Expected BATCH seq {self._next_seq}, got {seq}")
        n = len(messages)
        if n > self._service.max_batch:
            raise SessionViolation(
                "too-many", f"Expected at most {self._service.max_batch} frames, got {n}"
            )
        self._next_seq = seq + 1
        counts = self._counts
        counts["batches"] += 1
        counts["frames"] += n
        per = self._take_credit(messages, "BATCH", seq)
        batch_counts = self._batch_counts
        if any(self._masks[plugin_id] != _ALL_PERMISSIONS for plugin_id in per):
            messages = self._denied(messages, batch_counts)
        assert self._access is not None
        allowed = self._access.take(len(messages)) if messages else 0
        if allowed >= len(messages):
            result = self._try_many(messages)
            if not result.blocked:
                if result.dispatched == result.consumed:
                    batch_counts[0] += result.dispatched
                else:
                    for status in result.statuses:
                        batch_counts[status] += 1
                self._grant(per)
                self._done_seq = seq + 1
                self._ack_due = True
                return None
        else:  # the rate limit lets part of it through now
            result = self._try_many(messages[: max(allowed, 0)])
        for status in result.statuses[: result.consumed]:
            batch_counts[status] += 1
        self._in_flight = len(messages) - result.consumed
        return self._finish_batch(seq, messages, result.consumed, per, result.blocked)

    async def _finish_batch(
        self, seq: int, messages: list[Any], start: int, per: dict[int, int], blocked: bool
    ) -> None:
        """The rest of a batch, from the frame that met a full queue (``blocked``) or the
        peer's rate limit."""
        counts = self._batch_counts
        end = len(messages)
        index = start
        while index < end:
            if blocked:
                msg = messages[index]
                try:
                    await self._dispatcher.dispatch(msg.frame_type, msg.header, msg.payload)
                    counts[0] += 1
                except DispatchError as exc:
                    counts[_STATUS_OF[type(exc).__name__]] += 1
                index += 1
                self._in_flight -= 1
                blocked = False
                continue
            allowed = await self._take(end - index)
            chunk = messages[index : index + allowed] if index or allowed < end else messages
            result = self._try_many(chunk)
            for status in result.statuses[: result.consumed]:
                counts[status] += 1
            index += result.consumed
            self._in_flight -= result.consumed
            blocked = result.blocked
        self._grant(per)
        self._done_seq = seq + 1
        self._ack_due = True

    async def _take(self, n: int) -> int:
        """How many of ``n`` frames the peer's rate limit lets through, waiting for one."""
        assert self._access is not None
        while True:
            allowed = self._access.take(n)
            if allowed > 0:
                return min(allowed, n)
            await asyncio.sleep(RATE_RETRY)

    def _request(self, body: bytes) -> Coroutine[Any, Any, None] | None:
        request_id, messages = self._decode("REQUEST", body)
        if len(messages) != 1:
            raise SessionViolation(
                "bad-request", f"Expected 1 frame in REQUEST {request_id}, got {len(messages)}"
            )
        counts = self._counts
        counts["requests"] += 1
        counts["frames"] += 1
        msg = messages[0]
        plugin_id = msg.header.id
        credit = self._credit
        have = credit.get(plugin_id, 0)
        if have < 1:
            self._take_credit(messages, "REQUEST", request_id)  # the violation, counted
        credit[plugin_id] = have - 1
        if self._masks[plugin_id] != _ALL_PERMISSIONS and not self._denied(
            messages, self._request_counts
        ):
            self._grant_one(plugin_id)
            self._reply(request_id, DispatchStatus.PERMISSION_DENIED, None, "PermissionDenied",
                        f"This peer may not send frame 0x{int(msg.frame_type):02x} to plugin "
                        f"{plugin_id} - the server's access policy does not grant its "
                        "permission")  # fmt: skip
            return None
        assert self._access is not None
        if self._access.take(1) >= 1:
            # The common case: the queue has room, so ``submit`` finishes without waiting;
            # run it to its first suspension here (as 3.12's eager tasks would) instead of
            # paying a task and a loop iteration per request.
            # The reply comes back through a sink the worker calls as it answers: the
            # REPLY is written in the worker's step, not a loop iteration later.
            submitting = self._dispatcher.submit(
                msg.frame_type,
                msg.header,
                msg.payload,
                reply_to=ReplySink(self._answered, request_id),
            )
            try:
                waiting = submitting.send(None)
            except StopIteration:  # _submitted(plugin_id), inline
                self._request_counts[0] += 1
                self._grant_one(plugin_id)
                self._unanswered += 1
                return None
            except DispatchError as exc:
                self._refused(request_id, plugin_id, exc)
                return None
            self._in_flight += 1
            return self._finish_submit(request_id, plugin_id, submitting, waiting)
        self._in_flight += 1
        return self._submit(request_id, msg)

    async def _finish_submit(
        self,
        request_id: int,
        plugin_id: int,
        submitting: Coroutine[Any, Any, ReplySink],
        waiting: Any,
    ) -> None:
        """Drive a ``submit`` that suspended on ``waiting`` (a future) to its end, as a task
        would: wait for the future, resume the coroutine, repeat."""
        try:
            while True:
                try:
                    await waiting
                except asyncio.CancelledError:
                    submitting.throw(asyncio.CancelledError())
                    raise
                except BaseException:
                    pass  # the coroutine sees the future's error when resumed
                try:
                    waiting = submitting.send(None)
                except StopIteration:
                    break
        except DispatchError as exc:
            self._refused(request_id, plugin_id, exc)
            return
        finally:
            self._in_flight -= 1
        self._submitted(plugin_id)

    async def _submit(self, request_id: int, msg: Any) -> None:
        """A request of a rate-limited peer: wait for a token, then for queue space."""
        try:
            await self._take(1)
            await self._dispatcher.submit(
                msg.frame_type,
                msg.header,
                msg.payload,
                reply_to=ReplySink(self._answered, request_id),
            )
        except DispatchError as exc:
            self._refused(request_id, msg.header.id, exc)
            return
        finally:
            self._in_flight -= 1
        self._submitted(msg.header.id)

    def _refused(self, request_id: int, plugin_id: int, exc: DispatchError) -> None:
        status = _STATUS_OF[type(exc).__name__]
        self._request_counts[status] += 1
        self._grant_one(plugin_id)
        self._reply(request_id, status, None, type(exc).__name__, str(exc))

    def _submitted(self, plugin_id: int) -> None:
        self._request_counts[0] += 1
        self._grant_one(plugin_id)
        self._unanswered += 1

    def _answered(self, request_id: int, value: bytes | None, error: BaseException | None) -> None:
        """The request's reply sink: called by the plugin's worker as it answers."""
        self._unanswered -= 1
        if error is not None:
            if isinstance(error, HandlerError):
                self._counts["handler_errors"] += 1
            self._reply(request_id, 0, None, type(error).__name__, str(error))
        else:  # _reply(request_id, OK, value, "", ""), inline: the round trip's hot path
            self._counts["replies"] += 1
            reply = encode(
                _REPLY, Reply(request_id, 0, None if value is None else bytes(value), "", "")
            )
            grants = self._ack_message()
            self._write(grants + reply if grants else reply)
        if self._state == _DRAINING and self._goaway_sent and not self._unanswered:
            self._close()

    def _reply(
        self, request_id: int, status: int, value: bytes | None, name: str, text: str
    ) -> None:
        self._counts["replies"] += 1
        reply = encode(_REPLY, Reply(request_id, status, value, name, text[:TEXT_LIMIT]))
        # the grants first, in the same write: the reply may free the sender's next request
        grants = self._ack_message()
        self._write(grants + reply if grants else reply)

    # -- writing ----------------------------------------------------------------------

    def _send_ack(self) -> None:
        message = self._ack_message()
        if message:
            self._write(message)

    def _credit_due(self) -> None:
        """The credit timer: grants made CREDIT_DELAY ago leave now, in a CREDIT (or the
        ACK due); younger ones (the timer outlived the grants it was armed for, which left
        with their REPLY) wait for their own deadline."""
        self._credit_timer = None
        if not self._grants:
            return
        assert self._loop is not None
        wait = self._granted_at + CREDIT_DELAY - self._loop.time()
        if wait > 0:
            self._credit_timer = self._loop.call_later(wait, self._credit_due)
        else:
            self._send_ack()

    def _ack_message(self) -> bytes:
        """The ACK (batches handled since the last one) or CREDIT (grants only) due, or b""."""
        grants = self._grants
        if self._ack_due:
            self._ack_due = False
            credits = list(grants.items())
            grants.clear()
            return encode(_ACK, Ack(self._done_seq, self._batch_counts, credits))
        if grants:
            key = tuple(grants.items())
            grants.clear()
            message = _CREDIT_MESSAGES.get(key)
            if message is None:
                if len(_CREDIT_MESSAGES) >= _CREDIT_CACHE_SIZE:
                    _CREDIT_MESSAGES.clear()
                message = _CREDIT_MESSAGES[key] = encode(_CREDIT, Credit(list(key)))
            return message
        return b""

    def _write(self, data: bytes) -> None:
        transport = self._transport
        if transport is not None and not transport.is_closing():
            transport.write(data)
        else:
            self._counts["answers_lost"] += 1

    def _pause(self) -> None:
        if not self._paused and self._transport is not None:
            self._paused = True
            self._transport.pause_reading()

    def _violation(self, exc: SessionViolation) -> None:
        """Refuse the peer: ERROR, then close (what was read after it is not handled)."""
        self._counts["protocol_errors"] += 1
        _log.info("session peer %r: %s", self.peer, exc)
        self._inbox.clear()
        self._write(encode(Kind.ERROR, Error(exc.code, exc.detail[:TEXT_LIMIT])))
        self._state = _CLOSED
        self._close()

    def _hello_late(self) -> None:
        self._hello_timer = None
        if self._state == _HELLO:
            self._violation(
                SessionViolation(
                    "handshake", f"Expected HELLO within {self._service.hello_timeout:g} s"
                )
            )

    def _finish_drain(self) -> None:
        if self._transport is None or self._transport.is_closing():
            self._goaway_sent = True  # the peer has gone: nobody to tell
        if not self._goaway_sent:
            self._goaway_sent = True
            self._ack_due = True
            self._send_ack()
            self._write(encode(Kind.GOAWAY, GoAway(self._done_seq, "server shutting down")))
        if not self._unanswered:
            self._close()

    def _close(self) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.close()
        self._check_closed()

    def _check_closed(self) -> None:
        if self._lost and self._task is None:
            self._service._retire(self)
            if self._closed is not None and not self._closed.done():
                self._closed.set_result(None)
