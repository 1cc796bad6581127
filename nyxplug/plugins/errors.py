"""Errors of the plugin runtime: each names the plugin, what went wrong and what to do.

Like ``nyxplug._errors``, fields live in ``args`` and the text is built in ``__str__``,
so the exceptions pickle and compare by content.
"""

from __future__ import annotations

from .._constants import frame_type_name
from .._errors import NyxplugError

__all__ = (
    "DependencyError",
    "HandlerTimeout",
    "PluginLoadError",
    "PluginNotFound",
    "PluginStateError",
    "ReloadFailed",
    "RolloutStateError",
    "StepNotAvailable",
    "VersionMismatch",
    "VersionNotFound",
    "VersionStateError",
)


class PluginNotFound(NyxplugError, LookupError):
    """No plugin of that name is in the catalog."""

    def __init__(self, name: str, known: tuple[str, ...] = ()) -> None:
        super().__init__(name, known)
        self.name = name
        self.known = known

    def __str__(self) -> str:
        hint = f"; known plugins: {', '.join(self.known)}" if self.known else ""
        return f"No plugin named {self.name!r} in the catalog{hint} - run `nyxplug list`"


class PluginLoadError(NyxplugError):
    """The plugin could not be brought to ``active``; ``reason`` says which step failed."""

    def __init__(self, name: str, step: str, reason: str) -> None:
        super().__init__(name, step, reason)
        self.name = name
        self.step = step
        self.reason = reason

    def __str__(self) -> str:
        return f"Plugin {self.name!r} failed to load at {self.step}: {self.reason}"


class ReloadFailed(PluginLoadError):
    """A new version was refused or failed on its way in; the old one keeps serving.

    ``step`` is where it stopped (stage, verify, compatibility, import, instantiate,
    on_load, health, swap); ``transient`` is True for failures worth retrying
    (files mid-write, ``health()`` not ready yet, timeouts).
    """

    def __init__(
        self, name: str, step: str, reason: str, running: str | None, transient: bool = False
    ) -> None:
        NyxplugError.__init__(self, name, step, reason, running, transient)
        self.name = name
        self.step = step
        self.reason = reason
        self.running = running
        self.transient = transient

    def __str__(self) -> str:
        keeps = f"version {self.running}" if self.running else "the running version"
        return (
            f"Reload of plugin {self.name!r} failed at {self.step}: {self.reason} - {keeps} "
            "keeps serving; fix the new version and reload again"
        )


class PluginStateError(NyxplugError):
    """The operation is not allowed in the plugin's current lifecycle state."""

    def __init__(self, name: str, state: str, operation: str, hint: str = "") -> None:
        super().__init__(name, state, operation, hint)
        self.name = name
        self.state = state
        self.operation = operation
        self.hint = hint

    def __str__(self) -> str:
        suffix = f" - {self.hint}" if self.hint else ""
        return f"Cannot {self.operation} plugin {self.name!r} while it is {self.state}{suffix}"


class DependencyError(NyxplugError, ValueError):
    """Dependencies that cannot be satisfied: missing, out of range, or in a cycle."""

    def __init__(self, name: str, problem: str) -> None:
        super().__init__(name, problem)
        self.name = name
        self.problem = problem

    def __str__(self) -> str:
        return f"Plugin {self.name!r} has unsatisfiable dependencies: {self.problem}"


class HandlerTimeout(NyxplugError, TimeoutError):
    """A plugin's handler ran longer than its ``handler_timeout`` and was cancelled."""

    def __init__(self, name: str, plugin_id: int, frame_type: int, timeout: float) -> None:
        super().__init__(name, plugin_id, frame_type, timeout)
        self.name = name
        self.plugin_id = plugin_id
        self.frame_type = frame_type
        self.timeout = timeout

    def __str__(self) -> str:
        return (
            f"Handler of plugin {self.name!r} (id {self.plugin_id}) exceeded its "
            f"{self.timeout:g} s timeout on a {frame_type_name(self.frame_type)} frame and was "
            "cancelled; raise [resources] handler_timeout or make the handler faster"
        )


