"""Batch dispatch (issue 16 item 3): what one ``try_dispatch_many`` / ``try_dispatch_framed``
call did, and the checks both twins share.

A batch is many ``try_dispatch`` calls in one: every frame gets a ``DispatchStatus`` and
is counted exactly as ``try_dispatch`` counts it, nothing is raised for a refused frame,
and nothing waits. The batch stops at the first ``WOULD_BLOCK``, so frames stay in
order: an embedder reading a socket pauses there and resumes from ``consumed`` (or the
buffer from ``used``) once the queue has room.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ._constants import DispatchStatus
from ._errors import FrameError, FrameTooLarge, FramingError

__all__ = ("MAX_MESSAGE_LIMIT", "BatchResult", "bad_length", "frame_list")

#: The largest length a 4-byte prefix can carry (the most ``max_size`` may be).
MAX_MESSAGE_LIMIT = 0xFFFFFFFF


class BatchResult:
    """The outcome of one batch call, frame by frame.

    ``statuses`` has one ``DispatchStatus`` per frame tried, in order; ``dispatched``
    counts the ``OK`` ones. ``consumed`` is how many frames the batch is done with: all
    of them, or the index of the frame that met a full queue (its status is the last,
    ``WOULD_BLOCK``; it was not enqueued, so send it again from there). ``used`` is the
    same point in bytes of a framed buffer (0 for a sequence): keep ``buf[used:]``.
    ``error`` is the framing error (``FramingError`` or ``FrameTooLarge``) that ended a
    buffer at ``used``; nothing after it can be trusted, close the stream.
    """

    __slots__ = ("statuses", "dispatched", "consumed", "used", "error")

    def __init__(
        self,
        statuses: list[DispatchStatus],
        dispatched: int,
        consumed: int,
        used: int = 0,
        error: FrameError | None = None,
    ) -> None:
        self.statuses = statuses
        self.dispatched = dispatched
        self.consumed = consumed
        self.used = used
        self.error = error

    @property
    def blocked(self) -> bool:
        """True when the batch stopped at a full queue (pause, resume from ``consumed``)."""
        return len(self.statuses) > self.consumed

    @property
    def refused(self) -> int:
        """Frames refused for good (every status but ``OK`` and a final ``WOULD_BLOCK``)."""
        return self.consumed - self.dispatched

    def __eq__(self, other: object, /) -> bool:
        if not isinstance(other, BatchResult):
            return NotImplemented
        return (
            self.statuses == other.statuses
            and self.dispatched == other.dispatched
            and self.consumed == other.consumed
            and self.used == other.used
            and repr(self.error) == repr(other.error)
        )

    __hash__ = None  # type: ignore[assignment]  # mutable record

    def __repr__(self) -> str:
        error = "" if self.error is None else f", error={self.error!r}"
        return (
            f"BatchResult(dispatched={self.dispatched}, consumed={self.consumed}, "
            f"used={self.used}, statuses=[{', '.join(s.name for s in self.statuses)}]{error})"
        )


def frame_list(
    frames: Iterable[Any], frame_cls: type, header_cls: type, message_cls: type
) -> list[Any]:
    """``frames`` as a list of ``frame_cls`` or ``message_cls`` items (what ``decode_batch``
    returns), checked before any frame is dispatched.

    The other twin's frames and messages are rebuilt as this twin's frames; anything else
    is a TypeError naming its index, raised before the batch changes anything.
    """
    items = frames if type(frames) is list else list(frames)
    converted: list[Any] | None = None
    for index, item in enumerate(items):
        if type(item) is frame_cls or type(item) is message_cls:
            if converted is not None:
                converted.append(item)
            continue
        kind = type(item)
        if kind.__name__ not in ("PluginFrame", "PluginMessage") or kind.__module__ not in _TWINS:
            raise TypeError(f"Expected `frames[{index}]` to be a PluginFrame, got {kind.__name__}")
        if converted is None:
            converted = items[:index]
        header = item.header
        converted.append(
            frame_cls(
                int(item.frame_type),
                header_cls(header.id, header.flags, header.data),
                item.payload,
            )
        )
    return items if converted is None else converted


_TWINS = ("nyxplug._dispatch", "nyxplug._dispatch_py")


def bad_length(size: int, limit: int, offset: int) -> FrameError | None:
    """The error for a message length outside ``1..limit`` at buffer byte ``offset``
    (the texts of ``FrameReader``); None for a good length."""
    if size == 0:
        return FramingError(f"a message length in 1..{limit}", "a length of 0", offset)
    if size > limit:
        return FrameTooLarge("message", size, limit)
    return None
