"""Host (runtime) configuration: one optional TOML file plus ``NYXPLUG_*`` overrides.

Everything is checked when the configuration is loaded, so the runtime never meets a
bad value later; errors name the file or variable, the key, what was expected and what
was found. :func:`load_config` returns absolute paths, so later ``chdir`` calls do not
change which folders are scanned.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import msgspec

from ._breaker import BreakerConfig
from ._constants import DEFAULT_CAPACITY
from ._errors import NyxplugError
from ._health import HealthConfig
from ._impl import parse_flag
from ._recovery import RecoveryConfig
from ._routing import MAX_VERSIONS
from ._schema import _check_finite, _Invalid, explain_decode_error
from ._toml import TOO_DEEP, nesting_problem, toml_value_problem
from .isolation.options import IsolationOptions
from .source.layout import Capacity, HandlerTimeout
from .source.rollout import RolloutSettings

__all__ = (
    "DEFAULT_HANDLER_TIMEOUT",
    "HOST_CONFIG_FILE",
    "ConfigError",
    "DefaultsSection",
    "HostConfig",
    "PolicySection",
    "RuntimeSection",
    "find_host_config",
    "load_config",
    "locate_host_config",
    "user_state_dir",
)

#: The host configuration file found by walking up from the current directory.
HOST_CONFIG_FILE = "nyxplug.host.toml"

#: Seconds a plugin handler may run when neither its manifest nor the host says otherwise.
DEFAULT_HANDLER_TIMEOUT = 5.0


class ConfigError(NyxplugError, ValueError):
    """The host configuration has a bad value.

    ``source`` is the file path or the environment variable (``$NYXPLUG_CAPACITY``),
    ``key`` the dotted key (``defaults.capacity``, or ``$`` for the whole file).
    """

    def __init__(self, source: str, key: str, problem: str) -> None:
        super().__init__(source, key, problem)
        self.source = source
        self.key = key
        self.problem = problem

    def __str__(self) -> str:
        at = "" if self.key == "$" else f" - at `{self.key}`"
        return f"Invalid configuration {self.source}: {self.problem}{at}"


def _check_paths(key: str, values: tuple[str, ...]) -> None:
    for index, value in enumerate(values):
        if not value.strip():
            raise _Invalid(f"{key}[{index}]", "Expected a folder path, got an empty string")


class RuntimeSection(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Where plugins come from and what the runtime remembers between runs."""

    plugin_dirs: tuple[str, ...] = ("plugins",)
    state_dir: str = ".nyxplug"
    entry_points: bool = True
    require_signatures: bool = True
    # Hot reload: watch plugin folders and the package store (nyxplug run --watch), act on
    # a change once nothing new changed for half to all of the debounce, retry transient
    # failures reload_retries times, backing off reload_backoff * 2**n seconds.
    watch: bool = False
    reload_debounce: float = 0.2
    reload_retries: int = 3
    reload_backoff: float = 0.1
    #: Versions of one plugin loaded side by side at most (the engine's limit is 5).
    max_versions: int = MAX_VERSIONS

    def __post_init__(self) -> None:
        if not 1 <= self.max_versions <= MAX_VERSIONS:
            raise _Invalid(
                "max_versions",
                f"Expected 1..{MAX_VERSIONS} versions of one plugin loaded at once, got "
                f"{self.max_versions}",
            )
        _check_paths("plugin_dirs", self.plugin_dirs)
        if not self.state_dir.strip():
            raise _Invalid("state_dir", "Expected a folder path, got an empty string")
        for key in ("reload_debounce", "reload_backoff"):
            value = getattr(self, key)
            _check_finite(key, value)
            if value < 0:
                raise _Invalid(key, f"Expected seconds >= 0, got {value}")
        if not 0 <= self.reload_retries <= 100:
            raise _Invalid("reload_retries", f"Expected 0..100, got {self.reload_retries}")


