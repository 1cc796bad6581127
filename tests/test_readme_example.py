"""The README's example program runs and prints exactly what the README says it prints."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

README = (ROOT / "README.md").read_text(encoding="utf-8")
EXAMPLE = re.search(r"## Example\n\n```python\n(.*?)```", README, re.S)
OUTPUT = re.search(r"\nprints\n\n```text\n(.*?)```", README, re.S)


def run_snippet(code: str, tmp_path: Path, pure: bool) -> subprocess.CompletedProcess[str]:
    """Run a README code block as a user would: its own process, a fresh HOME and current
    folder (no host file is read), on the compiled or the pure dispatcher."""
    script = tmp_path / "snippet.py"
    script.write_text(code, encoding="utf-8")
    env = dict(os.environ, PYTHONPATH=str(ROOT), HOME=str(tmp_path))
    env.pop("NYXPLUG_NO_EXTENSIONS", None)
    env.pop("NYXPLUG_CONFIG", None)
    if pure:
        env.pop("NYXPLUG_REQUIRE_EXTENSIONS", None)
        env["NYXPLUG_NO_EXTENSIONS"] = "1"
    return subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=60,
        cwd=tmp_path,
    )  # fmt: skip


@pytest.mark.parametrize("pure", [False, True], ids=["cython", "python"])
def test_readme_example_prints_what_the_readme_says(pure: bool, tmp_path) -> None:
    assert EXAMPLE is not None and OUTPUT is not None
    result = run_snippet(EXAMPLE.group(1), tmp_path, pure)
    assert result.returncode == 0, result.stderr
    assert result.stdout == OUTPUT.group(1)


RECOVERY = re.search(
    r"### Recovery\n.*?```python\n(.*?)```\n\nprints\n\n```text\n(.*?)```", README, re.S
)
ROLLOUT = re.search(
    r"### Versions side by side and rollouts\n.*?```python\n(.*?)```\n\nprints[^\n]*\n\n"
    r"```text\n(.*?)```",
    README,
    re.S,
)


@pytest.mark.parametrize("pure", [False, True], ids=["cython", "python"])
def test_readme_recovery_example_prints_what_the_readme_says(pure: bool, tmp_path) -> None:
    assert RECOVERY is not None
    result = run_snippet(RECOVERY.group(1), tmp_path, pure)
    assert result.returncode == 0, result.stderr
    assert result.stdout == RECOVERY.group(2)


@pytest.mark.parametrize("pure", [False, True], ids=["cython", "python"])
def test_readme_rollout_example(pure: bool, tmp_path) -> None:
    assert ROLLOUT is not None
    result = run_snippet(ROLLOUT.group(1), tmp_path, pure)
    assert result.returncode == 0, result.stderr
    assert result.stdout == ROLLOUT.group(2)


RUNTIME_VERSIONS = re.search(
    r"### Versions and rollouts in the runtime\n.*?```python\n(.*?)```\n\nprints[^\n]*\n\n"
    r"```text\n(.*?)```",
    README,
    re.S,
)


@pytest.mark.parametrize("pure", [False, True], ids=["cython", "python"])
def test_readme_runtime_versions_example(pure: bool, tmp_path) -> None:
    assert RUNTIME_VERSIONS is not None
    result = run_snippet(RUNTIME_VERSIONS.group(1), tmp_path, pure)
    assert result.returncode == 0, result.stderr
    assert result.stdout == RUNTIME_VERSIONS.group(2)
