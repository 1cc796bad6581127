"""Install verified packages into the plugin store, and read installed plugins back.

The store is a folder of plugin folders (``<state_dir>/packages/<name>/``), each
holding the plugin's files plus its ``NYXPLUG-INDEX`` and ``NYXPLUG-SIGNATURE``, so
the runtime can verify an installed plugin again each time it loads it.

Installing writes every file with ``O_EXCL | O_NOFOLLOW`` into a fresh temporary
folder that only this process created, then swaps it into place with renames: a
half-written plugin is never visible, and nothing is ever written through a link.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path

import msgspec

from ..source.layout import INDEX_FILE, NAME_PATTERN, SIGNATURE_FILE
from ..source.snapshot import read_regular
from .audit import AuditLog
from .errors import TrustError, UnsafePackage
from .package import (
    MAX_MEMBER_BYTES,
    MAX_MEMBERS,
    MAX_PACKAGE_BYTES,
    PackageContents,
    read_package,
)
from .store import TrustStore
from .verify import VerifiedPackage, verify_contents

__all__ = (
    "Installed",
    "install_package",
    "is_package_folder",
    "read_installed",
    "uninstall_package",
)

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)


def is_package_folder(folder: Path) -> bool:
    """True when ``folder`` holds an index, i.e. it came from a package (signed or not)."""
    return (folder / INDEX_FILE).is_file()


def read_installed(folder: Path) -> PackageContents:
    """Read *every* file of an installed plugin folder into memory.

    Unlike a development folder, nothing is skipped: a planted ``__pycache__/*.pyc`` or
    any other extra file must reach the verifier and be refused. Links and special files
    are refused here.
    """
    source = str(folder)
    files: dict[str, bytes] = {}
    total = 0
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
        dirnames.sort()
        for entry in sorted(dirnames + filenames):
            path = Path(dirpath, entry)
            rel = path.relative_to(folder).as_posix()
            info = os.lstat(path)
            if stat.S_ISDIR(info.st_mode):
                continue
            if not stat.S_ISREG(info.st_mode):
                kind = "a symlink" if stat.S_ISLNK(info.st_mode) else "a special file"
                raise UnsafePackage(
                    "not-a-regular-file", source,
                    f"{rel} is {kind} - an installed plugin holds regular files only; "
                    "reinstall the package",
                )  # fmt: skip
            if info.st_size > MAX_MEMBER_BYTES:
                raise UnsafePackage(
                    "too-large", source, f"{rel} is {info.st_size} bytes, over {MAX_MEMBER_BYTES}"
                )
            if len(files) >= MAX_MEMBERS:
                raise UnsafePackage("too-many-members", source, f"over {MAX_MEMBERS} files")
            data = _read_no_follow(path, source, rel)
            total += len(data)
            if total > MAX_PACKAGE_BYTES:
                raise UnsafePackage("too-large", source, f"over {MAX_PACKAGE_BYTES} bytes")
            files[rel] = data
    index_bytes = files.pop(INDEX_FILE, None)
    if index_bytes is None:
        raise UnsafePackage(
            "no-index", source, f"no {INDEX_FILE} - install plugins with `nyxplug install PKG`"
        )
    return PackageContents(source, index_bytes, files.pop(SIGNATURE_FILE, None), files)


def _read_no_follow(path: Path, source: str, rel: str) -> bytes:
    try:
        return read_regular(path)
    except ValueError as exc:  # swapped for a link or a special file since the lstat
        raise UnsafePackage("not-a-regular-file", source, f"{rel}: {exc}") from None


@dataclass(frozen=True)
class Installed:
    """Where a package went, and what was verified about it."""

    folder: Path
    package: VerifiedPackage
    replaced: str | None  # the version that was there before, if any


def install_package(
    package_path: str | os.PathLike[str],
    store_dir: Path,
    trust: TrustStore | None,
    *,
    audit: AuditLog | None = None,
    require_signature: bool = True,
    allow_rollback: bool = False,
) -> Installed:
    """Verify ``package_path`` and install it as ``store_dir/<name>/``.

    Raises a ``TrustError`` (and installs nothing) if any check fails. The rollback
    floor is raised to the installed version (set to it with ``allow_rollback``).
    """
    try:
        contents = read_package(package_path)
    except TrustError as exc:  # refused before the signature checks: audited here
        if audit is not None:
            audit.record(
                "install", "refused", source=exc.source, check=exc.check, reason=exc.problem
            )
        raise
    verified = verify_contents(
        trust, source=contents.source, index_bytes=contents.index_bytes,
        signature_bytes=contents.signature_bytes, files=contents.files,
        require_signature=require_signature, allow_rollback=allow_rollback,
        audit=audit, event="install",
    )  # fmt: skip
    if not re.fullmatch(NAME_PATTERN, verified.name):  # checked already; the path relies on it
        raise UnsafePackage("unsafe-path", contents.source, f"bad plugin name {verified.name!r}")
    store_dir.mkdir(parents=True, exist_ok=True)
    target = store_dir / verified.name
    staging = Path(tempfile.mkdtemp(dir=store_dir, prefix=f".install-{verified.name}-"))
    try:
        _write_file(staging, INDEX_FILE, contents.index_bytes)
        if contents.signature_bytes is not None:
            _write_file(staging, SIGNATURE_FILE, contents.signature_bytes)
        for rel, data in verified.files.items():
            _write_file(staging, rel, data)
        replaced = _previous_version(target)
        _swap_into_place(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if trust is not None:
        if allow_rollback:  # the operator chose this version: later loads must accept it
            trust.set_floor(verified.name, verified.version)
        else:
            trust.raise_floor(verified.name, verified.version)
    return Installed(target, verified, replaced)


def _write_file(root: Path, rel: str, data: bytes) -> None:
    """Create ``root/rel`` (never existing, never through a link); parents made here."""
    path = root.joinpath(*rel.split("/"))
    if root not in path.parents:  # check_member_name already refused "..": belt and braces
        raise UnsafePackage("unsafe-path", str(root), f"{rel!r} leaves the plugin folder")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW, 0o644)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def _previous_version(target: Path) -> str | None:
    try:
        index = msgspec.json.decode((target / INDEX_FILE).read_bytes())
    except (OSError, msgspec.DecodeError):
        return None
    version = index.get("version") if isinstance(index, dict) else None
    return version if isinstance(version, str) else None


def _swap_into_place(staging: Path, target: Path) -> None:
    """Replace ``target`` by ``staging`` with renames; the old folder is removed after."""
    old = None
    if target.is_symlink() or target.exists():
        old = target.with_name(f".old-{target.name}-{os.getpid()}")
        shutil.rmtree(old, ignore_errors=True)
        os.rename(target, old)
    os.rename(staging, target)
    if old is not None:
        if old.is_symlink():
            old.unlink()
        else:
            shutil.rmtree(old, ignore_errors=True)


def uninstall_package(name: str, store_dir: Path, *, audit: AuditLog | None = None) -> Path:
    """Remove ``store_dir/<name>``; the rollback floor stays (an old copy stays refused)."""
    target = store_dir / name
    if not re.fullmatch(NAME_PATTERN, name) or not (target / INDEX_FILE).is_file():
        raise LookupError(
            f"No installed package named {name!r} in {store_dir} - see `nyxplug list`"
        )
    shutil.rmtree(target)
    if audit is not None:
        audit.record("uninstall", "done", plugin=name, source=str(target))
    return target
