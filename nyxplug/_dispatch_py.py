"""The pure-Python dispatcher: the executable specification of ``_dispatch.pyx``.

Both files define the same classes, in the same order, with the same behaviour and
messages; a change to one lands in the other in the same commit. This one is used
when the extension is missing or ``NYXPLUG_NO_EXTENSIONS=1``.

How a frame travels: ``_prepare`` runs the checks of SPEC 3 in order and returns the
message and its target runtime (or a failure status, with the details kept for
``_error``); the caller then enqueues, parks, or fails. Each plugin's worker takes
every queued frame without awaiting between them and only parks when the queue is empty.

Backpressure is a reservation scheme. A sender that finds the queue full parks in
the plugin's FIFO of waiters. Whenever a slot frees, the oldest waiter is granted it
at once (``reserved`` + 1), so ``dispatch_nowait`` can never take a slot a waiter is
owed. The woken sender enqueues its own frame; if it is cancelled before it runs, it
hands its reservation to the next waiter. So a cancelled ``dispatch`` enqueued
nothing, and a returned one enqueued exactly once.
"""

from __future__ import annotations

import asyncio
import collections.abc
import inspect
import struct
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Coroutine, Iterable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar, final, overload

from ._batch import MAX_MESSAGE_LIMIT, BatchResult, bad_length, frame_list
from ._breaker import REFUSAL_REASONS, BreakerConfig, BreakerState, BreakerStats, CircuitBreaker
from ._constants import (
    DEFAULT_CAPACITY,
    DEFAULT_FRAME_PERMISSIONS,
    DEFAULT_MAX_FRAME_SIZE,
    DEFAULT_MAX_HEADER_SIZE,
    DEFAULT_MAX_PAYLOAD_SIZE,
    FLAG_REQUIRED,
    MAX_BATCH_SEQ,
    MAX_FLAGS,
    MAX_PLUGIN_ID,
    PLUGIN_FRAME_MAX,
    PLUGIN_FRAME_MIN,
    DispatchStatus,
    FrameType,
    Permission,
)
from ._errors import (
    AlreadyLoaded,
    AlreadyRegistered,
    BreakerNotSet,
    CircuitOpen,
    DispatchError,
    FrameTooLarge,
    HeaderDecodeError,
    NotRegistered,
    PermissionDenied,
    PluginClosed,
    PluginNotLoaded,
    PluginNotRegistered,
    SandboxViolation,
    UnknownFrameType,
    VersionError,
    WouldBlock,
    WrongThread,
)
from ._frames import (
    canonical_header_size,
    decode_frame_fields,
    decode_header_fields,
    encode_frame,
    encode_header,
)
from ._handlers import Handler, log_handler_error, report_overrun, resolve_handler
from ._info import PluginInfo, permission_mask
from ._refused import Refused
from ._replies import (
    ReplyTarget,
    abandon,
    await_reply,
    check_timeout,
    fail,
    fail_batch,
    settle,
    settle_batch,
)
from ._routing import (
    BASE_VERSION,
    MAX_VERSIONS,
    POINT_RANGE,
    MatchRule,
    RouteInfo,
    check_key,
    check_version,
    key_bits,
    route_salt,
    weight_threshold,
)
from ._routing import (
    route_point as _route_point,
)
from ._stats import DispatchStats, PluginStats
from ._validate import (
    BatchErrors,
    BytesLike,
    as_byte_view,
    as_bytes,
    check_list,
    check_overrun,
    check_policy,
    check_uint,
    enter_guard,
    frame_type_object,
    make_guard,
)

if TYPE_CHECKING:
    from .sandbox import SandboxGuard, SandboxPolicy

__all__ = (
    "Dispatcher",
    "PluginFrame",
    "PluginHeader",
    "PluginMessage",
    "PluginRegistry",
    "decode_batch",
    "encode_batch",
    "route_point",
)

_Target = TypeVar("_Target", bound=ReplyTarget)

_OK = DispatchStatus.OK
_WOULD_BLOCK = DispatchStatus.WOULD_BLOCK
_NOT_REGISTERED = DispatchStatus.PLUGIN_NOT_REGISTERED
_NOT_LOADED = DispatchStatus.PLUGIN_NOT_LOADED
_PERMISSION_DENIED = DispatchStatus.PERMISSION_DENIED
_SANDBOX_VIOLATION = DispatchStatus.SANDBOX_VIOLATION
_HEADER_DECODE_ERROR = DispatchStatus.HEADER_DECODE_ERROR
_FRAME_TOO_LARGE = DispatchStatus.FRAME_TOO_LARGE
_UNKNOWN_FRAME_TYPE = DispatchStatus.UNKNOWN_FRAME_TYPE
_PLUGIN_CLOSED = DispatchStatus.PLUGIN_CLOSED
_CIRCUIT_OPEN = DispatchStatus.CIRCUIT_OPEN

_BYTES_LIKE = (bytes, bytearray, memoryview)
_MASK64 = (1 << 64) - 1
#: Keys a route remembers the lane of (``_Route.memo``) before it forgets them all.
_MEMO_LIMIT = 1 << 12
#: The key types it remembers (hashable, and never equal to a key of another lane).
_MEMO_TYPES = frozenset((int, str, bytes))
#: The memo of a route whose keys rarely repeat (never written: see _Route.memo).
_NO_MEMO: dict[Any, Any] = {}


class _Ready:
    """The already-finished awaitable ``dispatch`` returns when it did not have to wait.

    Awaiting it costs one call instead of a coroutine per frame. It is registered as
    a ``Coroutine`` so ``asyncio.create_task`` and ``asyncio.run`` accept it too.
    """

    __slots__ = ()

    def __await__(self) -> _Ready:
        return self

    def __iter__(self) -> _Ready:
        return self

    def __next__(self) -> None:
        raise StopIteration

    def send(self, value: object) -> None:
        raise StopIteration

    def throw(self, typ: object, val: object = None, tb: object = None) -> None:
        # The frame is already enqueued, so the dispatch has happened: like a finished
        # future, a late cancellation (a task cancelled before its first step, or
        # wait_for(..., 0)) cannot undo it. Complete normally - "returned" means
        # "enqueued exactly once" (SPEC 3), never "cancelled" after enqueuing.
        raise StopIteration

    def close(self) -> None:
        return None

    def __repr__(self) -> str:
        return "<nyxplug dispatch: enqueued>"


collections.abc.Coroutine.register(_Ready)
_READY = _Ready()


@final
class PluginHeader:
    """The Nyx plugin header ``{"id", "flags", "data"}`` that names a frame's plugin."""

    __slots__ = ("_id", "_flags", "_data", "_size")

    def __init__(self, id: int, flags: int = 0, data: BytesLike = b"") -> None:
        self._id = check_uint("id", id, MAX_PLUGIN_ID)
        self._flags = check_uint("flags", flags, MAX_FLAGS)
        self._data = as_bytes("data", data)
        self._size = canonical_header_size(self._id, self._flags, len(self._data))

    @classmethod
    def required(cls, id: int, data: BytesLike = b"") -> PluginHeader:
        """A header with the "required" flag (bit 0) set."""
        return cls(id, FLAG_REQUIRED, data)

    @classmethod
    def optional(cls, id: int, data: BytesLike = b"") -> PluginHeader:
        """A header with no flags set."""
        return cls(id, 0, data)

    @property
    def id(self) -> int:
        """The unsigned 32-bit id of the target plugin."""
        return self._id

    @property
    def flags(self) -> int:
        """The 8-bit flag field; bit 0 means "required"."""
        return self._flags

    @property
    def data(self) -> bytes:
        """Opaque plugin data carried in the header."""
        return self._data

    @property
    def is_required(self) -> bool:
        """True when bit 0 of ``flags`` is set."""
        return bool(self._flags & FLAG_REQUIRED)

    def encode(self) -> bytes:
        """The canonical CBOR encoding, byte-for-byte what ``cbor2.dumps`` gives."""
        return encode_header(self._id, self._flags, self._data)

    @classmethod
    def decode(cls, buf: BytesLike, *, max_size: int = DEFAULT_MAX_HEADER_SIZE) -> PluginHeader:
        """Decode a header strictly (SPEC 1); ``FrameTooLarge`` before decoding if too long."""
        limit = check_uint("max_size", max_size, 2**62)
        id_, flags, data = decode_header_fields(as_bytes("buf", buf), limit)
        return _new_header(id_, flags, data)

    def __eq__(self, other: object, /) -> bool:
        if not isinstance(other, PluginHeader):
            return NotImplemented
        return self._id == other._id and self._flags == other._flags and self._data == other._data

    def __hash__(self) -> int:
        return hash((self._id, self._flags, self._data))

    def __repr__(self) -> str:
        return f"PluginHeader(id={self._id}, flags={self._flags}, data={self._data!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (PluginHeader, (self._id, self._flags, self._data))


def _new_header(id_: int, flags: int, data: bytes) -> PluginHeader:
    """Build a header from fields the decoder already validated."""
    header = PluginHeader.__new__(PluginHeader)
    header._id = id_
    header._flags = flags
    header._data = data
    header._size = canonical_header_size(id_, flags, len(data))
    return header


@final
class PluginMessage:
    """What a plugin's handler receives: the frame type, its header and its payload."""

    __slots__ = ("_frame_type", "_header", "_payload", "_size")

    def __init__(self, frame_type: int, header: PluginHeader, payload: BytesLike = b"") -> None:
        if not isinstance(header, PluginHeader):
            raise TypeError(f"Expected `header` to be a PluginHeader, got {type(header).__name__}")
        self._frame_type = frame_type_object(check_uint("frame_type", frame_type, 255))
        self._header = header
        self._payload = as_bytes("payload", payload)
        self._size = header._size + len(self._payload)

    @property
    def frame_type(self) -> int:
        """The frame type (a ``FrameType`` member for the four built-in types)."""
        return self._frame_type

    @property
    def header(self) -> PluginHeader:
        """The decoded plugin header."""
        return self._header

    @property
    def payload(self) -> bytes:
        """The frame's payload bytes."""
        return self._payload

    @property
    def plugin_id(self) -> int:
        """The id of the plugin the header names."""
        return self._header._id

    @property
    def is_required(self) -> bool:
        """True when the header's "required" flag is set."""
        return bool(self._header._flags & FLAG_REQUIRED)

    @property
    def size(self) -> int:
        """Header bytes as received (canonical size for a ready header) + payload bytes."""
        return self._size

    def __repr__(self) -> str:
        return (
            f"PluginMessage(frame_type=0x{int(self._frame_type):02x}, "
            f"header={self._header!r}, payload={self._payload!r})"
        )


