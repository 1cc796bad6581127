"""Frame types, permissions, status codes and limits shared by both dispatcher twins.

The compiled module mirrors a few of these as C constants and lists them in its
``_C_MIRRORS``; it refuses to import when ``mirror_mismatches`` finds one out of step,
and ``tests/test_public_api.py`` checks the list itself.
"""

from __future__ import annotations

import enum
import operator
import sys
from collections.abc import Mapping

__all__ = (
    "DEFAULT_CAPACITY",
    "DEFAULT_MAX_HEADER_SIZE",
    "DEFAULT_MAX_PAYLOAD_SIZE",
    "DEFAULT_MAX_FRAME_SIZE",
    "DEFAULT_FRAME_PERMISSIONS",
    "PLUGIN_FRAME_MIN",
    "PLUGIN_FRAME_MAX",
    "MAX_PLUGIN_ID",
    "MAX_FLAGS",
    "FLAG_REQUIRED",
    "MAX_BATCH_SEQ",
    "DispatchStatus",
    "FrameType",
    "Permission",
    "frame_type_name",
    "mirror_mismatches",
)


class FrameType(enum.IntEnum):
    """The Nyx plugin frame types (the protocol reserves ``0x50..0x5F`` for plugins)."""

    HANDSHAKE = 0x51
    DATA = 0x52
    CONTROL = 0x53
    ERROR = 0x54


class Permission(enum.Flag):
    """What a plugin may receive; each frame type requires one of these."""

    HANDSHAKE = 1
    DATA_ACCESS = 2
    CONTROL = 4
    ERROR_REPORTING = 8


class DispatchStatus(enum.IntEnum):
    """What ``Dispatcher.try_dispatch`` returns instead of raising.

    Every member but ``OK`` names the exception ``dispatch_nowait`` would have raised.
    """

    OK = 0
    WOULD_BLOCK = 1
    PLUGIN_CLOSED = 2
    PLUGIN_NOT_REGISTERED = 3
    PLUGIN_NOT_LOADED = 4
    PERMISSION_DENIED = 5
    SANDBOX_VIOLATION = 6
    HEADER_DECODE_ERROR = 7
    FRAME_TOO_LARGE = 8
    UNKNOWN_FRAME_TYPE = 9
    CIRCUIT_OPEN = 10


#: Frame types a dispatcher knows from the start, and the permission each requires.
DEFAULT_FRAME_PERMISSIONS: dict[int, Permission] = {
    FrameType.HANDSHAKE: Permission.HANDSHAKE,
    FrameType.DATA: Permission.DATA_ACCESS,
    FrameType.CONTROL: Permission.CONTROL,
    FrameType.ERROR: Permission.ERROR_REPORTING,
}

#: The protocol's plugin frame range; ``register_frame_type`` accepts only these codes.
PLUGIN_FRAME_MIN = 0x50
PLUGIN_FRAME_MAX = 0x5F

#: Queue capacity of a plugin when ``load_plugin`` is not told otherwise (Nyx's default).
DEFAULT_CAPACITY = 100
#: Largest encoded header accepted (Nyx's ``parse_plugin_header`` bound).
DEFAULT_MAX_HEADER_SIZE = 4096
#: Largest payload accepted per frame.
DEFAULT_MAX_PAYLOAD_SIZE = 16 * 1024 * 1024
#: Largest whole frame (``PluginFrame``) and largest message on a length-prefixed
#: stream (SPEC 8): a 1 MiB payload plus a header at its own 4 KiB limit.
DEFAULT_MAX_FRAME_SIZE = 1024 * 1024 + 4096

MAX_PLUGIN_ID = 2**32 - 1
MAX_FLAGS = 255
#: Bit 0 of ``flags``: the peer requires this plugin.
FLAG_REQUIRED = 0x01
#: Largest sequence number of a frame batch (a u64 on the isolation wire).
MAX_BATCH_SEQ = 2**64 - 1


def frame_type_name(code: int | None) -> str:
    """Render a frame type for messages: ``0x52 (DATA)`` or ``0x5a``."""
    if code is None:
        return "?"
    try:
        return f"0x{code:02x} ({FrameType(code).name})"
    except ValueError:
        return f"0x{code:02x}" if code >= 0 else str(code)


def mirror_mismatches(mirrors: Mapping[str, int]) -> list[str]:
    """The C mirrors (``{"FrameType.CONTROL": 0x53, ...}``) whose value differs from the
    one here, each as ``"<name> is <C value> in C, <value> here"``; empty when all agree."""
    here = sys.modules[__name__]
    return [
        f"{name} is {value} in C, {int(operator.attrgetter(name)(here))} here"
        for name, value in mirrors.items()
        if value != operator.attrgetter(name)(here)
    ]
