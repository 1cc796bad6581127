"""The isolation layers, proven on real child processes: what a layer claims must hold.

Every child is ``python -I -B -c CODE``: it applies layers to itself, prints its report
(JSON, first line), tries to escape and prints what happened (JSON, second line). A
layer this machine lacks makes its test skip with the reason the child gave; a layer
the child *claims* while the escape still works fails the test. Mechanism tests apply a
single layer (the private ``_layer_*`` helpers) so that another layer cannot be what
stopped the escape, e.g. Landlock refusing root, or pids.max refusing a fork.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from nyxplug._errors import NyxplugError
from nyxplug.isolation import IsolationError
from nyxplug.isolation.cgroup import Cgroup
from nyxplug.isolation.layers import (
    LAYER_ORDER,
    IsolationReport,
    Layer,
    Limits,
)

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parent.parent
IS_ROOT = os.geteuid() == 0
LINUX = sys.platform.startswith("linux")
NOBODY = 65534

#: Imported before any layer: after the privilege drop (no capability) nothing under
#: /root can be read, and after Landlock nothing outside the read paths.
PRELUDE = """
import errno, json, os, resource, socket, subprocess, sys, threading
try:
    import nyxplug
except ImportError:
    sys.path.insert(0, __ROOT__)
import msgspec
from nyxplug.isolation import layers
try:
    import pyseccomp
except (ImportError, OSError, RuntimeError):
    pass
P = json.loads(sys.argv[1])
LIMITS = msgspec.convert(P.get("limits", {}), layers.Limits)
RESULTS = {}

def attempt(name, fn):
    try:
        value = fn()
    except BaseException as exc:
        RESULTS[name] = {"ok": False, "error": type(exc).__name__,
                         "errno": getattr(exc, "errno", None), "text": str(exc)[:300]}
    else:
        RESULTS[name] = {"ok": True, "value": value}

def report(r):
    sys.stdout.write(msgspec.json.encode(r).decode() + "\\n")
    sys.stdout.flush()

def done():
    sys.stdout.write(json.dumps(RESULTS, default=repr) + "\\n")
    sys.stdout.flush()

def fork_and_reap():
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    return pid

def thread_runs():
    seen = []
    t = threading.Thread(target=seen.append, args=(1,))
    t.start()
    t.join()
    return seen

def many_fds(n=100):
    fds = []
    try:
        for _ in range(n):
            fds.append(os.dup(1))
    finally:
        for fd in fds:
            os.close(fd)
    return len(fds)

def rlimits():
    names = ("AS", "CPU", "NOFILE", "NPROC", "CORE", "FSIZE")
    return {n: resource.getrlimit(getattr(resource, "RLIMIT_" + n)) for n in names}

def write_into(directory):
    with open(os.path.join(directory, "escaped-%d" % os.getpid()), "w") as f:
        f.write("x")

def connect(port):
    socket.create_connection(("127.0.0.1", port), timeout=5).close()
