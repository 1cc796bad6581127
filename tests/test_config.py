"""Host configuration (``nyxplug.config``): file, defaults and ``NYXPLUG_*`` overrides.

Every test passes ``environ`` explicitly, so the real environment never leaks in.
"""

from __future__ import annotations

import os
import pickle
import re
from pathlib import Path

import pytest

from nyxplug._constants import DEFAULT_CAPACITY
from nyxplug._errors import NyxplugError
from nyxplug.config import DEFAULT_HANDLER_TIMEOUT, ConfigError, HostConfig, load_config

FULL = """\
[runtime]
plugin_dirs = ["plugins", "/opt/nyx/plugins"]
state_dir = "state"
entry_points = false
require_signatures = true

[defaults]
capacity = 7
handler_timeout = 1.5

[policy]
allow_process_isolation = false
"""


def exact(message: str) -> str:
    """An anchored regex matching ``message`` literally."""
    return f"^{re.escape(message)}$"


def write_config(tmp_path: Path, text: str) -> Path:
    folder = tmp_path / "etc"
    folder.mkdir(exist_ok=True)
    path = folder / "nyxplug.toml"
    path.write_text(text)
    return path


@pytest.fixture
def cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh current directory, so relative defaults resolve somewhere known."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    return work


def test_defaults_without_a_file(tmp_path: Path, cwd: Path) -> None:
    config = load_config(environ={"HOME": str(tmp_path / "home")})
    # Plugin folders follow the current directory; the state is the per-user host's.
    assert config.runtime.plugin_dirs == (str(cwd / "plugins"),)
    assert config.runtime.state_dir == str(tmp_path / "home" / ".nyxplug")
    assert config.runtime.entry_points is True
    assert config.runtime.require_signatures is True  # the production default
    assert config.defaults.capacity == DEFAULT_CAPACITY
    assert config.defaults.handler_timeout == DEFAULT_HANDLER_TIMEOUT
    assert config.policy.allow_process_isolation is True
    assert config.plugin_paths == (cwd / "plugins",)
    assert config.state_path == tmp_path / "home" / ".nyxplug"


def test_full_file(tmp_path: Path, cwd: Path) -> None:
    path = write_config(tmp_path, FULL)
    config = load_config(path, environ={})
    # Relative paths follow the file, not the current directory.
    assert config.runtime.plugin_dirs == (str(path.parent / "plugins"), "/opt/nyx/plugins")
    assert config.runtime.state_dir == str(path.parent / "state")
    assert config.runtime.entry_points is False
    assert config.runtime.require_signatures is True
    assert config.defaults.capacity == 7
    assert config.defaults.handler_timeout == 1.5
    assert config.policy.allow_process_isolation is False


def test_empty_file_is_all_defaults(tmp_path: Path) -> None:
    path = write_config(tmp_path, "")
    config = load_config(str(path), environ={})
    assert config.defaults == HostConfig().defaults
    assert config.runtime.plugin_dirs == (str(path.parent / "plugins"),)


def test_relative_file_path(tmp_path: Path, cwd: Path) -> None:
    (cwd / "host.toml").write_text('[runtime]\nstate_dir = "../s"\n')
    assert load_config("host.toml", environ={}).runtime.state_dir == str(tmp_path / "s")


def test_home_is_expanded(tmp_path: Path) -> None:
    path = write_config(tmp_path, '[runtime]\nplugin_dirs = ["~/nyx"]\n')
    config = load_config(path, environ={})
    assert config.runtime.plugin_dirs == (os.path.expanduser("~/nyx"),)


def test_nyxplug_config_names_the_file(tmp_path: Path) -> None:
    path = write_config(tmp_path, FULL)
    assert load_config(environ={"NYXPLUG_CONFIG": str(path)}).defaults.capacity == 7


def test_path_argument_beats_nyxplug_config(tmp_path: Path) -> None:
    path = write_config(tmp_path, FULL)
    environ = {"NYXPLUG_CONFIG": str(tmp_path / "missing.toml")}
    assert load_config(path, environ=environ).defaults.capacity == 7


