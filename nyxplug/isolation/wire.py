"""The parent/child protocol: length-prefixed messages on a Unix stream socket.

Every message is ``u32 length | u8 kind | body`` (little-endian; ``length`` counts the
kind byte and the body). Frames travel in batches, many per message and many
messages per write, as ``u64 seq | u32 count`` then ``u8 type | u16 header length |
u32 payload length | header | payload`` per frame. Control messages are msgpack
structs decoded strictly (unknown fields and wrong types refused).

Replies (SPEC 8) cross only for frames someone waits on: before a FRAMES message
whose batch holds requests, the parent sends ASK (``u64 seq | u32 index`` per request,
the positions in that batch); for each asked position the child sends RESULT (``u64 seq
| u32 index | u8 status | data``; status 0: no reply, 1: ``data`` is the reply, 2:
``data`` is the handler's error text, 3: the reply was too large, ``data`` its size as
u64) before the batch's ACK. A batch without requests costs nothing more. A reply is
capped at :data:`REPLY_LIMIT` bytes (its RESULT fits in :data:`CHILD_MESSAGE_LIMIT`);
the child refuses a larger one (status 3) and counts it as a handler error.

The parent treats every byte from the child as hostile: sizes are capped before
anything is buffered, kinds must be ones a child may send, and any breach raises
``ProtocolViolation`` (the caller then kills the child).
"""

from __future__ import annotations

import enum
import struct
import sys
from collections.abc import Sequence
from typing import Any

import msgspec

from .._impl import decode_batch
from .errors import ProtocolViolation

__all__ = (
    "PROTOCOL_VERSION",
    "Call",
    "Hello",
    "Kind",
    "Load",
    "Loaded",
    "Log",
    "MessageReader",
    "Reply",
    "Welcome",
    "decode_ack",
    "decode_frames",
    "encode",
    "encode_ack",
    "encode_frames",
    "encode_seq",
)

PROTOCOL_VERSION = 1

_PREFIX = struct.Struct("<IB")
_SEQ = struct.Struct("<Q")
_ACK = struct.Struct("<QIII")
_PLAIN_ACK = struct.Struct("<IBQIII")  # an ACK without error text, framed

#: The most a child may send in one message (acks, logs, replies, state).
CHILD_MESSAGE_LIMIT = 1 << 20
#: The most the parent sends in one message (a batch of frames or the plugin's files).
PARENT_MESSAGE_LIMIT = 64 << 20
#: The largest reply a child may send for one request (the rest of its RESULT message
#: is the kind, seq, index and status).
REPLY_LIMIT = CHILD_MESSAGE_LIMIT - 14
#: RESULT statuses.
NO_REPLY, REPLY, REPLY_ERROR, REPLY_TOO_LARGE = 0, 1, 2, 3
#: Longest error text or log line kept from a child.
TEXT_LIMIT = 4096
#: Deepest nesting of arrays and maps in a message from a child (a REPLY's value is
#: ``Any``): deeper is a ``ProtocolViolation`` before the decoder sees it, so no
#: child can make the host recurse.
CHILD_DEPTH_LIMIT = 32


class Kind(enum.IntEnum):
    """Message kinds; below 16 from the child, 16 and up from the parent."""

    HELLO = 1
    LOADED = 2
    ACK = 3
    PONG = 4
    REPLY = 5
    LOG = 6
    RESULT = 7
    WELCOME = 16
    LOAD = 17
    FRAMES = 18
    PING = 19
    CALL = 20
    STOP = 21
    ASK = 22


CHILD_KINDS = frozenset(k for k in Kind if k < 16)
PARENT_KINDS = frozenset(k for k in Kind if k >= 16)


class LayerReport(msgspec.Struct, frozen=True, forbid_unknown_fields=True, array_like=True):
    """One isolation layer as the child applied it (or why it could not)."""

    name: str
    applied: bool
    detail: str


class Hello(msgspec.Struct, frozen=True, forbid_unknown_fields=True, array_like=True):
    """The child's first words: versions, proof it is the child just launched, its layers."""

    protocol_min: int
    protocol_max: int
    pid: int
    proof: bytes
    layers: list[LayerReport]


class Welcome(msgspec.Struct, frozen=True, forbid_unknown_fields=True, array_like=True):
    """The parent's answer: the protocol both will speak."""

    protocol: int


class Load(msgspec.Struct, frozen=True, forbid_unknown_fields=True, array_like=True):
    """The plugin to run: its files' bytes as the parent read (and verified) them."""

    name: str
    plugin_id: int
    version: str
    entry_module: str
    entry_attr: str
    files: dict[str, bytes]
    config: dict[str, Any]
    handler_timeout: float | None


