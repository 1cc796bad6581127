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
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._breaker import BreakerConfig, BreakerState, BreakerStats
from .._constants import Permission
from .._impl import Dispatcher as DefaultDispatcher
from .._recovery import RecoveryConfig
from .._stats import PluginStats
from ..config import HostConfig
from ..isolation.manifest_limits import child_limits
from ..isolation.process import IsolatedPlugin, IsolationStats
from ..sandbox import SandboxGuard
from ..source.importer import LoadedCode, import_entry, unload_code
from ..source.manifest import Manifest, ManifestError, check_api_compatible
from ..source.snapshot import Snapshot
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
)
from .health import HealthMonitor
from .recovery import Action, RecoveryLadder
from .reload import LoadSteps, ReloadResult, reload_plugin
from .staging import guard_of, info_of, instantiate, read_code, staged_manifest
from .state import PluginState
from .supervise import Supervision, call_on_unload, lifecycle_call, supervise

# nyxplug.trust (and cryptography, ~20 ms) loads when a manager is made or a package
# verified, not with `import nyxplug.plugins`, which plugin code does for `Plugin`.
if TYPE_CHECKING:
    from ..trust import AuditLog, TrustStore

# The catalog names are defined in .catalog and stay importable from here too.
__all__ = ("ENTRY_POINT_GROUP", "PluginManager", "PluginStatus", "plugin", "registered_plugins")

#: The state file (under the host's ``state_dir``) that remembers disabled plugins.
STATE_FILE = "plugins.json"

logger = logging.getLogger("nyxplug.runtime")


class PluginManager:
    """Finds, catalogs, loads and supervises plugins on one ``Dispatcher``.

    ``async with PluginManager(config) as manager:`` discovers and starts every enabled
    plugin, and unloads them all (draining) on exit.
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
        self._breaker_lines: collections.deque[tuple[PluginRecord, str, str]] = collections.deque()
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
        for name, record in found.items():
            current = self._records.get(name)
            if current is not None and current.state in (
                PluginState.LOADING, PluginState.ACTIVE, PluginState.DRAINING
            ):  # fmt: skip
                current.shadows = record.shadows  # a folder may have appeared since
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

    def manifest(self, name: str) -> Manifest | None:
        """The plugin's decoded manifest (None when it could not be read)."""
        return self._record(name).manifest

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
            self._start_health(record, manifest, instance)
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

    def _start_health(self, record: PluginRecord, manifest: Manifest, instance: Any) -> None:
        """Scheduled checks (``[health]``, else ``[defaults.health]``) on their own task.

        They ask whichever instance is running (a reload swaps it under them).
        """
        config = manifest.health if manifest.health is not None else self.config.defaults.health
        if config is None:
            return
        readiness = None
        if callable(getattr(instance, "ready", None)):

            def readiness() -> Any:
                return lifecycle_call(record.guard, record.instance, "ready")

        record.health = HealthMonitor(
            self.dispatcher, manifest.id, config,
            lambda: lifecycle_call(record.guard, record.instance, "health"), readiness,
            on_liveness_failure=functools.partial(self._liveness_failed, record.name),
        )  # fmt: skip
        record.health.start()

    async def _stop_watchers(self, record: PluginRecord) -> None:
        """Stop the health checks and the recovery ladder (the plugin is going away)."""
        monitor, record.health = record.health, None
        if monitor is not None:
            await monitor.aclose()
        if record.recovery is not None:  # stopped, its counts kept for the status
            await record.recovery.aclose()

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
        isolated = isinstance(instance, IsolatedPlugin)
        step = functools.partial
        actions: dict[str, Action | None] = {
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
            raise PluginStateError(record.name, str(record.state), step, "it is not active")
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
        verifies it, as any reload does), even if its bytes did not change."""
        await self.reload(record.name, allow_downgrade=True)

    def _rollback_step(self, record: PluginRecord) -> Action | None:
        """``rollback``: the previous good version. Versions do not run side by side yet,
        so there is none to go back to: the step is not available (the extension point
        where versions plug in)."""
        return None

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

    def _watch_breaker(self, record: PluginRecord, plugin_id: int) -> None:
        """Audit every transition of the plugin's breaker (and tell its recovery ladder).

        The dispatcher has one watcher per breaker and calls it inside the dispatch or
        worker batch that made the transition, so the callback only appends to a deque;
        a task writes the lines (file I/O is kept off the frame path).
        """
        if self.audit is None and record.recovery is None:
            return
        ladder = record.recovery
        lines, noted = self._breaker_lines, self._breaker_noted
        audited = self.audit is not None  # else nothing would drain the lines
        stats = self.dispatcher.breaker_stats(plugin_id)
        last = [stats.state.name.lower() if stats is not None else "closed"]

        def changed(state: BreakerState) -> None:
            if ladder is not None:
                ladder.breaker_changed(state)
            if audited:
                name = state.name.lower()
                lines.append((record, last[0], name))
                last[0] = name
                noted.set()

        self.dispatcher.watch_breaker(plugin_id, changed)
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
            record, previous, state = lines.popleft()
            self._audit("breaker", state, record, previous=previous)

    def flush_breaker_audit(self) -> None:
        """Write the breaker transitions noted so far now (the task writes them soon)."""
        self._flush_breaker_lines()

    # -- the circuit breaker, for operators ------------------------------------------------

    def breaker(self, name: str) -> BreakerStats | None:
        """The plugin's circuit breaker now (None when it is not loaded or has none)."""
        record = self._record(name)
        m = record.manifest
        if m is None or not self.dispatcher.is_loaded(m.id):
            return None
        stats: BreakerStats | None = self.dispatcher.breaker_stats(m.id)
        return stats

    def set_breaker_state(
        self, name: str, state: BreakerState, *, caller: str | None = None
    ) -> BreakerStats:
        """An operator's transition of the plugin's breaker (``CLOSED`` resets it,
        ``FORCED_OPEN``, ``DISABLED``, ``METRICS_ONLY``), written to the audit log with
        ``caller``. A running plugin without a breaker is given the default one first,
        so traffic can be forced off any plugin."""
        record = self._record(name)
        manifest = self._active(record, f"set its circuit breaker to {state.name}")
        d = self.dispatcher
        if d.breaker_stats(manifest.id) is None:
            d.set_breaker(manifest.id, BreakerConfig())
            self._watch_breaker(record, manifest.id)
        d.set_breaker_state(manifest.id, state)
        self._audit("breaker", "set", record, state=state.name.lower(), caller=caller)
        self._flush_breaker_lines()  # its transition, next to the action (we are on the loop)
        stats: BreakerStats | None = d.breaker_stats(manifest.id)
        assert stats is not None
        return stats

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
        """An isolated plugin gave up (restarts exhausted, or a limit said unload)."""
        await self._quarantine(record, instance, reason)

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
        try:
            self.audit.record(
                event, decision, plugin=record.name, plugin_id=m.id if m else None,
                version=m.plugin.version if m else None, **fields,
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
