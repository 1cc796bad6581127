"""The ``.nyxp`` package: a zip of the plugin's files plus a signed index.

Two special members sit beside the plugin's own files:

* ``NYXPLUG-INDEX`` - canonical JSON: the plugin's name, id and version and, for
  every file, its path, size and SHA-256. This small document is what gets signed.
* ``NYXPLUG-SIGNATURE`` - JSON: the signing key's id, when it was signed, and an
  Ed25519 signature over ``DOMAIN || key id || signed_at || SHA-256(index)``, so the
  key id and the time are authenticated too (minisign's "trusted comment" idea).

Reading never calls ``extractall``: each member is checked (a plain relative name, a
regular file, no duplicate, sizes and compression ratio capped) and read into memory
with its hash computed on the way, then compared with the index by the verifier.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import fnmatch
import hashlib
import io
import os
import stat
import zipfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import msgspec

from .._atomic import write_atomic
from ..source.layout import (
    INDEX_FILE,
    MANIFEST_FILE,
    MAX_SNAPSHOT_BYTES,
    MAX_SOURCE_FILE,
    PACKAGE_SUFFIX,
    SIGNATURE_FILE,
    SKIP_DIRS,
)
from ..source.manifest import decode_manifest, load_manifest
from ..source.snapshot import read_regular
from .errors import UnsafePackage
from .keys import SigningKey

__all__ = (
    "DEFAULT_EXCLUDE",
    "INDEX_FILE",
    "MAX_MEMBERS",
    "MAX_MEMBER_BYTES",
    "MAX_PACKAGE_BYTES",
    "MAX_RATIO",
    "PACKAGE_SUFFIX",
    "SIGNATURE_FILE",
    "FileEntry",
    "Index",
    "PackageContents",
    "Signature",
    "build_index",
    "check_member_name",
    "collect_folder",
    "left_out",
    "package_folder",
    "read_package",
    "sign_index",
    "sign_package",
    "signed_message",
    "write_package",
)

INDEX_FORMAT = "nyxplug-index/1"
SIGNATURE_FORMAT = "nyxplug-signature/1"
_DOMAIN = b"nyxplug-signature/1\x00"

#: At most this many members in a package (a plugin, not a file system).
MAX_MEMBERS = 4096
#: No single file may unpack to more than this (the snapshot's limit for a source file).
MAX_MEMBER_BYTES = MAX_SOURCE_FILE
#: Nor all of them together (the snapshot's limit for a plugin folder).
MAX_PACKAGE_BYTES = MAX_SNAPSHOT_BYTES
#: A member that unpacks to more than this many times its compressed size is a bomb.
MAX_RATIO = 100
#: ... once it is bigger than this (tiny files compress absurdly well, harmlessly).
_RATIO_FLOOR = 1024 * 1024
#: The index and the signature are small documents.
MAX_INDEX_BYTES = 1024 * 1024
_SPECIAL = frozenset({INDEX_FILE, SIGNATURE_FILE})
#: The longest file or folder name the file systems nyxplug installs onto accept.
_MAX_NAME_BYTES = 255
#: What ``nyxplug package`` leaves out unless told otherwise (``--include``): tool
#: caches, compiled bytecode and tests, which a plugin does not need at run time.
DEFAULT_EXCLUDE = (
    "__pycache__", "*.pyc", "*.pyo", ".pytest_cache", ".mypy_cache", ".ruff_cache",
    ".hypothesis", ".tox", ".nox", ".coverage", ".coverage.*", "htmlcov", ".DS_Store",
    "tests", "test_*.py", "*_test.py", "conftest.py",
)  # fmt: skip


class FileEntry(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    path: str
    size: int
    sha256: str


class Index(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """What the publisher signs: who the plugin is, and every file's size and hash."""

    format: str
    name: str
    id: int
    version: str
    files: tuple[FileEntry, ...]

    def encode(self) -> bytes:
        """Canonical bytes: keys sorted at every level, no whitespace."""
        return msgspec.json.encode(self, order="sorted")

    def entry(self, path: str) -> FileEntry | None:
        for item in self.files:
            if item.path == path:
                return item
        return None


