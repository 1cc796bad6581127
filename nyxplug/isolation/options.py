"""``[isolation]``: how isolated children are started, watched, limited and restarted.

Plain settings only, cheap to import: ``nyxplug.config`` reads them, and so does the
child (``Limits``), neither of which should load the host's process machinery.
"""

from __future__ import annotations

import math
from typing import Literal

import msgspec

__all__ = ("IsolationOptions", "Limits")


class Limits(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What an isolated child may use. ``None`` leaves that limit as the child found it."""

    #: Bytes of address space (RLIMIT_AS). Virtual memory: thread stacks and malloc arenas count.
    address_space: int | None = 1 << 30
    #: Seconds of CPU time (RLIMIT_CPU): SIGXCPU at the limit, SIGKILL one second later.
    cpu_seconds: int | None = None
    #: Open file descriptors (RLIMIT_NOFILE).
    open_files: int | None = 64
    #: RLIMIT_NPROC: 0 = no new processes. Linux counts every task of the uid, threads too,
    #: so 0 is left to seccomp (which refuses processes, not threads) when seccomp is there.
    processes: int | None = 0
    #: Bytes of memory in the child's cgroup (v1 memory.limit_in_bytes, v2 memory.max).
    memory: int | None = 256 << 20
    #: Tasks in the child's cgroup (pids.max); threads count too.
    pids: int | None = 32
    #: Allow inet sockets and TCP (seccomp and Landlock otherwise deny them).
    network: bool = False
    #: Extra paths the child may read (Landlock), beyond ``layers.default_read_paths()``.
    read_paths: tuple[str, ...] = ()
    #: The uid and gid a child started as root drops to.
    user: int = 65534


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
