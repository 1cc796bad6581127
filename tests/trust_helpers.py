"""Build, sign and tamper with ``.nyxp`` plugin packages for the trust tests.

``PackageSimulator`` plays python-tuf's ``RepositorySimulator`` role: it owns a temporary
folder holding the publisher's source folders, the packages built from them and the host's
state folder (trust store, audit log, plugin store), mints keys, and rewrites packages with
``zipfile`` at a low level to produce every tampered variant the verifier must refuse.

Every plugin it builds has a ``main.py`` whose *import* writes a marker file into
``sim.marker_dir``: ``sim.imported()`` lists them, so a test can prove that nothing from a
refused package ever ran (and the happy path proves the marker works).
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import hashlib
import itertools
import json
import stat
import struct
import types
import warnings
import zipfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from plugin_helpers import manifest_text

from nyxplug.trust import (
    AUDIT_FILE,
    INDEX_FILE,
    SIGNATURE_FILE,
    TRUST_FILE,
    AuditLog,
    Installed,
    SigningKey,
    TrustStore,
    VerifiedPackage,
    install_package,
    package_folder,
    read_installed,
    sign_package,
    verify_contents,
)

__all__ = (
    "DEFAULT_NOW",
    "MODULE",
    "Member",
    "PackageSimulator",
    "read_members",
    "write_members",
)

#: Where the simulator's clock starts (the signatures it makes carry this time).
DEFAULT_NOW = dt.datetime(2026, 6, 1, 12, 0, 0, tzinfo=dt.UTC)

#: The plugin module: importing it leaves ``<marker_dir>/<tag>`` behind.
MODULE = '''\
"""Plugin {tag}: importing this module leaves a marker file (see trust_helpers)."""

import pathlib as _pathlib

_MARKERS = _pathlib.Path({marker_dir!r})
_MARKERS.mkdir(parents=True, exist_ok=True)
(_MARKERS / {tag!r}).write_text("imported\\n")

from nyxplug.plugins import Plugin


class Entry(Plugin):
    async def handle(self, message):
        pass
'''

REGULAR = stat.S_IFREG | 0o644
SYMLINK = stat.S_IFLNK | 0o777
CHAR_DEVICE = stat.S_IFCHR | 0o666


# -- zip members at a low level ---------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Member:
    """One zip member as written: name, bytes, Unix mode (type bits included)."""

    name: str
    data: bytes
    mode: int = REGULAR
    compress_type: int = zipfile.ZIP_DEFLATED


def read_members(path: Path) -> list[Member]:
    """Every member of the zip at ``path``, in archive order."""
    with zipfile.ZipFile(path) as archive:
        return [
            Member(info.orig_filename, archive.read(info), info.external_attr >> 16 or REGULAR,
                   info.compress_type)
            for info in archive.infolist()
        ]  # fmt: skip


def write_members(path: Path, members: Iterable[Member]) -> Path:
    """Write ``members`` as a zip at ``path``, exactly as given (duplicates included)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        # zipfile warns on a duplicate name; writing one is the point of some variants.
        warnings.filterwarnings("ignore", message="Duplicate name", category=UserWarning)
        with zipfile.ZipFile(path, "w") as archive:
            for member in members:
                info = zipfile.ZipInfo(member.name, date_time=(1980, 1, 1, 0, 0, 0))
                info.create_system = 3  # Unix: the mode bits below mean what they say
                info.compress_type = member.compress_type
                info.external_attr = member.mode << 16
                archive.writestr(info, member.data)
    return path