class RolloutStateError(NyxplugError, RuntimeError):
    """A rollout was asked for something its state does not allow.

    Raised by a bare ``RolloutController`` (``name`` None: the plugin is known by id and
    the fix is the code's) and by ``PluginManager``, which gives the plugin's ``name``,
    ``why`` in the operator's terms (the versions, the state) and the fix as the manager
    and the command line spell it.
    """

    def __init__(
        self, plugin_id: int, action: str, state: str, fix: str, name: str | None = None,
        why: str | None = None,
    ) -> None:  # fmt: skip
        super().__init__(plugin_id, action, state, fix, name, why)
        self.plugin_id = plugin_id
        self.action = action
        self.state = state
        self.fix = fix
        self.name = name
        self.why = why

    def __str__(self) -> str:
        if self.name is None:
            return (
                f"Expected a rollout that allows {self.action}(), got one {self.state} - for "
                f"plugin {self.plugin_id}; {self.fix}"
            )
        verb = "roll back" if self.action == "rollback" else self.action
        what = "start a rollout of" if verb == "start" else f"{verb} the rollout of"
        why = self.why if self.why is not None else f"it is {self.state}"
        return f"Cannot {what} plugin {self.name!r}: {why} - {self.fix}"


class VersionNotFound(NyxplugError, LookupError):
    """The plugin has no version of that name among the ones discovery found."""

    def __init__(
        self, name: str, version: str, found: tuple[str, ...], loaded: tuple[str, ...] = ()
    ) -> None:
        super().__init__(name, version, found, loaded)
        self.name = name
        self.version = version
        self.found = found
        #: The loaded versions (``"1.0.0 (stable)"``...) when the operation needs one.
        self.loaded = loaded

    def __str__(self) -> str:
        have = ", ".join(self.found) if self.found else "none"
        if self.loaded:
            return (
                f"Expected a loaded version of plugin {self.name!r}, got {self.version!r} - "
                f"loaded: {', '.join(self.loaded)}; found: {have} (`nyxplug versions "
                f"{self.name}` lists them)"
            )
        return (
            f"Expected a version of plugin {self.name!r} that discovery found, got "
            f"{self.version!r} - found: {have}; put its folder under a plugin directory (or "
            "`nyxplug install` it) and rediscover"
        )


class VersionMismatch(NyxplugError, ValueError):
    """Two folders (or packages) claim versions of one plugin name with different ids."""

    def __init__(self, name: str, version: str, location: str, plugin_id: int,
                 other: str, other_id: int) -> None:  # fmt: skip
        super().__init__(name, version, location, plugin_id, other, other_id)
        self.name = name
        self.version = version
        self.location = location
        self.plugin_id = plugin_id
        self.other = other
        self.other_id = other_id

    def __str__(self) -> str:
        return (
            f"Expected every version of plugin {self.name!r} to keep id {self.other_id} (as "
            f"{self.other} does), got id {self.plugin_id} for version {self.version} at "
            f"{self.location} - it is ignored; give it the same [plugin] id, or another name"
        )


class VersionStateError(NyxplugError):
    """A version of a plugin cannot do that now (it is the stable one, a rollout uses it,
    too many are loaded...)."""

    def __init__(self, name: str, version: str, operation: str, why: str, fix: str) -> None:
        super().__init__(name, version, operation, why, fix)
        self.name = name
        self.version = version
        self.operation = operation
        self.why = why
        self.fix = fix

    def __str__(self) -> str:
        return (
            f"Cannot {self.operation} version {self.version} of plugin {self.name!r}: "
            f"{self.why} - {self.fix}"
        )


class StepNotAvailable(NyxplugError):
    """A recovery step found nothing to work with this time (``rollback`` without an
    earlier version): the ladder counts it as not available and goes on."""

    def __init__(self, name: str, step: str, why: str) -> None:
        super().__init__(name, step, why)
        self.name = name
        self.step = step
        self.why = why

    def __str__(self) -> str:
        return f"Recovery step {self.step} is not available for plugin {self.name!r}: {self.why}"
