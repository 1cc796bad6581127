"""Hot reload: the upgrade rules, the state handoff, the counters, and the pipeline.

``reload_plugin`` runs the pipeline (stage, verify, import, instantiate, ``on_load``,
``health()``, swap, old ``on_unload``) and its retries; the steps it shares with a
load come from the manager as ``LoadSteps``. Any failure leaves the old version
serving. The state handoff runs while the plugin's worker is paused.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from .._breaker import BreakerConfig
from .._info import PluginInfo
from ..sandbox import SandboxGuard, guarded
from ..source.importer import LoadedCode, unload_code
from ..source.manifest import Manifest, check_api_compatible
from ..source.snapshot import Snapshot
from ..source.versions import VersionRange
from .errors import ReloadFailed
from .staging import guard_of, info_of, instantiate, staged_manifest
from .state import PluginState
from .supervise import Supervision, call_on_unload, lifecycle_call

if TYPE_CHECKING:  # annotations only: the catalog's records carry this module's counters
    from .catalog import PluginRecord

__all__ = (
    "LoadSteps",
    "ReloadCounters",
    "StagedVersion",
    "StagingFailed",
    "ReloadResult",
    "ReloadStats",
    "check_upgrade",
    "hand_over_state",
    "needs_migration",
    "reload_plugin",
    "stage_version",
)

logger = logging.getLogger("nyxplug.runtime")


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
    #: "swapped"; "unchanged" when asked to reload only changed bytes; "rollout" when
    #: ``[rollout] on_new_version = "canary"`` started a rollout of the new version instead
    outcome: str
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


# -- the pipeline ------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True, slots=True)
class LoadSteps:
    """The manager's steps of a load that a reload runs again for the new version."""

    read_code: Callable[[PluginRecord], tuple[Snapshot | None, bool]]
    import_code: Callable[
        [PluginRecord, Manifest, Snapshot | None], tuple[Callable[[], Any], LoadedCode | None]
    ]
    context: Callable[[str, Manifest, SandboxGuard | None], Any]
    handler: Callable[[PluginRecord, Any, Manifest], Supervision]
    signer_of: Callable[[Path], tuple[str | None, str | None]]
    #: The circuit breaker a manifest asks for (its ``[breaker]``, else the host's default).
    breaker_of: Callable[[Manifest], BreakerConfig | None]


async def reload_plugin(
    record: PluginRecord,
    records: Mapping[str, PluginRecord],
    *,
    if_changed: bool,
    allow_downgrade: bool,
    retries: int,
    backoff: float,
    dispatcher: Any,
    steps: LoadSteps,
) -> ReloadResult:
    """Swap ``record``'s running version for the one on disk, retrying transient failures.

    The caller holds the plugin's lock and has checked that it is active. A
    transient failure is tried again up to ``retries`` times, waiting ``backoff``
    seconds and doubling; the outcome is counted in ``record.reloads``.
    """
    counters = record.reloads
    attempt = 0
    while True:
        attempt += 1
        try:
            result = await _reload_once(
                record, attempt, records, dispatcher, steps,
                if_changed=if_changed and attempt == 1, allow_downgrade=allow_downgrade,
            )  # fmt: skip
        except ReloadFailed as exc:
            counters.attempted += attempt == 1
            if exc.transient and attempt <= retries:
                counters.retries += 1
                logger.warning("%s (attempt %d, trying again)", exc, attempt)
                await asyncio.sleep(backoff * 2 ** (attempt - 1))
                continue
            counters.failed(exc.step, exc.reason)
            logger.error("%s", exc)
            raise
        if result.pause is not None:
            counters.attempted += attempt == 1
            counters.swapped(result.pause)
            logger.info(
                "Plugin %r reloaded: %s -> %s (swap pause %.3f ms)",
                record.name, result.from_version, result.to_version, result.pause * 1e3,
            )  # fmt: skip
        return result


