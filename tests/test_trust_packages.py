"""Signed plugin packages: the tamper matrix, the trust store, keys and installation.

One named test per attack. Each asserts the exact ``TrustError`` subclass and ``.check``,
that the message names the plugin or file and says what to do, that nothing was installed
(no ``<name>`` folder, no staging leftovers), that nothing was imported (the plugin
module's marker file never appeared) and that the audit log's last entry is the refusal.
Packages are built and tampered with by ``trust_helpers.PackageSimulator``.
"""

from __future__ import annotations

import datetime as dt
import os
import posixpath
import re
import stat
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from plugin_helpers import manifest_text
from trust_helpers import Member, PackageSimulator, write_members

from nyxplug.trust import (
    INDEX_FILE,
    IntegrityError,
    KeyFileError,
    PublicKey,
    RollbackRefused,
    SignatureRejected,
    SigningKey,
    TrustError,
    TrustStore,
    UnsafePackage,
    package_folder,
    read_installed,
    read_package,
    uninstall_package,
)
from nyxplug.trust.keys import (
    KEY_DIR_ENV,
    PASSPHRASE_ENV,
    default_key_dir,
    default_key_name,
    is_encrypted,
    key_files,
    passphrase_from,
)
from nyxplug.trust.package import build_index, check_member_name, sign_index, write_package

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def sim(tmp_path: Path) -> PackageSimulator:
    simulator = PackageSimulator(tmp_path)
    simulator.mint_key("publisher")
    return simulator


def refused(
    sim: PackageSimulator,
    excinfo: pytest.ExceptionInfo[TrustError],
    cls: type[TrustError],
    check: str,
    *words: str,
    plugin: str | None = "demo",
    audited: bool = True,
    installed: bool = False,
) -> TrustError:
    """The shared assertions of every refusal; returns the error for more."""
    err = excinfo.value
    assert type(err) is cls, f"expected {cls.__name__}, got {type(err).__name__}: {err}"
    assert err.check == check, str(err)
    text = str(err)
    assert f"[{check}]" in text
    if plugin is not None:
        assert err.plugin == plugin
        assert f"(plugin {plugin!r})" in text
    for word in words:
        assert word in text, f"{word!r} not in the message: {text}"
    if not installed:
        assert plugin is None or not (sim.store_dir / plugin).exists()
        assert sim.installed() == [], "a refused install left something in the store"
    assert sim.imported() == [], "a module of a refused package was imported"
    if audited:
        entry = sim.last_audit()
        assert entry["decision"] == "refused", entry
        assert entry["check"] == check, entry
        if plugin is not None:
            assert entry["plugin"] == plugin, entry
    return err


# -- the happy path ---------------------------------------------------------------------


def test_signed_package_installs_and_verifies_when_loaded(sim: PackageSimulator) -> None:
    package = sim.build("demo", "1.0.0")
    installed = sim.install(package)
    assert installed.folder == sim.store_dir / "demo"
    assert installed.replaced is None
    assert installed.package.signed and installed.package.key_id == sim.publisher.key_id
    assert installed.package.signer == "publisher"
    assert sorted(p.name for p in installed.folder.iterdir()) == [
        "NYXPLUG-INDEX", "NYXPLUG-SIGNATURE", "main.py", "nyxplug.toml",
    ]  # fmt: skip
    assert sim.installed() == ["demo"]  # no staging folder left behind
    assert sim.trust.floor("demo") == "1.0.0"
    assert sim.last_audit()["event"] == "install"
    assert sim.last_audit()["decision"] == "accepted"

    verified = sim.load_installed("demo")
    assert (verified.name, verified.version, verified.warnings) == ("demo", "1.0.0", ())
    entry = sim.last_audit()
    assert (entry["event"], entry["decision"], entry["plugin"]) == ("load", "accepted", "demo")
    assert entry["key_id"] == sim.publisher.key_id
    # The positive control for every "nothing was imported" assertion below.
    assert sim.imported() == []
    module = sim.import_verified(verified)
    assert hasattr(module, "Entry")
    assert sim.imported() == ["demo-1.0.0"]


# -- the tamper matrix: what was signed -------------------------------------------------


def test_modified_file_is_refused(sim: PackageSimulator) -> None:
    package = sim.with_modified_file(sim.build())
    with pytest.raises(IntegrityError) as excinfo:
        sim.install(package)
    refused(sim, excinfo, IntegrityError, "modified-file", "main.py", "changed after signing")


def test_added_file_is_refused(sim: PackageSimulator) -> None:
    package = sim.with_added_file(sim.build(), "evil.py")
    with pytest.raises(IntegrityError) as excinfo:
        sim.install(package)
    refused(sim, excinfo, IntegrityError, "added-file", "evil.py", "not in the signed index")


