"""Argument checks shared by both twins, so both raise the same TypeError/ValueError text."""

from __future__ import annotations

from ._constants import FrameType

__all__ = ("as_bytes", "check_uint", "frame_type_object")

_BYTES_LIKE = (bytes, bytearray, memoryview)
_FRAME_TYPES = {member.value: member for member in FrameType}


def check_uint(name: str, value: object, limit: int) -> int:
    """``value`` as a plain int in ``0..limit``; bools are refused."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"Expected `{name}` to be an int, got {type(value).__name__}")
    if not 0 <= value <= limit:
        raise ValueError(f"Expected `{name}` in 0..{limit}, got {value}")
    return int(value)


def as_bytes(name: str, value: object) -> bytes:
    """``value`` as ``bytes`` (copying a bytearray or memoryview, so later edits cannot leak in)."""
    if type(value) is bytes:
        return value
    if isinstance(value, _BYTES_LIKE):
        return bytes(value)
    raise TypeError(f"Expected `{name}` to be bytes-like, got {type(value).__name__}")


def frame_type_object(code: int) -> int:
    """The ``FrameType`` member for a built-in code, else the plain int."""
    return _FRAME_TYPES.get(code, code)
