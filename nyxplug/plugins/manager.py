"""The plugin runtime: keep the catalog, move plugins through their states, supervise.

``PluginManager`` owns a ``Dispatcher`` and puts plugins on it. Plugins come from
three sources: folders with a ``nyxplug.toml`` under the plugin directories,
installed distributions (entry-point group ``nyxplug.plugins``) and classes marked
with the ``@plugin(...)`` decorator. Each has a lifecycle state (``PluginState``)
and, when it failed or is disabled, the reason.

No plugin mistake takes the host down: an import error, a raising ``on_load`` or a
failing ``health()`` leaves that plugin ``failed`` with the reason; a raising handler
is counted and logged; a handler over its timeout is cancelled and counted.

The parts around the manager, each a module: ``catalog`` (the ``@plugin`` registry,
records, discovery), ``deps`` (load order), ``disabled`` (the operator's state file),
``staging`` (a version's bytes, manifest, guard, instance), ``supervise`` (hooks and
handlers under their timeouts) and ``reload`` (the hot-reload pipeline). The manager
holds the locks and moves the states.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars
import functools
import logging
import os
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._breaker import BreakerConfig, BreakerState, BreakerStats
from .._constants import Permission
from .._impl import Dispatcher as DefaultDispatcher
from .._recovery import RecoveryConfig
from .._routing import BASE_VERSION
from .._stats import PluginStats
from ..config import HostConfig
from ..isolation.manifest_limits import child_limits
from ..isolation.process import IsolatedPlugin, IsolationStats
from ..sandbox import SandboxGuard
from ..source.importer import LoadedCode, import_entry, unload_code
from ..source.manifest import Manifest, ManifestError, check_api_compatible, load_manifest
from ..source.snapshot import Snapshot
from ..source.versions import parse_version
from .api import PluginContext
from .catalog import (
    ENTRY_POINT_GROUP,
    ManifestCache,
    PluginCounters,
    PluginRecord,
    PluginStatus,
    Sources,
    find_plugins,
    plugin,
    registered_plugins,
    signer_of,
)
from .deps import dependency_order
from .disabled import read_disabled, write_disabled
from .errors import (
    DependencyError,
    PluginLoadError,
    PluginNotFound,
    PluginStateError,
    ReloadFailed,
    RolloutStateError,
    StepNotAvailable,
    VersionNotFound,
    VersionStateError,
)
from .health import HealthMonitor
from .recovery import Action, RecoveryLadder
from .reload import LoadSteps, ReloadResult, StagingFailed, discard, reload_plugin, stage_version
from .rollout import (
    TERMINAL,
    RolloutConfig,
    RolloutController,
    RolloutEvent,
    Rollouts,
    RolloutState,
)
from .staging import guard_of, info_of, instantiate, read_code, staged_manifest
from .state import PluginState
from .supervise import Supervision, call_on_unload, lifecycle_call, supervise
from .versions import (
    VERSIONS_FILE,
    Lane,
    RolloutEventView,
    RolloutStatus,
    StableVersions,
    VersionStatus,
    exchange,
    rollout_config,
    strategy_of,
)

# nyxplug.trust (and cryptography, ~20 ms) loads when a manager is made or a package
# verified, not with `import nyxplug.plugins`, which plugin code does for `Plugin`.
if TYPE_CHECKING:
    from ..trust import AuditLog, TrustStore

# The catalog names are defined in .catalog and stay importable from here too.
__all__ = ("ENTRY_POINT_GROUP", "PluginManager", "PluginStatus", "plugin", "registered_plugins")

#: The state file (under the host's ``state_dir``) that remembers disabled plugins.
STATE_FILE = "plugins.json"

logger = logging.getLogger("nyxplug.runtime")

#: What ``rollout_action`` accepts.
ROLLOUT_ACTIONS = ("pause", "resume", "promote", "rollback", "abort")


@dataclass
class _RolloutInfo:
    """What the manager adds to a rollout controller: version strings, not lane names."""

    stable: str
    candidate: str
    strategy: str
    started_at: float
    caller: str | None  # who asked for what the controller is doing now (audit lines)
    lanes: dict[str, str]  # the dispatcher's lane names -> version strings

    def detail(self, text: str) -> str:
        """The controller's words with version strings for lane names (``base``)."""
        for lane, version in self.lanes.items():
            if lane != version:
                text = re.sub(rf"\b{re.escape(lane)}\b", version, text)
        return text


