"""HOST side: the cgroup(s) of one isolated child, created by the (root) host before the spawn.

The child joins them as its first layer (``layers._layer_cgroup`` writes its pid to
:attr:`Cgroup.procs`); the host limits memory and tasks through them, reads the OOM
counters after a crash and kills and removes the group when the child is gone.
"""

from __future__ import annotations

import errno
import itertools
import os
import re
import signal
import sys
import time

import msgspec

from .options import Limits

__all__ = ("Cgroup",)

_LINUX = sys.platform.startswith("linux")
_counter = itertools.count(1)


class _Mount(msgspec.Struct, frozen=True):
    point: str
    root: str
    version: int
    options: frozenset[str]


def _cgroup_mounts() -> list[_Mount]:
    mounts: list[_Mount] = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            dash = fields.index("-")
            fstype = fields[dash + 1]
            if fstype not in ("cgroup", "cgroup2"):
                continue
            options = frozenset(fields[dash + 3].split(",")) | frozenset(fields[5].split(","))
            point = fields[4].replace("\\040", " ")
            mounts.append(_Mount(point, fields[3], 2 if fstype == "cgroup2" else 1, options))
    return mounts


def _own_cgroups() -> dict[str, str]:
    """Controller (or ``""`` for v2) -> this process's cgroup path in that hierarchy."""
    paths: dict[str, str] = {}
    with open("/proc/self/cgroup") as f:
        for line in f:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            for name in controllers.split(",") if controllers else [""]:
                paths[name] = path
    return paths


def _host_dir(mount: _Mount, path: str) -> str:
    """The directory of this process's cgroup under ``mount``."""
    root = mount.root.rstrip("/")
    if root and path.startswith(root):
        path = path[len(root) :]
    elif root:
        path = "/"
    return os.path.join(mount.point, path.lstrip("/")).rstrip("/")


def _write(path: str, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


def _make_leaf(base: str, leaf: str) -> None:
    """mkdir base/leaf, tolerating another Cgroup.remove() racing on ``base``."""
    for _ in range(5):
        os.makedirs(base, exist_ok=True)
        try:
            os.mkdir(os.path.join(base, leaf))
            return
        except FileNotFoundError:
            continue
    os.mkdir(os.path.join(base, leaf))


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)[:64] or "plugin"


