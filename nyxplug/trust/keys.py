"""Ed25519 publisher keys (``cryptography``): generate, save, load, sign, verify.

A private key is a PKCS#8 PEM file, encrypted when a passphrase is given. A public
key is one line, ``nyxplug-ed25519 <base64 of the 32 raw bytes> <name>``, easy to
paste into a trust store. The key id is the first 16 hex digits of the SHA-256 of
the raw public key: it *selects* a trusted key, it never authenticates anything.

A publisher's keys live in one folder, ``$NYXPLUG_KEY_DIR`` (default
``~/.nyxplug/keys``), as ``NAME.key`` and ``NAME.pub``; their passphrase can come from
``$NYXPLUG_KEY_PASSPHRASE``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from .errors import KeyFileError

__all__ = (
    "KEY_DIR_ENV",
    "KEY_NAME_PATTERN",
    "PASSPHRASE_ENV",
    "PUBLIC_KEY_PREFIX",
    "PublicKey",
    "SigningKey",
    "default_key_dir",
    "default_key_name",
    "is_encrypted",
    "key_files",
    "key_id_of",
    "passphrase_from",
)

PUBLIC_KEY_PREFIX = "nyxplug-ed25519"
#: Names the folder keys are written to and looked up in (default ``~/.nyxplug/keys``).
KEY_DIR_ENV = "NYXPLUG_KEY_DIR"
#: The passphrase of (new and existing) private keys, when set and not empty.
PASSPHRASE_ENV = "NYXPLUG_KEY_PASSPHRASE"
#: A key's name: its file name in the key folder (``NAME.key``, ``NAME.pub``).
KEY_NAME_PATTERN = r"^[a-z0-9_][a-z0-9_-]{0,63}$"


def key_id_of(raw_public_key: bytes) -> str:
    """The key id: 16 hex digits of SHA-256 over the raw 32-byte public key."""
    return hashlib.sha256(raw_public_key).hexdigest()[:16]


@dataclass(frozen=True)
class PublicKey:
    """A publisher's public key, as stored in ``.pub`` files and the trust store."""

    raw: bytes
    name: str = ""

    def __post_init__(self) -> None:
        if len(self.raw) != 32:
            raise ValueError(f"Expected a 32-byte Ed25519 public key, got {len(self.raw)} bytes")

    @property
    def key_id(self) -> str:
        return key_id_of(self.raw)

    @property
    def text(self) -> str:
        """The one-line form: ``nyxplug-ed25519 <base64> <name>``."""
        encoded = base64.b64encode(self.raw).decode("ascii")
        return f"{PUBLIC_KEY_PREFIX} {encoded} {self.name}".rstrip()

    def verify(self, signature: bytes, message: bytes) -> bool:
        """True when ``signature`` is this key's Ed25519 signature of ``message``."""
        try:
            Ed25519PublicKey.from_public_bytes(self.raw).verify(signature, message)
        except InvalidSignature:
            return False
        return True

    @classmethod
    def parse(cls, text: str, source: str = "<text>") -> PublicKey:
        """Read the one-line form (a ``.pub`` file's content)."""
        parts = text.strip().split(maxsplit=2)
        if len(parts) < 2 or parts[0] != PUBLIC_KEY_PREFIX:
            raise KeyFileError(
                source,
                f"expected one line '{PUBLIC_KEY_PREFIX} <base64> [name]' "
                "(a .pub file written by `nyxplug keygen`)",
            )
        try:
            raw = base64.b64decode(parts[1], validate=True)
        except (binascii.Error, ValueError):
            raise KeyFileError(source, "the key is not valid base64") from None
        if len(raw) != 32:
            raise KeyFileError(source, f"expected 32 key bytes, got {len(raw)}")
        return cls(raw, parts[2] if len(parts) == 3 else "")

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> PublicKey:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise KeyFileError(str(path), f"cannot read it ({exc})") from None
        return cls.parse(text, str(path))


