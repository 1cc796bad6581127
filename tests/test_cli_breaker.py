"""``nyxplug breaker NAME [--set STATE]`` against real hosts: ``run --watch`` and ``serve``.

Each host is a real subprocess with its control socket in tmp_path; the command runs
in-process (``nyxplug.cli.main``) and talks to it over the socket. The audit log is read
back from the host's state dir: the change is there with the caller the host read from
the socket (this test's user and pid), not one the client claimed.
"""

from __future__ import annotations

import getpass
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from plugin_helpers import manifest_text
from test_cli_reload import WAIT, Host, cli, host_env, start_host

from nyxplug.cli.control import (
    SOCKET_FILE,
    BreakerReply,
    BreakerRequest,
    Failure,
    peer_caller,
    request,
)

__all__ = ("host_env", "start_host")  # the fixtures, used here by name

MODULE = """\
from nyxplug.plugins import Plugin

class Entry(Plugin):
    async def handle(self, message):
        if message.payload == b"fail":
            raise RuntimeError("asked to fail")
"""


def write_plugin(root: Path, name: str, plugin_id: int, **tables: dict[str, object]) -> None:
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "main.py").write_text(MODULE)
    (folder / "nyxplug.toml").write_text(manifest_text(name, plugin_id, **tables))  # type: ignore[arg-type]


def audit_lines(state: Path, event: str) -> list[dict[str, object]]:
    path = state / "audit.jsonl"
    entries = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [e for e in entries if e.get("event") == event]


BREAKER = {"window_size": 4, "minimum_calls": 2, "failure_rate": 0.5, "open_wait": 30.0}


def test_breaker_shown_and_set_on_a_watching_host(
    tmp_path: Path, start_host: Callable[..., Host], capsys: pytest.CaptureFixture[str]
) -> None:
    plugins, state = tmp_path / "plugins", tmp_path / "state"
    write_plugin(plugins, "guarded", 7, breaker=BREAKER)
    write_plugin(plugins, "plain", 8)
    write_plugin(plugins, "resting", 9)
    host = start_host("--plugin-dir", str(plugins))
    host.expect(r"^watching 3 plugin folders for changes; control socket ")
    s = ("--state-dir", str(state))

    # Two failing frames trip it (minimum_calls 2, failure rate 100 % >= 50 %).
    for _ in range(2):
        code, _, err = cli(capsys, "send", "guarded", "--payload", "fail", *s)
        assert code == 0, err
    code, out, err = cli(capsys, "breaker", "guarded", *s)
    assert (code, err) == (0, ""), err
    lines = out.splitlines()
    assert lines[0] == "guarded 1.0.0 (id 7): open"
    assert lines[1] == (  # the window that tripped it
        "  count window of 4: 2 calls, 2 failures, 0 slow - failure rate 100.0 %, slow-call "
        "rate 0.0 %"
    )
    assert lines[2] == "  trips at: failure rate 50 % or slow-call rate 100 % over 2 calls"
    assert lines[3] == "  trips: 1 (1 in a row)"
    assert lines[4] == "  refused: open 0, forced-open 0, half-open 0"
    assert re.fullmatch(r"  retry after: \d+\.\d{3} s", lines[5])
    assert lines[6] == "  recovery: none ([recovery] not configured)"

    # A refused frame is counted by reason.
    code, _, err = cli(capsys, "send", "guarded", *s)
    assert code == 1 and "CircuitOpen" in err, err
    code, out, _ = cli(capsys, "breaker", "guarded", *s)
    assert "  refused: open 1, forced-open 0, half-open 0" in out.splitlines()

    # Closed resets it, audited with the caller the host read from the socket.
    code, out, err = cli(capsys, "breaker", "guarded", "--set", "closed", *s)
    assert (code, err) == (0, ""), err
    me = f"local:{getpass.getuser()} (uid {os.getuid()}, pid {os.getpid()})"
    assert out.splitlines()[0] == f"guarded 1.0.0 (id 7): closed (set by {me})"
    assert "  retry after: -" in out.splitlines()
    (entry,) = [e for e in audit_lines(state, "breaker") if e["decision"] == "set"]
    assert (entry["plugin"], entry["state"], entry["caller"]) == ("guarded", "closed", me)

    # A plugin without a breaker is told how to get one; forcing it open gives it one.
    code, out, _ = cli(capsys, "breaker", "plain", *s)
    assert (code, out) == (
        0,
        "plain 1.0.0 (id 8): no circuit breaker - its manifest has no [breaker] and the host "
        "no [defaults.breaker]; `nyxplug breaker plain --set closed` gives it the default one\n",
    )
    code, out, _ = cli(capsys, "breaker", "plain", "--set", "forced-open", *s)
    assert code == 0 and out.startswith(f"plain 1.0.0 (id 8): forced-open (set by {me})\n")
    assert "  count window of 100: 0 calls" in out
    code, _, err = cli(capsys, "send", "plain", *s)
    assert code == 1 and "CircuitOpen" in err, err
    code, out, _ = cli(capsys, "breaker", "plain", "--set", "metrics-only", *s)
    assert code == 0 and out.startswith("plain 1.0.0 (id 8): metrics-only")

    # The errors name the plugin and the fix.
    code, out, err = cli(capsys, "breaker", "nobody", *s)
    assert (code, out) == (1, "")
    assert err == (
        "nyxplug breaker: No plugin named 'nobody' in the catalog; known plugins: guarded, "
        "plain, resting - run `nyxplug list`\n"
    )
    code, _, _ = cli(capsys, "disable", "resting", *s)
    assert code == 0
    code, out, err = cli(capsys, "breaker", "resting", "--set", "forced-open", *s)
    assert (code, out) == (1, "")
    assert err == (
        "nyxplug breaker: Cannot set the circuit breaker of plugin 'resting': it is "
        "disabled, not active, and a breaker exists only while the plugin runs - start it "
        "(`nyxplug enable resting`, or see `nyxplug info resting` for why it is not running) "
        "and try again\n"
    )
    # A client cannot slip in a state the command line does not offer.
    reply = request(state / SOCKET_FILE, BreakerRequest(name="guarded", state="open"),
                    timeout=WAIT)  # fmt: skip
    assert isinstance(reply, Failure) and reply.error == "bad-request"
    assert reply.message == (
        "Expected a breaker state in closed, forced-open, disabled, metrics-only, got 'open' "
        "- for plugin 'guarded'"
    )
    assert host.stop() == 0


