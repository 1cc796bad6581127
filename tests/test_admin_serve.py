"""``nyxplug serve --admin``: the admin API in a real host process, on its own loop."""

from __future__ import annotations

import http.client
import json
import os
import re
import secrets
import signal
import socket
import ssl
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from admin_helpers import call
from plugin_helpers import RECORDER, write_plugin
from tls_helpers import Pki

from nyxplug.admin import AdminAddress


def serve_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NYXPLUG_")}
    env.update(HOME=str(tmp_path / "home"), NYXPLUG_ENTRY_POINTS="0")
    if "NYXPLUG_REQUIRE_EXTENSIONS" in os.environ:
        env["NYXPLUG_REQUIRE_EXTENSIONS"] = os.environ["NYXPLUG_REQUIRE_EXTENSIONS"]
    return env


def token_file(tmp_path: Path, mode: int = 0o600) -> tuple[Path, bytes]:
    token = secrets.token_hex(32).encode()
    path = tmp_path / "admin.token"
    path.write_bytes(token + b"\n")
    path.chmod(mode)
    return path, token


def serve(tmp_path: Path, *admin: str) -> subprocess.Popen[str]:
    """``nyxplug serve`` with the interop codec (its frames are built by ``nyx_frame``)."""
    write_plugin(tmp_path / "plugins", "echo", 7, RECORDER)
    return subprocess.Popen(
        [sys.executable, "-m", "nyxplug", "serve", "--listen", "127.0.0.1:0", "--codec", "nyx",
         *admin,
         "--plugin-dir", str(tmp_path / "plugins"), "--state-dir", str(tmp_path / "state"),
         "--allow-unsigned"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=serve_env(tmp_path),
        cwd=tmp_path, stdin=subprocess.DEVNULL,
    )  # fmt: skip


def wait_for_line(proc: subprocess.Popen[str], pattern: str) -> re.Match[str]:
    assert proc.stdout is not None
    lines = []
    while True:
        line = proc.stdout.readline()
        assert line, (lines, proc.stderr.read() if proc.stderr else "")
        lines.append(line)
        found = re.match(pattern, line.strip())
        if found:
            return found


def stop(proc: subprocess.Popen[str]) -> tuple[str, str]:
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_serve_runs_the_admin_api_on_its_loop(tmp_path: Path) -> None:
    path, token = token_file(tmp_path)
    proc = serve(tmp_path, "--admin", "127.0.0.1:0", "--admin-token-file", str(path))
    try:
        found = wait_for_line(
            proc, r"^admin API on 127\.0\.0\.1:(\d+) \(http: /api/v1, /openapi\.json, /metrics\)$"
        )
        address = AdminAddress(host="127.0.0.1", port=int(found.group(1)))
        assert call(address, "GET", "/health/ready")[2] == {"ready": True, "waiting": {}}
        status, _, body = call(address, "POST", "/api/v1/plugins/echo/disable", token=token)
        assert status == 200 and body["status"]["state"] == "disabled"
        assert call(address, "GET", "/api/v1/plugins/echo", token=None)[0] == 401
        _, _, audit = call(address, "GET", "/api/v1/audit", token=token)
        admin = [e for e in audit["entries"] if e["event"] == "admin"]
        assert [(e["operation"], e["decision"]) for e in admin] == [
            ("disablePlugin", "done"),
            ("getPlugin", "refused"),
        ]
    finally:
        out, err = stop(proc)
    assert (proc.returncode, err) == (0, "")


def test_the_admin_unix_socket_is_for_the_owner_only(tmp_path: Path) -> None:
    path, _ = token_file(tmp_path)
    sock_path = tmp_path / "admin.sock"
    proc = serve(tmp_path, "--admin", f"unix:{sock_path}", "--admin-token-file", str(path))
    try:
        wait_for_line(proc, rf"^admin API on unix:{re.escape(str(sock_path))} ")
        assert stat.S_IMODE(os.stat(sock_path).st_mode) == 0o600
        with socket.socket(socket.AF_UNIX) as client:
            client.settimeout(30)
            client.connect(str(sock_path))
            client.sendall(b"GET /health/live HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n")
            answer = b""
            while chunk := client.recv(65536):
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 200 ") and answer.endswith(b'{"status":"live"}')
    finally:
        _, err = stop(proc)
    assert (proc.returncode, err) == (0, "")
    assert not sock_path.exists()


@pytest.mark.parametrize(
    ("admin", "mode", "message"),
    [
        ("0.0.0.0:0", 0o600, r"Expected a loopback address or `unix:PATH`, got `0\.0\.0\.0` - "
         r"in --admin: the admin API steers the host and would cross the network in "
         r"plaintext; listen on 127\.0\.0\.1, ::1 or a Unix socket \(and tunnel it, e\.g\. "
         r"`ssh -L`\), or give --admin-tls-cert for TLS"),
        ("127.0.0.1:0", 0o644, r"Expected a token file only its owner can read, got mode "
         r"-rw-r--r-- - in --admin-token-file .*: run `chmod 600 .*`"),
    ],
)  # fmt: skip
def test_an_unsafe_admin_setup_is_refused_before_any_plugin_starts(
    tmp_path: Path, admin: str, mode: int, message: str
) -> None:
    path, _ = token_file(tmp_path, mode)
    done = subprocess.run(
        [sys.executable, "-m", "nyxplug", "serve", "--listen", "127.0.0.1:0", "--admin", admin,
         "--admin-token-file", str(path), "--state-dir", str(tmp_path / "state")],
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
        env=serve_env(tmp_path),
    )  # fmt: skip
    assert done.returncode == 1
    assert re.match(rf"^nyxplug serve: {message}\n$", done.stderr), done.stderr


def test_admin_without_a_token_file_is_refused(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "nyxplug", "serve", "--listen", "127.0.0.1:0", "--admin",
         "127.0.0.1:0", "--state-dir", str(tmp_path / "state")],
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
        env=serve_env(tmp_path),
    )  # fmt: skip
    assert done.returncode == 1
    assert done.stderr == (
        "nyxplug serve: --admin needs --admin-token-file FILE: every admin call but /health "
        "must carry its bearer token\n"
    )


