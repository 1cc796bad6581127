"""nyxplug: an asyncio frame-dispatch engine for Nyx protocol plugins.

Typed frames carrying a CBOR plugin header are checked (size, header, frame type,
registry, permission) and routed into each plugin's bounded queue, with awaiting
(``dispatch``) and fail-fast (``dispatch_nowait`` / ``try_dispatch``) backpressure.
The hot path is compiled with Cython; ``USE_EXTENSIONS`` says whether it is active.
"""

import typing as _typing

from ._batch import BatchResult as BatchResult
from ._breaker import BreakerConfig as BreakerConfig
from ._breaker import BreakerState as BreakerState
from ._breaker import BreakerStats as BreakerStats
from ._constants import (
    DEFAULT_CAPACITY as DEFAULT_CAPACITY,
)
from ._constants import (
    DEFAULT_MAX_FRAME_SIZE as DEFAULT_MAX_FRAME_SIZE,
)
from ._constants import (
    DEFAULT_MAX_HEADER_SIZE as DEFAULT_MAX_HEADER_SIZE,
)
from ._constants import (
    DEFAULT_MAX_PAYLOAD_SIZE as DEFAULT_MAX_PAYLOAD_SIZE,
)
from ._constants import (
    DispatchStatus as DispatchStatus,
)
from ._constants import (
    FrameType as FrameType,
)
from ._constants import (
    Permission as Permission,
)
from ._errors import (
    AlreadyLoaded as AlreadyLoaded,
)
from ._errors import (
    AlreadyRegistered as AlreadyRegistered,
)
from ._errors import (
    BreakerNotSet as BreakerNotSet,
)
from ._errors import (
    CircuitOpen as CircuitOpen,
)
from ._errors import (
    DispatchError as DispatchError,
)
from ._errors import (
    FrameDecodeError as FrameDecodeError,
)
from ._errors import (
    FrameError as FrameError,
)
from ._errors import (
    FrameTooLarge as FrameTooLarge,
)
from ._errors import (
    FramingError as FramingError,
)
from ._errors import (
    HandlerError as HandlerError,
)
from ._errors import (
    HeaderDecodeError as HeaderDecodeError,
)
from ._errors import (
    NotRegistered as NotRegistered,
)
from ._errors import (
    NyxplugError as NyxplugError,
)
from ._errors import (
    PermissionDenied as PermissionDenied,
)
from ._errors import (
    PluginClosed as PluginClosed,
)
from ._errors import (
    PluginNotLoaded as PluginNotLoaded,
)
from ._errors import (
    PluginNotRegistered as PluginNotRegistered,
)
from ._errors import (
    ReplyTimeout as ReplyTimeout,
)
from ._errors import (
    RequestDropped as RequestDropped,
)
from ._errors import (
    SandboxViolation as SandboxViolation,
)
from ._errors import (
    SessionClosed as SessionClosed,
)
from ._errors import (
    SessionError as SessionError,
)
from ._errors import (
    SessionViolation as SessionViolation,
)
from ._errors import (
    UnknownFrameType as UnknownFrameType,
)
from ._errors import (
    VersionError as VersionError,
)
from ._errors import (
    WouldBlock as WouldBlock,
)
from ._errors import (
    WrongThread as WrongThread,
)
from ._impl import (
    USE_EXTENSIONS as USE_EXTENSIONS,
)
from ._impl import (
    Dispatcher as Dispatcher,
)
from ._impl import (
    PluginFrame as PluginFrame,
)
from ._impl import (
    PluginHeader as PluginHeader,
)
from ._impl import (
    PluginMessage as PluginMessage,
)
from ._impl import (
    PluginRegistry as PluginRegistry,
)
from ._impl import route_point as route_point
from ._info import PluginInfo as PluginInfo
from ._lazy import lazy_exports as _lazy_exports
from ._replies import ReplySink as ReplySink
from ._routing import MatchRule as MatchRule
from ._routing import RouteInfo as RouteInfo
from ._runner import run as run
from ._stats import DispatchStats as DispatchStats
from ._stats import PluginStats as PluginStats
from ._stream import FrameReader as FrameReader
from ._stream import frame_message as frame_message

__version__ = "0.1.0"

__all__ = (
    "DEFAULT_CAPACITY",
    "DEFAULT_MAX_FRAME_SIZE",
    "DEFAULT_MAX_HEADER_SIZE",
    "DEFAULT_MAX_PAYLOAD_SIZE",
    "USE_EXTENSIONS",
    "AlreadyLoaded",
    "AlreadyRegistered",
    "BatchResult",
    "BreakerConfig",
    "BreakerNotSet",
    "BreakerState",
    "BreakerStats",
    "CircuitOpen",
    "DispatchError",
    "DispatchStats",
    "DispatchStatus",
    "Dispatcher",
    "FrameDecodeError",
    "FrameError",
    "FrameProtocol",
    "FrameReader",
    "FrameService",
    "FrameTooLarge",
    "FrameType",
    "FramingError",
    "HandlerError",
    "HeaderDecodeError",
    "MatchRule",
    "NotRegistered",
    "NyxplugError",
    "Permission",
    "PermissionDenied",
    "PluginClosed",
    "PluginFrame",
    "PluginHeader",
    "PluginInfo",
    "PluginMessage",
    "PluginNotLoaded",
    "PluginNotRegistered",
    "PluginRegistry",
    "PluginStats",
    "RemoteDispatcher",
    "ReplySink",
    "ReplyTimeout",
    "RequestDropped",
    "RouteInfo",
    "SandboxViolation",
    "SessionClosed",
    "SessionError",
    "SessionService",
    "SessionViolation",
    "StreamStats",
    "UnknownFrameType",
    "VersionError",
    "WouldBlock",
    "WrongThread",
    "frame_message",
    "route_point",
    "run",
)

if _typing.TYPE_CHECKING:
    from ._serve import FrameProtocol as FrameProtocol
    from ._serve import FrameService as FrameService
    from ._serve import StreamStats as StreamStats
    from .serving import RemoteDispatcher as RemoteDispatcher
    from .serving import SessionService as SessionService

# Serving frames over a socket (and cbor2, which its refusals use) and the session
# protocol load on first use, so `import nyxplug` stays as small as the dispatcher itself.
__getattr__, __dir__ = _lazy_exports(
    __name__,
    {
        "FrameProtocol": "_serve",
        "FrameService": "_serve",
        "StreamStats": "_serve",
        "RemoteDispatcher": "serving",
        "SessionService": "serving",
    },
)
