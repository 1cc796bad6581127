"""The names and limits of a plugin on disk: which files mean what, and how big they may be.

The one place for them, cheap to import (the CLI checks names with it and
``nyxplug --help`` must stay fast): the runtime, trust and the CLI all read them here.
"""

from __future__ import annotations

from typing import Annotated

from msgspec import Meta

from .._constants import MAX_PLUGIN_ID

__all__ = (
    "INDEX_FILE",
    "MANIFEST_FILE",
    "MAX_PLUGIN_ID",
    "MAX_SNAPSHOT_BYTES",
    "MAX_SOURCE_FILE",
    "NAME_PATTERN",
    "PACKAGE_SUFFIX",
    "SIGNATURE_FILE",
    "SKIP_DIRS",
    "Capacity",
    "HandlerTimeout",
)

#: The manifest's file name inside a plugin folder.
MANIFEST_FILE = "nyxplug.toml"
#: A signed package's index of files (in a ``.nyxp`` and in an installed plugin's folder).
INDEX_FILE = "NYXPLUG-INDEX"
#: The signature over the index, beside it.
SIGNATURE_FILE = "NYXPLUG-SIGNATURE"
#: The file suffix of a plugin package.
PACKAGE_SUFFIX = ".nyxp"
#: Folders that are never plugin source (caches, version control, environments).
SKIP_DIRS = frozenset({"__pycache__", ".git", ".hg", ".svn", ".venv", "node_modules"})

#: Files above this size are not plugin source; refuse rather than read them into memory.
MAX_SOURCE_FILE = 16 * 1024 * 1024
#: A plugin folder with more source than this is refused (a runaway folder, not a plugin).
MAX_SNAPSHOT_BYTES = 64 * 1024 * 1024

#: What a plugin name must match (it is also a key in ``[dependencies]``). ``MAX_PLUGIN_ID``
#: (the engine's) bounds a plugin id.
NAME_PATTERN = r"^[a-z][a-z0-9_-]{0,63}$"

#: Queue capacity of a plugin, in its manifest and in the host's ``[defaults]``.
Capacity = Annotated[int, Meta(ge=1)]
#: Handler timeout in seconds (finite; the structs check that in ``__post_init__``).
HandlerTimeout = Annotated[float, Meta(gt=0)]