@final
class PluginFrame:
    """A whole Nyx ``PluginFrame`` as it crosses a byte stream (SPEC 8): frame type,
    header and payload in one CBOR map, ``{"frame_type", "header", "payload"}``."""

    __slots__ = ("_frame_type", "_header", "_payload")

    def __init__(self, frame_type: int, header: PluginHeader, payload: BytesLike = b"") -> None:
        if not isinstance(header, PluginHeader):
            raise TypeError(f"Expected `header` to be a PluginHeader, got {type(header).__name__}")
        self._frame_type = frame_type_object(check_uint("frame_type", frame_type, 255))
        self._header = header
        self._payload = as_bytes("payload", payload)

    @property
    def frame_type(self) -> int:
        """The frame type (a ``FrameType`` member for the four built-in types)."""
        return self._frame_type

    @property
    def header(self) -> PluginHeader:
        """The plugin header."""
        return self._header

    @property
    def payload(self) -> bytes:
        """The frame's payload bytes."""
        return self._payload

    def encode(self) -> bytes:
        """Byte-for-byte ``cbor2.dumps`` of the frame's map (Nyx's own layout)."""
        header = self._header
        return encode_frame(
            self._frame_type, header._id, header._flags, header._data, self._payload
        )

    @classmethod
    def decode(cls, buf: BytesLike, *, max_size: int = DEFAULT_MAX_FRAME_SIZE) -> PluginFrame:
        """Decode exactly one frame, strictly (SPEC 8); ``FrameTooLarge`` before decoding
        if ``buf`` is longer than ``max_size``, ``FrameDecodeError`` for the rest."""
        limit = check_uint("max_size", max_size, 2**62)
        fields = decode_frame_fields(as_bytes("buf", buf), limit)
        assert fields is not None
        return _new_frame(*fields)

    @classmethod
    def decode_prefix(
        cls, buf: BytesLike, *, max_size: int = DEFAULT_MAX_FRAME_SIZE
    ) -> tuple[PluginFrame, int] | None:
        """Decode the frame at the front of ``buf``: ``(frame, bytes used)``; bytes after
        it are left alone. ``None`` when ``buf`` ends inside the frame (feed more bytes);
        ``FrameTooLarge`` when the frame needs more than ``max_size`` bytes."""
        limit = check_uint("max_size", max_size, 2**62)
        fields = decode_frame_fields(as_byte_view("buf", buf), limit, True)
        if fields is None:
            return None
        return _new_frame(*fields[:5]), fields[5]

    def __eq__(self, other: object, /) -> bool:
        if not isinstance(other, PluginFrame):
            return NotImplemented
        return (
            self._frame_type == other._frame_type
            and self._header == other._header
            and self._payload == other._payload
        )

    def __hash__(self) -> int:
        return hash((self._frame_type, self._header, self._payload))

    def __repr__(self) -> str:
        return (
            f"PluginFrame(frame_type=0x{int(self._frame_type):02x}, "
            f"header={self._header!r}, payload={self._payload!r})"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (PluginFrame, (int(self._frame_type), self._header, self._payload))


def _new_frame(
    frame_type: int, id_: int, flags: int, data: bytes, payload: bytes, used: int = 0
) -> PluginFrame:
    """Build a frame from fields the decoder already validated."""
    frame = PluginFrame.__new__(PluginFrame)
    frame._frame_type = frame_type_object(frame_type)
    frame._header = _new_header(id_, flags, data)
    frame._payload = payload
    return frame


_LENGTH = struct.Struct(">I")  # the length prefix of SPEC 8 stream framing
_BATCH_HEAD = struct.Struct("<IBQI")
_BATCH_SEQ = struct.Struct("<QI")
_BATCH_FRAME = struct.Struct("<BHI")


def encode_batch(kind: int, seq: int, messages: list[PluginMessage] | list[PluginFrame]) -> bytes:
    """One frame batch of the isolation protocol, framed: ``u32 length | u8 kind | u64 seq |
    u32 count`` then ``u8 type | u16 header length | u32 payload length | header | payload``
    per frame (little-endian; the header in its canonical encoding). ``messages`` holds
    ``PluginMessage`` or ``PluginFrame`` items."""
    kind = check_uint("kind", kind, 255)
    seq = check_uint("seq", seq, MAX_BATCH_SEQ)
    check_list("messages", messages)
    parts = [b""]
    append = parts.append
    pack = _BATCH_FRAME.pack
    total = 17
    for msg in messages:
        if type(msg) is not PluginMessage and type(msg) is not PluginFrame:
            raise BatchErrors.not_a_message(msg)
        header = msg._header.encode()
        if len(header) > 0xFFFF:
            raise BatchErrors.header_too_long(len(header))
        payload = msg._payload
        append(pack(msg._frame_type, len(header), len(payload)))
        append(header)
        append(payload)
        total += 7 + len(header) + len(payload)
    if total - 4 > 0xFFFFFFFF or len(messages) > 0xFFFFFFFF:
        raise BatchErrors.batch_too_large(total)
    parts[0] = _BATCH_HEAD.pack(total - 4, kind, seq, len(messages))
    return b"".join(parts)


def decode_batch(
    body: BytesLike, max_header: int, max_payload: int
) -> tuple[int, list[PluginMessage]]:
    """``(seq, messages)`` from a frame batch's body (after the kind byte); ``ValueError``
    for anything malformed, the header decoded as strictly as ``PluginHeader.decode``."""
    body = as_bytes("body", body)
    max_header = check_uint("max_header", max_header, 2**62)
    max_payload = check_uint("max_payload", max_payload, 2**62)
    end = len(body)
    if end < 12:
        raise BatchErrors.too_short(end)
    seq, count = _BATCH_SEQ.unpack_from(body)
    unpack = _BATCH_FRAME.unpack_from
    messages: list[PluginMessage] = []
    pos = 12
    for i in range(count):
        if pos + 7 > end:
            raise BatchErrors.ends_inside(seq, i, count)
        frame_type, header_len, payload_len = unpack(body, pos)
        if header_len > max_header or payload_len > max_payload:
            raise BatchErrors.frame_too_large(seq, max_header, max_payload, header_len, payload_len)
        start = pos + 7
        stop = start + header_len + payload_len
        if stop > end:
            raise BatchErrors.ends_inside(seq, i, count)
        header = PluginHeader.decode(body[start : start + header_len], max_size=max_header)
        msg = PluginMessage(frame_type, header, body[start + header_len : stop])
        msg._size = header_len + payload_len
        messages.append(msg)
        pos = stop
    if pos != end:
        raise BatchErrors.trailing_bytes(seq, count)
    return seq, messages


def route_point(key: int | str | BytesLike, salt: int = 0) -> int:
    """The key's 53-bit point on a route, as ``nyxplug._routing`` specifies it."""
    return _route_point(key, salt)


class _Entry:
    """A registry entry; runtimes hold it so a permission change reaches the next frame."""

    __slots__ = ("info", "mask", "alive")

    def __init__(self, info: PluginInfo) -> None:
        self.info = info
        self.mask = info.permissions.value
        self.alive = True


@final
class PluginRegistry:
    """Which plugins exist and which frame permissions each holds."""

    __slots__ = ("_entries",)

    def __init__(self) -> None:
        self._entries: dict[int, _Entry] = {}

    def register(self, info: PluginInfo) -> None:
        """Add ``info``; ``AlreadyRegistered`` if its id is taken."""
        if not isinstance(info, PluginInfo):
            raise TypeError(f"Expected a PluginInfo, got {type(info).__name__}")
        entry = self._entries.get(info.id)
        if entry is not None:
            raise AlreadyRegistered(info.id, entry.info.name)
        self._entries[info.id] = _Entry(info)

    def unregister(self, plugin_id: int) -> PluginInfo:
        """Remove the plugin and return its info; ``NotRegistered`` if unknown."""
        entry = self._entries.pop(plugin_id, None)
        if entry is None:
            raise NotRegistered(plugin_id)
        entry.alive = False
        return entry.info

    def set_permissions(
        self,
        plugin_id: int,
        permissions: Permission | Iterable[Permission],
        *,
        source: str | None = None,
    ) -> PluginInfo:
        """Replace a registered plugin's permissions; applies to the next frame.

        ``source`` is the manifest that grants them (errors then name its fix), None
        when code does.
        """
        entry = self._entries.get(plugin_id)
        if entry is None:
            raise NotRegistered(plugin_id)
        mask = Permission(permission_mask(permissions))
        info = PluginInfo(entry.info.id, entry.info.name, mask, source=source)
        entry.info = info
        entry.mask = info.permissions.value
        return info

    def is_registered(self, plugin_id: int) -> bool:
        """True if the id is registered."""
        return plugin_id in self._entries

    def has_permission(self, plugin_id: int, permission: Permission) -> bool:
        """True if the plugin holds every bit of ``permission``; False for unknown ids."""
        entry = self._entries.get(plugin_id)
        if entry is None:
            return False
        wanted = permission.value
        return (entry.mask & wanted) == wanted

    def get(self, plugin_id: int) -> PluginInfo | None:
        """The plugin's info, or None."""
        entry = self._entries.get(plugin_id)
        return None if entry is None else entry.info

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, plugin_id: object, /) -> bool:
        return plugin_id in self._entries

    def __iter__(self) -> Iterator[PluginInfo]:
        return iter([self._entries[key].info for key in sorted(self._entries)])

    def __repr__(self) -> str:
        return f"<nyxplug.PluginRegistry plugins={len(self._entries)}>"


