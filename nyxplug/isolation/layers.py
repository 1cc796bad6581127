"""The kernel-enforced layers an isolated plugin's child applies to itself, honestly reported.

The child calls :func:`apply_layers` before it sees a byte of plugin code. Layers run
in :data:`LAYER_ORDER`; each ends in one :class:`Layer` saying whether it took effect
and what it did, or why this machine does not have it. Nothing is claimed that was not
done: a layer that failed where it should have worked is reported ``failed: ...``, and
with ``strict=True`` it raises :class:`IsolationError` instead.

1. ``cgroup``: join the cgroup(s) the host created (``nyxplug.isolation.cgroup``).
2. ``privileges``: as root, drop to ``nobody`` (``Limits.user``) with no supplementary
   groups. The interpreter may live where ``nobody`` cannot read (``/root``), so when
   Landlock will confine reads, exactly one capability is kept: CAP_DAC_READ_SEARCH.
3. ``rlimits``: address space, CPU (SIGXCPU one second before SIGKILL), open files,
   processes, no core files, no file writes.
4. ``landlock``: read-only access beneath :attr:`Limits.read_paths` (plus
   :func:`default_read_paths`), nothing writable, no TCP unless ``Limits.network``,
   abstract Unix sockets and signals scoped to the child (ABI >= 6), no pathname Unix
   socket reached (ABI >= 9).
5. ``seccomp`` (last): an allowlist of socket families (none; AF_INET/AF_INET6 with
   ``Limits.network``) and socketpair() of AF_UNIX streams only, deny exec, new
   processes (threads still work),
   ptrace, limit changes, namespaces, mounts, bpf, io_uring, module loading and going back
   to another uid.

Linux only; elsewhere every layer is reported missing.
"""

from __future__ import annotations

import ctypes
import errno
import importlib
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import msgspec

from .errors import IsolationError
from .options import Limits

__all__ = (
    "LAYER_ORDER",
    "IsolationError",
    "IsolationReport",
    "Layer",
    "Limits",
    "apply_layers",
    "default_read_paths",
)

LAYER_ORDER = ("cgroup", "privileges", "rlimits", "landlock", "seccomp")

_LINUX = sys.platform.startswith("linux")


class Layer(msgspec.Struct, frozen=True):
    """One isolation layer: did it take effect, and what it did or why it is missing."""

    name: str
    applied: bool
    detail: str


class IsolationReport(msgspec.Struct, frozen=True):
    """Every layer a child applied to itself, in the order applied."""

    layers: tuple[Layer, ...]

    def layer(self, name: str) -> Layer:
        """The layer called ``name``; ``KeyError`` if the report has none."""
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(f"Expected a layer in {LAYER_ORDER}, got {name!r}")

    def applied(self, name: str) -> bool:
        """Whether the layer called ``name`` took effect; ``KeyError`` if the report has none."""
        return self.layer(name).applied

    def summary(self) -> str:
        """One line: the applied layers, then the missing ones."""
        applied = [x.name for x in self.layers if x.applied]
        missing = [x.name for x in self.layers if not x.applied]
        return f"{', '.join(applied) or 'none'}; missing: {', '.join(missing) or 'none'}"


class _Unavailable(Exception):
    """This machine (or this process) lacks the layer: reported, never an error."""


# --------------------------------------------------------------------------- read paths


def default_read_paths() -> tuple[str, ...]:
    """What a child needs to read to keep importing and running, and no more.

    The interpreter's prefixes, every directory on ``sys.path``, the nyxplug package,
    the shared libraries, the time zone, ``/dev/urandom``, the child's own ``/proc``
    entry and the CPU list (``os.cpu_count``). Paths inside another listed path are
    dropped; missing ones are kept (Landlock skips and reports them).
    """
    candidates = [sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix]
    candidates += [p for p in sys.path if p and os.path.isabs(p) and os.path.isdir(p)]
    candidates.append(str(Path(__file__).resolve().parent.parent))  # the nyxplug package
    candidates += ["/usr/lib", "/lib", "/lib64", "/usr/lib64", "/etc/ld.so.cache"]
    candidates += ["/etc/localtime", "/dev/urandom", "/dev/null"]
    candidates += ["/proc/self", "/sys/devices/system/cpu"]
    return _dedupe_paths(candidates)


