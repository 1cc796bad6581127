"""Load-time verification: the runtime imports only bytes that match a trusted signature.

Real keys, real packages installed into a real state folder, both dispatcher twins. Each
refusal leaves the plugin ``failed`` at the ``verify`` step with the check named, nothing
imported (the module writes a marker file when it runs), and a ``load`` line in the audit log.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import shutil
from pathlib import Path
from typing import Any

import pytest
from plugin_helpers import RECORDER, write_plugin

from nyxplug import FrameType, PluginHeader
from nyxplug.plugins import PluginLoadError, PluginManager
from nyxplug.trust import (
    AuditLog,
    SigningKey,
    TrustStore,
    install_package,
    package_folder,
    sign_package,
)

EVENT_TIMEOUT = 5.0


class Host:
    """A host's state folder with a trusted publisher key, and a source folder to build in."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.state = root / "state"
        self.src = root / "src"
        self.key = SigningKey.generate("acme")
        self.trust = TrustStore(self.state / "trust.json")
        self.trust.add_key(self.key.public, scopes=("acme-*",))
        self.audit = AuditLog(self.state / "audit.jsonl")

    def marker(self, name: str) -> Path:
        return self.root / f"imported-{name}"

    def build(self, name: str, plugin_id: int, version: str = "1.0.0") -> Path:
        """A signed ``.nyxp`` of a recorder plugin whose import leaves a marker file."""
        code = f"open({str(self.marker(name))!r}, 'a').close()\n" + RECORDER
        folder = self.src / f"{name}-{version}"
        write_plugin(folder, name, plugin_id, code, version=version)
        package, _ = package_folder(folder / name, self.root / f"{name}-{version}.nyxp")
        sign_package(package, self.key)
        return package

    def install(self, name: str, plugin_id: int, version: str = "1.0.0") -> Path:
        package = self.build(name, plugin_id, version)
        return install_package(
            package, self.state / "packages", self.trust, audit=self.audit
        ).folder

    def manager(self, impl: Any, **kwargs: Any) -> PluginManager:
        kwargs.setdefault("plugin_dirs", [])
        return PluginManager(
            dispatcher=impl.Dispatcher(), state_dir=self.state, entry_points=False,
            include_registered=False, trust=TrustStore(self.state / "trust.json"), **kwargs,
        )  # fmt: skip

    def last_load(self) -> dict[str, Any]:
        loads = [e for e in self.audit.entries() if e["event"] == "load"]
        return loads[-1]


@pytest.fixture
def host(tmp_path: Path) -> Host:
    return Host(tmp_path)


async def refused_at_load(host: Host, impl: Any, name: str, check: str) -> None:
    manager = host.manager(impl)
    manager.discover()
    with pytest.raises(PluginLoadError) as caught:
        await manager.load(name)
    assert caught.value.step == "verify"
    assert f"[{check}]" in caught.value.reason
    status = manager.status(name)
    assert status.state == "failed" and f"[{check}]" in (status.reason or "")
    assert not host.marker(name).exists(), "refused code must not run"
    assert not manager.dispatcher.is_loaded(status.id)
    entry = host.last_load()
    assert (entry["decision"], entry["check"], entry["plugin"]) == ("refused", check, name)


async def test_an_installed_signed_plugin_loads_verified_and_takes_frames(
    host: Host, impl: Any
) -> None:
    host.install("acme-echo", 41)
    async with host.manager(impl) as manager:
        status = manager.status("acme-echo")
        assert (status.state, status.source, status.verified) == ("active", "package", True)
        assert (status.key_id, status.signer) == (host.key.key_id, "acme")
        await manager.dispatcher.dispatch(FrameType.DATA, PluginHeader(41), b"hi")
        plugin = manager.instance("acme-echo")
        await asyncio.wait_for(plugin.arrived.wait(), EVENT_TIMEOUT)
        assert plugin.seen == [b"hi"]
    entry = host.last_load()
    assert (entry["decision"], entry["plugin"], entry["key_id"]) == (
        "accepted", "acme-echo", host.key.key_id,
    )  # fmt: skip


async def test_an_unsigned_folder_is_refused_when_signatures_are_required(
    host: Host, impl: Any
) -> None:
    write_plugin(host.src, "acme-raw", 42, f"open({str(host.marker('acme-raw'))!r}, 'a')\n")
    manager = host.manager(impl, plugin_dirs=[host.src])
    by_name = {s.name: s for s in manager.discover()}
    assert by_name["acme-raw"].state == "failed"
    assert "unsigned" in (by_name["acme-raw"].reason or "")
    assert "require_signatures" in (by_name["acme-raw"].reason or "")
    with pytest.raises(PluginLoadError) as caught:
        await manager.load("acme-raw")
    assert caught.value.step == "verify" and "[unsigned]" in caught.value.reason
    assert not host.marker("acme-raw").exists()


async def test_an_unsigned_folder_loads_when_signatures_are_not_required(
    host: Host, impl: Any
) -> None:
    write_plugin(host.src, "acme-dev", 43)
    manager = host.manager(impl, plugin_dirs=[host.src], require_signatures=False)
    manager.discover()
    status = await manager.load("acme-dev")
    assert (status.state, status.verified, status.key_id) == ("active", False, None)
    await manager.aclose()


async def test_a_file_changed_after_install_is_refused(host: Host, impl: Any) -> None:
    folder = host.install("acme-edit", 44)
    (folder / "main.py").write_text("raise SystemExit('evil')\n")
    await refused_at_load(host, impl, "acme-edit", "modified-file")


