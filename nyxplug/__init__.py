"""nyxplug: an asyncio frame-dispatch engine for Nyx protocol plugins.

Typed frames carrying a CBOR plugin header are checked (size, header, frame type,
registry, permission) and routed into each plugin's bounded queue, with awaiting
(``dispatch``) and fail-fast (``dispatch_nowait`` / ``try_dispatch``) backpressure.
The hot path is compiled with Cython; ``USE_EXTENSIONS`` says whether it is active.
"""

from ._constants import (
    DEFAULT_CAPACITY as DEFAULT_CAPACITY,
    DEFAULT_MAX_HEADER_SIZE as DEFAULT_MAX_HEADER_SIZE,
    DEFAULT_MAX_PAYLOAD_SIZE as DEFAULT_MAX_PAYLOAD_SIZE,
    DispatchStatus as DispatchStatus,
    FrameType as FrameType,
    Permission as Permission,
)
from ._errors import (
    AlreadyLoaded as AlreadyLoaded,
    AlreadyRegistered as AlreadyRegistered,
    DispatchError as DispatchError,
    FrameError as FrameError,
    FrameTooLarge as FrameTooLarge,
    HeaderDecodeError as HeaderDecodeError,
    NotRegistered as NotRegistered,
    NyxplugError as NyxplugError,
    PermissionDenied as PermissionDenied,
    PluginClosed as PluginClosed,
    PluginNotLoaded as PluginNotLoaded,
    PluginNotRegistered as PluginNotRegistered,
    SandboxViolation as SandboxViolation,
    UnknownFrameType as UnknownFrameType,
    WouldBlock as WouldBlock,
)
from ._impl import (
    USE_EXTENSIONS as USE_EXTENSIONS,
    Dispatcher as Dispatcher,
    PluginHeader as PluginHeader,
    PluginMessage as PluginMessage,
    PluginRegistry as PluginRegistry,
)
from ._info import PluginInfo as PluginInfo
from ._runner import run as run
from ._stats import DispatchStats as DispatchStats, PluginStats as PluginStats

__version__ = "0.1.0"

__all__ = (
    "DEFAULT_CAPACITY",
    "DEFAULT_MAX_HEADER_SIZE",
    "DEFAULT_MAX_PAYLOAD_SIZE",
    "USE_EXTENSIONS",
    "AlreadyLoaded",
    "AlreadyRegistered",
    "DispatchError",
    "DispatchStats",
    "DispatchStatus",
    "Dispatcher",
    "FrameError",
    "FrameTooLarge",
    "FrameType",
    "HeaderDecodeError",
    "NotRegistered",
    "NyxplugError",
    "Permission",
    "PermissionDenied",
    "PluginClosed",
    "PluginHeader",
    "PluginInfo",
    "PluginMessage",
    "PluginNotLoaded",
    "PluginNotRegistered",
    "PluginRegistry",
    "PluginStats",
    "SandboxViolation",
    "UnknownFrameType",
    "WouldBlock",
    "run",
)