def test_removed_file_is_refused(sim: PackageSimulator) -> None:
    package = sim.with_removed_file(sim.build(), "main.py")
    with pytest.raises(IntegrityError) as excinfo:
        sim.install(package)
    refused(sim, excinfo, IntegrityError, "removed-file", "main.py", "missing from the package")


def test_swapped_manifest_is_refused(sim: PackageSimulator) -> None:
    # Same name and version, more permissions: the manifest a hostile mirror would serve.
    greedy = manifest_text("demo", 7, version="1.0.0", frames=("DATA_ACCESS", "HANDSHAKE"))
    package = sim.with_manifest(sim.build(), greedy)
    with pytest.raises(IntegrityError) as excinfo:
        sim.install(package)
    refused(sim, excinfo, IntegrityError, "swapped-manifest", "nyxplug.toml", "swapped")


def test_mix_and_match_of_two_versions_is_refused(sim: PackageSimulator) -> None:
    old, new = sim.build("demo", "1.0.0"), sim.build("demo", "2.0.0")
    package = sim.mix_and_match(index_from=old, files_from=new)
    with pytest.raises(IntegrityError) as excinfo:
        sim.install(package)
    refused(sim, excinfo, IntegrityError, "mix-and-match", "2.0.0", "1.0.0", "mixed")


def test_index_edited_after_signing_is_refused(sim: PackageSimulator) -> None:
    # main.py changed and the index updated to match it: only the signature can tell.
    package = sim.with_edited_index(sim.build())
    with pytest.raises(SignatureRejected) as excinfo:
        sim.install(package)
    refused(sim, excinfo, SignatureRejected, "bad-signature", "does not match the index",
            sim.publisher.key_id)  # fmt: skip


def test_tampered_signature_bytes_are_refused(sim: PackageSimulator) -> None:
    package = sim.with_tampered_signature(sim.build())
    with pytest.raises(SignatureRejected) as excinfo:
        sim.install(package)
    refused(sim, excinfo, SignatureRejected, "bad-signature", "does not match the index")


# -- the tamper matrix: who signed ------------------------------------------------------


def test_unsigned_package_is_refused_when_signatures_are_required(
    sim: PackageSimulator,
) -> None:
    package = sim.build(signed=False)
    with pytest.raises(SignatureRejected) as excinfo:
        sim.install(package)
    refused(sim, excinfo, SignatureRejected, "unsigned", "not signed", "nyxplug sign")


def test_stripped_signature_is_refused(sim: PackageSimulator) -> None:
    package = sim.without_signature(sim.build())
    with pytest.raises(SignatureRejected) as excinfo:
        sim.install(package)
    refused(sim, excinfo, SignatureRejected, "unsigned", "nyxplug sign")


def test_unsigned_package_is_accepted_when_signatures_are_not_required(
    sim: PackageSimulator,
) -> None:
    installed = sim.install(sim.build(signed=False), require_signature=False)
    assert not installed.package.signed and installed.package.key_id is None
    assert not (installed.folder / "NYXPLUG-SIGNATURE").exists()
    entry = sim.last_audit()
    assert (entry["decision"], entry["signed"]) == ("accepted", False)
    assert sim.load_installed("demo", require_signature=False).signed is False
    with pytest.raises(SignatureRejected) as excinfo:
        sim.load_installed("demo")  # the same folder, on a host that requires signatures
    refused(sim, excinfo, SignatureRejected, "unsigned", installed=True)


def test_signature_by_untrusted_key_is_refused(sim: PackageSimulator) -> None:
    stranger = sim.mint_key("stranger", trust=False)
    package = sim.build(key=stranger)
    with pytest.raises(SignatureRejected) as excinfo:
        sim.install(package)
    refused(sim, excinfo, SignatureRejected, "untrusted-key", stranger.key_id,
            "nyxplug trust add")  # fmt: skip


def test_signature_by_revoked_key_is_refused(sim: PackageSimulator) -> None:
    package = sim.build()
    sim.trust.revoke_key(sim.publisher.key_id)
    with pytest.raises(SignatureRejected) as excinfo:
        sim.install(package)
    refused(sim, excinfo, SignatureRejected, "revoked-key", sim.publisher.key_id, "revoked",
            "current key")  # fmt: skip
    with pytest.raises(ValueError, match="revoked"):
        sim.trust.add_key(sim.publisher.public)  # and it cannot be trusted again