async def test_a_file_changed_is_refused_even_when_signatures_are_not_required(
    host: Host, impl: Any
) -> None:
    folder = host.install("acme-lax", 45)
    (folder / "main.py").write_text("raise SystemExit('evil')\n")
    manager = host.manager(impl, require_signatures=False)
    manager.discover()
    with pytest.raises(PluginLoadError, match=r"\[modified-file\]"):
        await manager.load("acme-lax")


async def test_a_planted_pyc_in_an_installed_plugin_is_refused(host: Host, impl: Any) -> None:
    folder = host.install("acme-pyc", 46)
    (folder / "__pycache__").mkdir()
    (folder / "__pycache__" / "main.cpython-311.pyc").write_bytes(b"\x00" * 32)
    await refused_at_load(host, impl, "acme-pyc", "planted-bytecode")


async def test_a_module_added_after_install_is_refused(host: Host, impl: Any) -> None:
    folder = host.install("acme-add", 47)
    (folder / "extra.py").write_text("print('hello')\n")
    await refused_at_load(host, impl, "acme-add", "added-file")


async def test_a_key_revoked_after_install_is_refused_at_load(host: Host, impl: Any) -> None:
    host.install("acme-rev", 48)
    host.trust.revoke_key(host.key.key_id)
    await refused_at_load(host, impl, "acme-rev", "revoked-key")


async def test_a_key_expired_after_install_is_refused_at_load(host: Host, impl: Any) -> None:
    host.install("acme-exp", 49)
    host.trust.add_key(
        host.key.public, scopes=("acme-*",), expires=dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
    )
    await refused_at_load(host, impl, "acme-exp", "expired-key")


async def test_an_older_signed_version_swapped_into_the_store_is_refused(
    host: Host, impl: Any
) -> None:
    """The store holds 2.0.0 (floor 2.0.0); an attacker copies in a genuine signed 1.0.0."""
    elsewhere = TrustStore(host.root / "elsewhere" / "trust.json")
    elsewhere.add_key(host.key.public)
    old = install_package(
        host.build("acme-roll", 50, "1.0.0"), host.root / "elsewhere", elsewhere
    ).folder
    folder = host.install("acme-roll", 50, "2.0.0")
    shutil.rmtree(folder)
    shutil.copytree(old, folder)
    host.marker("acme-roll").unlink(missing_ok=True)
    await refused_at_load(host, impl, "acme-roll", "rollback")


async def test_a_signer_out_of_scope_is_refused_at_load(host: Host, impl: Any) -> None:
    folder = host.install("acme-scope", 51)
    host.trust.add_key(host.key.public, scopes=("other-*",))
    assert folder.is_dir()
    await refused_at_load(host, impl, "acme-scope", "out-of-scope")


async def test_reloading_uses_the_signature_cache(host: Host, impl: Any) -> None:
    host.install("acme-cache", 52)
    manager = host.manager(impl)
    manager.discover()
    await manager.load("acme-cache")
    await manager.unload("acme-cache")
    assert manager.trust is not None
    hits = manager.trust.cache_hits
    await manager.load("acme-cache")
    assert manager.trust.cache_hits == hits + 1
    assert manager.status("acme-cache").verified
    await manager.aclose()


def test_the_catalog_shows_an_untrusted_signer(host: Host, impl: Any) -> None:
    host.install("acme-who", 53)
    host.trust.remove_key(host.key.key_id)
    manager = host.manager(impl)
    status = {s.name: s for s in manager.discover()}["acme-who"]
    assert (status.key_id, status.signer, status.verified) == (host.key.key_id, None, False)


def test_an_installed_package_takes_precedence_over_a_folder_of_the_same_name(
    host: Host, impl: Any
) -> None:
    host.install("acme-both", 54)
    write_plugin(host.src, "acme-both", 54)
    manager = host.manager(impl, plugin_dirs=[host.src], require_signatures=False)
    status = {s.name: s for s in manager.discover()}["acme-both"]
    assert (status.source, status.key_id) == ("package", host.key.key_id)
    shadows = (
        f"the installed package {host.state / 'packages' / 'acme-both'} (1.0.0) runs instead "
        f"of the folder {host.src / 'acme-both'} (1.0.0) - `nyxplug uninstall acme-both` to "
        f"run the folder, or install 1.0.0 (`nyxplug package {host.src / 'acme-both'}`, then "
        "`nyxplug sign` and `nyxplug install` the .nyxp)"
    )
    assert manager.discovery_errors == [f"Plugin 'acme-both': {shadows}"]
    assert status.shadows == shadows


async def test_an_unsigned_newer_folder_never_displaces_the_signed_package(
    host: Host, impl: Any
) -> None:
    """Issue 19: versions of one plugin side by side - the highest *usable* one is stable,
    so an unsigned folder on a host that requires signatures is listed, never run."""
    host.install("acme-both", 54)
    write_plugin(host.src, "acme-both", 54, version="2.0.0")
    manager = host.manager(impl, plugin_dirs=[host.src])
    async with manager:
        status = manager.status("acme-both")
        assert (status.source, status.version, status.state) == ("package", "1.0.0", "active")
        assert status.versions == ("1.0.0", "2.0.0")
        roles = {v.version: v.role for v in manager.versions("acme-both")}
        assert roles == {"1.0.0": "stable", "2.0.0": "available"}
        refused = r"at verify: version 2.0.0: TrustError: .*\[unsigned\]"
        with pytest.raises(PluginLoadError, match=refused):
            await manager.load_version("acme-both", "2.0.0")
