"""``nyxplug new / validate / list / info / enable / disable`` on real folders in tmp_path."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

from nyxplug import FrameType, PermissionDenied, PluginHeader
from nyxplug.cli import main
from nyxplug.cli.plugins import EXAMPLES_DIR, default_plugin_id
from nyxplug.plugins import PluginManager
from nyxplug.source.layout import NAME_PATTERN

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ("fast", "limited", "slow")

GOOD_MANIFEST = """\
[plugin]
name = "{name}"
id = {id}
version = "1.0.0"
entry = "mod:Thing"
api = ">=1.0, <2"
tags = ["t1"]

[permissions]
frames = ["DATA_ACCESS"]
"""
GOOD_MODULE = """\
class Thing:
    async def handle(self, message):
        pass
"""


@pytest.fixture
def host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A clean host in tmp_path: no NYXPLUG_* from outside, state in tmp_path/state."""
    for name in list(os.environ):
        if name.startswith("NYXPLUG_") and name != "NYXPLUG_REQUIRE_EXTENSIONS":
            monkeypatch.delenv(name)
    monkeypatch.setenv("NYXPLUG_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("NYXPLUG_ENTRY_POINTS", "0")
    # A developer's host: plugin folders straight from the editor, unsigned.
    monkeypatch.setenv("NYXPLUG_REQUIRE_SIGNATURES", "0")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "plugins").mkdir()
    return tmp_path


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def write_plugin(parent: Path, name: str, manifest: str, module: str = GOOD_MODULE) -> Path:
    folder = parent / name
    folder.mkdir(parents=True)
    (folder / "nyxplug.toml").write_text(manifest)
    (folder / "mod.py").write_text(module)
    return folder


def row(out: str, name: str) -> list[str]:
    """The cells of ``name``'s row in ``nyxplug list`` output."""
    for line in out.splitlines():
        cells = line.split()
        if cells and cells[0] == name:
            return cells
    raise AssertionError(f"no row for {name!r} in:\n{out}")


# -- the whole round trip ----------------------------------------------------------------


