"""Serving frames to other processes and hosts: who may connect and send what, and how.

``nyxplug.serving.policy`` is the per-peer hook every listener calls when a connection is
made; ``nyxplug.serving.security`` implements it with TLS 1.3, mutual TLS, an access list
and a per-peer rate limit. ``SessionService`` serves a dispatcher with nyxplug's own
session protocol (``nyxplug serve``'s default codec; docs/session-protocol.md is the
contract) and ``RemoteDispatcher`` is its client, with the local dispatcher's API and
per-plugin credits in place of queue space.
"""

from .._errors import SessionClosed, SessionError, SessionViolation
from .client import ClientStats, RemoteDispatcher
from .server import SessionProtocol, SessionService, SessionStats
from .wire import ALPN, PROTOCOL_VERSION, RemoteError

__all__ = (
    "ALPN",
    "PROTOCOL_VERSION",
    "ClientStats",
    "RemoteDispatcher",
    "RemoteError",
    "SessionClosed",
    "SessionError",
    "SessionProtocol",
    "SessionService",
    "SessionStats",
    "SessionViolation",
)
