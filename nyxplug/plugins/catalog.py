"""What plugins exist: the ``@plugin`` registry, the catalog records, and discovery.

Plugins come from four sources: installed packages (``state_dir/packages``), folders
with a ``nyxplug.toml`` under the plugin directories, installed distributions
(entry-point group ``nyxplug.plugins``) and classes marked with ``@plugin(...)``.
``find_plugins`` turns them into one record per name; the manager keeps the records
and moves their states.
"""

from __future__ import annotations

import importlib.metadata
import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

import msgspec

from .._breaker import BreakerStats
from .._constants import Permission
from .._health import HealthStats
from .._recovery import RecoveryStats
from .._routing import BASE_VERSION
from .._stats import PluginStats
from ..isolation.process import IsolatedPlugin, IsolationStats
from ..sandbox import SandboxGuard
from ..source.importer import LoadedCode
from ..source.layout import INDEX_FILE, MANIFEST_FILE, SIGNATURE_FILE
from ..source.manifest import Manifest, ManifestError, decode_manifest, manifest_from_dict
from ..source.versions import parse_version
from .errors import PluginStateError, VersionMismatch
from .health import HealthMonitor
from .recovery import RecoveryLadder
from .reload import ReloadCounters, ReloadStats
from .state import PluginState, can_move
from .versions import Lane

if TYPE_CHECKING:  # nyxplug.trust loads lazily (cryptography costs ~20 ms at import)
    from ..trust import TrustStore

__all__ = (
    "ENTRY_POINT_GROUP",
    "ManifestCache",
    "PluginCounters",
    "PluginRecord",
    "PluginStatus",
    "Sources",
    "find_plugins",
    "plugin",
    "registered_plugins",
    "shadow_message",
    "signer_of",
)

ENTRY_POINT_GROUP = "nyxplug.plugins"

#: manifest path -> ((inode, size, mtime), decoded manifest)
ManifestCache = dict[Path, tuple[tuple[int, int, int], Manifest]]

_C = TypeVar("_C", bound=type)
_CODE_PLUGINS: dict[str, type] = {}


