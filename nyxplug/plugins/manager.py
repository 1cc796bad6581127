"""The plugin runtime: discover plugins, keep the catalog, load them in order, supervise.

``PluginManager`` owns a ``Dispatcher`` and puts plugins on it. Plugins come from
three sources: folders with a ``nyxplug.toml`` under the plugin directories,
installed distributions (entry-point group ``nyxplug.plugins``) and classes marked
with the ``@plugin(...)`` decorator. Each has a lifecycle state (``PluginState``)
and, when it failed or is disabled, the reason.

No plugin mistake takes the host down: an import error, a raising ``on_load`` or a
failing ``health()`` leaves that plugin ``failed`` with the reason; a raising handler
is counted and logged; a handler over its timeout is cancelled and counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import graphlib
import importlib.metadata
import inspect
import json
import logging
import os
import tempfile
from collections.abc import Callable, Coroutine, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import msgspec

from .._constants import Permission
from .._impl import Dispatcher as DefaultDispatcher
from .._info import PluginInfo
from .._stats import PluginStats
from ..config import HostConfig
from ..isolation.process import IsolatedPlugin, IsolationStats
from ..sandbox import FilesystemAccess, SandboxGuard, SandboxPolicy, guarded
from ..source.importer import LoadedCode, import_entry, unload_code
from ..source.layout import INDEX_FILE, MANIFEST_FILE, SIGNATURE_FILE
from ..source.manifest import (
    Manifest,
    ManifestError,
    check_api_compatible,
    decode_manifest,
    manifest_from_dict,
)
from ..source.snapshot import Snapshot
from .api import PluginContext
from .errors import (
    DependencyError,
    HandlerTimeout,
    PluginLoadError,
    PluginNotFound,
    PluginStateError,
    ReloadFailed,
)
from .reload import (
    ReloadCounters,
    ReloadResult,
    ReloadStats,
    check_upgrade,
    hand_over_state,
    needs_migration,
)
from .state import PluginState, can_move

# nyxplug.trust (and cryptography, ~20 ms) loads when a manager is made or a package
# verified, not with `import nyxplug.plugins`, which plugin code does for `Plugin`.
if TYPE_CHECKING:
    from ..trust import AuditLog, TrustStore

__all__ = ("ENTRY_POINT_GROUP", "PluginManager", "PluginStatus", "plugin", "registered_plugins")

ENTRY_POINT_GROUP = "nyxplug.plugins"
#: How long ``on_load`` / ``health()`` / ``on_unload`` may take before the plugin fails.
LIFECYCLE_TIMEOUT = 30.0
#: The state file (under the host's ``state_dir``) that remembers disabled plugins.
STATE_FILE = "plugins.json"

logger = logging.getLogger("nyxplug.runtime")

_C = TypeVar("_C", bound=type)
_CODE_PLUGINS: dict[str, type] = {}


def plugin(**manifest: Any) -> Callable[[_C], _C]:
    """Mark a class as a plugin defined in code; keys as in ``nyxplug.toml``'s ``[plugin]``.

    ``@plugin(name="echo", id=7, version="1.0.0", permissions=["DATA_ACCESS"])``; the
    other manifest tables go in as ``sandbox={...}``, ``resources={...}``,
    ``config={...}``, ``dependencies={...}``. Every ``PluginManager`` created
    afterwards finds the class (``registered_plugins()`` lists them).
    """

    def mark(cls: _C) -> _C:
        parsed = manifest_from_dict(_manifest_dict(manifest), f"@plugin on {cls.__qualname__}")
        cls.__nyxplug_manifest__ = parsed  # type: ignore[attr-defined]
        _CODE_PLUGINS[parsed.name] = cls
        return cls

    return mark


def registered_plugins() -> dict[str, type]:
    """Classes marked with ``@plugin``, by plugin name."""
    return dict(_CODE_PLUGINS)


def _manifest_dict(fields: dict[str, Any]) -> dict[str, Any]:
    """``@plugin`` keywords laid out like a ``nyxplug.toml`` document."""
    fields = dict(fields)
    tables: dict[str, Any] = {}
    for key in ("sandbox", "resources", "config", "dependencies"):
        if key in fields:
            tables[key] = fields.pop(key)
    frames = fields.pop("permissions", [])
    if isinstance(frames, Permission):
        frames = [member.name for member in Permission if member in frames]
    fields.setdefault("entry", "__code__:__code__")
    fields.setdefault("api", ">=1.0, <2")
    return {"plugin": fields, "permissions": {"frames": list(frames)}, **tables}


class PluginStatus(msgspec.Struct, frozen=True, kw_only=True):
    """A catalog entry: who the plugin is, where it came from, and its state."""

    name: str
    id: int | None
    version: str | None
    state: str
    reason: str | None
    source: str  # "directory", "package" (installed with nyxplug install), "entry-point", "code"
    location: str
    enabled: bool
    description: str = ""
    tags: tuple[str, ...] = ()
    permissions: tuple[str, ...] = ()
    dependencies: dict[str, str] = {}
    handler_timeouts: int = 0
    key_id: str | None = None  # the key that signed the package; None if unsigned
    signer: str | None = None  # that key's name in this host's trust store; None if untrusted
    verified: bool = False  # the running code's bytes passed signature verification
    reloads: ReloadStats = ReloadStats()
    #: An isolated plugin's child, faults and ledger; None for in-process plugins.
    isolation: IsolationStats | None = None


class _Record:
    """Everything the manager knows about one plugin (mutable, private)."""

    def __init__(
        self,
        name: str,
        source: str,
        location: str,
        manifest: Manifest | None,
        *,
        folder: Path | None = None,
        factory: Any = None,
    ) -> None:
        self.name = name
        self.source = source
        self.location = location
        self.manifest = manifest
        self.folder = folder
        self.factory = factory
        self.state = PluginState.DISCOVERED
        self.reason: str | None = None
        self.enabled = True
        self.instance: Any = None
        self.code: LoadedCode | None = None
        self.guard: SandboxGuard | None = None
        self.timeouts = 0
        self.key_id: str | None = None  # the key that signed the package, if any
        self.signer: str | None = None  # that key's name in the trust store (None: untrusted)
        self.verified = False  # the bytes of the running code passed verification
        self.reloads = ReloadCounters()

    def move(self, new: PluginState, reason: str | None = None) -> None:
        if not can_move(self.state, new):
            raise PluginStateError(self.name, str(self.state), f"move to {new}")
        self.state = new
        self.reason = reason

    def status(self) -> PluginStatus:
        m = self.manifest
        return PluginStatus(
            name=self.name,
            id=m.id if m else None,
            version=str(m.version) if m else None,
            state=str(self.state),
            reason=self.reason,
            source=self.source,
            location=self.location,
            enabled=self.enabled,
            description=m.plugin.description if m else "",
            tags=tuple(m.plugin.tags) if m else (),
            permissions=tuple(
                member.name or "" for member in Permission if m and member in m.permission_mask
            ),
            dependencies=dict(m.dependencies) if m else {},
            handler_timeouts=self.timeouts,
            key_id=self.key_id,
            signer=self.signer,
            verified=self.verified,
            reloads=self.reloads.snapshot(),
            isolation=(
                self.instance.stats() if isinstance(self.instance, IsolatedPlugin) else None
            ),
        )


def policy_of(manifest: Manifest) -> SandboxPolicy:
    """The ``SandboxPolicy`` a manifest's ``[sandbox]`` table describes."""
    box = manifest.sandbox
    return SandboxPolicy(
        allow_network=box.network,
        filesystem=FilesystemAccess(box.filesystem),
        memory_limit=box.memory_limit,
        network_allowlist=tuple(box.network_allowlist),
        filesystem_allowlist=tuple(box.filesystem_allowlist),
    )


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
        self._records: dict[str, _Record] = {}
        self._manifest_cache: dict[Path, tuple[tuple[int, int, int], Manifest]] = {}
        self._added: dict[str, type] = {}
        self._load_order: list[str] = []
        # One lock per plugin name: load, unload and reload of one plugin run in turn.
        self._locks: dict[str, asyncio.Lock] = {}
        self.discovery_errors: list[str] = []
        self._disabled = self._read_disabled()

    # -- discovery and the catalog -------------------------------------------------

    def discover(self) -> list[PluginStatus]:
        """Scan every source and refresh the catalog; returns it.

        Manifests are cached by file identity (inode, size, mtime), so rescanning
        hundreds of unchanged plugins costs a ``stat`` each. Loaded plugins keep
        their record; broken ones are listed ``failed`` with the reason.
        """
        found: dict[str, _Record] = {}
        self.discovery_errors = []
        for record in self._scan():
            other = found.get(record.name)
            if other is not None and other.source == "package":
                self.discovery_errors.append(
                    f"Plugin {record.name!r} at {record.location} is ignored: the installed "
                    f"package {other.location} takes precedence (`nyxplug uninstall "
                    f"{record.name}` to run the folder instead)"
                )
                continue
            if other is not None:
                self.discovery_errors.append(
                    f"Plugin {record.name!r} at {record.location} is ignored: the name is "
                    f"already taken by {other.location} - rename one of them"
                )
                continue
            found[record.name] = record
        self._refuse_duplicate_ids(found)
        for name, record in found.items():
            current = self._records.get(name)
            if current is not None and current.state in (
                PluginState.LOADING, PluginState.ACTIVE, PluginState.DRAINING
            ):  # fmt: skip
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

    def _scan(self) -> Iterator[_Record]:
        if self.package_dir is not None and self.package_dir.is_dir():
            for child in sorted(self.package_dir.iterdir()):
                if not child.name.startswith(".") and (child / MANIFEST_FILE).is_file():
                    yield self._folder_record(child, "package")
        for folder in self.plugin_dirs:
            if not folder.is_dir():
                self.discovery_errors.append(f"Plugin directory {folder} does not exist")
                continue
            for child in sorted(folder.iterdir()):
                # Dot folders are skipped here as in the package store (and by the watcher).
                if not child.name.startswith(".") and (child / MANIFEST_FILE).is_file():
                    yield self._folder_record(child, "directory")
        from_distributions: set[int] = set()
        if self.entry_points:
            for record in self._entry_point_records():
                from_distributions.add(id(record.factory))
                yield record
        code = dict(_CODE_PLUGINS) if self.include_registered else {}
        code.update(self._added)
        for name, cls in code.items():
            if id(cls) in from_distributions:
                continue  # loading the entry point ran its @plugin: already listed
            manifest = getattr(cls, "__nyxplug_manifest__")  # noqa: B009 - set by @plugin
            yield _Record(name, "code", f"{cls.__module__}.{cls.__qualname__}", manifest,
                          factory=cls)  # fmt: skip

    def _folder_record(self, folder: Path, source: str) -> _Record:
        path = folder / MANIFEST_FILE
        try:
            manifest = self._cached_manifest(path)
        except (ManifestError, OSError) as exc:
            record = _Record(folder.name, source, str(folder), None, folder=folder)
            record.state = PluginState.FAILED
            record.reason = str(exc)
            return record
        record = _Record(manifest.name, source, str(folder), manifest, folder=folder)
        record.key_id, record.signer = self._signer_of(folder)
        if self.require_signatures and not (folder / INDEX_FILE).is_file():
            record.state = PluginState.FAILED
            record.reason = (
                "unsigned plugin folder, and this host requires signatures - package, sign "
                "and install it (nyxplug package / sign / install), or for development set "
                "runtime.require_signatures = false (NYXPLUG_REQUIRE_SIGNATURES=0)"
            )
        return record

    def _signer_of(self, folder: Path) -> tuple[str | None, str | None]:
        """(key id, trusted key name) from a package folder's signature, for the catalog.

        Nothing is trusted on this basis: the signature is verified when the plugin loads.
        """
        try:
            document = json.loads((folder / SIGNATURE_FILE).read_bytes())
            key_id = str(document["key_id"])
        except (OSError, ValueError, KeyError, TypeError):
            return None, None
        trusted = self.trust.key(key_id) if self.trust is not None else None
        return key_id, trusted.name if trusted is not None else None

    def _cached_manifest(self, path: Path) -> Manifest:
        info = path.stat()
        key = (info.st_ino, info.st_size, info.st_mtime_ns)
        cached = self._manifest_cache.get(path)
        if cached is not None and cached[0] == key:
            return cached[1]
        manifest = decode_manifest(path.read_bytes(), str(path))
        self._manifest_cache[path] = (key, manifest)
        return manifest

    def _entry_point_records(self) -> Iterator[_Record]:
        for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            where = f"entry point {ep.name} = {ep.value}"
            try:
                cls = ep.load()
                manifest = cls.__nyxplug_manifest__
            except Exception as exc:  # a broken distribution must not stop discovery
                self.discovery_errors.append(
                    f"Entry point {ep.name!r} ({ep.value}) failed to load: "
                    f"{type(exc).__name__}: {exc} - it must name a class marked @plugin"
                )
                continue
            yield _Record(manifest.name, "entry-point", where, manifest, factory=cls)

    def _refuse_duplicate_ids(self, found: dict[str, _Record]) -> None:
        seen: dict[int, str] = {}
        for record in found.values():
            if record.manifest is None:
                continue
            owner = seen.setdefault(record.manifest.id, record.name)
            if owner != record.name:
                record.state = PluginState.FAILED
                record.reason = (
                    f"plugin id {record.manifest.id} is already used by {owner!r} - "
                    "give each plugin its own [plugin] id"
                )

    def _validate(self, record: _Record) -> None:
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

    def status(self, name: str) -> PluginStatus:
        """One catalog entry (``PluginNotFound`` if unknown)."""
        return self._record(name).status()

    def _record(self, name: str) -> _Record:
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

    def _read_disabled(self) -> set[str]:
        if self.state_dir is None:
            return set()
        path = self.state_dir / STATE_FILE
        try:
            data = json.loads(path.read_bytes())
        except FileNotFoundError:
            return set()
        except (OSError, ValueError) as exc:
            raise ValueError(
                f"Expected {path} to be the JSON state nyxplug wrote, could not read it: {exc}"
                " - fix or delete the file"
            ) from exc
        disabled = data.get("disabled", []) if isinstance(data, dict) else None
        if not isinstance(disabled, list) or not all(isinstance(n, str) for n in disabled):
            raise ValueError(
                f"Expected `disabled` in {path} to be a list of plugin names, got {disabled!r}"
            )
        return set(disabled)

    def _write_disabled(self) -> None:
        if self.state_dir is None:
            return
        self.state_dir.mkdir(parents=True, exist_ok=True)
        data = json.dumps({"disabled": sorted(self._disabled)}, indent=2).encode() + b"\n"
        fd, tmp = tempfile.mkstemp(dir=self.state_dir, prefix=".plugins.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self.state_dir / STATE_FILE)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

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
        graph: dict[str, list[str]] = {}
        pending = sorted(set(names))
        while pending:
            name = pending.pop()
            if name in graph:
                continue
            record = self._record(name)
            if record.manifest is None:
                raise DependencyError(name, f"its manifest is broken: {record.reason}")
            deps = []
            for dep, wanted in sorted(record.manifest.dependency_ranges.items()):
                other = self._records.get(dep)
                if other is None or other.manifest is None:
                    raise DependencyError(
                        name, f"needs {dep!r} {wanted}, which is not in the catalog"
                    )
                if not wanted.contains(other.manifest.version):
                    raise DependencyError(
                        name, f"needs {dep!r} {wanted}, but {other.manifest.version} is installed"
                    )
                if not other.enabled:
                    raise DependencyError(name, f"needs {dep!r}, which is disabled")
                deps.append(dep)
                pending.append(dep)
            graph[name] = deps
        sorter = graphlib.TopologicalSorter(graph)
        try:
            return list(sorter.static_order())
        except graphlib.CycleError as exc:
            cycle = " -> ".join(exc.args[1])
            raise DependencyError(exc.args[1][0], f"dependency cycle {cycle}") from None

    # -- lifecycle -------------------------------------------------------------------

    async def start(self) -> list[PluginStatus]:
        """Discover, then load every enabled plugin in dependency order.

        A plugin that cannot load is left ``failed`` with the reason (so are the
        plugins that depend on it); the others come up.
        """
        self.discover()
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
                logger.error("%s", exc)
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

    async def _load(self, record: _Record) -> PluginStatus:
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
                reason = f"dependency {dep!r} is not active"
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
            manifest = self._staged_manifest(record, snapshot)
            check_api_compatible(manifest)
            factory, record.code = self._import_code(record, manifest, snapshot)
            step = "instantiate"
            instance = _instantiate(factory)
            # One guard for everything this plugin does (on_load, sending, its handler),
            # and its rights in the registry from now on, so ctx.dispatch in on_load works.
            # An isolated plugin's guard is its child's kernel layers, not an audit hook.
            record.guard = _guard_of(manifest)
            info = PluginInfo(manifest.id, name, manifest.permission_mask)
            if not registry.is_registered(manifest.id):
                registry.register(info)
                registered_here = True
            instance.ctx = self._context(name, manifest, record.guard)
            step = "on_load"
            await self._lifecycle_call(record.guard, instance, "on_load", instance.ctx)
            step = "health"
            healthy = await self._lifecycle_call(record.guard, instance, "health")
            if healthy is False:
                raise RuntimeError("health() returned False")
            step = "start"
            await self.dispatcher.load_plugin(
                info,
                self._handler(record, instance, manifest),
                capacity=manifest.resources.capacity or self.config.defaults.capacity,
                sandbox=record.guard,
            )
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

    def _handler(self, record: _Record, instance: Any, manifest: Manifest) -> Any:
        """What the dispatcher calls: an isolated plugin times its handler in the child."""
        if isinstance(instance, IsolatedPlugin):
            return instance
        return _supervise(record, instance, manifest.id, self._handler_timeout(manifest))

    def _isolated(self, record: _Record, manifest: Manifest, snapshot: Snapshot | None) -> Any:
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
        )  # fmt: skip
        return lambda: instance

    async def _fail_isolated(self, record: _Record, instance: Any, reason: str) -> None:
        """An isolated plugin gave up (restarts exhausted, or a limit said unload)."""
        async with self._lock(record.name):
            if record.instance is not instance or record.state is not PluginState.ACTIVE:
                return
            assert record.manifest is not None
            record.move(PluginState.DRAINING)
            try:
                await self.dispatcher.unload_plugin(record.manifest.id, drain=False)
            finally:
                await instance.aclose()
                record.move(PluginState.FAILED, reason)
                if record.name in self._load_order:
                    self._load_order.remove(record.name)

    def isolation_stats(self, name: str) -> IsolationStats | None:
        """The child, faults and ledger of an isolated plugin (None if it runs in-process)."""
        instance = self._record(name).instance
        return instance.stats() if isinstance(instance, IsolatedPlugin) else None

    def _read_code(self, record: _Record) -> tuple[Snapshot | None, bool]:
        """The bytes to import, read once, and whether a signature vouched for them.

        A folder with an index (an installed package) is always verified, signatures
        required or not: a package that fails its own index must never run. Every file
        is read, so a planted ``.pyc`` or extra module is refused, not skipped.
        """
        from ..trust import TrustError, read_installed, verify_contents

        folder = record.folder
        if folder is None:
            return None, False
        if not (folder / INDEX_FILE).is_file():
            if self.require_signatures:
                raise TrustError("unsigned", str(folder), record.reason or "unsigned", record.name)
            snapshot = Snapshot.read(folder, extra=(MANIFEST_FILE,))
            if MANIFEST_FILE not in snapshot.files:  # removed (or mid-save) since discovery
                raise FileNotFoundError(f"Expected {MANIFEST_FILE} in {folder}, found none")
            return snapshot, False
        contents = read_installed(folder)
        if self.trust is not None:
            self.trust.reload()  # a revocation by `nyxplug trust` elsewhere applies now
        verified = verify_contents(
            self.trust, source=contents.source, index_bytes=contents.index_bytes,
            signature_bytes=contents.signature_bytes, files=contents.files,
            require_signature=self.require_signatures, audit=self.audit, event="load",
        )  # fmt: skip
        if verified.name != record.name:
            raise TrustError(
                "manifest-mismatch", str(folder),
                f"the signed package is {verified.name!r}, not {record.name!r} - rediscover",
                record.name,
            )  # fmt: skip
        for warning in verified.warnings:
            logger.warning("Plugin %r: %s", record.name, warning)
        return Snapshot(folder.resolve(), verified.files), verified.signed

    def _staged_manifest(self, record: _Record, snapshot: Snapshot | None) -> Manifest:
        """The manifest of the bytes about to run (a code plugin's is its own)."""
        if record.folder is None or snapshot is None:
            assert record.manifest is not None
            return record.manifest
        manifest = decode_manifest(
            snapshot.files[MANIFEST_FILE], str(record.folder / MANIFEST_FILE)
        )
        if manifest.name != record.name:
            raise ValueError(
                f"Expected [plugin] name {record.name!r} (as discovered), found "
                f"{manifest.name!r} - the manifest changed; rediscover"
            )
        return manifest

    def _import_code(
        self, record: _Record, manifest: Manifest, snapshot: Snapshot | None
    ) -> tuple[Callable[[], Any], LoadedCode | None]:
        """The plugin factory, imported from the snapshot (a code plugin's is its class)."""
        if manifest.resources.isolation == "process":
            return self._isolated(record, manifest, snapshot), None
        if record.folder is None or snapshot is None:
            return record.factory, None
        code = import_entry(record.name, snapshot, manifest.entry_module, manifest.entry_attr)
        entry = code.entry
        return (entry if callable(entry) else (lambda: entry)), code

    async def _lifecycle_call(
        self, guard: SandboxGuard | None, instance: Any, hook: str, *args: Any
    ) -> Any:
        """Await a plugin hook under its sandbox and the lifecycle timeout."""
        method = getattr(instance, hook, None)
        if method is None:
            return None
        with guarded(guard):
            async with asyncio.timeout(LIFECYCLE_TIMEOUT):
                result = method(*args)
                if inspect.isawaitable(result):
                    result = await result
        return result

    async def _call_on_unload(
        self, name: str, guard: SandboxGuard | None, instance: Any
    ) -> str | None:
        """``on_unload``; a raising one is logged and its reason returned, never raised."""
        try:
            await self._lifecycle_call(guard, instance, "on_unload")
        except Exception as exc:  # the instance is gone either way; keep why
            reason = f"on_unload raised {type(exc).__name__}: {exc}"
            logger.error("Plugin %r: %s", name, reason)
            return reason
        return None

    async def unload(self, name: str, *, drain: bool = True) -> PluginStats:
        """Stop an active plugin: drain (or drop) its queue, then ``on_unload``."""
        async with self._lock(name):
            record = self._record(name)
            if record.state is not PluginState.ACTIVE:
                raise PluginStateError(name, str(record.state), "unload", "it is not active")
            assert record.manifest is not None
            record.move(PluginState.DRAINING)
            try:
                stats = await self.dispatcher.unload_plugin(record.manifest.id, drain=drain)
            finally:
                reason = await self._call_on_unload(name, record.guard, record.instance)
                if record.code is not None:
                    unload_code(record.code.package)
                    record.code = None
                record.instance = None
                record.move(PluginState.UNLOADED, reason)
                if name in self._load_order:
                    self._load_order.remove(name)
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
            counters = record.reloads
            attempt = 0
            while True:
                attempt += 1
                try:
                    result = await self._reload_once(
                        record, attempt, if_changed=if_changed and attempt == 1,
                        allow_downgrade=allow_downgrade,
                    )  # fmt: skip
                except ReloadFailed as exc:
                    counters.attempted += attempt == 1
                    if exc.transient and attempt <= runtime.reload_retries:
                        counters.retries += 1
                        logger.warning("%s (attempt %d, trying again)", exc, attempt)
                        await asyncio.sleep(runtime.reload_backoff * 2 ** (attempt - 1))
                        continue
                    counters.failed(exc.step, exc.reason)
                    logger.error("%s", exc)
                    raise
                if result.pause is not None:
                    counters.attempted += attempt == 1
                    counters.swapped(result.pause)
                    logger.info(
                        "Plugin %r reloaded: %s -> %s (swap pause %.3f ms)",
                        name, result.from_version, result.to_version, result.pause * 1e3,
                    )  # fmt: skip
                return result

    async def _reload_once(
        self, record: _Record, attempt: int, *, if_changed: bool, allow_downgrade: bool
    ) -> ReloadResult:
        old = record.manifest
        assert old is not None
        old_instance, old_guard, old_code = record.instance, record.guard, record.code
        running = str(old.version)
        step = "stage"
        code: LoadedCode | None = None
        guard: SandboxGuard | None = None
        instance: Any = None
        loaded = False
        from ..trust import TrustError

        try:
            try:
                snapshot, verified = self._read_code(record)
            except TrustError:
                step = "verify"
                raise
            if if_changed and _same_code(old_code, snapshot):
                return ReloadResult(
                    name=record.name, outcome="unchanged", from_version=running,
                    to_version=running, pause=None, attempts=attempt,
                )  # fmt: skip
            step = "compatibility"
            manifest = self._staged_manifest(record, snapshot)
            check_upgrade(
                old, manifest, allow_downgrade=allow_downgrade,
                dependents=self._dependents(record.name), active_versions=self._active_versions(),
            )  # fmt: skip
            step = "import"
            factory, code = self._import_code(record, manifest, snapshot)
            step = "instantiate"
            instance = _instantiate(factory)
            step = "compatibility"
            why = needs_migration(old, manifest, instance)
            if why is not None:
                raise ValueError(why)
            guard = _guard_of(manifest)
            instance.ctx = self._context(record.name, manifest, guard)
            step = "on_load"
            await self._lifecycle_call(guard, instance, "on_load", instance.ctx)
            loaded = True
            step = "health"
            if await self._lifecycle_call(guard, instance, "health") is False:
                raise RuntimeError("health() returned False")
            step = "swap"
            new_guard = guard

            def between() -> None:  # runs while the plugin's worker is paused
                hand_over_state(
                    old_instance, instance, running, old_guard=old_guard, new_guard=new_guard
                )
                self.dispatcher.registry.set_permissions(manifest.id, manifest.permission_mask)

            handler = self._handler(record, instance, manifest)
            pause = await _finish_even_if_cancelled(
                self.dispatcher.swap_handler(manifest.id, handler, sandbox=guard, between=between)
            )
        except BaseException as exc:  # cancelled too: nothing of the new version may linger
            if code is not None:
                unload_code(code.package)
            if loaded:
                await self._call_on_unload(record.name, guard, instance)
            if not isinstance(exc, Exception):
                raise
            reason = f"{type(exc).__name__}: {exc}"
            raise ReloadFailed(record.name, step, reason, running, _transient(step, exc)) from exc
        # The new version serves from here on; the old one says goodbye.
        record.manifest, record.instance, record.guard, record.code = (
            manifest,
            instance,
            guard,
            code,
        )
        record.verified = verified
        if record.folder is not None:
            record.key_id, record.signer = self._signer_of(record.folder)
        await self._call_on_unload(record.name, old_guard, old_instance)
        if old_code is not None:
            unload_code(old_code.package)
        return ReloadResult(
            name=record.name, outcome="swapped", from_version=running,
            to_version=str(manifest.version), pause=pause, attempts=attempt,
        )  # fmt: skip

    def _dependents(self, name: str) -> dict[str, Any]:
        """Active plugins that depend on ``name``, with the version range each wants."""
        return {
            other.name: other.manifest.dependency_ranges[name]
            for other in self._records.values()
            if other.state is PluginState.ACTIVE
            and other.manifest is not None
            and name in other.manifest.dependencies
        }

    def _active_versions(self) -> dict[str, Any]:
        return {
            other.name: other.manifest.version
            for other in self._records.values()
            if other.state is PluginState.ACTIVE and other.manifest is not None
        }

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

    async def __aenter__(self) -> PluginManager:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