def test_environment_overrides_the_file(tmp_path: Path, cwd: Path) -> None:
    path = write_config(tmp_path, FULL)
    environ = {
        "NYXPLUG_PLUGIN_DIRS": os.pathsep.join(["a", "", "/abs/b"]),
        "NYXPLUG_STATE_DIR": "st",
        "NYXPLUG_ENTRY_POINTS": "yes",
        "NYXPLUG_REQUIRE_SIGNATURES": "off",
        "NYXPLUG_CAPACITY": "42",
        "NYXPLUG_HANDLER_TIMEOUT": "0.25",
    }
    config = load_config(path, environ=environ)
    # Paths from the environment are relative to the current directory; the list replaces.
    assert config.runtime.plugin_dirs == (str(cwd / "a"), "/abs/b")
    assert config.runtime.state_dir == str(cwd / "st")
    assert config.runtime.entry_points is True
    assert config.runtime.require_signatures is False
    assert config.defaults.capacity == 42
    assert config.defaults.handler_timeout == 0.25
    assert config.policy.allow_process_isolation is False  # untouched by the environment


def test_empty_variables_count_as_unset(tmp_path: Path) -> None:
    path = write_config(tmp_path, FULL)
    names = [
        "NYXPLUG_PLUGIN_DIRS",
        "NYXPLUG_STATE_DIR",
        "NYXPLUG_ENTRY_POINTS",
        "NYXPLUG_REQUIRE_SIGNATURES",
        "NYXPLUG_CAPACITY",
        "NYXPLUG_HANDLER_TIMEOUT",
    ]
    environ = dict.fromkeys(names, "")
    assert load_config(path, environ=environ) == load_config(path, environ={})
    assert load_config(environ={"NYXPLUG_CONFIG": ""}) == load_config(environ={})


@pytest.mark.parametrize(
    ("raw", "value"),
    [
        ("1", True),
        ("true", True),
        ("YES", True),
        (" on ", True),
        ("0", False),
        ("False", False),
        ("no", False),
        ("off", False),
    ],
)
def test_flag_vocabulary(raw: str, value: bool) -> None:
    config = load_config(environ={"NYXPLUG_REQUIRE_SIGNATURES": raw})
    assert config.runtime.require_signatures is value


@pytest.mark.parametrize(
    ("name", "raw", "key", "problem"),
    [
        ("NYXPLUG_ENTRY_POINTS", "maybe", "runtime.entry_points",
         "Expected one of 1/true/yes/on or 0/false/no/off"),
        ("NYXPLUG_REQUIRE_SIGNATURES", "2", "runtime.require_signatures",
         "Expected one of 1/true/yes/on or 0/false/no/off"),
        ("NYXPLUG_CAPACITY", "many", "defaults.capacity", "Expected an integer"),
        ("NYXPLUG_CAPACITY", "1.5", "defaults.capacity", "Expected an integer"),
        ("NYXPLUG_CAPACITY", "0", "defaults.capacity", "Expected `int` >= 1"),
        ("NYXPLUG_HANDLER_TIMEOUT", "soon", "defaults.handler_timeout",
         "Expected a number of seconds"),
        ("NYXPLUG_HANDLER_TIMEOUT", "0", "defaults.handler_timeout", "Expected `float` > 0.0"),
        ("NYXPLUG_HANDLER_TIMEOUT", "inf", "defaults.handler_timeout",
         "Expected a finite number of seconds"),
        ("NYXPLUG_HANDLER_TIMEOUT", "nan", "defaults.handler_timeout",
         "Expected a finite number of seconds"),
    ],
)  # fmt: skip
def test_bad_environment_value(name: str, raw: str, key: str, problem: str) -> None:
    message = f"Invalid configuration ${name}: {problem}, got `{raw}` - at `{key}`"
    with pytest.raises(ConfigError, match=exact(message)) as info:
        load_config(environ={name: raw})
    assert (info.value.source, info.value.key) == (f"${name}", key)


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "missing.toml"
    message = f"Invalid configuration {path}: Expected an existing file, got nothing there"
    with pytest.raises(ConfigError, match=exact(message)) as info:
        load_config(path, environ={})
    assert info.value.key == "$"


