"""Run the admin API on the host's own event loop: uvicorn as a task, no thread, no loop.

``AdminServer`` binds the socket itself (a Unix socket is made ``0600``: only the host's
user may even connect), hands it to ``uvicorn.Server`` with ``httptools`` and no lifespan
or signal handling of its own (``nyxplug serve`` owns SIGTERM/SIGINT), and stops with the
host: ``async with AdminServer(app, address):``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from ssl import SSLContext
from typing import Any

from .app import AdminApp
from .options import AdminAddress

__all__ = ("AdminServer",)


class AdminServer:
    """The admin API listening at ``address`` until ``aclose()``."""

    def __init__(
        self, app: AdminApp, address: AdminAddress, *, ssl: SSLContext | None = None
    ) -> None:
        self.app = app
        self.address = address
        #: TLS for every connection (``None``: plaintext, loopback or a Unix socket only).
        self.ssl = ssl
        self._server: Any = None
        self._task: asyncio.Task[None] | None = None
        self._sockets: list[socket.socket] = []
        #: Where it listens, once started (the real port when 0 was asked for).
        self.bound: AdminAddress | None = None

    def _bind(self) -> socket.socket:
        address = self.address
        if address.unix is not None:
            with contextlib.suppress(FileNotFoundError):
                if os.path.exists(address.unix) and not _is_socket(address.unix):
                    raise FileExistsError(f"{address.unix} exists and is not a socket")
                os.unlink(address.unix)
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            old = os.umask(0o177)
            try:
                sock.bind(address.unix)
            finally:
                os.umask(old)
            self.bound = address
        else:
            assert address.host is not None and address.port is not None
            family = socket.AF_INET6 if ":" in address.host else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((address.host, address.port))
            self.bound = AdminAddress(host=address.host, port=sock.getsockname()[1])
        sock.listen(128)
        sock.setblocking(False)
        return sock

    async def start(self) -> AdminAddress:
        import uvicorn

        config = uvicorn.Config(
            self.app.starlette, loop="none", http="httptools", lifespan="off",
            log_config=None, access_log=False, server_header=False, proxy_headers=False,
        )  # fmt: skip
        config.load()
        # Our own context (TLS 1.3, mutual TLS when asked): uvicorn hands config.ssl to
        # create_server for the sockets given to startup().
        config.ssl = self.ssl
        server = uvicorn.Server(config)
        server.lifespan = config.lifespan_class(config)
        self._sockets = [self._bind()]
        await server.startup(sockets=self._sockets)
        self._server = server
        self._task = asyncio.create_task(server.main_loop(), name="nyxplug-admin")
        assert self.bound is not None
        return self.bound

    async def aclose(self) -> None:
        """Stop accepting, finish the calls in progress, close."""
        server, task = self._server, self._task
        self._server = self._task = None
        if server is None or task is None:
            return
        server.should_exit = True
        try:
            await task
        finally:
            await self.app.metrics.aclose()
            await server.shutdown(sockets=self._sockets)
            for sock in self._sockets:
                sock.close()
            if self.address.unix is not None:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.address.unix)

    async def __aenter__(self) -> AdminServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


def _is_socket(path: str) -> bool:
    import stat

    return stat.S_ISSOCK(os.lstat(path).st_mode)