def _patch_declared_size(raw: bytes, name: str, declared: int) -> bytes:
    """Make the local and central headers of member ``name`` claim ``declared`` bytes."""
    data = bytearray(raw)
    encoded = name.encode()
    local = data.find(b"PK\x03\x04")
    while local != -1:
        name_len = struct.unpack_from("<H", data, local + 26)[0]
        if data[local + 30 : local + 30 + name_len] == encoded:
            struct.pack_into("<I", data, local + 22, declared)
            break
        local = data.find(b"PK\x03\x04", local + 4)
    else:
        raise AssertionError(f"no local header for {name!r}")
    central = data.find(b"PK\x01\x02")
    while central != -1:
        name_len = struct.unpack_from("<H", data, central + 28)[0]
        if data[central + 46 : central + 46 + name_len] == encoded:
            struct.pack_into("<I", data, central + 24, declared)
            return bytes(data)
        central = data.find(b"PK\x01\x02", central + 4)
    raise AssertionError(f"no central directory entry for {name!r}")


# -- the simulator ----------------------------------------------------------------------


class PackageSimulator:
    """A publisher and a host in one temporary folder, with a clock tests can move.

    * ``root/src/``: plugin source folders; ``root/pkgs/``: the packages built from them.
    * ``root/state/``: the host - ``trust.json``, ``audit.jsonl`` and ``packages/<name>/``.
    * ``root/imported/``: one marker file per plugin module that was ever imported.
    """

    def __init__(self, root: Path, *, now: dt.datetime = DEFAULT_NOW) -> None:
        self.root = root
        self.now = now
        self.src_dir = root / "src"
        self.pkg_dir = root / "pkgs"
        self.state_dir = root / "state"
        self.store_dir = self.state_dir / "packages"
        self.marker_dir = root / "imported"
        self.keys: dict[str, SigningKey] = {}
        self.trust = self.new_trust_store()
        self.audit = AuditLog(self.state_dir / AUDIT_FILE)
        self._serial = itertools.count(1)

    # -- time ------------------------------------------------------------------------

    def clock(self) -> dt.datetime:
        return self.now

    def advance(self, **delta: float) -> dt.datetime:
        """Move the clock forward (``sim.advance(hours=24, seconds=1)``)."""
        self.now += dt.timedelta(**delta)
        return self.now

    # -- keys and trust --------------------------------------------------------------

    def new_trust_store(self) -> TrustStore:
        """Another view of the same ``trust.json`` (as another process would open it)."""
        return TrustStore(self.state_dir / TRUST_FILE, clock=self.clock)

    def mint_key(
        self,
        name: str,
        *,
        trust: bool = True,
        scopes: tuple[str, ...] = ("*",),
        expires: dt.datetime | None = None,
    ) -> SigningKey:
        """A new publisher key, trusted by the host unless ``trust=False``."""
        key = SigningKey.generate(name)
        self.keys[name] = key
        if trust:
            self.trust.add_key(key.public, scopes=scopes, expires=expires)
        return key

    # -- building and signing --------------------------------------------------------

    def plugin_folder(
        self,
        name: str = "demo",
        version: str = "1.0.0",
        *,
        plugin_id: int = 7,
        files: dict[str, str] | None = None,
        **manifest: Any,
    ) -> Path:
        """A fresh plugin source folder: ``nyxplug.toml`` and the marker ``main.py``."""
        folder = self.src_dir / f"{name}-{version}-{next(self._serial)}"
        folder.mkdir(parents=True)
        text = manifest_text(name, plugin_id, version=version, **manifest)
        (folder / "nyxplug.toml").write_text(text, encoding="utf-8")
        tag = f"{name}-{version}"
        module = MODULE.format(tag=tag, marker_dir=str(self.marker_dir))
        (folder / "main.py").write_text(module, encoding="utf-8")
        for rel, content in (files or {}).items():
            path = folder / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(content, encoding="utf-8")
        return folder

    def package_folder(self, folder: Path, label: str | None = None) -> Path:
        """An unsigned ``.nyxp`` built from ``folder`` (``nyxplug package``)."""
        target = self.pkg_dir / f"{label or folder.name}-{next(self._serial)}.nyxp"
        path, _index = package_folder(folder, target)
        return path

    def sign_package(
        self, path: Path, key: SigningKey | None = None, when: dt.datetime | None = None
    ) -> Path:
        """Sign ``path`` in place (``nyxplug sign``) at the simulator's time by default."""
        sign_package(path, key or self.publisher, when or self.now)
        return path

    @property
    def publisher(self) -> SigningKey:
        """The default trusted key (minted on first use)."""
        if "publisher" not in self.keys:
            self.mint_key("publisher")
        return self.keys["publisher"]

    def build(
        self,
        name: str = "demo",
        version: str = "1.0.0",
        *,
        key: SigningKey | None = None,
        signed: bool = True,
        when: dt.datetime | None = None,
        **folder: Any,
    ) -> Path:
        """Folder, package and (unless ``signed=False``) signature in one step."""
        path = self.package_folder(self.plugin_folder(name, version, **folder))
        if signed:
            self.sign_package(path, key, when)
        return path

    # -- tampered variants -----------------------------------------------------------

    def variant(
        self, source: Path, label: str, edit: Callable[[list[Member]], Iterable[Member]]
    ) -> Path:
        """A copy of ``source`` whose members were rewritten by ``edit``."""
        target = self.pkg_dir / f"{source.stem}-{label}-{next(self._serial)}.nyxp"
        return write_members(target, edit(read_members(source)))

    def with_modified_file(self, source: Path, name: str = "main.py") -> Path:
        extra = b"\nimport os  # added after signing\n"
        return self.variant(source, "modified", lambda members: [
            dataclasses.replace(m, data=m.data + extra) if m.name == name else m
            for m in members
        ])  # fmt: skip

    def with_added_file(
        self, source: Path, name: str = "evil.py", data: bytes = b"print('pwned')\n"
    ) -> Path:
        return self.variant(source, "added", lambda members: [*members, Member(name, data)])

    def with_removed_file(self, source: Path, name: str = "main.py") -> Path:
        return self.variant(
            source, "removed", lambda members: [m for m in members if m.name != name]
        )

    def with_manifest(self, source: Path, text: str) -> Path:
        """The same package with another ``nyxplug.toml`` swapped in."""
        return self.variant(source, "manifest", lambda members: [
            dataclasses.replace(m, data=text.encode()) if m.name == "nyxplug.toml" else m
            for m in members
        ])  # fmt: skip

    def mix_and_match(self, index_from: Path, files_from: Path) -> Path:
        """The index and signature of one package with the files of another."""
        special = {INDEX_FILE, SIGNATURE_FILE}
        signed = [m for m in read_members(index_from) if m.name in special]
        files = [m for m in read_members(files_from) if m.name not in special]
        return write_members(self.pkg_dir / f"mixed-{next(self._serial)}.nyxp", signed + files)

    def with_member(self, source: Path, member: Member, label: str = "extra") -> Path:
        """``source`` plus one more member, written exactly as given."""
        return self.variant(source, label, lambda members: [*members, member])

    def with_symlink_member(self, source: Path, name: str = "link.py") -> Path:
        return self.with_member(source, Member(name, b"/etc/passwd", SYMLINK), "symlink")

    def with_device_member(self, source: Path, name: str = "tty.py") -> Path:
        return self.with_member(source, Member(name, b"", CHAR_DEVICE), "device")

    def with_duplicate_member(self, source: Path, name: str = "main.py") -> Path:
        """A second ``name`` member, after the signed one, holding other code."""
        evil = Member(name, b"print('the second copy wins on extraction')\n")
        return self.with_member(source, evil, "duplicate")

    def with_bomb(self, source: Path, size: int = 8 << 20, name: str = "bomb.bin") -> Path:
        """A member of ``size`` zero bytes (deflates ~1000x)."""
        return self.with_member(source, Member(name, bytes(size)), "bomb")

    def with_lying_size(
        self, source: Path, size: int = 4 << 20, declared: int = 1000, name: str = "liar.bin"
    ) -> Path:
        """A member of ``size`` zero bytes whose headers claim only ``declared`` bytes."""
        path = self.with_member(source, Member(name, bytes(size)), "liar")
        path.write_bytes(_patch_declared_size(path.read_bytes(), name, declared))
        return path

    def without_signature(self, source: Path) -> Path:
        return self.variant(
            source, "unsigned", lambda members: [m for m in members if m.name != SIGNATURE_FILE]
        )

    def with_tampered_signature(self, source: Path) -> Path:
        """The signature document with one bit of the Ed25519 signature flipped."""

        def edit(members: list[Member]) -> list[Member]:
            out = []
            for m in members:
                if m.name == SIGNATURE_FILE:
                    doc = json.loads(m.data)
                    raw = bytearray(base64.b64decode(doc["signature"]))
                    raw[0] ^= 0x01
                    doc["signature"] = base64.b64encode(bytes(raw)).decode()
                    m = dataclasses.replace(m, data=json.dumps(doc).encode())
                out.append(m)
            return out

        return self.variant(source, "badsig", edit)

    def with_edited_index(self, source: Path, name: str = "main.py") -> Path:
        """``name`` changed *and* the index updated to match, keeping the old signature."""
        extra = b"\nimport os  # added after signing, index updated to match\n"

        def edit(members: list[Member]) -> list[Member]:
            by_name = {m.name: m for m in members}
            new_data = by_name[name].data + extra
            index = json.loads(by_name[INDEX_FILE].data)
            for entry in index["files"]:
                if entry["path"] == name:
                    entry["size"] = len(new_data)
                    entry["sha256"] = hashlib.sha256(new_data).hexdigest()
            index_bytes = json.dumps(index, sort_keys=True, separators=(",", ":")).encode()
            out = []
            for m in members:
                if m.name == INDEX_FILE:
                    m = dataclasses.replace(m, data=index_bytes)
                elif m.name == name:
                    m = dataclasses.replace(m, data=new_data)
                out.append(m)
            return out

        return self.variant(source, "index", edit)

    # -- the host --------------------------------------------------------------------

    def install(self, package: Path, **options: Any) -> Installed:
        """``nyxplug install PKG`` against the simulator's store, trust and audit log."""
        options.setdefault("audit", self.audit)
        return install_package(package, self.store_dir, self.trust, **options)

    def load_installed(
        self, name: str = "demo", *, trust: TrustStore | None = None, **options: Any
    ) -> VerifiedPackage:
        """What the runtime does before it imports an installed plugin."""
        contents = read_installed(self.store_dir / name)
        options.setdefault("audit", self.audit)
        options.setdefault("event", "load")
        return verify_contents(
            trust or self.trust, source=contents.source, index_bytes=contents.index_bytes,
            signature_bytes=contents.signature_bytes, files=contents.files, **options,
        )  # fmt: skip

    def installed(self) -> list[str]:
        """Every entry of the plugin store (hidden staging folders included)."""
        if not self.store_dir.exists():
            return []
        return sorted(p.name for p in self.store_dir.iterdir())

    def imported(self) -> list[str]:
        """The plugin modules (``name-version``) that were imported so far."""
        if not self.marker_dir.exists():
            return []
        return sorted(p.name for p in self.marker_dir.iterdir())

    def last_audit(self) -> dict[str, Any]:
        entries = self.audit.entries()
        assert entries, "the audit log is empty"
        return entries[-1]

    @staticmethod
    def package_sha256(package: Path) -> str:
        """The hash a package is revoked by: SHA-256 of its signed index."""
        with zipfile.ZipFile(package) as archive:
            return hashlib.sha256(archive.read(INDEX_FILE)).hexdigest()

    @staticmethod
    def import_verified(verified: VerifiedPackage, module: str = "main") -> types.ModuleType:
        """Run a verified plugin's module from its verified bytes (the marker proves it)."""
        code = compile(verified.files[f"{module}.py"], f"<{verified.name}:{module}.py>", "exec")
        namespace = types.ModuleType(f"_trust_test_{verified.name}_{module}")
        exec(code, namespace.__dict__)
        return namespace