class PluginManager:
    """Finds, catalogs, loads and supervises plugins on one ``Dispatcher``.

    ``async with PluginManager(config) as manager:`` discovers and starts every enabled
    plugin, and unloads them all (draining) on exit.

    Versions side by side: every version of a plugin that discovery finds is listed
    (``versions``); the stable one runs, others load beside it (``load_version``) and
    rollouts move traffic to them (``start_rollout``), judged on ``clock`` (default
    ``time.monotonic``; tests pass a fake one and call ``tick_rollouts``).
    """

    def __init__(
        self,
        config: HostConfig | None = None,
        *,
        dispatcher: Any = None,
        plugin_dirs: Iterable[str | os.PathLike[str]] | None = None,
        state_dir: str | os.PathLike[str] | None = None,
        entry_points: bool | None = None,
        include_registered: bool = True,
        require_signatures: bool | None = None,
        trust: TrustStore | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        # Without a config, nothing is read from (or written to) the current directory:
        # only the folders and state dir given here are used.
        self.config = config if config is not None else HostConfig()
        runtime = self.config.runtime
        if plugin_dirs is None:
            plugin_dirs = runtime.plugin_dirs if config is not None else ()
        self.plugin_dirs = [Path(d) for d in plugin_dirs]
        if state_dir is None and config is not None:
            state_dir = runtime.state_dir
        self.state_dir = Path(state_dir) if state_dir is not None else None
        self.entry_points = runtime.entry_points if entry_points is None else entry_points
        self.include_registered = include_registered
        # Signatures: required by default (config.runtime.require_signatures). Installed
        # packages live in state_dir/packages; the trust store and the audit log beside it.
        self.require_signatures = (
            runtime.require_signatures if require_signatures is None else require_signatures
        )
        from ..trust import AUDIT_FILE, TRUST_FILE, AuditLog, TrustStore

        self.package_dir = self.state_dir / "packages" if self.state_dir is not None else None
        if trust is None and self.state_dir is not None:
            trust = TrustStore(self.state_dir / TRUST_FILE)
        self.trust: TrustStore | None = trust
        self.audit: AuditLog | None = (
            AuditLog(self.state_dir / AUDIT_FILE) if self.state_dir is not None else None
        )
        self.dispatcher = dispatcher if dispatcher is not None else DefaultDispatcher()
        self._records: dict[str, PluginRecord] = {}
        self._manifest_cache: ManifestCache = {}
        self._added: dict[str, type] = {}
        self._load_order: list[str] = []
        # One lock per plugin name: load, unload and reload of one plugin run in turn.
        self._locks: dict[str, asyncio.Lock] = {}
        # Breaker transitions noted by the dispatch or worker that made them, written to
        # the audit log by their own task (``_watch_breaker``).
        self._breaker_lines: collections.deque[tuple[PluginRecord, str, str, str]] = (
            collections.deque()
        )
        self._breaker_noted = asyncio.Event()
        self._breaker_writer: asyncio.Task[None] | None = None
        self.discovery_errors: list[str] = []
        self._disabled = (
            read_disabled(self.state_dir / STATE_FILE) if self.state_dir is not None else set()
        )
        self._steps = LoadSteps(
            read_code=self._read_code, import_code=self._import_code, context=self._context,
            handler=self._handler, signer_of=lambda folder: signer_of(folder, self.trust),
            breaker_of=self._breaker_of,
        )  # fmt: skip
        # Rollouts: one controller set for the dispatcher, ticked by one task that sleeps
        # until the earliest check or deadline (or is woken by an action).
        self._clock = time.monotonic if clock is None else clock
        self.rollouts = Rollouts(self.dispatcher, clock=self._clock, on_event=self._rollout_event)
        self._rollout_info: dict[int, _RolloutInfo] = {}
        self._rollout_task: asyncio.Task[None] | None = None
        self._rollout_wake = asyncio.Event()
        self._rollout_passed = asyncio.Event()
        self._passes_started = self._passes_done = 0
        self._retire: list[tuple[str, str]] = []  # (plugin, version) whose window is over
        self._rollout_events: dict[str, asyncio.Event] = {}  # wait_rollout's, by plugin
        self._auto_rollouts: dict[str, set[str]] = {}  # versions on_new_version rolled out
        self._stable = StableVersions.read(
            self.state_dir / VERSIONS_FILE if self.state_dir is not None else None
        )

    # -- discovery and the catalog -------------------------------------------------

    def discover(self) -> list[PluginStatus]:
        """Scan every source and refresh the catalog; returns it.

        Manifests are cached by file identity (inode, size, mtime), so rescanning
        hundreds of unchanged plugins costs a ``stat`` each. Loaded plugins keep
        their record; broken ones are listed ``failed`` with the reason.
        """
        self.discovery_errors = []
        sources = Sources(
            package_dir=self.package_dir, plugin_dirs=self.plugin_dirs,
            entry_points=self.entry_points, include_registered=self.include_registered,
            added=self._added, require_signatures=self.require_signatures, trust=self.trust,
        )  # fmt: skip
        found = find_plugins(sources, self._manifest_cache, self.discovery_errors)
        for name, record in list(found.items()):
            promoted = self._stable.stable(name)  # a promotion chose it: it runs again
            chosen = record.found.get(promoted, record) if promoted is not None else record
            if chosen is not record and chosen.state is not PluginState.FAILED:
                chosen.found = record.found
                found[name] = record = chosen
            current = self._records.get(name)
            if current is not None and current.state in (
                PluginState.LOADING, PluginState.ACTIVE, PluginState.DRAINING
            ):  # fmt: skip
                current.shadows = record.shadows  # a folder may have appeared since
                loaded = [str(current.manifest.version)] if current.manifest else []
                keep = {v: current.found[v] for v in [*loaded, *current.lanes]
                        if v in current.found and v not in record.found}  # fmt: skip
                current.found = {**record.found, **keep}
                continue
            if name in self._disabled:
                record.enabled = False
                record.state = PluginState.DISABLED
                record.reason = "disabled by the operator (nyxplug enable to turn it back on)"
            elif record.state is PluginState.DISCOVERED and record.manifest is not None:
                self._validate(record)
            if current is not None:
                record.timeouts = current.timeouts
                record.reloads = current.reloads
            self._records[name] = record
        for name in [n for n, r in self._records.items() if n not in found]:
            if self._records[name].state not in (PluginState.ACTIVE, PluginState.DRAINING):
                del self._records[name]
        return self.catalog()

    def _validate(self, record: PluginRecord) -> None:
        assert record.manifest is not None
        try:
            check_api_compatible(record.manifest)
        except ManifestError as exc:
            record.move(PluginState.FAILED, str(exc))
            return
        record.move(PluginState.VALIDATED)

    def add(self, cls: type) -> PluginStatus:
        """Put a ``@plugin``-marked class in this manager's catalog (and only this one)."""
        manifest = getattr(cls, "__nyxplug_manifest__", None)
        if manifest is None:
            raise TypeError(f"Expected a class marked with @nyxplug.plugin(...), got {cls!r}")
        self._added[manifest.name] = cls
        self.discover()
        return self._record(manifest.name).status()

    def catalog(
        self,
        *,
        name: str | None = None,
        tag: str | None = None,
        permission: Permission | None = None,
        state: PluginState | str | None = None,
    ) -> list[PluginStatus]:
        """The catalog, filtered; ``name`` matches a substring, the others exactly."""
        wanted_state = str(PluginState(state)) if state is not None else None
        out = []
        for record in sorted(self._records.values(), key=lambda r: r.name):
            m = record.manifest
            if name is not None and name not in record.name:
                continue
            if tag is not None and (m is None or tag not in m.plugin.tags):
                continue
            if permission is not None and (m is None or permission not in m.permission_mask):
                continue
            if wanted_state is not None and str(record.state) != wanted_state:
                continue
            out.append(record.status())
        return out

    def names(self) -> list[str]:
        """Every plugin name in the catalog, sorted (no status records built: a scrape
        reads a large catalog a slice at a time with ``status``)."""
        return sorted(self._records)

    def counters(self, name: str) -> PluginCounters:
        """One plugin's counters and labels, cheaply (what a metrics scrape reads)."""
        record = self._record(name)
        m = record.manifest
        if m is None:
            return record.counters(None)
        d = self.dispatcher
        return record.counters(d.plugin_stats(m.id), d.breaker_stats(m.id))

    def status(self, name: str) -> PluginStatus:
        """One catalog entry (``PluginNotFound`` if unknown)."""
        return self._record(name).status()

    def _record(self, name: str) -> PluginRecord:
        record = self._records.get(name)
        if record is None:
            raise PluginNotFound(name, tuple(sorted(self._records)))
        return record

    def manifest(self, name: str, *, version: str | None = None) -> Manifest | None:
        """The plugin's decoded manifest (None when it could not be read): the stable
        version's, or that of ``version`` (loaded beside it, or found)."""
        record = self._record(name)
        m = record.manifest
        if version is None or (m is not None and version == str(m.version)):
            return m
        lane = record.lanes.get(version)
        if lane is not None:
            return lane.manifest
        found = record.found.get(version)
        if found is None:
            raise self._version_not_found(record, version)
        return found.manifest

    def instance(self, name: str) -> Any:
        """The running plugin object (None unless the plugin is active)."""
        return self._record(name).instance

    # -- enable / disable (remembered across restarts) -------------------------------

    def disable(self, name: str) -> None:
        """Keep ``name`` from loading, now and after restarts; an active plugin stays up."""
        record = self._record(name)
        self._disabled.add(name)
        self._write_disabled()
        record.enabled = False
        if record.state not in (PluginState.ACTIVE, PluginState.LOADING, PluginState.DRAINING):
            record.move(PluginState.DISABLED, "disabled by the operator")

    def enable(self, name: str) -> None:
        """Allow ``name`` to load again (it is re-validated)."""
        record = self._record(name)
        self._disabled.discard(name)
        self._write_disabled()
        record.enabled = True
        if record.state is PluginState.DISABLED:
            record.move(PluginState.DISCOVERED)
            if record.manifest is not None:
                self._validate(record)

    def _write_disabled(self) -> None:
        if self.state_dir is not None:
            write_disabled(self.state_dir / STATE_FILE, self._disabled)

    # -- dependencies ----------------------------------------------------------------

    def load_order(self, names: Iterable[str] | None = None) -> list[str]:
        """``names`` (default: every enabled, valid plugin) and their dependencies, in order.

        Raises ``DependencyError`` for a missing dependency, a version outside the
        required range, a disabled or broken dependency, or a cycle.
        """
        if names is None:
            names = [r.name for r in self._records.values()
                     if r.enabled and r.manifest is not None
                     and r.state is not PluginState.FAILED]  # fmt: skip
        return dependency_order(names, self._records)

    # -- lifecycle -------------------------------------------------------------------

    async def start(self) -> list[PluginStatus]:
        """Discover, then load every enabled plugin in dependency order.

        A plugin that cannot load is left ``failed`` with the reason (so are the
        plugins that depend on it); the others come up.
        """
        self.discover()
        for record in self._records.values():
            if record.shadows is not None:  # edits to that folder would silently not run
                logger.warning("Plugin %r: %s", record.name, record.shadows)
        candidates = [r.name for r in self._records.values()
                      if r.enabled and r.state is PluginState.VALIDATED]  # fmt: skip
        order: list[str] = []
        for name in sorted(candidates):
            try:
                for item in self.load_order([name]):
                    if item not in order:
                        order.append(item)
            except DependencyError as exc:
                self._records[name].move(PluginState.FAILED, str(exc))
        for name in order:
            record = self._records[name]
            if record.state not in (PluginState.VALIDATED, PluginState.UNLOADED):
                continue
            try:
                await self.load(name)
            except PluginLoadError as exc:
                m = record.manifest
                logger.error(
                    "%s", exc, extra={
                        "plugin": exc.name, "plugin_id": m.id if m else None,
                        "version": m.plugin.version if m else None,
                    },
                )  # fmt: skip
        return self.catalog()

    def _lock(self, name: str) -> asyncio.Lock:
        lock = self._locks.get(name)
        if lock is None:
            lock = self._locks[name] = asyncio.Lock()
        return lock

    async def load(self, name: str) -> PluginStatus:
        """Bring one plugin to ``active``: import, instantiate, ``on_load``, ``health()``.

        Its dependencies must be active already. On failure the plugin is ``failed``
        with the reason and ``PluginLoadError`` says which step failed.
        """
        async with self._lock(name):
            return await self._load(self._record(name))

    async def _load(self, record: PluginRecord) -> PluginStatus:
        name = record.name
        if record.state is PluginState.DISABLED:
            raise PluginStateError(name, "disabled", "load", "run `nyxplug enable` first")
        if record.state in (PluginState.ACTIVE, PluginState.LOADING, PluginState.DRAINING):
            raise PluginStateError(name, str(record.state), "load", "unload it first")
        if record.manifest is None:
            raise PluginLoadError(name, "validation", record.reason or "no manifest")
        for dep in record.manifest.dependencies:
            other = self._records.get(dep)
            if other is None or other.state is not PluginState.ACTIVE:
                now = "not in the catalog" if other is None else str(other.state)
                reason = (
                    f"dependency {dep!r} is not active ({now}) - load {dep!r} first, or fix "
                    "why it is not (`nyxplug list` gives its reason)"
                )
                record.state, record.reason = PluginState.FAILED, reason
                raise PluginLoadError(name, "dependencies", reason)
        record.move(PluginState.LOADING)
        step = "verify"
        instance: Any = None
        registry = self.dispatcher.registry
        registered_here = False
        record.verified = False
        try:
            snapshot, verified = self._read_code(record)
            step = "import"
            manifest = staged_manifest(record, snapshot)
            check_api_compatible(manifest)
            factory, record.code = self._import_code(record, manifest, snapshot)
            step = "instantiate"
            instance = instantiate(factory)
            # One guard for everything this plugin does (on_load, sending, its handler),
            # and its rights in the registry from now on, so ctx.dispatch in on_load works.
            # An isolated plugin's guard is its child's kernel layers, not an audit hook.
            # The manifest is the info's source, so a refusal (the guard's too) gives the
            # fix in its terms: [permissions], [sandbox], [resources].
            info = info_of(record, manifest)
            record.guard = guard_of(manifest, info)
            if not registry.is_registered(manifest.id):
                registry.register(info)
                registered_here = True
            instance.ctx = self._context(name, manifest, record.guard)
            step = "on_load"
            await lifecycle_call(record.guard, instance, "on_load", instance.ctx)
            step = "health"
            healthy = await lifecycle_call(record.guard, instance, "health")
            if healthy is False:
                raise RuntimeError("health() returned False")
            step = "start"
            supervised = self._handler(record, instance, manifest)
            await self.dispatcher.load_plugin(
                info,
                supervised.handler,
                capacity=manifest.resources.capacity or self.config.defaults.capacity,
                sandbox=record.guard,
                overrun_limit=supervised.overrun_limit,
                on_overrun=supervised.on_overrun,
            )
            breaker = self._breaker_of(manifest)
            if breaker is not None:
                self.dispatcher.set_breaker(manifest.id, breaker)
            record.lane = BASE_VERSION
            record.health = self._start_health(record, manifest, instance, BASE_VERSION)
            self._start_recovery(record, manifest, instance)
            if self.dispatcher.breaker_stats(manifest.id) is not None:
                self._watch_breaker(record, manifest.id)
        except BaseException as exc:  # cancelled too: never left half-loaded in LOADING
            reason = f"{type(exc).__name__}: {exc}" if isinstance(exc, Exception) else "cancelled"
            if registered_here and not self.dispatcher.is_loaded(manifest.id):
                registry.unregister(manifest.id)
            if record.code is not None:
                unload_code(record.code.package)
                record.code = None
            if isinstance(instance, IsolatedPlugin):
                await instance.aclose()  # a child that started must not outlive the failure
            record.instance = None
            record.move(PluginState.FAILED, f"{step} failed: {reason}")
            if not isinstance(exc, Exception):
                raise
            raise PluginLoadError(name, step, reason) from exc
        record.manifest = manifest
        record.instance = instance
        record.verified = verified
        record.move(PluginState.ACTIVE)
        self._load_order.append(name)
        return record.status()

    def _start_health(
        self, record: PluginRecord, manifest: Manifest, instance: Any, lane: str
    ) -> HealthMonitor | None:
        """Scheduled checks (``[health]``, else ``[defaults.health]``) of one loaded version
        (its dispatcher ``lane``) on their own task; None when it has none.

        They ask whichever instance that version runs (a reload swaps it under them).
        A liveness failure of the stable version feeds the recovery ladder; of a rollout's
        candidate, the rollout (it rolls back).
        """
        config = manifest.health if manifest.health is not None else self.config.defaults.health
        if config is None:
            return None

        def holder() -> Any:
            found = self._holder(record, lane)
            if found is None:
                raise RuntimeError(f"version lane {lane!r} of {record.name!r} is not loaded")
            return found

        def liveness() -> Any:
            h = holder()
            return lifecycle_call(h.guard, h.instance, "health")

        readiness = None
        if callable(getattr(instance, "ready", None)):

            def readiness() -> Any:
                h = holder()
                return lifecycle_call(h.guard, h.instance, "ready")

        monitor = HealthMonitor(
            self.dispatcher, manifest.id, config, liveness, readiness,
            on_liveness_failure=functools.partial(self._lane_liveness_failed, record.name, lane),
            version=lane,
        )  # fmt: skip
        monitor.start()
        return monitor

    @staticmethod
    def _holder(record: PluginRecord, lane: str) -> Any:
        """The record (its stable version runs on ``lane``) or the ``Lane``; None if gone."""
        if record.lane == lane:
            return record
        for held in record.lanes.values():
            if held.lane == lane:
                return held
        return None

    def _lane_liveness_failed(self, name: str, lane: str, reason: str) -> None:
        record = self._records.get(name)
        if record is None or record.manifest is None:
            return
        if record.lane == lane:
            self._liveness_failed(name, reason)
            return
        controller = self.rollouts.get(record.manifest.id)
        if (
            controller is not None
            and controller.state not in TERMINAL
            and controller.state is not RolloutState.PROMOTED
            and controller.candidate == lane
        ):
            logger.error(
                "Plugin %r: the rollout's candidate failed its liveness checks (%s) - rolling "
                "back", name, reason,
            )  # fmt: skip
            self._act(record, controller, "rollback", "health")
            return
        logger.error(
            "Plugin %r: loaded version on lane %r failed its liveness checks (%s) - its "
            "breaker is held open; unload_version it or fix it", name, lane, reason,
        )  # fmt: skip

    async def _stop_watchers(self, record: PluginRecord) -> None:
        """Stop the health checks and the recovery ladder (the plugin is going away), and
        its rollout; the other versions' checks too."""
        monitor, record.health = record.health, None
        if monitor is not None:
            await monitor.aclose()
        for lane in record.lanes.values():
            lane_monitor, lane.health = lane.health, None
            if lane_monitor is not None:
                await lane_monitor.aclose()
        if record.recovery is not None:  # stopped, its counts kept for the status
            await record.recovery.aclose()
        if record.manifest is not None:
            self.rollouts.forget(record.manifest.id)

    async def _drop_other_versions(self, record: PluginRecord) -> None:
        """After the dispatcher unloaded the plugin (every lane): the other versions'
        ``on_unload`` and code go too; the stable lane is ``base`` again for a reload."""
        lanes, record.lanes = record.lanes, {}
        for lane in lanes.values():
            await discard(record.name, lane.code, lane.instance, lane.guard)
        record.lane = BASE_VERSION

    def _liveness_failed(self, name: str, reason: str) -> None:
        """A plugin failed its liveness checks: its frames are refused until it recovers."""
        ladder = self._records[name].recovery
        if ladder is not None:
            logger.error(
                "Plugin %r failed its liveness checks (%s) - its circuit breaker is held "
                "open while its recovery ladder repairs it", name, reason,
            )  # fmt: skip
            ladder.liveness_failed(reason)
            return
        logger.error(
            "Plugin %r failed its liveness checks (%s) - its circuit breaker is held open "
            "until health() passes again; reload or restart it to recover sooner",
            name, reason,
        )  # fmt: skip

    # -- the recovery ladder -------------------------------------------------------------

    def _recovery_of(self, manifest: Manifest) -> RecoveryConfig | None:
        """The manifest's ``[recovery]``, else the host's ``[defaults.recovery]``."""
        if manifest.recovery is not None:
            return manifest.recovery
        return self.config.defaults.recovery

    def _start_recovery(self, record: PluginRecord, manifest: Manifest, instance: Any) -> None:
        """The ladder that repairs the plugin while its breaker is open (``[recovery]``).

        It watches the plugin's breaker, so a plugin without one gets the default
        ``BreakerConfig()``. Each step is the manager's own machinery; a step that does
        not apply to this plugin is None (skipped, counted as not available).
        """
        config = self._recovery_of(manifest)
        if config is None:
            return
        if self.dispatcher.breaker_stats(manifest.id) is None:
            self.dispatcher.set_breaker(manifest.id, BreakerConfig())
        actions = self._ladder_actions(record, config, instance)

        def recovered() -> None:
            if record.health is not None:
                record.health.recovered()

        def audited(decision: str, fields: dict[str, object]) -> None:
            self._audit("recovery", decision, record, **fields)

        record.recovery = RecoveryLadder(
            self.dispatcher, manifest.id, config, actions, on_recovered=recovered,
            on_event=audited,
        )  # fmt: skip
        record.recovery.start()

    def _ladder_actions(
        self, record: PluginRecord, config: RecoveryConfig, instance: Any
    ) -> dict[str, Action | None]:
        """Each step's work for the version running ``instance`` (None: does not apply)."""
        isolated = isinstance(instance, IsolatedPlugin)
        step = functools.partial
        return {
            "restart": step(self._restart_step, record) if isolated else None,
            "reset": step(self._reset_step, record) if not isolated else None,
            "reload": step(self._reload_step, record) if record.folder is not None else None,
            "rollback": self._rollback_step(record),
            "degrade": (
                step(self._degrade_step, record, config.fallback)
                if config.fallback is not None
                else None
            ),
            "quarantine": step(self._quarantine_step, record),
        }

    async def wait_recovery(self, name: str) -> None:
        """Wait until the plugin's recovery ladder next acts (an episode starts, a step
        ends, the breaker it repaired closes); check ``status(name).recovery`` after."""
        ladder = self._record(name).recovery
        if ladder is None:
            raise PluginStateError(
                name, str(self._record(name).state), "wait for its recovery",
                "it has no [recovery] table and the host no [defaults.recovery]",
            )  # fmt: skip
        await ladder.wait_changed()

    def _active(self, record: PluginRecord, step: str) -> Manifest:
        if record.state is not PluginState.ACTIVE or record.manifest is None:
            name = record.name
            raise PluginStateError(
                name, str(record.state), step,
                f"it must be active; `nyxplug info {name}` says why it is not (`nyxplug "
                f"enable {name}` loads a disabled one)",
            )  # fmt: skip
        return record.manifest

    async def _restart_step(self, record: PluginRecord) -> None:
        """``restart``: a new child for an isolated plugin (its own restart machinery)."""
        self._active(record, "restart")
        instance = record.instance
        assert isinstance(instance, IsolatedPlugin)
        await instance.restart()

    async def _reset_step(self, record: PluginRecord) -> None:
        """``reset``: a new instance of the running code, without the old one's state.

        Like a reload that reads nothing from disk and hands nothing over: instantiate,
        ``on_load``, ``health()``, swap the handler (queued frames stay), old ``on_unload``.
        """
        async with self._lock(record.name):
            manifest = self._active(record, "reset")
            factory = record.factory if record.code is None else record.code.entry
            if not callable(factory):
                raise TypeError(
                    f"Expected plugin {record.name!r}'s entry to be a class or factory, got "
                    f"an instance of {type(factory).__name__} - a reset needs a new instance"
                )
            old, guard = record.instance, record.guard
            instance = instantiate(factory)
            instance.ctx = self._context(record.name, manifest, guard)
            loaded = False
            try:
                await lifecycle_call(guard, instance, "on_load", instance.ctx)
                loaded = True
                if await lifecycle_call(guard, instance, "health") is False:
                    raise RuntimeError("health() returned False")
                supervised = self._handler(record, instance, manifest)
                await self.dispatcher.swap_handler(
                    manifest.id, supervised.handler, sandbox=guard,
                    overrun_limit=supervised.overrun_limit, on_overrun=supervised.on_overrun,
                )  # fmt: skip
            except BaseException:
                if loaded:
                    await call_on_unload(record.name, guard, instance)
                raise
            record.instance = instance
            await call_on_unload(record.name, guard, old)

    async def _reload_step(self, record: PluginRecord) -> None:
        """``reload``: the plugin's folder or package again, through hot reload (which
        verifies it, as any reload does), even if its bytes did not change - never a
        rollout (``on_new_version``): a repair is not the time to start one."""
        await self._hot_reload(record.name, if_changed=False, allow_downgrade=True)

    def _rollback_step(self, record: PluginRecord) -> Action | None:
        """``rollback``: the previous good version (see ``_roll_back``)."""
        return functools.partial(self._roll_back, record)

    async def _roll_back(self, record: PluginRecord) -> None:
        """A rollout in progress (or promoted, its old version kept warm) rolls back;
        otherwise the version that was stable before this one is made stable again,
        loaded first if it is found but not loaded. With none: ``StepNotAvailable``."""
        manifest = self._active(record, "roll back")
        controller = self.rollouts.get(manifest.id)
        if controller is not None and controller.state not in TERMINAL:
            self._end_repair(manifest.id)
            self._act(record, controller, "rollback", "recovery")
            return
        async with self._lock(record.name):
            manifest = self._active(record, "roll back")
            current = str(manifest.version)
            previous = self._stable.previous(record.name)
            while previous and (
                previous[-1] == current
                or (previous[-1] not in record.found and previous[-1] not in record.lanes)
            ):
                previous.pop()  # gone since: the one before it is the previous good one
            if not previous:
                raise StepNotAvailable(
                    record.name, "rollback",
                    f"no earlier stable version than {current} is known (one becomes known "
                    "when a rollout promotes another)",
                )  # fmt: skip
            target = previous[-1]
            self._remember_stable(record.name, current, previous)
            if target not in record.lanes:
                await self._load_lane(record, target, "recovery")
            self._end_repair(manifest.id)
            self.dispatcher.set_route(manifest.id, stable=record.lanes[target].lane)
            self._sync_stable(record, caller="recovery")

    def _end_repair(self, plugin_id: int) -> None:
        """The failing stable lane is about to be replaced: its breaker no longer shows the
        ladder's step (the ladder marks the lane that is stable after the step)."""
        if self.dispatcher.breaker_stats(plugin_id) is not None:
            self.dispatcher.set_breaker_repairing(plugin_id, None)

    async def _degrade_step(self, record: PluginRecord, fallback: str) -> None:
        """``degrade``: hold the plugin's traffic off; refusals name the fallback plugin."""
        manifest = self._active(record, "degrade")
        other = self._records.get(fallback)
        if other is None or other.state is not PluginState.ACTIVE or other.manifest is None:
            now = "not in the catalog" if other is None else str(other.state)
            raise PluginStateError(fallback, now, "take the traffic of " + repr(record.name),
                                   "load the fallback plugin first")  # fmt: skip
        self.dispatcher.set_breaker_state(
            manifest.id, BreakerState.FORCED_OPEN,
            why=(
                f"its recovery ladder (degraded: send its frames to plugin {fallback!r} "
                f"(id {other.manifest.id}) instead)"
            ),
        )  # fmt: skip

    async def _quarantine_step(self, record: PluginRecord) -> None:
        """``quarantine``: every other step failed; the plugin is ``failed`` with why, and
        its queued frames are dropped (counted), as an isolated plugin that gave up."""
        ladder = record.recovery
        why = "its recovery ladder ran out of steps"
        if ladder is not None and ladder.stats().last_failure is not None:
            why += f" (last: {ladder.stats().last_failure})"
        await self._quarantine(record, record.instance, why)

    def _breaker_of(self, manifest: Manifest) -> BreakerConfig | None:
        """The manifest's ``[breaker]``, else the host's ``[defaults.breaker]``."""
        return manifest.breaker if manifest.breaker is not None else self.config.defaults.breaker

    def _watch_breaker(self, record: PluginRecord, plugin_id: int, lane: str | None = None) -> None:
        """Audit every transition of the breaker of the plugin's ``lane`` (a dispatcher
        lane; None is the stable version's), and tell the recovery ladder of those of
        the stable lane only: a candidate tripping is the rollout's to judge.

        The dispatcher has one watcher per breaker and calls it inside the dispatch or
        worker batch that made the transition, so the callback only appends to a deque;
        a task writes the lines (file I/O is kept off the frame path). Each line names
        the version on that lane when it is written.
        """
        if lane is None:
            lane = record.lane  # after a promotion the new stable lane is watched instead
        on = None if lane == record.lane else lane  # the dispatcher's None: the stable lane
        ladder = record.recovery if on is None else None
        if self.audit is None and ladder is None:
            return
        lines, noted = self._breaker_lines, self._breaker_noted
        audited = self.audit is not None  # else nothing would drain the lines
        stats = self.dispatcher.breaker_stats(plugin_id, version=on)
        last = [stats.state.name.lower() if stats is not None else "closed"]

        def changed(state: BreakerState) -> None:
            if ladder is not None and record.lane == lane:
                ladder.breaker_changed(state)
            if audited:
                name = state.name.lower()
                lines.append((record, last[0], name, lane))
                last[0] = name
                noted.set()

        self.dispatcher.watch_breaker(plugin_id, changed, version=on)
        if self.audit is not None and self._breaker_writer is None:
            self._breaker_writer = asyncio.get_running_loop().create_task(
                self._write_breaker_lines(), name="nyxplug-breaker-audit"
            )

    async def _write_breaker_lines(self) -> None:
        while True:
            await self._breaker_noted.wait()
            self._breaker_noted.clear()
            self._flush_breaker_lines()

    def _flush_breaker_lines(self) -> None:
        lines = self._breaker_lines
        while lines:
            record, previous, state, lane = lines.popleft()
            holder = self._holder(record, lane)  # the version on that lane now
            version = holder.manifest.plugin.version if holder and holder.manifest else None
            if version is None:
                self._audit("breaker", state, record, previous=previous)
            else:
                self._audit("breaker", state, record, previous=previous, version=version)

    def flush_breaker_audit(self) -> None:
        """Write the breaker transitions noted so far now (the task writes them soon)."""
        self._flush_breaker_lines()

    # -- the circuit breaker, for operators ------------------------------------------------

    def breaker(self, name: str, *, version: str | None = None) -> BreakerStats | None:
        """The circuit breaker of the plugin's stable version now, or of ``version`` (a
        version loaded beside it); None when the plugin is not loaded or that version has
        no breaker. A version of a running plugin that is not loaded raises
        ``VersionStateError``, one discovery did not find ``VersionNotFound``."""
        record = self._record(name)
        m = record.manifest
        if m is None or not self.dispatcher.is_loaded(m.id):
            if version is not None and version not in record.found:
                raise self._version_not_found(record, version)
            return None
        lane = None
        if version is not None:
            lane = self._lane_of(record, version, "show the circuit breaker of")
            lane = None if lane == record.lane else lane
        stats: BreakerStats | None = self.dispatcher.breaker_stats(m.id, version=lane)
        return stats

    def set_breaker_state(
        self,
        name: str,
        state: BreakerState,
        *,
        version: str | None = None,
        caller: str | None = None,
    ) -> BreakerStats:
        """An operator's transition of the plugin's breaker (``CLOSED`` resets it,
        ``FORCED_OPEN``, ``DISABLED``, ``METRICS_ONLY``), written to the audit log with
        ``caller``. ``version`` picks a version loaded beside the stable one (a canary to
        force off, say); None is the stable one. A running version without a breaker is
        given the default one first, so traffic can be forced off any of them."""
        record = self._record(name)
        change = "set the circuit breaker of"
        where = "" if version is None else f" version {version} of"
        manifest = self._active(record, change + where)
        lane = None if version is None else self._lane_of(record, version, change)
        d = self.dispatcher
        on = None if lane == record.lane else lane  # the dispatcher's None: the stable lane
        if d.breaker_stats(manifest.id, version=on) is None:
            d.set_breaker(manifest.id, BreakerConfig(), version=on)
            self._watch_breaker(record, manifest.id, lane)
        d.set_breaker_state(manifest.id, state, version=on)
        fields: dict[str, Any] = {"state": state.name.lower(), "caller": caller}
        if version is not None:
            fields["version"] = version
        self._audit("breaker", "set", record, **fields)
        self._flush_breaker_lines()  # its transition, next to the action (we are on the loop)
        stats: BreakerStats | None = d.breaker_stats(manifest.id, version=on)
        assert stats is not None
        return stats

    def _loaded_versions(self, record: PluginRecord) -> tuple[str, ...]:
        """``("1.0.0 (stable)", "1.1.0 (candidate)", ...)``: what an operator can name."""
        if record.state is not PluginState.ACTIVE:
            return ()
        return tuple(f"{v.version} ({v.role})" for v in self.versions(record.name) if v.loaded)

    def _version_not_found(self, record: PluginRecord, version: str) -> VersionNotFound:
        found = tuple(sorted(record.found, key=parse_version))
        return VersionNotFound(record.name, version, found, self._loaded_versions(record))

    def _lane_of(self, record: PluginRecord, version: str, operation: str) -> str:
        """The dispatcher lane that runs ``version`` of the (active) plugin: the stable
        one's lane, or a loaded version's. ``VersionStateError`` for a version found but
        not loaded, ``VersionNotFound`` (naming the loaded ones) for any other."""
        m = record.manifest
        if m is not None and version == str(m.version):
            return record.lane
        lane = record.lanes.get(version)
        if lane is not None:
            return lane.lane
        if version in record.found:
            loaded = ", ".join(self._loaded_versions(record)) or "none"
            raise VersionStateError(
                record.name, version, operation, f"it is not loaded (loaded: {loaded})",
                f"load it first: `nyxplug versions {record.name} --load {version}` "
                f"(load_version)",
            )  # fmt: skip
        raise self._version_not_found(record, version)

    def _context(self, name: str, manifest: Manifest, guard: SandboxGuard | None) -> PluginContext:
        return PluginContext(
            name=name,
            plugin_id=manifest.id,
            version=str(manifest.version),
            config=manifest.config,
            dispatcher=self.dispatcher,
            guard=guard,
        )

    def _handler_timeout(self, manifest: Manifest) -> float | None:
        return manifest.resources.handler_timeout or self.config.defaults.handler_timeout

    def _handler(self, record: PluginRecord, instance: Any, manifest: Manifest) -> Supervision:
        """What the dispatcher calls: an isolated plugin times its handler in the child."""
        if isinstance(instance, IsolatedPlugin):
            return Supervision(instance)
        return supervise(record, instance, manifest.id, self._handler_timeout(manifest))

    def _isolated(self, record: PluginRecord, manifest: Manifest, snapshot: Snapshot | None) -> Any:
        """The factory of an ``isolation = "process"`` plugin: a child runs its bytes."""
        if not self.config.policy.allow_process_isolation:
            raise PermissionError(
                "the host's policy.allow_process_isolation is false - enable it in the host "
                'config or set [resources] isolation = "in-process"'
            )
        if snapshot is None:
            raise ValueError(
                'isolation = "process" needs a plugin folder or an installed package: the '
                "child loads the plugin from the files the host read"
            )
        # A version staged beside the running one comes from its own found record: the
        # runtime's record of the plugin is the one that counts and reacts.
        record = self._records.get(record.name, record)
        name, plugin_id = record.name, manifest.id
        limits, memory_required = child_limits(name, manifest.sandbox, self.config.isolation.limits)

        def queue_depth() -> int:
            stats = self.dispatcher.plugin_stats(plugin_id)
            return stats.queue_depth if stats is not None else 0

        def timed_out(count: int) -> None:
            record.timeouts += count

        def failed(reason: str) -> None:
            asyncio.get_running_loop().create_task(
                self._fail_isolated(record, instance, reason), context=contextvars.Context()
            )

        instance = IsolatedPlugin(
            name=name, plugin_id=plugin_id, version=str(manifest.version),
            entry_module=manifest.entry_module, entry_attr=manifest.entry_attr,
            files=snapshot.files, config=dict(manifest.config),
            handler_timeout=self._handler_timeout(manifest), options=self.config.isolation,
            on_failed=failed, on_timeouts=timed_out, queue_depth=queue_depth,
            limits=limits, memory_required=memory_required,
            pending_replies=lambda: self.dispatcher._pending_replies(plugin_id),
        )  # fmt: skip
        return lambda: instance

    async def _fail_isolated(self, record: PluginRecord, instance: Any, reason: str) -> None:
        """An isolated plugin gave up (restarts exhausted, or a limit said unload). A
        version beside the stable one is not quarantined with the plugin: a rollout that
        uses it rolls back, and it stays loaded (failing its frames, counted) until
        unloaded."""
        version = next((v for v, lane in record.lanes.items() if lane.instance is instance), None)
        if version is None:
            await self._quarantine(record, instance, reason)
            return
        self._audit("isolation", "failed", record, version=version, reason=reason)
        assert record.manifest is not None
        controller = self.rollouts.get(record.manifest.id)
        if controller is not None and controller.state not in TERMINAL and (
            record.lanes[version].lane == controller.candidate
            and controller.state is not RolloutState.PROMOTED
        ):  # fmt: skip
            self._act(record, controller, "rollback", "isolation")
        logger.error(
            "Plugin %r: version %s (isolated) gave up: %s - unload_version it", record.name,
            version, reason,
        )  # fmt: skip

    async def _quarantine(self, record: PluginRecord, instance: Any, reason: str) -> None:
        """Unload the plugin without draining and leave it ``failed`` with ``reason``."""
        async with self._lock(record.name):
            if record.instance is not instance or record.state is not PluginState.ACTIVE:
                return
            assert record.manifest is not None
            record.move(PluginState.DRAINING)
            await self._stop_watchers(record)
            try:
                await self.dispatcher.unload_plugin(record.manifest.id, drain=False)
            finally:
                await self._drop_other_versions(record)
                if isinstance(instance, IsolatedPlugin):
                    await instance.aclose()
                else:
                    await call_on_unload(record.name, record.guard, instance)
                    if record.code is not None:
                        unload_code(record.code.package)
                        record.code = None
                    record.instance = None
                record.move(PluginState.FAILED, reason)
                if record.name in self._load_order:
                    self._load_order.remove(record.name)
                if isinstance(instance, IsolatedPlugin):
                    self._audit(
                        "isolation", "failed", record, reason=reason,
                        restarts=instance.stats().restarts,
                    )  # fmt: skip
                else:
                    self._audit("recovery", "quarantined", record, reason=reason)

    def isolation_stats(self, name: str) -> IsolationStats | None:
        """The child, faults and ledger of an isolated plugin (None if it runs in-process)."""
        instance = self._record(name).instance
        return instance.stats() if isinstance(instance, IsolatedPlugin) else None

    def _read_code(self, record: PluginRecord) -> tuple[Snapshot | None, bool]:
        """The bytes to import, and whether a signature vouched for them (``read_code``)."""
        return read_code(
            record, require_signatures=self.require_signatures, trust=self.trust, audit=self.audit
        )

    def _import_code(
        self, record: PluginRecord, manifest: Manifest, snapshot: Snapshot | None
    ) -> tuple[Callable[[], Any], LoadedCode | None]:
        """The plugin factory, imported from the snapshot (a code plugin's is its class)."""
        if manifest.resources.isolation == "process":
            return self._isolated(record, manifest, snapshot), None
        if record.folder is None or snapshot is None:
            return record.factory, None
        code = import_entry(record.name, snapshot, manifest.entry_module, manifest.entry_attr)
        entry = code.entry
        return (entry if callable(entry) else (lambda: entry)), code

    async def unload(self, name: str, *, drain: bool = True) -> PluginStats:
        """Stop an active plugin: drain (or drop) its queue, then ``on_unload``."""
        async with self._lock(name):
            record = self._record(name)
            if record.state is not PluginState.ACTIVE:
                raise PluginStateError(name, str(record.state), "unload", "it is not active")
            assert record.manifest is not None
            record.move(PluginState.DRAINING)
            await self._stop_watchers(record)
            try:
                stats = await self.dispatcher.unload_plugin(record.manifest.id, drain=drain)
            finally:
                await self._drop_other_versions(record)
                reason = await call_on_unload(name, record.guard, record.instance)
                if record.code is not None:
                    unload_code(record.code.package)
                    record.code = None
                record.instance = None
                record.move(PluginState.UNLOADED, reason)
                if name in self._load_order:
                    self._load_order.remove(name)
            self._audit(
                "unload", "done", record, drained=drain, dropped=stats.dropped,
                processed=stats.messages_processed, reason=reason,
            )  # fmt: skip
            return stats

    # -- versions side by side ------------------------------------------------------

    def versions(self, name: str) -> list[VersionStatus]:
        """Every version of the plugin discovery found, lowest first, with its role now."""
        record = self._record(name)
        m = record.manifest
        active = record.state is PluginState.ACTIVE and m is not None
        held: dict[str, Any] = {}
        if active:
            assert m is not None
            held[str(m.version)] = record
            held.update(record.lanes)
        d = self.dispatcher
        stats = d.version_stats(m.id) if active and m is not None else {}
        route = d.route_info(m.id) if active and m is not None else None
        controller = self.rollouts.get(m.id) if m is not None else None
        info = self._rollout_info.get(m.id) if m is not None else None
        warm = (
            info.stable
            if controller is not None and info is not None
            and controller.state is RolloutState.PROMOTED
            else None
        )  # fmt: skip
        out = []
        for version in sorted({*record.found, *held}, key=parse_version):
            holder = held.get(version)
            found = record.found.get(version)
            location = holder.location if holder is not None else (found.location if found else "")
            if holder is None:
                out.append(VersionStatus(version, "available", location, False, 0.0, None, None,
                                         None))  # fmt: skip
                continue
            lane = holder.lane
            weight = 0.0
            if route is not None and route.candidate is not None:
                weight = route.weight if route.candidate == lane else 0.0
            if holder is record:
                role = "stable"
                weight = 100.0 - (route.weight if route and route.candidate else 0.0)
            elif route is not None and route.candidate == lane:
                role = "candidate"
            elif route is not None and route.shadow == lane:
                role = "shadow"
            elif version == warm:
                role = "warm"
            else:
                role = "loaded"
            assert m is not None
            out.append(VersionStatus(
                version, role, location, True, weight, stats.get(lane),
                d.breaker_stats(m.id, version=lane),
                holder.health.stats() if holder.health is not None else None,
            ))  # fmt: skip
        return out

    def _version_status(self, record: PluginRecord, version: str) -> VersionStatus:
        return next(v for v in self.versions(record.name) if v.version == version)

    async def load_version(
        self, name: str, version: str, *, caller: str | None = None
    ) -> VersionStatus:
        """Load a found version next to the running one (its own queue, worker, stats,
        breaker and health checks); it takes no frames until a rollout routes some to
        it. At most ``runtime.max_versions`` (5) versions of a plugin are loaded."""
        async with self._lock(name):
            record = self._record(name)
            self._active(record, f"load version {version} of")
            await self._load_lane(record, version, caller)
            return self._version_status(record, version)

    async def _load_lane(self, record: PluginRecord, version: str, caller: str | None) -> Lane:
        """Stage ``version`` (as a reload stages code) and load it as a lane of its own."""
        name = record.name
        stable = record.manifest
        assert stable is not None
        if version == str(stable.version) or version in record.lanes:
            raise VersionStateError(
                name, version, "load", "it is loaded already",
                f"use it as it is (`nyxplug versions {name}` lists it), or unload it first "
                f"(`nyxplug versions {name} --unload {version}`, unload_version)",
            )  # fmt: skip
        source = record.found.get(version)
        if source is None:
            raise VersionNotFound(name, version, tuple(sorted(record.found, key=parse_version)))
        limit = self.config.runtime.max_versions
        if 1 + len(record.lanes) >= limit:
            raise VersionStateError(
                name, version, "load", f"{limit} versions are loaded already (runtime."
                "max_versions)", f"unload one that no rollout uses first (`nyxplug versions "
                f"{name} --unload VERSION`, unload_version)",
            )  # fmt: skip

        def check(manifest: Manifest) -> None:
            if str(manifest.version) != version:
                raise ValueError(
                    f"Expected version {version} in {source.location} (as discovered), found "
                    f"{manifest.version} - the folder changed since; rediscover"
                )
            if manifest.id != stable.id:
                raise ValueError(
                    f"Expected id {stable.id} (the stable version's), got {manifest.id} - "
                    "the versions of one plugin share its id and queue"
                )
            check_api_compatible(manifest)

        try:
            staged = await stage_version(source, self._steps, check=check)
        except StagingFailed as failed:
            reason = f"version {version}: {type(failed.cause).__name__}: {failed.cause}"
            self._audit("version", "failed", record, version=version, step=failed.step,
                        reason=reason, caller=caller)  # fmt: skip
            raise PluginLoadError(name, failed.step, reason) from failed.cause
        assert staged is not None
        manifest = staged.manifest
        d = self.dispatcher
        try:
            supervised = self._handler(record, staged.instance, manifest)
            await d.load_version(
                stable.id, version, supervised.handler,
                capacity=manifest.resources.capacity or self.config.defaults.capacity,
                sandbox=staged.guard, overrun_limit=supervised.overrun_limit,
                on_overrun=supervised.on_overrun,
            )  # fmt: skip
        except BaseException:
            await discard(name, staged.code, staged.instance, staged.guard)
            raise
        breaker = self._breaker_of(manifest)
        if breaker is None and self._recovery_of(manifest) is not None:
            breaker = BreakerConfig()  # the ladder watches it should this version be promoted
        if breaker is not None:
            d.set_breaker(stable.id, breaker, version=version)
        lane = Lane(
            source=source.source, location=source.location, manifest=manifest,
            folder=source.folder, factory=source.factory, instance=staged.instance,
            code=staged.code, guard=staged.guard, key_id=source.key_id, signer=source.signer,
            verified=staged.verified, health=None, lane=version,
        )  # fmt: skip
        record.lanes[version] = lane
        if breaker is not None:
            self._watch_breaker(record, stable.id, lane.lane)  # audited as the stable one's
        lane.health = self._start_health(record, manifest, staged.instance, version)
        self._audit("version", "loaded", record, version=version, caller=caller)
        return lane

    async def unload_version(
        self, name: str, version: str, *, drain: bool = True, caller: str | None = None
    ) -> PluginStats:
        """Unload a loaded version that is not the stable one and no rollout or route
        uses: drain (or drop, counted) its queue, ``on_unload``; returns its last stats."""
        async with self._lock(name):
            record = self._record(name)
            manifest = self._active(record, f"unload version {version} of")
            if version == str(manifest.version):
                raise VersionStateError(
                    name, version, "unload", "it is the stable version",
                    f"make another version stable first (`nyxplug rollout start {name} "
                    f"VERSION`, then `nyxplug rollout promote {name}`), or unload the plugin "
                    f"(`nyxplug disable {name}`)",
                )  # fmt: skip
            lane = record.lanes.get(version)
            if lane is None:
                if version in record.found:
                    raise VersionStateError(name, version, "unload", "it is not loaded",
                                            "nothing to do")  # fmt: skip
                raise VersionNotFound(name, version, tuple(sorted(record.found, key=parse_version)))
            controller = self.rollouts.get(manifest.id)
            if controller is not None and controller.state not in TERMINAL and lane.lane in (
                controller.candidate, controller.stable,
            ):  # fmt: skip
                if controller.state is RolloutState.PROMOTED:
                    why = "the rollout keeps it warm for an instant rollback"
                    fix = "wait until the rollback window ends: it is unloaded then by itself"
                else:
                    why = "the rollout in progress uses it"
                    fix = (
                        f"abort the rollout first (`nyxplug rollout abort {name}`, "
                        f"rollout_action({name!r}, 'abort')), or wait until it ends"
                    )
                raise VersionStateError(name, version, "unload", why, fix)
            route = self.dispatcher.route_info(manifest.id)
            if route is not None and (
                route.shadow == lane.lane or any(r.version == lane.lane for r in route.rules)
            ):
                raise VersionStateError(name, version, "unload", "a route sends frames to it",
                                        "route them elsewhere first")  # fmt: skip
            stats = await self._drop_lane(record, version, drain)
            self._audit(
                "version", "unloaded", record, version=version, caller=caller, drained=drain,
                processed=stats.messages_processed, dropped=stats.dropped,
                refused=stats.circuit_open,
            )  # fmt: skip
            return stats

    async def _drop_lane(self, record: PluginRecord, version: str, drain: bool) -> PluginStats:
        lane = record.lanes.pop(version)
        assert record.manifest is not None
        monitor, lane.health = lane.health, None
        if monitor is not None:
            await monitor.aclose()
        try:
            stats: PluginStats = await self.dispatcher.unload_version(
                record.manifest.id, lane.lane, drain=drain
            )
        finally:
            await discard(record.name, lane.code, lane.instance, lane.guard)
        return stats

    def _sync_stable(self, record: PluginRecord, *, caller: str | None = None) -> None:
        """Make the record's stable version the one the dispatcher routes to as stable
        (after a promotion or a rollback): swap it in, remember it, and let the breaker
        watcher and recovery ladder follow its lane."""
        m = record.manifest
        d = self.dispatcher
        route = d.route_info(m.id) if m is not None else None
        if m is None or route is None or route.stable == record.lane:
            return
        new = next(v for v, lane in record.lanes.items() if lane.lane == route.stable)
        old = str(m.version)
        lane = record.lanes.pop(new)
        exchange(record, lane)
        record.lanes[old] = lane
        manifest = record.manifest
        assert manifest is not None
        d.registry.set_permissions(
            manifest.id, manifest.permission_mask, source=info_of(record, manifest).source
        )
        previous = self._stable.previous(record.name)
        if previous and previous[-1] == new:
            previous.pop()  # back to the one before: a rollback
        else:
            previous.append(old)
        self._remember_stable(record.name, new, previous)
        breaker = d.breaker_stats(manifest.id)
        if breaker is not None:
            self._watch_breaker(record, manifest.id)
            ladder = record.recovery
            if ladder is not None:  # it repairs and judges the new stable version from now on
                ladder.set_actions(self._ladder_actions(record, ladder.config, record.instance))
                ladder.breaker_changed(breaker.state)
        self._audit("version", "stable", record, version=new, previous=old, caller=caller)
        logger.info("Plugin %r: version %s is stable now (was %s)", record.name, new, old)

    def _remember_stable(self, name: str, stable: str, previous: list[str]) -> None:
        try:
            self._stable.set(name, stable, previous)
        except OSError as exc:
            logger.error(
                "Plugin %r: could not write %s (version %s stays stable until the next "
                "restart only): %s", name, VERSIONS_FILE, stable, exc,
            )  # fmt: skip

    # -- rollouts ------------------------------------------------------------------------

    def _canary_on_new_version(self, record: PluginRecord) -> bool:
        """The stable version's ``[rollout]`` (else the host's) says ``on_new_version``."""
        m = record.manifest
        settings = m.rollout if m is not None and m.rollout is not None else None
        settings = settings if settings is not None else self.config.defaults.rollout
        return settings is not None and settings.on_new_version == "canary"

    def _new_version_on_disk(self, record: PluginRecord) -> bool:
        """An active plugin that rolls new versions out, whose folder (or package) now
        holds a higher version than the running one."""
        m = record.manifest
        if (
            record.state is not PluginState.ACTIVE or m is None or record.folder is None
            or not self._canary_on_new_version(record)
        ):  # fmt: skip
            return False
        try:
            on_disk = load_manifest(record.folder).version
        except (ManifestError, OSError):
            return False  # the reload reports what is wrong with it
        return on_disk > m.version

    async def roll_out_new_version(self, name: str, *, caller: str | None = None) -> ReloadResult:
        """With ``[rollout] on_new_version = "canary"``: start a rollout of the highest
        version found above the stable one (once per version; none while another rollout
        is in progress). Outcome ``"rollout"``, else ``"unchanged"``."""
        record = self._record(name)
        m = record.manifest
        running = str(m.version) if m is not None else None
        unchanged = ReloadResult(name=name, outcome="unchanged", from_version=running,
                                 to_version=running, pause=None, attempts=1)  # fmt: skip
        if m is None or record.state is not PluginState.ACTIVE:
            return unchanged
        controller = self.rollouts.get(m.id)
        if not self._canary_on_new_version(record) or (
            controller is not None and controller.state not in TERMINAL
        ):
            return unchanged
        tried = self._auto_rollouts.setdefault(name, set())
        newer = [
            v for v, found in record.found.items()
            if parse_version(v) > m.version and v not in record.lanes and v not in tried
            and found.state is not PluginState.FAILED
        ]  # fmt: skip
        if not newer:
            return unchanged
        target = max(newer, key=parse_version)
        tried.add(target)
        status = await self.start_rollout(name, target, caller=caller or "on_new_version")
        return ReloadResult(name=name, outcome="rollout", from_version=status.stable,
                            to_version=status.candidate, pause=None, attempts=1)  # fmt: skip

    def _rollout_config_of(self, record: PluginRecord, candidate: Manifest) -> RolloutConfig:
        for manifest in (candidate, record.manifest):
            if manifest is not None and manifest.rollout is not None:
                return rollout_config(manifest.rollout)
        if self.config.defaults.rollout is not None:
            return rollout_config(self.config.defaults.rollout)
        return RolloutConfig()

    async def start_rollout(
        self,
        name: str,
        version: str,
        config: RolloutConfig | None = None,
        *,
        caller: str | None = None,
    ) -> RolloutStatus:
        """Move the plugin's traffic to ``version`` step by step (loaded first if needed).

        ``config`` defaults to the candidate's manifest ``[rollout]``, else the stable
        one's, else the host's ``[defaults.rollout]``, else ``RolloutConfig()``. A task
        judges it every interval; every event is an audit line (event "rollout").
        """
        async with self._lock(name):
            record = self._record(name)
            manifest = self._active(record, f"start a rollout of version {version} of")
            if version == str(manifest.version):
                raise VersionStateError(
                    name, version, "roll out", "it is the stable version already",
                    f"name another version (`nyxplug versions {name}` lists them)",
                )  # fmt: skip
            current = self.rollouts.get(manifest.id)
            if current is not None and current.state not in TERMINAL:
                raise self._rollout_refusal(record, "start", current)
            lane = record.lanes.get(version)
            if lane is None:
                lane = await self._load_lane(record, version, caller)
            assert lane.manifest is not None
            self._refuse_taken_out(record, "start", version, lane.lane)
            if config is None:
                config = self._rollout_config_of(record, lane.manifest)
            d = self.dispatcher
            if config.max_slow_rate is not None and (
                d.breaker_stats(manifest.id, version=lane.lane) is None
            ):
                raise RolloutStateError(
                    manifest.id, "start", "not started",
                    f"give it one: a [breaker] (with slow_call_duration) in its manifest or the "
                    f"host's [defaults.breaker], or the default one now: `nyxplug breaker {name} "
                    f"--version {version} --set closed` (set_breaker_state(..., version="
                    f"{version!r})); or leave max_slow_rate unset",
                    name, f"version {version} has no circuit breaker to time the slow calls "
                    "max_slow_rate checks",
                )  # fmt: skip
            before = self._rollout_info.get(manifest.id)
            self._rollout_info[manifest.id] = _RolloutInfo(
                str(manifest.version), version, strategy_of(config), time.time(), caller,
                {record.lane: str(manifest.version), lane.lane: version},
            )  # fmt: skip
            try:
                self.rollouts.start(manifest.id, record.lane, lane.lane, config)
            except BaseException as exc:
                if before is None:
                    del self._rollout_info[manifest.id]
                else:
                    self._rollout_info[manifest.id] = before
                if isinstance(exc, RolloutStateError):  # the controller's words, by plugin id
                    raise RolloutStateError(
                        manifest.id, "start", exc.state, f"fix it and start again: {exc.fix}",
                        name, f"version {version} cannot be rolled out: {exc.state}",
                    ) from exc  # fmt: skip
                raise
            self._rollout_info[manifest.id].caller = None
            self._wake_rollouts()
            status = self.rollout(name)
            assert status is not None
            return status

    def rollout(self, name: str) -> RolloutStatus | None:
        """The plugin's latest rollout (in progress or ended), or None."""
        record = self._record(name)
        if record.manifest is None:
            return None
        pid = record.manifest.id
        controller, info = self.rollouts.get(pid), self._rollout_info.get(pid)
        if controller is None or info is None:
            return None
        return RolloutStatus(
            plugin=name, stable=info.stable, candidate=info.candidate, strategy=info.strategy,
            state=controller.state.value, weight=controller.weight, step=controller.step,
            started_at=info.started_at,
            events=tuple(
                RolloutEventView(e.at, e.kind, e.state.value, e.weight, info.detail(e.detail))
                for e in controller.events
            ),
        )  # fmt: skip

    def rollout_action(self, name: str, action: str, *, caller: str | None = None) -> RolloutStatus:
        """An operator's ``pause``, ``resume``, ``promote``, ``rollback`` or ``abort`` of the
        plugin's rollout; applies from the next frame and is written to the audit log."""
        record = self._record(name)
        if action not in ROLLOUT_ACTIONS:
            raise ValueError(
                f"Expected a rollout action in {', '.join(ROLLOUT_ACTIONS)}, got {action!r} - "
                f"for plugin {name!r}"
            )
        controller = self.rollouts.get(record.manifest.id) if record.manifest else None
        if controller is None:
            raise self._rollout_refusal(record, action, None)
        info = self._rollout_info.get(record.manifest.id) if record.manifest else None
        if action == "promote" and info is not None and controller.state not in TERMINAL:
            self._refuse_taken_out(record, "promote", info.candidate, controller.candidate)
        try:
            self._act(record, controller, action, caller)
        except RolloutStateError as exc:  # it had ended (maybe just now, by its clock)
            raise self._rollout_refusal(record, action, controller) from exc
        status = self.rollout(name)
        assert status is not None
        return status

    def _refuse_taken_out(self, record: PluginRecord, action: str, version: str, lane: str) -> None:
        """A candidate an operator forced open is not rolled out, and one whose breaker
        refuses every frame (forced open, or open after failing) is not promoted: as the
        stable version it would refuse all of the plugin's traffic. (A rollout may start on
        a candidate that tripped: its checks fail while the breaker is open.)"""
        assert record.manifest is not None
        stats = self.dispatcher.breaker_stats(record.manifest.id, version=lane)
        refused: tuple[BreakerState, ...] = (BreakerState.FORCED_OPEN,)
        if action == "promote":
            refused = (BreakerState.OPEN, BreakerState.FORCED_OPEN)
        if stats is None or stats.state not in refused:
            return
        name = record.name
        if stats.state is BreakerState.FORCED_OPEN:
            why = "an operator forced it open"
            fix = f"close it first: `nyxplug breaker {name} --version {version} --set closed`"
        else:
            why = "it tripped on failures"
            fix = (
                f"find why (`nyxplug breaker {name} --version {version}`), then close it: "
                f"`nyxplug breaker {name} --version {version} --set closed`"
            )
        raise RolloutStateError(
            record.manifest.id, action, stats.state.name.lower(), fix, name,
            f"version {version}'s circuit breaker is {stats.state.name.lower().replace('_', ' ')}"
            f" ({why}): as the stable version it would refuse every frame",
        )  # fmt: skip

    def _rollout_refusal(
        self, record: PluginRecord, action: str, controller: RolloutController | None
    ) -> RolloutStateError:
        """``RolloutStateError`` in the operator's terms: the plugin's name, its rollout's
        versions and state, and the fix as the manager and ``nyxplug rollout`` spell it
        (the controller's own refusals know the plugin by id and name code-level fixes)."""
        name = record.name
        pid = record.manifest.id if record.manifest is not None else -1
        if controller is None:
            return RolloutStateError(
                pid, action, "none",
                f"start one first: `nyxplug rollout start {name} VERSION` (start_rollout); "
                f"`nyxplug versions {name}` lists the versions",
                name, "it has none",
            )  # fmt: skip
        state = controller.state
        info = self._rollout_info.get(pid)
        stable, candidate = (
            (info.stable, info.candidate) if info is not None
            else (controller.stable, controller.candidate)
        )  # fmt: skip
        strategy = f"{info.strategy.replace('_', '-')} " if info is not None else ""
        rollout = f"its {strategy}rollout {stable} -> {candidate}"
        again = f"`nyxplug rollout start {name} {candidate}` (start_rollout({name!r}, "
        again += f"{candidate!r}))"
        if state is RolloutState.SUCCEEDED:
            return RolloutStateError(
                pid, action, state.value,
                f"{candidate} is the stable version now; to move on, start a new rollout: "
                f"`nyxplug rollout start {name} VERSION` (start_rollout)",
                name, f"{rollout} has ended (succeeded)",
            )  # fmt: skip
        if state in TERMINAL:
            return RolloutStateError(
                pid, action, state.value, f"start a new one (from step 0): {again}", name,
                f"{rollout} has ended ({state.value})",
            )  # fmt: skip
        if state is RolloutState.PROMOTED:
            fix = (
                f"wait until its rollback window ends ({stable} is kept warm until then), or "
                f"roll it back: `nyxplug rollout rollback {name}` (rollout_action({name!r}, "
                "'rollback'))"
            )
        else:
            fix = (
                f"abort it first: `nyxplug rollout abort {name}` (rollout_action({name!r}, "
                f"'abort')), or promote it: `nyxplug rollout promote {name}`"
            )
        return RolloutStateError(pid, action, state.value, fix, name, f"{rollout} is {state.value}")

    def _act(
        self, record: PluginRecord, controller: RolloutController, action: str, caller: str | None
    ) -> None:
        assert record.manifest is not None
        info = self._rollout_info.get(record.manifest.id)
        if info is not None:
            info.caller = caller
        try:
            getattr(controller, action)()
        finally:
            if info is not None:
                info.caller = None
        self._wake_rollouts()

    def _by_id(self, plugin_id: int) -> PluginRecord | None:
        for record in self._records.values():
            if record.manifest is not None and record.manifest.id == plugin_id:
                return record
        return None

    def _rollout_event(self, plugin_id: int, event: RolloutEvent) -> None:
        """A controller moved (inside tick or an action): audit it, follow the stable."""
        record = self._by_id(plugin_id)
        info = self._rollout_info.get(plugin_id)
        if record is None or info is None:
            return
        self._audit(
            "rollout", event.kind, record, version=info.candidate, stable=info.stable,
            state=event.state.value, weight=event.weight, at=event.at,
            detail=info.detail(event.detail), caller=info.caller,
        )  # fmt: skip
        self._sync_stable(record, caller=info.caller)
        waiting = self._rollout_events.pop(record.name, None)
        if waiting is not None:
            waiting.set()
        if event.state is RolloutState.SUCCEEDED:
            self._retire.append((record.name, info.stable))  # the warm one's window is over
            self._wake_rollouts()

    def _wake_rollouts(self) -> None:
        if self._rollout_task is None or self._rollout_task.done():
            self._rollout_task = asyncio.get_running_loop().create_task(
                self._run_rollouts(), name="nyxplug-rollouts"
            )
        self._rollout_wake.set()

    async def tick_rollouts(self) -> None:
        """Run one pass of the rollouts' task now and wait for it: the task does this by
        itself when a check or deadline is due; call it after moving an injected clock."""
        want = self._passes_started + 1
        self._wake_rollouts()
        while self._passes_done < want:
            passed = self._rollout_passed
            await passed.wait()

    async def _run_rollouts(self) -> None:
        while True:
            self._rollout_wake.clear()
            self._passes_started += 1
            try:
                self._tick_each()
                while self._retire:
                    name, version = self._retire.pop(0)
                    await self._retire_warm(name, version)
            except Exception:  # a bug must not stop every rollout's timer
                logger.exception("The rollouts' task failed a pass - going on")
            self._passes_done = self._passes_started
            passed, self._rollout_passed = self._rollout_passed, asyncio.Event()
            passed.set()
            due = self.rollouts.next_due()
            timeout = None if due is None else max(0.0, due - self._clock())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._rollout_wake.wait()

    def _tick_each(self) -> None:
        """Tick every rollout in progress; one whose tick raises is dropped (logged and
        audited), so it can neither stop the others nor keep the task spinning."""
        for record in list(self._records.values()):
            m = record.manifest
            controller = self.rollouts.get(m.id) if m is not None else None
            if controller is None or controller.state in TERMINAL:
                continue
            try:
                controller.tick()
            except Exception as exc:
                assert m is not None
                self.rollouts.forget(m.id)
                reason = f"{type(exc).__name__}: {exc}"
                logger.error("Plugin %r: its rollout failed and was dropped: %s", record.name,
                             reason)  # fmt: skip
                self._audit("rollout", "failed", record, reason=reason)

    async def wait_rollout(self, name: str) -> RolloutStatus:
        """Wait for the next event of the plugin's rollout (a check, a step, a promotion,
        its end ...) and return the rollout then."""
        self._record(name)
        while True:
            event = self._rollout_events.setdefault(name, asyncio.Event())
            await event.wait()
            status = self.rollout(name)
            if status is not None:
                return status

    async def _retire_warm(self, name: str, version: str) -> None:
        """A promoted rollout's window is over: unload the old version (drained)."""
        async with self._lock(name):
            record = self._records.get(name)
            if record is None or record.state is not PluginState.ACTIVE:
                return
            lane = record.lanes.get(version)
            route = self.dispatcher.route_info(record.manifest.id) if record.manifest else None
            if lane is None or route is None or lane.lane in (route.candidate, route.shadow):
                return
            try:
                stats = await self._drop_lane(record, version, drain=True)
            except Exception as exc:
                logger.error("Plugin %r: could not unload version %s: %s", name, version, exc)
                return
            self._audit(
                "version", "unloaded", record, version=version, drained=True,
                processed=stats.messages_processed, dropped=stats.dropped,
                refused=stats.circuit_open, reason="rollback window over",
            )  # fmt: skip

    # -- hot reload ------------------------------------------------------------------

    async def reload(
        self, name: str, *, if_changed: bool = False, allow_downgrade: bool = False
    ) -> ReloadResult:
        """Swap a running plugin for the version on disk while its frames keep flowing.

        Stage -> verify -> import -> instantiate -> ``on_load`` -> ``health()`` -> swap
        (state handed over, queue kept) -> old ``on_unload``. Any failure leaves the
        old version serving untouched and raises ``ReloadFailed`` (counted in the
        plugin's ``reloads``); transient ones are retried with exponential backoff
        first. ``if_changed``: skip the reload when the bytes equal the running code's.
        """
        if self._new_version_on_disk(self._record(name)):
            self.discover()  # [rollout] on_new_version = "canary": roll it out instead
            return await self.roll_out_new_version(name, caller="reload")
        return await self._hot_reload(name, if_changed=if_changed, allow_downgrade=allow_downgrade)

    async def _hot_reload(
        self, name: str, *, if_changed: bool, allow_downgrade: bool
    ) -> ReloadResult:
        async with self._lock(name):
            record = self._record(name)
            if record.state is not PluginState.ACTIVE:
                raise PluginStateError(
                    name, str(record.state), "reload",
                    "only an active plugin is swapped in place; load it instead",
                )  # fmt: skip
            runtime = self.config.runtime
            try:
                result = await reload_plugin(
                    record, self._records, if_changed=if_changed,
                    allow_downgrade=allow_downgrade, retries=runtime.reload_retries,
                    backoff=runtime.reload_backoff, dispatcher=self.dispatcher,
                    steps=self._steps,
                )  # fmt: skip
            except ReloadFailed as exc:
                self._audit("reload", "rolled-back", record, step=exc.step, reason=exc.reason)
                raise
            if result.outcome != "unchanged":
                self._audit(
                    "reload", result.outcome, record, from_version=result.from_version,
                    to_version=result.to_version, pause=result.pause, attempts=result.attempts,
                )  # fmt: skip
            return result

    def _audit(self, event: str, decision: str, record: PluginRecord, **fields: Any) -> None:
        """One lifecycle entry in the host's audit log (the trail ``nyxplug audit`` reads);
        a log that cannot be written is reported, never raised into the lifecycle."""
        if self.audit is None:
            return
        m = record.manifest
        version = fields.pop("version", m.plugin.version if m else None)
        try:
            self.audit.record(
                event, decision, plugin=record.name, plugin_id=m.id if m else None,
                version=version, **fields,
            )  # fmt: skip
        except OSError as exc:
            logger.error("Plugin %r: could not write the audit log: %s", record.name, exc)

    def watched_paths(self) -> dict[Path, str]:
        """Folder -> plugin name, for every plugin that runs from a folder (the watcher's map)."""
        return {
            record.folder.resolve(): name
            for name, record in self._records.items()
            if record.folder is not None
        }

    def stats(self, name: str) -> PluginStats | None:
        """The plugin's counters (None unless it is loaded)."""
        record = self._record(name)
        if record.manifest is None:
            return None
        stats: PluginStats | None = self.dispatcher.plugin_stats(record.manifest.id)
        return stats

    async def aclose(self) -> None:
        """Unload every active plugin, dependents first."""
        task, self._rollout_task = self._rollout_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for name in reversed(list(self._load_order)):
            if self._records[name].state is PluginState.ACTIVE:
                await self.unload(name)
        writer, self._breaker_writer = self._breaker_writer, None
        if writer is not None:
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer
        self._flush_breaker_lines()

    async def __aenter__(self) -> PluginManager:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()