def test_new_validate_list_info_disable_enable(
    host: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plugins = host / "plugins"
    code, out, err = cli(capsys, "new", "echo-bot", "--dir", "plugins")
    expected_id = zlib.crc32(b"echo-bot") & 0x7FFFFFFF
    assert (code, err) == (0, "")
    assert out.startswith(
        f"Created plugin 'echo-bot' (id {expected_id}) in plugins{os.sep}echo-bot"
    )
    assert sorted(p.name for p in (plugins / "echo-bot").iterdir()) == [
        "echo_bot_plugin.py", "nyxplug.toml"
    ]  # fmt: skip
    assert sorted(p.name for p in (host / "tests").iterdir()) == ["test_echo_bot.py"]
    assert out.endswith(
        f"  python -m pytest -q {Path('tests', 'test_echo_bot.py')}\n"
        f"  nyxplug run --allow-unsigned --plugin-dir plugins\n"
        "  nyxplug package plugins/echo-bot && nyxplug sign ... && nyxplug install ...  "
        "(to ship it)\n"
    )

    code, out, err = cli(capsys, "validate", "plugins/echo-bot")
    assert (code, out, err) == (0, f"OK echo-bot 0.1.0 (id {expected_id})\n", "")

    code, out, err = cli(capsys, "list", "--plugin-dir", "plugins")
    assert (code, err) == (0, "")
    assert out.splitlines()[0].split() == [
        "NAME", "VERSION", "ID", "STATE", "SOURCE", "SIGNER"
    ]  # fmt: skip
    assert row(out, "echo-bot") == [
        "echo-bot", "0.1.0", str(expected_id), "validated", "directory", "unsigned"
    ]  # fmt: skip

    code, out, err = cli(capsys, "info", "echo-bot", "--plugin-dir", "plugins")
    assert (code, err) == (0, "")
    assert re.search(r"^state: +validated$", out, re.M)
    assert re.search(rf"^location: +{re.escape(str(plugins / 'echo-bot'))}$", out, re.M)
    assert re.search(r"^permissions: +DATA_ACCESS$", out, re.M)
    assert re.search(r"^\[resources\]\n  capacity: +100 \(host default\)$", out, re.M)
    assert re.search(r"^  memory_limit: +not set$", out, re.M)  # in-process: not enforced
    assert re.search(r"^\[config\]\n  greeting: hello$", out, re.M)
    assert re.search(r"^\[dependencies\]\n  \(none\)$", out, re.M)

    code, out, err = cli(capsys, "disable", "echo-bot", "--plugin-dir", "plugins")
    assert (code, err) == (0, "")
    assert out.startswith("echo-bot: disabled; it will not load until `nyxplug enable echo-bot`")
    code, out, _ = cli(capsys, "list", "--plugin-dir", "plugins")
    assert row(out, "echo-bot")[3] == "disabled"
    assert "    disabled: disabled by the operator" in out
    # Remembered under the state dir: a new manager (a restart) sees it disabled.
    later = PluginManager(
        plugin_dirs=[plugins],
        state_dir=host / "state",
        entry_points=False,
        require_signatures=False,
    )
    status = {s.name: s for s in later.discover()}["echo-bot"]
    assert (status.state, status.enabled) == ("disabled", False)
    # validate ignores the host's state: it checks the folder
    assert cli(capsys, "validate", "plugins/echo-bot")[0] == 0

    code, out, err = cli(capsys, "enable", "echo-bot", "--plugin-dir", "plugins")
    assert (code, err) == (0, "")
    assert out.startswith("echo-bot: enabled; now validated")
    assert row(cli(capsys, "list", "--plugin-dir", "plugins")[1], "echo-bot")[3] == "validated"
    again = PluginManager(
        plugin_dirs=[plugins],
        state_dir=host / "state",
        entry_points=False,
        require_signatures=False,
    )
    status = {s.name: s for s in again.discover()}["echo-bot"]
    assert (status.state, status.enabled) == ("validated", True)


def test_new_then_validate_and_the_generated_test_in_subprocesses(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NYXPLUG_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env["NYXPLUG_STATE_DIR"] = str(tmp_path / "state")

    def run(*argv: str, cwd: Path = tmp_path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, *argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=60
        )

    made = run("-m", "nyxplug", "new", "counter", "--id", "4242")
    assert made.returncode == 0, made.stderr
    checked = run("-m", "nyxplug", "validate", "counter")
    assert (checked.returncode, checked.stdout, checked.stderr) == (
        0, "OK counter 0.1.0 (id 4242)\n", ""
    )  # fmt: skip
    assert sorted(p.name for p in (tmp_path / "counter").iterdir()) == [
        "counter_plugin.py", "nyxplug.toml"
    ]  # fmt: skip
    tested = run("-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_counter.py")
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert re.search(r"^2 passed", tested.stdout, re.M), tested.stdout
    # the benchmark's row: times per frame, OPS in frames per second
    assert re.search(r"^test_counter_plugin_throughput +\d", tested.stdout, re.M), tested.stdout


def test_the_generated_test_survives_a_rewritten_class(tmp_path: Path) -> None:
    """Issue 15 item 21: the test drives a real host, not the template's attributes.

    The author replaces the class body (no ``frames``, no ``last_payload``, another
    name); the generated test still passes from another folder, and still catches a
    handler that raises.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("NYXPLUG_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))

    def run(*argv: str, cwd: Path = tmp_path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, *argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=60
        )

    made = run("-m", "nyxplug", "new", "echo-bot", "--dir", "plugins")
    assert made.returncode == 0, made.stderr
    code = tmp_path / "plugins" / "echo-bot" / "echo_bot_plugin.py"
    manifest = code.with_name("nyxplug.toml")
    manifest.write_text(manifest.read_text().replace(":EchoBotPlugin", ":Echo"))
    code.write_text(
        "class Echo:\n"
        "    async def handle(self, message):\n"
        "        return bytes(reversed(message.payload))\n"
    )
    test = ["-m", "pytest", "-q", "-p", "no:cacheprovider", "--benchmark-disable"]
    test.append(str(tmp_path / "tests"))
    tested = run(*test, cwd=tmp_path / "plugins")
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert re.search(r"^2 passed", tested.stdout, re.M), tested.stdout

    code.write_text("class Echo:\n    async def handle(self, message):\n        1 / 0\n")
    tested = run(*test)
    assert tested.returncode == 1, tested.stdout + tested.stderr
    assert "HandlerError" in tested.stdout and "ZeroDivisionError" in tested.stdout, tested.stdout


# -- new ----------------------------------------------------------------------------------


def test_new_defaults_to_the_current_directory_and_a_stable_id(
    host: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli(capsys, "new", "a")[0] == 0
    manifest = (host / "a" / "nyxplug.toml").read_text()
    assert f"\nid = {default_plugin_id('a')} " in manifest
    assert default_plugin_id("a") == zlib.crc32(b"a") & 0x7FFFFFFF
    assert 'entry = "a_plugin:APlugin"' in manifest
    for table in ("plugin", "permissions", "sandbox", "resources", "config", "dependencies"):
        assert f"\n[{table}]\n" in manifest


def test_new_with_an_id(host: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(capsys, "new", "x_y", "--id", "0x10", "--dir", "plugins")[0] == 0
    assert "\nid = 16 " in (host / "plugins" / "x_y" / "nyxplug.toml").read_text()
    assert cli(capsys, "validate", "plugins/x_y")[1] == "OK x_y 0.1.0 (id 16)\n"


def test_run_sends_frames_to_a_new_plugin_and_shows_what_it_did(
    host: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli(capsys, "new", "greeter", "--dir", "plugins")[0] == 0
    code, out, err = cli(capsys, "run", "--plugin-dir", "plugins", "--frames", "4")
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert any(
        line.startswith("greeter 0.1.0 (id ") and line.endswith(": active") for line in lines
    )
    assert "  log nyxplug.plugin.greeter: greeter unloaded after 4 frames" in out
    assert [
        line.split() for line in lines if line.startswith("greeter ") and "active" not in line
    ] == [["greeter", "4", "0", "0"]]


def test_run_reports_a_plugin_that_fails_to_load(
    host: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli(capsys, "new", "good", "--dir", "plugins")[0] == 0
    assert cli(capsys, "new", "bad", "--dir", "plugins")[0] == 0
    (host / "plugins" / "bad" / "bad_plugin.py").write_text("raise ImportError('nope')\n")
    code, out, _err = cli(capsys, "run", "--plugin-dir", "plugins", "--frames", "1")
    assert code == 1
    assert "bad 0.1.0 (id " in out and "failed - import failed: ImportError: nope" in out
    assert "good 0.1.0 (id " in out


def test_a_deeply_nested_manifest_fails_that_plugin_alone(
    host: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 15 item 5: a 10 KB ``a = [[[...]]]`` stopped the host with RecursionError."""
    assert cli(capsys, "new", "good", "--dir", "plugins")[0] == 0
    nested = host / "plugins" / "nested"
    nested.mkdir()
    (nested / "nyxplug.toml").write_text("a = " + "[" * 5000 + "]" * 5000 + "\n")
    reason = (
        f"Invalid manifest {nested / 'nyxplug.toml'}: Expected arrays and tables nested at "
        "most 32 levels deep, got deeper nesting at line 1 - flatten that value"
    )
    code, out, err = cli(capsys, "run", "--plugin-dir", "plugins", "--frames", "3")
    assert (code, err) == (1, "")
    assert re.search(r"^good 0\.1\.0 \(id \d+\): active$", out, re.M), out
    assert re.search(rf"^nested .*: failed - {re.escape(reason)}$", out, re.M), out
    assert [line.split() for line in out.splitlines() if line.startswith("good ")][-1] == [
        "good", "3", "0", "0"
    ]  # fmt: skip
    code, out, err = cli(capsys, "list", "--plugin-dir", "plugins")
    assert (code, err) == (0, "")
    assert row(out, "nested") == ["nested", "-", "-", "failed", "directory", "unsigned"]
    assert f"    failed: {reason}\n" in out


def test_an_installed_package_hiding_the_folder_is_said_where_the_user_looks(
    host: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 15 item 16: 0.5.0 installed, the folder edited: ``run`` ran the package silently.

    (A folder with *another* version than the package is another version of the plugin
    since issue 19: the highest runs - see test_a_folder_of_a_newer_version_runs_beside.)"""
    manifest = host / "plugins" / "greeter" / "nyxplug.toml"
    assert cli(capsys, "new", "greeter", "--dir", "plugins")[0] == 0
    manifest.write_text(manifest.read_text().replace('"0.1.0"', '"0.5.0"'))
    assert cli(capsys, "package", "plugins/greeter")[0] == 0
    assert cli(capsys, "install", "greeter-0.5.0.nyxp")[0] == 0
    (host / "plugins" / "greeter" / "extra.py").write_text("EDITED = True\n")
    package, folder = host / "state" / "packages" / "greeter", host / "plugins" / "greeter"
    warning = (
        f"the installed package {package} (0.5.0) runs instead of the folder {folder} (0.5.0) "
        "- `nyxplug uninstall greeter` to run the folder, or install 0.5.0 (`nyxplug package "
        f"{folder}`, then `nyxplug sign` and `nyxplug install` the .nyxp)"
    )
    plugin_id = default_plugin_id("greeter")

    caplog.set_level(logging.WARNING, logger="nyxplug.runtime")
    code, out, err = cli(capsys, "run", "--plugin-dir", "plugins", "--frames", "1")
    assert (code, err) == (0, "")
    assert f"greeter 0.5.0 (id {plugin_id}): active\n  warning: {warning}\n" in out
    assert [(r.name, r.levelname, r.getMessage()) for r in caplog.records] == [
        ("nyxplug.runtime", "WARNING", f"Plugin 'greeter': {warning}")
    ]
    assert cli(capsys, "validate", "plugins/greeter") == (
        0, f"OK greeter 0.5.0 (id {plugin_id})\nwarning: {warning}\n", ""
    )  # fmt: skip
    code, out, _ = cli(capsys, "info", "greeter", "--plugin-dir", "plugins")
    assert code == 0
    assert re.search(rf"^shadows: +{re.escape(warning)}$", out, re.M), out
    code, out, _ = cli(capsys, "list", "--plugin-dir", "plugins")
    assert out.endswith(f"Discovery errors:\n  Plugin 'greeter': {warning}\n")

    # The command it names switches: the folder runs, and nothing is said any more.
    assert cli(capsys, "uninstall", "greeter")[0] == 0
    caplog.clear()
    code, out, _ = cli(capsys, "run", "--plugin-dir", "plugins", "--frames", "1")
    assert f"greeter 0.5.0 (id {plugin_id}): active\n" in out
    assert "warning" not in out and not caplog.records
    assert cli(capsys, "validate", "plugins/greeter")[1] == f"OK greeter 0.5.0 (id {plugin_id})\n"


def test_a_folder_of_a_newer_version_runs_beside_the_installed_package(
    host: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 19: another version in a folder is a version of the plugin: the highest runs."""
    manifest = host / "plugins" / "greeter" / "nyxplug.toml"
    assert cli(capsys, "new", "greeter", "--dir", "plugins")[0] == 0
    manifest.write_text(manifest.read_text().replace('"0.1.0"', '"0.5.0"'))
    assert cli(capsys, "package", "plugins/greeter")[0] == 0
    assert cli(capsys, "install", "greeter-0.5.0.nyxp")[0] == 0
    manifest.write_text(manifest.read_text().replace('"0.5.0"', '"0.7.0"'))
    code, out, err = cli(capsys, "run", "--plugin-dir", "plugins", "--frames", "1")
    assert (code, err) == (0, "")
    assert f"greeter 0.7.0 (id {default_plugin_id('greeter')}): active\n" in out
    assert "warning" not in out
    # validate says the folder is another version, not that the package hides it.
    assert cli(capsys, "validate", "plugins/greeter") == (
        0,
        f"OK greeter 0.7.0 (id {default_plugin_id('greeter')})\nnote: plugin greeter: this "
        "folder is version 0.7.0; version 0.5.0 is installed - both are versions of greeter "
        "(`nyxplug versions greeter`)\n",
        "",
    )


@pytest.mark.parametrize("name", ["Echo", "1st", "has space", "a" * 65, "", "_x", "é", "a.b"])
def test_new_refuses_an_invalid_name(
    host: Path, capsys: pytest.CaptureFixture[str], name: str
) -> None:
    with pytest.raises(SystemExit) as exc_info:
        main(["new", name])
    assert exc_info.value.code == 2
    err = capsys.readouterr().err
    assert re.search(
        r"^nyxplug new: error: argument NAME: expected a plugin name matching "
        rf"{re.escape(NAME_PATTERN)} .*, got {re.escape(repr(name))}$",
        err,
        re.M,
    ), err
    assert sorted(p.name for p in host.iterdir()) == ["plugins"]


@pytest.mark.parametrize("plugin_id", ["-1", "4294967296", "seven"])
def test_new_refuses_an_invalid_id(
    host: Path, capsys: pytest.CaptureFixture[str], plugin_id: str
) -> None:
    with pytest.raises(SystemExit) as exc_info:
        main(["new", "ok", "--id", plugin_id])
    assert exc_info.value.code == 2
    assert "argument --id: expected" in capsys.readouterr().err


def test_new_refuses_an_existing_folder(host: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (host / "plugins" / "taken").mkdir()
    (host / "plugins" / "taken" / "keep.txt").write_text("mine")
    code, out, err = cli(capsys, "new", "taken", "--dir", "plugins")
    assert (code, out) == (1, "")
    assert err == (
        f"nyxplug new: plugins{os.sep}taken already exists - choose another NAME or --dir, "
        "or remove it\n"
    )
    assert [p.name for p in (host / "plugins" / "taken").iterdir()] == ["keep.txt"]


# -- validate -----------------------------------------------------------------------------


BROKEN = {
    "version": (
        GOOD_MANIFEST.replace('"1.0.0"', '"1.0"'), GOOD_MODULE,
        r"Invalid manifest .*nyxplug\.toml: Expected a semantic version like `1\.2\.3`, "
        r"got `1\.0` - .* - at `plugin\.version`",
    ),
    "unknown-key": (
        GOOD_MANIFEST + "\n[resources]\ncapacty = 4\n", GOOD_MODULE,
        r"Invalid manifest .*: Unknown key `capacty` \(did you mean `capacity`\?\) "
        r"- at `resources\.capacty`",
    ),
    "permission": (
        GOOD_MANIFEST.replace('"DATA_ACCESS"', '"DATA"'), GOOD_MODULE,
        r"Invalid manifest .*: Expected one of .*, got `DATA` - at `permissions\.frames\[0\]`",
    ),
    "api": (
        GOOD_MANIFEST.replace('">=1.0, <2"', '">=2.0, <3"'), GOOD_MODULE,
        r"Invalid manifest .*nyxplug\.toml: Expected a plugin-API range containing `1\.0\.0` "
        r".*, got `>=2\.0, <3` - at `plugin\.api`",
    ),
    "module": (
        GOOD_MANIFEST.replace("mod:Thing", "missing:Thing"), GOOD_MODULE,
        r"Plugin 'broken' failed to load at import: ImportError: Expected module 'missing' .*",
    ),
    "attr": (
        GOOD_MANIFEST.replace("mod:Thing", "mod:Other"), GOOD_MODULE,
        r"Plugin 'broken' failed to load at import: ImportError: Expected 'Other' in module "
        r"'mod' .* - check \[plugin\] entry",
    ),
    "syntax": (
        GOOD_MANIFEST, "class Thing(:\n",
        r"Plugin 'broken' failed to load at import: SyntaxError: .*",
    ),
    "on_load": (
        GOOD_MANIFEST,
        GOOD_MODULE + "    async def on_load(self, ctx):\n        raise RuntimeError('no db')\n",
        r"Plugin 'broken' failed to load at on_load: RuntimeError: no db",
    ),
    "health": (
        GOOD_MANIFEST,
        GOOD_MODULE + "    async def health(self):\n        return False\n",
        r"Plugin 'broken' failed to load at health: RuntimeError: health\(\) returned False",
    ),
    "on_unload": (
        GOOD_MANIFEST,
        GOOD_MODULE + "    async def on_unload(self):\n        raise OSError('bye')\n",
        r"Plugin 'broken': on_unload raised OSError: bye",
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", list(BROKEN))
def test_validate_reports_a_broken_plugin_in_one_line(
    host: Path, capsys: pytest.CaptureFixture[str], case: str
) -> None:
    manifest, module, message = BROKEN[case]
    write_plugin(host / "plugins", "broken", manifest.format(name="broken", id=5), module)
    code, out, err = cli(capsys, "validate", "plugins/broken")
    assert (code, out) == (1, "")
    assert re.fullmatch(rf"nyxplug validate: {message}\n", err), err


def test_validate_a_folder_without_manifest(host: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = cli(capsys, "validate", "plugins")
    assert (code, out) == (1, "")
    assert err == (
        "nyxplug validate: plugins has no nyxplug.toml - give a plugin folder "
        "(create one with `nyxplug new NAME`)\n"
    )


def test_validate_reports_a_sibling_with_the_same_id(
    host: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_plugin(host / "plugins", "aaa", GOOD_MANIFEST.format(name="aaa", id=9))
    write_plugin(host / "plugins", "bbb", GOOD_MANIFEST.format(name="bbb", id=9))
    code, _, err = cli(capsys, "validate", "plugins/bbb")
    assert code == 1
    assert re.fullmatch(
        r"nyxplug validate: bbb 1\.0\.0 \(id 9\): plugin id 9 is already used by 'aaa' - .*\n", err
    ), err


# -- list, info ---------------------------------------------------------------------------


def test_list_shows_a_broken_folder_failed_with_its_reason(
    host: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plugins = host / "plugins"
    write_plugin(plugins, "good", GOOD_MANIFEST.format(name="good", id=1))
    write_plugin(
        plugins, "bad", GOOD_MANIFEST.format(name="bad", id=2).replace("id = 2", "id = -2")
    )
    code, out, err = cli(capsys, "list", "--plugin-dir", "plugins", "--plugin-dir", "missing")
    assert (code, err) == (0, "")
    assert row(out, "good") == ["good", "1.0.0", "1", "validated", "directory", "unsigned"]
    assert row(out, "bad") == ["bad", "-", "-", "failed", "directory", "unsigned"]
    assert re.search(
        r"^    failed: Invalid manifest .*bad.nyxplug\.toml: .*`-2`.* - at `plugin\.id`$", out, re.M
    ), out
    assert "Discovery errors" not in out
    assert out.endswith(
        "Plugin folder missing does not exist yet: create a plugin in it with `nyxplug new "
        "NAME --dir missing`, or name another folder with --plugin-dir DIR (or "
        "runtime.plugin_dirs in nyxplug.host.toml).\n"
    )
    code, out, _ = cli(capsys, "list", "--plugin-dir", "plugins", "--state", "failed")
    assert [line.split()[0] for line in out.splitlines()] == ["NAME", "bad", "failed:"]
    code, out, _ = cli(capsys, "list", "--plugin-dir", "plugins", "--tag", "t1")
    assert [line.split()[0] for line in out.splitlines()] == ["NAME", "good"]
    code, out, _ = cli(capsys, "list", "--plugin-dir", "plugins", "--tag", "nope")
    assert out == f"No plugins with tag nope (searched {host / 'plugins'})\n"


def test_list_refuses_an_unknown_state(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc_info:
        main(["list", "--state", "sleeping"])
    assert exc_info.value.code == 2
    assert "argument --state: invalid choice: 'sleeping'" in capsys.readouterr().err


def test_info_of_an_unknown_plugin(host: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_plugin(host / "plugins", "good", GOOD_MANIFEST.format(name="good", id=1))
    for command in ("info", "enable", "disable"):
        code, out, err = cli(capsys, command, "nope", "--plugin-dir", "plugins")
        assert (code, out) == (1, "")
        assert err == (
            f"nyxplug {command}: No plugin named 'nope' in the catalog; known plugins: good "
            "- run `nyxplug list`\n"
        )


def test_info_of_a_failed_plugin_shows_the_reason(
    host: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = GOOD_MANIFEST.format(name="late", id=1).replace(">=1.0, <2", ">=9.0")
    write_plugin(host / "plugins", "late", manifest)
    code, out, err = cli(capsys, "info", "late", "--plugin-dir", "plugins")
    assert (code, err) == (0, "")
    assert re.search(r"^state: +failed$", out, re.M)
    assert re.search(r"^reason: +Invalid manifest .*`>=9\.0` - at `plugin\.api`$", out, re.M), out


def test_info_with_resources_config_and_dependencies(
    host: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_plugin(host / "plugins", "base", GOOD_MANIFEST.format(name="base", id=1))
    manifest = GOOD_MANIFEST.format(name="top", id=2) + (
        "\n[resources]\ncapacity = 8\nhandler_timeout = 0.5\n\n[config]\nlevel = 3\n"
        '\n[dependencies]\nbase = ">=1.0.0"\n'
    )
    write_plugin(host / "plugins", "top", manifest)
    code, out, _ = cli(capsys, "info", "top", "--plugin-dir", "plugins")
    assert code == 0
    assert re.search(r"^dependencies: +base >=1\.0\.0$", out, re.M)
    assert re.search(r"^  capacity: +8\n  handler_timeout: +0\.5 s$", out, re.M)
    assert re.search(r"^\[config\]\n  level: 3$", out, re.M)
    assert re.search(r"^\[dependencies\]\n  base: >=1\.0\.0$", out, re.M)


def test_a_missing_dependency_reads_the_same_in_validate_and_run_with_the_fix(
    host: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = GOOD_MANIFEST.format(name="top", id=2) + '\n[dependencies]\nbase = ">=1.0.0"\n'
    write_plugin(host / "plugins", "top", manifest)
    problem = (
        "Plugin 'top' has unsatisfiable dependencies: needs 'base' >=1.0.0, which is not in the "
        "catalog - install it (`nyxplug install` its package) or add the folder holding 'base' "
        "with --plugin-dir"
    )
    assert cli(capsys, "validate", "plugins/top") == (1, "", f"nyxplug validate: {problem}\n")
    code, out, _ = cli(capsys, "run", "--plugin-dir", "plugins", "--frames", "0")
    assert code == 1
    assert f"top 1.0.0 (id 2): failed - {problem}" in out.splitlines()
    # With the dependency there, validate loads it first, as a host does.
    write_plugin(host / "plugins", "base", GOOD_MANIFEST.format(name="base", id=1))
    assert cli(capsys, "validate", "plugins/top") == (0, "OK top 1.0.0 (id 2)\n", "")


def test_a_plugin_without_a_valid_manifest_says_so_not_id_none(
    host: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_plugin(host / "plugins", "broken", "[plugin\n")
    code, out, _ = cli(capsys, "run", "--plugin-dir", "plugins", "--frames", "0")
    assert code == 1 and "None" not in out
    assert re.search(r"^broken - \(no valid manifest\): failed - Invalid manifest ", out, re.M)
    code, out, _ = cli(capsys, "info", "broken", "--plugin-dir", "plugins")
    assert code == 0 and "None" not in out
    assert re.search(r"^id: +- \(no valid manifest\)$", out, re.M), out
    assert re.search(r"^reloads: +none$", out, re.M), out


# -- host configuration -----------------------------------------------------------------


def test_a_config_file_names_the_plugin_dirs_and_the_state_dir(
    host: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("NYXPLUG_STATE_DIR")
    write_plugin(host / "plugins", "good", GOOD_MANIFEST.format(name="good", id=1))
    config = host / "host.toml"
    config.write_text('[runtime]\nplugin_dirs = ["plugins"]\nstate_dir = "var"\n')
    assert row(cli(capsys, "list", "--config", str(config))[1], "good")[3] == "validated"
    assert cli(capsys, "disable", "good", "--config", str(config))[0] == 0
    assert (host / "var" / "plugins.json").is_file()
    # --plugin-dir replaces the file's list
    code, out, _ = cli(capsys, "list", "--config", str(config), "--plugin-dir", "elsewhere")
    assert "good" not in out

    config.write_text("[runtime]\nplugin_dir = 1\n")
    code, out, err = cli(capsys, "list", "--config", str(config))
    assert (code, out) == (1, "")
    assert re.fullmatch(
        r"nyxplug list: Invalid configuration .*host\.toml: Unknown key `plugin_dir` "
        r"\(did you mean `plugin_dirs`\?\) - at `runtime\.plugin_dir`\n",
        err,
    ), err


# -- the example plugins ------------------------------------------------------------------


@pytest.mark.parametrize("name", EXAMPLES)
def test_example_validates(host: Path, capsys: pytest.CaptureFixture[str], name: str) -> None:
    code, out, err = cli(capsys, "validate", str(EXAMPLES_DIR / name))
    assert (code, err) == (0, "")
    assert re.fullmatch(rf"OK {name} 1\.0\.0 \(id [123]\)\n", out)


def test_examples_are_listed(host: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli(capsys, "list", "--plugin-dir", str(EXAMPLES_DIR), "--tag", "example")
    assert code == 0
    assert [row(out, name)[:4] for name in EXAMPLES] == [
        ["fast", "1.0.0", "1", "validated"],
        ["limited", "1.0.0", "3", "validated"],
        ["slow", "1.0.0", "2", "validated"],
    ]


async def test_examples_run(tmp_path: Path) -> None:
    manager = PluginManager(
        plugin_dirs=[EXAMPLES_DIR], state_dir=tmp_path, entry_points=False,
        include_registered=False, require_signatures=False,
    )  # fmt: skip
    async with manager:
        assert [s.state for s in manager.catalog()] == ["active"] * 3
        fast, slow, limited = (manager.instance(name) for name in ("fast", "slow", "limited"))
        d = manager.dispatcher
        for _ in range(10):
            await d.dispatch(FrameType.DATA, PluginHeader(1), b"x")
            await d.dispatch(FrameType.HANDSHAKE, PluginHeader(3))
        for _ in range(50):  # 8 slots: senders wait for the handler (backpressure)
            await d.dispatch(FrameType.DATA, PluginHeader(2), b"y")
        assert d.plugin_stats(2).high_watermark == 8
        with pytest.raises(PermissionDenied):
            d.dispatch_nowait(FrameType.DATA, PluginHeader(3))
    assert (fast.frames, slow.frames, limited.handshakes) == (10, 50, 10)


def test_an_unreadable_state_file_is_one_line(
    host: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_plugin(host / "plugins", "good", GOOD_MANIFEST.format(name="good", id=1))
    (host / "state").mkdir()
    (host / "state" / "plugins.json").write_text("{not json")
    code, out, err = cli(capsys, "disable", "good", "--plugin-dir", "plugins")
    assert (code, out) == (1, "")
    assert re.fullmatch(
        r"nyxplug disable: Expected .*plugins\.json to be the JSON state nyxplug wrote, could not "
        r"read it: .* - fix or delete the file\n",
        err,
    ), err
