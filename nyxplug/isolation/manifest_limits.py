"""A manifest's ``[sandbox]`` as the kernel limits of its isolated child, or refused.

No key may claim a limit nobody enforces. For ``isolation = "process"`` each key is
turned into a ``Limits`` field the child applies to itself, or refused at load:

* ``memory_limit``: the child's cgroup ``memory.max`` (the smaller of it and the host's
  ``[isolation.limits] memory``); the child does not start without a cgroup.
* ``network``: ``true`` needs the host's ``[isolation.limits] network = true``; ``false``
  keeps the child off the network even where the host allows it.
* ``network_allowlist``: refused (seccomp and Landlock allow all of TCP or none).
* ``filesystem``: ``"none"``: the interpreter's own read paths only; ``"read-only"``:
  also the ``filesystem_allowlist`` folders (absolute, required); ``"full"``: refused
  (nothing is writable in a child).

(In-process plugins: ``memory_limit`` is refused by the manifest itself.)
"""

from __future__ import annotations

import os

import msgspec

from ..source.manifest import SandboxSection
from .errors import LimitNotEnforceable
from .options import Limits

__all__ = ("child_limits",)


def child_limits(name: str, sandbox: SandboxSection, host: Limits) -> tuple[Limits, bool]:
    """``(limits, memory_required)`` for plugin ``name``'s child; refuses what cannot hold.

    ``memory_required``: the manifest set ``memory_limit``, so a child without a cgroup
    must not start."""
    if sandbox.network_allowlist:
        raise LimitNotEnforceable(
            name, "network_allowlist",
            "is not enforced in an isolated child (its seccomp and Landlock allow all of TCP "
            "or none) - remove it: network = true gives the child all of TCP",
        )  # fmt: skip
    if sandbox.network and not host.network:
        raise LimitNotEnforceable(
            name, "network",
            "= true needs the host's [isolation.limits] network = true (the child's seccomp "
            "and Landlock refuse sockets otherwise) - allow it there or set network = false",
        )  # fmt: skip
    read_paths = tuple(host.read_paths)
    if sandbox.filesystem == "full":
        raise LimitNotEnforceable(
            name, "filesystem",
            '= "full" cannot hold in an isolated child (nothing is writable there) - use '
            '"read-only" with filesystem_allowlist, or isolation = "in-process"',
        )  # fmt: skip
    if sandbox.filesystem == "read-only":
        if not sandbox.filesystem_allowlist:
            raise LimitNotEnforceable(
                name, "filesystem",
                '= "read-only" needs filesystem_allowlist in an isolated child (Landlock '
                "grants folders, not everything) - list the folders it reads",
            )  # fmt: skip
        for entry in sandbox.filesystem_allowlist:
            if not os.path.isabs(entry):
                raise LimitNotEnforceable(
                    name, "filesystem_allowlist",
                    f"entries must be absolute paths in an isolated child, got `{entry}`",
                )  # fmt: skip
        read_paths += tuple(sandbox.filesystem_allowlist)
    memory = host.memory
    required = sandbox.memory_limit_text is not msgspec.UNSET
    if required:
        wanted = sandbox.memory_limit
        memory = wanted if memory is None else min(memory, wanted)
    limits = msgspec.structs.replace(
        host, network=sandbox.network, memory=memory, read_paths=read_paths
    )
    return limits, required
