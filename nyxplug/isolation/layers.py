"""Isolation layers, applied in a child before it sees any plugin byte, each reported.

Order (``LAYER_ORDER``): join the cgroup the host made (joining needs root, so it
comes first) -> drop privileges (when started as root) -> rlimits -> Landlock ->
seccomp (last: it may forbid what the steps before need). A layer this machine
lacks is reported with ``applied=False`` and the reason, never claimed.
"""

from __future__ import annotations

import ctypes
import errno
import itertools
import os
import resource
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec

from .errors import IsolationError

__all__ = (
    "LAYER_ORDER",
    "Cgroup",
    "IsolationReport",
    "Layer",
    "Limits",
    "apply_layers",
    "default_read_paths",
)

LAYER_ORDER = ("cgroup", "privileges", "rlimits", "landlock", "seccomp")


class Limits(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Kernel-enforced limits of an isolated child; None leaves that limit alone."""

    #: RLIMIT_AS, bytes of address space.
    address_space: int | None = 1 << 30
    #: RLIMIT_CPU, seconds of CPU time (SIGXCPU at the limit, SIGKILL a second later).
    cpu_seconds: int | None = None
    #: RLIMIT_NOFILE.
    open_files: int | None = 64
    #: RLIMIT_NPROC (0: no new processes; counts per uid, so it binds only after the drop).
    processes: int | None = 0
    #: The cgroup's memory limit (bytes) and task limit, where the host can make one.
    memory: int | None = 256 << 20
    pids: int | None = 32
    #: Allow inet sockets (otherwise seccomp and Landlock refuse them).
    network: bool = False
    #: Extra read-only paths for Landlock, beyond ``default_read_paths()``.
    read_paths: tuple[str, ...] = ()
    #: The uid/gid a child started as root drops to.
    user: int = 65534


class Layer(msgspec.Struct, frozen=True):
    """One layer: applied or not, and what exactly (or why not)."""

    name: str
    applied: bool
    detail: str


class IsolationReport(msgspec.Struct, frozen=True):
    """The layers a child applied, in ``LAYER_ORDER``."""

    layers: tuple[Layer, ...]

    def layer(self, name: str) -> Layer:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(f"Expected a layer in {LAYER_ORDER}, got {name!r}")

    def applied(self, name: str) -> bool:
        return self.layer(name).applied

    def summary(self) -> str:
        on = [x.name for x in self.layers if x.applied]
        off = [x.name for x in self.layers if not x.applied]
        return f"{', '.join(on) or 'no layer'}; missing: {', '.join(off) or 'none'}"


def default_read_paths() -> tuple[str, ...]:
    """What a child must still read: the interpreter, its libraries, nyxplug, shared libs."""
    paths = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}
    paths.update(p for p in sys.path if p and os.path.isdir(p))
    paths.update(("/usr/lib", "/usr/lib64", "/lib", "/lib64", "/usr/local/lib", "/etc/localtime",
                  "/etc/ld.so.cache", "/dev/urandom", "/dev/null", "/proc/self",
                  "/sys/devices/system/cpu"))  # fmt: skip
    paths.add(str(Path(__file__).resolve().parent.parent.parent))
    return tuple(sorted(p for p in paths if os.path.exists(p)))


# -- the child side ------------------------------------------------------------------


def apply_layers(
    limits: Limits,
    *,
    cgroup_procs: tuple[str, ...] = (),
    cgroup_reason: str = "",
    strict: bool = False,
) -> IsolationReport:
    """Apply every layer to this process, in order; report each. Irreversible."""
    landlock_abi = _landlock_abi()
    seccomp = _import_seccomp()  # now: finding libseccomp needs files Landlock will hide
    steps: tuple[tuple[str, Callable[[], tuple[bool, str]]], ...] = (
        ("cgroup", lambda: _join_cgroup(cgroup_procs, cgroup_reason)),
        ("privileges", lambda: _drop_privileges(limits, keep_reads=landlock_abi > 0)),
        ("rlimits", lambda: _set_rlimits(limits)),
        ("landlock", lambda: _landlock(limits, landlock_abi)),
        ("seccomp", lambda: _seccomp(limits, seccomp)),
    )
    layers = []
    for name, step in steps:
        try:
            applied, detail = step()
        except Exception as exc:
            if strict:
                raise IsolationError(f"isolation layer {name} failed: {exc}") from exc
            applied, detail = False, f"failed: {type(exc).__name__}: {exc}"
        layers.append(Layer(name, applied, detail))
    return IsolationReport(tuple(layers))


def _join_cgroup(procs: tuple[str, ...], reason: str) -> tuple[bool, str]:
    if not procs:
        return False, reason or "no cgroup offered by the host"
    for path in procs:
        with open(path, "w") as f:
            f.write("0")  # "0" is the writing process itself
    return True, "joined " + ", ".join(str(Path(p).parent) for p in procs)


_libc = ctypes.CDLL(None, use_errno=True)
_PR_SET_KEEPCAPS = 8
_PR_SET_NO_NEW_PRIVS = 38
_CAP_DAC_READ_SEARCH = 2


class _CapHeader(ctypes.Structure):
    _fields_ = (("version", ctypes.c_uint32), ("pid", ctypes.c_int))


class _CapData(ctypes.Structure):
    _fields_ = (("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32))  # fmt: skip


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _drop_privileges(limits: Limits, *, keep_reads: bool) -> tuple[bool, str]:
    if os.geteuid() != 0:
        return False, f"not started as root (uid {os.geteuid()}): nothing to drop"
    user = limits.user
    if keep_reads:  # the interpreter may live where only root reads; Landlock confines reads
        _check(_libc.prctl(_PR_SET_KEEPCAPS, 1, 0, 0, 0), "prctl(PR_SET_KEEPCAPS)")
    os.setgroups([])
    os.setresgid(user, user, user)
    os.setresuid(user, user, user)
    kept = "no capability"
    if keep_reads:
        header = _CapHeader(0x20080522, 0)
        bit = 1 << _CAP_DAC_READ_SEARCH
        data = (_CapData * 2)(_CapData(bit, bit, 0), _CapData(0, 0, 0))
        _check(_libc.capset(ctypes.byref(header), data), "capset")
        _libc.prctl(_PR_SET_KEEPCAPS, 0, 0, 0, 0)
        kept = "only CAP_DAC_READ_SEARCH (reads confined by Landlock)"
    if os.getuid() != user or os.geteuid() != user:
        raise OSError(errno.EPERM, "the uid did not change")
    return True, f"uid/gid {user}, no groups, {kept}"


def _set_rlimits(limits: Limits) -> tuple[bool, str]:
    wanted = [
        ("AS", resource.RLIMIT_AS, limits.address_space, 0),
        ("CPU", resource.RLIMIT_CPU, limits.cpu_seconds, 1),
        ("NOFILE", resource.RLIMIT_NOFILE, limits.open_files, 0),
        ("NPROC", resource.RLIMIT_NPROC, limits.processes, 0),
        ("CORE", resource.RLIMIT_CORE, 0, 0),
        ("FSIZE", resource.RLIMIT_FSIZE, 0, 0),
    ]
    done = []
    for name, which, value, grace in wanted:
        if value is None:
            continue
        _soft, hard = resource.getrlimit(which)
        new_hard = value + grace
        if hard != resource.RLIM_INFINITY and new_hard > hard:
            new_hard = hard
            value = min(value, hard)
            name += " (clamped to the hard limit)"
        resource.setrlimit(which, (value, new_hard))
        done.append(f"{name}={value}")
    return True, ", ".join(done)


# Landlock: three syscalls with the same numbers on every architecture.
_SYS_CREATE_RULESET, _SYS_ADD_RULE, _SYS_RESTRICT_SELF = 444, 445, 446
_LANDLOCK_CREATE_RULESET_VERSION = 1
_RULE_PATH_BENEATH = 1
_FS_EXECUTE, _FS_WRITE_FILE, _FS_READ_FILE, _FS_READ_DIR = 1, 2, 4, 8
_FS_RIGHTS_BY_ABI = {1: (1 << 13) - 1, 2: (1 << 14) - 1, 3: (1 << 15) - 1, 4: (1 << 15) - 1,
                     5: (1 << 16) - 1}  # fmt: skip
_NET_BIND_TCP, _NET_CONNECT_TCP = 1, 2
_SCOPE_ABSTRACT_UNIX_SOCKET, _SCOPE_SIGNAL = 1, 2


class _RulesetAttr(ctypes.Structure):
    _fields_ = (("handled_access_fs", ctypes.c_uint64), ("handled_access_net", ctypes.c_uint64),
                ("scoped", ctypes.c_uint64))  # fmt: skip


class _PathBeneath(ctypes.Structure):
    _pack_ = 1
    _fields_ = (("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32))


def _syscall(number: int, *args: object) -> int:
    _libc.syscall.restype = ctypes.c_long
    return int(_libc.syscall(ctypes.c_long(number), *args))


def _landlock_abi() -> int:
    if not sys.platform.startswith("linux"):
        return 0
    abi = _syscall(_SYS_CREATE_RULESET, None, ctypes.c_size_t(0),
                   ctypes.c_uint32(_LANDLOCK_CREATE_RULESET_VERSION))  # fmt: skip
    return abi if abi > 0 else 0


def _landlock(limits: Limits, abi: int) -> tuple[bool, str]:
    if abi <= 0:
        return False, "Landlock is not available in this kernel (or disabled)"
    fs = _FS_RIGHTS_BY_ABI.get(abi, (1 << 16) - 1)
    attr = _RulesetAttr(fs, 0, 0)
    size = 8
    notes = [f"ABI {abi}", "filesystem read-only beneath the allowed paths, no writes"]
    if abi >= 4:
        size = 16
        if not limits.network:
            attr.handled_access_net = _NET_BIND_TCP | _NET_CONNECT_TCP
            notes.append("no TCP bind/connect")
    if abi >= 6:
        size = 24
        attr.scoped = _SCOPE_ABSTRACT_UNIX_SOCKET | _SCOPE_SIGNAL
        notes.append("abstract sockets and signals scoped")
    ruleset = _syscall(_SYS_CREATE_RULESET, ctypes.byref(attr), ctypes.c_size_t(size),
                       ctypes.c_uint32(0))  # fmt: skip
    if ruleset < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"landlock_create_ruleset: {os.strerror(err)}")
    try:
        read = _FS_READ_FILE | _FS_READ_DIR | _FS_EXECUTE
        for path in (*default_read_paths(), *limits.read_paths):
            try:
                fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            except OSError:
                continue
            try:
                rights = read if os.path.isdir(path) else (read & ~_FS_READ_DIR)
                rule = _PathBeneath(rights & fs, fd)
                if _syscall(_SYS_ADD_RULE, ctypes.c_int(ruleset), ctypes.c_int(_RULE_PATH_BENEATH),
                            ctypes.byref(rule), ctypes.c_uint32(0)) != 0:  # fmt: skip
                    err = ctypes.get_errno()
                    raise OSError(err, f"landlock_add_rule({path}): {os.strerror(err)}")
            finally:
                os.close(fd)
        _check(_libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(PR_SET_NO_NEW_PRIVS)")
        if _syscall(_SYS_RESTRICT_SELF, ctypes.c_int(ruleset), ctypes.c_uint32(0)) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"landlock_restrict_self: {os.strerror(err)}")
    finally:
        os.close(ruleset)
    return True, ", ".join(notes)


_DENIED_SYSCALLS = (
    "execve", "execveat", "fork", "vfork", "ptrace", "process_vm_readv", "process_vm_writev",
    "setrlimit", "prlimit64", "unshare", "setns", "mount", "umount2", "pivot_root", "chroot",
    "bpf", "perf_event_open", "userfaultfd", "keyctl", "add_key", "request_key",
    "io_uring_setup", "io_uring_enter", "io_uring_register", "kexec_load", "init_module",
    "finit_module", "delete_module", "setuid", "setgid", "setgroups", "setresuid", "setresgid",
)  # fmt: skip
_CLONE_THREAD = 0x00010000


def _import_seccomp() -> Any:
    try:
        import pyseccomp  # type: ignore[import-untyped]
    except (ImportError, OSError) as exc:  # the package, or the system's libseccomp
        return f"pyseccomp/libseccomp not available: {exc}"
    return pyseccomp


def _seccomp(limits: Limits, seccomp: Any) -> tuple[bool, str]:
    if isinstance(seccomp, str):
        return False, seccomp
    policy = seccomp.SyscallFilter(seccomp.ALLOW)
    deny = seccomp.ERRNO(errno.EPERM)
    unknown = []
    for name in _DENIED_SYSCALLS:
        try:
            policy.add_rule(deny, name)
        except (RuntimeError, ValueError, OSError):
            unknown.append(name)
    # New processes: clone without CLONE_THREAD (threads still work); clone3 says ENOSYS
    # so glibc falls back to clone, where the flags can be checked.
    policy.add_rule(deny, "clone", seccomp.Arg(0, seccomp.MASKED_EQ, _CLONE_THREAD, 0))
    try:
        policy.add_rule(seccomp.ERRNO(errno.ENOSYS), "clone3")
    except (RuntimeError, ValueError, OSError):
        unknown.append("clone3")
    notes = ["exec, fork, ptrace, mount, bpf, io_uring, module and id changes refused"]
    if not limits.network:
        for family in (2, 10, 16, 17):  # AF_INET, AF_INET6, AF_NETLINK, AF_PACKET
            policy.add_rule(deny, "socket", seccomp.Arg(0, seccomp.EQ, family))
        notes.append("no inet, netlink or packet sockets")
    policy.load()
    if unknown:
        notes.append(f"unknown to this libseccomp: {', '.join(unknown)}")
    return True, "; ".join(notes)


# -- the host side -----------------------------------------------------------------

_CGROUP_ROOT = Path("/sys/fs/cgroup")
_COUNTER = itertools.count(1)


class Cgroup:
    """A memory/pids cgroup the host makes for one child (v2, or v1's two hierarchies)."""

    def __init__(self, dirs: tuple[Path, ...], v2: bool) -> None:
        self.dirs = dirs
        self.v2 = v2
        self.procs = tuple(str(d / "cgroup.procs") for d in dirs)

    @classmethod
    def create(cls, name: str, limits: Limits) -> tuple[Cgroup | None, str]:
        """(cgroup, "") or (None, why not): not root, no controllers, read-only."""
        if limits.memory is None and limits.pids is None:
            return None, "no cgroup limits configured"
        if not sys.platform.startswith("linux") or os.geteuid() != 0:
            return None, "cgroups need root on the host (or a delegated subtree)"
        slug = "".join(ch if ch.isalnum() else "_" for ch in name)[:40]
        leaf = f"{slug}-{os.getpid()}-{next(_COUNTER)}"
        try:
            controllers = (_CGROUP_ROOT / "cgroup.controllers").read_text().split()
        except OSError:
            controllers = []
        try:
            if {"memory", "pids"} <= set(controllers):
                return cls._create_v2(leaf, limits), ""
            if (_CGROUP_ROOT / "memory").is_dir() and (_CGROUP_ROOT / "pids").is_dir():
                return cls._create_v1(leaf, limits), ""
        except OSError as exc:
            return None, f"could not make a cgroup: {exc}"
        return None, "no memory and pids cgroup controllers on this machine"

    @classmethod
    def _create_v2(cls, leaf: str, limits: Limits) -> Cgroup:
        parent = _CGROUP_ROOT / "nyxplug"
        parent.mkdir(exist_ok=True)
        (_CGROUP_ROOT / "cgroup.subtree_control").write_text("+memory +pids")
        (parent / "cgroup.subtree_control").write_text("+memory +pids")
        path = parent / leaf
        path.mkdir()
        group = cls((path,), True)
        if limits.memory is not None:
            (path / "memory.max").write_text(str(limits.memory))
            (path / "memory.swap.max").write_text("0") if (
                path / "memory.swap.max"
            ).exists() else None
        if limits.pids is not None:
            (path / "pids.max").write_text(str(limits.pids))
        return group

    @classmethod
    def _create_v1(cls, leaf: str, limits: Limits) -> Cgroup:
        made = []
        try:
            for controller in ("memory", "pids"):
                path = _CGROUP_ROOT / controller / "nyxplug" / leaf
                path.mkdir(parents=True)
                made.append(path)
            memory, pids = made
            if limits.memory is not None:
                (memory / "memory.limit_in_bytes").write_text(str(limits.memory))
                swap = memory / "memory.memsw.limit_in_bytes"
                if swap.exists():
                    swap.write_text(str(limits.memory))
            if limits.pids is not None:
                (pids / "pids.max").write_text(str(limits.pids))
        except OSError:
            cls(tuple(made), False).remove()
            raise
        return cls(tuple(made), False)

    def oom_kills(self) -> int:
        """How often the kernel's OOM killer struck in this cgroup."""
        name = "memory.events" if self.v2 else "memory.oom_control"
        for d in self.dirs:
            try:
                for line in (d / name).read_text().splitlines():
                    key, _, value = line.partition(" ")
                    if key == "oom_kill":
                        return int(value)
            except (OSError, ValueError):
                continue
        return 0

    def kill_all(self) -> None:
        """SIGKILL everything in the cgroup (v2: cgroup.kill)."""
        if self.v2 and (self.dirs[0] / "cgroup.kill").exists():
            (self.dirs[0] / "cgroup.kill").write_text("1")
            return
        for procs in self.procs:
            try:
                pids = Path(procs).read_text().split()
            except OSError:
                continue
            for pid in pids:
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (OSError, ValueError):
                    pass

    def remove(self) -> None:
        """Remove the cgroup once its processes are gone; never raises."""
        for d in self.dirs:
            for _ in range(50):
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    self.kill_all()
                    os.sched_yield()
        self.dirs = ()
