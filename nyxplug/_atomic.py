"""Replace a file so that readers see the old bytes or the new ones, never a torn mix.

The one copy of mkstemp -> write -> fsync -> replace, for every file nyxplug rewrites
in place (the disabled-plugins state, the trust store, packages).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

__all__ = ("write_atomic",)


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder.

    The temporary file is flushed to disk before it is renamed over ``path``; on any
    failure (cancellation too) it is removed and ``path`` is left as it was.
    """
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
