"""Replies to ``Dispatcher.request`` (SPEC 8), shared by both dispatcher twins.

A request is an ordinary frame whose message is also a key of its runtime's
``replies`` dict (message -> future). Plain frames never touch that dict: the worker
only looks at a handler's return value while the dict is non-empty, so ``dispatch``,
``dispatch_nowait`` and ``try_dispatch`` pay nothing for replies.

Batch handlers: ``handle_batch`` may return ``None`` (every request in the batch gets
``None``) or a list with one reply per message, in order. The return value is only
inspected when the batch holds a request, and each request is answered when its whole
batch is done.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable
from typing import Any

from ._errors import HandlerError, ReplyTimeout, RequestDropped

__all__ = (
    "abandon",
    "await_reply",
    "check_timeout",
    "fail",
    "fail_batch",
    "settle",
    "settle_batch",
)

_BYTES_LIKE = (bytearray, memoryview)


def check_timeout(timeout: object) -> float | None:
    """``timeout`` as seconds (``None``: wait for ever); refuse bools, negatives and NaN."""
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(
            f"Expected `timeout` to be a number of seconds or None, got {type(timeout).__name__}"
        )
    if math.isnan(timeout) or timeout < 0:
        raise ValueError(f"Expected `timeout` >= 0 seconds or None, got {timeout!r}")
    return float(timeout)


async def await_reply(
    parked: Awaitable[None] | None,
    replies: dict[Any, asyncio.Future[Any]],
    msg: Any,
    reply: asyncio.Future[Any],
    timeout: float | None,
    info: Any,
    frame_type: int,
) -> bytes | None:
    """Wait for ``msg``'s reply (after ``parked``, the wait for queue space, if any).

    The message is registered for a reply once it is enqueued; if this is cancelled or
    times out, the registration goes and the worker handles the frame as a plain one.
    """
    try:
        if timeout is None:
            if parked is not None:
                await parked
            replies[msg] = reply
            return await reply  # type: ignore[no-any-return]
        try:
            async with asyncio.timeout(timeout):
                if parked is not None:
                    await parked
                replies[msg] = reply
                return await reply  # type: ignore[no-any-return]
        except TimeoutError:
            enqueued = msg in replies or reply.done()
            raise ReplyTimeout(info.id, int(frame_type), timeout, enqueued, info) from None
    finally:
        replies.pop(msg, None)
        if reply.done() and not reply.cancelled():
            reply.exception()  # a reply that lost the race with a cancellation: retrieved


def _as_reply(result: object) -> bytes | None:
    if result is None or type(result) is bytes:
        return result
    if isinstance(result, _BYTES_LIKE):
        return bytes(result)
    raise TypeError(
        f"Expected the handler to return a reply (bytes-like) or None, got {type(result).__name__}"
    )


def settle(replies: dict[Any, Any], msg: Any, info: Any, result: object) -> Exception | None:
    """Answer ``msg``'s request with the handler's ``result``, if it is a request.

    Returns the ``TypeError`` when ``result`` is not a reply (the requester got it as
    a ``HandlerError``; the worker counts and logs it like a raised exception).
    """
    reply = replies.pop(msg, None)
    if reply is None:
        return None
    try:
        value = _as_reply(result)
    except TypeError as exc:
        fail_one(reply, msg, info, exc)
        return exc
    if not reply.done():
        reply.set_result(value)
    return None


def fail_one(reply: asyncio.Future[Any], msg: Any, info: Any, exc: BaseException) -> None:
    if not reply.done():
        reply.set_exception(HandlerError.caused_by(info.id, msg.frame_type, exc, info))


def fail(replies: dict[Any, Any], msg: Any, info: Any, exc: BaseException) -> None:
    """The handler raised ``exc`` on ``msg``: its requester gets a ``HandlerError``."""
    reply = replies.pop(msg, None)
    if reply is not None:
        fail_one(reply, msg, info, exc)


def settle_batch(
    replies: dict[Any, Any], batch: list[Any], info: Any, result: object
) -> Exception | None:
    """Answer the requests in ``batch`` from ``handle_batch``'s ``result``.

    ``None`` answers each with ``None``; a list of ``len(batch)`` replies answers
    message ``i`` with item ``i``. Anything else fails the batch's requests with a
    ``HandlerError`` and is returned (as a ``TypeError``) for the worker to count.
    """
    if result is None:
        for msg in batch:
            reply = replies.pop(msg, None)
            if reply is not None and not reply.done():
                reply.set_result(None)
        return None
    if not isinstance(result, list) or len(result) != len(batch):
        got = f"a list of {len(result)}" if isinstance(result, list) else type(result).__name__
        exc = TypeError(
            f"Expected handle_batch to return None or a list of {len(batch)} replies "
            f"(one per message), got {got}"
        )
        if any(msg in replies for msg in batch):
            fail_batch(replies, batch, info, exc)
            return exc
        return None
    bad: Exception | None = None
    for msg, item in zip(batch, result, strict=True):
        error = settle(replies, msg, info, item)
        if bad is None:
            bad = error
    return bad


def fail_batch(replies: dict[Any, Any], batch: list[Any], info: Any, exc: BaseException) -> None:
    """``handle_batch`` raised ``exc``: every request in the batch gets a ``HandlerError``."""
    for msg in batch:
        fail(replies, msg, info, exc)


def abandon(replies: dict[Any, Any], info: Any) -> None:
    """The worker is gone: requests whose frames were never handled (dropped by an
    unload without drain) fail with ``RequestDropped`` instead of waiting for ever."""
    for msg, reply in list(replies.items()):
        if not reply.done():
            reply.set_exception(RequestDropped(info.id, int(msg.frame_type), info))
    replies.clear()
