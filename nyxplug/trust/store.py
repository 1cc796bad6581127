"""The trust store: which publisher keys this host trusts, for what, and until when.

One JSON file (``trust.json`` in the host's state folder) holds

* the trusted keys, each limited to plugin-name patterns (``fnmatch``: ``acme-*``) and
  optionally an expiry time;
* the revocation lists: key ids and package hashes (SHA-256 of a signed index);
* the rollback floors: the highest version installed per plugin, so an older signed
  package is refused unless the operator explicitly allows the downgrade.

Changes are read-modify-write under an ``flock`` and land with an atomic rename.
Ed25519 results are cached in memory by content hash for 24 hours; revocation, scope,
expiry and the files themselves are checked on every verification.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import fcntl
import fnmatch
import hashlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import msgspec
import semver

from .._atomic import write_atomic
from ..source.snapshot import read_regular
from .errors import KeyFileError
from .keys import PublicKey

__all__ = (
    "SIGNATURE_CACHE_SECONDS",
    "STALE_SIGNATURE_DAYS",
    "TRUST_FILE",
    "TrustStore",
    "TrustedKey",
    "parse_expiry",
)

TRUST_FILE = "trust.json"
TRUST_FORMAT = "nyxplug-trust/1"
#: How long a verified Ed25519 signature is remembered (by content hash).
SIGNATURE_CACHE_SECONDS = 24 * 3600
#: Signatures older than this are accepted with a warning (re-sign your packages).
STALE_SIGNATURE_DAYS = 30
#: A trust store bigger than this is not one nyxplug wrote (thousands of keys fit in it).
MAX_TRUST_FILE = 4 * 1024 * 1024


class TrustedKey(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A publisher key this host trusts, for plugin names matching ``scopes``."""

    key_id: str
    public_key: str  # the one-line form, "nyxplug-ed25519 <base64> <name>"
    name: str = ""
    scopes: tuple[str, ...] = ("*",)
    expires: str | None = None  # RFC 3339 UTC; None: never
    added: str = ""

    def public(self) -> PublicKey:
        return PublicKey.parse(self.public_key, f"trust store key {self.key_id}")

    def in_scope(self, plugin_name: str) -> bool:
        return any(fnmatch.fnmatchcase(plugin_name, pattern) for pattern in self.scopes)

    def expiry(self) -> dt.datetime | None:
        return None if self.expires is None else parse_expiry(self.expires)


class _TrustFile(msgspec.Struct, forbid_unknown_fields=True):
    format: str = TRUST_FORMAT
    keys: list[TrustedKey] = msgspec.field(default_factory=list)
    revoked_keys: list[str] = msgspec.field(default_factory=list)
    revoked_packages: list[str] = msgspec.field(default_factory=list)
    floors: dict[str, str] = msgspec.field(default_factory=dict)


