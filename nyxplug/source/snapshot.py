"""Read a plugin folder once into bytes: what is checked is exactly what runs.

``Snapshot.read(folder)`` reads every source file of a plugin folder once, refusing
symlinks, special files and oversized folders; :mod:`nyxplug.source.importer` then
compiles modules from those bytes, never from the folder again. So what was checked
(and, with signed packages, verified) is exactly what runs: no stale or planted
``.pyc`` is ever used, and editing a file between the check and the import changes
nothing.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from .layout import MAX_SNAPSHOT_BYTES, MAX_SOURCE_FILE, SKIP_DIRS

__all__ = ("Snapshot", "read_regular")


@dataclass(frozen=True)
class Snapshot:
    """The bytes of a plugin folder's source files, keyed by POSIX relative path."""

    root: Path
    files: dict[str, bytes]

    @classmethod
    def read(cls, root: Path, extra: tuple[str, ...] = ()) -> Snapshot:
        """Read every ``.py`` file under ``root`` and the ``extra`` names (e.g. the manifest).

        Symlinks are refused and ``__pycache__`` is never looked at.
        """
        root = root.resolve()
        files: dict[str, bytes] = {}
        total = 0
        for dirpath, dirnames, filenames in os.walk(root, onerror=_raise, followlinks=False):
            dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS)
            for filename in sorted(filenames):
                path = Path(dirpath, filename)
                rel = path.relative_to(root).as_posix()
                if not filename.endswith(".py") and rel not in extra:
                    continue
                if path.is_symlink():
                    raise ValueError(
                        f"Expected regular files in plugin folder {root}, got a symlink "
                        f"{rel} - copy the file instead"
                    )
                data = read_regular(path)
                total += len(data)
                if total > MAX_SNAPSHOT_BYTES:
                    raise ValueError(
                        f"Plugin folder {root} holds more than {MAX_SNAPSHOT_BYTES} bytes of "
                        "Python source - is it the right folder?"
                    )
                files[rel] = data
        return cls(root, files)

    def source_of(self, module: str) -> tuple[str, bytes, bool] | None:
        """``(relative path, bytes, is_package)`` of a dotted module name, or None."""
        base = module.replace(".", "/")
        for rel, is_package in ((f"{base}/__init__.py", True), (f"{base}.py", False)):
            data = self.files.get(rel)
            if data is not None:
                return rel, data, is_package
        return None


def _raise(error: OSError) -> None:
    """``os.walk`` skips what it cannot list; a plugin read half-way must fail instead."""
    raise error


def read_regular(
    path: Path, limit: int = MAX_SOURCE_FILE, what: str = "plugin source files"
) -> bytes:
    """Read a regular file of at most ``limit`` bytes, never through a planted symlink.

    ``ValueError`` for anything else: a link, a FIFO (opened without blocking, so it
    cannot hang the host), a device such as ``/dev/zero``, or a file over ``limit``.
    """
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(path, flags)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ValueError(f"Expected a regular file, got something else at {path}")
        if info.st_size > limit:
            raise ValueError(f"Expected {what} under {limit} bytes, got {info.st_size} in {path}")
        chunks = []
        total = 0
        while chunk := os.read(fd, 1 << 20):
            total += len(chunk)
            if total > limit:  # grew while we read it
                raise ValueError(f"Expected {what} under {limit} bytes, got more in {path}")
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)