"""

#: The escapes tried after ``apply_layers`` (execv last: if it worked, nothing follows).
ESCAPES = """
attempt("ids", lambda: (os.getresuid(), os.getresgid(), os.getgroups()))
attempt("caps", lambda: [x.split()[1] for x in open("/proc/self/status") if x.startswith("CapEff")])
attempt("rlimits", rlimits)
attempt("alloc_2g", lambda: len(bytearray(2 << 30)))
attempt("fds_100", many_fds)
attempt("read_passwd", lambda: open("/etc/passwd").read(10))
attempt("write_tmp", lambda: write_into(P["tmp"]))
attempt("tcp_connect", lambda: connect(P["port"]))
attempt("socket_inet", lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM).close())
attempt("socket_inet6", lambda: socket.socket(socket.AF_INET6, socket.SOCK_STREAM).close())
attempt("socket_unix", lambda: socket.socket(socket.AF_UNIX, socket.SOCK_STREAM).close())
attempt("fork", fork_and_reap)
attempt("subprocess", lambda: subprocess.run(["/bin/true"]).returncode)
attempt("thread", thread_runs)
attempt("late_import", lambda: __import__("decimal").Decimal("1.5"))
attempt("setuid_root", lambda: os.setuid(0))
attempt("raise_nofile", lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (4096, 4096)))
attempt("execv", lambda: os.execv("/bin/true", ["/bin/true"]))
done()
"""


class Child(msgspec.Struct):
    returncode: int
    report: IsolationReport | None
    results: dict[str, Any]
    stdout: str
    stderr: str

    def explain(self) -> str:
        return f"rc={self.returncode}\nstdout:\n{self.stdout}\nstderr:\n{self.stderr[-3000:]}"

    def result(self, name: str) -> dict[str, Any]:
        assert name in self.results, f"no result for {name!r}\n{self.explain()}"
        value: dict[str, Any] = self.results[name]
        return value


def run_child(body: str, **params: Any) -> Child:
    """Run PRELUDE + ``body`` in ``python -I -B -c``; parse its report and results."""
    code = PRELUDE.replace("__ROOT__", repr(str(ROOT))) + body
    params.setdefault("limits", {})
    done = subprocess.run(
        [sys.executable, "-I", "-B", "-c", code, json.dumps(params)],
        capture_output=True, timeout=30, check=False, text=True,
    )  # fmt: skip
    lines = done.stdout.splitlines()
    report = None
    results: dict[str, Any] = {}
    if lines:
        report = msgspec.json.decode(lines[0], type=IsolationReport)
    if len(lines) > 1:
        results = json.loads(lines[1])
    return Child(done.returncode, report, results, done.stdout, done.stderr)


def require(child: Child, name: str) -> Layer:
    """The layer if applied; skip if this machine lacks it; fail if it failed."""
    assert child.report is not None, child.explain()
    layer = child.report.layer(name)
    assert not layer.detail.startswith("failed:"), f"{name} failed: {layer.detail}"
    if not layer.applied:
        pytest.skip(f"{name} not available here: {layer.detail}")
    return layer


def denied(child: Child, name: str, *errnos: int) -> dict[str, Any]:
    """The escape ``name`` must have failed (with one of ``errnos`` when given)."""
    got = child.result(name)
    assert not got["ok"], f"escape {name!r} worked: {got}\n{child.explain()}"
    if errnos:
        assert got["errno"] in errnos, f"escape {name!r}: {got}"
    return got


def worked(child: Child, name: str) -> dict[str, Any]:
    got = child.result(name)
    assert got["ok"], f"{name!r} should work: {got}\n{child.explain()}"
    return got


@pytest.fixture(scope="module")
def listener() -> Iterator[int]:
    """A TCP listener on loopback the children try to reach."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.bind(("127.0.0.1", 0))
        server.listen(16)
        yield server.getsockname()[1]


