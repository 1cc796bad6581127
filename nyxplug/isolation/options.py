"""``[isolation]``: how isolated children are started, watched, limited and restarted."""

from __future__ import annotations

import math
from typing import Literal

import msgspec

from .layers import Limits

__all__ = ("IsolationOptions",)


class IsolationOptions(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Host-wide settings for plugins whose manifest says ``isolation = "process"``."""

    #: "fork-server": children forked from one pre-imported process (fast, shared pages);
    #: "exec": a fresh ``python -I -B -m nyxplug.host`` per child.
    spawn: Literal["fork-server", "exec"] = "fork-server"
    #: Seconds from spawn to the plugin's ``on_load`` returning in the child.
    start_timeout: float = 10.0
    #: Seconds a hook call (``health``, ``on_unload``...) may take in the child.
    call_timeout: float = 10.0
    #: A ping every ``heartbeat_interval``; no answer within ``heartbeat_timeout`` = hung.
    heartbeat_interval: float = 0.5
    heartbeat_timeout: float = 2.0
    #: Restarts after consecutive crashes, then the plugin is failed.
    max_restarts: int = 5
    #: Restart after ``restart_backoff * 2**n`` seconds (n = crashes in a row), at most
    #: ``restart_backoff_max``; a child that ran ``stable_after`` seconds resets n.
    restart_backoff: float = 0.05
    restart_backoff_max: float = 5.0
    stable_after: float = 30.0
    #: Seconds a child gets to exit after STOP before it is killed.
    stop_timeout: float = 2.0
    #: Monitored limits (sampled with each heartbeat); None = not watched.
    max_rss: int | None = None
    max_cpu_seconds: float | None = None
    max_open_files: int | None = None
    max_queue_depth: int | None = None
    #: What a breached monitored limit does: log it, restart the child, or unload the plugin.
    on_limit: Literal["log", "restart", "unload"] = "restart"
    #: Kernel-enforced limits applied in the child (rlimits, cgroup, seccomp, Landlock).
    limits: Limits = Limits()

    def __post_init__(self) -> None:
        for key in (
            "start_timeout", "call_timeout", "heartbeat_interval", "heartbeat_timeout",
            "restart_backoff", "restart_backoff_max", "stable_after", "stop_timeout",
        ):  # fmt: skip
            value = getattr(self, key)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"Expected `{key}` in seconds >= 0, got {value!r}")
        if not 0 <= self.max_restarts <= 1000:
            raise ValueError(f"Expected `max_restarts` in 0..1000, got {self.max_restarts}")
