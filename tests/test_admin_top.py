"""``nyxplug top`` under tmux: its screen shows a plugin's frames/s moving while frames
flow into a real ``nyxplug serve``, and ``q`` quits cleanly."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from admin_helpers import call
from nyx_helpers import DATA
from test_admin_serve import serve, stop, token_file, wait_for_line
from test_serve import nyx_frame

from nyxplug.admin import AdminAddress
from nyxplug.cli.top import Row, table

pytestmark = pytest.mark.timeout(120)

ROW = re.compile(r"^echo\s+1\.0\.0\s+active\s+([\d,]+)\s", re.M)


def tmux() -> str:
    path = shutil.which("tmux")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("tmux is missing in CI - .ci/run installs it")
        pytest.skip("tmux is not installed; CI runs this")
    return path


def test_top_shows_frames_per_second_moving_and_quits_on_q(tmp_path: Path) -> None:
    binary = tmux()
    path, _ = token_file(tmp_path)
    proc = serve(tmp_path, "--admin", "127.0.0.1:0", "--admin-token-file", str(path))
    server = f"nyxplug-top-{os.getpid()}"
    flowing = threading.Event()
    done = threading.Event()

    def send() -> None:
        chunk = nyx_frame(DATA, 7, b"x" * 64) * 500
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            while not done.is_set():
                sock.sendall(chunk)
                flowing.set()
                done.wait(0.01)  # a steady stream, not a flood

    try:
        admin = int(wait_for_line(proc, r"^admin API on 127\.0\.0\.1:(\d+) ").group(1))
        port = int(wait_for_line(proc, r"^listening on 127\.0\.0\.1:(\d+) ").group(1))
        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        assert flowing.wait(30)
        # When top exits, the session signals a tmux channel the test waits on (an event).
        command = shlex.join(
            [sys.executable, "-m", "nyxplug", "top", "--admin", f"127.0.0.1:{admin}",
             "--admin-token-file", str(path), "--interval", "0.5"]
        ) + "; " + shlex.join([binary, "-L", server, "wait-for", "-S", "top-quit"])  # fmt: skip
        subprocess.run(
            [binary, "-L", server, "new-session", "-d", "-x", "130", "-y", "12", command],
            check=True, timeout=30, env={**os.environ, "TERM": "xterm"},
        )  # fmt: skip
        # The screen is another process's: read it until two refreshes show different,
        # non-zero rates (within a deadline).
        rates: list[str] = []
        screen = ""
        deadline = time.monotonic() + 60
        while len({r for r in rates if r != "0"}) < 2:
            assert time.monotonic() < deadline, f"frames/s never moved:\n{screen}"
            screen = subprocess.run(
                [binary, "-L", server, "capture-pane", "-p"],
                capture_output=True, text=True, timeout=30,
            ).stdout  # fmt: skip
            found = ROW.search(screen)
            if found and (not rates or rates[-1] != found.group(1)):
                rates.append(found.group(1))
            time.sleep(0.2)  # ok-sleep: tmux has no "screen changed" event to wait on
        assert screen.startswith("nyxplug top - 127.0.0.1:")
        assert "FRAMES/S" in screen and "QUEUE" in screen and "RESTARTS" in screen
        subprocess.run([binary, "-L", server, "send-keys", "q"], check=True, timeout=30)
        # Returns once top has exited (the session's command signals the channel).
        subprocess.run([binary, "-L", server, "wait-for", "top-quit"], check=True, timeout=30)
    finally:
        done.set()
        subprocess.run([binary, "-L", server, "kill-server"], capture_output=True, timeout=30)
        _, err = stop(proc)
    assert err == ""


def test_top_once_prints_one_table(tmp_path: Path) -> None:
    path, token = token_file(tmp_path)
    proc = serve(tmp_path, "--admin", "127.0.0.1:0", "--admin-token-file", str(path))
    try:
        admin = int(wait_for_line(proc, r"^admin API on 127\.0\.0\.1:(\d+) ").group(1))
        address = AdminAddress(host="127.0.0.1", port=admin)
        status, _, _ = call(
            address, "POST", "/api/v1/plugins/echo/breaker", token=token,
            body={"state": "forced_open"},
        )  # fmt: skip
        assert status == 200
        done = subprocess.run(
            [sys.executable, "-m", "nyxplug", "top", "--admin", f"127.0.0.1:{admin}",
             "--admin-token-file", str(path), "--once", "--interval", "0.1"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    finally:
        stop(proc)
    assert done.returncode == 0, done.stderr
    header, row = done.stdout.splitlines()
    assert header.split() == [
        "PLUGIN", "VERSION", "STATE", "FRAMES/S", "QUEUE", "HWM", "ERRORS", "RELOADS",
        "RESTARTS", "BREAKER", "ROLLOUT", "REFUSED",
    ]  # fmt: skip
    assert row.split() == [
        "echo", "1.0.0", "active", "0", "0", "0", "0", "0", "0", "forced_open", "-", "-",
    ]  # fmt: skip


def test_top_shows_the_step_a_recovery_ladder_runs() -> None:
    rows = {
        "a": Row("a", "1.0.0", "active", breaker="repairing: reset"),
        "b": Row("b", "1.0.0", "active", refused={"circuit_open": 3.0}, breaker="open"),
    }
    _, a, b = table(rows, rows, 1.0)
    assert a.split()[-4:] == ["repairing:", "reset", "-", "-"]
    assert b.split()[-4:] == ["open", "-", "circuit", "3"]


def test_top_shows_the_latest_rollout() -> None:
    weights = {"1.0.0": 0.9, "1.1.0": 0.1}
    running = dict(strategy="canary", candidate="1.1.0", weights=weights)
    rows = {
        "a": Row("a", "1.0.0", "active", rollout_state="progressing", **running),  # type: ignore[arg-type]
        "b": Row("b", "1.0.0", "active", rollout_state="paused", **running),  # type: ignore[arg-type]
        "c": Row("c", "1.1.0", "active", rollout_state="promoted", strategy="blue_green"),
        "d": Row("d", "1.0.0", "active", rollout_state="rolled_back", strategy="canary"),
        "e": Row("e", "1.0.0", "active"),
    }
    lines = table(rows, rows, 1.0)
    assert [line.split()[10:-1] for line in lines[1:]] == [
        ["canary", "1.1.0", "10%"], ["paused", "1.1.0", "10%"], ["promoted"],
        ["rolled-back"], ["-"],
    ]  # fmt: skip


def test_top_with_a_wrong_token_says_so(tmp_path: Path) -> None:
    path, _ = token_file(tmp_path)
    proc = serve(tmp_path, "--admin", "127.0.0.1:0", "--admin-token-file", str(path))
    try:
        admin = int(wait_for_line(proc, r"^admin API on 127\.0\.0\.1:(\d+) ").group(1))
        other = tmp_path / "other"
        other.mkdir()
        wrong, _ = token_file(other)
        done = subprocess.run(
            [sys.executable, "-m", "nyxplug", "top", "--admin", f"127.0.0.1:{admin}",
             "--admin-token-file", str(wrong), "--once"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    finally:
        stop(proc)
    assert done.returncode == 1
    assert done.stderr == (
        f"nyxplug top: GET /api/v1/plugins on 127.0.0.1:{admin}: 401 Expected the bearer "
        "token of --admin-token-file, got another - check the token file the caller reads\n"
    )
