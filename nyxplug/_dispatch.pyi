"""Stub of the compiled dispatcher (``_dispatch.pyx``), for users of the compiled module.

The pure twin ``_dispatch_py.py`` carries the same annotations (mypy reads the twin
through ``_impl.py``); ``tests/test_public_api.py`` fails when a signature here differs
from the twin's, and ``make typecheck`` runs ``mypy.stubtest`` against the built module.
"""

import asyncio
from collections.abc import Callable, Coroutine, Iterable, Iterator
from typing import Any, TypeVar, final, overload

from typing_extensions import disjoint_base

from nyxplug._batch import BatchResult
from nyxplug._breaker import BreakerConfig, BreakerState, BreakerStats
from nyxplug._constants import DispatchStatus, Permission
from nyxplug._handlers import Handler
from nyxplug._info import PluginInfo
from nyxplug._replies import ReplyTarget
from nyxplug._routing import MatchRule, RouteInfo
from nyxplug._stats import DispatchStats, PluginStats
from nyxplug._validate import BytesLike
from nyxplug.sandbox import SandboxGuard, SandboxPolicy

_Target = TypeVar("_Target", bound=ReplyTarget)

__all__ = (
    "Dispatcher",
    "PluginFrame",
    "PluginHeader",
    "PluginMessage",
    "PluginRegistry",
    "decode_batch",
    "encode_batch",
    "route_point",
)

@final
class PluginHeader:
    """The Nyx plugin header ``{"id", "flags", "data"}`` that names a frame's plugin."""

    def __init__(self, id: int, flags: int = 0, data: BytesLike = b"") -> None: ...
    @classmethod
    def required(cls, id: int, data: BytesLike = b"") -> PluginHeader: ...
    @classmethod
    def optional(cls, id: int, data: BytesLike = b"") -> PluginHeader: ...
    @property
    def id(self) -> int: ...
    @property
    def flags(self) -> int: ...
    @property
    def data(self) -> bytes: ...
    @property
    def is_required(self) -> bool: ...
    def encode(self) -> bytes: ...
    @classmethod
    def decode(cls, buf: BytesLike, *, max_size: int = 4096) -> PluginHeader: ...
    def __eq__(self, other: object, /) -> bool: ...
    def __hash__(self) -> int: ...
    def __repr__(self) -> str: ...
    def __reduce__(self) -> tuple[Any, ...]: ...

@final
class PluginMessage:
    """What a plugin's handler receives: the frame type, its header and its payload."""

    def __init__(self, frame_type: int, header: PluginHeader, payload: BytesLike = b"") -> None: ...
    @property
    def frame_type(self) -> int: ...
    @property
    def header(self) -> PluginHeader: ...
    @property
    def payload(self) -> bytes: ...
    @property
    def plugin_id(self) -> int: ...
    @property
    def is_required(self) -> bool: ...
    @property
    def size(self) -> int: ...
    def __repr__(self) -> str: ...

@final
class PluginFrame:
    """A whole Nyx ``PluginFrame`` as it crosses a byte stream (SPEC 8)."""

    def __init__(self, frame_type: int, header: PluginHeader, payload: BytesLike = b"") -> None: ...
    @property
    def frame_type(self) -> int: ...
    @property
    def header(self) -> PluginHeader: ...
    @property
    def payload(self) -> bytes: ...
    def encode(self) -> bytes: ...
    @classmethod
    def decode(cls, buf: BytesLike, *, max_size: int = 1052672) -> PluginFrame: ...
    @classmethod
    def decode_prefix(
        cls, buf: BytesLike, *, max_size: int = 1052672
    ) -> tuple[PluginFrame, int] | None: ...
    def __eq__(self, other: object, /) -> bool: ...
    def __hash__(self) -> int: ...
    def __repr__(self) -> str: ...
    def __reduce__(self) -> tuple[Any, ...]: ...

def encode_batch(kind: int, seq: int, messages: list[PluginMessage] | list[PluginFrame]) -> bytes:
    """One frame batch of the isolation protocol, framed (length, kind, seq, count, frames)."""

def decode_batch(
    body: BytesLike, max_header: int, max_payload: int
) -> tuple[int, list[PluginMessage]]:
    """``(seq, messages)`` from a frame batch's body; ``ValueError`` if malformed."""

@final
class PluginRegistry:
    """Which plugins exist and which frame permissions each holds."""

    def __init__(self) -> None: ...
    def register(self, info: PluginInfo) -> None: ...
    def unregister(self, plugin_id: int) -> PluginInfo: ...
    def set_permissions(
        self,
        plugin_id: int,
        permissions: Permission | Iterable[Permission],
        *,
        source: str | None = None,
    ) -> PluginInfo: ...
    def is_registered(self, plugin_id: int) -> bool: ...
    def has_permission(self, plugin_id: int, permission: Permission) -> bool: ...
    def get(self, plugin_id: int) -> PluginInfo | None: ...
    def __len__(self) -> int: ...
    def __contains__(self, plugin_id: object, /) -> bool: ...
    def __iter__(self) -> Iterator[PluginInfo]: ...
    def __repr__(self) -> str: ...

