"""The plugin runtime around the dispatcher: manifests, discovery, lifecycle, hot reload."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._health import HealthConfig as HealthConfig
from .._health import HealthStats as HealthStats
from .._lazy import lazy_exports
from .._recovery import RecoveryConfig as RecoveryConfig
from .._recovery import RecoveryStats as RecoveryStats
from .._recovery import StepStats as StepStats
from ..source.manifest import Manifest as Manifest
from ..source.manifest import ManifestError as ManifestError
from ..source.manifest import load_manifest as load_manifest
from .api import Plugin as Plugin
from .api import PluginContext as PluginContext
from .errors import DependencyError as DependencyError
from .errors import HandlerTimeout as HandlerTimeout
from .errors import PluginLoadError as PluginLoadError
from .errors import PluginNotFound as PluginNotFound
from .errors import PluginStateError as PluginStateError
from .errors import ReloadFailed as ReloadFailed
from .errors import RolloutStateError as RolloutStateError
from .errors import StepNotAvailable as StepNotAvailable
from .errors import VersionMismatch as VersionMismatch
from .errors import VersionNotFound as VersionNotFound
from .errors import VersionStateError as VersionStateError
from .state import PluginState as PluginState

if TYPE_CHECKING:
    from .catalog import ENTRY_POINT_GROUP as ENTRY_POINT_GROUP
    from .catalog import PluginStatus as PluginStatus
    from .catalog import plugin as plugin
    from .catalog import registered_plugins as registered_plugins
    from .health import HealthMonitor as HealthMonitor
    from .manager import PluginManager as PluginManager
    from .recovery import RecoveryLadder as RecoveryLadder
    from .reload import ReloadResult as ReloadResult
    from .reload import ReloadStats as ReloadStats
    from .rollout import RolloutConfig as RolloutConfig
    from .rollout import RolloutState as RolloutState
    from .versions import RolloutEventView as RolloutEventView
    from .versions import RolloutStatus as RolloutStatus
    from .versions import VersionStatus as VersionStatus
    from .watch import PluginWatcher as PluginWatcher

__all__ = (
    "ENTRY_POINT_GROUP",
    "DependencyError",
    "HandlerTimeout",
    "HealthConfig",
    "HealthMonitor",
    "HealthStats",
    "Manifest",
    "ManifestError",
    "Plugin",
    "PluginContext",
    "PluginLoadError",
    "PluginManager",
    "PluginNotFound",
    "PluginState",
    "PluginStateError",
    "PluginStatus",
    "PluginWatcher",
    "RecoveryConfig",
    "RecoveryLadder",
    "RecoveryStats",
    "ReloadFailed",
    "ReloadResult",
    "ReloadStats",
    "RolloutConfig",
    "RolloutEventView",
    "RolloutState",
    "RolloutStateError",
    "RolloutStatus",
    "StepNotAvailable",
    "StepStats",
    "VersionMismatch",
    "VersionNotFound",
    "VersionStateError",
    "VersionStatus",
    "load_manifest",
    "plugin",
    "registered_plugins",
)

# Plugin code imports this package for `Plugin` - in isolated children too - so the host
# side (manager, isolation, watchfiles) loads on first use of its names, not here.
__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "ENTRY_POINT_GROUP": "catalog",
        "PluginStatus": "catalog",
        "plugin": "catalog",
        "registered_plugins": "catalog",
        "HealthMonitor": "health",
        "PluginManager": "manager",
        "RecoveryLadder": "recovery",
        "ReloadResult": "reload",
        "ReloadStats": "reload",
        "RolloutConfig": "rollout",
        "RolloutState": "rollout",
        "RolloutEventView": "versions",
        "RolloutStatus": "versions",
        "VersionStatus": "versions",
        "PluginWatcher": "watch",
    },
)
