"""The plugin header and whole-frame codecs shared by both twins: canonical encoders,
strict decoders.

The compiled dispatcher decodes the canonical shape (what ``encode_header`` writes)
in C and hands every other shape to ``decode_header_fields`` below, so error
messages come from one place whichever twin runs.

The decoder accepts exactly SPEC 1: a definite-length map with the keys ``id``,
``flags`` and ``data`` in any order (unknown keys with scalar, text or byte-string
values are skipped), or the array ``[id, flags, data]``. Tags, indefinite lengths,
nested arrays or maps, and trailing bytes are refused. Nothing nests, so the depth
is bounded by construction and no input can make it recurse. cbor2 is not used here
because it accepts trailing bytes, tags and indefinite lengths, which this format
must refuse before it builds anything.
"""

from __future__ import annotations

import struct

from ._constants import MAX_FLAGS, MAX_PLUGIN_ID
from ._errors import FrameDecodeError, FrameTooLarge, HeaderDecodeError

__all__ = (
    "canonical_header_size",
    "decode_frame_fields",
    "decode_header_fields",
    "encode_frame",
    "encode_header",
)

_MAJOR_NAMES = (
    "an unsigned integer",
    "a negative integer",
    "a byte string",
    "a text string",
    "an array",
    "a map",
    "a tag",
    "a simple value or float",
)
_TOP_EXPECTED = "a CBOR map {id, flags, data} or array [id, flags, data]"


def _uint_head(major: int, value: int) -> bytes:
    """The shortest CBOR head for ``major`` carrying ``value``."""
    mt = major << 5
    if value < 24:
        return bytes((mt | value,))
    if value < 0x100:
        return bytes((mt | 24, value))
    if value < 0x10000:
        return bytes((mt | 25,)) + value.to_bytes(2, "big")
    if value < 0x100000000:
        return bytes((mt | 26,)) + value.to_bytes(4, "big")
    return bytes((mt | 27,)) + value.to_bytes(8, "big")


def _head_size(value: int) -> int:
    if value < 24:
        return 1
    if value < 0x100:
        return 2
    if value < 0x10000:
        return 3
    if value < 0x100000000:
        return 5
    return 9


def canonical_header_size(id: int, flags: int, data_len: int) -> int:
    """Length of ``encode_header(id, flags, data)`` without building it."""
    # a3 | 62 "id" | id | 65 "flags" | flags | 64 "data" | bstr head | data
    return 1 + 3 + _head_size(id) + 6 + _head_size(flags) + 5 + _head_size(data_len) + data_len


def encode_header(id: int, flags: int, data: bytes) -> bytes:
    """The canonical encoding: byte-for-byte ``cbor2.dumps({"id":…, "flags":…, "data":…})``."""
    return b"".join(
        (
            b"\xa3\x62id",
            _uint_head(0, id),
            b"\x65flags",
            _uint_head(0, flags),
            b"\x64data",
            _uint_head(2, len(data)),
            data,
        )
    )