def _guard_of(manifest: Manifest) -> SandboxGuard | None:
    """The plugin's cooperative sandbox; none for an isolated one (its child has the kernel's)."""
    if manifest.resources.isolation == "process":
        return None
    return SandboxGuard(policy_of(manifest), manifest.id)


def _instantiate(factory: Callable[[], Any]) -> Any:
    instance = factory()
    if not callable(getattr(instance, "handle", None)) and not callable(
        getattr(instance, "handle_batch", None)
    ):
        raise TypeError(
            f"Expected the entry object to have handle(message), got {type(instance)!r}"
        )
    return instance


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


def _supervise(record: _Record, instance: Any, plugin_id: int, timeout: float | None) -> Any:
    """The handler the dispatcher calls: the plugin's, under its timeout.

    A synchronous handler cannot be interrupted (it holds the loop until it returns),
    so it is handed over as it is, without a coroutine per frame.
    """
    batch = getattr(instance, "handle_batch", None)
    if callable(batch):
        if not inspect.iscoroutinefunction(batch):
            return _SyncBatch(batch)
        return _SupervisedBatch(record, batch, plugin_id, timeout)
    if not inspect.iscoroutinefunction(instance.handle):
        return instance.handle
    return _Supervised(record, instance.handle, plugin_id, timeout)