class Loaded(msgspec.Struct, frozen=True, forbid_unknown_fields=True, array_like=True):
    """The plugin is imported and ``on_load`` returned (``error`` empty), or why not."""

    error: str
    batch: bool


class Call(msgspec.Struct, frozen=True, forbid_unknown_fields=True, array_like=True):
    """Call a plugin hook (``health``, ``export_state``, ``import_state``, ``on_unload``)."""

    seq: int
    method: str
    arg: Any = None


class Reply(msgspec.Struct, frozen=True, forbid_unknown_fields=True, array_like=True):
    """A hook's result: ``value``, or ``error`` text when it raised."""

    seq: int
    value: Any
    error: str


class Log(msgspec.Struct, frozen=True, forbid_unknown_fields=True, array_like=True):
    """A log record from the plugin's logger."""

    level: int
    message: str


_ENCODER = msgspec.msgpack.Encoder()
_DECODERS: dict[Kind, msgspec.msgpack.Decoder[Any]] = {
    Kind.HELLO: msgspec.msgpack.Decoder(Hello),
    Kind.LOADED: msgspec.msgpack.Decoder(Loaded),
    Kind.REPLY: msgspec.msgpack.Decoder(Reply),
    Kind.LOG: msgspec.msgpack.Decoder(Log),
    Kind.WELCOME: msgspec.msgpack.Decoder(Welcome),
    Kind.LOAD: msgspec.msgpack.Decoder(Load),
    Kind.CALL: msgspec.msgpack.Decoder(Call),
}


def encode(kind: Kind, message: msgspec.Struct) -> bytes:
    """One control message, framed."""
    body = _ENCODER.encode(message)
    return _PREFIX.pack(len(body) + 1, kind) + body


def decode(kind: Kind, body: bytes) -> Any:
    """A control message's struct; anything malformed is a ``ProtocolViolation``.

    A child's messages are checked for depth first (:data:`CHILD_DEPTH_LIMIT`)."""
    if kind in CHILD_KINDS:
        check_depth(kind, body, CHILD_DEPTH_LIMIT)
    try:
        return _DECODERS[kind].decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise ProtocolViolation(f"malformed {kind.name} message: {exc}") from None


# msgpack lead bytes (0xc0..0xdf) -> (bytes of a length field, fixed extra bytes, container).
# A container's length field counts items (a map's pairs, doubled below).
_LEADS: dict[int, tuple[int, int, int]] = {
    0xC0: (0, 0, 0), 0xC2: (0, 0, 0), 0xC3: (0, 0, 0),
    0xC4: (1, 0, 0), 0xC5: (2, 0, 0), 0xC6: (4, 0, 0),  # bin
    0xC7: (1, 1, 0), 0xC8: (2, 1, 0), 0xC9: (4, 1, 0),  # ext
    0xCA: (0, 4, 0), 0xCB: (0, 8, 0),  # float
    0xCC: (0, 1, 0), 0xCD: (0, 2, 0), 0xCE: (0, 4, 0), 0xCF: (0, 8, 0),  # uint
    0xD0: (0, 1, 0), 0xD1: (0, 2, 0), 0xD2: (0, 4, 0), 0xD3: (0, 8, 0),  # int
    0xD4: (0, 2, 0), 0xD5: (0, 3, 0), 0xD6: (0, 5, 0), 0xD7: (0, 9, 0), 0xD8: (0, 17, 0),
    0xD9: (1, 0, 0), 0xDA: (2, 0, 0), 0xDB: (4, 0, 0),  # str
    0xDC: (2, 0, 1), 0xDD: (4, 0, 1), 0xDE: (2, 0, 2), 0xDF: (4, 0, 2),  # array, map
}  # fmt: skip


def check_depth(kind: Kind, body: bytes, limit: int) -> None:
    """Refuse msgpack nested deeper than ``limit`` arrays/maps, walking it without recursion.

    Only the structure is read; malformed bytes end the walk and are left for the decoder
    to refuse with its own message."""
    pending: list[int] = []  # items still to read in each open container
    pos, end = 0, len(body)
    while pos < end:
        lead = body[pos]
        pos += 1
        items = 0
        if lead <= 0x7F or lead >= 0xE0:
            pass
        elif lead <= 0x8F:
            items = 2 * (lead & 0x0F)
        elif lead <= 0x9F:
            items = lead & 0x0F
        elif lead <= 0xBF:
            pos += lead & 0x1F
        else:
            shape = _LEADS.get(lead)
            if shape is None:
                return  # 0xc1: never valid; the decoder says so
            width, extra, container = shape
            length = int.from_bytes(body[pos : pos + width], "big") if width else 0
            pos += width + extra
            if container:
                items = length * container
            else:
                pos += length
        if items:
            if len(pending) >= limit:
                raise ProtocolViolation(
                    f"Expected {kind.name} nested at most {limit} deep, got deeper"
                )
            pending.append(items)
            continue
        while pending:  # this item closes every container it was the last of
            pending[-1] -= 1
            if pending[-1]:
                break
            pending.pop()