class DefaultsSection(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Values for plugins whose manifest leaves ``[resources]`` keys out."""

    capacity: Capacity = DEFAULT_CAPACITY
    handler_timeout: HandlerTimeout = DEFAULT_HANDLER_TIMEOUT
    #: A circuit breaker for every plugin whose manifest has no ``[breaker]`` (None: none).
    breaker: BreakerConfig | None = None
    #: Scheduled health checks for every plugin whose manifest has no ``[health]``.
    health: HealthConfig | None = None
    #: A recovery ladder for every plugin whose manifest has no ``[recovery]`` (None: none).
    recovery: RecoveryConfig | None = None
    #: How new versions are rolled out when their manifest has no ``[rollout]``.
    rollout: RolloutSettings | None = None

    def __post_init__(self) -> None:
        _check_finite("handler_timeout", self.handler_timeout)


class PolicySection(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """What the host permits plugins to ask for."""

    allow_process_isolation: bool = True


class HostConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The whole host configuration; every key is optional."""

    runtime: RuntimeSection = msgspec.field(default_factory=RuntimeSection)
    defaults: DefaultsSection = msgspec.field(default_factory=DefaultsSection)
    policy: PolicySection = msgspec.field(default_factory=PolicySection)
    #: Out-of-process plugins: spawning, heartbeats, restarts, limits.
    isolation: IsolationOptions = msgspec.field(default_factory=IsolationOptions)

    @property
    def plugin_paths(self) -> tuple[Path, ...]:
        """``runtime.plugin_dirs`` as paths."""
        return tuple(Path(entry) for entry in self.runtime.plugin_dirs)

    @property
    def state_path(self) -> Path:
        """``runtime.state_dir`` as a path."""
        return Path(self.runtime.state_dir)

    @property
    def package_store_path(self) -> Path:
        """Where ``nyxplug install`` puts verified packages (scanned like a plugin dir)."""
        return self.state_path / "packages"

    @property
    def trust_store_path(self) -> Path:
        """The trust store: trusted keys, revocations, rollback floors."""
        return self.state_path / "trust.json"

    @property
    def audit_log_path(self) -> Path:
        """The append-only JSON-lines log of every trust decision."""
        return self.state_path / "audit.jsonl"


def load_config(
    path: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] = os.environ,
) -> HostConfig:
    """Read the host configuration file (if any), then apply ``NYXPLUG_*`` overrides.

    The file is found as :func:`locate_host_config` says: ``path``, else
    ``$NYXPLUG_CONFIG``, else the nearest ``nyxplug.host.toml`` in the current directory
    or a parent; with none, the built-in defaults with the per-user state dir
    (:func:`user_state_dir`). Relative paths in the file are resolved against the file's
    folder; relative paths from the defaults or the environment against the current
    directory. An empty variable counts as unset. ``NYXPLUG_PLUGIN_DIRS``
    (``os.pathsep``-separated) replaces the file's list.
    """
    file, source = locate_host_config(path, environ)
    if file is None:
        config = HostConfig()
        config = msgspec.structs.replace(
            config,
            runtime=msgspec.structs.replace(config.runtime, state_dir=str(user_state_dir(environ))),
        )
        base = Path.cwd()
    else:
        config = _decode_file(file, source)
        base = file.absolute().parent
    runtime = msgspec.structs.replace(
        config.runtime,
        plugin_dirs=tuple(_absolute(base, entry) for entry in config.runtime.plugin_dirs),
        state_dir=_absolute(base, config.runtime.state_dir),
    )
    config = msgspec.structs.replace(config, runtime=runtime)
    return _apply_environment(config, environ)


def locate_host_config(
    path: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] = os.environ,
) -> tuple[Path | None, str]:
    """The host configuration file to read, and how it was chosen (for messages).

    ``path`` (the ``--config`` option), else ``$NYXPLUG_CONFIG``, else the nearest
    :data:`HOST_CONFIG_FILE` walking up from the current directory; ``(None, why)``
    when there is none, so every command run anywhere below a host's folder acts on
    that host, and anywhere else on the per-user one.
    """
    if path is not None:
        return Path(path), str(path)
    named = environ.get("NYXPLUG_CONFIG", "")
    if named:
        return Path(named), f"{named} (named by $NYXPLUG_CONFIG)"
    found = find_host_config(Path.cwd())
    if found is not None:
        return found, str(found)
    return None, "the per-user default"


def find_host_config(start: Path) -> Path | None:
    """The nearest :data:`HOST_CONFIG_FILE` in ``start`` or one of its parents."""
    folder = start.absolute()
    for candidate in (folder, *folder.parents):
        file = candidate / HOST_CONFIG_FILE
        if file.is_file():
            return file
    return None


