"""The admin API of a running host: REST under ``/api/v1``, ``/openapi.json``, ``/metrics``.

A layer above the runtime (``nyxplug.plugins``) and below the command line: ``nyxplug
serve --admin ADDRESS --admin-token-file FILE`` runs it on the host's own event loop.
``operations`` holds the one table the routes and the OpenAPI document are built from;
``app`` the Starlette app (token, caller and body checks, RFC 9457 problems, audit);
``metrics`` the Prometheus collector read at scrape time; ``server`` the uvicorn task.
Needs the ``nyxplug[admin]`` extra (Starlette, uvicorn, httptools, prometheus-client);
``options`` does not, so ``nyxplug serve --help`` never imports them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_exports
from .options import AdminAddress as AdminAddress
from .options import AdminConfigError as AdminConfigError
from .options import parse_admin_address as parse_admin_address
from .options import read_token as read_token

if TYPE_CHECKING:
    from .app import AdminApp as AdminApp
    from .app import build_app as build_app
    from .openapi import openapi_document as openapi_document
    from .operations import OPERATIONS as OPERATIONS
    from .server import AdminServer as AdminServer

__all__ = (
    "OPERATIONS",
    "AdminAddress",
    "AdminApp",
    "AdminConfigError",
    "AdminServer",
    "build_app",
    "openapi_document",
    "parse_admin_address",
    "read_token",
)

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "AdminApp": "app",
        "build_app": "app",
        "openapi_document": "openapi",
        "OPERATIONS": "operations",
        "AdminServer": "server",
    },
)