def _dedupe_paths(paths: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """Keep order; drop repeats, ``/`` and paths beneath another kept one."""
    kept: list[str] = []
    for raw in paths:
        path = os.path.normpath(raw)
        if path == "/" or not os.path.isabs(path):
            continue
        if any(path == k or path.startswith(k.rstrip("/") + "/") for k in kept):
            continue
        kept = [k for k in kept if not k.startswith(path.rstrip("/") + "/")]
        kept.append(path)
    return tuple(kept)


# --------------------------------------------------------------------------- ctypes helpers

_libc: ctypes.CDLL | None = None


def _lib() -> ctypes.CDLL:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    return _libc


def _check(result: int, what: str) -> int:
    if result < 0:
        code = ctypes.get_errno()
        raise OSError(code, f"{what}: {os.strerror(code)}")
    return result


def _prctl(option: int, arg2: int = 0, arg3: int = 0, what: str = "prctl") -> int:
    libc = _lib()
    result = libc.prctl(
        ctypes.c_int(option), ctypes.c_ulong(arg2), ctypes.c_ulong(arg3),
        ctypes.c_ulong(0), ctypes.c_ulong(0),
    )  # fmt: skip
    return _check(int(result), what)


def _syscall(number: int, *args: Any) -> int:
    libc = _lib()
    libc.syscall.restype = ctypes.c_long
    return int(libc.syscall(ctypes.c_long(number), *args))


# --------------------------------------------------------------------------- 1. cgroup


def _layer_cgroup(procs: tuple[str, ...], reason: str) -> Layer:
    if not procs:
        reason = reason or "no reason given"
        if reason.startswith("no cgroup offered by the host"):
            raise _Unavailable(reason)
        raise _Unavailable(f"no cgroup offered by the host: {reason}")
    pid = str(os.getpid())
    for path in procs:
        with open(path, "w") as f:
            f.write(pid)
    joined = ", ".join(os.path.dirname(p) for p in procs)
    return Layer("cgroup", True, f"joined {joined}")


# --------------------------------------------------------------------------- 2. privileges

_PR_SET_KEEPCAPS = 8
_PR_CAPBSET_DROP = 24
_PR_SET_NO_NEW_PRIVS = 38
_PR_CAP_AMBIENT = 47
_PR_CAP_AMBIENT_CLEAR_ALL = 4
_CAP_DAC_READ_SEARCH = 2
_LINUX_CAPABILITY_VERSION_3 = 0x20080522


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


def _capset(mask: int) -> None:
    """Effective = permitted = ``mask``, inheritable = none (this thread, which is the process)."""
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    for i in range(2):
        part = (mask >> (32 * i)) & 0xFFFFFFFF
        data[i].effective = part
        data[i].permitted = part
        data[i].inheritable = 0
    _check(int(_lib().capset(ctypes.byref(header), data)), "capset")


def _own_caps() -> tuple[int, int]:
    """(CapEff, CapPrm) of this process, from /proc/self/status."""
    eff = prm = -1
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("CapEff:"):
                eff = int(line.split()[1], 16)
            elif line.startswith("CapPrm:"):
                prm = int(line.split()[1], 16)
    return eff, prm


def _drop_bounding_set(keep: int) -> str:
    """Drop every capability but ``keep`` (a mask) from the bounding set; say what happened."""
    try:
        with open("/proc/sys/kernel/cap_last_cap") as f:
            last = int(f.read())
    except (OSError, ValueError):
        last = 40
    failed = 0
    for cap in range(last + 1):
        if keep & (1 << cap):
            continue
        try:
            _prctl(_PR_CAPBSET_DROP, cap, what="prctl(PR_CAPBSET_DROP)")
        except OSError:
            failed += 1
    if failed:
        return f"bounding set still holds {failed} other cap(s)"
    return "bounding set reduced to it" if keep else "bounding set emptied"


def _layer_privileges(limits: Limits, keep_read_search: bool) -> Layer:
    uid = os.geteuid()
    if uid != 0:
        raise _Unavailable(f"not started as root (uid {uid})")
    target = limits.user
    if target == 0:
        raise _Unavailable("Limits.user is 0 (root): nothing to drop to")
    keep = 1 << _CAP_DAC_READ_SEARCH if keep_read_search else 0
    bounding = _drop_bounding_set(keep)
    _prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL, what="prctl(PR_CAP_AMBIENT_CLEAR_ALL)")
    if keep:
        _prctl(_PR_SET_KEEPCAPS, 1, what="prctl(PR_SET_KEEPCAPS)")
    os.setgroups([])
    os.setresgid(target, target, target)
    os.setresuid(target, target, target)
    if keep:
        _capset(keep)
        _prctl(_PR_SET_KEEPCAPS, 0, what="prctl(PR_SET_KEEPCAPS)")
    # Verify rather than trust: the ids and the capability sets the kernel now shows.
    if os.getresuid() != (target,) * 3 or os.getresgid() != (target,) * 3 or os.getgroups():
        raise RuntimeError(f"ids after the drop: {os.getresuid()} {os.getresgid()}")
    eff, prm = _own_caps()
    if eff != keep or prm != keep:
        raise RuntimeError(f"capabilities after the drop: CapEff={eff:#x} CapPrm={prm:#x}")
    kept = (
        f"kept CAP_DAC_READ_SEARCH only (reads confined by Landlock), {bounding}"
        if keep
        else f"kept no capability, {bounding}"
    )
    return Layer("privileges", True, f"uid/gid {target} (was 0), no supplementary groups, {kept}")


