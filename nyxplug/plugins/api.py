"""What a plugin author writes against: the ``Plugin`` base and the ``PluginContext``.

A plugin is an object with ``async handle(message)`` (and optionally
``async handle_batch(messages)``); the base class gives every other hook a harmless
default so a plugin only writes what it needs.
"""

from __future__ import annotations

import logging
from collections.abc import Coroutine, Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from .._constants import DispatchStatus, FrameType, Permission
from .._errors import DispatchError, HeaderDecodeError, PermissionDenied, SandboxViolation
from .._impl import PluginHeader
from .._refused import Refused

if TYPE_CHECKING:
    from .._dispatch_py import Dispatcher, PluginMessage

__all__ = ("Plugin", "PluginContext")


class Plugin:
    """Base class for plugins; override ``handle`` and whichever hooks you need.

    The runtime sets ``self.ctx`` before ``on_load`` is awaited.
    """

    ctx: PluginContext

    async def on_load(self, ctx: PluginContext) -> None:
        """Called once before the first frame; raise to refuse loading (the plugin fails)."""

    async def handle(self, message: PluginMessage) -> bytes | None:
        """Handle one frame. Exceptions are counted and logged; the next frame follows.

        What it returns is the reply to a ``request`` (bytes-like, or None for none);
        for frames sent with ``dispatch`` it is ignored."""
        raise NotImplementedError(f"{type(self).__name__} must implement handle(message)")

    async def on_unload(self) -> None:
        """Called once after the last frame was handled (the queue is drained)."""

    async def health(self) -> bool:
        """Liveness: True while the plugin works (checked after ``on_load``, on reload, and
        on the ``[health]`` schedule; failing there holds its frames off until it passes)."""
        return True

    async def ready(self) -> bool:
        """Readiness: False while the plugin cannot take traffic for now (a dependency is
        down); with ``[health]``, its frames are refused until it is ready again, nothing
        is restarted."""
        return True

    def export_state(self) -> Any:
        """State to hand to the next version of this plugin on a hot swap."""
        return None

    def import_state(self, state: Any) -> None:
        """Take over the state the previous version exported."""


class PluginContext:
    """A plugin's view of the runtime: its identity, config, logger, and a way to send.

    ``dispatch`` / ``dispatch_nowait`` / ``try_dispatch`` send frames to other plugins
    under this plugin's own rights: it must hold the permission the frame type
    requires, and CONTROL frames pass its own sandbox preflight, before the target's
    usual checks run.
    """

    def __init__(
        self,
        *,
        name: str,
        plugin_id: int,
        version: str,
        config: Mapping[str, Any],
        dispatcher: Dispatcher,
        guard: Any = None,
    ) -> None:
        self.name = name
        self.id = plugin_id
        self.version = version
        self.config: Mapping[str, Any] = MappingProxyType(dict(config))
        self.logger = logging.getLogger(f"nyxplug.plugin.{name}")
        self._dispatcher = dispatcher
        self._guard = guard

    @property
    def permissions(self) -> Permission:
        """This plugin's frame permissions, as the dispatcher's registry holds them now."""
        info = self._dispatcher.registry.get(self.id)
        return info.permissions if info is not None else Permission(0)

    def _refusal(self, frame_type: int, header: PluginHeader | bytes) -> DispatchError | None:
        """What this plugin's own rights refuse (the dispatcher's table and registry, its
        own guard), as the error to raise or report - ``None`` when they allow the frame."""
        required = self._dispatcher.required_permission(frame_type)
        if required is not None and not self._dispatcher.registry.has_permission(self.id, required):
            info = self._dispatcher.registry.get(self.id)
            return PermissionDenied(self.id, frame_type, required, info)
        if self._guard is not None and frame_type == FrameType.CONTROL:
            if not hasattr(header, "data"):  # CBOR bytes (a header of either twin passes)
                try:
                    header = PluginHeader.decode(header)
                except HeaderDecodeError as exc:
                    return exc
            detail = self._guard.preflight(header)
            if detail is not None:
                self._guard.violations += 1
                info = self._dispatcher.registry.get(self.id)
                return SandboxViolation(self.id, frame_type, detail, info)
        return None

    def dispatch(
        self, frame_type: int, header: PluginHeader | bytes, payload: bytes = b""
    ) -> Coroutine[Any, Any, None]:
        """``Dispatcher.dispatch`` as this plugin: waits for room in the target's queue.

        As with the dispatcher, a refusal (this plugin's own rights included) is raised
        by awaiting the result, not by the call.
        """
        refusal = self._refusal(frame_type, header)
        if refusal is not None:
            return Refused(refusal)
        return self._dispatcher.dispatch(frame_type, header, payload)

    def dispatch_nowait(
        self, frame_type: int, header: PluginHeader | bytes, payload: bytes = b""
    ) -> None:
        """``Dispatcher.dispatch_nowait`` as this plugin."""
        refusal = self._refusal(frame_type, header)
        if refusal is not None:
            raise refusal
        self._dispatcher.dispatch_nowait(frame_type, header, payload)

    def try_dispatch(
        self, frame_type: int, header: PluginHeader | bytes, payload: bytes = b""
    ) -> DispatchStatus:
        """``Dispatcher.try_dispatch`` as this plugin: a refusal is a status, never raised."""
        refusal = self._refusal(frame_type, header)
        if refusal is None:
            return self._dispatcher.try_dispatch(frame_type, header, payload)
        if isinstance(refusal, PermissionDenied):
            return DispatchStatus.PERMISSION_DENIED
        if isinstance(refusal, SandboxViolation):
            return DispatchStatus.SANDBOX_VIOLATION
        return DispatchStatus.HEADER_DECODE_ERROR

    async def request(
        self,
        frame_type: int,
        header: PluginHeader | bytes,
        payload: bytes = b"",
        *,
        timeout: float | None = None,
    ) -> bytes | None:
        """``Dispatcher.request`` as this plugin: the target's reply, under this plugin's
        own rights (a refusal is raised by awaiting, before anything is enqueued)."""
        refusal = self._refusal(frame_type, header)
        if refusal is not None:
            raise refusal
        return await self._dispatcher.request(frame_type, header, payload, timeout=timeout)

    def __repr__(self) -> str:
        return f"<PluginContext {self.name!r} id={self.id} version={self.version}>"