class _Reader:
    """A cursor over the header bytes; every read checks the bytes are there."""

    __slots__ = ("buf", "pos", "end")
    part = "header"  # what the truncation message calls the input

    def __init__(self, buf: bytes) -> None:
        self.buf = buf
        self.pos = 0
        self.end = len(buf)

    def need(self, n: int, what: str) -> None:
        if self.end - self.pos < n:
            raise HeaderDecodeError(
                f"{n} more bytes for {what}",
                f"{self.end - self.pos} left (truncated {self.part})",
                self.pos,
            )

    def head(self) -> tuple[int, int, int, int]:
        """Read one item head: (major type, additional info, argument, offset of head)."""
        start = self.pos
        self.need(1, "an item head")
        initial = self.buf[self.pos]
        self.pos += 1
        major = initial >> 5
        info = initial & 0x1F
        if info < 24:
            return major, info, info, start
        if info <= 27:
            width = 1 << (info - 24)
            self.need(width, f"the argument of {_MAJOR_NAMES[major]}")
            arg = int.from_bytes(self.buf[self.pos : self.pos + width], "big")
            self.pos += width
            return major, info, arg, start
        if info == 31:
            if major == 7:
                raise HeaderDecodeError("a CBOR item", "a stray break byte 0xff", start)
            if major in (2, 3, 4, 5):
                noun = _MAJOR_NAMES[major].split(" ", 1)[1]
                raise HeaderDecodeError(
                    "a definite-length item", f"an indefinite-length {noun}", start
                )
        raise HeaderDecodeError(
            "well-formed CBOR",
            f"reserved additional information {info} in byte 0x{initial:02x}",
            start,
        )

    def take(self, n: int, what: str) -> bytes:
        self.need(n, what)
        out = self.buf[self.pos : self.pos + n]
        self.pos += n
        return out

    def scalar(self, where: str) -> tuple[int, object, int]:
        """Read one non-container item; return (major, value, offset)."""
        major, info, arg, start = self.head()
        if major == 0:
            return major, arg, start
        if major == 1:
            return major, -1 - arg, start
        if major == 2:
            return major, self.take(arg, "a byte string"), start
        if major == 3:
            raw = self.take(arg, "a text string")
            try:
                return major, raw.decode("utf-8"), start
            except UnicodeDecodeError:
                raise HeaderDecodeError(
                    "UTF-8 text", "invalid UTF-8 in a text string", start
                ) from None
        if major == 6:
            raise HeaderDecodeError("no CBOR tags", f"tag {arg} {where}", start)
        if major == 7:
            if info == 25:
                return major, struct.unpack(">e", arg.to_bytes(2, "big"))[0], start
            if info == 26:
                return major, struct.unpack(">f", arg.to_bytes(4, "big"))[0], start
            if info == 27:
                return major, struct.unpack(">d", arg.to_bytes(8, "big"))[0], start
            if info == 24 and arg < 32:
                raise HeaderDecodeError(
                    "well-formed CBOR", f"two-byte simple value {arg} (must be >= 32)", start
                )
            return major, ("simple", arg), start
        raise HeaderDecodeError(
            f"a scalar, text or byte string {where}",
            f"{_MAJOR_NAMES[major]} (nested containers are not allowed)",
            start,
        )


def _check_id(major: int, value: object, offset: int) -> int:
    if major not in (0, 1):
        raise HeaderDecodeError(
            f"`id` as an unsigned integer in 0..{MAX_PLUGIN_ID}", _MAJOR_NAMES[major], offset
        )
    assert isinstance(value, int)
    if not 0 <= value <= MAX_PLUGIN_ID:
        raise HeaderDecodeError(f"`id` in 0..{MAX_PLUGIN_ID}", str(value), offset)
    return value


def _check_flags(major: int, value: object, offset: int) -> int:
    if major not in (0, 1):
        raise HeaderDecodeError(
            f"`flags` as an unsigned integer in 0..{MAX_FLAGS}", _MAJOR_NAMES[major], offset
        )
    assert isinstance(value, int)
    if not 0 <= value <= MAX_FLAGS:
        raise HeaderDecodeError(f"`flags` in 0..{MAX_FLAGS}", str(value), offset)
    return value


def _check_data(major: int, value: object, offset: int) -> bytes:
    if major != 2:
        raise HeaderDecodeError("`data` as a byte string", _MAJOR_NAMES[major], offset)
    assert isinstance(value, bytes)
    return value


def _header_map(reader: _Reader, count: int, start: int) -> tuple[int, int, bytes]:
    """The entries of a header map of ``count`` entries whose head is at ``start``."""
    fields: dict[str, tuple[int, object, int]] = {}
    # Each entry takes at least two bytes, so a huge declared count fails on
    # truncation after at most len(buf) / 2 iterations.
    for _ in range(count):
        key_major, key, key_off = reader.scalar("as a map key")
        value = reader.scalar(f"as value of key {key!r}")
        if key_major == 3 and key in ("id", "flags", "data"):
            assert isinstance(key, str)
            if key in fields:
                raise HeaderDecodeError(f"key `{key}` once", "a duplicate", key_off)
            fields[key] = value
    for key in ("id", "flags", "data"):
        if key not in fields:
            raise HeaderDecodeError(f"key `{key}`", "a map without it", start)
    return _check_id(*fields["id"]), _check_flags(*fields["flags"]), _check_data(*fields["data"])


