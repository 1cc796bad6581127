"""Argument checks shared by both twins, so both raise the same TypeError/ValueError text."""

from __future__ import annotations

import math
from typing import Any, TypeAlias

from ._constants import FrameType

__all__ = (
    "BytesLike",
    "BatchErrors",
    "as_byte_view",
    "as_bytes",
    "check_list",
    "check_overrun",
    "check_policy",
    "check_uint",
    "enter_guard",
    "frame_type_object",
    "make_guard",
)

#: What ``as_bytes`` accepts, for annotations.
BytesLike: TypeAlias = bytes | bytearray | memoryview
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


def as_byte_view(name: str, value: object) -> bytes | memoryview:
    """``value`` without copying it where possible: bytes as they are, a flat byte view
    of a bytearray or memoryview, else ``as_bytes`` (a copy, or its TypeError)."""
    if type(value) is bytes:
        return value
    if isinstance(value, (bytearray, memoryview)):
        view = memoryview(value)
        if view.format == "B" and view.c_contiguous:
            return view
    return as_bytes(name, value)


def check_list(name: str, value: object) -> list[Any]:
    """``value`` if it is a list (the batch codec walks it twice, so no other iterable)."""
    if not isinstance(value, list):
        raise TypeError(f"Expected `{name}` to be a list, got {type(value).__name__}")
    return value


def frame_type_object(code: int) -> int:
    """The ``FrameType`` member for a built-in code, else the plain int."""
    return _FRAME_TYPES.get(code, code)


def check_policy(name: str, policy: object, *, guard_ok: bool = False) -> Any:
    """``policy`` if it is a ``SandboxPolicy`` (or, with ``guard_ok``, a ``SandboxGuard``) or None.

    A guard belongs to one plugin, so only ``load_plugin`` takes one.
    """
    if policy is None:
        return None
    from .sandbox import SandboxGuard, SandboxPolicy

    if isinstance(policy, SandboxPolicy) or (guard_ok and isinstance(policy, SandboxGuard)):
        return policy
    wanted = "a SandboxPolicy, a SandboxGuard" if guard_ok else "a SandboxPolicy"
    raise TypeError(f"Expected `{name}` to be {wanted} or None, got {type(policy).__name__}")


def check_overrun(limit: object, report: object, plugin_id: int) -> tuple[float, Any]:
    """``(limit, report)`` for timing a synchronous handler, or ``(0.0, None)`` for no timing.

    Both are given or neither: a limit nobody hears about, or a callback that never
    fires, is a mistake to refuse at load rather than a silent no-op.
    """
    if limit is None and report is None:
        return 0.0, None
    if limit is None or report is None:
        given, missing = (
            ("on_overrun", "overrun_limit") if limit is None else ("overrun_limit", "on_overrun")
        )
        raise TypeError(
            f"Expected `{missing}` with `{given}`, got only `{given}` - for plugin {plugin_id}"
        )
    if isinstance(limit, bool) or not isinstance(limit, (int, float)):
        raise TypeError(f"Expected `overrun_limit` to be a float, got {type(limit).__name__}")
    if not (limit > 0 and math.isfinite(limit)):
        raise ValueError(
            f"Expected `overrun_limit` > 0 and finite, got {limit!r} - for plugin {plugin_id}"
        )
    if not callable(report):
        raise TypeError(f"Expected `on_overrun` to be callable, got {type(report).__name__}")
    return float(limit), report


def make_guard(policy: Any, plugin_id: int, info: Any = None) -> Any:
    """The plugin's ``SandboxGuard``: the one given, one for ``policy``, or None for no policy.

    Passing a guard lets the plugin runtime count, on one guard, what the plugin was
    refused while loading, while sending and while its handler ran. ``info`` (the
    registry entry's ``PluginInfo``) lets a guard built here name the plugin.
    """
    if policy is None:
        return None
    from .sandbox import SandboxGuard

    if isinstance(policy, SandboxGuard):
        return policy
    return SandboxGuard(policy, plugin_id, info=info)


def enter_guard(guard: Any) -> None:
    """Attribute everything the current task runs to ``guard`` (SPEC 7's audit-hook check)."""
    from .sandbox import enter_guard as enter

    enter(guard)


class BatchErrors:
    """The errors of ``encode_batch``/``decode_batch``, worded once for both twins.

    Each builds the exception for its caller to raise (only on the error path).
    """

    @staticmethod
    def not_a_message(item: object) -> TypeError:
        return TypeError(
            f"Expected PluginMessage or PluginFrame objects, got {type(item).__name__}"
        )

    @staticmethod
    def header_too_long(size: int) -> ValueError:
        return ValueError(f"Expected a header of at most 65535 bytes, got {size}")

    @staticmethod
    def batch_too_large(size: int) -> ValueError:
        return ValueError(f"Expected a batch of at most 4 GiB, got {size} bytes")

    @staticmethod
    def too_short(size: int) -> ValueError:
        return ValueError(f"Expected at least 12 bytes in a frame batch, got {size}")

    @staticmethod
    def ends_inside(seq: int, index: int, count: int) -> ValueError:
        return ValueError(f"Frame batch {seq} ends inside frame {index} of {count}")

    @staticmethod
    def frame_too_large(
        seq: int, max_header: int, max_payload: int, header_len: int, payload_len: int
    ) -> ValueError:
        return ValueError(
            f"Expected a header <= {max_header} and a payload <= {max_payload} bytes in "
            f"frame batch {seq}, got {header_len} and {payload_len}"
        )

    @staticmethod
    def trailing_bytes(seq: int, count: int) -> ValueError:
        return ValueError(f"Expected frame batch {seq} to end after {count} frames")