@pytest.fixture(scope="module")
def open_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A directory anyone may write to: only Landlock can stop a write into it."""
    path = tmp_path_factory.mktemp("layers-open")
    path.chmod(0o777)
    return str(path)


def make_cgroup(name: str, limits: Limits) -> Cgroup:
    cgroup, reason = Cgroup.create(name, limits)
    if cgroup is None:
        pytest.skip(f"cgroup not available here: {reason}")
    return cgroup


@pytest.fixture(scope="module")
def full(listener: int, open_dir: str) -> Iterator[Child]:
    """One child with every layer, as the host starts it (root: with a cgroup)."""
    limits = Limits(address_space=512 << 20, open_files=16, cpu_seconds=30)  # processes=0
    cgroup, reason = Cgroup.create("layers-full", limits)
    try:
        child = run_child(
            "r = layers.apply_layers(LIMITS, cgroup_procs=tuple(P['procs']), "
            "cgroup_reason=P['reason'])\nreport(r)\n" + ESCAPES,
            limits=msgspec.to_builtins(limits), tmp=open_dir, port=listener,
            procs=list(cgroup.procs) if cgroup else [], reason=reason,
        )  # fmt: skip
    finally:
        if cgroup is not None:
            cgroup.remove()
    assert child.returncode == 0, child.explain()
    print("full report:", child.stdout.splitlines()[0])
    yield child


# --------------------------------------------------------------------------- records


def test_limits_defaults_and_round_trip() -> None:
    limits = Limits()
    assert limits.address_space == 1 << 30
    assert limits.cpu_seconds is None
    assert limits.open_files == 64
    assert limits.processes == 0
    assert limits.memory == 256 << 20
    assert limits.pids == 32
    assert limits.network is False
    assert limits.read_paths == ()
    assert limits.user == NOBODY
    assert msgspec.json.decode(msgspec.json.encode(limits), type=Limits) == limits
    with pytest.raises(TypeError):
        Limits(1 << 20)  # type: ignore[misc]
    with pytest.raises(AttributeError):
        limits.memory = 1  # type: ignore[misc]


def test_report_lookup_and_summary() -> None:
    report = IsolationReport(
        tuple(Layer(name, name != "landlock", f"{name} detail") for name in LAYER_ORDER)
    )
    assert report.applied("cgroup") is True
    assert report.applied("landlock") is False
    assert report.layer("seccomp") == Layer("seccomp", True, "seccomp detail")
    assert report.summary() == "cgroup, privileges, rlimits, seccomp; missing: landlock"
    with pytest.raises(KeyError, match=r"^\"Expected a layer in .*, got 'namespaces'\"$"):
        report.applied("namespaces")
    with pytest.raises(KeyError):
        report.layer("")
    everything = IsolationReport(tuple(Layer(n, True, "") for n in LAYER_ORDER))
    assert everything.summary() == "cgroup, privileges, rlimits, landlock, seccomp; missing: none"
    assert IsolationReport(()).summary() == "none; missing: none"
    assert msgspec.json.decode(msgspec.json.encode(report), type=IsolationReport) == report


def test_isolation_error_is_a_nyxplug_error() -> None:
    assert issubclass(IsolationError, NyxplugError)


def test_default_read_paths_are_small_absolute_and_cover_the_interpreter() -> None:
    child = run_child(
        "report(layers.IsolationReport(()))\n"
        "RESULTS['paths'] = layers.default_read_paths()\n"
        "RESULTS['need'] = [os.path.dirname(os.__file__), os.path.dirname(msgspec.__file__),"
        " os.path.dirname(layers.__file__)]\ndone()\n"
    )
    assert child.returncode == 0, child.explain()
    paths = child.results["paths"]
    assert len(paths) == len(set(paths))
    assert "/" not in paths
    assert all(os.path.isabs(p) for p in paths)
    for a in paths:  # nothing listed twice through a parent
        assert not any(b != a and a.startswith(b.rstrip("/") + "/") for b in paths), a

    def covered(target: str) -> bool:
        return any(target == p or target.startswith(p + "/") for p in paths)

    for need in child.results["need"]:  # the stdlib, site-packages, nyxplug
        assert covered(os.path.realpath(need)) or covered(need), (need, paths)
    assert not covered("/etc/passwd")
    assert not covered("/tmp")
    if str(ROOT) not in paths:  # only when nyxplug is imported from an installed checkout
        assert not covered(str(ROOT / "tests"))


# --------------------------------------------------------------------------- all layers


def test_the_report_names_every_layer_in_order(full: Child) -> None:
    assert full.report is not None
    assert tuple(x.name for x in full.report.layers) == LAYER_ORDER
    for layer in full.report.layers:
        assert layer.detail, layer
        assert not layer.detail.startswith("failed:"), layer


def test_privileges_are_dropped_for_good(full: Child) -> None:
    layer = require(full, "privileges")
    assert worked(full, "ids")["value"] == [[NOBODY] * 3, [NOBODY] * 3, []]
    caps = int(worked(full, "caps")["value"][0], 16)
    if full.report is not None and full.report.applied("landlock"):
        assert caps == 1 << 2 and "CAP_DAC_READ_SEARCH" in layer.detail
    else:
        assert caps == 0 and "no capability" in layer.detail
    denied(full, "setuid_root")


def test_rlimits_hold(full: Child) -> None:
    layer = require(full, "rlimits")
    limits = {k: tuple(v) for k, v in worked(full, "rlimits")["value"].items()}
    assert limits["AS"] == (512 << 20, 512 << 20)
    assert limits["CPU"] == (30, 31)
    assert limits["NOFILE"] == (16, 16)
    assert limits["CORE"] == (0, 0)
    assert limits["FSIZE"] == (0, 0)
    assert full.report is not None
    if full.report.applied("seccomp"):  # it refuses processes; NPROC 0 would stop threads
        assert "NPROC left as is: seccomp refuses new processes" in layer.detail
        worked(full, "thread")
    else:
        assert "NPROC 0" in layer.detail and limits["NPROC"] == (0, 0)
    assert denied(full, "alloc_2g")["error"] == "MemoryError"
    denied(full, "fds_100", 24)  # EMFILE
    assert denied(full, "raise_nofile")["error"] == "ValueError"  # EPERM, as Python says it


def test_landlock_confines_files_and_tcp(full: Child) -> None:
    layer = require(full, "landlock")
    assert "net: TCP bind/connect denied" in layer.detail
    assert denied(full, "read_passwd")["error"] == "PermissionError"
    assert denied(full, "write_tmp")["error"] == "PermissionError"
    denied(full, "tcp_connect")
    worked(full, "late_import")  # the read paths are enough to keep importing


def test_seccomp_denies_sockets_processes_and_exec_but_not_threads(full: Child) -> None:
    require(full, "seccomp")
    got = denied(full, "socket_inet", 1)  # EPERM
    assert got["error"] == "PermissionError"
    denied(full, "socket_inet6", 1)
    denied(full, "socket_unix", 1)  # item 11: no new Unix sockets (the channel is inherited)
    assert denied(full, "fork", 1)["error"] == "PermissionError"
    denied(full, "subprocess")
    denied(full, "execv")
    assert worked(full, "thread")["value"] == [1]


def test_the_cgroup_is_joined(full: Child) -> None:
    layer = require(full, "cgroup")
    assert layer.detail.startswith("joined /sys/fs/cgroup/")


def test_network_allowed_opens_tcp_again(listener: int, open_dir: str) -> None:
    child = run_child(
        "report(layers.apply_layers(LIMITS))\n"
        "attempt('tcp_connect', lambda: connect(P['port']))\n"
        "attempt('fork', fork_and_reap)\ndone()\n",
        limits={"network": True, "processes": None}, port=listener, tmp=open_dir,
    )  # fmt: skip
    assert child.report is not None, child.explain()
    if not (child.report.applied("seccomp") or child.report.applied("landlock")):
        pytest.skip(f"neither seccomp nor landlock here: {child.report.summary()}")
    worked(child, "tcp_connect")
    if child.report.applied("seccomp"):
        denied(child, "fork")
        assert "inet sockets allowed" in child.report.layer("seccomp").detail
    if child.report.applied("landlock"):
        assert "net: TCP allowed" in child.report.layer("landlock").detail


# --------------------------------------------------------------------------- one layer at a time


def test_landlock_alone_stops_even_root(listener: int, open_dir: str) -> None:
    """As root, with no other layer: only Landlock can refuse these."""
    child = run_child(
        "import nyxplug.isolation.layers as L\n"
        "report(layers.IsolationReport((L._layer_landlock(LIMITS, L.landlock_abi(), ''),)))\n"
        "attempt('read_passwd', lambda: open('/etc/passwd').read(10))\n"
        "attempt('listdir_etc', lambda: os.listdir('/etc'))\n"
        "attempt('write_tmp', lambda: write_into(P['tmp']))\n"
        "attempt('mkdir_tmp', lambda: os.mkdir(os.path.join(P['tmp'], 'd%d' % os.getpid())))\n"
        "attempt('tcp_connect', lambda: connect(P['port']))\n"
        "attempt('tcp_bind', lambda: socket.create_server(('127.0.0.1', 0)).close())\n"
        "attempt('late_import', lambda: __import__('decimal').Decimal('1.5'))\n"
        "attempt('read_self', lambda: open('/proc/self/status').read(10))\n"
        "attempt('execv', lambda: os.execv('/bin/true', ['/bin/true']))\ndone()\n",
        port=listener, tmp=open_dir,
    )  # fmt: skip
    if child.report is None and "_Unavailable" in child.stderr:
        pytest.skip(f"landlock not available here: {child.stderr.strip().splitlines()[-1]}")
    assert child.returncode == 0, child.explain()
    layer = require(child, "landlock")
    for name in ("read_passwd", "listdir_etc", "write_tmp", "mkdir_tmp", "execv"):
        denied(child, name, 13)  # EACCES: Landlock, not DAC (this is root)
    if "net: TCP bind/connect denied" in layer.detail:
        denied(child, "tcp_connect", 13)
        denied(child, "tcp_bind", 13)
    worked(child, "late_import")
    worked(child, "read_self")
    assert not any(Path(open_dir).iterdir()), "Landlock let a write through"


def test_seccomp_alone_stops_even_root() -> None:
    child = run_child(
        "import nyxplug.isolation.layers as L\n"
        "report(layers.IsolationReport((L._layer_seccomp(LIMITS, *L._import_seccomp()),)))\n"
        "attempt('socket_inet', lambda: socket.socket(socket.AF_INET).close())\n"
        "attempt('socket_netlink', lambda: socket.socket(socket.AF_NETLINK, socket.SOCK_RAW)"
        ".close())\n"
        "attempt('socket_unix', lambda: socket.socket(socket.AF_UNIX).close())\n"
        "attempt('fork', fork_and_reap)\n"
        "attempt('thread', thread_runs)\n"
        "attempt('setuid_root', lambda: os.setuid(0))\n"
        "attempt('setgroups', lambda: os.setgroups([]))\n"
        "attempt('raise_nofile', lambda: resource.setrlimit(resource.RLIMIT_NOFILE, "
        "resource.getrlimit(resource.RLIMIT_NOFILE)))\n"
        "attempt('chroot', lambda: os.chroot('/'))\n"
        "attempt('read_nofile', lambda: resource.getrlimit(resource.RLIMIT_NOFILE))\n"
        "attempt('subprocess', lambda: subprocess.run(['/bin/true']).returncode)\n"
        "attempt('execv', lambda: os.execv('/bin/true', ['/bin/true']))\ndone()\n",
    )  # fmt: skip
    if child.report is None and "_Unavailable" in child.stderr:
        pytest.skip(f"seccomp not available here: {child.stderr.strip().splitlines()[-1]}")
    assert child.returncode == 0, child.explain()
    require(child, "seccomp")
    for name in ("socket_inet", "socket_netlink", "fork", "setuid_root", "setgroups", "chroot",
                 "execv"):  # fmt: skip
        denied(child, name, 1)  # EPERM, even for root
    # Setting the current limit again is allowed to anyone; Python reports EPERM so:
    assert denied(child, "raise_nofile")["text"] == "not allowed to raise maximum limit"
    worked(child, "read_nofile")  # getrlimit is prlimit64 without a new limit: allowed
    denied(child, "subprocess")
    denied(child, "socket_unix", 1)
    assert worked(child, "thread")["value"] == [1]


#: socket() tries, by family: none may be created without ``Limits.network``.
FAMILY_PROBES = """
import nyxplug.isolation.layers as L
report(layers.IsolationReport((L._layer_seccomp(LIMITS, *L._import_seccomp()),)))
FAMILIES = {"AF_UNIX": (1, 1), "AF_UNIX_DGRAM": (1, 2), "AF_INET": (2, 1), "AF_INET6": (10, 1),
            "AF_NETLINK": (16, 3), "AF_PACKET": (17, 3), "AF_ALG": (38, 5), "AF_VSOCK": (40, 1),
            "AF_BLUETOOTH": (31, 1), "AF_XDP": (44, 3), "AF_42": (42, 1), "AF_BEYOND": (1000, 1)}