def encode_seq(kind: Kind, seq: int) -> bytes:
    """A PING or PONG."""
    return _PREFIX.pack(9, kind) + _SEQ.pack(seq)


def decode_seq(kind: Kind, body: bytes) -> int:
    if len(body) != 8:
        raise ProtocolViolation(f"Expected 8 bytes in {kind.name}, got {len(body)}")
    seq: int = _SEQ.unpack(body)[0]
    return seq


def encode_frames(seq: int, messages: Sequence[Any]) -> bytes:
    """A batch of ``PluginMessage`` objects as one FRAMES message, encoded by the twin
    (compiled or pure) whose messages they are."""
    kind = type(messages[0])
    encode_batch = _BATCH_ENCODERS.get(kind)
    if encode_batch is None:
        encode_batch = _BATCH_ENCODERS[kind] = sys.modules[kind.__module__].encode_batch
    data: bytes = encode_batch(_FRAMES, seq, messages if type(messages) is list else list(messages))
    return data


#: Each twin's ``encode_batch``, by the type of its messages.
_BATCH_ENCODERS: dict[type, Any] = {}
_FRAMES = int(Kind.FRAMES)


def decode_frames(body: bytes, max_header: int, max_payload: int) -> tuple[int, list[Any]]:
    """``(seq, messages)`` from a FRAMES body; anything malformed is a ``ProtocolViolation``."""
    try:
        return decode_batch(body, max_header, max_payload)
    except ValueError as exc:
        raise ProtocolViolation(str(exc)) from None


def encode_ack(seq: int, handled: int, errors: int, timeouts: int, first_error: str) -> bytes:
    """The child's receipt for one FRAMES batch, with the first error's text (capped)."""
    if not first_error:  # the usual receipt: one pack
        return _PLAIN_ACK.pack(_ACK.size + 1, Kind.ACK, seq, handled, errors, timeouts)
    text = first_error.encode("utf-8", "replace")[:TEXT_LIMIT]
    body = _ACK.pack(seq, handled, errors, timeouts) + text
    return _PREFIX.pack(len(body) + 1, Kind.ACK) + body


def decode_ack(body: bytes) -> tuple[int, int, int, int, str]:
    size = len(body)
    if size == _ACK.size:
        return (*_ACK.unpack(body), "")
    if not _ACK.size <= size <= _ACK.size + TEXT_LIMIT:
        raise ProtocolViolation(f"Expected an ACK of {_ACK.size}..{_ACK.size + TEXT_LIMIT} bytes")
    seq, handled, errors, timeouts = _ACK.unpack_from(body)
    text = body[_ACK.size :].decode("utf-8", "replace")
    return seq, handled, errors, timeouts, text


_RESULT = struct.Struct("<QIB")
_INDEX = struct.Struct("<I")


def encode_ask(seq: int, indices: Sequence[int]) -> bytes:
    """ASK: the positions of the requests in batch ``seq`` (sent just before it)."""
    body = _SEQ.pack(seq) + struct.pack(f"<{len(indices)}I", *indices)
    return _PREFIX.pack(len(body) + 1, Kind.ASK) + body


def decode_ask(body: bytes) -> tuple[int, list[int]]:
    if len(body) < _SEQ.size or (len(body) - _SEQ.size) % _INDEX.size:
        raise ProtocolViolation(f"Expected an ASK of 8 + 4n bytes, got {len(body)}")
    count = (len(body) - _SEQ.size) // _INDEX.size
    return _SEQ.unpack_from(body)[0], list(struct.unpack_from(f"<{count}I", body, _SEQ.size))


def encode_result(seq: int, index: int, status: int, data: bytes = b"") -> bytes:
    """RESULT: the answer to request ``index`` of batch ``seq`` (see the module's doc)."""
    return (
        _PREFIX.pack(_RESULT.size + len(data) + 1, Kind.RESULT)
        + _RESULT.pack(seq, index, status)
        + data
    )


def decode_result(body: bytes) -> tuple[int, int, int, bytes]:
    """``(seq, index, status, data)``; a status or data the protocol has no room for is a
    ``ProtocolViolation``."""
    if len(body) < _RESULT.size:
        raise ProtocolViolation(f"Expected a RESULT of at least {_RESULT.size} bytes")
    seq, index, status = _RESULT.unpack_from(body)
    data = body[_RESULT.size :]
    if status == REPLY_TOO_LARGE and len(data) != _SEQ.size:
        raise ProtocolViolation("Expected a too-large RESULT to carry its size in 8 bytes")
    if status == NO_REPLY and data or status > REPLY_TOO_LARGE:
        raise ProtocolViolation(f"Expected a RESULT status 0..3 (0 without data), got {status}")
    if status == REPLY_ERROR and len(data) > TEXT_LIMIT:
        raise ProtocolViolation(f"Expected an error text of at most {TEXT_LIMIT} bytes")
    return seq, index, status, data


