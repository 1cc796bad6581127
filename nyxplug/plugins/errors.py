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
    """A rollout controller was asked for something its state does not allow."""

    def __init__(self, plugin_id: int, action: str, state: str, fix: str) -> None:
        super().__init__(plugin_id, action, state, fix)
        self.plugin_id = plugin_id
        self.action = action
        self.state = state
        self.fix = fix

    def __str__(self) -> str:
        return (
            f"Expected a rollout that allows {self.action}(), got one {self.state} - for "
            f"plugin {self.plugin_id}; {self.fix}"
        )
