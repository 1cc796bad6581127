"""The admin API's one table: every operation, its types, its handler.

``OPERATIONS`` is read twice - by ``app`` to build the routes and by ``openapi`` to write
``/openapi.json`` - so the document cannot drift from what is served. An operation names
its path, method, query and body types (msgspec ``Struct``\\ s, which also validate), its
success type and status, the problems it may answer, and whether it changes the host
(mutating calls are written to the audit log with their caller). Versions side by side
and rollouts (issue 19) are rows here too, over the manager's runtime versions API.

Handlers run on the host's event loop and call the ``PluginManager``'s own methods, so an
admin call moves a plugin exactly as ``nyxplug enable`` or ``reload`` would; they never
run plugin code themselves beyond what those methods do.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import tempfile
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import msgspec

from .._breaker import BreakerState, BreakerStats
from .._errors import NyxplugError
from .._recovery import RecoveryStats
from .._stats import DispatchStats, PluginStats
from ..isolation.process import IsolationStats
from ..plugins.catalog import PluginStatus
from ..plugins.reload import ReloadResult, ReloadStats
from ..plugins.rollout import RolloutConfig
from ..plugins.versions import RolloutStatus, VersionStatus, rollout_config
from ..source.layout import NAME_PATTERN
from ..source.rollout import RolloutSettings

if TYPE_CHECKING:
    from ..plugins.manager import PluginManager
    from ..trust import AuditLog

__all__ = (
    "OPERATIONS",
    "PATH_SCHEMAS",
    "ROLLOUT_ACTIONS",
    "AdminHost",
    "Call",
    "Operation",
    "PluginList",
    "Problem",
    "RolloutOptions",
    "RolloutOptionsError",
    "rollout_config_for",
    "rollout_settings",
)

#: Plugin names as manifests allow them (``nyxplug.source.layout.NAME_PATTERN``).
NAME_SCHEMA: dict[str, Any] = {"type": "string", "pattern": NAME_PATTERN}
#: A plugin's version as manifests spell it: semantic versioning 2.0.0's own pattern.
VERSION_PATTERN = (
    r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-((?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)(?:\.(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*))*))?"
    r"(?:\+([0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*))?$"
)
#: What an operator may do to a rollout (``PluginManager.rollout_action``).
ROLLOUT_ACTIONS = ("pause", "resume", "promote", "rollback", "abort")
#: The schema of each path parameter, by name (the document's and the checks').
PATH_SCHEMAS: dict[str, dict[str, Any]] = {
    "name": NAME_SCHEMA,
    "version": {"type": "string", "pattern": VERSION_PATTERN},
    "action": {"type": "string", "enum": list(ROLLOUT_ACTIONS)},
}

StateName = Literal[
    "discovered", "validated", "loading", "active", "draining", "unloaded", "failed", "disabled"
]
PermissionName = Literal["HANDSHAKE", "DATA_ACCESS", "CONTROL", "ERROR_REPORTING"]


#: Bytes in JSON: base64, as the document says (the pattern lets clients generate it).
Base64 = Annotated[
    bytes,
    msgspec.Meta(
        extra_json_schema={
            "pattern": "^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$"
        }
    ),
]

# -- bodies -----------------------------------------------------------------------------


class Problem(msgspec.Struct, kw_only=True, omit_defaults=True):
    """An RFC 9457 problem: what went wrong, in the words nyxplug uses everywhere."""

    type: str
    title: str
    status: int
    detail: str
    instance: str | None = None
    #: The nyxplug exception (``PluginNotFound``, ``SignatureRejected``...).
    error: str | None = None


class Live(msgspec.Struct, kw_only=True):
    status: Literal["live"] = "live"


class Ready(msgspec.Struct, kw_only=True):
    ready: bool
    #: Enabled plugins that are not active (empty when ready).
    waiting: dict[str, str] = {}


class PluginList(msgspec.Struct, kw_only=True):
    plugins: list[PluginStatus]


class PluginStatsView(msgspec.Struct, kw_only=True):
    name: str
    #: The dispatcher's counters (None unless the plugin has a valid manifest).
    stats: PluginStats | None
    reloads: ReloadStats
    isolation: IsolationStats | None = None
    handler_timeouts: int = 0


class HostStats(msgspec.Struct, kw_only=True):
    dispatcher: DispatchStats
    plugins: int
    by_state: dict[str, int]


class Toggled(msgspec.Struct, kw_only=True):
    name: str
    enabled: bool
    #: False when it already was.
    changed: bool
    status: PluginStatus


class InstallRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    #: The ``.nyxp`` file (base64 in JSON).
    package: Base64
    #: Accept a version below the rollback floor (the floor is set to it).
    allow_rollback: bool = False


class Installed(msgspec.Struct, kw_only=True):
    name: str
    version: str
    signed: bool
    replaced: str | None
    status: PluginStatus


class Uninstalled(msgspec.Struct, kw_only=True):
    name: str
    removed: str
    #: Versions below it stay refused.
    floor: str | None


class KeyView(msgspec.Struct, kw_only=True):
    key_id: str
    name: str
    scopes: tuple[str, ...]
    expires: str | None
    added: str
    revoked: bool


class KeyList(msgspec.Struct, kw_only=True):
    keys: list[KeyView]


class Revocations(msgspec.Struct, kw_only=True):
    keys: list[str]
    packages: list[str]
    #: Plugin name -> lowest version accepted.
    floors: dict[str, str]


BreakerStateName = Literal["closed", "open", "half_open", "disabled", "forced_open", "metrics_only"]
#: The states an operator may set; ``open`` and ``half_open`` are the breaker's own.
OperatorState = Literal["closed", "forced_open", "disabled", "metrics_only"]


class BreakerView(msgspec.Struct, kw_only=True):
    name: str
    #: The version whose breaker this is (the stable one unless ``?version=`` named
    #: another loaded one); None when the plugin is not loaded.
    version: str | None = None
    #: The breaker's state by name (``breaker.state`` is its number); None without one.
    state: BreakerStateName | None
    #: None when the plugin is not loaded or has no breaker (``[breaker]``).
    breaker: BreakerStats | None
    #: The recovery ladder's steps and counts; None without ``[recovery]`` (and for a
    #: version beside the stable one: the ladder repairs the stable version).
    recovery: RecoveryStats | None = None


class BreakerChange(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    #: ``closed`` resets the breaker (fresh window, open time back to ``open_wait``);
    #: ``forced_open`` refuses every frame; ``disabled`` admits all and records nothing;
    #: ``metrics_only`` records but never trips.
    state: OperatorState


class AuditEntries(msgspec.Struct, kw_only=True):
    entries: list[dict[str, Any]]


class VersionList(msgspec.Struct, kw_only=True):
    name: str
    #: Every version of the plugin the host found, loaded or not, sorted.
    versions: list[VersionStatus]


class LoadVersion(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    #: A version the host found (``GET .../versions``), loaded beside the running one.
    version: Annotated[str, msgspec.Meta(pattern=VERSION_PATTERN)]


class VersionUnloaded(msgspec.Struct, kw_only=True):
    name: str
    version: str
    #: That version's counters when it stopped (its queue drained).
    stats: PluginStats


class RolloutView(msgspec.Struct, kw_only=True):
    name: str
    #: The latest rollout, running or ended; None before the first.
    rollout: RolloutStatus | None


Percent = Annotated[float, msgspec.Meta(ge=0.0, le=100.0)]
Fraction = Annotated[float, msgspec.Meta(ge=0.0, le=1.0)]
Seconds = Annotated[float, msgspec.Meta(gt=0.0, le=1e9)]
#: A whole number >= 1 that JSON may spell ``5`` or ``5.0`` (JSON Schema's integers are
#: both; msgspec's ``int`` takes only the first).
Count = Annotated[float, msgspec.Meta(ge=1, le=1e9, multiple_of=1)]


class RolloutOptions(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, omit_defaults=True):
    """What a rollout start may change of the plugin's rollout configuration (its
    manifest's ``[rollout]``, else the host's ``[defaults.rollout]``, else the defaults);
    a field left out keeps that value. Rates are fractions (0.01 = 1 %)."""

    #: ``canary`` raises the candidate's share step by step; ``blue_green`` switches all
    #: traffic at once; ``split`` holds ``weight`` % for ``hold`` seconds, never promoting
    #: by itself. Left out: the plugin's own.
    strategy: Literal["canary", "blue_green", "split"] | None = None
    #: The candidate's shares in percent, rising (canary).
    steps: list[Percent] | None = None
    #: The share of a split, in percent, and how long it holds (seconds).
    weight: Percent | None = None
    hold: Seconds | None = None
    interval: Seconds | None = None
    iterations: Count | None = None
    min_frames: Count | None = None
    max_error_rate: Fraction | None = None
    max_error_rate_over_stable: Fraction | None = None
    max_slow_rate: Fraction | None = None
    max_slow_rate_over_stable: Fraction | None = None
    threshold: Count | None = None
    auto_promote: bool | None = None
    deadline: Seconds | None = None
    rollback_window: Annotated[float, msgspec.Meta(ge=0.0, le=1e9)] | None = None

    def given(self) -> bool:
        """Whether anything was given (else the plugin's own configuration applies)."""
        return any(getattr(self, f) is not None for f in RolloutOptions.__struct_fields__)


class RolloutStart(RolloutOptions, kw_only=True, forbid_unknown_fields=True, omit_defaults=True):
    #: The candidate: a version the host found (loaded first if it is not).
    version: Annotated[str, msgspec.Meta(pattern=VERSION_PATTERN)]


class RolloutOptionsError(NyxplugError, ValueError):
    """Rollout options that are each well-formed but do not make a rollout together
    (steps that do not rise, a split without ``hold``...): 422 from the admin API."""

    def __init__(self, problem: str) -> None:
        super().__init__(problem)
        self.problem = problem

    def __str__(self) -> str:
        return f"{self.problem} - in the rollout options"


#: The options that are keys of a ``[rollout]`` table as they are (a split's ``weight``
#: is its only step).
_KEYS = (
    "strategy", "steps", "hold", "interval", "iterations", "min_frames", "max_error_rate",
    "max_error_rate_over_stable", "max_slow_rate", "max_slow_rate_over_stable", "threshold",
    "auto_promote", "deadline", "rollback_window",
)  # fmt: skip


def rollout_settings(base: RolloutSettings | None, options: RolloutOptions) -> RolloutSettings:
    """``base`` (the plugin's ``[rollout]``, else the host's ``[defaults.rollout]``) with
    ``options`` applied, checked as a ``[rollout]`` table is.

    Naming another strategy drops the keys only the old one takes (a split's ``hold``, a
    blue-green's ``mirror``, steps a blue-green ignores). Raises ``RolloutOptionsError``
    naming the option that does not fit (a split without ``hold``...).
    """
    table: dict[str, Any] = msgspec.to_builtins(base) if base is not None else {}
    given = {key: getattr(options, key) for key in _KEYS if getattr(options, key) is not None}
    for key in ("iterations", "min_frames", "threshold"):
        if key in given:
            given[key] = int(given[key])
    if options.weight is not None:
        given["steps"] = [options.weight]
    strategy = given.get("strategy", table.get("strategy", "canary"))
    if strategy != table.get("strategy", "canary"):
        for key in ("hold", "mirror", "steps", "auto_promote"):
            table.pop(key, None)
    table.update(given)
    try:
        return msgspec.convert(table, RolloutSettings)
    except msgspec.ValidationError as exc:
        raise RolloutOptionsError(str(exc)) from None


# -- query strings ----------------------------------------------------------------------


# Absent query fields are UNSET, not None: msgspec would read the text `null` as None.
Unset = msgspec.UnsetType
UNSET = msgspec.UNSET


def _given(value: Any) -> Any:
    return None if value is UNSET else value


class PluginFilter(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    #: Substring of the plugin name.
    name: str | Unset = UNSET
    tag: str | Unset = UNSET
    state: StateName | Unset = UNSET
    permission: PermissionName | Unset = UNSET


class ReloadOptions(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    #: Skip the reload when the bytes on disk equal the running code's.
    if_changed: bool = False
    allow_downgrade: bool = False


class BreakerQuery(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    #: A loaded version of the plugin (``GET .../versions``); left out: the stable one.
    version: Annotated[str, msgspec.Meta(pattern=VERSION_PATTERN)] | Unset = UNSET


class AuditQuery(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    #: Entries at or after this Unix time, in seconds (``date -d '1 hour ago' +%s``).
    since: float | Unset = UNSET
    #: The newest N entries at most.
    limit: Annotated[int, msgspec.Meta(ge=1, le=10_000)] = 100


# -- the table --------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True, slots=True)
class Call:
    """One request, decoded: path parameters, query and body (None when the operation has none)."""

    params: Mapping[str, str]
    query: Any
    body: Any
    caller: str


class AdminHost:
    """What the handlers act on: the host's manager and its audit log."""

    def __init__(self, manager: PluginManager) -> None:
        self.manager = manager
        self.audit: AuditLog | None = manager.audit


Handler = Callable[[AdminHost, Call], Awaitable[Any]]


@dataclass(frozen=True, kw_only=True, slots=True)
class Operation:
    """One row of the table: enough to route, validate, document and audit a call."""

    method: str
    path: str
    operation_id: str
    summary: str
    handler: Handler
    response: type
    status: int = 200
    query: type | None = None
    body: type | None = None
    #: Problem statuses beyond the ones every operation may answer (400, 401, 403).
    problems: tuple[int, ...] = ()
    mutating: bool = False
    #: False only for /health: everything else needs the bearer token.
    auth: bool = True
    tags: tuple[str, ...] = ()
    #: The cap on the request body (bytes).
    max_body: int = 64 * 1024
    description: str = ""
    extra_responses: dict[int, str] = field(default_factory=dict)


def _name(call: Call) -> str:
    return call.params["name"]


async def live(host: AdminHost, call: Call) -> Live:
    return Live()


async def ready(host: AdminHost, call: Call) -> Ready:
    waiting = {s.name: s.state for s in host.manager.catalog() if s.enabled and s.state != "active"}
    return Ready(ready=not waiting, waiting=waiting)


async def list_plugins(host: AdminHost, call: Call) -> PluginList:
    from .._constants import Permission

    q: PluginFilter = call.query
    permission = Permission[q.permission] if q.permission is not UNSET else None
    plugins = host.manager.catalog(
        name=_given(q.name), tag=_given(q.tag), state=_given(q.state), permission=permission
    )
    return PluginList(plugins=plugins)


async def get_plugin(host: AdminHost, call: Call) -> PluginStatus:
    return host.manager.status(_name(call))


async def plugin_stats(host: AdminHost, call: Call) -> PluginStatsView:
    status = host.manager.status(_name(call))
    return PluginStatsView(
        name=status.name, stats=host.manager.stats(status.name), reloads=status.reloads,
        isolation=status.isolation, handler_timeouts=status.handler_timeouts,
    )  # fmt: skip


def _breaker_view(
    host: AdminHost, name: str, version: str | None, stats: BreakerStats | None
) -> BreakerView:
    status = host.manager.status(name)
    state: Any = stats.state.name.lower() if stats is not None else None
    if version is None or version == status.version:  # the stable one: its ladder too
        return BreakerView(name=name, version=status.version, state=state, breaker=stats,
                           recovery=status.recovery)  # fmt: skip
    return BreakerView(name=name, version=version, state=state, breaker=stats)


async def get_breaker(host: AdminHost, call: Call) -> BreakerView:
    name, version = _name(call), _given(call.query.version)
    return _breaker_view(host, name, version, host.manager.breaker(name, version=version))


async def set_breaker(host: AdminHost, call: Call) -> BreakerView:
    """An operator's transition; the manager writes it to the audit log with the caller."""
    name, body, version = _name(call), call.body, _given(call.query.version)
    assert isinstance(body, BreakerChange)
    stats = host.manager.set_breaker_state(
        name, BreakerState[body.state.upper()], version=version, caller=call.caller
    )
    return _breaker_view(host, name, version, stats)


async def host_stats(host: AdminHost, call: Call) -> HostStats:
    by_state: dict[str, int] = {}
    catalog = host.manager.catalog()
    for status in catalog:
        by_state[status.state] = by_state.get(status.state, 0) + 1
    return HostStats(
        dispatcher=host.manager.dispatcher.dispatch_stats(),
        plugins=len(catalog),
        by_state=by_state,
    )


async def enable(host: AdminHost, call: Call) -> Toggled:
    """Remember it, then load it if it is valid and not running (as ``nyxplug enable``
    does for a watching host)."""
    manager, name = host.manager, _name(call)
    was = manager.status(name).enabled
    manager.enable(name)
    if manager.status(name).state in ("validated", "unloaded"):
        await manager.load(name)
    return Toggled(name=name, enabled=True, changed=not was, status=manager.status(name))


async def disable(host: AdminHost, call: Call) -> Toggled:
    """Remember it, then drain and unload it if it runs."""
    manager, name = host.manager, _name(call)
    was = manager.status(name).enabled
    manager.disable(name)
    if manager.status(name).state == "active":
        await manager.unload(name, drain=True)
        manager.disable(name)  # not running any more: listed as disabled
    return Toggled(name=name, enabled=False, changed=was, status=manager.status(name))


async def reload(host: AdminHost, call: Call) -> ReloadResult:
    q: ReloadOptions = call.query
    host.manager.discover()  # a folder may have changed version on disk
    return await host.manager.reload(
        _name(call), if_changed=q.if_changed, allow_downgrade=q.allow_downgrade
    )


async def install(host: AdminHost, call: Call) -> Installed:
    """Verify and install the uploaded package, then run it: a running plugin of that
    name is reloaded in place (its queue kept), an enabled one is loaded."""
    from ..trust import install_package

    manager = host.manager
    body: InstallRequest = call.body
    if manager.package_dir is None:
        raise LookupError("This host has no state_dir, so no package store - set runtime.state_dir")
    with tempfile.TemporaryDirectory(prefix="nyxplug-upload-") as folder:
        path = Path(folder, "upload.nyxp")
        path.write_bytes(body.package)
        installed = await asyncio.to_thread(
            install_package, path, manager.package_dir, manager.trust, audit=host.audit,
            require_signature=manager.require_signatures, allow_rollback=body.allow_rollback,
        )  # fmt: skip
    package = installed.package
    manager.discover()
    state = manager.status(package.name).state
    if state == "active":
        await manager.reload(package.name, allow_downgrade=body.allow_rollback)
    elif state in ("validated", "unloaded"):
        await manager.load(package.name)
    return Installed(
        name=package.name, version=package.version, signed=package.signed,
        replaced=installed.replaced, status=manager.status(package.name),
    )  # fmt: skip


async def uninstall(host: AdminHost, call: Call) -> Uninstalled:
    """Unload it (draining) if it runs, remove the installed package, rescan: a plugin
    folder of the same name, if any, is listed again (not started)."""
    from ..trust import uninstall_package

    manager, name = host.manager, _name(call)
    if manager.package_dir is None:
        raise LookupError("This host has no state_dir, so no package store - set runtime.state_dir")
    status = manager.status(name)
    if status.source != "package":
        raise LookupError(
            f"No installed package named {name!r}: it runs from {status.location} "
            f"({status.source}) - only packages installed with `nyxplug install` are uninstalled"
        )
    if status.state == "active":
        await manager.unload(name, drain=True)
    removed = await asyncio.to_thread(
        uninstall_package, name, manager.package_dir, audit=host.audit
    )
    manager.discover()
    floor = manager.trust.floor(name) if manager.trust is not None else None
    return Uninstalled(name=name, removed=str(removed), floor=floor)


async def trust_keys(host: AdminHost, call: Call) -> KeyList:
    trust = host.manager.trust
    if trust is None:
        return KeyList(keys=[])
    trust.reload()
    return KeyList(
        keys=[
            KeyView(
                key_id=k.key_id,
                name=k.name,
                scopes=k.scopes,
                expires=k.expires,
                added=k.added,
                revoked=trust.is_key_revoked(k.key_id),
            )  # fmt: skip
            for k in trust.keys()
        ]
    )


async def revocations(host: AdminHost, call: Call) -> Revocations:
    trust = host.manager.trust
    if trust is None:
        return Revocations(keys=[], packages=[], floors={})
    trust.reload()
    keys, packages = trust.revoked()
    return Revocations(keys=keys, packages=packages, floors=trust.floors())


async def audit_entries(host: AdminHost, call: Call) -> AuditEntries:
    q: AuditQuery = call.query
    if host.audit is None:
        return AuditEntries(entries=[])
    entries = await asyncio.to_thread(host.audit.entries)
    if not isinstance(q.since, Unset):
        since = q.since
        entries = [e for e in entries if _after(e.get("time"), since)]
    return AuditEntries(entries=entries[-q.limit :])


async def list_versions(host: AdminHost, call: Call) -> VersionList:
    """What is on disk now: a release may have landed since the last scan."""
    name = _name(call)
    host.manager.discover()
    return VersionList(name=name, versions=host.manager.versions(name))


async def load_version(host: AdminHost, call: Call) -> VersionStatus:
    body: LoadVersion = call.body
    host.manager.discover()
    return await host.manager.load_version(_name(call), body.version, caller=call.caller)


async def unload_version(host: AdminHost, call: Call) -> VersionUnloaded:
    name, version = _name(call), call.params["version"]
    stats = await host.manager.unload_version(name, version, drain=True, caller=call.caller)
    return VersionUnloaded(name=name, version=version, stats=stats)


async def get_rollout(host: AdminHost, call: Call) -> RolloutView:
    name = _name(call)
    return RolloutView(name=name, rollout=host.manager.rollout(name))


async def start_rollout(host: AdminHost, call: Call) -> RolloutStatus:
    """The plugin's own rollout configuration, with what the body gives applied."""
    manager, name, body = host.manager, _name(call), call.body
    assert isinstance(body, RolloutStart)
    manager.discover()
    config = rollout_config_for(manager, name, body) if body.given() else None
    return await manager.start_rollout(name, body.version, config, caller=call.caller)


async def rollout_action(host: AdminHost, call: Call) -> RolloutStatus:
    """The manager checks the action and the rollout's state (one source of the words)."""
    return host.manager.rollout_action(_name(call), call.params["action"], caller=call.caller)


def rollout_config_for(manager: PluginManager, name: str, options: RolloutOptions) -> RolloutConfig:
    """The plugin's rollout configuration (its manifest's ``[rollout]``, else the host's
    ``[defaults.rollout]``) with ``options`` applied."""
    manifest = manager.manifest(name)
    base = manifest.rollout if manifest is not None else None
    if base is None:
        base = manager.config.defaults.rollout
    return rollout_config(rollout_settings(base, options))


def _after(stamp: object, since: float) -> bool:
    try:
        return dt.datetime.fromisoformat(str(stamp)).timestamp() >= since
    except ValueError:
        return True  # keep what cannot be read: an operator should see it


_PLUGINS = ("plugins",)
_MAX_PACKAGE = int(os.environ.get("NYXPLUG_ADMIN_MAX_PACKAGE", 32 * 1024 * 1024))

#: Every operation of the admin API, in the order the document lists them.
OPERATIONS: tuple[Operation, ...] = (
    Operation(
        method="GET",
        path="/health/live",
        operation_id="live",
        handler=live,
        response=Live,
        summary="The host's event loop answers",
        auth=False,
        tags=("health",),
    ),
    Operation(
        method="GET",
        path="/health/ready",
        operation_id="ready",
        handler=ready,
        response=Ready,
        summary="Every enabled plugin is active (503 lists the others)",
        auth=False,
        tags=("health",),
        extra_responses={503: "Ready"},
    ),
    Operation(
        method="GET",
        path="/api/v1/plugins",
        operation_id="listPlugins",
        handler=list_plugins,
        response=PluginList,
        query=PluginFilter,
        tags=_PLUGINS,
        summary="The catalog, filtered by name substring, tag, state or permission",
    ),
    Operation(
        method="POST",
        path="/api/v1/plugins",
        operation_id="installPlugin",
        handler=install,
        response=Installed,
        status=201,
        body=InstallRequest,
        mutating=True,
        tags=_PLUGINS,
        problems=(404, 409, 413, 415, 422),
        max_body=_MAX_PACKAGE * 4 // 3 + 1024,
        summary="Verify and install an uploaded .nyxp, then load (or hot-reload) it",
    ),
    Operation(
        method="GET",
        path="/api/v1/plugins/{name}",
        operation_id="getPlugin",
        handler=get_plugin,
        response=PluginStatus,
        problems=(404,),
        tags=_PLUGINS,
        summary="One catalog entry",
    ),
    Operation(
        method="DELETE",
        path="/api/v1/plugins/{name}",
        operation_id="uninstallPlugin",
        handler=uninstall,
        response=Uninstalled,
        problems=(404, 409),
        mutating=True,
        tags=_PLUGINS,
        summary="Unload (draining) and remove an installed package",
    ),
    Operation(
        method="POST",
        path="/api/v1/plugins/{name}/enable",
        operation_id="enablePlugin",
        handler=enable,
        response=Toggled,
        problems=(404, 409, 422),
        mutating=True,
        tags=_PLUGINS,
        summary="Allow it to load (remembered across restarts) and load it",
    ),
    Operation(
        method="POST",
        path="/api/v1/plugins/{name}/disable",
        operation_id="disablePlugin",
        handler=disable,
        response=Toggled,
        problems=(404, 409),
        mutating=True,
        tags=_PLUGINS,
        summary="Keep it from loading (remembered) and unload it, draining its queue",
    ),
    Operation(
        method="POST",
        path="/api/v1/plugins/{name}/reload",
        operation_id="reloadPlugin",
        handler=reload,
        response=ReloadResult,
        query=ReloadOptions,
        problems=(404, 409, 422),
        mutating=True,
        tags=_PLUGINS,
        summary="Hot-reload it from disk; a failure leaves the old version serving",
    ),
    Operation(
        method="GET",
        path="/api/v1/plugins/{name}/stats",
        operation_id="pluginStats",
        handler=plugin_stats,
        response=PluginStatsView,
        problems=(404,),
        tags=("stats",),
        summary="Its dispatcher counters, reloads and isolation (child, faults, ledger)",
    ),
    Operation(
        method="GET",
        path="/api/v1/plugins/{name}/breaker",
        operation_id="getBreaker",
        handler=get_breaker,
        response=BreakerView,
        query=BreakerQuery,
        problems=(404, 409),
        tags=("breakers",),
        summary="Its circuit breaker (state, window, refusals) and its recovery ladder; "
        "?version= a loaded version's",
    ),
    Operation(
        method="POST",
        path="/api/v1/plugins/{name}/breaker",
        operation_id="setBreaker",
        handler=set_breaker,
        response=BreakerView,
        query=BreakerQuery,
        body=BreakerChange,
        problems=(404, 409),
        mutating=True,
        tags=("breakers",),
        summary="Reset (closed), force open, disable or set metrics-only its circuit breaker "
        "(?version= a loaded version's)",
    ),
    Operation(
        method="GET",
        path="/api/v1/plugins/{name}/versions",
        operation_id="listVersions",
        handler=list_versions,
        response=VersionList,
        problems=(404,),
        tags=("versions",),
        summary="Every version of it the host found: role, weight, counters, breaker, health",
    ),
    Operation(
        method="POST",
        path="/api/v1/plugins/{name}/versions",
        operation_id="loadVersion",
        handler=load_version,
        response=VersionStatus,
        status=201,
        body=LoadVersion,
        problems=(404, 409, 422),
        mutating=True,
        tags=("versions",),
        summary="Load a found version beside the running one (no traffic until a rollout)",
    ),
    Operation(
        method="DELETE",
        path="/api/v1/plugins/{name}/versions/{version}",
        operation_id="unloadVersion",
        handler=unload_version,
        response=VersionUnloaded,
        problems=(404, 409),
        mutating=True,
        tags=("versions",),
        summary="Drain and unload a loaded version no route uses (never the stable one)",
    ),
    Operation(
        method="GET",
        path="/api/v1/plugins/{name}/rollout",
        operation_id="getRollout",
        handler=get_rollout,
        response=RolloutView,
        problems=(404,),
        tags=("rollouts",),
        summary="Its latest rollout (running or ended): state, weight, versions, events",
    ),
    Operation(
        method="POST",
        path="/api/v1/plugins/{name}/rollout",
        operation_id="startRollout",
        handler=start_rollout,
        response=RolloutStatus,
        status=201,
        body=RolloutStart,
        problems=(404, 409, 422),
        mutating=True,
        tags=("rollouts",),
        summary="Start moving its traffic to a candidate version (canary, blue-green, split)",
    ),
    Operation(
        method="POST",
        path="/api/v1/plugins/{name}/rollout/{action}",
        operation_id="rolloutAction",
        handler=rollout_action,
        response=RolloutStatus,
        problems=(404, 409),
        mutating=True,
        tags=("rollouts",),
        summary="Pause, resume, promote, roll back or abort its rollout",
    ),
    Operation(
        method="GET",
        path="/api/v1/stats",
        operation_id="hostStats",
        handler=host_stats,
        response=HostStats,
        tags=("stats",),
        summary="The dispatcher's counters and the plugins by state",
    ),
    Operation(
        method="GET",
        path="/api/v1/trust/keys",
        operation_id="trustKeys",
        handler=trust_keys,
        response=KeyList,
        tags=("trust",),
        summary="The publisher keys this host trusts",
    ),
    Operation(
        method="GET",
        path="/api/v1/trust/revocations",
        operation_id="trustRevocations",
        handler=revocations,
        response=Revocations,
        tags=("trust",),
        summary="Revoked keys and packages, and the rollback floors",
    ),
    Operation(
        method="GET",
        path="/api/v1/audit",
        operation_id="audit",
        handler=audit_entries,
        response=AuditEntries,
        query=AuditQuery,
        tags=("trust",),
        summary="The audit trail (trust decisions, installs, loads, admin calls), newest last",
    ),
)