class _SyncBatch:
    """A synchronous ``handle_batch``, as the dispatcher expects to find it."""

    __slots__ = ("handle_batch",)

    def __init__(self, call: Callable[[list[Any]], Any]) -> None:
        self.handle_batch = call


class _Supervised:
    """Calls an async ``handle`` per frame; cancels it after ``timeout`` seconds, counted.

    One watchdog timer per plugin instead of one timer per frame: each call only
    notes when it started; the timer, when it fires, cancels the worker task if the
    running call is past its deadline and otherwise re-arms for the current call.
    (``asyncio.timeout`` per frame costs several microseconds; this costs a clock read.)
    """

    __slots__ = (
        "_call", "_record", "_plugin_id", "_timeout", "_loop", "_task", "_timer", "_started",
        "_running", "_expired",
    )  # fmt: skip

    def __init__(self, record: _Record, call: Any, plugin_id: int, timeout: float | None) -> None:
        self._record = record
        self._call = call
        self._plugin_id = plugin_id
        self._timeout = timeout
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[Any] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._started = 0.0
        self._running = False
        self._expired = False

    async def handle(self, message: Any) -> None:
        await self._run(message, message.frame_type)

    async def _run(self, arg: Any, frame_type: int) -> None:
        result = self._call(arg)
        if not inspect.isawaitable(result):
            return
        if self._timeout is None:
            await result
            return
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        # Every call: a swap rolled back restarts this handler on a new worker task.
        self._task = asyncio.current_task()
        self._started = loop.time()
        self._running = True
        if self._timer is None:
            self._timer = loop.call_at(self._started + self._timeout, self._watch)
        try:
            await result
        except asyncio.CancelledError:
            if not self._expired:
                raise  # cancelled from outside (unload, shutdown): not ours to swallow
            self._timed_out(frame_type)
        finally:
            self._running = False
        if self._expired:  # the handler swallowed our cancellation and returned
            self._timed_out(frame_type)

    def _timed_out(self, frame_type: int) -> None:
        self._expired = False
        assert self._task is not None
        self._task.uncancel()
        self._record.timeouts += 1
        raise HandlerTimeout(self._record.name, self._plugin_id, frame_type, self._timeout or 0.0)

    def _watch(self) -> None:
        self._timer = None
        if not self._running or self._loop is None or self._timeout is None:
            return  # idle: the next call re-arms
        deadline = self._started + self._timeout
        if self._loop.time() >= deadline:
            self._expired = True
            assert self._task is not None
            self._task.cancel()
        else:
            self._timer = self._loop.call_at(deadline, self._watch)


class _SupervisedBatch(_Supervised):
    """``handle_batch`` under the same timeout (one per batch)."""

    __slots__ = ()

    async def handle_batch(self, messages: list[Any]) -> None:
        await self._run(messages, messages[0].frame_type)