def user_state_dir(environ: Mapping[str, str] = os.environ) -> Path:
    """The per-user host's state dir: ``~/.nyxplug`` (beside the key folder ``keys``).

    ``HOME`` from ``environ`` when set, so a command run with another home acts on
    that home's host.
    """
    home = environ.get("HOME", "")
    return (Path(home) if home else Path.home()).absolute() / ".nyxplug"


def _decode_file(file: Path, source: str) -> HostConfig:
    try:
        data = file.read_bytes()
    except FileNotFoundError:
        raise ConfigError(source, "$", "Expected an existing file, got nothing there") from None
    except OSError as exc:
        raise ConfigError(source, "$", f"Expected a readable file, got `{exc.strerror}`") from None
    if problem := nesting_problem(data):  # tomllib would raise RecursionError
        raise ConfigError(source, "$", problem)
    try:
        # UTF-8 is checked here, not by msgspec, so bad bytes say where they are.
        return msgspec.toml.decode(data.decode(), type=HostConfig)
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        key, problem = explain_decode_error(exc, data, HostConfig)
        raise ConfigError(source, key, problem) from None
    except RecursionError:  # unreachable after the scan above: refuse all the same
        raise ConfigError(source, "$", TOO_DEEP) from None
    except ValueError as exc:  # tomllib's own (an over-long integer)
        raise ConfigError(source, "$", toml_value_problem(exc)) from None


def _absolute(base: Path, entry: str) -> str:
    path = Path(entry).expanduser()
    return os.path.normpath(path if path.is_absolute() else base / path)


def _apply_environment(config: HostConfig, environ: Mapping[str, str]) -> HostConfig:
    runtime: dict[str, Any] = {}
    defaults: dict[str, Any] = {}
    cwd = Path.cwd()
    if raw := environ.get("NYXPLUG_PLUGIN_DIRS", ""):
        runtime["plugin_dirs"] = tuple(
            _absolute(cwd, entry) for entry in raw.split(os.pathsep) if entry.strip()
        )
    if raw := environ.get("NYXPLUG_STATE_DIR", ""):
        runtime["state_dir"] = _absolute(cwd, raw)
    for name, key in (
        ("NYXPLUG_ENTRY_POINTS", "entry_points"),
        ("NYXPLUG_REQUIRE_SIGNATURES", "require_signatures"),
        ("NYXPLUG_WATCH", "watch"),
    ):
        if raw := environ.get(name, ""):
            runtime[key] = _env_value(name, f"runtime.{key}", raw, parse_flag, bool)
    if raw := environ.get("NYXPLUG_CAPACITY", ""):
        defaults["capacity"] = _env_value(
            "NYXPLUG_CAPACITY", "defaults.capacity", raw, _parse_int, Capacity
        )
    if raw := environ.get("NYXPLUG_HANDLER_TIMEOUT", ""):
        value = _env_value(
            "NYXPLUG_HANDLER_TIMEOUT", "defaults.handler_timeout", raw, _parse_float, HandlerTimeout
        )
        defaults["handler_timeout"] = value
    if runtime:
        config = msgspec.structs.replace(
            config, runtime=msgspec.structs.replace(config.runtime, **runtime)
        )
    if defaults:
        config = msgspec.structs.replace(
            config, defaults=msgspec.structs.replace(config.defaults, **defaults)
        )
    return config


def _env_value(name: str, key: str, raw: str, parse: Callable[[str], object], type_: Any) -> Any:
    """Parse a variable's text, then check it with the same constraints as the file."""
    source = f"${name}"
    try:
        value = parse(raw)
    except ValueError as exc:
        raise ConfigError(source, key, f"{exc}, got `{raw}`") from None
    try:
        return msgspec.convert(value, type=type_)
    except msgspec.ValidationError as exc:
        raise ConfigError(source, key, f"{exc}, got `{raw}`") from None


def _parse_int(raw: str) -> int:
    if not re.fullmatch(r"\s*[+-]?\d+\s*", raw):
        raise ValueError("Expected an integer")
    return int(raw)


def _parse_float(raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise ValueError("Expected a number of seconds") from None
    if not math.isfinite(value):
        raise ValueError("Expected a finite number of seconds")
    return value
