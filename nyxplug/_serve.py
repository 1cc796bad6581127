"""Serving frames over a byte stream: the asyncio adapter of SPEC 8's interop listener.

``FrameService(dispatcher)`` holds what the connections share (the dispatcher, the
limits, the ledger); its ``protocol`` method is the protocol factory for
``loop.create_server`` / ``loop.create_unix_server`` (asyncio and uvloop alike). Each
connection (``FrameProtocol``) feeds the bytes it receives to a ``FrameReader``, decodes
every message as a ``PluginFrame`` and dispatches the frames in order, numbering them
from 0 (``seq``). Answers go back in ``seq`` order, only when there is something to say:
a reply frame, or a refusal frame (type 0x54) for a frame that did not decode, was
refused by the dispatcher or whose handler raised. A framing error (a bad length) is
refused with the next ``seq`` and ends the connection.

Backpressure: each frame is handed over with ``Dispatcher.submit``, which waits while
the target queue is full; while it waits the connection stops reading
(``transport.pause_reading()``), so the peer's sends block in its kernel instead of
growing our memory. A connection holds at most the reader's unfinished message, the
frames of the chunks already read, and ``max_pending`` unanswered frames.

Access (``policy=``, a ``nyxplug.serving.policy.PeerPolicy``): when a connection is made
(after its TLS handshake) the policy admits it or refuses it (counted in
``refused_connections``). An admitted peer's frames pass only for the plugins and frame
types its access grants; the others are refused as ``PermissionDenied`` (counted in
``refused`` and ``denied``). Its rate limit is asked once per batch of frames read; frames
over the rate wait - reading pauses, as for a full queue - until tokens return
(``throttled``), and are abandoned (``abandoned``) only if the peer goes away meanwhile.
Without a policy every connection may send everything, unthrottled, and pays nothing for
the checks.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections import deque
from typing import Any, Protocol, cast

import cbor2
import msgspec

from ._constants import DEFAULT_MAX_FRAME_SIZE, Permission
from ._errors import DispatchError, FrameError, PermissionDenied
from ._frames import encode_frame
from ._impl import Dispatcher, PluginFrame
from ._stream import FrameReader, frame_message
from ._validate import check_uint

__all__ = ("REFUSAL_FRAME_TYPE", "FrameProtocol", "FrameService", "StreamStats")

#: The frame type of a refusal or handler error sent back to the peer (SPEC 8).
REFUSAL_FRAME_TYPE = 0x54

_log = logging.getLogger("nyxplug.serve")

#: While a peer is over its rate, its connection asks for tokens again after this many
#: seconds, doubling up to the maximum while none come (the bucket saves them up
#: meanwhile, so the rate holds whatever the retry timing; only latency depends on it).
_RATE_RETRY_MIN = 0.001
_RATE_RETRY_MAX = 0.05


# The shape of nyxplug.serving.policy's PeerPolicy / PeerAccess (structural: the engine
# may not import the serving layer, and needs nothing more than these methods).
class _PeerAccess(Protocol):
    identity: str

    def permissions(self, plugin_id: int) -> Permission: ...

    def take(self, n: int) -> int: ...


class _PeerPolicy(Protocol):
    def admit(self, transport: asyncio.BaseTransport) -> _PeerAccess | None: ...


class StreamStats(msgspec.Struct, frozen=True, kw_only=True):
    """The ledger of a ``FrameService`` at the moment of the call.

    Every message read off a connection is in exactly one bucket: ``frames`` =
    ``dispatched + refused + undecodable + abandoned + waiting``.
    """

    #: Connections accepted since the service was created.
    connections: int = 0
    #: Connections open now.
    open_connections: int = 0
    #: Whole messages read off the connections (each gets a ``seq``).
    frames: int = 0
    #: Frames enqueued for a plugin (``Dispatcher.submit`` returned).
    dispatched: int = 0
    #: Frames refused (a ``DispatchError``: not registered, full..., or not allowed to
    #: the peer by the listener's policy).
    refused: int = 0
    #: Of ``refused``: frames the peer's access did not allow (``PermissionDenied``).
    denied: int = 0
    #: Messages that were not a decodable ``PluginFrame``.
    undecodable: int = 0
    #: Messages read but not yet handed to the dispatcher.
    waiting: int = 0
    #: Connections ended by a framing error (a bad length, or a message cut short).
    framing_errors: int = 0
    #: Reply frames sent.
    replies: int = 0
    #: Dispatched frames whose handler raised (answered with a refusal frame).
    handler_errors: int = 0
    #: Answers not sent because the peer had gone.
    answers_lost: int = 0
    #: Connections the policy refused when they were made (closed at once, no frames read).
    refused_connections: int = 0
    #: Frames that had to wait for the peer's rate limit (reading paused meanwhile).
    throttled: int = 0
    #: Frames read but never dispatched: their peer went away while they waited for its
    #: rate limit.
    abandoned: int = 0


class FrameService:
    """What the connections of one listener share; ``protocol`` is the factory.

    ``max_pending`` bounds the frames one connection may have dispatched but not yet
    answered (their answers must go out in order); at the bound it stops reading.
    ``policy`` admits connections and says what each peer may send, how fast (a
    ``nyxplug.serving.policy.PeerPolicy``, e.g. ``nyxplug.serving.security.TlsPolicy``);
    ``None`` lets every connection send everything.
    """

    def __init__(
        self,
        dispatcher: Dispatcher,
        *,
        max_size: int = DEFAULT_MAX_FRAME_SIZE,
        max_pending: int = 1024,
        policy: _PeerPolicy | None = None,
    ) -> None:
        self.dispatcher = dispatcher
        self.policy = policy
        self.max_size = check_uint("max_size", max_size, 0xFFFFFFFF)
        self.max_pending = check_uint("max_pending", max_pending, 2**31)
        if self.max_pending < 1:
            raise ValueError(f"Expected `max_pending` >= 1, got {max_pending}")
        # The codec of the dispatcher's own twin, so its headers need no conversion.
        self._frame_class: type[PluginFrame] = sys.modules[type(dispatcher).__module__].PluginFrame
        self.connections: set[FrameProtocol] = set()
        self._counts = dict.fromkeys(StreamStats.__struct_fields__, 0)
        self._draining = False

    def protocol(self) -> FrameProtocol:
        """A protocol for one new connection (pass this method to ``create_server``)."""
        return FrameProtocol(self)

    def stats(self) -> StreamStats:
        counts = dict(self._counts)
        counts["open_connections"] = len(self.connections)
        counts["waiting"] = sum(
            sum(type(m) is bytes for m in p._inbox) + p._waiting for p in self.connections
        )
        return StreamStats(**counts)

    async def drain(self, *, timeout: float | None = 30.0) -> None:
        """Stop reading on every connection, let the frames read so far be dispatched
        and answered, close the connections and wait for them. Close the server (stop
        accepting) before calling this. After ``timeout`` seconds the connections still
        open (a peer that does not read its answers) are aborted; their frames are
        still handled, and the answers they miss are counted in ``answers_lost``."""
        self._draining = True
        protocols = list(self.connections)
        for protocol in protocols:
            protocol.shutdown()
        closing = asyncio.gather(*(protocol.wait_closed() for protocol in protocols))
        try:
            await asyncio.wait_for(asyncio.shield(closing), timeout)
        except TimeoutError:
            for protocol in protocols:
                if protocol._transport is not None:
                    protocol._transport.abort()
            await closing


class FrameProtocol(asyncio.Protocol):
    """One connection of a ``FrameService`` (see the module's docstring)."""

    def __init__(self, service: FrameService) -> None:
        self._service = service
        self._counts = service._counts
        self._reader = FrameReader(max_size=service.max_size)
        self._inbox: deque[bytes | FrameError] = deque()  # read, not yet dispatched
        # In seq order: (seq, frame_type, id, flags, reply future) or ready answer bytes.
        self._answers: deque[Any] = deque()
        self._seq = 0
        self._waiting = 0
        self._transport: asyncio.Transport | None = None
        self._access: _PeerAccess | None = None
        self._pump: asyncio.Task[None] | None = None
        self._parked = False  # the pump waits: a full queue, or too many unanswered
        self._paused = False  # reading paused by us
        self._writing_paused = False
        self._closing = False  # read nothing more; close once everything is answered
        self._lost = False
        self._room: asyncio.Future[None] | None = None
        # The reply the oldest unanswered frame waits for: the one future per connection
        # with a done-callback, so answers go out once per completed run of frames, not
        # once per frame (a callback per future costs a loop turn each).
        self._watched: asyncio.Future[bytes | None] | None = None
        self._closed: asyncio.Future[None] | None = None

    # -- what a test or an operator may look at ---------------------------------------

    @property
    def reading(self) -> bool:
        """False while this connection has paused reading (backpressure or shutdown)."""
        return not self._paused

    @property
    def buffered(self) -> int:
        """Bytes held for this connection: the reader's tail plus the read messages."""
        return self._reader.buffered + sum(
            len(m) for m in self._inbox if not isinstance(m, FrameError)
        )

    async def wait_closed(self) -> None:
        """Wait until the connection is gone and every frame it sent is accounted for."""
        if self._closed is None:
            self._closed = asyncio.get_running_loop().create_future()
            self._check_closed()
        await asyncio.shield(self._closed)

    def shutdown(self) -> None:
        """Read no more; close once the frames read so far are dispatched and answered."""
        self._closing = True
        self._pause()
        self._finish()

    # -- asyncio.Protocol -------------------------------------------------------------

    @property
    def peer(self) -> str | None:
        """Who the policy says the peer is (``None`` without a policy, or before admission)."""
        return None if self._access is None else self._access.identity

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        policy = self._service.policy
        if policy is not None:
            try:
                self._access = policy.admit(transport)
            except Exception:
                _log.exception("the listener's policy failed on a new connection; refusing it")
            if self._access is None:
                self._counts["refused_connections"] += 1
                self._closing = True
                cast(asyncio.Transport, transport).abort()
                return
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._transport = cast(asyncio.Transport, transport)
        self._service.connections.add(self)
        self._counts["connections"] += 1
        if self._service._draining:
            self.shutdown()

    def data_received(self, data: bytes) -> None:
        if self._closing:
            return
        behind = bool(self._inbox)
        try:
            messages = self._reader.feed(data)
        except FrameError:
            messages = []
        self._take(messages)
        if self._reader.error is not None:
            self._end_stream(self._reader.error)
        elif self._parked or behind:
            self._pause()

    def eof_received(self) -> bool:
        try:
            self._reader.close()
        except FrameError as exc:
            if not self._closing:
                self._end_stream(exc)
        self._closing = True
        self._finish()
        # Keep the transport open to send the answers; TLS has no half-close in asyncio
        # (the close_notify ends both directions), so there the answers still due are lost,
        # counted in answers_lost.
        return self._transport is None or self._transport.get_extra_info("sslcontext") is None

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self._transport = None
        if not self._closing:
            try:
                self._reader.close()
            except FrameError:
                self._counts["framing_errors"] += 1  # cut inside a message: not a frame
        self._closing = True
        if self._room is not None and not self._room.done():
            self._room.set_result(None)
        self._flush()
        self._check_closed()

    def pause_writing(self) -> None:
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._writing_paused = False
        self._make_room()

    # -- reading and dispatching ------------------------------------------------------

    def _take(self, messages: list[bytes]) -> None:
        if not messages:
            return
        self._counts["frames"] += len(messages)
        self._inbox.extend(messages)
        if self._pump is None:
            self._pump = asyncio.get_running_loop().create_task(self._run())

    def _end_stream(self, error: FrameError) -> None:
        """A bad length: refuse it after the frames before it, then close."""
        self._counts["framing_errors"] += 1
        self._closing = True
        self._inbox.append(error)
        if self._pump is None:
            self._pump = asyncio.get_running_loop().create_task(self._run())

    def _pause(self) -> None:
        if not self._paused and self._transport is not None:
            self._paused = True
            self._transport.pause_reading()

    async def _run(self) -> None:
        """Dispatch the read messages in order; the one task per connection that waits."""
        counts = self._counts
        inbox = self._inbox
        dispatcher = self._service.dispatcher
        submit = dispatcher.submit
        max_size = self._service.max_size
        decode = self._service._frame_class.decode
        access = self._access
        budget = 0  # frames the peer's rate lets through before asking again
        # Within one run of the pump (the frames read so far), what each frame type
        # requires and what the peer may send to each plugin, as ints: the enum
        # operations would cost more than the rest of the check.
        required_of: dict[int, int] = {}
        allowed_for: dict[int, int] = {}
        try:
            while inbox:
                message = inbox.popleft()
                if isinstance(message, FrameError):
                    self._refuse(self._seq, 0, message)
                    inbox.clear()
                    break
                if access is not None:
                    if not budget:
                        budget = access.take(len(inbox) + 1)
                        if not budget:
                            budget = await self._wait_for_rate(access, len(inbox) + 1)
                        if not budget:  # the peer went away while its frames waited
                            counts["abandoned"] += 1 + sum(type(m) is bytes for m in inbox)
                            inbox.clear()
                            break
                    budget -= 1
                seq = self._seq
                self._seq += 1
                try:
                    frame = decode(message, max_size=max_size)
                except FrameError as exc:
                    counts["undecodable"] += 1
                    self._refuse(seq, 0, exc)
                    continue
                header = frame.header
                if access is not None:
                    frame_type = frame.frame_type
                    required = required_of.get(frame_type)
                    if required is None:
                        routed = dispatcher.required_permission(frame_type)
                        required = required_of[frame_type] = 0 if routed is None else routed.value
                    plugin_id = header.id
                    allowed = allowed_for.get(plugin_id)
                    if allowed is None:
                        allowed = allowed_for[plugin_id] = access.permissions(plugin_id).value
                    if required and not allowed & required:
                        counts["refused"] += 1
                        counts["denied"] += 1
                        info = dispatcher.registry.get(plugin_id)
                        denied = PermissionDenied(
                            plugin_id, frame_type, Permission(required), info, access.identity
                        )
                        self._refuse(seq, plugin_id, denied)
                        continue
                self._waiting = 1
                self._parked = True
                try:
                    while len(self._answers) >= self._service.max_pending or (
                        self._writing_paused and not self._lost
                    ):
                        self._pause()
                        self._room = asyncio.get_running_loop().create_future()
                        await self._room
                    reply = await submit(frame.frame_type, header, frame.payload)
                except DispatchError as exc:
                    counts["refused"] += 1
                    self._refuse(seq, header.id, exc)
                    continue
                finally:
                    self._parked = False
                    self._waiting = 0
                counts["dispatched"] += 1
                self._answers.append((seq, int(frame.frame_type), header.id, header.flags, reply))
                if self._watched is None:
                    self._watch_head()
        except Exception:
            _log.exception("frame stream connection failed; closing it")
            if self._transport is not None:
                self._transport.abort()
            raise
        finally:
            self._pump = None
            if self._paused and not self._closing and self._transport is not None:
                self._paused = False
                self._transport.resume_reading()
            self._flush()
            self._finish()

    async def _wait_for_rate(self, access: _PeerAccess, n: int) -> int:
        """Pause reading until the peer's rate lets some of ``n`` frames through; how
        many (0: the connection was lost meanwhile)."""
        loop = asyncio.get_running_loop()
        delay = _RATE_RETRY_MIN
        self._waiting = 1  # the frame in hand, for the ledger
        self._parked = True
        try:
            while not self._lost:
                self._pause()
                room = self._room = loop.create_future()
                timer = loop.call_later(delay, _wake, room)
                try:
                    await room
                finally:
                    timer.cancel()
                granted = access.take(n)
                if granted:
                    self._counts["throttled"] += granted
                    return granted
                delay = min(delay * 2, _RATE_RETRY_MAX)
            return 0
        finally:
            self._parked = False
            self._waiting = 0

    def _refuse(self, seq: int, plugin_id: int, exc: BaseException) -> None:
        self._answers.append(_refusal(seq, plugin_id, exc))
        self._flush()

    # -- answering, in seq order ------------------------------------------------------

    def _answered(self, reply: asyncio.Future[bytes | None]) -> None:
        self._watched = None
        self._flush()
        self._finish()

    def _watch_head(self) -> None:
        """Be called back when the oldest unanswered frame's reply is done."""
        answers = self._answers
        if answers and self._watched is None and type(answers[0]) is not bytes:
            reply = answers[0][4]
            self._watched = reply
            reply.add_done_callback(self._answered)

    def _flush(self) -> None:
        answers = self._answers
        out: list[bytes] = []
        counts = self._counts
        while answers:
            head = answers[0]
            if type(head) is bytes:
                answers.popleft()
                out.append(head)
                continue
            seq, frame_type, plugin_id, flags, reply = head
            if not reply.done():
                break
            answers.popleft()
            error = reply.exception() if not reply.cancelled() else asyncio.CancelledError()
            if error is not None:
                counts["handler_errors"] += 1
                out.append(_refusal(seq, plugin_id, error))
                continue
            result = reply.result()
            if result is not None:
                counts["replies"] += 1
                data = seq.to_bytes(8, "big")
                out.append(frame_message(encode_frame(frame_type, plugin_id, flags, data, result)))
        if out:
            if self._transport is not None:
                self._transport.write(b"".join(out))
            else:
                counts["answers_lost"] += len(out)
        self._watch_head()
        self._make_room()

    def _make_room(self) -> None:
        room = self._room
        if (
            room is not None
            and not room.done()
            and len(self._answers) < self._service.max_pending
            and (not self._writing_paused or self._lost)
        ):
            room.set_result(None)

    def _finish(self) -> None:
        """Close once nothing is left to dispatch or answer, if the stream is ending."""
        if self._closing and self._pump is None and not self._answers and not self._inbox:
            if self._transport is not None and not self._transport.is_closing():
                if self._paused:
                    # TLS closes with a close_notify exchange: it must read the peer's.
                    self._paused = False
                    self._transport.resume_reading()
                self._transport.close()
        self._check_closed()

    def _check_closed(self) -> None:
        if self._lost and self._pump is None and not self._answers:
            self._service.connections.discard(self)
            if self._closed is not None and not self._closed.done():
                self._closed.set_result(None)


def _wake(room: asyncio.Future[None]) -> None:
    if not room.done():
        room.set_result(None)


def _refusal(seq: int, plugin_id: int, exc: BaseException) -> bytes:
    """The framed refusal of SPEC 8: type 0x54, payload {"seq", "error", "message"}."""
    payload = cbor2.dumps({"seq": seq, "error": type(exc).__name__, "message": str(exc)})
    return frame_message(encode_frame(REFUSAL_FRAME_TYPE, plugin_id, 0, b"", payload))