BROKEN = """
from nyxplug.plugins import Plugin

class Entry(Plugin):
    async def on_load(self, ctx):
        raise RuntimeError("no database")
"""


def test_json_logs_carry_the_plugin_as_fields(tmp_path: Path) -> None:
    write_plugin(tmp_path / "plugins", "broken", 12, BROKEN, version="2.1.0")
    proc = serve(tmp_path, "--log-format", "json")
    try:
        wait_for_line(proc, r"^listening on 127\.0\.0\.1:\d+ ")
    finally:
        _, err = stop(proc)
    assert proc.returncode == 0
    entries = [json.loads(line) for line in err.splitlines()]
    failed = [e for e in entries if e.get("plugin") == "broken"]
    assert len(failed) == 1, entries
    entry = failed[0]
    assert (entry["level"], entry["logger"]) == ("ERROR", "nyxplug.runtime")
    assert (entry["plugin_id"], entry["version"]) == (12, "2.1.0")
    assert "no database" in entry["message"]
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00$", entry["time"])


def _https(port: int, path: str, context: ssl.SSLContext, token: bytes | None) -> tuple[int, Any]:
    """One HTTPS GET to the admin API (http.client: no client library of ours)."""
    connection = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=30)
    try:
        headers = {"Authorization": f"Bearer {token.decode()}"} if token is not None else {}
        connection.request("GET", path, headers=headers)
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def test_the_admin_api_over_mutual_tls(tmp_path: Path) -> None:
    """With --admin-tls-cert the API speaks TLS 1.3 only; with --admin-tls-client-ca a
    caller without a certificate that CA signed gets no handshake, and the token is still
    needed on top of the certificate."""
    pki = Pki(tmp_path / "pki")
    server, client = pki.server(), pki.client("operator")
    path, token = token_file(tmp_path)
    proc = serve(
        tmp_path, "--admin", "127.0.0.1:0", "--admin-token-file", str(path),
        "--admin-tls-cert", str(server.cert), "--admin-tls-key", str(server.key),
        "--admin-tls-client-ca", str(pki.ca),
    )  # fmt: skip
    try:
        found = wait_for_line(proc, r"^admin API on 127\.0\.0\.1:(\d+) \(https: /api/v1, ")
        port = int(found.group(1))
        context = ssl.create_default_context(cafile=str(pki.ca))
        context.load_cert_chain(str(client.cert), str(client.key))
        status, body = _https(port, "/api/v1/plugins/echo", context, token)
        assert (status, body["name"]) == (200, "echo")
        assert _https(port, "/api/v1/plugins/echo", context, None)[0] == 401
        anonymous = ssl.create_default_context(cafile=str(pki.ca))
        with pytest.raises((ssl.SSLError, ConnectionError)):
            _https(port, "/health/live", anonymous, None)
        with socket.create_connection(("127.0.0.1", port), timeout=30) as plain:
            plain.sendall(b"GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n")
            assert not plain.recv(1024).startswith(b"HTTP/")  # no plaintext answer
    finally:
        out, err = stop(proc)
    assert proc.returncode == 0, err


def test_admin_tls_flags_without_the_certificate_are_refused(tmp_path: Path) -> None:
    path, _ = token_file(tmp_path)
    proc = serve(
        tmp_path, "--admin", "127.0.0.1:0", "--admin-token-file", str(path),
        "--admin-tls-client-ca", str(tmp_path / "ca.pem"),
    )  # fmt: skip
    out, err = proc.communicate(timeout=60)
    assert proc.returncode != 0
    assert "--admin-tls-client-ca needs --admin-tls-cert PEM" in err


def test_a_non_loopback_admin_address_needs_tls() -> None:
    from nyxplug.admin.options import AdminConfigError, parse_admin_address

    with pytest.raises(AdminConfigError, match=r"or give --admin-tls-cert for TLS$"):
        parse_admin_address("0.0.0.0:8443")
    assert parse_admin_address("0.0.0.0:8443", tls=True) == AdminAddress(host="0.0.0.0", port=8443)
