"""nyxplug's own session protocol: a server for a ``Dispatcher`` and a client that mirrors it.

``SessionService`` serves a dispatcher over TCP, TLS or a Unix socket (``nyxplug serve``'s
default codec); ``RemoteDispatcher`` is the client, with the local dispatcher's API and
per-plugin credits in place of queue space. docs/session-protocol.md is the contract.
"""

from .._errors import SessionClosed, SessionError, SessionViolation
from .client import ClientStats, RemoteDispatcher
from .policy import ALLOW_EVERYTHING, AccessPolicy, AllowEverything, PeerAccess
from .server import SessionProtocol, SessionService, SessionStats
from .wire import ALPN, PROTOCOL_VERSION, RemoteError

__all__ = (
    "ALLOW_EVERYTHING",
    "ALPN",
    "PROTOCOL_VERSION",
    "AccessPolicy",
    "AllowEverything",
    "ClientStats",
    "PeerAccess",
    "RemoteDispatcher",
    "RemoteError",
    "SessionClosed",
    "SessionError",
    "SessionProtocol",
    "SessionService",
    "SessionStats",
    "SessionViolation",
)