def test_breaker_without_a_host_says_how_to_start_one(
    tmp_path: Path, host_env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = cli(capsys, "breaker", "guarded", "--set", "forced-open")
    assert (code, out) == (1, "")
    path = tmp_path / "state" / SOCKET_FILE
    assert err == (
        f"nyxplug breaker: cannot set the circuit breaker of guarded: no running host at "
        f"{path} - start one with `nyxplug run --watch` or `nyxplug serve` (breakers live in "
        "a running host)\n"
    )


@pytest.fixture
def serve_host(tmp_path: Path, host_env: dict[str, str]) -> Iterator[subprocess.Popen[str]]:
    write_plugin(tmp_path / "plugins", "guarded", 7, breaker=BREAKER)
    proc = subprocess.Popen(
        [sys.executable, "-m", "nyxplug", "serve", "--listen", "127.0.0.1:0",
         "--plugin-dir", str(tmp_path / "plugins"), "--state-dir", str(tmp_path / "state")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=host_env,
        stdin=subprocess.DEVNULL,
    )  # fmt: skip
    yield proc
    if proc.poll() is None:
        proc.kill()
    proc.communicate(timeout=WAIT)


def test_serve_answers_the_control_socket(
    tmp_path: Path, serve_host: subprocess.Popen[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert serve_host.stdout is not None
    seen = []
    while not (line := serve_host.stdout.readline()).startswith("listening on"):
        assert line, (seen, serve_host.stderr.read() if serve_host.stderr else "")
        seen.append(line.rstrip("\n"))
    assert "control socket state/control.sock" in seen
    s = ("--state-dir", str(tmp_path / "state"))
    code, out, err = cli(capsys, "breaker", "guarded", "--set", "forced-open", *s)
    assert (code, err) == (0, ""), err
    assert out.startswith("guarded 1.0.0 (id 7): forced-open (set by local:")

    # A second host on that state dir refuses to start (it would share the audit log).
    code, out, err = cli(capsys, "serve", "--listen", "127.0.0.1:0", *s)
    assert (code, out) == (1, "")
    assert err.startswith("nyxplug serve: another host is running: ")

    serve_host.terminate()
    assert serve_host.wait(timeout=WAIT) == 0
    assert not (tmp_path / "state" / SOCKET_FILE).exists()


def test_peer_caller_reads_the_kernels_answer(tmp_path: Path) -> None:
    import socket

    left, right = socket.socketpair(socket.AF_UNIX)
    with left, right:
        assert peer_caller(left) == (
            f"local:{getpass.getuser()} (uid {os.getuid()}, pid {os.getpid()})"
        )
    assert peer_caller(None) == "local"
    assert BreakerReply.__struct_config__.tag == "breaker"


def test_serve_without_a_usable_control_socket_still_serves(
    tmp_path: Path, host_env: dict[str, str]
) -> None:
    """A state dir too deep for a Unix socket path: ``serve`` says so and serves frames."""
    state = tmp_path / ("d" * 60) / ("e" * 60)
    write_plugin(tmp_path / "plugins", "guarded", 7)
    proc = subprocess.Popen(
        [sys.executable, "-m", "nyxplug", "serve", "--listen", "127.0.0.1:0",
         "--plugin-dir", str(tmp_path / "plugins"), "--state-dir", str(state)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=host_env,
        stdin=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        assert proc.stdout is not None and proc.stderr is not None
        while not (line := proc.stdout.readline()).startswith("listening on"):
            assert line, proc.stderr.read()
        proc.terminate()
        _, err = proc.communicate(timeout=WAIT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=WAIT)
    assert proc.returncode == 0
    assert err.startswith(
        "nyxplug serve: no control socket (Expected a control socket path of at most 103 "
        "bytes, got "
    ), err
    assert "- nyxplug breaker, versions, rollout, reload and list will not reach this host" in err