# --------------------------------------------------------------------------- 3. rlimits


#: RLIMIT_NPROC 0 left to seccomp (see apply_layers).
_NPROC_BY_SECCOMP = (
    "NPROC left as is: seccomp refuses new processes (RLIMIT_NPROC 0 would stop threads too)"
)


def _layer_rlimits(limits: Limits, nproc_by_seccomp: bool = False) -> Layer:
    import resource

    infinity = resource.RLIM_INFINITY
    wanted: list[tuple[str, int, int | None, int | None]] = [
        ("AS", resource.RLIMIT_AS, limits.address_space, limits.address_space),
        (
            "CPU",
            resource.RLIMIT_CPU,
            limits.cpu_seconds,
            None if limits.cpu_seconds is None else limits.cpu_seconds + 1,
        ),
        ("NOFILE", resource.RLIMIT_NOFILE, limits.open_files, limits.open_files),
        ("NPROC", resource.RLIMIT_NPROC, limits.processes, limits.processes),
        ("CORE", resource.RLIMIT_CORE, 0, 0),
        ("FSIZE", resource.RLIMIT_FSIZE, 0, 0),
    ]
    parts: list[str] = []
    for label, which, soft, hard in wanted:
        if label == "NPROC" and soft == 0 and nproc_by_seccomp:
            parts.append(_NPROC_BY_SECCOMP)
            continue
        if soft is None or hard is None:
            parts.append(f"{label} unchanged")
            continue
        if soft < 0 or hard < 0:
            raise ValueError(f"Expected a limit >= 0 for {label}, got {soft}")
        _, current_hard = resource.getrlimit(which)
        note = ""
        if current_hard != infinity and hard > current_hard:
            note = f" (clamped from {hard} to the hard limit {current_hard})"
            hard = current_hard
            soft = min(soft, hard)
        resource.setrlimit(which, (soft, hard))
        if resource.getrlimit(which) != (soft, hard):
            raise RuntimeError(f"RLIMIT_{label} reads {resource.getrlimit(which)} after setting")
        shown = f"{soft}" if soft == hard else f"{soft}/{hard}"
        if label == "NPROC":
            note += " (every task of the uid, threads too)"
        parts.append(f"{label} {shown}{note}")
    return Layer("rlimits", True, ", ".join(parts))


