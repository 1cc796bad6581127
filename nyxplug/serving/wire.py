"""The session protocol's messages (docs/session-protocol.md is the contract).

Every message is ``u32 length | u8 kind | body`` (little-endian; ``length`` counts the kind
byte and the body), as on the isolation wire. BATCH and REQUEST bodies are the frame-batch
body the twins' C codec writes and reads (``encode_batch`` / ``decode_batch``); every other
body is a msgpack array decoded strictly into the structs below (unknown fields, wrong
types and extra items refused).
"""

from __future__ import annotations

import enum
import struct
from typing import Any

import msgspec

from .._errors import (
    CircuitOpen,
    DispatchError,
    FrameTooLarge,
    HandlerError,
    HeaderDecodeError,
    PermissionDenied,
    PluginClosed,
    PluginNotLoaded,
    PluginNotRegistered,
    ReplyTimeout,
    RequestDropped,
    SandboxViolation,
    SessionViolation,
    UnknownFrameType,
    WouldBlock,
)

__all__ = (
    "ALPN",
    "PROTOCOL_VERSION",
    "Ack",
    "Credit",
    "Error",
    "GoAway",
    "Hello",
    "Kind",
    "PluginGrant",
    "RemoteError",
    "Reply",
    "SessionReader",
    "Welcome",
    "decode",
    "encode",
    "remote_error",
)

PROTOCOL_VERSION = 1
#: The protocol name in HELLO (and the TLS ALPN id a TLS listener offers).
ALPN = "nyx/1"

PREFIX = struct.Struct("<IB")

#: The most a server sends in one control message (ACK, REPLY...); a client refuses more.
SERVER_MESSAGE_LIMIT = 16 << 20
#: Longest text (names, error messages) either side keeps from the other.
TEXT_LIMIT = 4096


class Kind(enum.IntEnum):
    """Message kinds: below 16 from the client, 16 and up from the server."""

    HELLO = 1
    BATCH = 2
    REQUEST = 3
    WELCOME = 16
    ACK = 17
    CREDIT = 18
    REPLY = 19
    GOAWAY = 20
    ERROR = 21


CLIENT_KINDS = frozenset(k for k in Kind if k < 16)
SERVER_KINDS = frozenset(k for k in Kind if k >= 16)

_STRUCT = {"frozen": True, "forbid_unknown_fields": True, "array_like": True}


class Hello(msgspec.Struct, **_STRUCT):
    """The client's first message: the protocol it speaks and who it is."""

    version: int
    protocol: str
    client: str


class PluginGrant(msgspec.Struct, **_STRUCT):
    """One plugin this peer may send to: its permission bits and its initial credit."""

    plugin_id: int
    permissions: int
    credit: int


class Welcome(msgspec.Struct, **_STRUCT):
    """The server's answer to HELLO: the version both speak, the plugins and the limits."""

    version: int
    server: str
    plugins: list[PluginGrant]
    max_message: int
    max_batch: int


class Ack(msgspec.Struct, **_STRUCT):
    """Cumulative: every BATCH with ``seq < next_seq`` is handled; ``counts[s]`` is how many
    of their frames ended with ``DispatchStatus(s)``; ``credits`` are new grants."""

    next_seq: int
    counts: list[int]
    credits: list[tuple[int, int]]


class Credit(msgspec.Struct, **_STRUCT):
    """New credit without an acknowledgement: ``(plugin_id, n)`` pairs."""

    credits: list[tuple[int, int]]


class Reply(msgspec.Struct, **_STRUCT):
    """The answer to one REQUEST: its ``DispatchStatus``, the reply bytes (or None), or the
    error (class name and message) the local ``request`` would have raised."""

    request_id: int
    status: int
    value: bytes | None
    error: str
    message: str


class GoAway(msgspec.Struct, **_STRUCT):
    """The server drains: batches with ``seq < next_seq`` were handled, later ones will not be."""

    next_seq: int
    reason: str


class Error(msgspec.Struct, **_STRUCT):
    """A protocol violation (``code``), then the server closes the connection."""

    code: str
    message: str


_ENCODER = msgspec.msgpack.Encoder()
_DECODERS: dict[int, msgspec.msgpack.Decoder[Any]] = {
    Kind.HELLO: msgspec.msgpack.Decoder(Hello),
    Kind.WELCOME: msgspec.msgpack.Decoder(Welcome),
    Kind.ACK: msgspec.msgpack.Decoder(Ack),
    Kind.CREDIT: msgspec.msgpack.Decoder(Credit),
    Kind.REPLY: msgspec.msgpack.Decoder(Reply),
    Kind.GOAWAY: msgspec.msgpack.Decoder(GoAway),
    Kind.ERROR: msgspec.msgpack.Decoder(Error),
}


