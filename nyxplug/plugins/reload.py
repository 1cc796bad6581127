"""Hot reload: what counts as a compatible upgrade, the state handoff, and the counters.

``PluginManager.reload`` runs the pipeline (stage, verify, import, instantiate,
``on_load``, ``health()``, swap, old ``on_unload``); this module holds the parts that
do not need the manager: the upgrade rules, the state handoff that runs while the
plugin's worker is paused, and what is reported about reloads.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

import msgspec

from ..sandbox import SandboxGuard, guarded
from ..source.manifest import Manifest, check_api_compatible
from ..source.versions import VersionRange

__all__ = (
    "ReloadCounters",
    "ReloadResult",
    "ReloadStats",
    "check_upgrade",
    "hand_over_state",
    "needs_migration",
)


class ReloadStats(msgspec.Struct, frozen=True, kw_only=True):
    """Per plugin: how its reloads went, and how long the last swap paused it."""

    attempted: int = 0  # reloads that ran the pipeline (an "unchanged" one does not)
    succeeded: int = 0
    rolled_back: int = 0  # failed for good: the old version kept serving
    retries: int = 0  # transient failures tried again
    last_error: str | None = None  # "<step> failed: <ExcType>: <message>"
    last_pause: float | None = None  # seconds the plugin handled nothing in the last swap
    max_pause: float | None = None
    last_outcome: str | None = None  # "swapped" or "rolled-back"


class ReloadResult(msgspec.Struct, frozen=True, kw_only=True):
    """What one successful ``reload`` did (failures raise ``ReloadFailed``)."""

    name: str
    outcome: str  # "swapped", or "unchanged" when asked to reload only changed bytes
    from_version: str | None
    to_version: str | None
    pause: float | None  # seconds; None when nothing was swapped
    attempts: int


class ReloadCounters:
    """The mutable side of ``ReloadStats``, kept on the manager's record."""

    def __init__(self) -> None:
        self.attempted = 0
        self.succeeded = 0
        self.rolled_back = 0
        self.retries = 0
        self.last_error: str | None = None
        self.last_pause: float | None = None
        self.max_pause: float | None = None
        self.last_outcome: str | None = None

    def swapped(self, pause: float) -> None:
        self.succeeded += 1
        self.last_pause = pause
        self.max_pause = max(pause, self.max_pause or 0.0)
        self.last_outcome = "swapped"

    def failed(self, step: str, reason: str) -> None:
        self.rolled_back += 1
        self.last_error = f"{step} failed: {reason}"
        self.last_outcome = "rolled-back"

    def snapshot(self) -> ReloadStats:
        return ReloadStats(**{name: getattr(self, name) for name in ReloadStats.__struct_fields__})


def check_upgrade(
    old: Manifest,
    new: Manifest,
    *,
    allow_downgrade: bool,
    dependents: Mapping[str, VersionRange],
    active_versions: Mapping[str, Any],
) -> None:
    """Refuse a new version that cannot take over the running one in place (ValueError).

    The id is the plugin's queue: it cannot change under a running plugin. The new
    version must suit this host's plugin API, must not go back in version unless asked
    to, must still satisfy every active plugin that depends on it, and must find its
    own dependencies active in range. A major change is checked later, on the
    instance: it must bring ``migrate_state``.
    """
    if new.id != old.id:
        raise ValueError(
            f"Expected id {old.id} (the running version's), got {new.id} - a reload keeps "
            "the plugin's id and queue; unload it and load the new one to change the id"
        )
    check_api_compatible(new)
    if new.version < old.version and not allow_downgrade:
        raise ValueError(
            f"Expected a version >= {old.version} (running), got {new.version} - a "
            "downgrade needs allow_downgrade=True (nyxplug reload --allow-downgrade)"
        )
    for dependent, wanted in sorted(dependents.items()):
        if not wanted.contains(new.version):
            raise ValueError(
                f"Active plugin {dependent!r} requires {old.name} {wanted}, and the new "
                f"version is {new.version} - upgrade {dependent!r} first or keep a version "
                "in its range"
            )
    for dependency, wanted in sorted(new.dependency_ranges.items()):
        version = active_versions.get(dependency)
        if version is None:
            raise ValueError(
                f"The new version depends on {dependency!r}, which is not active - load it first"
            )
        if not wanted.contains(version):
            raise ValueError(
                f"The new version requires {dependency} {wanted}, and {version} is active"
            )


def needs_migration(old: Manifest, new: Manifest, instance: Any) -> str | None:
    """Why a major-version change cannot proceed without ``migrate_state``, or None."""
    if new.version.major == old.version.major:
        return None
    if callable(getattr(instance, "migrate_state", None)):
        return None
    return (
        f"Expected migrate_state(state, from_version) on the new version: {old.version} -> "
        f"{new.version} changes the major version, so the running version's state cannot "
        "be taken as it is"
    )


def hand_over_state(
    old: Any,
    new: Any,
    from_version: str,
    *,
    old_guard: SandboxGuard | None,
    new_guard: SandboxGuard | None,
) -> None:
    """``old.export_state()`` -> ``new.migrate_state(state, from_version)`` -> ``import_state``.

    Runs while the plugin's worker is paused, so each hook must be a plain function:
    a coroutine here would stall every frame behind it. Each call runs under its
    own version's sandbox guard.
    """
    with guarded(old_guard):
        state = _plain_call(old, "export_state")
    migrate = getattr(new, "migrate_state", None)
    with guarded(new_guard):
        if callable(migrate):
            state = _plain_call(new, "migrate_state", state, from_version)
        if callable(getattr(new, "import_state", None)):
            _plain_call(new, "import_state", state)


def _plain_call(instance: Any, hook: str, *args: Any) -> Any:
    method = getattr(instance, hook, None)
    if method is None:
        return None
    result = method(*args)
    if inspect.isawaitable(result):
        if inspect.iscoroutine(result):
            result.close()
        raise TypeError(
            f"Expected {type(instance).__name__}.{hook} to be a plain def (it runs while the "
            "plugin's queue is paused), got an awaitable"
        )
    return result
