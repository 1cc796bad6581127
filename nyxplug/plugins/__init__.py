"""The plugin runtime around the dispatcher: manifests, discovery, lifecycle, hot reload."""

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
from .manager import ENTRY_POINT_GROUP as ENTRY_POINT_GROUP
from .manager import PluginManager as PluginManager
from .manager import PluginStatus as PluginStatus
from .manager import plugin as plugin
from .manager import registered_plugins as registered_plugins
from .reload import ReloadResult as ReloadResult
from .reload import ReloadStats as ReloadStats
from .state import PluginState as PluginState
from .watch import PluginWatcher as PluginWatcher

__all__ = (
    "ENTRY_POINT_GROUP",
    "DependencyError",
    "HandlerTimeout",
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
    "ReloadFailed",
    "ReloadResult",
    "ReloadStats",
    "load_manifest",
    "plugin",
    "registered_plugins",
)