# --------------------------------------------------------------------------- 4. landlock

_SYS_LANDLOCK_CREATE_RULESET = 444
_SYS_LANDLOCK_ADD_RULE = 445
_SYS_LANDLOCK_RESTRICT_SELF = 446
_LANDLOCK_CREATE_RULESET_VERSION = 1
_LANDLOCK_RULE_PATH_BENEATH = 1

_FS_EXECUTE = 1 << 0
_FS_WRITE_FILE = 1 << 1
_FS_READ_FILE = 1 << 2
_FS_READ_DIR = 1 << 3
_FS_ABI1 = (1 << 13) - 1  # EXECUTE .. MAKE_SYM
_FS_REFER = 1 << 13  # ABI 2
_FS_TRUNCATE = 1 << 14  # ABI 3
_FS_IOCTL_DEV = 1 << 15  # ABI 5
_FS_RESOLVE_UNIX = 1 << 16  # ABI 9: connect()/sendto() on pathname Unix sockets
_NET_BIND_TCP = 1 << 0  # ABI 4
_NET_CONNECT_TCP = 1 << 1
_SCOPE_ABSTRACT_UNIX_SOCKET = 1 << 0  # ABI 6
_SCOPE_SIGNAL = 1 << 1


class _RulesetAttr(ctypes.Structure):
    _fields_ = [
        ("handled_access_fs", ctypes.c_uint64),
        ("handled_access_net", ctypes.c_uint64),
        ("scoped", ctypes.c_uint64),
    ]


