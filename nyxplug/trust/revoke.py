"""Which package a user means when they revoke one (``nyxplug trust revoke-package``).

Revocation names a package by its *index hash*: the SHA-256 of its ``NYXPLUG-INDEX``,
what ``nyxplug package`` and ``nyxplug verify`` print and what the verifier checks. A
user may hold something else: the ``.nyxp`` file, an installed package folder, or the
file's own SHA-256 (``sha256sum pkg.nyxp``). Storing that last one would revoke nothing
and let the package install, so a hash is only accepted when this host can tell what
it is: the index hash of a package it knows, or the file hash of a package file at
hand, mapped to that package's index hash.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import msgspec

from ..source.layout import INDEX_FILE, PACKAGE_SUFFIX
from ..source.snapshot import read_regular
from .audit import AuditLog
from .package import MAX_INDEX_BYTES, MAX_PACKAGE_BYTES, Index, read_package

__all__ = ("PackageRef", "index_sha256", "resolve_package")

_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


def index_sha256(index_bytes: bytes) -> str:
    """A package's hash: the SHA-256 of its index (what revocation and the audit log name)."""
    return hashlib.sha256(index_bytes).hexdigest()


@dataclass(frozen=True)
class PackageRef:
    """A package to revoke: its index hash, and what is known of it."""

    index_sha256: str
    name: str | None = None
    version: str | None = None
    #: The package file or folder it was read from (given, or found by its file hash).
    file: str | None = None
    #: The file hash the user gave, when it was mapped to the index hash.
    file_sha256: str | None = None

    def describe(self) -> str:
        """``fast 1.0.0 (index sha256 ...)``, or the bare hash when nothing else is known."""
        if self.name is None:
            return self.index_sha256
        return f"{self.name} {self.version} (index sha256 {self.index_sha256})"


def resolve_package(
    given: str,
    *,
    package_dir: Path,
    audit: AuditLog | None,
    search: Iterable[Path] = (),
    unseen: bool = False,
) -> PackageRef:
    """The package ``given`` names: a ``.nyxp`` file, a package folder, or a hash.

    A hash is the index hash of an installed package or of one in the audit log, or
    the SHA-256 of a ``.nyxp`` file in ``search`` or named in the audit log (mapped to
    that file's index hash). Anything else is a ``LookupError`` saying what was
    expected, unless ``unseen``: then a 64-hex value is taken as an index hash this
    host has never seen (from a publisher's advisory). A file that is not a package is
    a ``TrustError`` from the reader.
    """
    path = Path(given)
    if path.is_dir():
        return _from_folder(path)
    if path.exists():
        return _from_file(path)
    digest = given.strip().lower()
    if not _SHA256_RE.fullmatch(digest):
        raise LookupError(
            f"{given} is neither a package file or folder nor a sha256 of 64 hex digits - "
            "give the .nyxp file, or its index sha256 (printed by `nyxplug package` and "
            "`nyxplug verify`)"
        )
    known = _known_packages(package_dir, audit)
    if digest in known:
        name, version = known[digest]
        return PackageRef(digest, name, version)
    for file in _package_files(search, audit):
        try:
            matches = _file_sha256(file) == digest
        except (OSError, ValueError):
            continue
        if matches:
            return _from_file(file, file_sha256=digest)
    if unseen:
        return PackageRef(digest)
    places = ", ".join(str(folder) for folder in search)
    raise LookupError(
        f"{digest} is not the index sha256 of a package this host knows (installed, or "
        "verified or installed before - see `nyxplug audit`), nor the SHA-256 of a "
        f"{PACKAGE_SUFFIX} file at hand (in {places or 'no folder'}, or one this host "
        f"verified or installed) - give the package file (`nyxplug trust revoke-package "
        f"PKG{PACKAGE_SUFFIX}`) or its index sha256 (printed by `nyxplug package` and "
        "`nyxplug verify`); to revoke an index sha256 this host has never seen (from a "
        "publisher's advisory), add --unseen"
    )


def _from_file(path: Path, *, file_sha256: str | None = None) -> PackageRef:
    contents = read_package(path)  # a TrustError (UnsafePackage) for anything else
    name, version = _identity(contents.index_bytes)
    digest = index_sha256(contents.index_bytes)
    return PackageRef(digest, name, version, file=str(path), file_sha256=file_sha256)


def _from_folder(folder: Path) -> PackageRef:
    try:
        index_bytes = read_regular(folder / INDEX_FILE, MAX_INDEX_BYTES, "package indexes")
    except (OSError, ValueError):
        raise LookupError(
            f"{folder} is a folder without a readable {INDEX_FILE} - give an installed "
            f"package's folder, a {PACKAGE_SUFFIX} file, or the package's index sha256"
        ) from None
    name, version = _identity(index_bytes)
    return PackageRef(index_sha256(index_bytes), name, version, file=str(folder))


def _identity(index_bytes: bytes) -> tuple[str | None, str | None]:
    try:
        index = msgspec.json.decode(index_bytes, type=Index)
    except msgspec.DecodeError:  # still revocable by its hash; the verifier refuses it anyway
        return None, None
    return index.name, index.version


def _known_packages(package_dir: Path, audit: AuditLog | None) -> dict[str, tuple[str, str]]:
    """Index hash -> (name, version) of installed packages and of those in the audit log."""
    known: dict[str, tuple[str, str]] = {}
    if audit is not None:
        for entry in _audit_entries(audit):
            digest = entry.get("package_sha256")
            if isinstance(digest, str) and entry.get("plugin"):
                known[digest] = (str(entry["plugin"]), str(entry.get("version") or "?"))
    try:
        folders = sorted(package_dir.iterdir()) if package_dir.is_dir() else []
    except OSError:
        folders = []
    for folder in folders:
        try:
            index_bytes = read_regular(folder / INDEX_FILE, MAX_INDEX_BYTES, "package indexes")
        except (OSError, ValueError):
            continue
        name, version = _identity(index_bytes)
        if name is not None and version is not None:
            known[index_sha256(index_bytes)] = (name, version)
    return known


def _package_files(search: Iterable[Path], audit: AuditLog | None) -> list[Path]:
    """``.nyxp`` files in ``search`` and those the audit log names that still exist."""
    files: list[Path] = []
    for folder in search:
        try:
            files += sorted(folder.glob(f"*{PACKAGE_SUFFIX}"))
        except OSError:
            continue
    if audit is not None:
        for entry in _audit_entries(audit):
            source = entry.get("source")
            if isinstance(source, str) and source.endswith(PACKAGE_SUFFIX):
                files.append(Path(source))
    unique: dict[str, Path] = {}
    for file in files:
        unique.setdefault(os.path.abspath(file), file)
    return list(unique.values())


def _file_sha256(path: Path) -> str:
    return hashlib.sha256(read_regular(path, MAX_PACKAGE_BYTES, "package files")).hexdigest()


def _audit_entries(audit: AuditLog) -> list[dict[str, object]]:
    try:
        return audit.entries()
    except (OSError, ValueError):  # an unreadable log only means less is known
        return []