def _decode_canonical(buf: bytes) -> tuple[int, int, bytes] | None:
    """The shape ``encode_header`` writes, read with slicing; None for anything else.

    This keeps the pure-Python twin near cbor2's speed on real traffic; any deviation
    (other key order, array form, long heads, truncation) goes to the strict reader.
    """
    end = len(buf)
    if end < 18 or buf[:4] != b"\xa3\x62id":
        return None
    try:
        head = buf[4]
        if head < 24:
            id_, pos = head, 5
        elif head == 24:
            id_, pos = buf[5], 6
        elif head == 25:
            id_, pos = int.from_bytes(buf[5:7], "big"), 7
        elif head == 26:
            id_, pos = int.from_bytes(buf[5:9], "big"), 9
        else:
            return None
        if buf[pos : pos + 6] != b"\x65flags":
            return None
        head = buf[pos + 6]
        if head < 24:
            flags, pos = head, pos + 7
        elif head == 24:
            flags, pos = buf[pos + 7], pos + 8
        else:
            return None
        if buf[pos : pos + 5] != b"\x64data":
            return None
        head = buf[pos + 5]
        pos += 6
        if 0x40 <= head < 0x58:
            length = head - 0x40
        elif head == 0x58:
            length, pos = buf[pos], pos + 1
        elif head == 0x59:
            length, pos = int.from_bytes(buf[pos : pos + 2], "big"), pos + 2
        elif head == 0x5A:
            length, pos = int.from_bytes(buf[pos : pos + 4], "big"), pos + 4
        else:
            return None
    except IndexError:
        return None
    if end - pos != length:
        return None
    return id_, flags, buf[pos:]


def decode_header_fields(buf: bytes, max_size: int) -> tuple[int, int, bytes]:
    """Decode any accepted header shape into ``(id, flags, data)``.

    Raises ``FrameTooLarge`` before reading anything when ``len(buf) > max_size``,
    and ``HeaderDecodeError`` for everything SPEC 1 refuses.
    """
    if len(buf) > max_size:
        raise FrameTooLarge("header", len(buf), max_size)
    canonical = _decode_canonical(buf)
    if canonical is not None:
        return canonical
    reader = _Reader(buf)
    if reader.end == 0:
        raise HeaderDecodeError(_TOP_EXPECTED, "empty input", 0)
    major, _info, count, start = reader.head()
    if major == 4:
        if count != 3:
            raise HeaderDecodeError(
                "an array of exactly 3 items [id, flags, data]", f"{count} items", start
            )
        m, v, off = reader.scalar("as item 0 of the header array")
        id_ = _check_id(m, v, off)
        m, v, off = reader.scalar("as item 1 of the header array")
        flags = _check_flags(m, v, off)
        m, v, off = reader.scalar("as item 2 of the header array")
        data = _check_data(m, v, off)
    elif major == 5:
        id_, flags, data = _header_map(reader, count, start)
    elif major == 6:
        raise HeaderDecodeError("no CBOR tags", f"tag {count} around the header", start)
    else:
        raise HeaderDecodeError(_TOP_EXPECTED, _MAJOR_NAMES[major], start)
    if reader.pos != reader.end:
        raise HeaderDecodeError(
            "the end of the header after one CBOR item",
            f"{reader.end - reader.pos} trailing bytes",
            reader.pos,
        )
    return id_, flags, data


# -- whole frames (SPEC 8) -------------------------------------------------------------

_FRAME_EXPECTED = "a CBOR map {frame_type, header, payload}"
_HEADER_EXPECTED = "`header` as a CBOR map {id, flags, data}"


