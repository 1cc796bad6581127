"""Versions of a plugin side by side: what the runtime shows of them and remembers.

``PluginManager.versions(name)`` lists every version discovery found (``VersionStatus``),
``rollout(name)`` the latest rollout (``RolloutStatus``); both speak the manifests'
version strings, never the dispatcher's lane names. The stable version chosen by a
promotion is kept in ``versions.json`` under the host's state dir, so a restart loads
it again instead of the highest version found.

Semantic versions and ranges live in :mod:`nyxplug.source.versions`, importable here too.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from .._atomic import write_atomic
from .._breaker import BreakerStats
from .._health import HealthStats
from .._stats import PluginStats
from ..source.rollout import RolloutSettings
from ..source.snapshot import read_regular
from ..source.versions import (
    PLUGIN_API_VERSION,
    Comparator,
    VersionError,
    VersionRange,
    parse_version,
)
from .rollout import RolloutConfig

if TYPE_CHECKING:
    from ..sandbox import SandboxGuard
    from ..source.importer import LoadedCode
    from ..source.manifest import Manifest
    from .health import HealthMonitor

__all__ = (
    "PLUGIN_API_VERSION",
    "VERSIONS_FILE",
    "Comparator",
    "RolloutEventView",
    "RolloutStatus",
    "StableVersions",
    "VersionError",
    "VersionRange",
    "VersionStatus",
    "parse_version",
    "rollout_config",
    "strategy_of",
)

#: The state file (under the host's ``state_dir``) that remembers promoted versions.
VERSIONS_FILE = "versions.json"

#: What a version's slot holds; the record of a plugin holds the stable version's, and
#: a promotion or rollback exchanges them with a ``Lane``'s.
VERSION_FIELDS = (
    "source", "location", "manifest", "folder", "factory", "instance", "code", "guard",
    "key_id", "signer", "verified", "health", "lane",
)  # fmt: skip


class VersionStatus(msgspec.Struct, frozen=True):
    """One version of a plugin, as discovery found it and as it runs now."""

    version: str  # the manifest's version string ("1.2.0")
    #: "stable" | "candidate" | "shadow" | "warm" (the previous stable, kept loaded for an
    #: instant rollback) | "loaded" | "available" (found, not loaded)
    role: str
    location: str  # folder / package path / "registered"
    loaded: bool
    weight: float  # % of route keys it takes now (stable: 100 - the candidate's)
    stats: PluginStats | None  # its lane's counters (None unless loaded)
    breaker: BreakerStats | None
    health: HealthStats | None


class RolloutEventView(msgspec.Struct, frozen=True):
    """One step of a rollout, ``at`` seconds after it started."""

    at: float
    kind: str
    state: str
    weight: float
    detail: str = ""


class RolloutStatus(msgspec.Struct, frozen=True):
    """A plugin's latest rollout (running or ended)."""

    plugin: str
    stable: str  # version strings, never lane names
    candidate: str
    strategy: str  # "canary" | "blue_green" | "ab" | "split"
    state: str  # a RolloutState value
    weight: float
    step: int  # index into the steps
    started_at: float  # time.time() at the start
    events: tuple[RolloutEventView, ...]


@dataclass(eq=False)
class Lane:
    """A loaded version of a plugin that is not its stable one: its own lane in the
    dispatcher (named ``lane``), instance, code, guard and health checks."""

    source: str
    location: str
    manifest: Manifest | None
    folder: Path | None
    factory: Any
    instance: Any
    code: LoadedCode | None
    guard: SandboxGuard | None
    key_id: str | None
    signer: str | None
    verified: bool
    health: HealthMonitor | None
    lane: str


def exchange(record: Any, lane: Lane) -> None:
    """Swap the version ``record`` holds (its stable one) with ``lane``'s."""
    for name in VERSION_FIELDS:
        mine, theirs = getattr(record, name), getattr(lane, name)
        setattr(record, name, theirs)
        setattr(lane, name, mine)


@dataclass
class StableVersions:
    """Per plugin: the stable version a promotion chose and the ones before it (newest
    last) - where the recovery ladder's ``rollback`` goes back to."""

    path: Path | None
    plugins: dict[str, tuple[str, list[str]]] = field(default_factory=dict)

    @classmethod
    def read(cls, path: Path | None) -> StableVersions:
        if path is None:
            return cls(None)
        try:
            data = json.loads(read_regular(path, 1024 * 1024, "a state file"))
        except FileNotFoundError:
            return cls(path)
        except (OSError, ValueError) as exc:
            raise ValueError(
                f"Expected {path} to be the JSON state nyxplug wrote, could not read it: {exc}"
                " - fix or delete the file"
            ) from exc
        plugins: dict[str, tuple[str, list[str]]] = {}
        table = data.get("plugins") if isinstance(data, dict) else None
        if not isinstance(table, dict):
            raise ValueError(f"Expected `plugins` in {path} to be a table, got {table!r}")
        for name, entry in table.items():
            stable = entry.get("stable") if isinstance(entry, dict) else None
            previous = entry.get("previous", []) if isinstance(entry, dict) else None
            if not isinstance(stable, str) or not (
                isinstance(previous, list) and all(isinstance(v, str) for v in previous)
            ):
                raise ValueError(
                    f"Expected `plugins.{name}` in {path} to be {{stable: str, previous: "
                    f"[str]}}, got {entry!r} - fix or delete the file"
                )
            plugins[name] = (stable, list(previous))
        return cls(path, plugins)

    def stable(self, name: str) -> str | None:
        entry = self.plugins.get(name)
        return entry[0] if entry is not None else None

    def previous(self, name: str) -> list[str]:
        entry = self.plugins.get(name)
        return list(entry[1]) if entry is not None else []

    def set(self, name: str, stable: str, previous: list[str]) -> None:
        """Remember ``stable`` (and the ones before it) and write the file atomically."""
        self.plugins[name] = (stable, previous[-8:])
        if self.path is None:
            return
        document = {
            "plugins": {
                n: {"stable": s, "previous": p} for n, (s, p) in sorted(self.plugins.items())
            }
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(self.path, json.dumps(document, indent=2).encode() + b"\n")


def rollout_config(settings: RolloutSettings) -> RolloutConfig:
    """The controller's configuration a ``[rollout]`` table describes."""
    options: dict[str, Any] = {
        key: getattr(settings, key)
        for key in (
            "iterations",
            "interval",
            "min_frames",
            "max_error_rate",
            "max_error_rate_over_stable",
            "threshold",
            "inconclusive_limit",
            "auto_promote",
            "deadline",
            "rollback_window",
        )  # fmt: skip
        if getattr(settings, key) is not None
    }
    if settings.strategy == "blue_green":
        return RolloutConfig.blue_green(mirror=settings.mirror, **options)
    if settings.strategy == "split":
        assert settings.steps is not None and settings.hold is not None
        options.pop("auto_promote", None)
        options.pop("deadline", None)
        return RolloutConfig.split(settings.steps[0], hold=settings.hold, **options)
    if settings.steps is not None:
        options["steps"] = settings.steps
    return RolloutConfig.canary(**options)


def strategy_of(config: RolloutConfig) -> str:
    """Which of the controller's configurations ``config`` is."""
    if config.rules:
        return "ab"
    if config.shadow or config.steps == (100.0,):
        return "blue_green"
    if not config.auto_promote and len(config.steps) == 1:
        return "split"
    return "canary"
