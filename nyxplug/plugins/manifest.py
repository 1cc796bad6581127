"""The plugin manifest; it lives in :mod:`nyxplug.source.manifest`, importable here too."""

from ..source.manifest import (
    DEFAULT_MEMORY_LIMIT,
    MANIFEST_FILE,
    NAME_PATTERN,
    Manifest,
    ManifestError,
    PermissionsSection,
    PluginSection,
    ResourcesSection,
    SandboxSection,
    check_api_compatible,
    decode_manifest,
    load_manifest,
    manifest_from_dict,
    parse_size,
)

__all__ = (
    "DEFAULT_MEMORY_LIMIT",
    "MANIFEST_FILE",
    "NAME_PATTERN",
    "Manifest",
    "ManifestError",
    "PermissionsSection",
    "PluginSection",
    "ResourcesSection",
    "SandboxSection",
    "check_api_compatible",
    "decode_manifest",
    "load_manifest",
    "manifest_from_dict",
    "parse_size",
)
