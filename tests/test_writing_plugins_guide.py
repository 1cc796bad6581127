"""docs/writing-plugins.md runs as written: every ``$`` line, in order, in an empty folder.

``HOME`` is that folder, so the per-user host the commands use (``~/.nyxplug``) is a fresh
one; the ``nyxplug`` and ``python`` found first on ``PATH`` are this environment's. A file
block (```` ```python file=PATH ````) is written where it stands. A command ending in ``&``
runs in the background; the runner waits for its ready line (``watching ...``), as the guide
tells the reader to, and stops it with SIGTERM at the end (it must drain and exit 0).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from conftest import ROOT

GUIDE = ROOT / "docs" / "writing-plugins.md"
BLOCK = re.compile(r"^```(\w+)([^\n]*)\n(.*?)^```", re.S | re.M)

#: What some commands must print (regexes searched in stdout), beyond exiting 0.
EXPECTED = {
    "python -m pytest -q tests/test_greeter.py": (
        r"(?m)^4 passed",
        r"(?m)^test_greeter_plugin_throughput +\d",  # the benchmark's row
        r"OPS \(",
    ),
    "python -m pytest -q tests --benchmark-disable": (r"(?m)^9 passed",),
    "nyxplug validate plugins/greeter": (r"^OK greeter 0\.1\.0",),
    "nyxplug send greeter --type DATA --payload hi": (r"stats: 1 frames, 0 errors",),
    "nyxplug send greeter --type DATA --payload again": (r"stats: 2 frames, 0 errors",),
    "nyxplug reload greeter": (r"reloaded greeter 0\.[12]\.0 -> 0\.2\.0",),
    "nyxplug list": (r"(?m)^greeter +0\.[12]\.0 ",),
}


def steps(text: str) -> list[tuple[str, str, str]]:
    """("command", line, "") and ("file", path, content), in the guide's order."""
    out: list[tuple[str, str, str]] = []
    for match in BLOCK.finditer(text):
        language, info, body = match[1], match[2].strip(), match[3]
        if language == "console":
            out += [("command", line[2:].strip(), "") for line in body.splitlines()
                    if line.startswith("$ ")]  # fmt: skip
        elif info.startswith("file="):
            out.append(("file", info.removeprefix("file="), body))
    return out


class Background:
    """A command started with ``&``: its output is read by a thread, the ready line awaited."""

    def __init__(self, command: str, cwd: Path, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            ["bash", "-c", f"exec {command}"], cwd=cwd, env=env, text=True,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )  # fmt: skip
        self.lines: list[str] = []
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)
            if line.startswith("watching "):
                self.ready.set()
        self.ready.set()

    def stop(self) -> tuple[int, str]:
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=30)
        self.thread.join(timeout=30)
        assert self.proc.stdout is not None
        self.proc.stdout.close()
        return code, "".join(self.lines)


def test_the_guide_runs_as_written(tmp_path: Path) -> None:
    text = GUIDE.read_text(encoding="utf-8")
    plan = steps(text)
    commands = [line for kind, line, _ in plan if kind == "command"]
    assert set(EXPECTED) <= set(commands), set(EXPECTED) - set(commands)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NYXPLUG_", "PYTEST_"))}
    if os.environ.get("NYXPLUG_NO_EXTENSIONS"):
        env["NYXPLUG_NO_EXTENSIONS"] = os.environ["NYXPLUG_NO_EXTENSIONS"]
    env["HOME"] = str(tmp_path)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["PYTHONPATH"] = str(ROOT)
    background: list[Background] = []
    try:
        for kind, line, body in plan:
            if kind == "file":
                path = tmp_path / line
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(body, encoding="utf-8")
                continue
            if line.endswith("&"):
                started = Background(line[:-1].strip(), tmp_path, env)
                background.append(started)
                assert started.ready.wait(60) and started.proc.poll() is None, started.lines
                continue
            done = subprocess.run(
                ["bash", "-c", line], cwd=tmp_path, env=env, capture_output=True, text=True,
                timeout=120,
            )  # fmt: skip
            assert done.returncode == 0, f"$ {line}\n{done.stdout}\n{done.stderr}"
            for pattern in EXPECTED.get(line, ()):
                assert re.search(pattern, done.stdout), f"$ {line}\n{pattern}\n{done.stdout}"
    finally:
        outcomes = [host.stop() for host in background]
    assert [code for code, _ in outcomes] == [0], outcomes
    assert "unloaded 1 plugin" in outcomes[0][1], outcomes[0][1]


@pytest.mark.parametrize("kind", ["async", "sync", "batch", "isolated"])
def test_every_kind_the_guide_names_is_offered(kind: str) -> None:
    text = GUIDE.read_text(encoding="utf-8")
    assert f"| `{kind}`" in text


def test_the_readme_kit_example_passes(tmp_path: Path) -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    found = re.search(
        r"### Testing plugins: `nyxplug.testing`\n.*?```python\n(.*?)```", readme, re.S
    )
    assert found is not None
    (tmp_path / "test_readme_kit.py").write_text(found[1], encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    env["PYTHONPATH"] = str(ROOT)

    def run(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, *argv], cwd=tmp_path, env=env, capture_output=True, text=True,
            timeout=120,
        )  # fmt: skip

    assert run("-m", "nyxplug", "new", "greeter", "--dir", "plugins").returncode == 0
    done = run("-m", "pytest", "-q", "-p", "no:cacheprovider", "test_readme_kit.py")
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(r"(?m)^2 passed", done.stdout), done.stdout
