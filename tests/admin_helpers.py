"""A real host with the admin API for the admin tests: plugin folders, a trusted key, a
signed package to upload, and the API listening on loopback - in the test's loop or, for
the synchronous schemathesis client, in a thread of its own."""

from __future__ import annotations

import asyncio
import http.client
import json
import secrets
import threading
from pathlib import Path
from typing import Any

from plugin_helpers import RECORDER, write_plugin

from nyxplug.admin import AdminAddress, AdminServer, build_app
from nyxplug.plugins import PluginManager
from nyxplug.trust import SigningKey, TrustStore, package_folder, sign_package

TIMEOUT = 10.0


class AdminHost:
    """``root/state`` (trust store with key ``acme``), ``root/plugins`` (folders ``echo``
    and ``spare``) and ``package``: a signed ``.nyxp`` of ``acme-pkg``."""

    def __init__(self, root: Path, *, plugins: int = 0) -> None:
        self.root = root
        self.state = root / "state"
        self.plugins = root / "plugins"
        self.key = SigningKey.generate("acme")
        TrustStore(self.state / "trust.json").add_key(self.key.public, scopes=("acme-*",))
        write_plugin(self.plugins, "echo", 7, RECORDER, tags=("demo",))
        write_plugin(self.plugins, "spare", 8, RECORDER)
        for n in range(plugins):
            write_plugin(self.plugins, f"bulk-{n:04d}", 100 + n, RECORDER)
        src = root / "src"
        write_plugin(src, "acme-pkg", 9, RECORDER)
        self.package, _ = package_folder(src / "acme-pkg", root / "acme-pkg.nyxp")
        sign_package(self.package, self.key)
        self.token = secrets.token_hex(32).encode()

    def manager(self, dispatcher: Any = None) -> PluginManager:
        return PluginManager(
            dispatcher=dispatcher, plugin_dirs=[self.plugins], state_dir=self.state,
            entry_points=False, include_registered=False, require_signatures=False,
        )  # fmt: skip


def call(
    address: AdminAddress,
    method: str,
    path: str,
    *,
    token: bytes | None = None,
    body: Any = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], Any]:
    """One HTTP call on a fresh connection: (status, headers, decoded JSON or text)."""
    assert address.host is not None and address.port is not None
    conn = http.client.HTTPConnection(address.host, address.port, timeout=TIMEOUT)
    sent = dict(headers or {})
    if token is not None:
        sent["Authorization"] = f"Bearer {token.decode()}"
    data = None
    if body is not None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        sent.setdefault("Content-Type", "application/json")
    try:
        conn.request(method, path, body=data, headers=sent)
        response = conn.getresponse()
        raw = response.read()
        got = {k.lower(): v for k, v in response.getheaders()}
    finally:
        conn.close()
    kind = got.get("content-type", "")
    return response.status, got, json.loads(raw) if "json" in kind else raw.decode()


class ThreadedHost:
    """The host's manager and admin API on an event loop in a thread of their own."""

    def __init__(self, host: AdminHost, examples: dict[str, Any] | None = None) -> None:
        self.host = host
        self.examples = examples
        self.address: AdminAddress | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # reported by __enter__ / __exit__
            self._error = exc
            self._ready.set()

    async def _main(self) -> None:
        self.loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        manager = self.host.manager()
        await manager.start()
        server = AdminServer(
            build_app(manager, self.host.token, examples=self.examples),
            AdminAddress(host="127.0.0.1", port=0),
        )
        self.address = await server.start()
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            await server.aclose()
            await manager.aclose()

    def __enter__(self) -> ThreadedHost:
        self._thread.start()
        assert self._ready.wait(TIMEOUT), "the host did not start"
        if self._error is not None:
            raise self._error
        return self

    def __exit__(self, *exc_info: object) -> None:
        assert self.loop is not None and self._stop is not None
        self.loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(TIMEOUT)
        if self._error is not None:
            raise self._error
