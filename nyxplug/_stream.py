"""Length-prefix stream framing (SPEC 8): each message is a 4-byte big-endian length N,
then N bytes.

``FrameReader`` turns the chunks a socket delivers into whole messages. It copies only
the unfinished tail of a chunk, so it never holds more than one message of the largest
allowed size plus its 4-byte prefix, whatever the peer sends. A bad length (0, or above
the limit) ends the stream: nothing after it can be trusted, so the reader refuses all
further input with the same error. Pure Python: the work per message is one
``struct`` unpack and one slice copy, which measured faster than a call into C would
save (see the README's "Whole frames and stream framing").
"""

from __future__ import annotations

import struct

from ._constants import DEFAULT_MAX_FRAME_SIZE
from ._errors import FrameError, FrameTooLarge, FramingError
from ._validate import BytesLike, as_bytes, check_uint

__all__ = ("FrameReader", "frame_message")

_LENGTH = struct.Struct(">I")
_MAX_LIMIT = 0xFFFFFFFF


def frame_message(message: BytesLike) -> bytes:
    """``message`` with its 4-byte big-endian length in front (what ``FrameReader`` reads)."""
    size = len(message)
    if not 0 < size <= _MAX_LIMIT:
        raise ValueError(f"Expected a message of 1..{_MAX_LIMIT} bytes, got {size} bytes")
    return _LENGTH.pack(size) + message


class FrameReader:
    """Incremental reader of a length-prefixed byte stream: ``feed(chunk)`` returns the
    messages the chunk completes, as ``bytes``, in order.

    A length of 0 is ``FramingError``, one above ``max_size`` is ``FrameTooLarge``; both
    are ``FrameError`` and end the stream. Messages completed before the bad length are
    still returned by that ``feed`` call; the error is raised by it when it completed
    none, else by the next call. ``error`` shows it at once. Every later ``feed`` (and
    ``close``) raises the same error again (a fresh instance with the same fields).
    """

    __slots__ = ("_buf", "_need", "_max", "_offset", "_error")

    def __init__(self, *, max_size: int = DEFAULT_MAX_FRAME_SIZE) -> None:
        self._max = check_uint("max_size", max_size, _MAX_LIMIT)
        self._buf = bytearray()  # the unfinished tail: a partial prefix or message
        self._need = 0  # bytes of prefix + message the tail needs in all (0: unknown yet)
        self._offset = 0  # stream offset of the first byte of the tail
        self._error: FrameError | None = None

    @property
    def max_size(self) -> int:
        """The largest message accepted, in bytes (the prefix not counted)."""
        return self._max

    @property
    def buffered(self) -> int:
        """Bytes held for an unfinished message (at most ``max_size + 4``)."""
        return len(self._buf)

    @property
    def offset(self) -> int:
        """Stream bytes consumed into returned messages (where the next message starts)."""
        return self._offset

    @property
    def error(self) -> FrameError | None:
        """The error that ended the stream, or None while it is healthy."""
        return self._error

    def feed(self, data: BytesLike) -> list[bytes]:
        """Take the next chunk of the stream; return the messages it completes."""
        if self._error is not None:
            raise _again(self._error)
        out: list[bytes] = []
        # Slicing bytes gives the message in one step; a chunk of another type is
        # copied once (a memcpy per chunk, a few ns per message).
        view = data if type(data) is bytes else as_bytes("data", data)
        pos = 0
        end = len(view)
        buf = self._buf
        if buf:  # finish the message begun by an earlier chunk, copying only what it lacks
            if self._need == 0:
                take = min(4 - len(buf), end)
                buf += view[:take]
                pos = take
                if len(buf) < 4:
                    return out
                self._need = self._check(_LENGTH.unpack_from(buf)[0], self._offset)
                if self._error is not None:
                    return self._fail(out)
            take = min(self._need - len(buf), end - pos)
            buf += view[pos : pos + take]
            pos += take
            if len(buf) < self._need:
                return out
            out.append(bytes(buf[4:]))
            self._offset += len(buf)
            buf.clear()
            self._need = 0
        unpack = _LENGTH.unpack_from
        append = out.append
        limit = self._max
        start = pos
        while end - pos >= 4:
            (size,) = unpack(view, pos)
            if not 0 < size <= limit:
                self._offset += pos - start
                self._check(size, self._offset)
                return self._fail(out)
            stop = pos + 4 + size
            if stop > end:
                self._need = 4 + size
                break
            append(view[pos + 4 : stop])
            pos = stop
        self._offset += pos - start
        if pos < end:
            buf += view[pos:]
        return out

    def close(self) -> None:
        """The stream ended: raise its error, or ``FramingError`` if it ended inside a
        message; return quietly when it ended on a message boundary."""
        if self._error is not None:
            raise _again(self._error)
        if self._buf:
            have = len(self._buf)
            if self._need:
                expected = f"{self._need - 4}-byte message to end"
                found = f"the end of the stream after {have - 4} of its bytes"
            else:
                expected = "a 4-byte length prefix"
                found = f"the end of the stream after {have} of its bytes"
            self._error = FramingError(expected, found, self._offset)
            raise _again(self._error)

    def _check(self, size: int, offset: int) -> int:
        """``size`` if it is a valid message length, else record the error and return 0."""
        if size == 0:
            self._error = FramingError(
                f"a message length in 1..{self._max}", "a length of 0", offset
            )
        elif size > self._max:
            self._error = FrameTooLarge("message", size, self._max)
        else:
            return 4 + size
        return 0

    def _fail(self, out: list[bytes]) -> list[bytes]:
        """Drop the untrusted rest; raise now unless messages before the error are due."""
        self._buf.clear()
        self._need = 0
        if not out:
            assert self._error is not None
            raise _again(self._error)
        return out

    def __repr__(self) -> str:
        state = "failed" if self._error is not None else f"{len(self._buf)} bytes buffered"
        return f"<FrameReader max_size={self._max}, {state}, offset {self._offset}>"


def _again(error: FrameError) -> FrameError:
    """A fresh copy of the stored error, so re-raising never grows one traceback."""
    return type(error)(*error.args)
