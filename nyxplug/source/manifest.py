"""The plugin manifest ``nyxplug.toml``, decoded into frozen, validated structs.

Every rule is checked while decoding (msgspec ``Meta`` constraints and the structs'
``__post_init__``), so a :class:`Manifest` that exists is valid, and unknown keys are
errors everywhere, so a typo never silently turns into a default. Keys are snake_case.
"""

from __future__ import annotations

import functools
import keyword
import operator
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
import semver
from msgspec import Meta

from .._breaker import BreakerConfig
from .._constants import Permission
from .._errors import NyxplugError
from .._health import HealthConfig
from .._recovery import RecoveryConfig
from .._schema import _check_finite, _Invalid, explain_decode_error
from .._toml import MAX_NESTING, TOO_DEEP, nesting_problem, toml_value_problem, too_deep
from .layout import MANIFEST_FILE, MAX_PLUGIN_ID, NAME_PATTERN, Capacity, HandlerTimeout
from .rollout import RolloutSettings
from .versions import PLUGIN_API_VERSION, VersionError, VersionRange, parse_version

__all__ = (
    "DEFAULT_MEMORY_LIMIT",
    "MANIFEST_FILE",
    "NAME_PATTERN",
    "Manifest",
    "ManifestError",
    "PermissionsSection",
    "PluginSection",
    "ResourcesSection",
    "SandboxSection",
    "check_api_compatible",
    "decode_manifest",
    "load_manifest",
    "manifest_from_dict",
    "parse_size",
)

#: ``[sandbox] memory_limit`` when the manifest leaves it out (SPEC 7: 64 MiB).
DEFAULT_MEMORY_LIMIT = 64 * 1024 * 1024

PluginName = Annotated[str, Meta(pattern=NAME_PATTERN)]
PluginId = Annotated[int, Meta(ge=0, le=MAX_PLUGIN_ID)]

_NAME_RE = re.compile(NAME_PATTERN)
_SIZE_RE = re.compile(r"^(\d+) ?(KiB|MiB|GiB)$")
_SIZE_UNITS = {"KiB": 1024, "MiB": 1024**2, "GiB": 1024**3}
_PERMISSION_NAMES = tuple(member.name for member in Permission if member.name)


class ManifestError(NyxplugError, ValueError):
    """A manifest is missing or invalid.

    ``source`` is where it came from (a path, ``<memory>``, or the plugin's name),
    ``field`` the dotted key (``plugin.version``; ``$`` for the whole file).
    """

    def __init__(self, source: str, field: str, problem: str) -> None:
        super().__init__(source, field, problem)
        self.source = source
        self.field = field
        self.problem = problem

    def __str__(self) -> str:
        at = "" if self.field == "$" else f" - at `{self.field}`"
        return f"Invalid manifest {self.source}: {self.problem}{at}"


def parse_size(value: int | str) -> int:
    """Bytes from an int or ``"64MiB"`` / ``"512 KiB"`` / ``"1GiB"`` (powers of 1024)."""
    if isinstance(value, bool):
        raise ValueError(f"Expected bytes as an integer or text like `64MiB`, got `{value}`")
    if isinstance(value, int):
        size = value
    else:
        match = _SIZE_RE.match(value)
        if match is None:
            raise ValueError(
                f"Expected bytes as an integer or text like `64MiB` (units KiB, MiB, GiB), "
                f"got `{value}`"
            )
        size = int(match[1]) * _SIZE_UNITS[match[2]]
    if size < 1:
        raise ValueError(f"Expected a size of at least 1 byte, got `{value}`")
    return size


