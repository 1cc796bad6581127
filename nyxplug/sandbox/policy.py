"""What a plugin may touch: ``SandboxPolicy`` and ``FilesystemAccess`` (SPEC 7).

A policy is plain, immutable data, validated once when it is built (from code or a
manifest's ``[sandbox]`` table), so the checks in ``guard.py`` never re-validate it.
"""

from __future__ import annotations

import dataclasses
import enum
import os
from collections.abc import Iterable
from typing import Any

__all__ = ("FilesystemAccess", "SandboxPolicy")

MiB = 1024 * 1024

_HOST_GRAMMAR = "host patterns (exact, *suffix, prefix* or .suffix, no port)"


class FilesystemAccess(enum.Enum):
    """How much of the filesystem a plugin may use; values are the manifest spelling."""

    NONE = "none"
    READ_ONLY = "read-only"
    FULL = "full"


def _check_host_pattern(pattern: object) -> str:
    """``pattern`` if it is one of the four host-pattern shapes; TypeError/ValueError otherwise."""
    if not isinstance(pattern, str):
        raise TypeError(
            f"Expected `network_allowlist` entries to be str, got {type(pattern).__name__}"
        )
    body = pattern
    if body.startswith("*"):
        body = body[1:]
    elif body.endswith("*"):
        body = body[:-1]
    elif body.startswith("."):
        body = body[1:]
    if body.startswith("[") and body.endswith("]"):
        body = body[1:-1]  # a bracketed IPv6 literal: its colons are not a port
    elif body.count(":") == 1:
        body = ""  # "host:port" - patterns match hosts only
    valid = (
        pattern == "*" or (body != "" and "*" not in body and "[" not in body and "]" not in body)
    ) and not any(ch.isspace() for ch in pattern)
    if not valid:
        raise ValueError(
            f"Expected `network_allowlist` entries to be {_HOST_GRAMMAR}, got {pattern!r}"
        )
    return pattern


def _check_path_prefix(path: object) -> str:
    """``path`` (str, bytes or os.PathLike) as a non-empty str without NUL bytes."""
    if not isinstance(path, (str, bytes, os.PathLike)):
        raise TypeError(
            "Expected `filesystem_allowlist` entries to be str or os.PathLike, "
            f"got {type(path).__name__}"
        )
    text = os.fsdecode(os.fspath(path))
    if not text or "\x00" in text:
        raise ValueError(
            f"Expected `filesystem_allowlist` entries to be non-empty paths, got {text!r}"
        )
    return text


def _entries(name: str, value: object) -> list[Any]:
    """The items of an allowlist given as a tuple, list or other iterable (never a bare str)."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise TypeError(f"Expected `{name}` to be a tuple of str, got {type(value).__name__}")
    return list(value)


@dataclasses.dataclass(frozen=True, slots=True)
class SandboxPolicy:
    """What one plugin may do: network, filesystem and memory (SPEC 7).

    Immutable: ``allow_connect_host`` and ``allow_path_prefix`` return a new policy.
    ``filesystem`` also accepts the manifest spelling (``"none"``, ``"read-only"``,
    ``"full"``) and the allowlists any iterable, stored as tuples.

    * Network: with ``allow_network=False`` every connect is refused; otherwise an
      empty ``network_allowlist`` allows any host, and a non-empty one only hosts
      matching a pattern: ``example.com`` (exact), ``*.example.com`` (ends with),
      ``10.0.*`` (starts with), ``.example.com`` (that host and its subdomains).
      Names compare case-insensitively, as text: patterns do not resolve names.
    * Filesystem: ``NONE`` refuses every access, ``READ_ONLY`` every write, ``FULL``
      nothing; a non-empty ``filesystem_allowlist`` also limits paths to those
      folders, compared after resolving symlinks and ``..`` on both sides.
    * Memory: ``memory_limit`` bytes, the bound ``SandboxGuard.check_memory`` applies.
    """

    allow_network: bool = False
    filesystem: FilesystemAccess = FilesystemAccess.NONE
    memory_limit: int = 64 * MiB
    network_allowlist: tuple[str, ...] = ()
    filesystem_allowlist: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.allow_network, bool):
            raise TypeError(
                f"Expected `allow_network` to be a bool, got {type(self.allow_network).__name__}"
            )
        filesystem: Any = self.filesystem
        if not isinstance(filesystem, FilesystemAccess):
            if not isinstance(filesystem, str):
                raise TypeError(
                    "Expected `filesystem` to be a FilesystemAccess, got "
                    f"{type(filesystem).__name__}"
                )
            try:
                filesystem = FilesystemAccess(filesystem)
            except ValueError:
                raise ValueError(
                    f"Expected `filesystem` in 'none', 'read-only', 'full', got {filesystem!r}"
                ) from None
        limit: Any = self.memory_limit
        if isinstance(limit, bool) or not isinstance(limit, int):
            raise TypeError(
                f"Expected `memory_limit` to be a positive int, got {type(limit).__name__}"
            )
        if limit <= 0:
            raise ValueError(f"Expected `memory_limit` to be a positive int, got {limit}")
        hosts = tuple(
            _check_host_pattern(p) for p in _entries("network_allowlist", self.network_allowlist)
        )
        paths = tuple(
            _check_path_prefix(p)
            for p in _entries("filesystem_allowlist", self.filesystem_allowlist)
        )
        # frozen: normalise through object.__setattr__, once, before anyone sees the policy
        object.__setattr__(self, "filesystem", filesystem)
        object.__setattr__(self, "memory_limit", int(limit))
        object.__setattr__(self, "network_allowlist", hosts)
        object.__setattr__(self, "filesystem_allowlist", paths)

    @classmethod
    def strict(cls) -> SandboxPolicy:
        """No network, no filesystem, 32 MiB."""
        return cls(memory_limit=32 * MiB)

    @classmethod
    def permissive(cls) -> SandboxPolicy:
        """Any host, read-only filesystem, 128 MiB."""
        return cls(
            allow_network=True, filesystem=FilesystemAccess.READ_ONLY, memory_limit=128 * MiB
        )

    def allow_connect_host(self, pattern: str) -> SandboxPolicy:
        """A new policy with ``pattern`` appended to ``network_allowlist``.

        It does not turn ``allow_network`` on: a policy without network stays closed.
        """
        return dataclasses.replace(self, network_allowlist=(*self.network_allowlist, pattern))

    def allow_path_prefix(self, path: str | os.PathLike[str]) -> SandboxPolicy:
        """A new policy with ``path`` appended to ``filesystem_allowlist``.

        It does not change ``filesystem``: with ``NONE`` every path stays refused.
        """
        return dataclasses.replace(
            self, filesystem_allowlist=(*self.filesystem_allowlist, os.fspath(path))
        )
