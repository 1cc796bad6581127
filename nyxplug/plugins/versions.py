"""Plugin versions and ranges; they live in :mod:`nyxplug.source.versions`, importable here too."""

from ..source.versions import (
    PLUGIN_API_VERSION,
    Comparator,
    VersionError,
    VersionRange,
    parse_version,
)

__all__ = ("PLUGIN_API_VERSION", "Comparator", "VersionError", "VersionRange", "parse_version")
