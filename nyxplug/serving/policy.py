"""The per-peer hook of a listener: admit a connection, then say what its peer may send.

A listener calls ``policy.admit(transport)`` once per connection, after the TLS handshake.
``None`` refuses the connection (the listener counts it); otherwise the ``PeerAccess`` it
returns answers, for every frame, which frame types the peer may send to a plugin
(``permissions``: the same ``Permission`` flags the dispatcher checks) and, per batch, how
many frames its rate allows now (``take``). ``OPEN_POLICY`` admits everyone to
everything, unthrottled: the default of a listener given no policy.
"""

from __future__ import annotations

import asyncio
import functools
import operator
from typing import Protocol

from .._constants import Permission

__all__ = ("OPEN_POLICY", "PeerAccess", "PeerPolicy")


class PeerAccess(Protocol):
    #: Who the peer is, for messages and counters: a certificate's subject CN, "loopback"...
    identity: str

    def permissions(self, plugin_id: int) -> Permission:
        """The frame types (as the permissions they require) this peer may send to that plugin."""
        ...

    def take(self, n: int) -> int:
        """How many of ``n`` frames may pass now (a token bucket); the rest wait."""
        ...


class PeerPolicy(Protocol):
    def admit(self, transport: asyncio.BaseTransport) -> PeerAccess | None:
        """The access of a new connection's peer; ``None`` refuses the connection (counted)."""
        ...


_EVERYTHING = functools.reduce(operator.or_, Permission)


class _OpenAccess:
    def __init__(self) -> None:
        self.identity = "open"

    def permissions(self, plugin_id: int) -> Permission:
        return _EVERYTHING

    def take(self, n: int) -> int:
        return n


class _OpenPolicy:
    def __init__(self) -> None:
        self._access = _OpenAccess()

    def admit(self, transport: asyncio.BaseTransport) -> PeerAccess | None:
        return self._access


#: Every connection admitted, every frame type to every plugin, no rate limit.
OPEN_POLICY: PeerPolicy = _OpenPolicy()