class PluginSection(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """``[plugin]``: who the plugin is and where its code starts."""

    name: PluginName
    id: PluginId
    version: str
    entry: str
    api: str
    description: str = ""
    authors: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not _NAME_RE.fullmatch(self.name):  # msgspec's search lets "$" match before a "\n"
            raise _Invalid("name", f"Expected `str` matching `{NAME_PATTERN}`, got `{self.name!r}`")
        try:
            parse_version(self.version)
        except VersionError as exc:
            raise _Invalid("version", str(exc)) from None
        module, _, attr = self.entry.partition(":")
        if not (all(_is_identifier(part) for part in module.split(".")) and _is_identifier(attr)):
            raise _Invalid(
                "entry",
                "Expected `module:attr` (a dotted module path, a colon, an attribute name), "
                f"got `{self.entry}`",
            )
        try:
            VersionRange.parse(self.api)
        except VersionError as exc:
            raise _Invalid("api", str(exc)) from None


def _is_identifier(text: str) -> bool:
    return text.isidentifier() and not keyword.iskeyword(text)


class PermissionsSection(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """``[permissions]``: the frame permissions the plugin asks for, by name."""

    frames: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for index, name in enumerate(self.frames):
            if name not in _PERMISSION_NAMES:
                choices = ", ".join(f"`{choice}`" for choice in _PERMISSION_NAMES)
                raise _Invalid(f"frames[{index}]", f"Expected one of {choices}, got `{name}`")

    @property
    def mask(self) -> Permission:
        """The OR of the named permissions (``Permission(0)`` for none)."""
        return functools.reduce(
            operator.or_, (Permission[name] for name in self.frames), Permission(0)
        )


class SandboxSection(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """``[sandbox]``: plain values for ``nyxplug.sandbox.SandboxPolicy`` (SPEC 7)."""

    network: bool = False
    network_allowlist: tuple[str, ...] = ()
    filesystem: Literal["none", "read-only", "full"] = "none"
    filesystem_allowlist: tuple[str, ...] = ()
    #: As written (``"64MiB"`` or bytes), UNSET when left out; :attr:`memory_limit` is the
    #: parsed size. Enforced only in an isolated child (its cgroup), so refused otherwise.
    memory_limit_text: int | str | msgspec.UnsetType = msgspec.field(
        default=msgspec.UNSET, name="memory_limit"
    )

    def __post_init__(self) -> None:
        for key in ("network_allowlist", "filesystem_allowlist"):
            for index, entry in enumerate(getattr(self, key)):
                if not entry.strip():
                    raise _Invalid(f"{key}[{index}]", "Expected a pattern, got an empty string")
        if self.memory_limit_text is not msgspec.UNSET:
            try:
                parse_size(self.memory_limit_text)
            except ValueError as exc:
                raise _Invalid("memory_limit", str(exc)) from None

    @property
    def memory_limit(self) -> int:
        """The memory limit in bytes (:data:`DEFAULT_MEMORY_LIMIT` when left out)."""
        if self.memory_limit_text is msgspec.UNSET:
            return DEFAULT_MEMORY_LIMIT
        return parse_size(self.memory_limit_text)


class ResourcesSection(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """``[resources]``: ``None`` means the host's ``[defaults]`` value."""

    capacity: Capacity | None = None
    handler_timeout: HandlerTimeout | None = None
    isolation: Literal["in-process", "process"] = "in-process"

    def __post_init__(self) -> None:
        if self.handler_timeout is not None:
            _check_finite("handler_timeout", self.handler_timeout)


class Manifest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A whole ``nyxplug.toml``; only ``[plugin]`` is required."""

    plugin: PluginSection
    permissions: PermissionsSection = msgspec.field(default_factory=PermissionsSection)
    sandbox: SandboxSection = msgspec.field(default_factory=SandboxSection)
    resources: ResourcesSection = msgspec.field(default_factory=ResourcesSection)
    #: ``[breaker]``: the plugin's circuit breaker (None: the host's ``[defaults.breaker]``).
    breaker: BreakerConfig | None = None
    #: ``[health]``: scheduled ``health()`` / ``ready()`` checks (None: the host's default).
    health: HealthConfig | None = None
    #: ``[recovery]``: the ladder that repairs it while its breaker is open (None: the
    #: host's ``[defaults.recovery]``).
    recovery: RecoveryConfig | None = None
    #: ``[rollout]``: how a new version of it is rolled out (None: the host's
    #: ``[defaults.rollout]``, else the controller's defaults).
    rollout: RolloutSettings | None = None
    config: dict[str, Any] = {}
    dependencies: dict[str, str] = {}

    def __post_init__(self) -> None:
        if (
            self.sandbox.memory_limit_text is not msgspec.UNSET
            and self.resources.isolation != "process"
        ):
            # Nothing measures an in-process plugin's memory: no key may claim it is limited.
            raise _Invalid(
                "sandbox.memory_limit",
                'Expected it only with [resources] isolation = "process" (the child\'s cgroup '
                'enforces it), got it for an in-process plugin - set isolation = "process" or '
                "remove memory_limit",
            )
        for name, text in self.dependencies.items():
            key = f"dependencies.{name}"
            if not _NAME_RE.fullmatch(name):
                raise _Invalid(
                    key, f"Expected a plugin name matching `{NAME_PATTERN}`, got `{name}`"
                )
            if name == self.plugin.name:
                raise _Invalid(key, f"Expected another plugin, got `{name}` (this plugin itself)")
            try:
                VersionRange.parse(text)
            except VersionError as exc:
                raise _Invalid(key, str(exc)) from None

    @property
    def name(self) -> str:
        return self.plugin.name

    @property
    def id(self) -> int:
        return self.plugin.id

    @property
    def version(self) -> semver.Version:
        return parse_version(self.plugin.version)

    @property
    def permission_mask(self) -> Permission:
        return self.permissions.mask

    @property
    def api_range(self) -> VersionRange:
        return VersionRange.parse(self.plugin.api)

    @property
    def dependency_ranges(self) -> dict[str, VersionRange]:
        return {name: VersionRange.parse(text) for name, text in self.dependencies.items()}

    @property
    def entry_module(self) -> str:
        return self.plugin.entry.partition(":")[0]

    @property
    def entry_attr(self) -> str:
        return self.plugin.entry.partition(":")[2]


def decode_manifest(data: bytes | str, source: str = "<memory>") -> Manifest:
    """Decode and validate manifest text; every problem becomes a :class:`ManifestError`."""
    if isinstance(data, str):
        data = data.encode(errors="surrogatepass")  # a lone surrogate: refused as bad UTF-8
    if problem := nesting_problem(data):
        raise ManifestError(source, "$", problem)
    try:
        manifest = msgspec.toml.decode(data, type=Manifest)
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        field, problem = explain_decode_error(exc, data, Manifest)
        raise ManifestError(source, field, problem) from None
    except RecursionError:  # the scan above should make this unreachable: refuse all the same
        raise ManifestError(source, "$", TOO_DEEP) from None
    except ValueError as exc:  # tomllib's own, e.g. an integer of more than 4300 digits
        raise ManifestError(source, "$", toml_value_problem(exc)) from None
    _check_config_depth(manifest, source)
    return manifest


def manifest_from_dict(document: Mapping[str, Any], source: str = "<dict>") -> Manifest:
    """Validate a manifest given as Python data laid out like ``nyxplug.toml`` (``@plugin``)."""
    if too_deep(document, MAX_NESTING):
        raise ManifestError(source, "$", TOO_DEEP)
    try:
        manifest = msgspec.convert(document, type=Manifest)
    except msgspec.ValidationError as exc:
        field, problem = explain_decode_error(exc, document, Manifest)
        raise ManifestError(source, field, problem) from None
    except RecursionError:
        raise ManifestError(source, "$", TOO_DEEP) from None
    _check_config_depth(manifest, source)
    return manifest


def _check_config_depth(manifest: Manifest, source: str) -> None:
    """Dotted keys (``a.b.c = 1``) nest ``[config]`` without brackets: bound it too."""
    if too_deep(manifest.config, MAX_NESTING + 1):  # [config] itself, then 32 levels
        raise ManifestError(
            source,
            "config",
            f"Expected tables and arrays nested at most {MAX_NESTING} levels deep (dotted "
            "keys count as levels), got deeper nesting - flatten the plugin's settings",
        )


def load_manifest(path: str | os.PathLike[str]) -> Manifest:
    """Read a manifest from a plugin folder or a ``nyxplug.toml`` path (one read)."""
    file = Path(path)
    if file.is_dir():
        file = file / MANIFEST_FILE
    try:
        data = file.read_bytes()
    except FileNotFoundError:
        raise ManifestError(
            str(file), "$", "Expected an existing file, got nothing there"
        ) from None
    except OSError as exc:
        raise ManifestError(
            str(file), "$", f"Expected a readable file, got `{exc.strerror}`"
        ) from None
    return decode_manifest(data, str(file))


def check_api_compatible(
    manifest: Manifest,
    api_version: str | semver.Version = PLUGIN_API_VERSION,
    *,
    source: str | None = None,
) -> None:
    """Refuse a plugin written for another plugin API than ``api_version``.

    Kept apart from decoding so tools can still read manifests of incompatible plugins.
    """
    if not manifest.api_range.contains(api_version):
        raise ManifestError(
            source or f"of plugin `{manifest.name}`",
            "plugin.api",
            f"Expected a plugin-API range containing `{api_version}` (the plugin API this "
            f"nyxplug offers), got `{manifest.plugin.api}`",
        )
