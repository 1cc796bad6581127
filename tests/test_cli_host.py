"""The host options of ``nyxplug``: read in one place, the same way for every command.

``nyxplug.cli._host.host_config`` turns ``--config``, ``--plugin-dir``, ``--state-dir``
and ``--allow-unsigned`` into the host's ``HostConfig``; ``run`` reports a command's
problems. The commands' own behaviour is tested in ``test_cli_*.py``.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from nyxplug._errors import NyxplugError
from nyxplug.cli import _host, build_parser
from nyxplug.cli._common import Problem
from nyxplug.cli.plugins import EXAMPLES_DIR
from nyxplug.config import ConfigError

COMMANDS_WITH_HOST_OPTIONS = [
    ["list"],
    ["run"],
    ["reload", "x"],
    ["keygen"],
    ["verify", "p.nyxp"],
    ["install", "p.nyxp"],
    ["trust", "list"],
    ["audit"],
]


@pytest.fixture
def host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A clean environment in an empty current directory, with HOME inside it."""
    for name in list(os.environ):
        if name.startswith("NYXPLUG_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize("command", COMMANDS_WITH_HOST_OPTIONS, ids=" ".join)
def test_state_dir_is_applied_the_same_way_for_every_command(
    host: Path, command: list[str]
) -> None:
    args = build_parser().parse_args([*command, "--state-dir", "~/state"])
    config = _host.host_config(args)
    assert config.runtime.state_dir == str(host / "home" / "state")
    assert config.trust_store_path == host / "home" / "state" / "trust.json"


@pytest.mark.parametrize("command", COMMANDS_WITH_HOST_OPTIONS, ids=" ".join)
def test_without_options_the_configuration_is_the_files(host: Path, command: list[str]) -> None:
    (host / "host.toml").write_text(
        '[runtime]\nplugin_dirs = ["p"]\nstate_dir = "var"\nrequire_signatures = true\n'
    )
    args = build_parser().parse_args([*command, "--config", "host.toml"])
    runtime = _host.host_config(args).runtime
    assert (runtime.plugin_dirs, runtime.state_dir) == ((str(host / "p"),), str(host / "var"))
    assert runtime.require_signatures


def test_plugin_options_replace_the_files(host: Path) -> None:
    (host / "host.toml").write_text('[runtime]\nplugin_dirs = ["p"]\nstate_dir = "var"\n')
    args = build_parser().parse_args(
        ["list", "--config", "host.toml", "--plugin-dir", "a", "--plugin-dir", "~/b",
         "--state-dir", "s", "--allow-unsigned"]
    )  # fmt: skip
    config = _host.host_config(args)
    assert config.runtime.plugin_dirs == (str(host / "a"), str(host / "home" / "b"))
    assert config.runtime.state_dir == str(host / "s")
    assert not config.runtime.require_signatures
    manager = _host.plugin_manager(config)
    assert manager.plugin_dirs == [host / "a", host / "home" / "b"]
    assert manager.state_dir == host / "s"
    assert not manager.require_signatures and not manager.include_registered


def _raises(exc: BaseException) -> int:
    raise exc


@pytest.mark.parametrize(
    ("exc", "line"),
    [
        (Problem("it broke - fix it"), "nyxplug cmd: it broke - fix it\n"),
        (
            ConfigError("h.toml", "runtime.state_dir", "Expected `str`, got `int`"),
            "nyxplug cmd: Invalid configuration h.toml: Expected `str`, got `int` - at "
            "`runtime.state_dir`\n",
        ),
        (
            PermissionError(13, "Permission denied", "/x/y"),
            "nyxplug cmd: /x/y: Permission denied - check the path and its permissions\n",
        ),
        (Problem("two\nlines   and  spaces"), "nyxplug cmd: two lines and spaces\n"),
    ],
    ids=["problem", "config", "oserror", "one-line"],
)
def test_a_problem_is_one_line_and_exit_status_1(
    exc: Exception, line: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _host.run("cmd", lambda _args: _raises(exc), argparse.Namespace()) == 1
    assert capsys.readouterr() == ("", line)


@pytest.mark.parametrize("exc", [NyxplugError("a bug"), KeyError("a bug")], ids=repr)
def test_anything_else_keeps_its_traceback(exc: Exception) -> None:
    with pytest.raises(type(exc)) as caught:
        _host.run("cmd", lambda _args: _raises(exc), argparse.Namespace())
    assert caught.value is exc


# -- one host, whichever folder a command runs in (issue 15 item 15) ---------------------


def _nyxplug(home: Path, cwd: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    """``python -m nyxplug ARGV`` in ``cwd`` with a fresh HOME and no ``NYXPLUG_*`` set."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("NYXPLUG_")}
    env.update(HOME=str(home), NYXPLUG_ENTRY_POINTS="0")
    if "NYXPLUG_REQUIRE_EXTENSIONS" in os.environ:
        env["NYXPLUG_REQUIRE_EXTENSIONS"] = os.environ["NYXPLUG_REQUIRE_EXTENSIONS"]
    return subprocess.run(
        [sys.executable, "-m", "nyxplug", *argv], cwd=cwd, env=env, capture_output=True,
        text=True, timeout=60, stdin=subprocess.DEVNULL,
    )  # fmt: skip


def _ok(home: Path, cwd: Path, *argv: str) -> str:
    done = _nyxplug(home, cwd, *argv)
    assert (done.returncode, done.stderr) == (0, ""), (argv, done.stdout, done.stderr)
    return done.stdout


@pytest.fixture
def publisher(tmp_path: Path) -> tuple[Path, Path]:
    """A fresh HOME and a folder holding the example plugin ``fast``, packaged (unsigned)."""
    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir()
    shutil.copytree(EXAMPLES_DIR / "fast", work / "fast", ignore=shutil.ignore_patterns("__py*"))
    _ok(home, work, "package", "fast")
    return home, work


def test_commands_in_different_folders_act_on_the_per_user_host(
    tmp_path: Path, publisher: tuple[Path, Path]
) -> None:
    home, work = publisher
    elsewhere = tmp_path / "elsewhere" / "deeper"
    elsewhere.mkdir(parents=True)
    state = home / ".nyxplug"
    out = _ok(home, work, "keygen", "--name", "me")
    assert f"  Host: {state} (from the per-user default)\n" in out
    _ok(home, work, "sign", "fast-1.0.0.nyxp")
    out = _ok(home, elsewhere, "install", str(work / "fast-1.0.0.nyxp"))
    assert out.startswith(f"Installed fast 1.0.0 (id 1) in {state / 'packages' / 'fast'}\n")
    assert f"  Host: {state} (from the per-user default)\n" in out
    assert "me" in _ok(home, tmp_path, "trust", "list").splitlines()[3].split()
    assert not (work / ".nyxplug").exists() and not (elsewhere / ".nyxplug").exists()


def test_the_nearest_host_file_names_the_host(tmp_path: Path, publisher: tuple[Path, Path]) -> None:
    home, work = publisher
    project = tmp_path / "project"
    (project / "sub" / "dir").mkdir(parents=True)
    (project / "nyxplug.host.toml").write_text('[runtime]\nstate_dir = "var"\n')
    out = _ok(home, project / "sub", "keygen", "--name", "me")
    host_file = project / "nyxplug.host.toml"
    assert f"  Host: {project / 'var'} (from {host_file})\n" in out
    _ok(home, work, "sign", "fast-1.0.0.nyxp")
    out = _ok(home, project / "sub" / "dir", "install", str(work / "fast-1.0.0.nyxp"))
    assert f"in {project / 'var' / 'packages' / 'fast'}\n" in out
    # Outside the project, the per-user host does not trust the key: the hint says whose.
    done = _nyxplug(home, work, "install", "fast-1.0.0.nyxp")
    pub = home / ".nyxplug" / "keys" / "me.pub"
    assert done.returncode == 1 and done.stdout == ""
    assert re.fullmatch(
        rf"nyxplug install: Refused \S*fast-1\.0\.0\.nyxp \(plugin 'fast'\) \[untrusted-key\]: "
        rf"signed by your own key me \({re.escape(str(pub))}\), which is not trusted on this "
        rf"host \({re.escape(str(home / '.nyxplug'))}\) - run `nyxplug trust add "
        rf"{re.escape(str(pub))}`\n",
        done.stderr,
    ), done.stderr