def test_signature_by_key_out_of_its_scope_is_refused(sim: PackageSimulator) -> None:
    acme = sim.mint_key("acme", scopes=("acme-*",))
    assert sim.install(sim.build("acme-tools", key=acme)).package.signer == "acme"
    package = sim.build("demo", key=acme)
    with pytest.raises(SignatureRejected) as excinfo:
        sim.install(package)
    refused(sim, excinfo, SignatureRejected, "out-of-scope", "acme-*", "'demo'", acme.key_id,
            installed=True)  # fmt: skip
    assert sim.installed() == ["acme-tools"]


def test_signature_by_expired_key_is_refused(sim: PackageSimulator) -> None:
    short = sim.mint_key("short-lived", expires=sim.now + dt.timedelta(days=1))
    package = sim.build(key=short)
    sim.advance(days=2)
    with pytest.raises(SignatureRejected) as excinfo:
        sim.install(package)
    refused(sim, excinfo, SignatureRejected, "expired-key", "expired",
            "nyxplug trust add --expires")  # fmt: skip


def test_revoked_package_hash_is_refused(sim: PackageSimulator) -> None:
    package = sim.build()
    sim.trust.revoke_package(sim.package_sha256(package))
    with pytest.raises(SignatureRejected) as excinfo:
        sim.install(package)
    refused(sim, excinfo, SignatureRejected, "revoked-package", "revocation list")
    assert sim.install(sim.build("demo", "1.0.1")).package.version == "1.0.1"  # others pass


# -- the tamper matrix: when ------------------------------------------------------------


def test_older_version_is_refused_as_rollback(sim: PackageSimulator) -> None:
    old = sim.build("demo", "1.0.0")
    sim.install(sim.build("demo", "2.0.0"))
    with pytest.raises(RollbackRefused) as excinfo:
        sim.install(old)
    refused(sim, excinfo, RollbackRefused, "rollback", "1.0.0", "2.0.0", "--allow-rollback",
            installed=True)  # fmt: skip
    assert sim.installed() == ["demo"]
    assert sim.load_installed("demo").version == "2.0.0"  # the newer copy is untouched


def test_older_version_is_installed_with_allow_rollback(sim: PackageSimulator) -> None:
    old = sim.build("demo", "1.0.0")
    sim.install(sim.build("demo", "2.0.0"))
    installed = sim.install(old, allow_rollback=True)
    assert (installed.package.version, installed.replaced) == ("1.0.0", "2.0.0")
    assert sim.last_audit()["decision"] == "accepted"
    assert sim.installed() == ["demo"]
    assert sim.trust.floor("demo") == "1.0.0"  # the downgrade the operator chose
    assert sim.load_installed("demo", allow_rollback=True).version == "1.0.0"


def test_plugin_installed_with_allow_rollback_still_loads(sim: PackageSimulator) -> None:
    old = sim.build("demo", "1.0.0")
    sim.install(sim.build("demo", "2.0.0"))
    sim.install(old, allow_rollback=True)
    # What PluginManager does on every load: no allow_rollback there; the floor follows.
    assert sim.load_installed("demo").version == "1.0.0"


def test_reinstalling_the_same_version_is_allowed(sim: PackageSimulator) -> None:
    package = sim.build("demo", "1.0.0")
    sim.install(package)
    again = sim.install(package)
    assert (again.package.version, again.replaced) == ("1.0.0", "1.0.0")
    assert sim.installed() == ["demo"]
    assert sim.load_installed("demo").version == "1.0.0"


def test_rollback_floor_persists_across_trust_store_instances(sim: PackageSimulator) -> None:
    old = sim.build("demo", "1.0.0")
    sim.install(sim.build("demo", "1.2.0"))
    sim.trust = sim.new_trust_store()  # a restart of the host
    assert sim.trust.floor("demo") == "1.2.0"
    with pytest.raises(RollbackRefused) as excinfo:
        sim.install(old)
    refused(sim, excinfo, RollbackRefused, "rollback", "1.2.0", installed=True)


# -- the tamper matrix: the archive itself ----------------------------------------------


def test_path_traversal_member_is_refused(sim: PackageSimulator) -> None:
    package = sim.with_member(sim.build(), Member("../evil.py", b"print('escaped')\n"))
    with pytest.raises(UnsafePackage) as excinfo:
        sim.install(package)
    refused(sim, excinfo, UnsafePackage, "unsafe-path", "'../evil.py'", "path traversal",
            "refusing the whole package", plugin=None)  # fmt: skip
    assert not (sim.root / "evil.py").exists() and not (sim.state_dir / "evil.py").exists()


def test_absolute_path_member_is_refused(sim: PackageSimulator) -> None:
    package = sim.with_member(sim.build(), Member("/abs.py", b"print('anywhere')\n"))
    with pytest.raises(UnsafePackage) as excinfo:
        sim.install(package)
    refused(sim, excinfo, UnsafePackage, "unsafe-path", "'/abs.py'", "absolute",
            plugin=None)  # fmt: skip