def encode_stop() -> bytes:
    return _PREFIX.pack(1, Kind.STOP)


class MessageReader:
    """Splits a byte stream into ``(kind, body)`` messages, refusing what the peer may not send.

    It is the buffer of an ``asyncio.BufferedProtocol``: the transport reads straight into
    :meth:`get_buffer` and :meth:`update` returns the messages completed (no read allocates
    a buffer, and a small message is copied once, into its body). :meth:`feed` does both
    for bytes already read. A length is checked as soon as its prefix is in, before the
    buffer grows for the body, so a hostile length costs nothing; the buffer never holds
    more than one message beyond ``chunk`` bytes.
    """

    __slots__ = (
        "_buffer", "_view", "_start", "_end", "_need", "_kinds", "_limit", "_chunk", "_keep",
    )  # fmt: skip

    def __init__(self, allowed: frozenset[Kind], limit: int, chunk: int = 1 << 16) -> None:
        self._kinds = {int(k): Kind(k) for k in allowed}
        self._limit = limit
        self._chunk = chunk
        self._keep = max(chunk, 1 << 20)  # a larger buffer goes once it is empty
        self._need = _PREFIX.size  # bytes the message at ``_start`` needs in all
        self._fresh(chunk, b"")

    def _fresh(self, size: int, keep: bytes | memoryview) -> None:
        """A new buffer that starts with ``keep``. (Never resized in place: the
        transport may still hold a view of the old one.)"""
        buffer = bytearray(size)
        buffer[: len(keep)] = keep
        self._buffer, self._view = buffer, memoryview(buffer)
        self._start, self._end = 0, len(keep)

    def get_buffer(self, sizehint: int = -1) -> memoryview:
        """The free space to read into: room for the rest of the message begun, or a chunk."""
        start, end = self._start, self._end
        if start == end:  # nothing pending: read from the front
            if len(self._buffer) > self._keep:
                self._fresh(self._chunk, b"")  # give back what one large message took
            self._start = self._end = 0
            return self._view
        size = len(self._buffer)
        if size - start < self._need or (size - end < 1024 and end - start <= 4096):
            # The message begun does not fit, or little room is left and moving is cheap.
            self._fresh(max(self._chunk, self._need), self._view[start:end])
        return self._view[self._end :]

    def update(self, nbytes: int) -> list[tuple[Kind, bytes]]:
        """``nbytes`` were read into the buffer: every message they complete, in order."""
        self._end = end = self._end + nbytes
        start = self._start
        buffer, view, kinds = self._buffer, self._view, self._kinds
        messages: list[tuple[Kind, bytes]] = []
        while end - start >= 5:
            length, code = _PREFIX.unpack_from(buffer, start)
            kind = kinds.get(code)
            if kind is None:
                raise ProtocolViolation(f"unexpected message kind {code}")
            if not 1 <= length <= self._limit:
                raise ProtocolViolation(
                    f"Expected a message of 1..{self._limit} bytes, got {length}"
                )
            stop = start + 4 + length
            if stop > end:
                self._start, self._need = start, 4 + length
                return messages
            messages.append((kind, bytes(view[start + 5 : stop])))
            start = stop
        self._start, self._need = start, _PREFIX.size
        return messages

    def plain_ack(self, nbytes: int) -> tuple[int, int, int, int] | None:
        """If the ``nbytes`` just read are exactly one ACK without error text (a lone
        frame's receipt, the usual read on the host), take it: ``(seq, handled, errors,
        timeouts)``, checked as :meth:`update` would. ``None``: use :meth:`update`."""
        start = self._start
        if nbytes != _PLAIN_ACK.size or self._end != start:
            return None
        length, code, seq, handled, errors, timeouts = _PLAIN_ACK.unpack_from(self._buffer, start)
        if length != _ACK.size + 1 or code != Kind.ACK or code not in self._kinds:
            return None
        self._start = self._end = start + nbytes
        return seq, handled, errors, timeouts

    def feed(self, data: bytes | bytearray | memoryview) -> list[tuple[Kind, bytes]]:
        """Append bytes already read; every message they complete, in order."""
        messages: list[tuple[Kind, bytes]] = []
        source = memoryview(data).cast("B")
        while source:
            space = self.get_buffer()
            n = min(len(space), len(source))
            space[:n] = source[:n]
            source = source[n:]
            messages += self.update(n)
        return messages