class Cgroup:
    """HOST side: the cgroup(s) of one child, created by the (root) host before the spawn.

    Nested under the host's own cgroup (``<host cgroup>/nyxplug/<name>-<pid>-<n>``), so
    whatever limits the host itself runs under still hold. Pure cgroup v2 (memory and pids
    controllers available) or v1 (separate memory and pids hierarchies; on a hybrid layout
    a v2 group is added too, only for ``cgroup.kill``).
    """

    def __init__(self, dirs: tuple[str, ...], version: int, detail: str) -> None:
        #: The leaf directories, one per hierarchy.
        self.dirs = dirs
        self.version = version
        #: What was limited, for logs and the report.
        self.detail = detail
        #: The cgroup.procs files the child writes its pid to.
        self.procs: tuple[str, ...] = tuple(os.path.join(d, "cgroup.procs") for d in dirs)

    def __repr__(self) -> str:
        return f"Cgroup(v{self.version}, {', '.join(self.dirs)}: {self.detail})"

    @classmethod
    def create(cls, name: str, limits: Limits) -> tuple[Cgroup | None, str]:
        """``(cgroup, "")`` or ``(None, reason)``: why this host cannot give a child a cgroup."""
        if not _LINUX:
            return None, f"not Linux ({sys.platform})"
        if os.geteuid() != 0:
            return None, f"the host is not root (uid {os.geteuid()}) and has no delegated cgroup"
        leaf = f"{_safe_name(name)}-{os.getpid()}-{next(_counter)}"
        try:
            mounts = _cgroup_mounts()
            own = _own_cgroups()
        except (OSError, ValueError) as exc:
            return None, f"cannot read the cgroup layout: {type(exc).__name__}: {exc}"
        v2 = next((m for m in mounts if m.version == 2), None)
        if v2 is not None:
            try:
                with open(os.path.join(v2.point, "cgroup.controllers")) as f:
                    controllers = set(f.read().split())
            except OSError:
                controllers = set()
            if {"memory", "pids"} <= controllers:
                return cls._create_v2(v2, own.get("", "/"), leaf, limits)
        v1: dict[str, _Mount] = {
            c: m for m in mounts if m.version == 1 for c in ("memory", "pids") if c in m.options
        }
        if "memory" in v1 and "pids" in v1:
            return cls._create_v1(v1, v2, own, leaf, limits)
        found = (
            f"cgroup v2 at {v2.point} with controllers {sorted(controllers) or 'none'}"
            if v2 is not None
            else "no cgroup v2"
        )
        return None, (
            f"no memory and pids controllers: {found}, "
            f"v1 hierarchies {sorted(v1) or 'none'} (need memory and pids)"
        )

    @classmethod
    def _create_v2(
        cls, mount: _Mount, own: str, leaf: str, limits: Limits
    ) -> tuple[Cgroup | None, str]:
        host = _host_dir(mount, own)
        base = os.path.join(host, "nyxplug")
        made: list[str] = []
        try:
            with open(os.path.join(host, "cgroup.subtree_control")) as f:
                enabled = set(f.read().split())
            if not {"memory", "pids"} <= enabled:
                try:
                    _write(os.path.join(host, "cgroup.subtree_control"), "+memory +pids")
                except OSError as exc:
                    return None, (
                        f"cannot enable memory and pids below {host}: {exc.strerror} (a v2 "
                        "cgroup with processes cannot delegate them; run the host in its own "
                        "cgroup with a child for itself)"
                    )
            os.makedirs(base, exist_ok=True)
            _write(os.path.join(base, "cgroup.subtree_control"), "+memory +pids")
            _make_leaf(base, leaf)
            path = os.path.join(base, leaf)
            made.append(path)
            parts = []
            if limits.memory is not None:
                _write(os.path.join(path, "memory.max"), str(limits.memory))
                if os.path.exists(os.path.join(path, "memory.swap.max")):
                    _write(os.path.join(path, "memory.swap.max"), "0")
                parts.append(f"memory {limits.memory} (no swap)")
            if limits.pids is not None:
                _write(os.path.join(path, "pids.max"), str(limits.pids))
                parts.append(f"pids {limits.pids}")
        except OSError as exc:
            cls(tuple(made), 2, "").remove()
            return None, f"cannot set up a v2 cgroup under {base}: {type(exc).__name__}: {exc}"
        return cls((path,), 2, f"v2 {', '.join(parts) or 'no limits'}; cgroup.kill"), ""

    @classmethod
    def _create_v1(
        cls,
        v1: dict[str, _Mount],
        v2: _Mount | None,
        own: dict[str, str],
        leaf: str,
        limits: Limits,
    ) -> tuple[Cgroup | None, str]:
        made: list[str] = []
        parts: list[str] = []
        try:
            for controller in ("memory", "pids"):
                base = os.path.join(_host_dir(v1[controller], own.get(controller, "/")), "nyxplug")
                _make_leaf(base, leaf)
                path = os.path.join(base, leaf)
                made.append(path)
                if controller == "memory" and limits.memory is not None:
                    _write(os.path.join(path, "memory.limit_in_bytes"), str(limits.memory))
                    memsw = os.path.join(path, "memory.memsw.limit_in_bytes")
                    swap = ""
                    if os.path.exists(memsw):
                        _write(memsw, str(limits.memory))
                        swap = " (+memsw)"
                    parts.append(f"memory {limits.memory}{swap}")
                if controller == "pids" and limits.pids is not None:
                    _write(os.path.join(path, "pids.max"), str(limits.pids))
                    parts.append(f"pids {limits.pids}")
        except OSError as exc:
            cls(tuple(made), 1, "").remove()
            return None, f"cannot set up v1 cgroups: {type(exc).__name__}: {exc}"
        kill = ""
        if v2 is not None:
            # Hybrid layout: a v2 group without controllers still offers cgroup.kill.
            base = os.path.join(_host_dir(v2, own.get("", "/")), "nyxplug")
            try:
                _make_leaf(base, leaf)
                path = os.path.join(base, leaf)
                if os.path.exists(os.path.join(path, "cgroup.kill")):
                    made.append(path)
                    kill = "; v2 cgroup.kill"
                else:
                    os.rmdir(path)
                    _rmdir_quietly(base)
            except OSError:
                pass
        return cls(tuple(made), 1, f"v1 {', '.join(parts) or 'no limits'}{kill}"), ""

    def oom_kills(self) -> int:
        """How many times the kernel's OOM killer killed a process in this cgroup."""
        for d in self.dirs:
            for name in ("memory.oom_control", "memory.events"):
                try:
                    with open(os.path.join(d, name)) as f:
                        for line in f:
                            key, _, value = line.partition(" ")
                            if key == "oom_kill":
                                return int(value)
                except (OSError, ValueError):
                    continue
        return 0

    def pids_refused(self) -> int:
        """How many forks/threads pids.max refused (``pids.events`` ``max``)."""
        for d in self.dirs:
            try:
                with open(os.path.join(d, "pids.events")) as f:
                    for line in f:
                        key, _, value = line.partition(" ")
                        if key == "max":
                            return int(value)
            except (OSError, ValueError):
                continue
        return 0

    def pids(self) -> set[int]:
        """Every process in the cgroup now."""
        found: set[int] = set()
        for procs in self.procs:
            try:
                with open(procs) as f:
                    found.update(int(x) for x in f.read().split())
            except (OSError, ValueError):
                continue
        return found

    def kill_all(self) -> None:
        """SIGKILL everything in the cgroup (v2 ``cgroup.kill`` when there is one)."""
        for d in self.dirs:
            kill = os.path.join(d, "cgroup.kill")
            if os.path.exists(kill):
                try:
                    _write(kill, "1")
                    return
                except OSError:
                    break
        for _ in range(10):  # a task forked between read and kill is caught next pass
            pids = self.pids()
            if not pids:
                return
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass

    def remove(self) -> None:
        """Remove the cgroup once its processes are gone. Retries briefly; never raises."""
        for d in self.dirs:
            for attempt in range(20):
                try:
                    os.rmdir(d)
                    break
                except FileNotFoundError:
                    break
                except OSError as exc:
                    if exc.errno != errno.EBUSY:
                        break
                    time.sleep(0.005 * (attempt + 1))  # an exiting task leaves a moment later
            _rmdir_quietly(os.path.dirname(d))  # the shared nyxplug/ parent, once empty


def _rmdir_quietly(path: str) -> None:
    try:
        os.rmdir(path)
    except OSError:
        pass