def test_symlink_member_is_refused(sim: PackageSimulator) -> None:
    package = sim.with_symlink_member(sim.build(), "link.py")
    with pytest.raises(UnsafePackage) as excinfo:
        sim.install(package)
    refused(sim, excinfo, UnsafePackage, "not-a-regular-file", "'link.py'", "a symlink",
            "regular files only", plugin=None)  # fmt: skip


def test_device_member_is_refused(sim: PackageSimulator) -> None:
    package = sim.with_device_member(sim.build(), "tty.py")
    with pytest.raises(UnsafePackage) as excinfo:
        sim.install(package)
    refused(sim, excinfo, UnsafePackage, "not-a-regular-file", "'tty.py'", "device",
            "regular files only", plugin=None)  # fmt: skip


def test_duplicate_member_is_refused(sim: PackageSimulator) -> None:
    package = sim.with_duplicate_member(sim.build(), "main.py")
    with zipfile.ZipFile(package) as archive:
        assert [i.filename for i in archive.infolist()].count("main.py") == 2
    with pytest.raises(UnsafePackage) as excinfo:
        sim.install(package)
    refused(sim, excinfo, UnsafePackage, "duplicate-member", "'main.py'", "more than once",
            plugin=None)  # fmt: skip


def test_decompression_bomb_is_refused_from_its_header(
    sim: PackageSimulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    package = sim.with_bomb(sim.build(), size=8 << 20, name="bomb.bin")
    with zipfile.ZipFile(package) as archive:
        info = archive.getinfo("bomb.bin")
        assert info.file_size > 1 << 20 and info.file_size > 100 * info.compress_size
    opened: list[str] = []
    real_open = zipfile.ZipFile.open

    def spy(self: zipfile.ZipFile, name: str | zipfile.ZipInfo, *args: object, **kw: object):
        opened.append(name.filename if isinstance(name, zipfile.ZipInfo) else name)
        return real_open(self, name, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(zipfile.ZipFile, "open", spy)
    with pytest.raises(UnsafePackage) as excinfo:
        sim.install(package)
    refused(sim, excinfo, UnsafePackage, "decompression-bomb", "'bomb.bin'", "compressed size",
            plugin=None)  # fmt: skip
    assert "bomb.bin" not in opened, "the bomb was inflated before it was refused"


def test_oversized_member_is_refused(sim: PackageSimulator) -> None:
    # 20 MiB of zeros: a bomb too, but over the per-file cap first.
    package = sim.with_bomb(sim.build(), size=20 << 20, name="huge.bin")
    with pytest.raises(UnsafePackage) as excinfo:
        sim.install(package)
    refused(sim, excinfo, UnsafePackage, "too-large", "'huge.bin'", str(20 << 20),
            plugin=None)  # fmt: skip


def test_member_whose_header_lies_about_its_size_is_refused(sim: PackageSimulator) -> None:
    # 4 MiB of zeros declared as 1000 bytes: the ratio check cannot see it, so the reader
    # must stop at the declared size. zipfile does (it truncates, then the CRC fails).
    package = sim.with_lying_size(sim.build(), size=4 << 20, declared=1000, name="liar.bin")
    with zipfile.ZipFile(package) as archive:
        assert archive.getinfo("liar.bin").file_size == 1000
    with pytest.raises(UnsafePackage) as excinfo:
        sim.install(package)
    refused(sim, excinfo, UnsafePackage, "corrupt-member", "'liar.bin'",
            plugin=None)  # fmt: skip


def test_member_shorter_than_declared_is_not_called_a_bomb(sim: PackageSimulator) -> None:
    package = sim.with_lying_size(sim.build(), size=100, declared=1000, name="short.bin")
    with pytest.raises(UnsafePackage) as excinfo:
        sim.install(package)
    assert "'short.bin'" in str(excinfo.value)
    assert excinfo.value.check == "corrupt-member", str(excinfo.value)


ARCHIVE_ATTACKS = {
    "path-traversal": lambda sim, p: sim.with_member(p, Member("../evil.py", b"x = 1\n")),
    "absolute-path": lambda sim, p: sim.with_member(p, Member("/abs.py", b"x = 1\n")),
    "symlink": lambda sim, p: sim.with_symlink_member(p),
    "device": lambda sim, p: sim.with_device_member(p),
    "duplicate": lambda sim, p: sim.with_duplicate_member(p),
    "bomb": lambda sim, p: sim.with_bomb(p, size=2 << 20),
}


@pytest.mark.parametrize("attack", list(ARCHIVE_ATTACKS))
def test_archive_level_refusals_are_audited(sim: PackageSimulator, attack: str) -> None:
    package = ARCHIVE_ATTACKS[attack](sim, sim.build())
    with pytest.raises(UnsafePackage) as excinfo:
        sim.install(package)
    entries = sim.audit.entries()
    assert entries, "no audit entry for a refused install"
    assert entries[-1]["decision"] == "refused"
    assert entries[-1]["check"] == excinfo.value.check


# -- installed folders ------------------------------------------------------------------


def test_planted_bytecode_beside_signed_source_is_refused(sim: PackageSimulator) -> None:
    sim.install(sim.build())
    cache = sim.store_dir / "demo" / "__pycache__"
    cache.mkdir()
    # A valid-looking header is irrelevant: any unsigned .pyc must be refused.
    (cache / "main.cpython-311.pyc").write_bytes(b"\xa7\r\r\n" + bytes(12) + b"planted")
    with pytest.raises(IntegrityError) as excinfo:
        sim.load_installed("demo")
    refused(sim, excinfo, IntegrityError, "planted-bytecode",
            "__pycache__/main.cpython-311.pyc", "delete the file", installed=True)  # fmt: skip
    assert sim.last_audit()["event"] == "load"


def test_symlink_planted_in_installed_folder_is_refused(sim: PackageSimulator) -> None:
    sim.install(sim.build())
    outside = sim.root / "outside.py"
    outside.write_text("print('not signed')\n")
    (sim.store_dir / "demo" / "helper.py").symlink_to(outside)
    with pytest.raises(UnsafePackage) as excinfo:
        sim.load_installed("demo")
    err = excinfo.value
    assert err.check == "not-a-regular-file"
    assert "helper.py" in str(err) and "reinstall" in str(err)
    assert sim.imported() == []


def test_install_never_writes_through_a_symlinked_target(sim: PackageSimulator) -> None:
    outside = sim.root / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("untouched\n")
    sim.store_dir.mkdir(parents=True)
    (sim.store_dir / "demo").symlink_to(outside, target_is_directory=True)
    installed = sim.install(sim.build())
    target = sim.store_dir / "demo"
    assert not target.is_symlink() and target.is_dir()
    assert sorted(p.name for p in outside.iterdir()) == ["keep.txt"]
    assert (outside / "keep.txt").read_text() == "untouched\n"
    assert sim.installed() == ["demo"]
    assert installed.folder == target and sim.load_installed("demo").version == "1.0.0"


def test_uninstall_keeps_the_rollback_floor(sim: PackageSimulator) -> None:
    old = sim.build("demo", "1.0.0")
    sim.install(sim.build("demo", "2.0.0"))
    assert uninstall_package("demo", sim.store_dir, audit=sim.audit) == sim.store_dir / "demo"
    assert sim.installed() == []
    assert (sim.last_audit()["event"], sim.last_audit()["decision"]) == ("uninstall", "done")
    with pytest.raises(RollbackRefused):
        sim.install(old)  # removing the newer copy does not re-open the older one
    for name in ("demo", "../state", "nope"):
        with pytest.raises(LookupError, match="No installed package"):
            uninstall_package(name, sim.store_dir)


def test_packaging_skips_bytecode_and_refuses_links(sim: PackageSimulator) -> None:
    folder = sim.plugin_folder("demo", "1.0.0")
    (folder / "__pycache__").mkdir()
    (folder / "__pycache__" / "main.cpython-311.pyc").write_bytes(b"compiled")
    (folder / "stray.pyc").write_bytes(b"compiled")
    _path, index = package_folder(folder, sim.pkg_dir / "demo.nyxp")
    assert [entry.path for entry in index.files] == ["main.py", "nyxplug.toml"]
    (folder / "link.py").symlink_to(folder / "main.py")
    with pytest.raises(UnsafePackage) as excinfo:
        package_folder(folder, sim.pkg_dir / "linked.nyxp")
    assert excinfo.value.check == "not-a-regular-file" and "link.py" in str(excinfo.value)
    assert not (sim.pkg_dir / "linked.nyxp").exists()


# -- the signature cache and the clock --------------------------------------------------


def _count_ed25519(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    calls: list[bytes] = []
    real_verify = PublicKey.verify

    def counting(self: PublicKey, signature: bytes, message: bytes) -> bool:
        calls.append(message)
        return real_verify(self, signature, message)

    monkeypatch.setattr(PublicKey, "verify", counting)
    return calls


def test_second_verification_is_a_signature_cache_hit(
    sim: PackageSimulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _count_ed25519(monkeypatch)
    sim.install(sim.build())
    assert (len(calls), sim.trust.cache_hits) == (1, 0)
    sim.load_installed("demo")
    assert (len(calls), sim.trust.cache_hits) == (1, 1)
    sim.advance(hours=23, minutes=59)
    sim.load_installed("demo")
    assert (len(calls), sim.trust.cache_hits) == (1, 2)


def test_signature_is_verified_again_after_24_hours(
    sim: PackageSimulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _count_ed25519(monkeypatch)
    sim.install(sim.build())
    sim.advance(hours=24, seconds=1)
    sim.load_installed("demo")
    assert (len(calls), sim.trust.cache_hits) == (2, 0)
    sim.load_installed("demo")  # and the fresh result is cached again
    assert (len(calls), sim.trust.cache_hits) == (2, 1)


def test_cached_signature_does_not_survive_tampering(sim: PackageSimulator) -> None:
    sim.install(sim.build())
    main = sim.store_dir / "demo" / "main.py"
    main.write_bytes(main.read_bytes() + b"\nimport os\n")
    with pytest.raises(IntegrityError) as excinfo:
        sim.load_installed("demo")
    refused(sim, excinfo, IntegrityError, "modified-file", "main.py", installed=True)


def test_revoked_key_is_refused_even_when_its_signature_is_cached(
    sim: PackageSimulator,
) -> None:
    sim.install(sim.build())
    assert sim.load_installed("demo").signed
    # Revoked by another process (the CLI): this store's cache is not cleared by it.
    sim.new_trust_store().revoke_key(sim.publisher.key_id)
    sim.trust.reload()
    installed = read_installed(sim.store_dir / "demo")
    assert sim.trust.cached(installed.index_bytes, installed.signature_bytes or b"")
    with pytest.raises(SignatureRejected) as excinfo:
        sim.load_installed("demo")
    refused(sim, excinfo, SignatureRejected, "revoked-key", "revoked", installed=True)


def test_old_signature_is_accepted_with_a_stale_warning(sim: PackageSimulator) -> None:
    package = sim.build()  # signed at sim.now
    sim.advance(days=31)
    installed = sim.install(package)
    assert len(installed.package.warnings) == 1
    warning = installed.package.warnings[0]
    assert "31 days old" in warning and "re-sign" in warning
    entry = sim.last_audit()
    assert entry["decision"] == "accepted" and entry["warnings"] == [warning]
    fresh = sim.install(sim.build("demo", "1.0.1"))  # signed "now": no warning
    assert fresh.package.warnings == ()


# -- the trust store file -----------------------------------------------------------------


def test_trust_file_round_trip(sim: PackageSimulator) -> None:
    acme = sim.mint_key("acme", scopes=("acme-*", "tools-?"), expires=sim.now + dt.timedelta(30))
    sim.trust.revoke_key("0123456789abcdef")
    sim.trust.revoke_package("ab" * 32)
    sim.trust.raise_floor("demo", "1.2.3")
    sim.trust.raise_floor("demo", "1.0.0")  # never lowers

    again = TrustStore(sim.trust.path)
    assert [k.key_id for k in again.keys()] == [sim.publisher.key_id, acme.key_id]
    entry = again.key(acme.key_id)
    assert entry is not None and entry.public() == acme.public and entry.name == "acme"
    assert entry.scopes == ("acme-*", "tools-?")
    assert entry.in_scope("tools-1") and not entry.in_scope("tools-12")
    assert entry.expiry() == sim.now + dt.timedelta(30)
    assert again.revoked() == (["0123456789abcdef"], ["ab" * 32])
    assert again.floor("demo") == "1.2.3" and again.floor("other") is None
    assert again.remove_key(acme.key_id) and not again.remove_key(acme.key_id)
    assert [k.key_id for k in TrustStore(sim.trust.path).keys()] == [sim.publisher.key_id]


@pytest.mark.parametrize(
    "content",
    [b"{not json", b"[]", b'{"format": "nyxplug-trust/999"}', b'{"keys": 5}', b'{"extra": 1}'],
    ids=["garbage", "wrong-shape", "wrong-format", "wrong-type", "unknown-field"],
)
def test_corrupt_trust_file_is_a_key_file_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "trust.json"
    path.write_bytes(content)
    with pytest.raises(KeyFileError) as excinfo:
        TrustStore(path)
    assert excinfo.value.path == str(path)
    assert str(path) in str(excinfo.value)


def test_missing_trust_file_is_an_empty_store(tmp_path: Path) -> None:
    store = TrustStore(tmp_path / "nothing" / "trust.json")
    assert store.keys() == [] and store.revoked() == ([], []) and store.floor("x") is None


# -- keys -------------------------------------------------------------------------------


def test_signing_key_save_and_load_without_passphrase(tmp_path: Path) -> None:
    key = SigningKey.generate("alice")
    public_path = key.save(tmp_path / "keys" / "alice.key")
    assert public_path == tmp_path / "keys" / "alice.pub"
    assert stat.S_IMODE(os.stat(tmp_path / "keys" / "alice.key").st_mode) == 0o600
    loaded = SigningKey.load(tmp_path / "keys" / "alice.key")
    assert loaded.key_id == key.key_id and loaded.public.name == "alice"
    assert PublicKey.load(public_path) == key.public
    assert key.public.verify(loaded.sign(b"message"), b"message")
    with pytest.raises(KeyFileError, match="already exists"):
        key.save(tmp_path / "keys" / "alice.key")  # never overwrites
    with pytest.raises(KeyFileError, match="drop the passphrase"):
        SigningKey.load(tmp_path / "keys" / "alice.key", b"unneeded")


def test_signing_key_save_and_load_with_passphrase(tmp_path: Path) -> None:
    key = SigningKey.generate("bob")
    key.save(tmp_path / "bob.key", passphrase=b"correct horse")
    assert b"ENCRYPTED" in (tmp_path / "bob.key").read_bytes()
    assert SigningKey.load(tmp_path / "bob.key", b"correct horse").key_id == key.key_id
    with pytest.raises(KeyFileError, match="wrong passphrase"):
        SigningKey.load(tmp_path / "bob.key", b"battery staple")
    with pytest.raises(KeyFileError, match="give the passphrase"):
        SigningKey.load(tmp_path / "bob.key")


def test_signing_key_load_errors(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="cannot read it"):
        SigningKey.load(tmp_path / "missing.key")
    (tmp_path / "junk.key").write_bytes(b"not a key\n")
    with pytest.raises(KeyFileError, match="not a PEM private key"):
        SigningKey.load(tmp_path / "junk.key")


def test_key_folder_rules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    key = SigningKey.generate("dana")
    key.save(tmp_path / "plain.key")
    key.save(tmp_path / "locked.key", passphrase=b"secret")
    assert not is_encrypted(tmp_path / "plain.key")
    assert is_encrypted(tmp_path / "locked.key")
    with pytest.raises(
        KeyFileError,
        match=r"^Cannot use .*missing\.key: cannot read it \(No such file or directory\)$",
    ):
        is_encrypted(tmp_path / "missing.key")
    assert key_files(tmp_path) == [tmp_path / "locked.key", tmp_path / "plain.key"]
    assert key_files(tmp_path / "nowhere") == []

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_key_dir({KEY_DIR_ENV: str(tmp_path)}) == tmp_path
    assert default_key_dir({KEY_DIR_ENV: ""}) == tmp_path / "home" / ".nyxplug" / "keys"
    assert default_key_dir({}) == tmp_path / "home" / ".nyxplug" / "keys"
    assert passphrase_from({PASSPHRASE_ENV: "pw"}) == b"pw"
    assert passphrase_from({PASSPHRASE_ENV: ""}) is None
    assert passphrase_from({}) is None

    monkeypatch.setenv("LOGNAME", "Eve O'Neil")  # getpass.getuser reads $LOGNAME first
    assert default_key_name() == "eve-o-neil"
    monkeypatch.setenv("LOGNAME", "!!!")
    assert default_key_name() == "publisher"


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "expected one line"),
        ("ssh-ed25519 AAAA name", "expected one line"),
        ("nyxplug-ed25519", "expected one line"),
        ("nyxplug-ed25519 !!!notbase64!!! name", "not valid base64"),
        ("nyxplug-ed25519 " + "QUJD" + " name", "expected 32 key bytes, got 3"),
    ],
    ids=["empty", "wrong-prefix", "no-key", "bad-base64", "short-key"],
)
def test_public_key_parse_errors(text: str, problem: str) -> None:
    with pytest.raises(KeyFileError) as excinfo:
        PublicKey.parse(text, "pasted.pub")
    assert excinfo.value.path == "pasted.pub" and problem in excinfo.value.problem


def test_public_key_text_round_trip() -> None:
    key = SigningKey.generate("carol the publisher")
    assert PublicKey.parse(key.public.text) == key.public
    nameless = PublicKey(key.public.raw)
    assert PublicKey.parse(nameless.text + "\n") == nameless
    with pytest.raises(ValueError, match="32-byte"):
        PublicKey(b"short")


# -- properties of member names -------------------------------------------------------------

SAFE_PART = st.from_regex(r"[a-z0-9_][a-z0-9_.-]{0,8}", fullmatch=True).filter(
    lambda part: part not in (".", "..")
)
# Pieces that combine into every interesting shape: "..", "/", "//", "./", "C:", "\\", NUL.
NASTY_NAME = st.lists(
    st.sampled_from(["a", "b.py", ".", "..", "/", "\\", ":", "C:", "\x00", " ", "é", "~"]),
    max_size=7,
).map("".join)
MEMBER_NAME = (
    NASTY_NAME | st.text(max_size=12) | st.lists(SAFE_PART, min_size=1, max_size=4).map("/".join)
)


def _stays_below(name: str) -> bool:
    """What a member name must do: resolve to a path strictly inside the folder."""
    root = "/plugin"
    joined = posixpath.normpath(posixpath.join(root, name))
    return (
        not name.startswith("/")
        and "\x00" not in name
        and "\\" not in name
        and joined.startswith(root + "/")
        and all(part not in ("", ".", "..") for part in name.split("/"))
    )


@settings(max_examples=300, deadline=None, database=None)
@given(MEMBER_NAME)
def test_check_member_name_accepts_only_names_below_the_folder(name: str) -> None:
    why = check_member_name(name)
    if why is None:
        assert _stays_below(name), f"{name!r} was accepted"
    else:
        assert isinstance(why, str) and why


@settings(max_examples=100, deadline=None, database=None)
@given(st.lists(SAFE_PART, min_size=1, max_size=4).map("/".join))
def test_check_member_name_accepts_plain_relative_names(name: str) -> None:
    assert check_member_name(name) is None


@settings(max_examples=60, deadline=None, database=None)
@given(st.lists(MEMBER_NAME, min_size=1, max_size=3))
def test_read_package_never_returns_a_path_outside_the_folder(names: list[str]) -> None:
    members = [Member(INDEX_FILE, b"{}")] + [Member(n, b"x") for n in names]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "fuzz.nyxp"
        try:
            write_members(path, members)
        except (ValueError, UnicodeEncodeError):
            return  # zipfile itself cannot write this name
        try:
            contents = read_package(path)
        except UnsafePackage as exc:
            assert exc.check in {"unsafe-path", "duplicate-member", "not-a-regular-file"}
            return
    for name in contents.files:
        assert _stays_below(name), f"read_package returned {name!r}"
        assert check_member_name(name) is None


# -- the package on its own ---------------------------------------------------------------


def test_trust_package_imports_on_its_own() -> None:
    # nyxplug.trust stands on nyxplug.source alone (never the runtime): a fresh
    # interpreter imports it first (test_circular_imports does this for every module).
    result = subprocess.run(
        [sys.executable, "-c", "import nyxplug.trust; print(nyxplug.trust.PACKAGE_SUFFIX)"],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ".nyxp"


def test_refusal_names_the_package_file_and_a_short_check(sim: PackageSimulator) -> None:
    package = sim.with_added_file(sim.build())
    with pytest.raises(TrustError) as excinfo:
        sim.install(package)
    assert re.fullmatch(r"[a-z]+(-[a-z]+)*", excinfo.value.check)
    assert str(package) in str(excinfo.value)  # the message names the package file


def _signed_with_extra_files(sim: PackageSimulator, extra: dict[str, bytes]) -> Path:
    """A package whose signed index itself lists ``extra`` (a publisher gone rogue)."""
    contents = read_package(sim.build(signed=False))
    files = {**contents.files, **extra}
    index = build_index("demo", 7, "1.0.0", files).encode()
    target = sim.pkg_dir / "rogue.nyxp"
    write_package(target, index, files, sign_index(index, sim.publisher, sim.now))
    return target


def test_a_signed_member_name_no_file_system_holds_is_refused(sim: PackageSimulator) -> None:
    """Issue 15 item 8: a 300-byte name was a bare OSError at install."""
    long_name = "a" * 300 + ".py"
    with pytest.raises(UnsafePackage) as excinfo:
        sim.install(_signed_with_extra_files(sim, {long_name: b"x = 1\n"}))
    refused(sim, excinfo, UnsafePackage, "unsafe-path", "longer than 255 bytes",
            plugin=None)  # fmt: skip


def test_a_signed_member_that_is_file_and_folder_is_refused(sim: PackageSimulator) -> None:
    """Issue 15 item 8: both ``lib`` and ``lib/mod.py`` was a bare OSError at install."""
    package = _signed_with_extra_files(sim, {"lib": b"", "lib/mod.py": b"x = 1\n"})
    with pytest.raises(UnsafePackage) as excinfo:
        sim.install(package)
    refused(sim, excinfo, UnsafePackage, "unsafe-path",
            "member 'lib' is a file and also the folder of 'lib/mod.py'", plugin=None)  # fmt: skip