class Signature(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    format: str
    key_id: str
    signed_at: str  # RFC 3339, UTC, seconds ("2026-11-22T10:00:00Z")
    signature: str  # base64 of the 64 raw bytes

    def raw(self) -> bytes:
        try:
            raw = base64.b64decode(self.signature, validate=True)
        except (binascii.Error, ValueError):
            return b""
        return raw

    def time(self) -> dt.datetime | None:
        try:
            when = dt.datetime.strptime(self.signed_at, "%Y-%m-%dT%H:%M:%SZ")
        except ValueError:
            return None
        return when.replace(tzinfo=dt.UTC)


def signed_message(key_id: str, signed_at: str, index_bytes: bytes) -> bytes:
    """The exact bytes the Ed25519 signature covers."""
    digest = hashlib.sha256(index_bytes).digest()
    return b"".join((_DOMAIN, key_id.encode(), b"\x00", signed_at.encode(), b"\x00", digest))


def sign_index(index_bytes: bytes, key: SigningKey, when: dt.datetime | None = None) -> bytes:
    """The ``NYXPLUG-SIGNATURE`` document for ``index_bytes``."""
    when = when or dt.datetime.now(dt.UTC)
    signed_at = when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    raw = key.sign(signed_message(key.key_id, signed_at, index_bytes))
    document = Signature(
        SIGNATURE_FORMAT, key.key_id, signed_at, base64.b64encode(raw).decode("ascii")
    )
    return msgspec.json.encode(document)


def check_member_name(name: str) -> str | None:
    """Why ``name`` is not acceptable as a package member path (None when it is)."""
    if not name:
        return "an empty member name"
    if "\x00" in name or "\\" in name:
        return f"member name {name!r} contains a NUL or backslash"
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        return f"absolute member path {name!r}"
    parts = name.split("/")
    if any(part in ("", ".", "..") for part in parts):
        if ".." in parts:
            return f"path traversal in member {name!r}"
        return f"member path {name!r} is not normalised (empty, '.' or trailing '/')"
    if any(len(part.encode()) > _MAX_NAME_BYTES for part in parts):
        return f"member path {name!r} has a part longer than {_MAX_NAME_BYTES} bytes"
    return None


def _file_and_folder(names: Iterable[str]) -> tuple[str, str] | None:
    """A member that is also a folder of another one (``lib`` and ``lib/mod.py``)."""
    known = set(names)
    for name in sorted(known):
        parts = name.split("/")
        for end in range(1, len(parts)):
            folder = "/".join(parts[:end])
            if folder in known:
                return folder, name
    return None


def build_index(name: str, plugin_id: int, version: str, files: Mapping[str, bytes]) -> Index:
    entries = tuple(
        FileEntry(path, len(data), hashlib.sha256(data).hexdigest())
        for path, data in sorted(files.items())
    )
    return Index(INDEX_FORMAT, name, plugin_id, version, entries)


def left_out(rel: str, include: Iterable[str] = (), exclude: Iterable[str] = ()) -> bool:
    """Whether the file at ``rel`` (a ``/`` path in the plugin folder) stays out of a package.

    A pattern (``fnmatch``) matches the whole path or any one of its parts, so
    ``tests`` names a folder anywhere and ``*.log`` a file anywhere. ``exclude`` always
    leaves a file out; ``include`` brings back one that :data:`DEFAULT_EXCLUDE` left out.
    """
    parts = rel.split("/")

    def matches(patterns: Iterable[str]) -> bool:
        return any(
            fnmatch.fnmatchcase(rel, pattern)
            or any(fnmatch.fnmatchcase(part, pattern) for part in parts)
            for pattern in patterns
        )

    if matches(exclude):
        return True
    return matches(DEFAULT_EXCLUDE) and not matches(include)


def collect_folder(
    folder: Path,
    *,
    include: Iterable[str] = (),
    exclude: Iterable[str] = (),
    skipped: list[str] | None = None,
) -> dict[str, bytes]:
    """The files of a plugin folder that go into its package, by relative path.

    Caches and tests stay out (:data:`DEFAULT_EXCLUDE`; ``include`` / ``exclude``
    patterns as in :func:`left_out`); ``__pycache__``, VCS folders and virtualenvs always. The paths
    left out are appended to ``skipped`` when it is given.
    """
    include, exclude = tuple(include), tuple(exclude)
    files: dict[str, bytes] = {}
    total = 0
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS)
        for filename in sorted(filenames):
            path = Path(dirpath, filename)
            rel = path.relative_to(folder).as_posix()
            if rel in _SPECIAL:
                continue
            if left_out(rel, include, exclude):
                if skipped is not None:
                    skipped.append(rel)
                continue
            if path.is_symlink() or not path.is_file():
                raise UnsafePackage(
                    "not-a-regular-file", str(folder),
                    f"{rel} is a symlink or special file - packages hold regular files only",
                )  # fmt: skip
            data = read_regular(path)
            total += len(data)
            if len(data) > MAX_MEMBER_BYTES or total > MAX_PACKAGE_BYTES:
                raise UnsafePackage(
                    "too-large", str(folder),
                    f"{rel} takes the package over its size limits "
                    f"({MAX_MEMBER_BYTES} bytes per file, {MAX_PACKAGE_BYTES} in all)",
                )  # fmt: skip
            files[rel] = data
    return files