class _Runtime:
    """One loaded plugin: its queue, waiting senders, worker and counters."""

    __slots__ = (
        "id", "entry", "capacity", "queue", "reserved", "waiters", "handler", "batch",
        "loop", "worker", "wakeup", "idle_waiters", "closed", "guard", "pausing", "swap",
        "overrun_limit", "on_overrun", "replies",
        "processed", "errors", "bytes", "permission_violations", "sandbox_violations",
        "dropped", "high_watermark", "would_block", "plugin_closed",
        "breaker", "gate", "epoch", "circuit_open", "route", "version", "routed",
        "shadowed", "shadow_dropped",
    )  # fmt: skip

    def __init__(self, plugin_id: int, entry: _Entry, capacity: int, handler: Any,
                 batch: bool, loop: asyncio.AbstractEventLoop) -> None:  # fmt: skip
        self.id = plugin_id
        self.entry = entry
        self.capacity = capacity
        self.queue: deque[PluginMessage] = deque()
        self.reserved = 0
        self.waiters: deque[asyncio.Future[bool]] = deque()
        self.handler = handler
        self.batch = batch
        self.loop = loop
        self.worker: asyncio.Task[None] | None = None
        self.wakeup: asyncio.Future[None] | None = None
        self.idle_waiters: list[asyncio.Future[None]] = []
        self.closed = False
        # A swap asks the worker to stop after the frame in flight (checked between frames);
        # ``swap`` is the swap task in progress, which an unload waits for.
        self.pausing = False
        self.swap: asyncio.Task[float] | None = None
        # The plugin's SandboxGuard (SPEC 7), or None when no policy applies.
        self.guard: Any = None
        # A synchronous call longer than ``overrun_limit`` seconds is told to ``on_overrun``
        # (None: calls are not timed).
        self.overrun_limit = 0.0
        self.on_overrun: Callable[[Any, float], object] | None = None
        # Requests waiting for their reply: message -> reply target (see _replies).
        self.replies: dict[PluginMessage, ReplyTarget] = {}
        self.processed = 0
        self.errors = 0
        self.bytes = 0
        self.permission_violations = 0
        self.sandbox_violations = 0
        self.dropped = 0
        self.high_watermark = 0
        self.would_block = 0
        self.plugin_closed = 0
        # The circuit breaker (None: none set). ``gate`` is 0 while frames pass without
        # asking it; ``epoch`` changes with each of its transitions (see _breaker).
        self.breaker: CircuitBreaker | None = None
        self.gate = 0
        self.epoch = 0
        self.circuit_open = 0
        # The route record while the plugin has a rollout (None: every frame comes here,
        # at the cost of one compare). Only the stable lane, the one in ``_runtimes``,
        # holds it. ``routed`` counts frames the router sent to this lane.
        self.route: _Route | None = None
        self.version = BASE_VERSION
        self.routed = 0
        self.shadowed = 0  # copies mirrored here (see set_route's shadow)
        self.shadow_dropped = 0

    def has_room(self) -> bool:
        """A free slot that no parked sender is owed."""
        return len(self.queue) + self.reserved < self.capacity

    def take_all(self) -> list[PluginMessage]:
        """Hand every queued frame to the worker, counting them as processed."""
        batch = list(self.queue)
        self.queue.clear()
        self.processed += len(batch)
        self.bytes += sum(msg._size for msg in batch)
        return batch

    def drop_all(self) -> None:
        """Discard every queued frame, counting them as dropped."""
        self.dropped += len(self.queue)
        self.queue.clear()

    def stats(self) -> PluginStats:
        return PluginStats(
            messages_processed=self.processed,
            errors=self.errors,
            bytes_processed=self.bytes,
            permission_violations=self.permission_violations,
            sandbox_violations=self.sandbox_violations
            + (self.guard.violations if self.guard is not None else 0),
            dropped=self.dropped,
            queue_depth=len(self.queue),
            high_watermark=self.high_watermark,
            would_block=self.would_block,
            plugin_closed=self.plugin_closed,
            circuit_open=self.circuit_open,
        )


class _Route:
    """Where a plugin's frames go during a rollout (see ``_routing``): the stable lane
    holds this record; ``candidate`` takes the keys whose point is below ``threshold``
    and the keyless frames ``acc`` carries over ``POINT_RANGE``."""

    __slots__ = (
        "candidate", "threshold", "salt", "acc", "weight", "rules", "rule_info", "shadow",
        "memo", "memo_mark",
    )  # fmt: skip

    def __init__(
        self,
        candidate: _Runtime | None,
        weight: float,
        salt: int,
        rules: list[tuple[MatchRule, _Runtime]],
        shadow: _Runtime | None = None,
    ) -> None:
        self.candidate = candidate
        self.weight = weight
        self.threshold = weight_threshold(weight) if candidate is not None else 0
        self.salt = salt & 0xFFFFFFFFFFFFFFFF
        # keyless frames' error diffusion: 0 <= acc < POINT_RANGE (set_route may carry
        # it over from the route this one replaces)
        self.acc = 0
        # A/B rules with their lanes (None: none, and no cost)
        self.rules = rules or None
        self.rule_info = tuple(rule for rule, _lane in rules)
        self.shadow = shadow  # gets a copy of every frame routed elsewhere
        # The lane of each int, str or bytes key seen lately: a key's lane is fixed while
        # this record routes, and a session sends many frames, so a repeated key skips
        # the 64-bit hash (about 0.4 us in Python ints). Stays empty with A/B rules (they
        # look at the frame too). Emptied when it holds _MEMO_LIMIT keys - or, when fewer
        # than half of the frames since it was last emptied found their key in it (keys
        # that rarely repeat: remembering costs more than it saves), replaced by _NO_MEMO
        # for good. ``memo_mark``: the frames routed (both lanes) when it was last emptied.
        self.memo: dict[int | str | bytes, _Runtime] = {}
        self.memo_mark = -1


def _observe(task: asyncio.Task[Any]) -> None:
    """Retrieve a finished task's outcome so asyncio does not report it as lost."""
    if not task.cancelled():
        task.exception()


