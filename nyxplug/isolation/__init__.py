"""Out-of-process plugins: a child per plugin, kernel-enforced limits, supervised.

A plugin whose manifest says ``[resources] isolation = "process"`` runs in a child
(``python -I -B -m nyxplug.host``) that applies isolation layers before it sees a
byte of plugin code, and talks to the host over a Unix socket. The host treats the
child as hostile: crashes, hangs, garbage and breached limits are contained and
counted, and the child is restarted or the plugin failed.
"""

from .errors import (
    ChildCrashed,
    ChildHandlerError,
    HandshakeFailed,
    IsolatedPluginFailed,
    IsolationError,
    ProtocolViolation,
)
from .layers import IsolationReport, Layer, Limits
from .options import IsolationOptions
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
    "Limits",
    "ProtocolViolation",
    "isolation_report",
)