def package_folder(
    folder: Path,
    target: Path | None = None,
    *,
    include: Iterable[str] = (),
    exclude: Iterable[str] = (),
    skipped: list[str] | None = None,
) -> tuple[Path, Index]:
    """Build an unsigned ``.nyxp`` from a plugin folder; returns its path and index.

    The default target is ``<name>-<version>.nyxp`` in the current directory. Which
    files go in: :func:`collect_folder`.
    """
    load_manifest(folder)  # a clear ManifestError before anything is written
    files = collect_folder(folder, include=include, exclude=exclude, skipped=skipped)
    if MANIFEST_FILE not in files:
        raise UnsafePackage(
            "excluded-file", str(folder),
            f"{MANIFEST_FILE} is excluded - a package needs its manifest; drop that --exclude",
        )  # fmt: skip
    manifest = decode_manifest(files[MANIFEST_FILE], str(folder / MANIFEST_FILE))
    module = manifest.entry_module.replace(".", "/")
    if f"{module}.py" not in files and f"{module}/__init__.py" not in files:
        raise UnsafePackage(
            "excluded-file", str(folder),
            f"the entry module {manifest.entry_module!r} ({module}.py) would be left out "
            f"of the package - ship it with `--include {module.rpartition('/')[2]}.py` "
            "(or rename it: test and cache files stay out by default)",
            manifest.name,
        )  # fmt: skip
    index = build_index(manifest.name, manifest.id, str(manifest.version), files)
    if target is None:
        target = Path(f"{manifest.name}-{manifest.version}{PACKAGE_SUFFIX}")
    write_package(target, index.encode(), files)
    return target, index


def sign_package(path: Path, key: SigningKey, when: dt.datetime | None = None) -> bytes:
    """Sign the package at ``path`` in place (replacing an earlier signature); returns it."""
    contents = read_package(path)
    signature = sign_index(contents.index_bytes, key, when)
    write_package(path, contents.index_bytes, contents.files, signature)
    return signature


