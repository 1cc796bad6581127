"""A new version's parts, shared by load and reload: its bytes, manifest, guard and instance.

Nothing here changes a plugin's state: these functions read, verify and build, and
the caller decides what a failure means (a failed load, or a reload rolled back).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .._info import PluginInfo
from ..sandbox import FilesystemAccess, SandboxGuard, SandboxPolicy
from ..source.layout import INDEX_FILE, MANIFEST_FILE
from ..source.manifest import Manifest, decode_manifest
from ..source.snapshot import Snapshot

if TYPE_CHECKING:  # nyxplug.trust loads lazily (cryptography costs ~20 ms at import)
    from ..trust import AuditLog, TrustStore
    from .catalog import PluginRecord  # the catalog imports reload, which imports this

__all__ = ("guard_of", "info_of", "instantiate", "policy_of", "read_code", "staged_manifest")

logger = logging.getLogger("nyxplug.runtime")


def read_code(
    record: PluginRecord,
    *,
    require_signatures: bool,
    trust: TrustStore | None,
    audit: AuditLog | None,
) -> tuple[Snapshot | None, bool]:
    """The bytes to import, read once, and whether a signature vouched for them.

    A folder with an index (an installed package) is always verified, signatures
    required or not: a package that fails its own index must never run. Every file
    is read, so a planted ``.pyc`` or extra module is refused, not skipped.
    """
    from ..trust import TrustError, read_installed, verify_contents

    folder = record.folder
    if folder is None:
        return None, False
    if not (folder / INDEX_FILE).is_file():
        if require_signatures:
            raise TrustError("unsigned", str(folder), record.reason or "unsigned", record.name)
        snapshot = Snapshot.read(folder, extra=(MANIFEST_FILE,))
        if MANIFEST_FILE not in snapshot.files:  # removed (or mid-save) since discovery
            raise FileNotFoundError(f"Expected {MANIFEST_FILE} in {folder}, found none")
        return snapshot, False
    contents = read_installed(folder)
    if trust is not None:
        trust.reload()  # a revocation by `nyxplug trust` elsewhere applies now
    verified = verify_contents(
        trust, source=contents.source, index_bytes=contents.index_bytes,
        signature_bytes=contents.signature_bytes, files=contents.files,
        require_signature=require_signatures, audit=audit, event="load",
    )  # fmt: skip
    if verified.name != record.name:
        raise TrustError(
            "manifest-mismatch", str(folder),
            f"the signed package is {verified.name!r}, not {record.name!r} - rediscover",
            record.name,
        )  # fmt: skip
    for warning in verified.warnings:
        logger.warning("Plugin %r: %s", record.name, warning)
    return Snapshot(folder.resolve(), verified.files), verified.signed


def staged_manifest(record: PluginRecord, snapshot: Snapshot | None) -> Manifest:
    """The manifest of the bytes about to run (a code plugin's is its own)."""
    if record.folder is None or snapshot is None:
        assert record.manifest is not None
        return record.manifest
    manifest = decode_manifest(snapshot.files[MANIFEST_FILE], str(record.folder / MANIFEST_FILE))
    if manifest.name != record.name:
        raise ValueError(
            f"Expected [plugin] name {record.name!r} (as discovered), found "
            f"{manifest.name!r} - the manifest changed; rediscover"
        )
    return manifest


def policy_of(manifest: Manifest) -> SandboxPolicy:
    """The ``SandboxPolicy`` a manifest's ``[sandbox]`` table describes."""
    box = manifest.sandbox
    return SandboxPolicy(
        allow_network=box.network,
        filesystem=FilesystemAccess(box.filesystem),
        memory_limit=box.memory_limit,
        network_allowlist=tuple(box.network_allowlist),
        filesystem_allowlist=tuple(box.filesystem_allowlist),
    )


def info_of(record: PluginRecord, manifest: Manifest) -> PluginInfo:
    """The plugin's registry entry, with its manifest as ``source``: errors about it then
    name the fix in that file's terms (``[permissions]``, ``[sandbox]``, ``[resources]``)."""
    source = str(record.folder / MANIFEST_FILE) if record.folder is not None else None
    return PluginInfo(manifest.id, record.name, manifest.permission_mask, source=source)


def guard_of(manifest: Manifest, info: PluginInfo | None = None) -> SandboxGuard | None:
    """The plugin's cooperative sandbox; none for an isolated one (its child has the kernel's).

    ``info`` (from ``info_of``) lets its refusals name the plugin and its ``[sandbox]``.
    """
    if manifest.resources.isolation == "process":
        return None
    return SandboxGuard(policy_of(manifest), manifest.id, info=info)


def instantiate(factory: Callable[[], Any]) -> Any:
    """The plugin object from its factory; it must have ``handle`` or ``handle_batch``."""
    instance = factory()
    if not callable(getattr(instance, "handle", None)) and not callable(
        getattr(instance, "handle_batch", None)
    ):
        raise TypeError(
            f"Expected the entry object to have handle(message), got {type(instance)!r}"
        )
    return instance
