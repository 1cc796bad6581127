"""Signed plugin packages and the host's trust in their publishers.

* ``keys``: Ed25519 publisher keys (``nyxplug keygen``).
* ``package``: the ``.nyxp`` format - the files plus a signed index (``nyxplug package``,
  ``nyxplug sign``).
* ``store``: the trust store - trusted keys with scopes and expiry, revocations,
  rollback floors (``nyxplug trust ...``).
* ``verify``: the checks, in order, each refusal a ``TrustError`` naming its check.
* ``install``: safe installation into the plugin store (``nyxplug install``) and the
  reader the runtime uses to verify installed plugins each time it loads them.
* ``audit``: the append-only JSON-lines log of every decision.
"""

from .audit import AUDIT_FILE, AuditLog
from .errors import (
    IntegrityError,
    KeyFileError,
    RollbackRefused,
    SignatureRejected,
    TrustError,
    UnsafePackage,
)
from .install import (
    Installed,
    install_package,
    is_package_folder,
    read_installed,
    uninstall_package,
)
from .keys import PublicKey, SigningKey, key_id_of
from .package import (
    INDEX_FILE,
    PACKAGE_SUFFIX,
    SIGNATURE_FILE,
    Index,
    PackageContents,
    package_folder,
    read_package,
    sign_package,
)
from .store import TRUST_FILE, TrustedKey, TrustStore
from .verify import VerifiedPackage, verify_contents

__all__ = (
    "AUDIT_FILE",
    "INDEX_FILE",
    "PACKAGE_SUFFIX",
    "SIGNATURE_FILE",
    "TRUST_FILE",
    "AuditLog",
    "Index",
    "Installed",
    "IntegrityError",
    "KeyFileError",
    "PackageContents",
    "PublicKey",
    "RollbackRefused",
    "SignatureRejected",
    "SigningKey",
    "TrustError",
    "TrustStore",
    "TrustedKey",
    "UnsafePackage",
    "VerifiedPackage",
    "install_package",
    "is_package_folder",
    "key_id_of",
    "package_folder",
    "read_installed",
    "read_package",
    "sign_package",
    "uninstall_package",
    "verify_contents",
)