def encode_frame(frame_type: int, id: int, flags: int, data: bytes, payload: bytes) -> bytes:
    """Byte-for-byte ``cbor2.dumps({"frame_type": …, "header": {…}, "payload": …})``."""
    return b"".join(
        (
            b"\xa3\x6aframe_type",
            _uint_head(0, frame_type),
            b"\x66header",
            encode_header(id, flags, data),
            b"\x67payload",
            _uint_head(2, len(payload)),
            payload,
        )
    )


class _Short(Exception):
    """Prefix mode: the buffer ends inside the frame, which needs at least ``size`` bytes."""

    def __init__(self, size: int) -> None:
        self.size = size


class _FrameReader(_Reader):
    """The header's reader over a frame: bytes values (also from a memoryview), and in
    prefix mode a short buffer is ``_Short`` (more bytes may come), not an error."""

    __slots__ = ("prefix",)
    part = "frame"

    def __init__(self, buf: bytes | memoryview, prefix: bool) -> None:
        super().__init__(buf)  # type: ignore[arg-type]
        self.prefix = prefix

    def need(self, n: int, what: str) -> None:
        if self.end - self.pos < n:
            if self.prefix:
                raise _Short(self.pos + n)
            super().need(n, what)

    def take(self, n: int, what: str) -> bytes:
        return bytes(super().take(n, what))


def _check_frame_type(major: int, value: object, offset: int) -> int:
    if major not in (0, 1):
        raise HeaderDecodeError(
            "`frame_type` as an unsigned integer in 0..255", _MAJOR_NAMES[major], offset
        )
    assert isinstance(value, int)
    if not 0 <= value <= 255:
        raise HeaderDecodeError("`frame_type` in 0..255", str(value), offset)
    return value


def _check_payload(major: int, value: object, offset: int) -> bytes:
    if major != 2:
        raise HeaderDecodeError("`payload` as a byte string", _MAJOR_NAMES[major], offset)
    assert isinstance(value, bytes)
    return value


def _frame_map(reader: _FrameReader) -> tuple[int, int, int, bytes, bytes]:
    major, _info, count, start = reader.head()
    if major == 6:
        raise HeaderDecodeError("no CBOR tags", f"tag {count} around the frame", start)
    if major != 5:
        raise HeaderDecodeError(_FRAME_EXPECTED, _MAJOR_NAMES[major], start)
    # Each field is checked as soon as it is read, so prefix mode refuses a bad frame
    # without waiting for the rest of it.
    fields: dict[str, object] = {}
    header: tuple[int, int, bytes] | None = None
    for _ in range(count):
        key_major, key, key_off = reader.scalar("as a map key")
        if key_major == 3 and key == "header":
            if header is not None:
                raise HeaderDecodeError("key `header` once", "a duplicate", key_off)
            major, _info, arg, at = reader.head()
            if major == 6:
                raise HeaderDecodeError("no CBOR tags", f"tag {arg} as value of key 'header'", at)
            if major != 5:
                raise HeaderDecodeError(_HEADER_EXPECTED, _MAJOR_NAMES[major], at)
            header = _header_map(reader, arg, at)
            continue
        value = reader.scalar(f"as value of key {key!r}")
        if key_major == 3 and key in ("frame_type", "payload"):
            assert isinstance(key, str)
            if key in fields:
                raise HeaderDecodeError(f"key `{key}` once", "a duplicate", key_off)
            check = _check_frame_type if key == "frame_type" else _check_payload
            fields[key] = check(*value)
    for key in ("frame_type", "header", "payload"):
        if key not in fields and (key != "header" or header is None):
            raise HeaderDecodeError(f"key `{key}`", "a map without it", start)
    assert header is not None
    frame_type = fields["frame_type"]
    payload = fields["payload"]
    assert isinstance(frame_type, int) and isinstance(payload, bytes)
    return frame_type, *header, payload