class Dispatcher:
    """Routes typed frames into per-plugin bounded queues, checked and counted (SPEC 3)."""

    def __init__(
        self,
        registry: PluginRegistry | None = None,
        *,
        sandbox: SandboxPolicy | None = None,
        max_header_size: int = DEFAULT_MAX_HEADER_SIZE,
        max_payload_size: int = DEFAULT_MAX_PAYLOAD_SIZE,
    ) -> None:
        if registry is None:
            registry = PluginRegistry()
        elif not isinstance(registry, PluginRegistry):
            raise TypeError(
                "Expected `registry` to be a PluginRegistry of the same implementation as "
                f"the Dispatcher, got {type(registry).__module__}.{type(registry).__name__}"
            )
        self._sandbox = check_policy("sandbox", sandbox)
        self._registry = registry
        self._max_header = check_uint("max_header_size", max_header_size, 2**62)
        self._max_payload = check_uint("max_payload_size", max_payload_size, 2**62)
        self._required: list[int] = [0] * 256
        for code, permission in DEFAULT_FRAME_PERMISSIONS.items():
            self._required[code] = permission.value
        self._type_objects = [frame_type_object(code) for code in range(256)]
        self._runtimes: dict[int, _Runtime] = {}
        self._unloading: dict[int, _Runtime] = {}
        # Loaded versions by plugin id, made at the first load_version (stable lane included).
        self._lanes: dict[int, dict[str, _Runtime]] = {}
        self._plugins_loaded = 0
        self._plugins_unloaded = 0
        self._frames_dispatched = 0
        # Refusals by DispatchStatus code; dispatch_errors is their sum.
        self._refused = [0] * len(DispatchStatus)
        # The thread whose loop the dispatcher serves (rebound by the first load_plugin).
        self._bind_thread()
        # Left by a failed _prepare for _error: the frame type and the error details.
        self._p_ft: Any = None
        self._p_error: Any = None

    def _bind_thread(self) -> None:
        current = threading.current_thread()
        self._owner = threading.get_ident()
        self._owner_name = current.name

    def _wrong_thread(self, method: str) -> WrongThread:
        return WrongThread.here(method, self._owner, self._owner_name)

    # -- frame types -------------------------------------------------------------

    def register_frame_type(self, code: int, permission: Permission) -> None:
        """Route plugin-range frame type ``code`` (``0x50..0x5F``), requiring ``permission``."""
        if isinstance(code, bool) or not isinstance(code, int):
            raise TypeError(f"Expected `code` to be an int, got {type(code).__name__}")
        if not PLUGIN_FRAME_MIN <= code <= PLUGIN_FRAME_MAX:
            raise UnknownFrameType(code, None, True)
        if not isinstance(permission, Permission) or not permission.value:
            raise TypeError(
                f"Expected `permission` to be a non-empty Permission, got {permission!r}"
            )
        if code in DEFAULT_FRAME_PERMISSIONS and DEFAULT_FRAME_PERMISSIONS[code] != permission:
            raise ValueError(
                f"Frame type 0x{code:02x} ({FrameType(code).name}) is built in and requires "
                f"{DEFAULT_FRAME_PERMISSIONS[code].name}; it cannot be remapped"
            )
        self._required[code] = permission.value

    def required_permission(self, frame_type: int) -> Permission | None:
        """The permission a sender and a target need for ``frame_type``; None if not routed."""
        code = check_uint("frame_type", frame_type, 255)
        return Permission(self._required[code]) if self._required[code] else None

    # -- plugins -----------------------------------------------------------------

    async def load_plugin(
        self,
        info: PluginInfo,
        handler: Handler[PluginMessage] = None,
        *,
        capacity: int = DEFAULT_CAPACITY,
        sandbox: SandboxPolicy | SandboxGuard | None = None,
        overrun_limit: float | None = None,
        on_overrun: Callable[[Any, float], object] | None = None,
    ) -> None:
        """Register ``info`` if needed, create the plugin's bounded queue, start its worker.

        ``sandbox`` (a ``SandboxPolicy``, or a ready ``SandboxGuard``) overrides the
        dispatcher's policy for this plugin. With ``overrun_limit`` (seconds) and
        ``on_overrun``, each synchronous handler call is timed and one that took longer
        is reported as ``on_overrun(message_or_batch, elapsed_seconds)`` (it cannot be
        interrupted; an awaitable it returns is not counted).
        """
        if not isinstance(info, PluginInfo):
            raise TypeError(f"Expected `info` to be a PluginInfo, got {type(info).__name__}")
        if isinstance(capacity, bool) or not isinstance(capacity, int):
            raise TypeError(f"Expected `capacity` to be an int, got {type(capacity).__name__}")
        if capacity < 1:
            raise ValueError(f"Expected `capacity` >= 1, got {capacity} - for plugin {info.id}")
        plugin_id = info.id
        if not self._runtimes and not self._unloading:
            self._bind_thread()  # nothing runs: the dispatcher moves to this loop's thread
        elif threading.get_ident() != self._owner:
            raise self._wrong_thread("load_plugin")
        if plugin_id in self._runtimes:
            raise AlreadyLoaded(plugin_id)
        if plugin_id in self._unloading:
            raise AlreadyLoaded(plugin_id, True)
        policy = check_policy("sandbox", sandbox, guard_ok=True)
        limit, report = check_overrun(overrun_limit, on_overrun, plugin_id)
        call, batch = resolve_handler(handler)
        loop = asyncio.get_running_loop()
        registry = self._registry
        if not registry.is_registered(plugin_id):
            registry.register(info)
        entry = registry._entries[plugin_id]
        rt = _Runtime(plugin_id, entry, capacity, call, batch, loop)
        rt.guard = make_guard(
            policy if policy is not None else self._sandbox, plugin_id, entry.info
        )
        rt.overrun_limit, rt.on_overrun = limit, report
        self._runtimes[plugin_id] = rt
        self._plugins_loaded += 1
        self._start_worker(rt, None)

    async def unload_plugin(self, plugin_id: int, *, drain: bool = True) -> PluginStats:
        """Stop taking frames for ``plugin_id``, drain or drop its queue, unregister it.

        Cancelling this call does not reopen the plugin: the worker finishes in the
        background and the unload completes there.
        """
        rt = self._runtimes.get(plugin_id)
        if rt is None:
            raise PluginNotLoaded(plugin_id, None, self._registry.get(plugin_id))
        while rt.swap is not None:  # the swapped-in worker is the one that drains
            await asyncio.wait([rt.swap])
            if self._runtimes.get(plugin_id) is not rt:
                raise PluginNotLoaded(plugin_id, None, self._registry.get(plugin_id))
        rt.route = None  # from the next frame, all go to the stable lane
        lanes = self._lanes.pop(plugin_id, None)
        if lanes is not None:
            for lane in lanes.values():
                if lane is not rt:
                    await self._close_lane(lane, drain)
            if self._runtimes.get(plugin_id) is not rt:
                raise PluginNotLoaded(plugin_id, None, self._registry.get(plugin_id))
        del self._runtimes[plugin_id]
        self._unloading[plugin_id] = rt
        rt.closed = True
        for waiter in rt.waiters:
            if not waiter.done():
                waiter.set_result(False)
        rt.waiters.clear()
        if not drain:
            rt.drop_all()
        self._wake_worker(rt)
        worker = rt.worker
        assert worker is not None
        try:
            await asyncio.shield(worker)
        except asyncio.CancelledError:
            if not worker.done():
                worker.add_done_callback(lambda _task: self._finish_unload(rt))
                raise
        return self._finish_unload(rt)

    async def swap_handler(
        self,
        plugin_id: int,
        handler: Handler[PluginMessage],
        *,
        sandbox: SandboxPolicy | SandboxGuard | None = None,
        between: Callable[[], object] | None = None,
        overrun_limit: float | None = None,
        on_overrun: Callable[[Any, float], object] | None = None,
    ) -> float:
        """Replace a loaded plugin's handler; its queue, queued frames and counters stay.

        The worker finishes the frame (or batch) in flight and stops; ``between()``
        runs while no frame is handled (the place to hand state over: if it raises,
        the old handler resumes and the exception propagates); then a new worker runs
        ``handler`` from the same queue, so nothing is lost or reordered and senders
        never see an error. Returns the pause in seconds (old worker's last frame to
        the new worker's start). Swaps of one plugin run in turn; cancelling the
        caller does not cancel the swap. Like ``sandbox``, ``overrun_limit`` and
        ``on_overrun`` belong to the new handler: give them again to keep timing it.
        """
        rt = self._runtimes.get(plugin_id)
        if rt is None:
            raise PluginNotLoaded(plugin_id, None, self._registry.get(plugin_id))
        policy = check_policy("sandbox", sandbox, guard_ok=True)
        overrun = check_overrun(overrun_limit, on_overrun, plugin_id)
        call, batch = resolve_handler(handler)
        if between is not None and not callable(between):
            raise TypeError(f"Expected `between` to be callable, got {type(between).__name__}")
        guard = make_guard(
            policy if policy is not None else self._sandbox, plugin_id, rt.entry.info
        )
        swap = rt.loop.create_task(self._swap(rt, rt.swap, call, batch, guard, between, overrun))
        rt.swap = swap
        try:
            return await asyncio.shield(swap)
        except asyncio.CancelledError:
            if not swap.done():  # the swap goes on; its outcome is nobody's to raise
                swap.add_done_callback(_observe)
            raise

    async def _swap(
        self,
        rt: _Runtime,
        previous: asyncio.Task[float] | None,
        call: Any,
        batch: bool,
        guard: Any,
        between: Callable[[], object] | None,
        overrun: tuple[float, Any],
    ) -> float:
        try:
            if previous is not None:
                await asyncio.wait([previous])
            if rt.closed:
                raise PluginNotLoaded(rt.id, None, rt.entry.info)
            worker = rt.worker
            assert worker is not None
            rt.pausing = True
            self._wake_worker(rt)
            await asyncio.wait([worker])  # it returns after the frame in flight
            stopped = time.perf_counter()
            rt.pausing = False
            if between is not None:
                try:
                    between()
                except BaseException:
                    self._start_worker(rt, None)  # the old handler resumes
                    raise
            if rt.guard is not None:  # its refusals stay counted after the guard goes
                rt.sandbox_violations += rt.guard.violations
            rt.handler, rt.batch, rt.guard = call, batch, guard
            rt.overrun_limit, rt.on_overrun = overrun
            started: asyncio.Future[float] = rt.loop.create_future()
            self._start_worker(rt, started)
            return await started - stopped
        finally:
            if rt.swap is asyncio.current_task():
                rt.swap = None

    def _start_worker(self, rt: _Runtime, started: asyncio.Future[float] | None) -> None:
        rt.worker = rt.loop.create_task(self._work(rt, started), name=f"nyxplug-worker-{rt.id}")

    def _finish_unload(self, rt: _Runtime) -> PluginStats:
        if rt.replies:  # requests whose frames were dropped: never left waiting
            abandon(rt.replies, rt.entry.info)
        if self._unloading.get(rt.id) is rt:
            del self._unloading[rt.id]
            if self._registry.is_registered(rt.id):
                self._registry.unregister(rt.id)
            self._plugins_unloaded += 1
        return rt.stats()

    async def aclose(self) -> None:
        """Unload every plugin, draining each queue."""
        for plugin_id in sorted(self._runtimes):
            if plugin_id in self._runtimes:
                await self.unload_plugin(plugin_id)

    async def __aenter__(self) -> Dispatcher:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def wait_idle(self, plugin_id: int | None = None) -> None:
        """Wait until the plugin (or every plugin) has an empty queue and no handler running."""
        if plugin_id is None:
            for pid, runtime in list(self._runtimes.items()):
                for lane in list(self._lanes.get(pid, {"": runtime}).values()):
                    await self._wait_idle(lane)
            return
        rt = self._runtimes.get(plugin_id)
        if rt is None:
            raise PluginNotLoaded(plugin_id, None, self._registry.get(plugin_id))
        for lane in list(self._lanes.get(plugin_id, {"": rt}).values()):
            await self._wait_idle(lane)

    async def _wait_idle(self, rt: _Runtime) -> None:
        if not rt.queue and rt.wakeup is not None:
            return
        waiter: asyncio.Future[None] = rt.loop.create_future()
        rt.idle_waiters.append(waiter)
        await waiter

    # -- dispatch ----------------------------------------------------------------

    def _prepare(
        self, frame_type: Any, header: Any, payload: Any, key: Any = None
    ) -> tuple[int, _Runtime | None, PluginMessage | None]:
        """Run the checks of SPEC 3 up to (not including) the queue.

        On success return ``(OK, runtime, message)``; on failure ``(status, None,
        None)`` with the details kept in ``_p_error`` for ``_error``.
        """
        if isinstance(frame_type, bool) or not isinstance(frame_type, int):
            raise TypeError(f"Expected `frame_type` to be an int, got {type(frame_type).__name__}")
        if type(payload) is not bytes:
            payload = as_bytes("payload", payload)
        code = frame_type if 0 <= frame_type <= 255 else -1
        # 1. size limits, before any decoding
        if type(header) is PluginHeader:
            header_size = header._size
        elif isinstance(header, _BYTES_LIKE):
            header = as_bytes("header", header)
            header_size = len(header)
        else:
            header = self._coerce_header(header)
            header_size = header._size
        if header_size > self._max_header:
            return self._fail(
                frame_type,
                _FRAME_TOO_LARGE,
                FrameTooLarge("header", header_size, self._max_header, frame_type),
            )
        if len(payload) > self._max_payload:
            return self._fail(
                frame_type,
                _FRAME_TOO_LARGE,
                FrameTooLarge("payload", len(payload), self._max_payload, frame_type),
            )
        # 2. header decoding
        if type(header) is not PluginHeader:
            try:
                header = _new_header(*decode_header_fields(header, self._max_header))
            except HeaderDecodeError as exc:
                return self._fail(
                    frame_type, _HEADER_DECODE_ERROR, exc._with_frame_type(frame_type)
                )
        plugin_id = header._id
        # 3. frame type
        required = self._required[code] if code >= 0 else 0
        if not required:
            return self._fail(
                frame_type, _UNKNOWN_FRAME_TYPE, UnknownFrameType(frame_type, plugin_id)
            )
        # 4. registry and 5. loaded runtime
        rt = self._runtimes.get(plugin_id)
        if rt is None:
            status = _NOT_LOADED if plugin_id in self._registry._entries else _NOT_REGISTERED
            return self._fail(frame_type, status, plugin_id)
        # 5b. route: during a rollout the key picks the version's lane; else one compare
        mirror = None
        route = rt.route
        if route is not None:
            if key is not None:
                # a key seen lately: its lane is remembered (see _Route.memo); 1.0 == 1,
                # but only an int, str or bytes is looked up
                lane = route.memo.get(key) if type(key) in _MEMO_TYPES else None
                if lane is None:
                    lane = self._route(rt, route, key, header, code)
            elif route.rules is None:
                # a keyless frame: error diffusion, inline (see _routing); a threshold
                # above 0 means a candidate is set
                acc = route.acc + route.threshold
                if acc < POINT_RANGE:
                    route.acc = acc
                    lane = rt
                else:
                    route.acc = acc - POINT_RANGE
                    lane = route.candidate
                    assert lane is not None
            else:
                lane = self._route(rt, route, key, header, code)
            lane.routed += 1
            shadow = route.shadow
            if shadow is not None and shadow is not lane:
                mirror = shadow
            rt = lane
        elif key is not None and type(key) is not int:
            check_key(key)  # raises TypeError
        entry = rt.entry
        if not entry.alive:
            fresh = self._registry._entries.get(plugin_id)
            if fresh is None:
                return self._fail(frame_type, _NOT_REGISTERED, plugin_id)
            rt.entry = entry = fresh
        # 6. permission
        if entry.mask & required != required:
            rt.permission_violations += 1
            return self._fail(
                frame_type,
                _PERMISSION_DENIED,
                PermissionDenied(plugin_id, frame_type, Permission(required), entry.info),
            )
        # 7. sandbox preflight (SPEC 7): the plugin's guard checks a CONTROL frame's header
        if rt.guard is not None and code == FrameType.CONTROL:
            detail = rt.guard.preflight(header)
            if detail is not None:
                rt.sandbox_violations += 1
                return self._fail(
                    frame_type,
                    _SANDBOX_VIOLATION,
                    SandboxViolation(plugin_id, frame_type, detail, entry.info),
                )
        # 8. circuit breaker: asked only when its gate is shut (not plain CLOSED)
        if rt.gate and self._refused_by_breaker(rt, frame_type):
            return _CIRCUIT_OPEN, None, None
        msg = PluginMessage.__new__(PluginMessage)
        msg._frame_type = self._type_objects[code]
        msg._header = header
        msg._payload = payload
        msg._size = header_size + len(payload)
        if mirror is not None:
            self._mirror(mirror, msg)
        return _OK, rt, msg

    def _mirror(self, lane: _Runtime, msg: PluginMessage) -> None:
        """Offer the shadow lane a copy (the same immutable message): never waits, never
        refuses the frame itself; a full queue or a breaker that is not closed drops it."""
        if lane.gate or not lane.has_room():
            lane.shadow_dropped += 1
            return
        lane.queue.append(msg)
        if len(lane.queue) > lane.high_watermark:
            lane.high_watermark = len(lane.queue)
        lane.shadowed += 1
        if lane.wakeup is not None:
            self._wake_worker(lane)

    def _route(
        self, rt: _Runtime, route: _Route, key: Any, header: PluginHeader, code: int
    ) -> _Runtime:
        """Step 5b out of line, for a key the route does not remember or a keyless frame
        on a route with A/B rules: the lane of the frame with route key ``key`` (see
        ``_routing``); the caller counts it."""
        if key is None:
            bits = None
        else:
            bits = key & _MASK64 if type(key) is int else key_bits(key)  # TypeError if no key
        if route.rules is not None:
            for rule, lane in route.rules:
                if rule.matches(header._flags, header._data, code, bits):
                    return lane
        if bits is None:  # a keyless frame: error diffusion (as in _prepare)
            acc = route.acc + route.threshold
            if acc < POINT_RANGE:
                route.acc = acc
                return rt
            route.acc = acc - POINT_RANGE
            assert route.candidate is not None
            return route.candidate
        # splitmix64(bits ^ salt) >> 11, inline (see _routing.splitmix64); a threshold
        # above 0 means a candidate is set
        z = ((bits ^ route.salt) + 0x9E3779B97F4A7C15) & _MASK64
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
        lane = rt
        if ((z ^ (z >> 31)) >> 11) < route.threshold:
            assert route.candidate is not None
            lane = route.candidate
        memo = route.memo
        if route.rules is None and memo is not _NO_MEMO and type(key) in _MEMO_TYPES:
            if len(memo) >= _MEMO_LIMIT or route.memo_mark < 0:
                candidate = route.candidate
                routed = rt.routed + (candidate.routed if candidate is not None else 0)
                if 0 <= route.memo_mark and routed - route.memo_mark < 2 * _MEMO_LIMIT:
                    route.memo = _NO_MEMO
                    return lane
                memo.clear()
                route.memo_mark = routed
            memo[key] = lane
        return lane

    def _refused_by_breaker(self, rt: _Runtime, frame_type: Any) -> bool:
        """Ask the breaker to admit one frame; on refusal keep the error for ``_error``."""
        breaker = rt.breaker
        assert breaker is not None
        reason = breaker.admit(rt.processed + len(rt.queue))
        rt.gate, rt.epoch = breaker.gate, breaker.epoch
        if not reason:
            return False
        rt.circuit_open += 1
        self._fail(
            frame_type,
            _CIRCUIT_OPEN,
            CircuitOpen(
                rt.id,
                frame_type,
                REFUSAL_REASONS[reason],
                breaker.retry_after,
                rt.entry.info,
                breaker.forced_by,
            ),
        )
        return True

    def _fail(self, frame_type: Any, status: int, detail: Any) -> tuple[int, None, None]:
        """Keep what ``_error`` needs to build the exception, only if one is raised."""
        self._p_ft = frame_type
        self._p_error = detail
        return status, None, None

    def _coerce_header(self, header: Any) -> PluginHeader:
        """Accept the other twin's PluginHeader; refuse anything else with TypeError."""
        other = sys.modules.get("nyxplug._dispatch")  # imported if one of its headers exists
        if other is not None and type(header) is other.PluginHeader:
            return PluginHeader(header.id, header.flags, header.data)
        raise TypeError(
            f"Expected `header` to be bytes-like or a PluginHeader, got {type(header).__name__}"
        )

    def _error(self, status: int) -> DispatchError:
        """The exception for a failed ``_prepare`` (built only when raising)."""
        detail, frame_type = self._p_error, self._p_ft
        self._p_error = self._p_ft = None
        if status == _NOT_REGISTERED:
            return PluginNotRegistered(detail, frame_type)
        if status == _NOT_LOADED:
            return PluginNotLoaded(detail, frame_type, self._registry.get(detail))
        assert isinstance(detail, DispatchError)
        return detail

    def _enqueue(self, rt: _Runtime, msg: PluginMessage) -> None:
        queue = rt.queue
        queue.append(msg)
        depth = len(queue)
        if depth > rt.high_watermark:
            rt.high_watermark = depth
        self._frames_dispatched += 1
        if rt.wakeup is not None:
            self._wake_worker(rt)

    def _submit(
        self, frame_type: Any, header: Any, payload: Any, key: Any = None
    ) -> tuple[int, _Runtime | None]:
        """Prepare and enqueue without waiting; count a failure. Return (status, runtime)."""
        status, rt, msg = self._prepare(frame_type, header, payload, key)
        if status == _OK:
            assert rt is not None and msg is not None
            if rt.has_room():
                self._enqueue(rt, msg)
                return _OK, rt
            status = _WOULD_BLOCK
            rt.would_block += 1
            if rt.gate:  # a half-open probe met a full queue: load, not an outcome
                self._unadmit(rt)
        self._refused[status] += 1
        return status, rt

    def _unadmit(self, rt: _Runtime) -> None:
        breaker = rt.breaker
        assert breaker is not None
        breaker.unadmit()

    def dispatch_nowait(
        self,
        frame_type: int,
        header: PluginHeader | BytesLike,
        payload: BytesLike = b"",
        *,
        key: int | str | BytesLike | None = None,
    ) -> None:
        """Route one frame without waiting; a full queue is ``WouldBlock``.

        ``key`` (a connection or session id) keeps a session on one version while the
        plugin has a rollout (``set_route``); without one it is only type-checked.
        """
        if threading.get_ident() != self._owner:
            raise self._wrong_thread("dispatch_nowait")
        status, rt = self._submit(frame_type, header, payload, key)
        if status == _OK:
            return
        if status == _WOULD_BLOCK:
            assert rt is not None
            raise WouldBlock(rt.id, frame_type, rt.capacity, rt.entry.info)
        raise self._error(status)

    def try_dispatch(
        self,
        frame_type: int,
        header: PluginHeader | BytesLike,
        payload: BytesLike = b"",
        *,
        key: int | str | BytesLike | None = None,
    ) -> DispatchStatus:
        """``dispatch_nowait`` that returns a ``DispatchStatus`` instead of raising."""
        if threading.get_ident() != self._owner:
            raise self._wrong_thread("try_dispatch")
        status, _rt = self._submit(frame_type, header, payload, key)
        if status != _OK:
            self._p_error = self._p_ft = None
        return DispatchStatus(status)

    def try_dispatch_many(self, frames: Iterable[PluginFrame | PluginMessage]) -> BatchResult:
        """``try_dispatch`` for each frame in order, in one call; stop at ``WOULD_BLOCK``.

        ``frames`` holds ``PluginFrame`` or ``PluginMessage`` items (a batch decoded by
        ``decode_batch`` goes in as it is, as the session server feeds it).

        Every frame is counted as its own ``try_dispatch`` would count it; a refusal is a
        status, never an exception. A non-frame item is a TypeError before anything runs.
        """
        if threading.get_ident() != self._owner:
            raise self._wrong_thread("try_dispatch_many")
        items = frame_list(frames, PluginFrame, PluginHeader, PluginMessage)
        statuses: list[DispatchStatus] = []
        dispatched = 0
        submit = self._submit
        for frame in items:
            status, _rt = submit(frame._frame_type, frame._header, frame._payload)
            statuses.append(DispatchStatus(status))
            if status == _OK:
                dispatched += 1
                continue
            self._p_error = self._p_ft = None
            if status == _WOULD_BLOCK:
                return BatchResult(statuses, dispatched, len(statuses) - 1)
        return BatchResult(statuses, dispatched, len(statuses))

    def try_dispatch_framed(
        self, buf: BytesLike, *, max_size: int = DEFAULT_MAX_FRAME_SIZE
    ) -> BatchResult:
        """``try_dispatch_many`` over the length-prefixed ``PluginFrame`` messages of SPEC 8
        in ``buf``, decoding each one; ``used`` says where the rest begins.

        A message whose frame does not decode is ``HEADER_DECODE_ERROR`` (counted like an
        undecodable header) and the batch goes on; a bad length ends it with ``error``
        set; a message cut short at the end of ``buf`` is left for the next call.
        """
        if threading.get_ident() != self._owner:
            raise self._wrong_thread("try_dispatch_framed")
        limit = check_uint("max_size", max_size, MAX_MESSAGE_LIMIT)
        view = as_byte_view("buf", buf)
        end = len(view)
        statuses: list[DispatchStatus] = []
        dispatched = 0
        pos = 0
        submit = self._submit
        unpack = _LENGTH.unpack_from
        while end - pos >= 4:
            (size,) = unpack(view, pos)
            error = bad_length(size, limit, pos)
            if error is not None:
                return BatchResult(statuses, dispatched, len(statuses), pos, error)
            stop = pos + 4 + size
            if stop > end:
                break
            try:
                fields = decode_frame_fields(bytes(view[pos + 4 : stop]), limit)
            except HeaderDecodeError:
                self._refused[_HEADER_DECODE_ERROR] += 1
                statuses.append(_HEADER_DECODE_ERROR)
                pos = stop
                continue
            assert fields is not None  # only prefix mode returns None
            ft, id_, flags, data, payload, _used = fields
            status, _rt = submit(ft, _new_header(id_, flags, data), payload)
            statuses.append(DispatchStatus(status))
            if status == _OK:
                dispatched += 1
            else:
                self._p_error = self._p_ft = None
                if status == _WOULD_BLOCK:
                    return BatchResult(statuses, dispatched, len(statuses) - 1, pos)
            pos = stop
        return BatchResult(statuses, dispatched, len(statuses), pos)

    def dispatch(
        self,
        frame_type: int,
        header: PluginHeader | BytesLike,
        payload: BytesLike = b"",
        *,
        key: int | str | BytesLike | None = None,
    ) -> Coroutine[Any, Any, None]:
        """Route one frame, waiting for queue space (FIFO among waiting senders).

        Returns an awaitable. When the queue has room the frame is enqueued before
        this returns and awaiting the result does not yield to the loop; otherwise
        the awaitable parks until a slot is granted. A refused frame is counted here
        and its ``DispatchError`` raised by awaiting the result, as with a coroutine.
        """
        if threading.get_ident() != self._owner:
            raise self._wrong_thread("dispatch")
        status, rt, msg = self._prepare(frame_type, header, payload, key)
        if status == _OK:
            assert rt is not None and msg is not None
            if rt.has_room():
                self._enqueue(rt, msg)
                return _READY
            return self._wait_for_space(rt, msg)
        self._refused[status] += 1
        return Refused(self._error(status))

    async def _wait_for_space(self, rt: _Runtime, msg: PluginMessage) -> None:
        if rt.closed:
            self._refuse_closed(rt)
            raise PluginClosed(rt.id, msg._frame_type, rt.entry.info)
        if not rt.waiters and rt.has_room():
            # Space freed between the call and the first await: no need to park.
            self._enqueue(rt, msg)
            return
        epoch = rt.epoch
        waiter: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        rt.waiters.append(waiter)
        try:
            granted = await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled() and waiter.result():
                rt.reserved -= 1
                self._grant(rt)
            else:
                try:
                    rt.waiters.remove(waiter)
                except ValueError:
                    pass
            raise
        if granted:
            rt.reserved -= 1
        if rt.closed:
            self._refuse_closed(rt)
            raise PluginClosed(rt.id, msg._frame_type, rt.entry.info)
        if rt.epoch != epoch and rt.gate and self._refused_by_breaker(rt, msg._frame_type):
            # The breaker changed state while this sender waited: it is admitted anew.
            self._refused[_CIRCUIT_OPEN] += 1
            if granted:
                self._grant(rt)  # the slot goes to the next waiter
            raise self._error(_CIRCUIT_OPEN)
        self._enqueue(rt, msg)

    async def request(
        self,
        frame_type: int,
        header: PluginHeader | BytesLike,
        payload: BytesLike = b"",
        *,
        timeout: float | None = None,
    ) -> bytes | None:
        """Route one frame like ``dispatch`` and return the handler's reply (SPEC 8).

        The handler's return value is the reply (``None``: no reply). A handler that
        raises fails this with ``HandlerError`` (its exception as ``__cause__``; still
        counted in ``errors``). After ``timeout`` seconds ``ReplyTimeout``. Cancelled (or
        timed out) before the frame was enqueued, nothing happened; after, the frame is
        still handled and counted, and its reply dropped.
        """
        if threading.get_ident() != self._owner:
            raise self._wrong_thread("request")
        limit = check_timeout(timeout)
        status, rt, msg = self._prepare(frame_type, header, payload)
        if status != _OK:
            self._refused[status] += 1
            raise self._error(status)
        assert rt is not None and msg is not None
        reply: asyncio.Future[bytes | None] = rt.loop.create_future()
        parked = None
        if rt.has_room():
            self._enqueue(rt, msg)
        else:
            parked = self._wait_for_space(rt, msg)
        return await await_reply(
            parked, rt.replies, msg, reply, limit, rt.entry.info, msg._frame_type
        )

    @overload
    async def submit(
        self,
        frame_type: int,
        header: PluginHeader | BytesLike,
        payload: BytesLike = b"",
        *,
        reply_to: None = None,
    ) -> asyncio.Future[bytes | None]: ...
    @overload
    async def submit(
        self,
        frame_type: int,
        header: PluginHeader | BytesLike,
        payload: BytesLike = b"",
        *,
        reply_to: _Target,
    ) -> _Target: ...
    async def submit(
        self,
        frame_type: int,
        header: PluginHeader | BytesLike,
        payload: BytesLike = b"",
        *,
        reply_to: ReplyTarget | None = None,
    ) -> ReplyTarget:
        """Route one frame like ``dispatch`` (waiting for space, FIFO) and, once it is
        enqueued, return a future for its reply: ``request`` in two steps.

        A stream adapter awaits this to keep frames in order with backpressure, and keeps
        the futures to answer in order while later frames go on. The future gets what
        ``request`` would return or raise (a reply, ``None``, ``HandlerError``,
        ``RequestDropped``). Cancelled before the frame was enqueued, nothing happened.
        ``reply_to`` (a ``ReplySink``, or a future of yours) takes the reply instead of a
        new future, and is returned: a sink is called by the worker as it answers, one
        loop iteration before a future's callbacks would run.
        """
        if threading.get_ident() != self._owner:
            raise self._wrong_thread("submit")
        status, rt, msg = self._prepare(frame_type, header, payload)
        if status != _OK:
            self._refused[status] += 1
            raise self._error(status)
        assert rt is not None and msg is not None
        if rt.has_room():
            self._enqueue(rt, msg)
        else:
            await self._wait_for_space(rt, msg)
        reply = rt.loop.create_future() if reply_to is None else reply_to
        rt.replies[msg] = reply
        return reply

    def _refuse_closed(self, rt: _Runtime) -> None:
        self._refused[_PLUGIN_CLOSED] += 1
        rt.plugin_closed += 1

    def _grant(self, rt: _Runtime) -> None:
        """Give freed slots to the longest-waiting senders, at once."""
        waiters = rt.waiters
        while waiters and rt.has_room():
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(True)
                rt.reserved += 1

    def _wake_worker(self, rt: _Runtime) -> None:
        wakeup = rt.wakeup
        if wakeup is not None:
            rt.wakeup = None
            if not wakeup.done():
                wakeup.set_result(None)

    # -- the worker --------------------------------------------------------------

    async def _work(self, rt: _Runtime, started: asyncio.Future[float] | None) -> None:
        queue = rt.queue
        handler = rt.handler
        replies = rt.replies  # non-empty only while a request waits: plain frames skip it
        timed = rt.on_overrun is not None  # fixed for this worker: a swap starts another
        if rt.guard is not None:
            # This task's context only: every handler call (and task it spawns) is checked.
            enter_guard(rt.guard)
        if started is not None:  # a swap measures its pause up to here
            started.set_result(time.perf_counter())
        # Outcomes for the breaker are recorded per group of frames (a batch, or up to
        # ``record_every`` single frames), with one clock read per group: ``first`` is the
        # group's first ordinal (0: no group open), ``errors`` the error count before it,
        # ``since`` its start time (None: read the clock when the next group opens).
        first = errors = epoch = stop = 0
        since: float | None = None
        try:
            while True:
                if not queue:
                    if first:
                        self._record(rt, first, errors, since)
                        first = 0
                    since = None
                    self._notify_idle(rt)
                    if rt.closed:
                        return
                    rt.wakeup = rt.loop.create_future()
                    await rt.wakeup
                    if rt.pausing:
                        return
                    continue
                if handler is None or rt.batch:
                    batch = rt.take_all()
                    if rt.waiters:
                        self._grant(rt)
                    breaker = rt.breaker
                    if breaker is not None:
                        first, errors = rt.processed - len(batch) + 1, rt.errors
                        if since is None:
                            since = breaker.clock()
                if handler is None:
                    # The no-op consumer takes the whole queue at once.
                    if replies:
                        settle_batch(replies, batch, rt.entry.info, None)
                    if first:
                        since = self._record(rt, first, errors, since)
                        first = 0
                elif rt.batch:
                    try:
                        result = self._call_timed(rt, batch) if timed else handler(batch)
                        if result is not None and inspect.isawaitable(result):
                            result = await result
                    except Exception as exc:
                        rt.errors += 1
                        log_handler_error(
                            rt.id, batch[0]._frame_type, len(batch), exc, rt.entry.info
                        )
                        if replies:
                            fail_batch(replies, batch, rt.entry.info, exc)
                    else:
                        if replies:
                            bad = settle_batch(replies, batch, rt.entry.info, result)
                            if bad is not None:
                                rt.errors += 1
                                log_handler_error(
                                    rt.id, batch[0]._frame_type, len(batch), bad, rt.entry.info
                                )
                    if first:
                        since = self._record(rt, first, errors, since, True)
                        first = 0
                    if rt.pausing:  # a swap: the next frame goes to the new handler
                        return
                else:
                    msg = queue.popleft()
                    rt.processed += 1
                    rt.bytes += msg._size
                    if rt.waiters:
                        self._grant(rt)
                    if not first and rt.breaker is not None:
                        first, errors, epoch, stop, since = self._open_group(rt, since)
                    try:
                        result = self._call_timed(rt, msg) if timed else handler(msg)
                        if result is not None and inspect.isawaitable(result):
                            result = await result
                    except Exception as exc:
                        rt.errors += 1
                        log_handler_error(rt.id, msg._frame_type, 1, exc, rt.entry.info)
                        if replies:
                            fail(replies, msg, rt.entry.info, exc)
                    else:
                        if replies:
                            bad = settle(replies, msg, rt.entry.info, result)
                            if bad is not None:
                                rt.errors += 1
                                log_handler_error(rt.id, msg._frame_type, 1, bad, rt.entry.info)
                    if first and (rt.processed >= stop or rt.epoch != epoch):
                        since = self._record(rt, first, errors, since)
                        first = 0
                    if rt.pausing:
                        if first:
                            self._record(rt, first, errors, since)
                        return
        finally:
            rt.wakeup = None
            self._notify_idle(rt, force=not rt.pausing)

    def _open_group(self, rt: _Runtime, since: float | None) -> tuple[int, int, int, int, float]:
        """Open a group of single frames at the one just taken: ``(first, errors, epoch,
        stop, since)``. It closes at ordinal ``stop`` - after ``record_every`` frames, or
        at the last stale frame so no group mixes stale and fresh outcomes - or when the
        breaker's epoch moves while it is open."""
        breaker = rt.breaker
        assert breaker is not None
        first = rt.processed
        stop = first + breaker.config.record_every - 1
        if first <= breaker.stale_until < stop:
            stop = breaker.stale_until
        if since is None:
            since = breaker.clock()
        return first, rt.errors, rt.epoch, stop, since

    def _record(
        self, rt: _Runtime, first: int, errors: int, since: float | None, whole: bool = False
    ) -> float | None:
        """Give the breaker the outcomes of frames ``first .. processed``: the errors
        counted since ``errors`` are theirs (``whole``: one batch, all failed or none);
        return now, the next group's start."""
        breaker = rt.breaker
        if breaker is None or since is None:
            return None
        n = rt.processed - first + 1
        failed = rt.errors - errors
        if whole and failed:  # a batch handler's error fails every frame of the batch
            failed = n
        now = breaker.clock()
        breaker.record(first, n, failed, now - since, now, rt.processed + len(rt.queue))
        rt.gate, rt.epoch = breaker.gate, breaker.epoch
        return now

    def _call_timed(self, rt: _Runtime, arg: Any) -> Any:
        """``rt.handler(arg)``, reporting a call longer than the limit (even one that raised)."""
        start = time.monotonic()
        try:
            return rt.handler(arg)
        finally:
            elapsed = time.monotonic() - start
            if elapsed > rt.overrun_limit:
                report_overrun(rt.id, rt.on_overrun, arg, elapsed)

    def _notify_idle(self, rt: _Runtime, force: bool = False) -> None:
        waiters = rt.idle_waiters
        if waiters and (force or not rt.queue):
            rt.idle_waiters = []
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)

    # -- introspection -----------------------------------------------------------

    @property
    def registry(self) -> PluginRegistry:
        """The registry whose permissions this dispatcher checks."""
        return self._registry

    def plugin_stats(self, plugin_id: int) -> PluginStats | None:
        """A snapshot of the plugin's counters, or None if it is not loaded."""
        rt = self._runtimes.get(plugin_id)
        return None if rt is None else rt.stats()

    # -- circuit breakers ----------------------------------------------------------

    def set_breaker(
        self,
        plugin_id: int,
        config: BreakerConfig | None,
        *,
        clock: Callable[[], float] | None = None,
        random: Callable[[], float] | None = None,
        version: str | None = None,
    ) -> None:
        """Give a loaded plugin (its ``version``; default the stable one) a circuit breaker
        (CLOSED, empty window), replacing any it had; ``None`` removes it. Frames already
        queued are not judged by it.

        ``clock`` (seconds; default ``time.monotonic``, which asyncio's loop reads too -
        uvloop's ``loop.time`` stands still within a loop iteration, so it cannot time a
        batch) and ``random`` (``[0, 1)``, the open time's jitter) are for tests and
        simulations.
        """
        if threading.get_ident() != self._owner:
            raise self._wrong_thread("set_breaker")
        rt = self._lane(plugin_id, version)
        if rt is None:
            raise PluginNotLoaded(plugin_id, None, self._registry.get(plugin_id))
        if config is None:
            rt.breaker = None
            rt.gate = 0
            rt.epoch += 1
            return
        breaker = CircuitBreaker(config, time.monotonic if clock is None else clock, random)
        breaker.epoch = rt.epoch + 1
        breaker.stale_until = rt.processed + len(rt.queue)
        if rt.breaker is not None:
            breaker.on_change = rt.breaker.on_change  # a new config, the same listener
        rt.breaker = breaker
        rt.gate, rt.epoch = breaker.gate, breaker.epoch

    def set_breaker_state(
        self,
        plugin_id: int,
        state: BreakerState,
        *,
        why: str | None = None,
        version: str | None = None,
    ) -> None:
        """An operator's transition of the plugin's breaker: ``CLOSED`` resets it (fresh
        window, open time back to ``open_wait``), ``DISABLED`` admits everything and
        records nothing, ``FORCED_OPEN`` refuses everything, ``METRICS_ONLY`` records
        but never trips. Applies from the next frame; outcomes of frames admitted
        before it are ignored. ``why`` names who forces it open when that is not an
        operator (health checks do): refusals say so instead of blaming an operator.
        """
        if threading.get_ident() != self._owner:
            raise self._wrong_thread("set_breaker_state")
        breaker = self._breaker(plugin_id, version)
        rt = self._lane(plugin_id, version)
        assert rt is not None
        breaker.set_state(state, rt.processed + len(rt.queue), why)
        rt.gate, rt.epoch = breaker.gate, breaker.epoch

    def set_breaker_repairing(
        self, plugin_id: int, step: str | None, *, recovered: bool = False
    ) -> None:
        """A recovery step starts (``step`` names it) or ends (None) on the plugin: while
        it runs the breaker stays OPEN ("repairing", in ``breaker_stats``) whatever its
        open time says, and refusals name the step. Ending ``recovered=True`` moves an
        OPEN or FORCED_OPEN breaker to HALF_OPEN, so probe frames decide.
        """
        if threading.get_ident() != self._owner:
            raise self._wrong_thread("set_breaker_repairing")
        breaker = self._breaker(plugin_id)
        rt = self._runtimes[plugin_id]
        breaker.repair(step, rt.processed + len(rt.queue), recovered)
        rt.gate, rt.epoch = breaker.gate, breaker.epoch

    def watch_breaker(
        self,
        plugin_id: int,
        callback: Callable[[BreakerState], object] | None,
        *,
        version: str | None = None,
    ) -> None:
        """Call ``callback(state)`` on every transition of the breaker of the plugin's
        ``version`` (default the stable one; None stops); it is kept when ``set_breaker``
        replaces that lane's breaker. Each lane has its own watcher, so a candidate's
        transitions never reach the stable lane's. It runs inside whatever made the
        transition - a dispatch, the worker - so it must only note the event (set an
        ``asyncio.Event``), never block or raise.
        """
        if threading.get_ident() != self._owner:
            raise self._wrong_thread("watch_breaker")
        if callback is not None and not callable(callback):
            raise TypeError(
                f"Expected `callback` to be callable or None, got {type(callback).__name__}"
            )
        self._breaker(plugin_id, version).on_change = callback

    def breaker_stats(self, plugin_id: int, *, version: str | None = None) -> BreakerStats | None:
        """A snapshot of the plugin's breaker, or None if it has none (or is not loaded).

        Transitions due by the clock (OPEN -> HALF_OPEN, a half-open deadline) are taken
        first, so the state is the one the next frame would meet.
        """
        rt = self._lane(plugin_id, version)
        if rt is None or rt.breaker is None:
            return None
        breaker = rt.breaker
        stats = breaker.stats(rt.processed + len(rt.queue))
        rt.gate, rt.epoch = breaker.gate, breaker.epoch
        return stats

    def _breaker(self, plugin_id: int, version: str | None = None) -> CircuitBreaker:
        rt = self._lane(plugin_id, version)
        if rt is None:
            raise PluginNotLoaded(plugin_id, None, self._registry.get(plugin_id))
        if rt.breaker is None:
            raise BreakerNotSet(plugin_id, rt.entry.info)
        return rt.breaker

    # -- versions and routes -------------------------------------------------------

    async def load_version(
        self,
        plugin_id: int,
        version: str,
        handler: Handler[PluginMessage] = None,
        *,
        capacity: int = DEFAULT_CAPACITY,
        sandbox: SandboxPolicy | SandboxGuard | None = None,
        overrun_limit: float | None = None,
        on_overrun: Callable[[Any, float], object] | None = None,
    ) -> None:
        """Load another version of a loaded plugin beside it, as its own lane: queue,
        worker, counters and breaker. It takes no frames until ``set_route`` names it.

        The lane ``load_plugin`` made is version ``"base"``; up to five versions in all.
        Options as for ``load_plugin``; the permissions are the plugin id's.
        """
        if threading.get_ident() != self._owner:
            raise self._wrong_thread("load_version")
        version = check_version(version)
        if isinstance(capacity, bool) or not isinstance(capacity, int):
            raise TypeError(f"Expected `capacity` to be an int, got {type(capacity).__name__}")
        if capacity < 1:
            raise ValueError(f"Expected `capacity` >= 1, got {capacity} - for plugin {plugin_id}")
        home = self._runtimes.get(plugin_id)
        if home is None:
            raise PluginNotLoaded(plugin_id, None, self._registry.get(plugin_id))
        lanes = self._lanes.setdefault(plugin_id, {home.version: home})
        if version in lanes:
            raise VersionError(
                plugin_id, version, "Expected a new version name, got a loaded one",
                "unload it first or pick another name",
            )  # fmt: skip
        if len(lanes) >= MAX_VERSIONS:
            raise VersionError(
                plugin_id, version,
                f"Expected at most {MAX_VERSIONS} loaded versions, got one more",
                "unload_version() an old one first",
            )  # fmt: skip
        policy = check_policy("sandbox", sandbox, guard_ok=True)
        limit, report = check_overrun(overrun_limit, on_overrun, plugin_id)
        call, batch = resolve_handler(handler)
        rt = _Runtime(plugin_id, home.entry, capacity, call, batch, home.loop)
        rt.version = version
        rt.guard = make_guard(
            policy if policy is not None else self._sandbox, plugin_id, home.entry.info
        )
        rt.overrun_limit, rt.on_overrun = limit, report
        lanes[version] = rt
        self._start_worker(rt, None)

    async def unload_version(
        self, plugin_id: int, version: str, *, drain: bool = True
    ) -> PluginStats:
        """Stop a version no frames are routed to: drain (or drop) its queue, end its worker."""
        rt = self._lane(plugin_id, version)
        if rt is None:
            raise PluginNotLoaded(plugin_id, None, self._registry.get(plugin_id))
        home = self._runtimes[plugin_id]
        route = home.route
        if rt is home or (route is not None and route.candidate is rt):
            raise VersionError(
                plugin_id, version, "Expected a version no frames are routed to, got "
                + ("the stable one" if rt is home else "the candidate"),
                "set_route() to other versions first",
            )  # fmt: skip
        if route is not None and (
            route.shadow is rt or (route.rules and any(lane is rt for _r, lane in route.rules))
        ):
            raise VersionError(
                plugin_id, version, "Expected a version no frames are routed to, got one "
                "an A/B rule or the shadow names", "set_route() without it first",
            )  # fmt: skip
        del self._lanes[plugin_id][version]
        return await self._close_lane(rt, drain)

    async def _close_lane(self, rt: _Runtime, drain: bool) -> PluginStats:
        while rt.swap is not None:
            await asyncio.wait([rt.swap])
        rt.closed = True
        for waiter in rt.waiters:
            if not waiter.done():
                waiter.set_result(False)
        rt.waiters.clear()
        if not drain:
            rt.drop_all()
        self._wake_worker(rt)
        worker = rt.worker
        assert worker is not None
        await asyncio.shield(worker)
        if rt.replies:
            abandon(rt.replies, rt.entry.info)
        return rt.stats()

    def set_route(
        self,
        plugin_id: int,
        *,
        stable: str,
        candidate: str | None = None,
        weight: float = 0.0,
        salt: int | None = None,
        rules: Iterable[MatchRule] = (),
        shadow: str | None = None,
    ) -> None:
        """Route the plugin's frames from the next one on: keys whose point is below
        ``weight`` percent go to ``candidate``, the rest to ``stable`` (see ``_routing``).
        ``rules`` (A/B ``MatchRule``s, tried first, in order) send what they match to
        the version each names. ``shadow`` names a version that is offered a copy of
        every frame routed elsewhere (mirroring; only for idempotent plugins): a full
        queue drops the copy, never holds up the frame; its results are its own.

        Raising the weight only moves keys to the candidate; keyless frames go on with
        the route's accumulator when stable and candidate stay. Nothing in flight moves:
        frames already queued drain on their lane. ``candidate=None`` ends the rollout
        (``stable`` takes everything and routing costs one compare again); naming
        another ``stable`` is a promotion or a rollback. ``salt`` picks the cohort
        (default: from the plugin id and candidate name, the same on every host).
        """
        if threading.get_ident() != self._owner:
            raise self._wrong_thread("set_route")
        home = self._runtimes.get(plugin_id)
        if home is None:
            raise PluginNotLoaded(plugin_id, None, self._registry.get(plugin_id))
        new_stable = self._lane(plugin_id, check_version(stable))
        assert new_stable is not None
        pairs = self._rule_lanes(plugin_id, rules)
        mirror = None
        if shadow is not None:
            mirror = self._lane(plugin_id, check_version(shadow))
            if mirror is new_stable:
                raise VersionError(
                    plugin_id, shadow, "Expected a shadow other than the stable version",
                    "mirror to a candidate or another loaded version",
                )  # fmt: skip
        route = None
        if candidate is not None:
            lane = self._lane(plugin_id, check_version(candidate))
            if lane is new_stable:
                raise VersionError(
                    plugin_id, candidate, "Expected a candidate other than the stable version",
                    "name two different versions",
                )  # fmt: skip
            if salt is None:
                salt = route_salt(plugin_id, candidate)
            elif isinstance(salt, bool) or not isinstance(salt, int):
                raise TypeError(f"Expected `salt` to be an int, got {type(salt).__name__}")
            route = _Route(lane, weight, salt, pairs, mirror)
            if new_stable is home and home.route is not None and home.route.candidate is lane:
                route.acc = home.route.acc  # the keyless spread goes on (see _routing)
        else:
            weight_threshold(weight)
            if pairs or mirror is not None:
                route = _Route(None, 0.0, 0, pairs, mirror)
        if new_stable is not home:
            home.route = None
            self._runtimes[plugin_id] = new_stable
        new_stable.route = route

    def _rule_lanes(
        self, plugin_id: int, rules: Iterable[MatchRule]
    ) -> list[tuple[MatchRule, _Runtime]]:
        pairs = []
        for rule in rules:
            if not isinstance(rule, MatchRule):
                raise TypeError(f"Expected `rules` of MatchRule, got {type(rule).__name__}")
            lane = self._lane(plugin_id, rule.version)
            assert lane is not None
            pairs.append((rule, lane))
        return pairs

    def route_info(self, plugin_id: int) -> RouteInfo | None:
        """The plugin's route now (None if it is not loaded); ``routed`` per version."""
        home = self._runtimes.get(plugin_id)
        if home is None:
            return None
        lanes = self._lanes.get(plugin_id, {home.version: home})
        route = home.route
        candidate = None if route is None or route.candidate is None else route.candidate
        return RouteInfo(
            plugin_id,
            home.version,
            None if candidate is None else candidate.version,
            0.0 if route is None else route.weight,
            0 if route is None else route.salt,
            {name: lane.routed for name, lane in sorted(lanes.items())},
            () if route is None else route.rule_info,
            None if route is None or route.shadow is None else route.shadow.version,
            {name: lane.shadowed for name, lane in sorted(lanes.items())},
            {name: lane.shadow_dropped for name, lane in sorted(lanes.items())},
        )

    def version_stats(self, plugin_id: int) -> dict[str, PluginStats]:
        """Each loaded version's counters, by version name (empty if not loaded)."""
        home = self._runtimes.get(plugin_id)
        if home is None:
            return {}
        lanes = self._lanes.get(plugin_id, {home.version: home})
        return {name: lane.stats() for name, lane in sorted(lanes.items())}

    def _lane(self, plugin_id: int, version: str | None) -> _Runtime | None:
        """The stable lane (``version=None``) or the named one; None if not loaded."""
        home = self._runtimes.get(plugin_id)
        if home is None or version is None:
            return home
        lanes = self._lanes.get(plugin_id, {home.version: home})
        rt = lanes.get(version)
        if rt is None:
            raise VersionError(
                plugin_id, version, "Expected a loaded version, got none by that name",
                f"loaded: {', '.join(sorted(lanes))}",
            )  # fmt: skip
        return rt

    def dispatch_stats(self) -> DispatchStats:
        """A snapshot of the dispatcher's counters."""
        refused = self._refused
        return DispatchStats(
            plugins_loaded=self._plugins_loaded,
            plugins_unloaded=self._plugins_unloaded,
            frames_dispatched=self._frames_dispatched,
            dispatch_errors=sum(refused),
            would_block=refused[_WOULD_BLOCK],
            plugin_closed=refused[_PLUGIN_CLOSED],
            plugin_not_registered=refused[_NOT_REGISTERED],
            plugin_not_loaded=refused[_NOT_LOADED],
            permission_denied=refused[_PERMISSION_DENIED],
            sandbox_violation=refused[_SANDBOX_VIOLATION],
            header_decode_error=refused[_HEADER_DECODE_ERROR],
            frame_too_large=refused[_FRAME_TOO_LARGE],
            unknown_frame_type=refused[_UNKNOWN_FRAME_TYPE],
            circuit_open=refused[_CIRCUIT_OPEN],
        )

    def loaded_plugins(self) -> list[int]:
        """Ids of the loaded plugins, ascending."""
        return sorted(self._runtimes)

    def is_loaded(self, plugin_id: int) -> bool:
        """True if the plugin is loaded (an unloading plugin is not)."""
        return plugin_id in self._runtimes

    def _pending_replies(self, plugin_id: int) -> dict[Any, ReplyTarget] | None:
        """The requests of ``plugin_id`` waiting for replies (message -> reply target), the
        live dict its worker settles; ``None`` if it is not loaded. For a handler that
        answers requests itself, out of the worker's sight (an isolated plugin's host side):
        what it pops from this dict and settles, the worker leaves alone."""
        rt = self._runtimes.get(plugin_id)
        return rt.replies if rt is not None else None

    def __len__(self) -> int:
        return len(self._runtimes)

    def __repr__(self) -> str:
        return (
            f"<nyxplug.Dispatcher plugins={len(self._runtimes)} "
            f"frames_dispatched={self._frames_dispatched} dispatch_errors={sum(self._refused)}>"
        )
