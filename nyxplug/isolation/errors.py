"""Errors of out-of-process plugins: each names the plugin, what happened and what to do."""

from __future__ import annotations

from .._constants import frame_type_name
from .._errors import NyxplugError

__all__ = (
    "ChildCrashed",
    "ChildHandlerError",
    "HandshakeFailed",
    "IsolatedPluginFailed",
    "IsolationError",
    "LimitNotEnforceable",
    "ProtocolViolation",
    "ReplyTooLarge",
)


class IsolationError(NyxplugError):
    """An isolated plugin's child could not be started, isolated or kept running."""


class ProtocolViolation(IsolationError, ValueError):
    """A message on the parent/child socket broke the protocol (the child is then killed)."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail

    def __str__(self) -> str:
        return f"Protocol violation: {self.detail}"


class HandshakeFailed(IsolationError):
    """The child did not prove itself, spoke another protocol version, or never answered."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(name, reason)
        self.name = name
        self.reason = reason

    def __str__(self) -> str:
        return (
            f"Plugin {self.name!r}: the isolated child failed its handshake: {self.reason} - "
            "it was killed; check the host's stderr and `nyxplug isolation`"
        )


class ChildCrashed(IsolationError):
    """The child died (or was killed) while frames were in it; they are counted lost."""

    def __init__(
        self,
        name: str,
        plugin_id: int,
        frame_type: int,
        cause: str,
        lost: int,
        restarting: bool = True,
    ) -> None:
        super().__init__(name, plugin_id, frame_type, cause, lost, restarting)
        self.name = name
        self.plugin_id = plugin_id
        self.frame_type = frame_type
        self.cause = cause
        self.lost = lost
        self.restarting = restarting

    def __str__(self) -> str:
        then = "a new child is started" if self.restarting else "it is not restarted"
        return (
            f"Plugin {self.name!r} (id {self.plugin_id}): its isolated child {self.cause} with "
            f"{self.lost} frame(s) in it, from frame {frame_type_name(self.frame_type)}; they are "
            f"counted in IsolationStats.lost_to_crash and {then}"
        )


class IsolatedPluginFailed(IsolationError):
    """The child kept crashing: restarts are exhausted and the plugin is failed."""

    def __init__(self, name: str, plugin_id: int, frame_type: int | None, reason: str) -> None:
        super().__init__(name, plugin_id, frame_type, reason)
        self.name = name
        self.plugin_id = plugin_id
        self.frame_type = frame_type
        self.reason = reason

    def __str__(self) -> str:
        where = f" and refused frame {frame_type_name(self.frame_type)}" if self.frame_type else ""
        return (
            f"Plugin {self.name!r} (id {self.plugin_id}) failed{where}: {self.reason} - "
            "fix the plugin, then `nyxplug reload` or load it again"
        )


class ChildHandlerError(IsolationError):
    """The plugin's handler raised inside the child (counted once per batch, like handle_batch)."""

    def __init__(self, name: str, plugin_id: int, frame_type: int, errors: int, first: str) -> None:
        super().__init__(name, plugin_id, frame_type, errors, first)
        self.name = name
        self.plugin_id = plugin_id
        self.frame_type = frame_type
        self.errors = errors
        self.first = first

    def __str__(self) -> str:
        return (
            f"Plugin {self.name!r} (id {self.plugin_id}): its handler raised {self.errors} time(s) "
            f"in the isolated child, in a batch from frame {frame_type_name(self.frame_type)}; "
            f"first: {self.first}"
        )


class ReplyTooLarge(IsolationError):
    """An isolated handler's reply to a request was over the wire's limit: the child
    refused to send it (the requester gets ``HandlerError`` caused by this; counted in
    ``IsolationStats.replies_refused`` and as a handler error)."""

    def __init__(self, name: str, plugin_id: int, frame_type: int, size: int, limit: int) -> None:
        super().__init__(name, plugin_id, frame_type, size, limit)
        self.name = name
        self.plugin_id = plugin_id
        self.frame_type = frame_type
        self.size = size
        self.limit = limit

    def __str__(self) -> str:
        return (
            f"Expected a reply of at most {self.limit} bytes, got {self.size} - in plugin "
            f"{self.name!r} (id {self.plugin_id}), isolated, on frame "
            f"{frame_type_name(self.frame_type)}; send large results in pieces, or run the "
            "plugin in-process"
        )


class LimitNotEnforceable(IsolationError, ValueError):
    """A manifest's ``[sandbox]`` key asks for what an isolated child cannot enforce."""

    def __init__(self, name: str, key: str, reason: str) -> None:
        super().__init__(name, key, reason)
        self.name = name
        self.key = key
        self.reason = reason

    def __str__(self) -> str:
        return f"Plugin {self.name!r}: [sandbox] {self.key} {self.reason}"
