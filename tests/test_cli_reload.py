"""``nyxplug run --watch``, its control socket, ``nyxplug reload`` and the live ``nyxplug list``.

One real host subprocess carries the end-to-end story (each launch costs about half a
second); the control server's edge cases run in-process, on both loops, against a real
``PluginManager`` and real sockets in tmp_path. Nothing sleeps: the tests wait for the
host's lines on stdout, for replies, or for the process to exit, each under a timeout.
"""

from __future__ import annotations

import asyncio
import os
import queue
import re
import signal
import socket
import stat
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import msgspec
import pytest
from plugin_helpers import manifest_text

from nyxplug.cli import main
from nyxplug.cli._common import relative_path
from nyxplug.cli.control import (
    LOCK_FILE,
    MAX_REQUEST,
    SOCKET_FILE,
    ControlServer,
    Failure,
    HostRunning,
    NoHost,
    Reloaded,
    ReloadRequest,
    Status,
    StatusRequest,
    request,
)
from nyxplug.plugins import PluginManager

ROOT = Path(__file__).resolve().parent.parent
#: How long a test waits for a line, a reply or an exit it expects.
WAIT = 20.0

MODULE = """\
from nyxplug.plugins import Plugin

class Entry(Plugin):
    async def on_load(self, ctx):
{on_load}

    async def on_unload(self):
{on_unload}

    async def handle(self, message):
        pass
"""


def write_plugin(
    root: Path,
    name: str,
    plugin_id: int,
    version: str,
    on_load: str = "pass",
    on_unload: str = "pass",
) -> Path:
    """Write (or rewrite in place, module first, like an editor saving) ``root/name``."""
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    module = MODULE.format(on_load=f"        {on_load}", on_unload=f"        {on_unload}")
    (folder / "main.py").write_text(module)
    (folder / "nyxplug.toml").write_text(manifest_text(name, plugin_id, version=version))
    return folder


@pytest.fixture
def host_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """A clean host in tmp_path (no NYXPLUG_* from outside); the env for subprocesses."""
    for name in list(os.environ):
        if name.startswith("NYXPLUG_") and name != "NYXPLUG_REQUIRE_EXTENSIONS":
            monkeypatch.delenv(name)
    values = {
        "NYXPLUG_STATE_DIR": str(tmp_path / "state"),
        "NYXPLUG_ENTRY_POINTS": "0",
        "NYXPLUG_REQUIRE_SIGNATURES": "0",  # plugin folders straight from the editor
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "plugins").mkdir()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    return env


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def row(out: str, name: str) -> list[str]:
    for line in out.splitlines():
        cells = line.split()
        if cells and cells[0] == name:
            return cells
    raise AssertionError(f"no row for {name!r} in:\n{out}")