def _decode_frame_canonical(
    buf: bytes | memoryview, prefix: bool
) -> tuple[int, int, int, bytes, bytes, int] | None:
    """The layout ``encode_frame`` writes, read with slicing; None for anything else
    (other key order, long heads, truncation), which the strict reader then explains."""
    if buf[:12] != b"\xa3\x6aframe_type":
        return None
    try:
        head = buf[12]
        if head < 24:
            frame_type, pos = head, 13
        elif head == 24:
            frame_type, pos = buf[13], 14
        else:
            return None
        if buf[pos : pos + 11] != b"\x66header\xa3\x62id":
            return None
        pos += 11
        head = buf[pos]
        if head < 24:
            id_, pos = head, pos + 1
        elif head == 24:
            id_, pos = buf[pos + 1], pos + 2
        elif head == 25:
            id_, pos = int.from_bytes(buf[pos + 1 : pos + 3], "big"), pos + 3
        elif head == 26:
            id_, pos = int.from_bytes(buf[pos + 1 : pos + 5], "big"), pos + 5
        else:
            return None
        if buf[pos : pos + 6] != b"\x65flags":
            return None
        head = buf[pos + 6]
        if head < 24:
            flags, pos = head, pos + 7
        elif head == 24:
            flags, pos = buf[pos + 7], pos + 8
        else:
            return None
        if buf[pos : pos + 5] != b"\x64data":
            return None
        length, pos = _bstr_head(buf, pos + 5)
        data = bytes(buf[pos : pos + length])
        pos += length
        if buf[pos : pos + 8] != b"\x67payload":
            return None
        length, pos = _bstr_head(buf, pos + 8)
    except IndexError:
        return None
    end = pos + length
    if end > len(buf) or (end != len(buf) and not prefix):
        return None
    return frame_type, id_, flags, data, bytes(buf[pos:end]), end


def _bstr_head(buf: bytes | memoryview, pos: int) -> tuple[int, int]:
    """A byte string's length and where its bytes start; IndexError if not one."""
    head = buf[pos]
    if 0x40 <= head < 0x58:
        return head - 0x40, pos + 1
    if head == 0x58:
        return buf[pos + 1], pos + 2
    if head == 0x59:
        return int.from_bytes(buf[pos + 1 : pos + 3], "big"), pos + 3
    if head == 0x5A:
        return int.from_bytes(buf[pos + 1 : pos + 5], "big"), pos + 5
    raise IndexError(pos)


def decode_frame_fields(
    buf: bytes | memoryview, max_size: int, prefix: bool = False
) -> tuple[int, int, int, bytes, bytes, int] | None:
    """Decode one whole frame into ``(frame_type, id, flags, data, payload, used)``.

    Whole-buffer mode: ``FrameTooLarge`` when ``len(buf) > max_size`` (before reading
    anything), ``FrameDecodeError`` for everything SPEC 8 refuses, trailing bytes
    included. Prefix mode reads one frame from the front of ``buf`` and allows bytes
    after it; ``None`` when ``buf`` ends inside a frame that could still be valid and
    fit (more bytes needed), ``FrameTooLarge`` when that frame needs more than
    ``max_size`` bytes (its ``size`` is then the least the frame needs, as far as read).
    The frame's header follows SPEC 1's map rules and messages; ``header`` is the only
    nested map, and the array forms are not accepted in a frame.
    """
    size = len(buf)
    if size > max_size:
        if not prefix:
            raise FrameTooLarge("frame", size, max_size)
        buf = memoryview(buf)[:max_size]
    canonical = _decode_frame_canonical(buf, prefix)
    if canonical is not None:
        return canonical
    reader = _FrameReader(buf, prefix)
    try:
        if reader.end == 0 and not prefix:
            raise HeaderDecodeError(_FRAME_EXPECTED, "empty input", 0)
        fields = _frame_map(reader)
        if not prefix and reader.pos != reader.end:
            raise HeaderDecodeError(
                "the end of the frame after one CBOR item",
                f"{reader.end - reader.pos} trailing bytes",
                reader.pos,
            )
    except _Short as short:
        if size >= max_size:
            raise FrameTooLarge("frame", short.size, max_size) from None
        return None
    except HeaderDecodeError as exc:
        raise FrameDecodeError(exc.expected, exc.found, exc.offset) from None
    return (*fields, reader.pos)
