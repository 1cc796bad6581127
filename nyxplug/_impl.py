"""Choose the compiled dispatcher or its pure-Python twin, once, at import.

``NYXPLUG_NO_EXTENSIONS=1`` forces the twin; ``NYXPLUG_REQUIRE_EXTENSIONS=1`` turns
a missing or broken extension into an ImportError instead of a silent fallback
(CI sets it, so a failed build cannot hide behind a much slower twin).
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

__all__ = (
    "NO_EXTENSIONS",
    "REQUIRE_EXTENSIONS",
    "USE_EXTENSIONS",
    "Dispatcher",
    "PluginFrame",
    "PluginHeader",
    "PluginMessage",
    "PluginRegistry",
    "decode_batch",
    "encode_batch",
    "env_flag",
    "route_point",
)

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"", "0", "false", "no", "off"})


def parse_flag(raw: str) -> bool:
    """A boolean flag's text, strictly: 1/true/yes/on or 0/false/no/off (empty is off)."""
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError("Expected one of 1/true/yes/on or 0/false/no/off")


def env_flag(name: str) -> bool:
    """Read a boolean environment flag strictly (``parse_flag``)."""
    raw = os.environ.get(name, "")
    try:
        return parse_flag(raw)
    except ValueError:
        raise ValueError(
            f"Expected {name} to be one of 1/true/yes/on or 0/false/no/off, "
            f"got {raw.strip().lower()!r}"
        ) from None


NO_EXTENSIONS = env_flag("NYXPLUG_NO_EXTENSIONS") or sys.implementation.name != "cpython"
REQUIRE_EXTENSIONS = env_flag("NYXPLUG_REQUIRE_EXTENSIONS")

if NO_EXTENSIONS and REQUIRE_EXTENSIONS:
    raise ImportError(
        "NYXPLUG_NO_EXTENSIONS and NYXPLUG_REQUIRE_EXTENSIONS are both set - unset one of them"
    )

if TYPE_CHECKING or NO_EXTENSIONS:
    from ._dispatch_py import (
        Dispatcher,
        PluginFrame,
        PluginHeader,
        PluginMessage,
        PluginRegistry,
        decode_batch,
        encode_batch,
        route_point,
    )

    USE_EXTENSIONS = False
else:
    try:
        from ._dispatch import (  # type: ignore[no-redef]
            Dispatcher,
            PluginFrame,
            PluginHeader,
            PluginMessage,
            PluginRegistry,
            decode_batch,
            encode_batch,
            route_point,
        )

        USE_EXTENSIONS = True
    except ImportError as exc:
        if REQUIRE_EXTENSIONS:
            raise ImportError(
                "NYXPLUG_REQUIRE_EXTENSIONS=1 but the compiled nyxplug._dispatch did not "
                f"import ({exc}) - build it with `pip install -e .` or `make install`"
            ) from exc
        from ._dispatch_py import (  # type: ignore[assignment]
            Dispatcher,
            PluginFrame,
            PluginHeader,
            PluginMessage,
            PluginRegistry,
            decode_batch,
            encode_batch,
            route_point,
        )

        USE_EXTENSIONS = False
