"""Replies to ``Dispatcher.request`` (SPEC 8), shared by both dispatcher twins.

A request is an ordinary frame whose message is also a key of its runtime's
``replies`` dict (message -> reply target, see below). Plain frames never touch that
dict: the worker only looks at a handler's return value while the dict is non-empty, so
``dispatch``, ``dispatch_nowait`` and ``try_dispatch`` pay nothing for replies.

Batch handlers: ``handle_batch`` may return ``None`` (every request in the batch gets
``None``) or a list with one reply per message, in order. The return value is only
inspected when the batch holds a request, and each request is answered when its whole
batch is done.

A reply goes to a *reply target*: the future ``request`` and ``submit`` make, or a
``ReplySink`` given to ``submit(..., reply_to=)``. A future runs its callbacks one loop
iteration after the worker answers it; a sink is called in the worker's own step, so a
server writes the reply that much sooner (the session server's request round trip).
"""

from __future__ import annotations

import asyncio
import contextvars
import math
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from ._errors import HandlerError, ReplyTimeout, RequestDropped

__all__ = (
    "ReplySink",
    "ReplyTarget",
    "abandon",
    "await_reply",
    "check_timeout",
    "fail",
    "fail_batch",
    "settle",
    "settle_batch",
)

_BYTES_LIKE = (bytearray, memoryview)


class ReplyTarget(Protocol):
    """Where a request's reply goes: an ``asyncio.Future`` or a ``ReplySink``. The worker
    calls ``set_result`` (the reply) or ``set_exception`` (``HandlerError``,
    ``RequestDropped``) once, and only while ``done()`` is False."""

    def done(self) -> bool: ...
    def set_result(self, result: bytes | None, /) -> None: ...
    def set_exception(self, exception: BaseException, /) -> None: ...


class ReplySink:
    """A reply target that is a call: once the handler has answered, the plugin's worker
    calls ``fn(*args, value, error)`` - ``value`` the reply (``None``: none) and ``error``
    ``None``, or ``value`` ``None`` and ``error`` the exception a future would get.

    Why not a future: a future's callbacks run on the loop's next iteration, after a
    handle was scheduled for them; the sink runs in the worker's step that produced the
    reply. ``fn`` runs in a copy of the context the sink was made in (as a done callback
    would), so it is never checked against the plugin's sandbox guard. It must not block;
    an exception it raises goes to the loop's exception handler, never into the worker.
    """

    __slots__ = ("_args", "_context", "_done", "_fn")

    def __init__(self, fn: Callable[..., object], *args: Any) -> None:
        self._fn = fn
        self._args = args
        self._context = contextvars.copy_context()
        self._done = False

    def done(self) -> bool:
        """True once the reply was delivered."""
        return self._done

    def set_result(self, result: bytes | None, /) -> None:
        """Deliver the reply: ``fn(*args, result, None)``."""
        if self._done:
            raise asyncio.InvalidStateError(f"Expected one reply, got a second - in {self!r}")
        self._done = True
        try:
            self._context.run(self._fn, *self._args, result, None)
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:  # as the loop treats a raising callback
            self._report(exc)

    def set_exception(self, exception: BaseException, /) -> None:
        """Deliver a failure: ``fn(*args, None, exception)``."""
        self._deliver(None, exception)

    def _deliver(self, value: bytes | None, error: BaseException | None) -> None:
        if self._done:
            raise asyncio.InvalidStateError(f"Expected one reply, got a second - in {self!r}")
        self._done = True
        try:
            self._context.run(self._fn, *self._args, value, error)
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:  # as the loop treats a raising callback
            self._report(exc)

    def _report(self, exc: BaseException) -> None:
        asyncio.get_running_loop().call_exception_handler(
            {"message": f"Exception in reply sink {self._fn!r}", "exception": exc}
        )

    def __repr__(self) -> str:
        state = "done" if self._done else "pending"
        return f"<ReplySink {self._fn!r} {state}>"


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
    replies: dict[Any, Any],
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