class Host:
    """A ``nyxplug run --watch`` subprocess whose stdout lines can be awaited."""

    def __init__(self, env: dict[str, str], *argv: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "nyxplug", "run", "--watch", *argv],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        self._incoming: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._incoming.put(line.rstrip("\n"))
        self._incoming.put(None)

    def expect(self, pattern: str) -> re.Match[str]:
        """The next stdout line matching ``pattern`` (lines before it are kept, not matched)."""
        while True:
            try:
                line = self._incoming.get(timeout=WAIT)
            except queue.Empty:
                raise AssertionError(f"no line matching {pattern!r} within {WAIT} s; got:\n"
                                     + "\n".join(self.lines)) from None  # fmt: skip
            if line is None:
                self._incoming.put(None)
                raise AssertionError(
                    f"the host exited ({self.process.wait()}) before a line matching "
                    f"{pattern!r}; stdout:\n"
                    + "\n".join(self.lines)
                    + f"\nstderr:\n{self.stderr()}"
                )
            self.lines.append(line)
            if found := re.search(pattern, line):
                return found

    def stderr(self) -> str:
        assert self.process.stderr is not None
        return self.process.stderr.read() if self.process.poll() is not None else "(running)"

    def stop(self) -> int:
        """SIGTERM, then its exit status (all of stdout read)."""
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout=WAIT)
        self._reader.join(timeout=WAIT)
        while (line := self._incoming.get_nowait()) is not None:
            self.lines.append(line)
        return code

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        for stream in (self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()


@pytest.fixture
def start_host(host_env: dict[str, str]) -> Iterator[Callable[..., Host]]:
    """Start ``nyxplug run --watch ARGV`` hosts; any the test left running are killed."""
    hosts: list[Host] = []

    def start(*argv: str) -> Host:
        hosts.append(Host(host_env, *argv))
        return hosts[-1]

    yield start
    for host in hosts:
        host.kill()


def dead_socket(path: Path) -> None:
    """A socket file as a killed host leaves it: bound once, nobody listening."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.bind(str(path))


def ask(path: Path, *lines: bytes) -> list[bytes]:
    """Send raw request lines on one connection; the reply lines, in order."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(WAIT)
        sock.connect(str(path))
        replies = []
        reader = sock.makefile("rb")
        for line in lines:
            sock.sendall(line)
            replies.append(reader.readline())
        reader.close()
        return replies


# -- the whole story, one real host --------------------------------------------------------


@pytest.mark.timeout(90)
def test_watching_host_reloads_by_hand_and_on_change_and_stops_cleanly(
    tmp_path: Path, start_host: Callable[..., Host], capsys: pytest.CaptureFixture[str]
) -> None:
    plugins, state = tmp_path / "plugins", tmp_path / "state"
    sock = state / SOCKET_FILE
    write_plugin(plugins, "counter", 7, "1.0.0")
    dead_socket(sock)  # the last host was killed: its socket file is still there
    host = start_host("--plugin-dir", str(plugins))
    host.expect(r"^counter 1\.0\.0 \(id 7\): active$")
    host.expect(r"^watching 1 plugin folder for changes; control socket ")
    assert stat.S_IMODE(os.stat(sock).st_mode) == 0o600

    # By hand: the same code swaps anyway (a manual reload always does).
    code, out, err = cli(capsys, "reload", "counter", "--state-dir", str(state))
    assert (code, err) == (0, ""), err
    assert re.fullmatch(r"reloaded counter 1\.0\.0 -> 1\.0\.0 \(pause \d+\.\d\d ms\)\n", out)
    host.expect(r"^reloaded counter 1\.0\.0 -> 1\.0\.0 \(pause \d+\.\d\d ms\) - by nyxplug reload$")

    code, out, err = cli(capsys, "list", "--state-dir", str(state), "--plugin-dir", str(plugins))
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert re.fullmatch(rf"Live catalog of the host at .*{SOCKET_FILE} \(pid {host.process.pid}\)",
                        lines[0])  # fmt: skip
    assert lines[1].split() == [
        "NAME", "VERSION", "ID", "STATE", "SOURCE", "SIGNER", "RELOADS", "PAUSE"
    ]  # fmt: skip
    cells = row(out, "counter")
    assert cells[:7] == ["counter", "1.0.0", "7", "active", "directory", "unsigned", "1/1"]
    assert re.fullmatch(r"\d+\.\d\dms", cells[7])

    # Garbage is answered with an error, and the same connection still gets the catalog.
    garbage, status = ask(sock, b"\x00not json\n", b'{"op": "status"}\n')
    bad = msgspec.json.decode(garbage)
    assert (bad["reply"], bad["error"]) == ("error", "bad-request")
    assert bad["message"].startswith('Expected one JSON request line like {"op": "status"}')
    assert [p["status"]["name"] for p in msgspec.json.decode(status)["plugins"]] == ["counter"]

    # On change: the watcher reloads the edited folder by itself.
    write_plugin(plugins, "counter", 7, "1.1.0")
    host.expect(r"^reloaded counter 1\.0\.0 -> 1\.1\.0 \(pause \d+\.\d\d ms")

    # A broken version never takes over, whether the watcher or a person asks.
    write_plugin(plugins, "counter", 7, "1.2.0", on_load="raise RuntimeError('boom')")
    host.expect(r"^reload of counter failed at on_load: RuntimeError: boom; 1\.1\.0 keeps serving$")
    code, out, err = cli(capsys, "reload", "counter", "--state-dir", str(state))
    assert (code, out) == (1, "")
    assert err == (
        "nyxplug reload: reload of counter failed at on_load: RuntimeError: boom - the old "
        "version keeps serving (1.1.0); fix the new version and reload again\n"
    )
    code, out, _ = cli(capsys, "list", "--state-dir", str(state))
    assert row(out, "counter")[1:4] == ["1.1.0", "7", "active"]
    assert "    last reload rolled back: on_load failed: RuntimeError: boom" in out.splitlines()

    code, out, err = cli(capsys, "reload", "nobody", "--state-dir", str(state))
    assert (code, out) == (1, "")
    assert err.startswith("nyxplug reload: No plugin named 'nobody' in the catalog; known")

    # A second host on the same state dir refuses to start, and leaves the first alone.
    code, out, err = cli(capsys, "run", "--watch", "--state-dir", str(state),
                         "--plugin-dir", str(plugins))  # fmt: skip
    assert (code, out) == (1, "")
    assert err == (
        f"nyxplug run: another host is running: {sock} answers - stop it (Ctrl-C or SIGTERM) "
        "or give this one another --state-dir\n"
    )
    assert isinstance(request(sock, StatusRequest(), timeout=WAIT), Status)

    assert host.stop() == 0
    assert "SIGTERM: stopping - unloading the plugins (send it again to stop at once)" in host.lines
    assert "unloaded 1 plugin" in host.lines
    assert not sock.exists()


def test_disable_and_enable_act_on_the_running_host(
    tmp_path: Path, start_host: Callable[..., Host], capsys: pytest.CaptureFixture[str]
) -> None:
    plugins, state = tmp_path / "plugins", tmp_path / "state"
    write_plugin(plugins, "counter", 7, "1.0.0", on_unload="print('counter unloading')")
    write_plugin(plugins, "other", 8, "1.0.0")
    host = start_host("--plugin-dir", str(plugins))
    host.expect(r"^watching 2 plugin folders for changes; control socket ")
    sock = relative_path(state / SOCKET_FILE)

    # info asks the running host: the version that serves, its reloads in words, its stats.
    write_plugin(plugins, "other", 8, "1.1.0")
    host.expect(r"^reloaded other 1\.0\.0 -> 1\.1\.0 ")
    code, out, err = cli(capsys, "info", "other", "--state-dir", str(state),
                         "--plugin-dir", str(plugins))  # fmt: skip
    assert (code, err) == (0, ""), err
    assert out.startswith(f"Live, from the host at {sock} (pid {host.process.pid})\n")
    assert re.search(r"^version: +1\.1\.0$", out, re.M), out
    assert re.search(r"^state: +active$", out, re.M), out
    assert re.search(
        r"^reloads: +1/1 succeeded, last swapped, pause \d+\.\d\dms \(max \d+\.\d\dms\)$",
        out,
        re.M,
    ), out
    assert re.search(r"^stats: +0 frames, 0 errors, 0 permission and 0 sandbox violations, "
                     r"queue 0$", out, re.M), out  # fmt: skip
    assert "ReloadStats(" not in out

    code, out, err = cli(capsys, "disable", "counter", "--state-dir", str(state))
    assert (code, err) == (0, ""), err
    assert out == (
        f"counter: disabled; drained and unloaded from the running host at {sock} (0 frames "
        "handled); it will not load until `nyxplug enable counter`\n"
    )
    host.expect(r"^counter unloading$")  # its on_unload ran in the host, at once
    code, out, _ = cli(capsys, "list", "--state-dir", str(state))
    assert row(out, "counter")[1:4] == ["1.0.0", "7", "disabled"]
    assert row(out, "other")[1:4] == ["1.1.0", "8", "active"]
    code, out, _ = cli(capsys, "disable", "counter", "--state-dir", str(state))
    assert out.startswith("counter: was already disabled; not running on the running host at")

    code, out, err = cli(capsys, "enable", "counter", "--state-dir", str(state))
    assert (code, err) == (0, ""), err
    assert out == f"counter: enabled; now active on the running host at {sock}\n"
    code, out, _ = cli(capsys, "list", "--state-dir", str(state))
    assert row(out, "counter")[1:4] == ["1.0.0", "7", "active"]

    code, out, err = cli(capsys, "disable", "nobody", "--state-dir", str(state))
    assert (code, out) == (1, "")
    assert err.startswith("nyxplug disable: No plugin named 'nobody' in the catalog; known")

    # What the host was told is remembered: disabled, it stays down after a restart.
    cli(capsys, "disable", "other", "--state-dir", str(state))
    assert host.stop() == 0
    host = start_host("--plugin-dir", str(plugins))
    host.expect(r"^counter 1\.0\.0 \(id 7\): active$")
    host.expect(r"^other 1\.1\.0 \(id 8\): disabled")
    assert host.stop() == 0


def test_send_a_chosen_frame_to_the_running_host(
    tmp_path: Path, start_host: Callable[..., Host], capsys: pytest.CaptureFixture[str]
) -> None:
    plugins, state = tmp_path / "plugins", tmp_path / "state"
    write_plugin(plugins, "counter", 7, "1.0.0")
    host = start_host("--plugin-dir", str(plugins))
    host.expect(r"^watching 1 plugin folder for changes; control socket ")

    for n in (1, 2):
        code, out, err = cli(capsys, "send", "counter", "--payload", "hello",
                             "--header-data", "hd", "--state-dir", str(state))  # fmt: skip
        assert (code, err) == (0, ""), err
        assert out.splitlines() == [
            "Sent frame 0x52 (DATA) (5 bytes) to counter (id 7): handled",
            f"  stats: {n} frames, 0 errors, {n * (5 + 20)} bytes, 0 permission and 0 sandbox "
            "violations, queue 0",
        ]

    code, out, err = cli(capsys, "send", "counter", "--type", "control", "--payload-hex", "00ff",
                         "--state-dir", str(state))  # fmt: skip
    assert (code, out) == (1, "")
    assert err == (
        "nyxplug send: refused - PermissionDenied: Plugin 'counter' (id 7) lacks permission "
        "CONTROL required by frame 0x53 (CONTROL) - grant it in [permissions] of "
        f"{plugins / 'counter' / 'nyxplug.toml'}\n"
    )
    code, out, err = cli(capsys, "send", "counter", "--type", "0x10", "--state-dir", str(state))
    assert (code, out) == (1, "")
    assert err.startswith("nyxplug send: refused - UnknownFrameType: Expected a frame type ")
    code, out, err = cli(capsys, "send", "nobody", "--state-dir", str(state))
    assert (code, out) == (1, "")
    assert err.startswith("nyxplug send: No plugin named 'nobody' in the catalog; known")
    code, out, _ = cli(capsys, "list", "--state-dir", str(state))
    assert host.stop() == 0
    assert re.search(r"^counter +2 +0 ", "\n".join(host.lines), re.M)


# -- without a host -------------------------------------------------------------------------


def test_reload_without_a_host_says_how_to_start_one(
    tmp_path: Path, host_env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    sock = tmp_path / "state" / SOCKET_FILE
    code, out, err = cli(capsys, "reload", "counter")
    assert (code, out) == (1, "")
    assert err == (
        f"nyxplug reload: no running host at {sock} - start one with `nyxplug run --watch` or "
        "`nyxplug serve`\n"
    )
    dead_socket(sock)  # a dead host's file is no host either
    assert cli(capsys, "reload", "counter")[2] == err


def test_list_without_a_host_is_the_offline_catalog(
    tmp_path: Path, host_env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    write_plugin(tmp_path / "plugins", "counter", 7, "1.0.0")
    dead_socket(tmp_path / "state" / SOCKET_FILE)
    code, out, err = cli(capsys, "list", "--plugin-dir", "plugins")
    assert (code, err) == (0, "")
    assert out.splitlines()[0].split() == ["NAME", "VERSION", "ID", "STATE", "SOURCE", "SIGNER"]
    assert row(out, "counter") == ["counter", "1.0.0", "7", "validated", "directory", "unsigned"]


def test_frames_and_watch_exclude_each_other(
    host_env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = cli(capsys, "run", "--watch", "--frames", "2")
    assert (code, out) == (1, "")
    assert err == (
        "nyxplug run: --frames sends frames and exits, --watch keeps the host up - give one "
        "of them\n"
    )


# -- claiming the socket --------------------------------------------------------------------


def test_claim_replaces_a_dead_hosts_socket_and_refuses_a_live_one(tmp_path: Path) -> None:
    path = tmp_path / SOCKET_FILE
    dead_socket(path)
    first = ControlServer(None, path)
    first.claim()
    try:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        with pytest.raises(HostRunning, match=r"^another host is running: .* answers - stop it"):
            ControlServer(None, path).claim()  # the lock is held
    finally:
        asyncio.run(first.aclose())
    assert not path.exists()
    assert (tmp_path / LOCK_FILE).exists()  # kept: removing a lock file races its next user

    # Someone listens there without holding the lock (not a nyxplug host): still refused.
    with socket.socket(socket.AF_UNIX) as other:
        other.bind(str(path))
        other.listen()
        with pytest.raises(HostRunning):
            ControlServer(None, path).claim()
        assert path.exists()  # and its socket is left alone


def test_claim_refuses_a_file_that_is_not_a_socket(tmp_path: Path) -> None:
    path = tmp_path / SOCKET_FILE
    path.write_text("mine")
    with pytest.raises(
        Exception, match=r"control\.sock exists and is not a socket - move it away$"
    ):
        ControlServer(None, path).claim()
    assert path.read_text() == "mine"


# -- the server in-process: every request kind, hostile input, both loops ------------------


async def test_control_server_answers_and_survives_bad_requests(tmp_path: Path) -> None:
    write_plugin(tmp_path / "plugins", "counter", 7, "1.1.0")
    manager = PluginManager(
        plugin_dirs=[tmp_path / "plugins"], state_dir=tmp_path / "state", entry_points=False,
        include_registered=False, require_signatures=False,
    )  # fmt: skip
    path = tmp_path / "state" / SOCKET_FILE
    outcomes: list[object] = []
    async with manager:
        server = ControlServer(manager, path, on_outcome=lambda _req, out: outcomes.append(out))
        async with server:
            reader, writer = await asyncio.open_unix_connection(str(path), limit=2**20)
            try:
                await _bad_requests(reader, writer)
                await _good_requests(path, tmp_path / "plugins", outcomes)
                # A line longer than the limit: an error reply, then the connection closes.
                writer.write(b"x" * (MAX_REQUEST + 10) + b"\n")
                reply = msgspec.json.decode(await reader.readline())
                assert reply["error"] == "bad-request"
                assert reply["message"].startswith(
                    f"Expected a request line of at most {MAX_REQUEST} bytes"
                )
                assert await reader.read() == b""
            finally:
                writer.close()
            # A client that never speaks, one that hangs up mid-line: the host carries on.
            _, silent = await asyncio.open_unix_connection(str(path))
            _, rude = await asyncio.open_unix_connection(str(path))
            rude.write(b'{"op": "sta')
            rude.close()
            answer = await asyncio.to_thread(request, path, StatusRequest(), timeout=WAIT)
            assert isinstance(answer, Status)
        # Closing hangs up on the silent client and removes the socket file.
        silent.close()
        assert not path.exists()
        with pytest.raises(NoHost, match=r"^no running host at .*control\.sock - start one"):
            request(path, StatusRequest(), timeout=WAIT)


async def _bad_requests(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    for line, expected in [
        (b"{}\n", "Object missing required field `op`"),
        (b'{"op": "explode"}\n', "Invalid value 'explode' - at `$.op`"),
        (b'{"op": "reload"}\n', "Object missing required field `name`"),
        (b'{"op": "status", "extra": 1}\n', "Object contains unknown field `extra`"),
        (b'{"op": \n', "truncated"),
        (b"[1, 2]\n", "Expected `object`, got `array`"),
        (b'{"op": "reload", "name": "nobody"}\n', "No plugin named 'nobody'"),
    ]:
        writer.write(line)
        reply = msgspec.json.decode(await reader.readline())
        assert reply["reply"] == "error"
        assert expected in reply["message"], reply["message"]
        assert reply["error"] == ("not-found" if b"nobody" in line else "bad-request")


async def _good_requests(path: Path, plugins: Path, outcomes: list[object]) -> None:
    # The blocking client runs in a thread: the server is on this loop.
    answer = await asyncio.to_thread(request, path, StatusRequest(), timeout=WAIT)
    assert isinstance(answer, Status) and answer.pid == os.getpid()
    (entry,) = answer.plugins
    assert (entry.status.name, entry.status.state) == ("counter", "active")
    assert entry.stats is not None and entry.stats.messages_processed == 0
    assert entry.status.reloads.attempted == 0

    answer = await asyncio.to_thread(request, path, ReloadRequest(name="counter"), timeout=WAIT)
    assert isinstance(answer, Reloaded)
    assert (answer.result.outcome, answer.result.to_version) == ("swapped", "1.1.0")
    assert outcomes == [answer.result]  # the unknown name above ran nothing: not reported

    write_plugin(plugins, "counter", 7, "1.0.0")
    answer = await asyncio.to_thread(request, path, ReloadRequest(name="counter"), timeout=WAIT)
    assert isinstance(answer, Failure)
    assert (answer.error, answer.name, answer.step, answer.running, answer.transient) == (
        "reload-failed", "counter", "compatibility", "1.1.0", False
    )  # fmt: skip
    assert "allow_downgrade" in (answer.reason or "")
    assert [type(outcome).__name__ for outcome in outcomes] == ["ReloadResult", "ReloadFailed"]
    downgrade = ReloadRequest(name="counter", allow_downgrade=True)
    answer = await asyncio.to_thread(request, path, downgrade, timeout=WAIT)
    assert isinstance(answer, Reloaded) and answer.result.to_version == "1.0.0"
    status = await asyncio.to_thread(request, path, StatusRequest(), timeout=WAIT)
    assert isinstance(status, Status)
    reloads = status.plugins[0].status.reloads
    assert (reloads.attempted, reloads.succeeded, reloads.rolled_back) == (3, 2, 1)