def encode(kind: Kind, message: msgspec.Struct) -> bytes:
    """One control message, framed."""
    body = _ENCODER.encode(message)
    return PREFIX.pack(len(body) + 1, kind) + body


def decode(kind: int, body: bytes) -> Any:
    """A control message's struct; anything malformed is a ``SessionViolation``."""
    try:
        return _DECODERS[kind].decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise SessionViolation("bad-message", f"{Kind(kind).name}: {exc}") from None


class SessionReader:
    """Splits a byte stream into ``(kind, body)`` messages, refusing what the peer may not
    send: a kind outside ``allowed`` or a length outside ``1..limit`` is a
    ``SessionViolation`` as soon as the 5-byte prefix is in, before the body is buffered.

    Whole messages in one chunk are sliced out of it without copying into a buffer; a
    message split across chunks is joined once, when its last byte has arrived.
    """

    __slots__ = ("_allowed", "_have", "_limit", "_need", "_parts")

    def __init__(self, allowed: frozenset[Kind], limit: int) -> None:
        self._allowed = frozenset(int(k) for k in allowed)
        self._limit = limit
        self._parts: list[bytes] = []
        self._have = 0
        self._need = 0

    @property
    def buffered(self) -> int:
        """Bytes held for an unfinished message."""
        return self._have

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        """Take ``data``; return every message it completes, in order."""
        if not self._parts and len(data) >= 5:
            # The common case of a request/reply exchange: the chunk is one whole message.
            length, kind = PREFIX.unpack_from(data)
            if length + 4 == len(data) and kind in self._allowed and length <= self._limit:
                return [(kind, data[5:])]
        if self._parts:
            self._parts.append(data)
            self._have += len(data)
            if self._have < self._need:
                return []
            data = b"".join(self._parts)
            self._parts = []
            self._have = 0
        out: list[tuple[int, bytes]] = []
        pos = 0
        end = len(data)
        need = 5
        unpack = PREFIX.unpack_from
        allowed = self._allowed
        limit = self._limit
        while end - pos >= 5:
            length, kind = unpack(data, pos)
            if kind not in allowed:
                raise SessionViolation(
                    "bad-kind", f"Expected a message kind in {sorted(allowed)}, got {kind}"
                )
            if not 1 <= length <= limit:
                raise SessionViolation(
                    "too-large", f"Expected a message length in 1..{limit}, got {length}"
                )
            stop = pos + 4 + length
            if stop > end:
                need = 4 + length
                break
            out.append((kind, data[pos + 5 : stop]))
            pos = stop
        if pos < end:
            rest = data[pos:] if pos else data
            self._parts = [rest]
            self._have = len(rest)
            self._need = need
        return out


class RemoteError(DispatchError):
    """An error the server reported for a request, re-raised on the client.

    For an error class the client knows (``HandlerError``, ``PermissionDenied``...) the
    raised exception is also an instance of that class, so ``except HandlerError`` works
    across the wire; ``name`` is the server-side class name, ``message`` its text.
    """

    def __init__(self, name: str, message: str) -> None:
        BaseException.__init__(self, name, message)
        self.name = name
        self.message = message

    def __str__(self) -> str:
        return f"{self.name} from the server: {self.message}"

    def __reduce__(self) -> tuple[Any, ...]:
        return (remote_error, (self.name, self.message))


_KNOWN: dict[str, type[DispatchError]] = {
    cls.__name__: cls
    for cls in (
        WouldBlock,
        PluginClosed,
        PluginNotRegistered,
        PluginNotLoaded,
        PermissionDenied,
        SandboxViolation,
        HeaderDecodeError,
        FrameTooLarge,
        UnknownFrameType,
        CircuitOpen,
        HandlerError,
        ReplyTimeout,
        RequestDropped,
    )
}
_REMOTE: dict[str, type[RemoteError]] = {}


def remote_error(name: str, message: str) -> RemoteError:
    """The exception for an error the server named ``name`` (see ``RemoteError``)."""
    base = _KNOWN.get(name)
    if base is None:
        return RemoteError(name, message)
    cls = _REMOTE.get(name)
    if cls is None:
        cls = type(name, (RemoteError, base), {"__module__": __name__, "__doc__": base.__doc__})
        _REMOTE[name] = cls
    return cls(name, message)
