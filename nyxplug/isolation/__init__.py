"""Out-of-process plugins: a child per plugin, kernel-enforced limits, supervised.

A plugin whose manifest says ``[resources] isolation = "process"`` runs in a child
(``python -I -B -m nyxplug.host``) that applies isolation layers before it sees a
byte of plugin code, and talks to the host over a Unix socket. The host treats the
child as hostile: crashes, hangs, garbage and breached limits are contained and
counted, and the child is restarted or the plugin failed.

The errors and the options load with this package; the host side (``IsolatedPlugin``,
the layers, ``isolation_report``) loads on first use, so ``nyxplug.config`` and the
child, which only need the options, never import the process machinery.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_exports
from .errors import (
    ChildCrashed,
    ChildHandlerError,
    HandshakeFailed,
    IsolatedPluginFailed,
    IsolationError,
    LimitNotEnforceable,
    ProtocolViolation,
    ReplyTooLarge,
)
from .options import IsolationOptions, Limits

if TYPE_CHECKING:
    from .layers import IsolationReport, Layer
    from .process import IsolatedPlugin, IsolationStats
    from .report import isolation_report

__all__ = (
    "ChildCrashed",
    "ChildHandlerError",
    "HandshakeFailed",
    "IsolatedPlugin",
    "IsolatedPluginFailed",
    "IsolationError",
    "IsolationOptions",
    "IsolationReport",
    "IsolationStats",
    "Layer",
    "LimitNotEnforceable",
    "Limits",
    "ProtocolViolation",
    "ReplyTooLarge",
    "isolation_report",
)

#: The public names that live in a heavier module, imported when first asked for.
__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "IsolatedPlugin": "process",
        "IsolationStats": "process",
        "IsolationReport": "layers",
        "Layer": "layers",
        "isolation_report": "report",
    },
)
