"""Load-time handler resolution and handler-error logging, shared by both twins."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Protocol, TypeAlias, TypeVar

from ._constants import frame_type_name
from ._errors import NyxplugError, plugin_label

__all__ = (
    "HandlesBatches",
    "HandlesMessages",
    "Handler",
    "log_handler_error",
    "logger",
    "report_overrun",
    "resolve_handler",
)

logger = logging.getLogger("nyxplug")

_Message = TypeVar("_Message")
_Message_contra = TypeVar("_Message_contra", contravariant=True)


class HandlesMessages(Protocol[_Message_contra]):
    """A handler object that takes one frame at a time."""

    def handle(self, message: _Message_contra, /) -> object: ...


class HandlesBatches(Protocol[_Message]):
    """A handler object that takes every frame queued since its last call, as a list."""

    def handle_batch(self, messages: list[_Message], /) -> object: ...


#: What ``load_plugin`` and ``swap_handler`` take, over a twin's ``PluginMessage``
#: (``Handler[PluginMessage]``): see ``resolve_handler``. A call may return an awaitable.
Handler: TypeAlias = (
    Callable[[_Message], object] | HandlesMessages[_Message] | HandlesBatches[_Message] | None
)


def resolve_handler(handler: Any) -> tuple[Callable[..., Any] | None, bool]:
    """Turn what ``load_plugin`` was given into ``(callable, takes_batches)``.

    ``None`` is the no-op consumer. An object with ``handle_batch`` gets runs of
    frames; one with ``handle`` gets single frames; any other callable is called per
    frame. Sync and async callables are both fine: the worker awaits whatever
    awaitable a call returns.
    """
    if handler is None:
        return None, False
    batch = getattr(handler, "handle_batch", None)
    if batch is not None:
        if not callable(batch):
            raise TypeError(f"Expected `handle_batch` of {handler!r} to be callable")
        return batch, True
    handle = getattr(handler, "handle", None)
    if handle is not None:
        if not callable(handle):
            raise TypeError(f"Expected `handle` of {handler!r} to be callable")
        return handle, False
    if callable(handler):
        return handler, False
    raise TypeError(
        "Expected a handler: None, a callable taking a PluginMessage, or an object with "
        f"handle(message) / handle_batch(messages), got {type(handler).__name__}"
    )


def log_handler_error(
    plugin_id: int, frame_type: int, count: int, exc: BaseException, info: Any = None
) -> None:
    """Log a handler's exception with the plugin (named when ``info``, its registry entry,
    is given) and frame type, never hiding it."""
    from .sandbox import unguarded  # the plugin's sandbox must not refuse our log handlers

    with unguarded():
        if isinstance(exc, NyxplugError) and isinstance(exc, TimeoutError):
            # A timeout nyxplug enforced says all there is (plugin, frame, limit, fix);
            # the stack of the cancelled handler would bury it in chained tracebacks.
            logger.error("%s", exc, exc_info=None)
            return
        if count == 1:
            what = f"frame {frame_type_name(int(frame_type))}"
        else:
            first = frame_type_name(int(frame_type))
            what = f"a batch of {count} frames starting with frame {first}"
        logger.error(
            "Handler of %s raised on %s; counted in PluginStats.errors, the worker goes on",
            plugin_label(plugin_id, info),
            what,
            exc_info=(type(exc), exc, exc.__traceback__),
        )


def report_overrun(plugin_id: int, report: Any, arg: Any, elapsed: float) -> None:
    """Tell ``on_overrun`` a synchronous call took ``elapsed`` seconds, outside the sandbox.

    The callback is the host's code, not the plugin's, so the plugin's guard does not
    apply; if it raises, that is logged and the worker goes on with the next frame.
    """
    from .sandbox import unguarded

    with unguarded():
        try:
            report(arg, elapsed)
        except Exception as exc:
            logger.error(
                "on_overrun of plugin %d raised; the worker goes on",
                plugin_id,
                exc_info=(type(exc), exc, exc.__traceback__),
            )