def test_missing_file_named_by_nyxplug_config(tmp_path: Path) -> None:
    path = tmp_path / "missing.toml"
    message = (
        f"Invalid configuration {path} (named by $NYXPLUG_CONFIG): "
        "Expected an existing file, got nothing there"
    )
    with pytest.raises(ConfigError, match=exact(message)):
        load_config(environ={"NYXPLUG_CONFIG": str(path)})


def test_folder_instead_of_file(tmp_path: Path) -> None:
    message = f"Invalid configuration {tmp_path}: Expected a readable file, got `Is a directory`"
    with pytest.raises(ConfigError, match=exact(message)):
        load_config(tmp_path, environ={})


@pytest.mark.parametrize(
    ("text", "key", "problem"),
    [
        ("[runtime]\nstate_dir = \n", "$", "Invalid TOML: Invalid value (at line 2, column 13)"),
        ("[runtme]\n", "runtme", "Unknown table `[runtme]` (did you mean `runtime`?)"),
        ('[runtime]\nplugin_dir = ["x"]\n', "runtime.plugin_dir",
         "Unknown key `plugin_dir` (did you mean `plugin_dirs`?)"),
        ('[runtime]\nplugin_dirs = "plugins"\n', "runtime.plugin_dirs",
         "Expected `array`, got `str`"),
        ('[runtime]\nplugin_dirs = ["a", ""]\n', "runtime.plugin_dirs[1]",
         "Expected a folder path, got an empty string"),
        ('[runtime]\nstate_dir = ""\n', "runtime.state_dir",
         "Expected a folder path, got an empty string"),
        ('[runtime]\nentry_points = "yes"\n', "runtime.entry_points",
         "Expected `bool`, got `str`"),
        ("[defaults]\ncapacity = 0\n", "defaults.capacity", "Expected `int` >= 1, got `0`"),
        ("[defaults]\nhandler_timeout = 0\n", "defaults.handler_timeout",
         "Expected `float` > 0.0, got `0`"),
        ("[defaults]\nhandler_timeout = nan\n", "defaults.handler_timeout",
         "Expected `float` > 0.0, got `nan`"),
        ("[defaults]\nhandler_timeout = inf\n", "defaults.handler_timeout",
         "Expected a finite number of seconds, got `inf`"),
        ("[policy]\nallow_process_isolation = 1\n", "policy.allow_process_isolation",
         "Expected `bool`, got `int`"),
        # Issue 15 item 5: tomllib recursed until RecursionError on these.
        ("[runtime]\nplugin_dirs = " + "[" * 5000 + "]" * 5000 + "\n", "$",
         "Expected arrays and tables nested at most 32 levels deep, got deeper nesting at "
         "line 2 - flatten that value"),
        ("[defaults]\ncapacity = 1" + "0" * 5000 + "\n", "$",
         "Expected integers of at most 4300 digits, got a longer one - write such a number "
         "as a string"),
    ],
)  # fmt: skip
def test_bad_file_value(tmp_path: Path, text: str, key: str, problem: str) -> None:
    path = write_config(tmp_path, text)
    at = "" if key == "$" else f" - at `{key}`"
    with pytest.raises(ConfigError, match=exact(f"Invalid configuration {path}: {problem}{at}")):
        load_config(path, environ={})


def test_config_error_is_a_value_error_and_pickles() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(environ={"NYXPLUG_CAPACITY": "0"})
    error = info.value
    assert isinstance(error, NyxplugError)
    assert isinstance(error, ValueError)
    clone = pickle.loads(pickle.dumps(error))
    assert str(clone) == str(error)
    assert (clone.source, clone.key, clone.problem) == (error.source, error.key, error.problem)
