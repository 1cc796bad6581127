"""The cooperative sandbox (SPEC 7): policies, guards, and their audit-hook enforcement.

Guard rails for honest in-process plugins, not a security boundary: see
``nyxplug.sandbox.audit`` for what it cannot stop. Untrusted code belongs in a
separate process.
"""

from .audit import current_guard, enter_guard, guarded, unguarded
from .guard import SandboxGuard
from .policy import FilesystemAccess, SandboxPolicy

__all__ = (
    "FilesystemAccess",
    "SandboxGuard",
    "SandboxPolicy",
    "current_guard",
    "enter_guard",
    "guarded",
    "unguarded",
)