for name, (family, kind) in FAMILIES.items():
    attempt("socket_" + name, lambda: socket.socket(family, kind).close())
# the raw syscall, with high bits set above the int the kernel reads (still AF_INET)
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
def raw_socket(family):
    fd = libc.syscall(ctypes.c_long(41), ctypes.c_long(family), ctypes.c_long(1), ctypes.c_long(0))
    if fd < 0:
        raise OSError(ctypes.get_errno(), "socket")
    os.close(fd)
if os.uname().machine == "x86_64":  # 41 is socket() there
    attempt("raw_socket_high_bits", lambda: raw_socket((1 << 32) | 2))
attempt("socketpair_stream", lambda: [s.close() for s in socket.socketpair()])
attempt("socketpair_dgram", lambda: socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM))
attempt("socketpair_seqpacket", lambda: socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET))
done()
"""


@pytest.mark.parametrize("network", [False, True], ids=["no-network", "network"])
def test_seccomp_allows_only_the_socket_families_a_child_needs(network: bool) -> None:
    """Items 11/12: an allowlist, so AF_VSOCK, AF_ALG, AF_UNIX... are refused, not listed."""
    child = run_child(FAMILY_PROBES, limits={"network": network})
    if child.report is None and "_Unavailable" in child.stderr:
        pytest.skip(f"seccomp not available here: {child.stderr.strip().splitlines()[-1]}")
    assert child.returncode == 0, child.explain()
    require(child, "seccomp")
    allowed = {"socket_AF_INET", "socket_AF_INET6"} if network else set()
    for name in ("AF_UNIX", "AF_UNIX_DGRAM", "AF_INET", "AF_INET6", "AF_NETLINK", "AF_PACKET",
                 "AF_ALG", "AF_VSOCK", "AF_BLUETOOTH", "AF_XDP", "AF_42", "AF_BEYOND"):  # fmt: skip
        if "socket_" + name in allowed:
            worked(child, "socket_" + name)
        else:
            denied(child, "socket_" + name, 1)  # EPERM from seccomp, not EAFNOSUPPORT
    if "raw_socket_high_bits" in child.results:
        denied(child, "raw_socket_high_bits", 1)
    worked(child, "socketpair_stream")  # the event loop's wake-up pair
    denied(child, "socketpair_dgram", 1)  # could sendto("/dev/log")
    denied(child, "socketpair_seqpacket", 1)


@pytest.mark.skipif(not IS_ROOT, reason="dropping to nobody needs root")
def test_without_seccomp_nproc_zero_keeps_no_new_processes() -> None:
    """No pyseccomp: RLIMIT_NPROC 0 refuses processes (and, per uid, threads too)."""
    child = run_child(
        "sys.modules['pyseccomp'] = None  # as on a machine without it\n"
        "report(layers.apply_layers(LIMITS))\n"
        "attempt('fork', fork_and_reap)\n"
        "attempt('thread', thread_runs)\n"
        "attempt('rlimits', rlimits)\ndone()\n",
    )
    assert child.returncode == 0, child.explain()
    assert child.report is not None
    seccomp = child.report.layer("seccomp")
    assert not seccomp.applied and seccomp.detail.startswith("pyseccomp is not installed")
    require(child, "privileges")
    assert "NPROC 0 (every task of the uid, threads too)" in require(child, "rlimits").detail
    assert worked(child, "rlimits")["value"]["NPROC"] == [0, 0]
    denied(child, "fork", 11)  # EAGAIN
    assert denied(child, "thread")["error"] == "RuntimeError"


# --------------------------------------------------------------------------- not root


@pytest.mark.skipif(not IS_ROOT, reason="needs root to become someone else first")
def test_a_child_that_is_not_root_says_so_and_still_isolates(open_dir: str) -> None:
    child = run_child(
        "from nyxplug.isolation.cgroup import Cgroup\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (20, 20))\n"
        "os.setgroups([]); os.setresgid(65534, 65534, 65534); os.setresuid(65534, 65534, 65534)\n"
        "attempt('cgroup_create', lambda: Cgroup.create('x', LIMITS))\n"
        "report(layers.apply_layers(LIMITS, cgroup_reason='the host is not root'))\n"
        "attempt('rlimits', rlimits)\n"
        "attempt('read_passwd', lambda: open('/etc/passwd').read(10))\n"
        "attempt('write_tmp', lambda: write_into(P['tmp']))\n"
        "attempt('socket_inet', lambda: socket.socket(socket.AF_INET).close())\n"
        "attempt('fork', fork_and_reap)\ndone()\n",
        limits={"open_files": 64, "processes": None}, tmp=open_dir,
    )  # fmt: skip
    assert child.returncode == 0, child.explain()
    assert child.report is not None
    assert child.report.layer("privileges") == Layer(
        "privileges", False, f"not started as root (uid {NOBODY})"
    )
    assert child.report.layer("cgroup") == Layer(
        "cgroup", False, "no cgroup offered by the host: the host is not root"
    )
    none, reason = worked(child, "cgroup_create")["value"]
    assert none is None and reason.startswith(f"the host is not root (uid {NOBODY})")
    layer = require(child, "rlimits")
    assert "NOFILE 20 (clamped from 64 to the hard limit 20)" in layer.detail
    assert worked(child, "rlimits")["value"]["NOFILE"] == [20, 20]
    if child.report.applied("landlock"):
        denied(child, "read_passwd", 13)  # world-readable: only Landlock refuses it
        denied(child, "write_tmp", 13)  # world-writable: ditto
    if child.report.applied("seccomp"):
        denied(child, "socket_inet", 1)
        denied(child, "fork", 1)


# --------------------------------------------------------------------------- failures


def test_a_failing_layer_is_reported_and_strict_raises(tmp_path: Path) -> None:
    missing = str(tmp_path / "gone" / "cgroup.procs")
    child = run_child(
        "try:\n"
        "    layers.apply_layers(LIMITS, cgroup_procs=(P['missing'],), strict=True)\n"
        "except layers.IsolationError as exc:\n"
        "    STRICT = [type(exc).__name__, str(exc), getattr(exc, '__notes__', [])]\n"
        "r = layers.apply_layers(LIMITS, cgroup_procs=(P['missing'],))\n"
        "report(r)\n"
        "RESULTS['strict'] = STRICT\ndone()\n",
        missing=missing, limits={"processes": None},
    )  # fmt: skip
    assert child.returncode == 0, child.explain()
    assert child.report is not None
    cgroup = child.report.layer("cgroup")
    assert not cgroup.applied
    assert cgroup.detail.startswith("failed: FileNotFoundError: ")
    assert missing in cgroup.detail
    assert tuple(x.name for x in child.report.layers) == LAYER_ORDER  # the others still ran
    kind, text, notes = child.results["strict"]
    assert kind == "IsolationError"
    assert text.startswith("Expected isolation layer `cgroup` to apply, got failed: ")
    assert notes == ["layers so far: none; missing: cgroup"]


def test_landlock_refuses_to_half_confine_a_threaded_process() -> None:
    """restrict_self confines one thread: with others running, Landlock is not claimed."""
    child = run_child(
        "stop = threading.Event()\n"
        "t = threading.Thread(target=stop.wait); t.start()\n"
        "r = layers.apply_layers(LIMITS)\n"
        "stop.set(); t.join()\n"
        "report(r)\n"
        "attempt('caps', lambda: [x.split()[1] for x in open('/proc/self/status')"
        " if x.startswith('CapEff')])\ndone()\n",
    )
    assert child.returncode == 0, child.explain()
    assert child.report is not None
    landlock = child.report.layer("landlock")
    if "not available" in landlock.detail or "no Landlock" in landlock.detail:
        pytest.skip(f"landlock not available here: {landlock.detail}")
    assert not landlock.applied
    assert landlock.detail.startswith(
        "failed: RuntimeError: 2 threads are running; only this one would be confined"
    )
    if child.report.applied("privileges"):  # the capability kept for Landlock is gone again
        assert landlock.detail.endswith("; CAP_DAC_READ_SEARCH dropped again")
        assert worked(child, "caps")["value"] == ["0000000000000000"]


# --------------------------------------------------------------------------- cgroups (host)


def test_cgroup_create_then_remove_leaves_nothing_behind() -> None:
    cgroup = make_cgroup("layers create/remove", Limits(memory=64 << 20, pids=8))
    assert cgroup.dirs and all(os.path.isdir(d) for d in cgroup.dirs)
    assert all(p.endswith("/cgroup.procs") and os.path.exists(p) for p in cgroup.procs)
    assert "layers_create_remove-" in cgroup.dirs[0]
    assert cgroup.oom_kills() == 0
    assert cgroup.pids() == set()
    again = make_cgroup("layers create/remove", Limits())
    assert set(again.dirs).isdisjoint(cgroup.dirs)
    again.remove()
    cgroup.remove()
    cgroup.remove()  # twice: still no error
    assert not any(os.path.exists(d) for d in cgroup.dirs + again.dirs)


def test_pids_max_refuses_forks() -> None:
    cgroup = make_cgroup("layers-pids", Limits(pids=4, memory=None))
    try:
        child = run_child(
            "import nyxplug.isolation.layers as L\n"
            "report(layers.IsolationReport((L._layer_cgroup(tuple(P['procs']), ''),)))\n"
            "r, w = os.pipe()\n"
            "kids = []\n"
            "def bomb():\n"
            "    for _ in range(20):\n"
            "        pid = os.fork()\n"
            "        if pid == 0:\n"
            "            os.close(w); os.read(r, 1); os._exit(0)\n"
            "        kids.append(pid)\n"
            "attempt('fork_20', bomb)\n"
            "os.close(w)\n"
            "for pid in kids: os.waitpid(pid, 0)\n"
            "RESULTS['forked'] = len(kids)\ndone()\n",
            procs=list(cgroup.procs),
        )  # fmt: skip
        assert child.returncode == 0, child.explain()
        require(child, "cgroup")
        denied(child, "fork_20", 11)  # EAGAIN
        assert child.results["forked"] == 3  # 4 tasks: the child and 3 of its forks
        assert cgroup.pids_refused() > 0
    finally:
        cgroup.remove()


def test_pids_max_caps_threads_under_every_layer() -> None:
    limits = Limits(pids=8, processes=None)
    cgroup = make_cgroup("layers-threads", limits)
    try:
        child = run_child(
            "report(layers.apply_layers(LIMITS, cgroup_procs=tuple(P['procs'])))\n"
            "stop = threading.Event()\n"
            "started = []\n"
            "def spawn():\n"
            "    for _ in range(30):\n"
            "        t = threading.Thread(target=stop.wait); t.start(); started.append(t)\n"
            "attempt('threads_30', spawn)\n"
            "stop.set()\n"
            "for t in started: t.join()\n"
            "RESULTS['started'] = len(started)\ndone()\n",
            limits=msgspec.to_builtins(limits), procs=list(cgroup.procs),
        )  # fmt: skip
        assert child.returncode == 0, child.explain()
        require(child, "cgroup")
        denied(child, "threads_30")
        assert child.results["started"] == 7
        assert cgroup.pids_refused() > 0
    finally:
        cgroup.remove()


def test_memory_over_the_cgroup_limit_is_oom_killed() -> None:
    limits = Limits(memory=64 << 20, address_space=None, processes=None)
    cgroup = make_cgroup("layers-oom", limits)
    try:
        child = run_child(
            "report(layers.apply_layers(LIMITS, cgroup_procs=tuple(P['procs'])))\n"
            "big = b'\\x01' * (256 << 20)\n"
            "RESULTS['survived'] = len(big)\ndone()\n",
            limits=msgspec.to_builtins(limits), procs=list(cgroup.procs),
        )  # fmt: skip
        require(child, "cgroup")
        assert child.returncode == -9, child.explain()
        assert cgroup.oom_kills() > 0
    finally:
        cgroup.remove()


def test_kill_all_takes_the_whole_tree() -> None:
    cgroup = make_cgroup("layers-kill", Limits())
    code = PRELUDE.replace("__ROOT__", repr(str(ROOT))) + (
        "import nyxplug.isolation.layers as L\n"
        "report(layers.IsolationReport((L._layer_cgroup(tuple(P['procs']), ''),)))\n"
        "r, w = os.pipe()\n"
        "for _ in range(3):\n"
        "    if os.fork() == 0:\n"
        "        os.read(r, 1); os._exit(0)\n"  # holds stdout open until killed
        "sys.stdout.write('ready\\n'); sys.stdout.flush()\n"
        "os.read(r, 1)\n"
    )
    params = json.dumps({"procs": list(cgroup.procs)})
    try:
        with subprocess.Popen(
            [sys.executable, "-I", "-B", "-c", code, params],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        ) as proc:  # fmt: skip
            assert proc.stdout is not None
            line = proc.stdout.readline()
            report = msgspec.json.decode(line, type=IsolationReport)
            if not report.applied("cgroup"):
                proc.kill()
                pytest.skip(f"cgroup not available here: {report.layer('cgroup').detail}")
            assert proc.stdout.readline() == "ready\n"
            assert len(cgroup.pids()) == 4
            cgroup.kill_all()
            # EOF only once every holder of the pipe (the child and its 3 forks) is dead.
            rest, _ = proc.communicate(timeout=10)
            assert rest == ""
            assert proc.returncode == -9
    finally:
        cgroup.remove()
    assert not any(os.path.exists(d) for d in cgroup.dirs)


def test_landlock_handles_pathname_unix_sockets_from_abi_9() -> None:
    """Item 11: where the kernel has it (ABI 9), Landlock also refuses pathname sockets:
    the right is handled and granted on no path. (This machine's ABI may be older.)"""
    from nyxplug.isolation import layers as L

    assert not L._fs_rights(8) & L._FS_RESOLVE_UNIX
    assert L._fs_rights(9) & L._FS_RESOLVE_UNIX == 1 << 16