class _PathBeneathAttr(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


def landlock_abi() -> int:
    """The Landlock ABI version of this kernel; raises ``_Unavailable`` saying why there is none."""
    if not _LINUX:
        raise _Unavailable(f"not Linux ({sys.platform})")
    result = _syscall(
        _SYS_LANDLOCK_CREATE_RULESET, ctypes.c_void_p(None), ctypes.c_size_t(0),
        ctypes.c_uint32(_LANDLOCK_CREATE_RULESET_VERSION),
    )  # fmt: skip
    if result < 0:
        code = ctypes.get_errno()
        if code == errno.ENOSYS:
            raise _Unavailable("kernel has no Landlock (ENOSYS)")
        if code == errno.EOPNOTSUPP:
            raise _Unavailable("Landlock is built in but disabled at boot (EOPNOTSUPP)")
        raise OSError(code, f"landlock_create_ruleset(VERSION): {os.strerror(code)}")
    return result


def _fs_rights(abi: int) -> int:
    rights = _FS_ABI1
    if abi >= 2:
        rights |= _FS_REFER
    if abi >= 3:
        rights |= _FS_TRUNCATE
    if abi >= 5:
        rights |= _FS_IOCTL_DEV
    if abi >= 9:
        rights |= _FS_RESOLVE_UNIX  # handled, granted nowhere: no pathname socket is reached
    return rights


def _probe_landlock() -> tuple[int | None, Exception | None]:
    """(ABI, None) or (None, why not: ``_Unavailable``, or the error the probe met)."""
    try:
        return landlock_abi(), None
    except (_Unavailable, OSError) as exc:
        return None, exc


def _layer_landlock(limits: Limits, abi: int | None, problem: Exception | None = None) -> Layer:
    if abi is None:
        raise problem if problem is not None else _Unavailable("Landlock was not probed")
    threads = len(os.listdir("/proc/self/task"))
    if threads > 1:  # landlock_restrict_self() confines the calling thread only
        raise RuntimeError(f"{threads} threads are running; only this one would be confined")
    attr = _RulesetAttr(_fs_rights(abi), 0, 0)
    size = 8
    net = "net: not handled (ABI < 4)"
    if abi >= 4:
        size = 16
        if limits.network:
            net = "net: TCP allowed (Limits.network)"
        else:
            attr.handled_access_net = _NET_BIND_TCP | _NET_CONNECT_TCP
            net = "net: TCP bind/connect denied"
    scope = "no scoping (ABI < 6)"
    if abi >= 6:
        size = 24
        attr.scoped = _SCOPE_ABSTRACT_UNIX_SOCKET | _SCOPE_SIGNAL
        scope = "abstract unix sockets and signals scoped"
    if abi >= 9:
        scope += ", pathname unix sockets unreachable"
    ruleset = _check(
        _syscall(
            _SYS_LANDLOCK_CREATE_RULESET, ctypes.byref(attr), ctypes.c_size_t(size),
            ctypes.c_uint32(0),
        ),
        "landlock_create_ruleset",
    )  # fmt: skip
    allowed: list[str] = []
    skipped: list[str] = []
    try:
        for path in _dedupe_paths(default_read_paths() + tuple(limits.read_paths)):
            try:
                fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            except OSError as exc:
                skipped.append(f"{path} ({errno.errorcode.get(exc.errno or 0, exc.errno)})")
                continue
            try:
                is_dir = _fd_is_dir(fd)
                rights = _FS_READ_FILE | (_FS_READ_DIR if is_dir else 0)
                rule = _PathBeneathAttr(rights, fd)
                _check(
                    _syscall(
                        _SYS_LANDLOCK_ADD_RULE, ctypes.c_int(ruleset),
                        ctypes.c_int(_LANDLOCK_RULE_PATH_BENEATH), ctypes.byref(rule),
                        ctypes.c_uint32(0),
                    ),
                    f"landlock_add_rule({path})",
                )  # fmt: skip
            finally:
                os.close(fd)
            allowed.append(path)
        _prctl(_PR_SET_NO_NEW_PRIVS, 1, what="prctl(PR_SET_NO_NEW_PRIVS)")
        _check(
            _syscall(_SYS_LANDLOCK_RESTRICT_SELF, ctypes.c_int(ruleset), ctypes.c_uint32(0)),
            "landlock_restrict_self",
        )
    finally:
        os.close(ruleset)
    detail = (
        f"ABI {abi}: read-only beneath {len(allowed)} path(s) ({', '.join(allowed)}), "
        f"nothing writable, no exec; {net}; {scope}"
    )
    if skipped:
        detail += f"; skipped missing/unreadable: {', '.join(skipped)}"
    return Layer("landlock", True, detail)


def _fd_is_dir(fd: int) -> bool:
    import stat

    return stat.S_ISDIR(os.fstat(fd).st_mode)


# --------------------------------------------------------------------------- 5. seccomp

#: Denied with EPERM whatever their arguments.
_DENIED = (
    "execve", "execveat", "fork", "vfork", "ptrace", "process_vm_readv", "process_vm_writev",
    "setrlimit", "unshare", "setns", "mount", "umount2", "pivot_root", "chroot",
    "bpf", "perf_event_open", "userfaultfd", "keyctl", "add_key", "request_key",
    "io_uring_setup", "io_uring_enter", "io_uring_register", "kexec_load", "init_module",
    "finit_module", "delete_module", "setuid", "setgid", "setgroups", "setresuid", "setresgid",
    # With CAP_DAC_READ_SEARCH kept, open_by_handle_at would open files by inode handle.
    "open_by_handle_at", "name_to_handle_at",
)  # fmt: skip
_CLONE_THREAD = 0x00010000
_AF_UNIX = 1
#: The only socket() families a child may create, and only with ``Limits.network``: an
#: allowlist (AF_VSOCK, AF_NETLINK, AF_PACKET, AF_ALG, AF_UNIX... are all refused). A
#: child needs no socket() of its own: its channel to the host is inherited.
_NETWORK_FAMILIES = ((2, "AF_INET"), (10, "AF_INET6"))
#: The highest family number any kernel knows is far below this; beyond it: refused.
_FAMILY_CEILING = 64
_SOCK_STREAM = 1
_SOCK_TYPE_MASK = 0xF


def _import_seccomp() -> tuple[ModuleType | None, str]:
    """``pyseccomp`` (which loads the system libseccomp), or why it is not there."""
    if not _LINUX:
        return None, f"not Linux ({sys.platform})"
    try:
        return importlib.import_module("pyseccomp"), ""
    except ImportError as exc:
        return None, f"pyseccomp is not installed ({exc})"
    except (OSError, RuntimeError) as exc:
        return None, f"libseccomp could not be loaded ({type(exc).__name__}: {exc})"


def _layer_seccomp(limits: Limits, seccomp: ModuleType | None, reason: str) -> Layer:
    if seccomp is None:
        raise _Unavailable(reason)
    eperm = seccomp.ERRNO(errno.EPERM)
    native = seccomp.Arch.NATIVE
    filt = seccomp.SyscallFilter(defaction=seccomp.ALLOW)
    filt.set_attr(seccomp.Attr.CTL_TSYNC, 1)  # every thread of the child, not only this one
    unknown: list[str] = []

    def rule(action: int, name: str, *args: Any) -> bool:
        if seccomp.resolve_syscall(native, name) < 0:
            unknown.append(name)
            return False
        filt.add_rule(action, name, *args)
        return True

    denied: list[str] = [name for name in _DENIED if rule(eperm, name)]
    # prlimit64 with a new limit only: glibc's getrlimit() is prlimit64(0, r, NULL, &old).
    if rule(eperm, "prlimit64", seccomp.Arg(2, seccomp.NE, 0)):
        denied.append("prlimit64 setting a limit")
    if rule(eperm, "clone", seccomp.Arg(0, seccomp.MASKED_EQ, _CLONE_THREAD, 0)):
        denied.append("clone without CLONE_THREAD")
    if rule(seccomp.ERRNO(errno.ENOSYS), "clone3"):
        denied.append("clone3 (ENOSYS: glibc falls back to clone)")
    denied.append(_deny_sockets(limits, seccomp, rule, eperm))
    filt.load()
    net = "inet sockets allowed (Limits.network)" if limits.network else "no inet sockets"
    detail = f"default allow, {net}; EPERM: {', '.join(denied)}; other arch: kill"
    if unknown:
        skipped = ", ".join(sorted(set(unknown)))
        detail += f"; not on this architecture or unknown to this libseccomp, skipped: {skipped}"
    return Layer("seccomp", True, detail)


def _deny_sockets(limits: Limits, seccomp: ModuleType, rule: Any, eperm: int) -> str:
    """socket(): an allowlist of families (none, or inet with ``Limits.network``).

    socketpair(): AF_UNIX SOCK_STREAM only: the event loop's wake-up pair. A connected
    stream pair reaches nothing but itself; a datagram pair could ``sendto`` a path
    (``/dev/log``), so it is refused. Rules are ORed, so "not in the allowlist" is
    written as every other value: below, between and above the allowed ones."""
    arg, eq, gt = seccomp.Arg, seccomp.EQ, seccomp.GT
    allowed = {d for d, _ in _NETWORK_FAMILIES} if limits.network else set()
    if allowed:
        for family in range(_FAMILY_CEILING + 1):
            if family not in allowed:
                rule(eperm, "socket", arg(0, eq, family))
        rule(eperm, "socket", arg(0, gt, _FAMILY_CEILING))
        names = "/".join(name for _, name in _NETWORK_FAMILIES)
        sockets = f"socket() of any family but {names}"
    else:
        rule(eperm, "socket")
        sockets = "socket() of any family (AF_UNIX included)"
    rule(eperm, "socketpair", arg(0, seccomp.NE, _AF_UNIX))
    for kind in range(_SOCK_TYPE_MASK + 1):
        if kind != _SOCK_STREAM:
            rule(eperm, "socketpair", arg(1, seccomp.MASKED_EQ, _SOCK_TYPE_MASK, kind))
    return f"{sockets}, socketpair() but AF_UNIX SOCK_STREAM"


# --------------------------------------------------------------------------- apply_layers


def apply_layers(
    limits: Limits,
    *,
    cgroup_procs: tuple[str, ...] = (),
    cgroup_reason: str = "",
    strict: bool = False,
) -> IsolationReport:
    """Isolate THIS process (the child), layer by layer in :data:`LAYER_ORDER`.

    ``cgroup_procs`` are the ``cgroup.procs`` files of the cgroup the host created for
    this child (:attr:`Cgroup.procs`); ``cgroup_reason`` says why there is none. A layer
    this machine lacks is reported with ``applied=False`` and the reason. A layer that
    fails is reported ``failed: <type>: <message>``; with ``strict=True`` that raises
    :class:`IsolationError` at once instead (the process is then partly isolated and
    should exit).
    """
    if not _LINUX:
        why = f"not Linux ({sys.platform})"
        return IsolationReport(tuple(Layer(name, False, why) for name in LAYER_ORDER))
    layers: list[Layer] = []

    def run(name: str, fn: Any, *args: Any) -> Layer:
        try:
            layer: Layer = fn(*args)
        except _Unavailable as exc:
            layer = Layer(name, False, str(exc))
        except Exception as exc:
            layer = Layer(name, False, f"failed: {type(exc).__name__}: {exc}")
            layers.append(layer)
            if strict:
                error = IsolationError(
                    f"Expected isolation layer `{name}` to apply, got {layer.detail} - "
                    f"in child pid {os.getpid()}"
                )
                error.add_note(f"layers so far: {IsolationReport(tuple(layers)).summary()}")
                raise error from exc
            return layer
        layers.append(layer)
        return layer

    run("cgroup", _layer_cgroup, tuple(cgroup_procs), cgroup_reason)
    # Probed before the privilege drop, which depends on them: Landlock decides whether a
    # capability is kept; pyseccomp must be imported while the stdlib is still readable.
    abi, abi_problem = _probe_landlock()
    seccomp, seccomp_reason = _import_seccomp()

    privileges = run("privileges", _layer_privileges, limits, abi is not None)
    kept_cap = privileges.applied and abi is not None
    # RLIMIT_NPROC counts every task of the uid, threads included: 0 would stop the
    # child's threads (asyncio's executor, libuv's pool) as well as its processes. With
    # seccomp, processes are refused there and NPROC is left alone; without, 0 is set.
    nproc_by_seccomp = limits.processes == 0 and seccomp is not None
    rlimits = run("rlimits", _layer_rlimits, limits, nproc_by_seccomp)
    landlock = run("landlock", _layer_landlock, limits, abi, abi_problem)
    if kept_cap and not landlock.applied:
        # The capability was kept for Landlock to confine; without it, give it up.
        try:
            _capset(0)
            dropped = "CAP_DAC_READ_SEARCH dropped again"
        except OSError as exc:
            dropped = f"CAP_DAC_READ_SEARCH could not be dropped: {exc}"
        layers[-1] = Layer("landlock", False, f"{landlock.detail}; {dropped}")
    seccomp_layer = run("seccomp", _layer_seccomp, limits, seccomp, seccomp_reason)
    if rlimits.applied and nproc_by_seccomp and not seccomp_layer.applied:
        # seccomp did not take: keep the promise of "no new processes" with NPROC 0.
        detail = rlimits.detail.replace(_NPROC_BY_SECCOMP, "NPROC 0 (threads too: no seccomp)")
        try:
            import resource

            resource.setrlimit(resource.RLIMIT_NPROC, (0, 0))
            layers[2] = Layer("rlimits", True, detail)
        except (OSError, ValueError) as exc:
            layers[2] = Layer("rlimits", False, f"failed: {type(exc).__name__}: {exc}")
            if strict:
                raise IsolationError(
                    f"Expected isolation layer `rlimits` to apply, got {layers[2].detail} - "
                    f"in child pid {os.getpid()}"
                ) from exc
    return IsolationReport(tuple(layers))