class StagingFailed(Exception):
    """``stage_version`` stopped at ``step`` (its cause chained); nothing of it lingers."""

    def __init__(self, step: str, cause: Exception) -> None:
        super().__init__(step, cause)
        self.step = step
        self.cause = cause


@dataclass(slots=True)
class StagedVersion:
    """A version ready to take frames: read, verified, imported, ``on_load`` and
    ``health()`` passed; not yet given to the dispatcher."""

    manifest: Manifest
    verified: bool
    code: LoadedCode | None
    instance: Any
    guard: SandboxGuard | None
    info: PluginInfo


async def stage_version(
    record: PluginRecord,
    steps: LoadSteps,
    *,
    check: Callable[[Manifest], None] | None = None,
    check_instance: Callable[[Manifest, Any], None] | None = None,
    unchanged: Callable[[Snapshot | None], bool] | None = None,
) -> StagedVersion | None:
    """Stage ``record``'s bytes as a new version: read (and verify) them, decode the
    manifest, ``check`` it, import, instantiate, ``check_instance``, give it its guard and
    context, ``on_load``, ``health()``. A hot reload and a second version loaded beside
    the running one both come through here.

    Returns None when ``unchanged(snapshot)`` says the bytes need no staging. Any failure
    undoes what was done (the code is forgotten, ``on_unload`` runs if ``on_load`` did)
    and raises ``StagingFailed`` naming the step.
    """
    from ..trust import TrustError

    step = "stage"
    code: LoadedCode | None = None
    guard: SandboxGuard | None = None
    instance: Any = None
    loaded = False
    try:
        try:
            snapshot, verified = steps.read_code(record)
        except TrustError:
            step = "verify"
            raise
        if unchanged is not None and unchanged(snapshot):
            return None
        step = "compatibility"
        manifest = staged_manifest(record, snapshot)
        if check is not None:
            check(manifest)
        step = "import"
        factory, code = steps.import_code(record, manifest, snapshot)
        step = "instantiate"
        instance = instantiate(factory)
        step = "compatibility"
        if check_instance is not None:
            check_instance(manifest, instance)
        info = info_of(record, manifest)
        guard = guard_of(manifest, info)
        instance.ctx = steps.context(record.name, manifest, guard)
        step = "on_load"
        await lifecycle_call(guard, instance, "on_load", instance.ctx)
        loaded = True
        step = "health"
        if await lifecycle_call(guard, instance, "health") is False:
            raise RuntimeError("health() returned False")
    except BaseException as exc:  # cancelled too: nothing of the new version may linger
        await discard(record.name, code, instance if loaded else None, guard)
        if not isinstance(exc, Exception):
            raise
        raise StagingFailed(step, exc) from exc
    return StagedVersion(manifest, verified, code, instance, guard, info)


async def discard(name: str, code: LoadedCode | None, instance: Any, guard: Any) -> None:
    """Undo a staged version: ``on_unload`` (when ``instance`` is given), forget its code."""
    if code is not None:
        unload_code(code.package)
    if instance is not None:
        await call_on_unload(name, guard, instance)