def parse_expiry(text: str) -> dt.datetime:
    """``2027-01-31`` (the start of that day, UTC) or a full ISO 8601 time."""
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"Expected an expiry date like 2027-01-31 or 2027-01-31T12:00:00Z, got {text!r}"
        ) from None
    return when.replace(tzinfo=dt.UTC) if when.tzinfo is None else when.astimezone(dt.UTC)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _stamp(when: dt.datetime) -> str:
    return when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class TrustStore:
    """Trusted keys, revocations and rollback floors, persisted in one JSON file.

    ``clock`` returns the current UTC time (tests move it to check expiry, the signature
    cache's lifetime and the stale-signature warning).
    """

    def __init__(
        self, path: str | os.PathLike[str], *, clock: Callable[[], dt.datetime] = _now
    ) -> None:
        self.path = Path(path)
        self.clock = clock
        self._cache: dict[bytes, dt.datetime] = {}
        self.cache_hits = 0
        self._data = self._read()

    # -- reading and writing -----------------------------------------------------------

    def _read(self) -> _TrustFile:
        try:
            raw = read_regular(self.path, MAX_TRUST_FILE, "a trust store")
        except FileNotFoundError:
            return _TrustFile()
        except OSError as exc:
            problem = (
                "it is a symbolic link - the trust store is read as a regular file only"
                if exc.errno == errno.ELOOP
                else f"cannot read the trust store ({exc.strerror})"
            )
            raise KeyFileError(str(self.path), problem) from None
        except ValueError as exc:  # a FIFO, a device, or far too big
            raise KeyFileError(str(self.path), f"{exc} - fix or restore it") from None
        try:
            data = msgspec.json.decode(raw, type=_TrustFile)
        except msgspec.DecodeError as exc:
            raise KeyFileError(
                str(self.path), f"not a trust store nyxplug wrote ({exc}) - fix or restore it"
            ) from None
        if data.format != TRUST_FORMAT:
            raise KeyFileError(
                str(self.path), f"expected format {TRUST_FORMAT!r}, got {data.format!r}"
            )
        for entry in data.keys:
            # An id is derived from its key, never trusted as written: an entry whose id
            # names another key would stay trusted when the real id is revoked.
            derived = entry.public().key_id
            if derived != entry.key_id:
                raise KeyFileError(
                    str(self.path),
                    f"expected key id {derived} for the key named {entry.name or '(unnamed)'}, "
                    f"got {entry.key_id} - the store was edited by hand or tampered with; "
                    "remove the entry and `nyxplug trust add` the .pub file again",
                )
        return data

    def reload(self) -> None:
        """Re-read the file (another process may have changed it)."""
        self._data = self._read()

    @contextlib.contextmanager
    def _editing(self) -> Iterator[_TrustFile]:
        """Lock, re-read, let the caller change the data, write it back atomically."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock_path = self.path.with_name(self.path.name + ".lock")
        with open(lock_path, "a+b") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            data = self._read()
            yield data
            encoded = msgspec.json.format(msgspec.json.encode(data), indent=2) + b"\n"
            write_atomic(self.path, encoded)
            self._data = data

    # -- keys ---------------------------------------------------------------------------

    def keys(self) -> list[TrustedKey]:
        return list(self._data.keys)

    def key(self, key_id: str) -> TrustedKey | None:
        for item in self._data.keys:
            if item.key_id == key_id:
                return item
        return None

    def add_key(
        self,
        public: PublicKey,
        *,
        scopes: tuple[str, ...] = ("*",),
        expires: dt.datetime | None = None,
    ) -> TrustedKey:
        """Trust ``public`` for plugin names matching ``scopes`` (replaces an earlier entry)."""
        if not scopes or any(not pattern.strip() for pattern in scopes):
            raise ValueError(f"Expected plugin-name patterns such as 'acme-*', got {scopes!r}")
        entry = TrustedKey(
            key_id=public.key_id,
            public_key=public.text,
            name=public.name,
            scopes=tuple(scopes),
            expires=None if expires is None else _stamp(expires),
            added=_stamp(self.clock()),
        )
        with self._editing() as data:
            if public.key_id in data.revoked_keys:
                raise ValueError(
                    f"Key {public.key_id} is revoked on this host; a revoked key cannot be "
                    "trusted again - sign with a new key"
                )
            data.keys = [k for k in data.keys if k.key_id != public.key_id] + [entry]
        return entry

    def remove_key(self, key_id: str) -> bool:
        with self._editing() as data:
            before = len(data.keys)
            data.keys = [k for k in data.keys if k.key_id != key_id]
            return len(data.keys) != before

    # -- revocation ----------------------------------------------------------------------

    def revoke_key(self, key_id: str) -> None:
        with self._editing() as data:
            if key_id not in data.revoked_keys:
                data.revoked_keys.append(key_id)
        self._cache.clear()

    def revoke_package(self, package_sha256: str) -> None:
        """Refuse the package whose index hashes to ``package_sha256`` (64 lowercase hex).

        ``nyxplug.trust.revoke.resolve_package`` finds that hash from what a user holds.
        """
        if not (len(package_sha256) == 64 and set(package_sha256) <= set("0123456789abcdef")):
            raise ValueError(
                "Expected a package's index sha256 (64 lowercase hex digits), got "
                f"{package_sha256!r}"
            )
        with self._editing() as data:
            if package_sha256 not in data.revoked_packages:
                data.revoked_packages.append(package_sha256)

    def is_key_revoked(self, key_id: str) -> bool:
        return key_id in self._data.revoked_keys

    def is_package_revoked(self, package_sha256: str) -> bool:
        return package_sha256 in self._data.revoked_packages

    def revoked(self) -> tuple[list[str], list[str]]:
        """(revoked key ids, revoked package hashes)."""
        return list(self._data.revoked_keys), list(self._data.revoked_packages)

    # -- rollback floors ---------------------------------------------------------------

    def floor(self, plugin_name: str) -> str | None:
        """The highest version of ``plugin_name`` ever installed here (None: none yet)."""
        return self._data.floors.get(plugin_name)

    def floors(self) -> dict[str, str]:
        """Every plugin's rollback floor."""
        return dict(self._data.floors)

    def raise_floor(self, plugin_name: str, version: str) -> None:
        """Record ``version`` as installed: the floor only ever goes up here."""
        with self._editing() as data:
            current = data.floors.get(plugin_name)
            if current is None or semver.Version.parse(version) > semver.Version.parse(current):
                data.floors[plugin_name] = version

    def set_floor(self, plugin_name: str, version: str) -> None:
        """Record a downgrade the operator chose (``install --allow-rollback``)."""
        with self._editing() as data:
            data.floors[plugin_name] = version

    # -- the signature cache -------------------------------------------------------------

    def cached(self, index_bytes: bytes, signature_bytes: bytes) -> bool:
        """True when this exact (index, signature) pair verified less than 24 hours ago."""
        key = hashlib.sha256(index_bytes + b"\x00" + signature_bytes).digest()
        when = self._cache.get(key)
        if when is None:
            return False
        if (self.clock() - when).total_seconds() >= SIGNATURE_CACHE_SECONDS:
            del self._cache[key]
            return False
        self.cache_hits += 1
        return True

    def remember(self, index_bytes: bytes, signature_bytes: bytes) -> None:
        key = hashlib.sha256(index_bytes + b"\x00" + signature_bytes).digest()
        self._cache[key] = self.clock()