class SigningKey:
    """A publisher's private key; ``sign`` produces raw 64-byte Ed25519 signatures."""

    def __init__(self, private: Ed25519PrivateKey, name: str = "") -> None:
        self._private = private
        raw = private.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        self.public = PublicKey(raw, name)

    @classmethod
    def generate(cls, name: str = "") -> SigningKey:
        return cls(Ed25519PrivateKey.generate(), name)

    @property
    def key_id(self) -> str:
        return self.public.key_id

    def sign(self, message: bytes) -> bytes:
        return self._private.sign(message)

    def private_pem(self, passphrase: bytes | None = None) -> bytes:
        """PKCS#8 PEM, encrypted with the best available scheme when a passphrase is given."""
        encryption: serialization.KeySerializationEncryption = (
            serialization.BestAvailableEncryption(passphrase)
            if passphrase
            else serialization.NoEncryption()
        )
        return self._private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
        )

    def save(self, private_path: Path, passphrase: bytes | None = None) -> Path:
        """Write ``private_path`` (mode 0600, never overwriting) and ``<same>.pub``; returns it."""
        public_path = private_path.with_suffix(".pub")
        for path in (private_path, public_path):
            if path.exists():
                raise KeyFileError(str(path), "it already exists - choose another --name or --out")
        private_path.parent.mkdir(parents=True, exist_ok=True)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
        fd = os.open(private_path, flags, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(self.private_pem(passphrase))
        fd = os.open(public_path, flags, 0o644)
        with os.fdopen(fd, "wb") as handle:
            handle.write(self.public.text.encode() + b"\n")
        return public_path

    @classmethod
    def load(
        cls, path: str | os.PathLike[str], passphrase: bytes | None = None, name: str = ""
    ) -> SigningKey:
        """Read a private key file; a wrong or missing passphrase is a ``KeyFileError``."""
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            raise KeyFileError(str(path), f"cannot read it ({exc.strerror})") from None
        try:
            private = serialization.load_pem_private_key(data, password=passphrase or None)
        except TypeError:
            hint = (
                f"it is encrypted - give the passphrase (${PASSPHRASE_ENV})"
                if not passphrase
                else "it is not encrypted - drop the passphrase"
            )
            raise KeyFileError(str(path), hint) from None
        except ValueError:
            problem = (
                "wrong passphrase, or not a PEM private key"
                if passphrase
                else "not a PEM private key written by `nyxplug keygen`"
            )
            raise KeyFileError(str(path), problem) from None
        if not isinstance(private, Ed25519PrivateKey):
            raise KeyFileError(str(path), f"expected an Ed25519 key, got {type(private).__name__}")
        return cls(private, name or Path(path).stem)


# -- the key folder ---------------------------------------------------------------------


def default_key_dir(environ: Mapping[str, str] = os.environ) -> Path:
    """``$NYXPLUG_KEY_DIR``, else ``~/.nyxplug/keys`` (absolute)."""
    named = environ.get(KEY_DIR_ENV, "")
    folder = Path(named).expanduser() if named else Path.home() / ".nyxplug" / "keys"
    return folder.absolute()


def default_key_name() -> str:
    """The user name, lowercased, with anything but ``[a-z0-9_-]`` turned into ``-``.

    ``publisher`` when that leaves no valid key name (no user name, or only symbols).
    """
    import getpass

    try:
        user = getpass.getuser()
    except (OSError, KeyError):  # no $USER and no passwd entry (some containers)
        user = ""
    name = re.sub(r"[^a-z0-9_-]+", "-", user.lower()).strip("-")[:64]
    return name if re.fullmatch(KEY_NAME_PATTERN, name) else "publisher"


def key_files(folder: Path) -> list[Path]:
    """The private keys (``*.key``) in a key folder, sorted; none when there is no folder."""
    return sorted(folder.glob("*.key")) if folder.is_dir() else []


def passphrase_from(environ: Mapping[str, str] = os.environ) -> bytes | None:
    """``$NYXPLUG_KEY_PASSPHRASE`` as bytes; None when it is unset or empty."""
    value = environ.get(PASSPHRASE_ENV, "")
    return value.encode() if value else None


def is_encrypted(path: str | os.PathLike[str]) -> bool:
    """True when the private key file needs a passphrase (an encrypted PKCS#8 PEM).

    Only the PEM header is read, so a caller asks for a passphrase only when one is needed.
    """
    try:
        with open(path, "rb") as file:
            head = file.read(200)
    except OSError as exc:
        raise KeyFileError(str(path), f"cannot read it ({exc.strerror})") from None
    return b"ENCRYPTED PRIVATE KEY" in head