async def _reload_once(
    record: PluginRecord,
    attempt: int,
    records: Mapping[str, PluginRecord],
    dispatcher: Any,
    steps: LoadSteps,
    *,
    if_changed: bool,
    allow_downgrade: bool,
) -> ReloadResult:
    old = record.manifest
    assert old is not None
    old_instance, old_guard, old_code = record.instance, record.guard, record.code
    running = str(old.version)

    def check(manifest: Manifest) -> None:
        check_upgrade(
            old, manifest, allow_downgrade=allow_downgrade,
            dependents=_dependents(records, record.name),
            active_versions=_active_versions(records),
        )  # fmt: skip

    def check_instance(manifest: Manifest, instance: Any) -> None:
        why = needs_migration(old, manifest, instance)
        if why is not None:
            raise ValueError(why)

    try:
        staged = await stage_version(
            record, steps, check=check, check_instance=check_instance,
            unchanged=(lambda snapshot: _same_code(old_code, snapshot)) if if_changed else None,
        )  # fmt: skip
    except StagingFailed as failed:
        reason = f"{type(failed.cause).__name__}: {failed.cause}"
        transient = _transient(failed.step, failed.cause)
        raise ReloadFailed(record.name, failed.step, reason, running, transient) from failed.cause
    if staged is None:
        return ReloadResult(
            name=record.name, outcome="unchanged", from_version=running,
            to_version=running, pause=None, attempts=attempt,
        )  # fmt: skip
    manifest, instance, guard, info = staged.manifest, staged.instance, staged.guard, staged.info
    try:

        def between() -> None:  # runs while the plugin's worker is paused
            hand_over_state(old_instance, instance, running, old_guard=old_guard, new_guard=guard)
            dispatcher.registry.set_permissions(
                manifest.id, manifest.permission_mask, source=info.source
            )

        supervised = steps.handler(record, instance, manifest)
        pause = await _finish_even_if_cancelled(
            dispatcher.swap_handler(
                manifest.id,
                supervised.handler,
                sandbox=guard,
                between=between,
                overrun_limit=supervised.overrun_limit,
                on_overrun=supervised.on_overrun,
            )  # fmt: skip
        )
    except BaseException as exc:  # cancelled too: nothing of the new version may linger
        await discard(record.name, staged.code, instance, guard)
        if not isinstance(exc, Exception):
            raise
        reason = f"{type(exc).__name__}: {exc}"
        raise ReloadFailed(record.name, "swap", reason, running, _transient("swap", exc)) from exc
    # The new version serves from here on; the old one says goodbye. Its breaker stays
    # (state and windows) unless the new manifest asks for another one.
    breaker = steps.breaker_of(manifest)
    if record.manifest is None or breaker != steps.breaker_of(record.manifest):
        dispatcher.set_breaker(manifest.id, breaker)
    record.manifest, record.instance, record.guard, record.code = (
        manifest,
        instance,
        guard,
        staged.code,
    )
    record.verified = staged.verified
    if record.folder is not None:
        record.key_id, record.signer = steps.signer_of(record.folder)
    await call_on_unload(record.name, old_guard, old_instance)
    if old_code is not None:
        unload_code(old_code.package)
    return ReloadResult(
        name=record.name, outcome="swapped", from_version=running,
        to_version=str(manifest.version), pause=pause, attempts=attempt,
    )  # fmt: skip


def _dependents(records: Mapping[str, PluginRecord], name: str) -> dict[str, Any]:
    """Active plugins that depend on ``name``, with the version range each wants."""
    return {
        other.name: other.manifest.dependency_ranges[name]
        for other in records.values()
        if other.state is PluginState.ACTIVE
        and other.manifest is not None
        and name in other.manifest.dependencies
    }


def _active_versions(records: Mapping[str, PluginRecord]) -> dict[str, Any]:
    return {
        other.name: other.manifest.version
        for other in records.values()
        if other.state is PluginState.ACTIVE and other.manifest is not None
    }


def _same_code(running: LoadedCode | None, snapshot: Snapshot | None) -> bool:
    """True when the staged bytes are exactly the running code's (a touch, a re-save)."""
    if snapshot is None:
        return True  # a code plugin: nothing on disk to differ
    return running is not None and running.snapshot.files == snapshot.files


def _transient(step: str, exc: Exception) -> bool:
    """Failures worth retrying: files mid-write, a health check not ready yet, timeouts."""
    return (
        isinstance(exc, TimeoutError)
        or step == "health"
        or (step == "stage" and isinstance(exc, OSError))
    )


async def _finish_even_if_cancelled(swap: Coroutine[Any, Any, float]) -> float:
    """Await a swap to its end: once begun, the manager must know which version serves.

    A cancellation that arrives meanwhile is delivered after the swap is done.
    """
    task = asyncio.ensure_future(swap)
    cancelled = False
    while True:
        try:
            result = await asyncio.shield(task)
        except asyncio.CancelledError:
            if task.done():
                raise
            cancelled = True
            continue
        if cancelled:
            raise asyncio.CancelledError
        return result