def plugin(**manifest: Any) -> Callable[[_C], _C]:
    """Mark a class as a plugin defined in code; keys as in ``nyxplug.toml``'s ``[plugin]``.

    ``@plugin(name="echo", id=7, version="1.0.0", permissions=["DATA_ACCESS"])``; the
    other manifest tables go in as ``sandbox={...}``, ``resources={...}``,
    ``config={...}``, ``dependencies={...}``, ``breaker={...}``, ``health={...}``,
    ``recovery={...}``, ``rollout={...}``. Every ``PluginManager`` created
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


#: The manifest tables ``@plugin`` takes as keywords.
_TABLES = (
    "sandbox", "resources", "config", "dependencies", "breaker", "health", "recovery", "rollout",
)  # fmt: skip


def _manifest_dict(fields: dict[str, Any]) -> dict[str, Any]:
    """``@plugin`` keywords laid out like a ``nyxplug.toml`` document."""
    fields = dict(fields)
    tables: dict[str, Any] = {}
    for key in _TABLES:
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
    #: For an installed package: the plugin folder of the same name it runs instead of,
    #: and how to switch (see :func:`shadow_message`); None when it hides nothing.
    shadows: str | None = None
    #: The scheduled health checks (``[health]``); None when the plugin has none.
    health: HealthStats | None = None
    #: The recovery ladder (``[recovery]``); None when the plugin has none.
    recovery: RecoveryStats | None = None
    #: Every version discovery found (folders and packages of this name), lowest first;
    #: ``version`` is the stable one (``PluginManager.versions`` has each one's role).
    versions: tuple[str, ...] = ()


class PluginCounters(NamedTuple):
    """What a metrics scrape reads of one plugin: its counters and labels, nothing parsed
    (``PluginStatus`` costs ~30 us a plugin; this a few)."""

    name: str
    id: int | None
    version: str | None  # as the manifest spells it
    state: str
    stats: PluginStats | None  # the dispatcher's counters; None without a valid manifest
    handler_timeouts: int
    reloads_succeeded: int
    reloads_rolled_back: int
    reload_retries: int
    isolation: IsolationStats | None
    #: The circuit breaker (None without one), the health checks and the recovery ladder.
    breaker: BreakerStats | None = None
    health: HealthStats | None = None
    recovery: RecoveryStats | None = None


class PluginRecord:
    """Everything the manager knows about one plugin (mutable; only ``status()`` leaves it)."""

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
        self.shadows: str | None = None  # an installed package: the folder it hides
        self.health: HealthMonitor | None = None  # its scheduled checks, while active
        self.recovery: RecoveryLadder | None = None  # its recovery ladder, while active
        # Versions side by side: every version found (version string -> the record
        # discovery made for it, this one's included), the dispatcher lane the stable
        # version runs on, and the other loaded versions (by version string).
        self.found: dict[str, PluginRecord] = {}
        self.lane = BASE_VERSION
        self.lanes: dict[str, Lane] = {}

    def move(self, new: PluginState, reason: str | None = None) -> None:
        if not can_move(self.state, new):
            raise PluginStateError(self.name, str(self.state), f"move to {new}")
        self.state = new
        self.reason = reason

    def counters(
        self, stats: PluginStats | None, breaker: BreakerStats | None = None
    ) -> PluginCounters:
        m = self.manifest
        reloads = self.reloads
        return PluginCounters(
            self.name, m.id if m else None, m.plugin.version if m else None,
            self.state.value, stats, self.timeouts, reloads.succeeded, reloads.rolled_back,
            reloads.retries,
            self.instance.stats() if isinstance(self.instance, IsolatedPlugin) else None,
            breaker,
            self.health.stats() if self.health is not None else None,
            self.recovery.stats() if self.recovery is not None else None,
        )  # fmt: skip

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
            shadows=self.shadows,
            health=self.health.stats() if self.health is not None else None,
            recovery=self.recovery.stats() if self.recovery is not None else None,
            versions=tuple(sorted(self.found, key=parse_version)),
        )


@dataclass(frozen=True, kw_only=True)
class Sources:
    """Where one discovery looks, and what it asks of plugin folders."""

    package_dir: Path | None
    plugin_dirs: Sequence[Path]
    entry_points: bool
    include_registered: bool
    added: Mapping[str, type]  # classes put in one manager's catalog with ``add``
    require_signatures: bool
    trust: TrustStore | None


def find_plugins(
    sources: Sources, manifest_cache: ManifestCache, errors: list[str]
) -> dict[str, PluginRecord]:
    """One fresh record per plugin name, from every source; problems go to ``errors``.

    Manifests are cached by file identity (inode, size, mtime), so rescanning
    hundreds of unchanged plugins costs a ``stat`` each. Folders and packages of one
    name with different manifest versions are versions of one plugin (``found``; they
    must share its id), the highest first in line. Of one name *and* version, an
    installed package wins over a folder; any other second use of a name, or of an
    id, is refused with the reason.
    """
    found: dict[str, PluginRecord] = {}
    for record in _scan(sources, manifest_cache, errors):
        other = found.get(record.name)
        if other is None:
            found[record.name] = record
            if record.manifest is not None:
                record.found = {str(record.manifest.version): record}
            continue
        m, om = record.manifest, other.manifest
        if m is not None and om is not None and str(m.version) not in other.found:
            if m.id != om.id:  # one plugin, one queue: its versions share the id
                errors.append(str(VersionMismatch(
                    record.name, str(m.version), record.location, m.id, other.location, om.id,
                )))  # fmt: skip
                continue
            other.found[str(m.version)] = record  # another version of the plugin
            continue
        same = other.found.get(str(m.version)) if m is not None else None
        same = other if same is None else same
        if same.source == "package":
            same.shadows = shadow_message(
                record.name, same.location, _version(same), record.location, _version(record)
            )
            errors.append(f"Plugin {record.name!r}: {same.shadows}")
            continue
        errors.append(
            f"Plugin {record.name!r} at {record.location} is ignored: the name is "
            f"already taken by {same.location} - rename one of them"
        )
    for name, first in list(found.items()):
        if len(first.found) > 1:  # the highest usable version is the stable one by default
            usable = [v for v, r in first.found.items() if r.state is not PluginState.FAILED]
            top = first.found[max(usable or first.found, key=parse_version)]
            top.found = first.found
            found[name] = top
    _refuse_duplicate_ids(found)
    return found


def shadow_message(
    name: str, package: str, package_version: str, folder: str, folder_version: str
) -> str:
    """What to tell a user whose plugin folder is hidden by an installed package.

    Installed packages win over folders of the same name (they were verified and
    installed on purpose); a developer editing the folder must hear that the edits do
    not run, and which command switches.
    """
    return (
        f"the installed package {package} ({package_version}) runs instead of the folder "
        f"{folder} ({folder_version}) - `nyxplug uninstall {name}` to run the folder, or "
        f"install {folder_version} (`nyxplug package {folder}`, then `nyxplug sign` and "
        "`nyxplug install` the .nyxp)"
    )


def _version(record: PluginRecord) -> str:
    return str(record.manifest.version) if record.manifest is not None else "unreadable manifest"


def _scan(
    sources: Sources, manifest_cache: ManifestCache, errors: list[str]
) -> Iterator[PluginRecord]:
    package_dir = sources.package_dir
    if package_dir is not None and package_dir.is_dir():
        for child in sorted(package_dir.iterdir()):
            if not child.name.startswith(".") and (child / MANIFEST_FILE).is_file():
                yield _folder_record(child, "package", sources, manifest_cache)
    for folder in sources.plugin_dirs:
        if not folder.is_dir():
            errors.append(f"Plugin directory {folder} does not exist")
            continue
        for child in sorted(folder.iterdir()):
            # Dot folders are skipped here as in the package store (and by the watcher).
            if not child.name.startswith(".") and (child / MANIFEST_FILE).is_file():
                yield _folder_record(child, "directory", sources, manifest_cache)
    from_distributions: set[int] = set()
    if sources.entry_points:
        for record in _entry_point_records(errors):
            from_distributions.add(id(record.factory))
            yield record
    # Read only now: loading an entry point above may have run its @plugin.
    code = dict(_CODE_PLUGINS) if sources.include_registered else {}
    code.update(sources.added)
    for name, cls in code.items():
        if id(cls) in from_distributions:
            continue  # loading the entry point ran its @plugin: already listed
        manifest = getattr(cls, "__nyxplug_manifest__")  # noqa: B009 - set by @plugin
        yield PluginRecord(name, "code", f"{cls.__module__}.{cls.__qualname__}", manifest,
                           factory=cls)  # fmt: skip


def _folder_record(
    folder: Path, source: str, sources: Sources, manifest_cache: ManifestCache
) -> PluginRecord:
    path = folder / MANIFEST_FILE
    try:
        manifest = _cached_manifest(path, manifest_cache)
    except (ManifestError, OSError) as exc:
        record = PluginRecord(folder.name, source, str(folder), None, folder=folder)
        record.state = PluginState.FAILED
        record.reason = str(exc)
        return record
    record = PluginRecord(manifest.name, source, str(folder), manifest, folder=folder)
    record.key_id, record.signer = signer_of(folder, sources.trust)
    if sources.require_signatures and not (folder / INDEX_FILE).is_file():
        record.state = PluginState.FAILED
        record.reason = (
            "unsigned plugin folder, and this host requires signatures - package, sign "
            "and install it (nyxplug package / sign / install), or for development set "
            "runtime.require_signatures = false (NYXPLUG_REQUIRE_SIGNATURES=0)"
        )
    return record


def signer_of(folder: Path, trust: TrustStore | None) -> tuple[str | None, str | None]:
    """(key id, trusted key name) from a package folder's signature, for the catalog.

    Nothing is trusted on this basis: the signature is verified when the plugin loads.
    """
    try:
        document = json.loads((folder / SIGNATURE_FILE).read_bytes())
        key_id = str(document["key_id"])
    except (OSError, ValueError, KeyError, TypeError):
        return None, None
    trusted = trust.key(key_id) if trust is not None else None
    return key_id, trusted.name if trusted is not None else None


def _cached_manifest(path: Path, manifest_cache: ManifestCache) -> Manifest:
    info = path.stat()
    key = (info.st_ino, info.st_size, info.st_mtime_ns)
    cached = manifest_cache.get(path)
    if cached is not None and cached[0] == key:
        return cached[1]
    manifest = decode_manifest(path.read_bytes(), str(path))
    manifest_cache[path] = (key, manifest)
    return manifest


def _entry_point_records(errors: list[str]) -> Iterator[PluginRecord]:
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        where = f"entry point {ep.name} = {ep.value}"
        try:
            cls = ep.load()
            manifest = cls.__nyxplug_manifest__
        except Exception as exc:  # a broken distribution must not stop discovery
            errors.append(
                f"Entry point {ep.name!r} ({ep.value}) failed to load: "
                f"{type(exc).__name__}: {exc} - it must name a class marked @plugin"
            )
            continue
        yield PluginRecord(manifest.name, "entry-point", where, manifest, factory=cls)


def _refuse_duplicate_ids(found: dict[str, PluginRecord]) -> None:
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