def write_package(
    target: Path, index_bytes: bytes, files: Mapping[str, bytes], signature: bytes | None = None
) -> None:
    """Write a ``.nyxp`` atomically (a temporary file renamed over ``target``)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        _add(archive, INDEX_FILE, index_bytes)
        if signature is not None:
            _add(archive, SIGNATURE_FILE, signature)
        for path, data in sorted(files.items()):
            _add(archive, path, data)
    write_atomic(target, buffer.getvalue())


def _add(archive: zipfile.ZipFile, name: str, data: bytes) -> None:
    info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))  # reproducible bytes
    info.compress_type = zipfile.ZIP_DEFLATED
    info.external_attr = (stat.S_IFREG | 0o644) << 16
    archive.writestr(info, data)


@dataclass(frozen=True)
class PackageContents:
    """A package read into memory: the index and signature bytes, and every other file."""

    source: str
    index_bytes: bytes
    signature_bytes: bytes | None
    files: dict[str, bytes]


def read_package(path: str | os.PathLike[str]) -> PackageContents:
    """Read a ``.nyxp`` into memory, refusing anything but plain, bounded regular files."""
    source = str(path)
    try:
        size = os.stat(path).st_size
    except OSError as exc:
        raise UnsafePackage("unreadable", source, f"cannot read it ({exc.strerror})") from None
    if size > MAX_PACKAGE_BYTES:
        raise UnsafePackage("too-large", source, f"{size} bytes, over {MAX_PACKAGE_BYTES}")
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise UnsafePackage(
            "not-a-package", source, f"not a .nyxp (zip) file: {exc} - build one with "
            "`nyxplug package DIR`",
        ) from None  # fmt: skip
    with archive:
        members = archive.infolist()
        if len(members) > MAX_MEMBERS:
            raise UnsafePackage(
                "too-many-members", source, f"{len(members)} members, over {MAX_MEMBERS}"
            )
        files: dict[str, bytes] = {}
        total = 0
        for info in members:
            data = _read_member(archive, info, source)
            total += len(data)
            if total > MAX_PACKAGE_BYTES:
                raise UnsafePackage(
                    "decompression-bomb", source,
                    f"members unpack to more than {MAX_PACKAGE_BYTES} bytes in all",
                )  # fmt: skip
            files[info.filename] = data
    clash = _file_and_folder(files)
    if clash is not None:
        raise UnsafePackage(
            "unsafe-path", source,
            f"member {clash[0]!r} is a file and also the folder of {clash[1]!r} - "
            "refusing the whole package",
        )  # fmt: skip
    index_bytes = files.pop(INDEX_FILE, None)
    if index_bytes is None:
        raise UnsafePackage(
            "no-index", source, f"no {INDEX_FILE} member - build it with `nyxplug package`"
        )
    return PackageContents(source, index_bytes, files.pop(SIGNATURE_FILE, None), files)


def _read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, source: str) -> bytes:
    name = info.filename
    # zipfile rewrites "\" to "/" on Windows only; the raw name is what was stored.
    why = check_member_name(info.orig_filename)
    if why is not None:
        raise UnsafePackage("unsafe-path", source, f"{why} - refusing the whole package")
    mode = info.external_attr >> 16
    if info.is_dir() or (mode and not stat.S_ISREG(mode)):
        kind = "a symlink" if stat.S_ISLNK(mode) else "a directory" if info.is_dir() else (
            "a device or special file")  # fmt: skip
        raise UnsafePackage(
            "not-a-regular-file", source,
            f"member {name!r} is {kind} - packages hold regular files only",
        )  # fmt: skip
    if name in archive.NameToInfo and archive.NameToInfo[name] is not info:
        raise UnsafePackage("duplicate-member", source, f"member {name!r} appears more than once")
    if info.flag_bits & 0x1:
        raise UnsafePackage("encrypted-member", source, f"member {name!r} is encrypted")
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise UnsafePackage(
            "unsupported-compression", source,
            f"member {name!r} uses compression method {info.compress_type}",
        )  # fmt: skip
    limit = MAX_INDEX_BYTES if name in _SPECIAL else MAX_MEMBER_BYTES
    if info.file_size > limit:
        raise UnsafePackage(
            "too-large", source, f"member {name!r} unpacks to {info.file_size} bytes, over {limit}"
        )
    if info.file_size > _RATIO_FLOOR and info.file_size > MAX_RATIO * max(info.compress_size, 1):
        raise UnsafePackage(
            "decompression-bomb", source,
            f"member {name!r} unpacks {info.file_size // max(info.compress_size, 1)}x its "
            f"compressed size (limit {MAX_RATIO}x)",
        )  # fmt: skip
    # Never trust the declared size: read at most one byte more than it and compare.
    try:
        with archive.open(info) as handle:
            data = handle.read(info.file_size + 1)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:  # CRC errors included
        raise UnsafePackage("corrupt-member", source, f"member {name!r}: {exc}") from None
    if len(data) > info.file_size:  # zipfile stops at the declared size; belt and braces
        raise UnsafePackage(
            "decompression-bomb", source,
            f"member {name!r} unpacks to more bytes than it declares ({info.file_size})",
        )  # fmt: skip
    if len(data) < info.file_size:
        raise UnsafePackage(
            "corrupt-member", source,
            f"member {name!r} unpacks to {len(data)} bytes, fewer than the "
            f"{info.file_size} it declares - get a fresh copy of the package",
        )  # fmt: skip
    return data
