"""Check a package's bytes against its signed index and this host's trust store.

``verify_contents`` is the one place where a package (from a ``.nyxp`` or an installed
folder) is accepted or refused. The order matters: first *who* signed (is the key
trusted, in scope, unexpired, unrevoked, and is the signature genuine), then *what* was
signed (every file's size and hash, nothing added, nothing missing, the manifest agreeing
with the index), then *when* (no rollback below the recorded floor). Every decision is
written to the audit log before it is returned or raised.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field

import msgspec
import semver

from ..source.layout import MANIFEST_FILE
from ..source.manifest import ManifestError, decode_manifest
from .audit import AuditLog
from .errors import (
    IntegrityError,
    RollbackRefused,
    SignatureRejected,
    TrustError,
    UnsafePackage,
)
from .package import INDEX_FORMAT, SIGNATURE_FORMAT, Index, Signature, signed_message
from .store import STALE_SIGNATURE_DAYS, TrustStore

__all__ = ("VerifiedPackage", "verify_contents")


@dataclass(frozen=True)
class VerifiedPackage:
    """A package that passed every check; ``files`` are the exact bytes to import."""

    name: str
    id: int
    version: str
    package_sha256: str
    files: dict[str, bytes]
    signed: bool
    key_id: str | None = None
    signer: str | None = None
    signed_at: str | None = None
    warnings: tuple[str, ...] = field(default=())


def verify_contents(
    store: TrustStore | None,
    *,
    source: str,
    index_bytes: bytes,
    signature_bytes: bytes | None,
    files: Mapping[str, bytes],
    require_signature: bool = True,
    allow_rollback: bool = False,
    audit: AuditLog | None = None,
    event: str = "verify",
) -> VerifiedPackage:
    """Accept or refuse a package; raises a ``TrustError`` subclass naming the check."""
    package_sha256 = hashlib.sha256(index_bytes).hexdigest()
    plugin: str | None = None
    try:
        index = _decode_index(index_bytes, source)
        plugin = index.name
        verified = _verify(
            store, source, index, index_bytes, signature_bytes, files,
            package_sha256, require_signature, allow_rollback,
        )  # fmt: skip
    except TrustError as exc:
        if audit is not None:
            audit.record(
                event, "refused", source=source, plugin=exc.plugin or plugin,
                package_sha256=package_sha256, check=exc.check, reason=exc.problem,
            )  # fmt: skip
        raise
    if audit is not None:
        audit.record(
            event, "accepted", source=source, plugin=verified.name, version=verified.version,
            package_sha256=package_sha256, key_id=verified.key_id, signer=verified.signer,
            signed=verified.signed, warnings=list(verified.warnings) or None,
        )  # fmt: skip
    return verified


def _decode_index(index_bytes: bytes, source: str) -> Index:
    try:
        index = msgspec.json.decode(index_bytes, type=Index)
    except msgspec.DecodeError as exc:
        raise IntegrityError("bad-index", source, f"the index is not valid ({exc})") from None
    if index.format != INDEX_FORMAT:
        raise IntegrityError(
            "bad-index", source, f"expected index format {INDEX_FORMAT!r}, got {index.format!r}"
        )
    paths = [entry.path for entry in index.files]
    if len(set(paths)) != len(paths):
        raise IntegrityError("bad-index", source, "the index lists a path twice", index.name)
    return index


def _verify(
    store: TrustStore | None,
    source: str,
    index: Index,
    index_bytes: bytes,
    signature_bytes: bytes | None,
    files: Mapping[str, bytes],
    package_sha256: str,
    require_signature: bool,
    allow_rollback: bool,
) -> VerifiedPackage:
    name = index.name
    warnings: list[str] = []
    key_id = signer = signed_at = None
    if signature_bytes is None:
        if require_signature:
            raise SignatureRejected(
                "unsigned", source,
                "the package is not signed - sign it with `nyxplug sign PKG --key KEY` "
                "(or, for development only, set runtime.require_signatures = false)", name,
            )  # fmt: skip
    else:
        if store is None:
            raise SignatureRejected(
                "no-trust-store", source, "signed, but this host has no trust store to check "
                "the key against - give the host a state_dir", name,
            )  # fmt: skip
        signature = _check_signature(store, source, name, index_bytes, signature_bytes)
        key_id, signed_at = signature.key_id, signature.signed_at
        trusted = store.key(key_id)
        signer = trusted.name if trusted is not None else None
        when = signature.time()
        assert when is not None  # _check_signature refused unparsable times
        age = store.clock() - when
        if age < -dt.timedelta(minutes=5):
            warnings.append(
                f"signature is dated {signed_at}, in the future - check this host's clock "
                "and the signer's"
            )
        elif age > dt.timedelta(days=STALE_SIGNATURE_DAYS):
            warnings.append(
                f"signature is {age.days} days old (over {STALE_SIGNATURE_DAYS}) - "
                "ask the publisher to re-sign"
            )
    if store is not None and store.is_package_revoked(package_sha256):
        raise SignatureRejected(
            "revoked-package", source,
            f"package {package_sha256[:16]}... is on this host's revocation list", name,
        )  # fmt: skip
    _check_files(source, index, files)
    _check_manifest(source, index, files)
    if store is not None:
        floor = store.floor(name)
        if (
            floor is not None
            and not allow_rollback
            and semver.Version.parse(index.version) < semver.Version.parse(floor)
        ):
            raise RollbackRefused(
                "rollback", source,
                f"version {index.version} is older than {floor}, the highest installed here - "
                f"install {floor} or newer (`nyxplug install --allow-rollback` records a wanted "
                "downgrade)",
                name,
            )  # fmt: skip
    return VerifiedPackage(
        name=name,
        id=index.id,
        version=index.version,
        package_sha256=package_sha256,
        files=dict(files),
        signed=signature_bytes is not None,
        key_id=key_id,
        signer=signer,
        signed_at=signed_at,
        warnings=tuple(warnings),
    )


def _check_signature(
    store: TrustStore, source: str, name: str, index_bytes: bytes, signature_bytes: bytes
) -> Signature:
    try:
        signature = msgspec.json.decode(signature_bytes, type=Signature)
    except msgspec.DecodeError as exc:
        raise SignatureRejected(
            "bad-signature", source, f"the signature file is not valid ({exc})", name
        ) from None
    if signature.format != SIGNATURE_FORMAT or signature.time() is None:
        raise SignatureRejected(
            "bad-signature", source,
            f"expected a {SIGNATURE_FORMAT} signature with a UTC time, got "
            f"format {signature.format!r} at {signature.signed_at!r}", name,
        )  # fmt: skip
    key_id = signature.key_id
    if store.is_key_revoked(key_id):
        raise SignatureRejected(
            "revoked-key", source,
            f"signed by key {key_id}, which this host revoked - get a package signed with a "
            "current key", name,
        )  # fmt: skip
    trusted = store.key(key_id)
    if trusted is None:
        raise SignatureRejected(
            "untrusted-key", source,
            f"signed by key {key_id}, which this host does not trust - if you trust the "
            "publisher, run `nyxplug trust add THEIR_KEY.pub`", name,
        )  # fmt: skip
    expiry = trusted.expiry()
    if expiry is not None and store.clock() >= expiry:
        raise SignatureRejected(
            "expired-key", source,
            f"key {key_id} ({trusted.name}) expired on {trusted.expires} - the publisher must "
            "sign with a current key, or renew the trust with `nyxplug trust add --expires`",
            name,
        )  # fmt: skip
    if not trusted.in_scope(name):
        raise SignatureRejected(
            "out-of-scope", source,
            f"key {key_id} ({trusted.name}) is trusted only for plugins matching "
            f"{', '.join(trusted.scopes)}, not {name!r}", name,
        )  # fmt: skip
    if not store.cached(index_bytes, signature_bytes):
        message = signed_message(key_id, signature.signed_at, index_bytes)
        if not trusted.public().verify(signature.raw(), message):
            raise SignatureRejected(
                "bad-signature", source,
                f"the signature by key {key_id} does not match the index - the index was "
                "changed after signing, or the signature belongs to another package", name,
            )  # fmt: skip
        store.remember(index_bytes, signature_bytes)
    return signature


def _check_files(source: str, index: Index, files: Mapping[str, bytes]) -> None:
    name = index.name
    listed = {entry.path for entry in index.files}
    missing = sorted(listed - files.keys())
    if missing:
        raise IntegrityError(
            "removed-file", source,
            f"{missing[0]} is in the signed index but missing from the package"
            + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
            + " - get a fresh copy from the publisher and reinstall", name,
        )  # fmt: skip
    extra = sorted(files.keys() - listed)
    if extra:
        compiled = [p for p in extra if p.endswith((".pyc", ".pyo")) or "__pycache__/" in p]
        if compiled:
            raise IntegrityError(
                "planted-bytecode", source,
                f"{compiled[0]} is compiled bytecode that is not in the signed index - "
                "nyxplug only runs signed source; delete the file", name,
            )  # fmt: skip
        raise IntegrityError(
            "added-file", source,
            f"{extra[0]} is not in the signed index - someone added it after signing; "
            "get a fresh copy from the publisher and reinstall", name,
        )  # fmt: skip
    # The manifest first: when it changed, the message can name the attack.
    for entry in sorted(index.files, key=lambda e: e.path != MANIFEST_FILE):
        data = files[entry.path]
        if len(data) == entry.size and hashlib.sha256(data).hexdigest() == entry.sha256:
            continue
        if entry.path == MANIFEST_FILE:
            _explain_manifest_change(source, index, data)
        raise IntegrityError(
            "modified-file", source,
            f"{entry.path} does not match the signed index (expected {entry.size} bytes, "
            f"sha256 {entry.sha256[:16]}..., got {len(data)} bytes) - the file was changed "
            "after signing; get a fresh copy from the publisher and reinstall", name,
        )  # fmt: skip


def _explain_manifest_change(source: str, index: Index, data: bytes) -> None:
    """Name the two classic attacks when the manifest is the file that changed."""
    try:
        manifest = decode_manifest(data, f"{source}:{MANIFEST_FILE}")
    except ManifestError:
        manifest = None
    if (
        manifest is not None
        and manifest.name == index.name
        and (str(manifest.version) != index.version)
    ):
        raise IntegrityError(
            "mix-and-match", source,
            f"the files are from version {manifest.version} but the signed index is for "
            f"{index.version} - files and index from two packages were mixed", index.name,
        )  # fmt: skip
    raise IntegrityError(
        "swapped-manifest", source,
        f"{MANIFEST_FILE} does not match the signed index - the manifest was changed or "
        "swapped after signing (its permissions and entry point are not the signed ones)",
        index.name,
    )  # fmt: skip


def _check_manifest(source: str, index: Index, files: Mapping[str, bytes]) -> None:
    data = files.get(MANIFEST_FILE)
    if data is None:
        raise UnsafePackage(
            "no-manifest", source, f"the package has no {MANIFEST_FILE}", index.name
        )
    try:
        manifest = decode_manifest(data, f"{source}:{MANIFEST_FILE}")
    except ManifestError as exc:
        raise IntegrityError("bad-manifest", source, str(exc), index.name) from None
    theirs = (manifest.name, manifest.id, str(manifest.version))
    ours = (index.name, index.id, index.version)
    if theirs != ours:
        raise IntegrityError(
            "manifest-mismatch", source,
            f"the manifest says {theirs[0]} id {theirs[1]} {theirs[2]} but the signed index "
            f"says {ours[0]} id {ours[1]} {ours[2]} - rebuild the package", index.name,
        )  # fmt: skip
