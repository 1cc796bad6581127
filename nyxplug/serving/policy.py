"""Who may send what: the per-peer access hook of the session server.

When a connection's HELLO arrives, the server asks its policy ``admit(transport)``: ``None``
refuses the peer (ERROR ``refused``, then close); a ``PeerAccess`` says, per plugin, which
permissions the peer's frames may use (frames needing more are refused as
``PERMISSION_DENIED`` and counted, exactly as the dispatcher refuses a plugin's own missing
permission) and how many frames may pass now (a frames/s token bucket on top of credits).

``nyxplug.serving.security`` builds TLS, mutual-TLS ACL and rate-limit policies on this
interface; the default, ``ALLOW_EVERYTHING``, is what a loopback or Unix-socket listener
without a policy uses.
"""

from __future__ import annotations

import asyncio
from typing import Protocol, runtime_checkable

from .._constants import Permission

__all__ = ("ALLOW_EVERYTHING", "AccessPolicy", "AllowEverything", "PeerAccess")

#: Every permission bit: a peer holding it for a plugin is not filtered at all.
ALL_PERMISSIONS = Permission(sum(p.value for p in Permission))


@runtime_checkable
class PeerAccess(Protocol):
    """What one admitted peer may do (asked by its connection, on the event loop)."""

    def permissions(self, plugin_id: int) -> Permission:
        """The permissions this peer's frames to ``plugin_id`` may use (``Permission(0)``:
        none; the plugin is then not offered in WELCOME)."""
        ...

    def take(self, n: int) -> int:
        """How many of ``n`` frames may pass now (``n`` when unlimited). The connection
        dispatches that many, stops reading and asks again for the rest a moment later."""
        ...


@runtime_checkable
class AccessPolicy(Protocol):
    """Decides, per connection, whether the peer is admitted and with what access."""

    def admit(self, transport: asyncio.BaseTransport) -> PeerAccess | None:
        """The peer's access, or ``None`` to refuse it (``transport.get_extra_info`` has
        its address and, over TLS, its certificate)."""
        ...


class AllowEverything:
    """The default policy and access: every peer, every plugin, every permission, no rate
    limit. Fit for loopback and Unix sockets, where the peer is already trusted."""

    __slots__ = ()

    def admit(self, transport: asyncio.BaseTransport) -> PeerAccess | None:
        return self

    def permissions(self, plugin_id: int) -> Permission:
        return ALL_PERMISSIONS

    def take(self, n: int) -> int:
        return n

    def __repr__(self) -> str:
        return "ALLOW_EVERYTHING"


ALLOW_EVERYTHING = AllowEverything()