@disjoint_base  # a cdef class (so no second C base), but not final: subclassing works
class Dispatcher:
    """Routes typed frames into per-plugin bounded queues, checked and counted (SPEC 3)."""

    def __init__(
        self,
        registry: PluginRegistry | None = None,
        *,
        sandbox: SandboxPolicy | None = None,
        max_header_size: int = 4096,
        max_payload_size: int = 16777216,
    ) -> None: ...
    def register_frame_type(self, code: int, permission: Permission) -> None: ...
    def required_permission(self, frame_type: int) -> Permission | None: ...
    async def load_plugin(
        self,
        info: PluginInfo,
        handler: Handler[PluginMessage] = None,
        *,
        capacity: int = 100,
        sandbox: SandboxPolicy | SandboxGuard | None = None,
        overrun_limit: float | None = None,
        on_overrun: Callable[[Any, float], object] | None = None,
    ) -> None: ...
    async def unload_plugin(self, plugin_id: int, *, drain: bool = True) -> PluginStats: ...
    async def swap_handler(
        self,
        plugin_id: int,
        handler: Handler[PluginMessage],
        *,
        sandbox: SandboxPolicy | SandboxGuard | None = None,
        between: Callable[[], object] | None = None,
        overrun_limit: float | None = None,
        on_overrun: Callable[[Any, float], object] | None = None,
    ) -> float: ...
    async def aclose(self) -> None: ...
    async def __aenter__(self) -> Dispatcher: ...
    async def __aexit__(self, *exc_info: object) -> None: ...
    async def wait_idle(self, plugin_id: int | None = None) -> None: ...
    def dispatch_nowait(
        self,
        frame_type: int,
        header: PluginHeader | BytesLike,
        payload: BytesLike = b"",
        *,
        key: int | str | BytesLike | None = None,
    ) -> None: ...
    def try_dispatch(
        self,
        frame_type: int,
        header: PluginHeader | BytesLike,
        payload: BytesLike = b"",
        *,
        key: int | str | BytesLike | None = None,
    ) -> DispatchStatus: ...
    def try_dispatch_many(self, frames: Iterable[PluginFrame | PluginMessage]) -> BatchResult: ...
    def try_dispatch_framed(self, buf: BytesLike, *, max_size: int = 1052672) -> BatchResult: ...
    def dispatch(
        self,
        frame_type: int,
        header: PluginHeader | BytesLike,
        payload: BytesLike = b"",
        *,
        key: int | str | BytesLike | None = None,
    ) -> Coroutine[Any, Any, None]: ...
    async def request(
        self,
        frame_type: int,
        header: PluginHeader | BytesLike,
        payload: BytesLike = b"",
        *,
        timeout: float | None = None,
    ) -> bytes | None: ...
    @overload
    async def submit(
        self,
        frame_type: int,
        header: PluginHeader | BytesLike,
        payload: BytesLike = b"",
        *,
        reply_to: None = None,
    ) -> asyncio.Future[bytes | None]: ...
    @overload
    async def submit(
        self,
        frame_type: int,
        header: PluginHeader | BytesLike,
        payload: BytesLike = b"",
        *,
        reply_to: _Target,
    ) -> _Target: ...
    @property
    def registry(self) -> PluginRegistry: ...
    def plugin_stats(self, plugin_id: int) -> PluginStats | None: ...
    def set_breaker(
        self,
        plugin_id: int,
        config: BreakerConfig | None,
        *,
        clock: Callable[[], float] | None = None,
        random: Callable[[], float] | None = None,
        version: str | None = None,
    ) -> None: ...
    def set_breaker_state(
        self,
        plugin_id: int,
        state: BreakerState,
        *,
        why: str | None = None,
        version: str | None = None,
    ) -> None: ...
    def set_breaker_repairing(
        self, plugin_id: int, step: str | None, *, recovered: bool = False
    ) -> None: ...
    def watch_breaker(
        self,
        plugin_id: int,
        callback: Callable[[BreakerState], object] | None,
        *,
        version: str | None = None,
    ) -> None: ...
    def breaker_stats(
        self, plugin_id: int, *, version: str | None = None
    ) -> BreakerStats | None: ...
    async def load_version(
        self,
        plugin_id: int,
        version: str,
        handler: Handler[PluginMessage] = None,
        *,
        capacity: int = 100,
        sandbox: SandboxPolicy | SandboxGuard | None = None,
        overrun_limit: float | None = None,
        on_overrun: Callable[[Any, float], object] | None = None,
    ) -> None: ...
    async def unload_version(
        self, plugin_id: int, version: str, *, drain: bool = True
    ) -> PluginStats: ...
    def set_route(
        self,
        plugin_id: int,
        *,
        stable: str,
        candidate: str | None = None,
        weight: float = 0.0,
        salt: int | None = None,
        rules: Iterable[MatchRule] = (),
        shadow: str | None = None,
    ) -> None: ...
    def route_info(self, plugin_id: int) -> RouteInfo | None: ...
    def version_stats(self, plugin_id: int) -> dict[str, PluginStats]: ...
    def dispatch_stats(self) -> DispatchStats: ...
    def loaded_plugins(self) -> list[int]: ...
    def is_loaded(self, plugin_id: int) -> bool: ...
    def _pending_replies(self, plugin_id: int) -> dict[Any, Any] | None: ...
    def __len__(self) -> int: ...
    def __repr__(self) -> str: ...

def route_point(key: int | str | BytesLike, salt: int = 0) -> int:
    """The key's 53-bit point on a route, as ``nyxplug._routing`` specifies it."""
