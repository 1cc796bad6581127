"""Why a package, a key or an installed plugin was refused.

Every refusal is a ``TrustError`` with a short machine-readable ``check`` (the same
word the audit log records, e.g. ``untrusted-key``), the ``source`` it was about (a
package file or plugin folder), the plugin name when known, and a message that says
what to do. The subclasses group the checks by what failed.
"""

from __future__ import annotations

from .._errors import NyxplugError

__all__ = (
    "IntegrityError",
    "KeyFileError",
    "RollbackRefused",
    "SignatureRejected",
    "TrustError",
    "UnsafePackage",
)


class TrustError(NyxplugError):
    """A package or installed plugin failed a trust check; nothing from it was imported."""

    def __init__(self, check: str, source: str, problem: str, plugin: str | None = None) -> None:
        super().__init__(check, source, problem, plugin)
        self.check = check
        self.source = source
        self.problem = problem
        self.plugin = plugin

    def __str__(self) -> str:
        who = f" (plugin {self.plugin!r})" if self.plugin else ""
        return f"Refused {self.source}{who} [{self.check}]: {self.problem}"


class UnsafePackage(TrustError):
    """The archive itself is malformed or dangerous: traversal, links, bombs, duplicates."""


class IntegrityError(TrustError):
    """The files do not match the signed index: modified, added, removed or mixed."""


class SignatureRejected(TrustError):
    """No signature, a bad one, or a key that is untrusted, revoked, expired or out of scope."""


class RollbackRefused(TrustError):
    """An older version than the highest one installed (pass allow_rollback to force it)."""


class KeyFileError(NyxplugError, ValueError):
    """A key file or the trust store could not be read: format, passphrase, missing."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(path, problem)
        self.path = path
        self.problem = problem

    def __str__(self) -> str:
        return f"Cannot use {self.path}: {self.problem}"
