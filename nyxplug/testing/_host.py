"""``NyxHost``: a real plugin host on its own event loop, driven from plain test code.

The host is a ``PluginManager`` - the runtime ``nyxplug run`` uses - with a temporary
state folder and signatures not required. Its event loop runs in a thread of its own,
so the same calls work from a sync test, a pytest-asyncio test and an anyio test: the
kit never needs the test's loop, and claims no async-test hook.

A plugin folder is copied into the host's own plugin folder before it loads (with the
test's manifest overrides written into the copy), so ``reload()`` can put a new version
in place the way an operator's ``nyxplug install`` would, without touching the source.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import shutil
import threading
import tomllib
from collections import Counter
from collections.abc import Callable, Coroutine, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from .._constants import FrameType
from .._errors import NyxplugError
from .._stats import PluginStats
from ._ledger import LedgerRow, check_ledger
from ._manifest import apply_overrides, class_manifest, dumps

if TYPE_CHECKING:
    from ..isolation.process import IsolationStats
    from ..plugins import PluginManager, PluginStatus, ReloadResult

__all__ = ("NyxHost", "PluginHandle")

T = TypeVar("T")

#: Seconds one kit call (a send, a load, a reload) may take before it fails the test.
DEFAULT_TIMEOUT = 30.0
_MANIFEST = "nyxplug.toml"
_IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache", ".hypothesis")


class NyxHost:
    """A started plugin host for tests: ``load`` plugins, get handles, check the ledger.

    ``root`` is a folder of its own (plugins are copied under ``root/plugins``, the
    state dir is ``root/state``). ``loop`` is ``"asyncio"``, ``"uvloop"`` or ``"auto"``
    (uvloop when installed). ``dispatcher_factory`` makes the host's dispatcher (default:
    nyxplug's, compiled when built); it is called on the host's loop thread.
    ``with NyxHost(root) as host:`` closes it on exit; the ``nyx_host`` fixture does both.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        loop: str = "auto",
        timeout: float = DEFAULT_TIMEOUT,
        dispatcher_factory: Callable[[], Any] | None = None,
    ) -> None:
        if loop not in ("auto", "asyncio", "uvloop"):
            raise ValueError(f"Expected loop in auto, asyncio, uvloop, got {loop!r}")
        self.root = Path(root)
        self.plugin_dir = self.root / "plugins"
        self.state_dir = self.root / "state"
        self.timeout = timeout
        self.loop_kind = loop
        self._dispatcher_factory = dispatcher_factory
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._manager: PluginManager | None = None
        self.handles: dict[str, PluginHandle] = {}
        #: What this host's callers did, for the ledger: enqueued / refused by plugin id.
        self.sent: Counter[int] = Counter()
        self.refused: Counter[int] = Counter()
        self.calls = 0
        #: Final stats of plugins unloaded through a handle, by id (their frames stay counted).
        self.final: dict[int, PluginStats] = {}
        #: What the loop's exception handler saw: tasks that died unobserved, callbacks.
        self.loop_errors: list[str] = []
        self.closed = False

    # -- the loop thread ------------------------------------------------------------

    def _start(self) -> None:
        if self.closed:
            raise RuntimeError("Expected an open NyxHost, got a closed one - in NyxHost.load")
        if self._loop is not None:
            return
        from .._runner import loop_factory

        use_uvloop = {"auto": None, "asyncio": False, "uvloop": True}[self.loop_kind]
        loop = loop_factory(use_uvloop)()
        loop.set_exception_handler(self._loop_error)
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(loop)
            loop.call_soon(ready.set)
            loop.run_forever()

        self._loop = loop
        self._thread = threading.Thread(target=run, name="nyxplug-testing-host", daemon=True)
        self._thread.start()
        ready.wait()
        self.plugin_dir.mkdir(parents=True, exist_ok=True)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self._manager = self.run(self._make_manager())

    async def _make_manager(self) -> PluginManager:
        from ..plugins import PluginManager

        dispatcher = self._dispatcher_factory() if self._dispatcher_factory else None
        return PluginManager(
            dispatcher=dispatcher,
            plugin_dirs=[self.plugin_dir],
            state_dir=self.state_dir,
            entry_points=False,
            include_registered=False,
            require_signatures=False,
        )

    def _loop_error(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        self.loop_errors.append(f"{context.get('message')}" + (f": {exc!r}" if exc else ""))
        loop.default_exception_handler(context)

    def run(self, coro: Coroutine[Any, Any, T], *, timeout: float | None = None) -> T:
        """Run ``coro`` on the host's loop and return its result (its exception raises here)."""
        if self._loop is None:
            coro.close()
            raise RuntimeError("Expected a started NyxHost (load a plugin first), got none")
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        limit = self.timeout if timeout is None else timeout
        try:
            return future.result(limit)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise TimeoutError(
                f"Expected the host to finish within {limit} s, got no answer - a handler "
                "or hook that never returns? (NyxHost(timeout=...) / --nyx-timeout)"
            ) from None

    async def arun(self, coro: Coroutine[Any, Any, T]) -> T:
        """``run`` for async tests: awaits without blocking the test's own loop."""
        if self._loop is None:
            coro.close()
            raise RuntimeError("Expected a started NyxHost (load a plugin first), got none")
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return await asyncio.wait_for(asyncio.wrap_future(future), self.timeout)

    @property
    def manager(self) -> PluginManager:
        """The host's ``PluginManager`` (use it only through ``run``: it lives on the loop)."""
        self._start()
        assert self._manager is not None
        return self._manager

    # -- loading --------------------------------------------------------------------

    def load(self, plugin: str | os.PathLike[str] | type, **overrides: Any) -> PluginHandle:
        """Load a plugin folder (or a ``Plugin`` class) as a host does; returns its handle.

        ``overrides`` change the manifest for this test: ``@plugin``'s keywords, e.g.
        ``config={"greeting": "hi"}``, ``resources={"isolation": "process"}``,
        ``permissions=["DATA_ACCESS", "CONTROL"]``. Raises ``PluginLoadError`` (with the
        step and the reason) when the plugin does not come up.
        """
        manager = self.manager
        if isinstance(plugin, type):
            name, source = self._add_class(plugin, overrides), None
        else:
            source = Path(plugin).resolve()
            name = self._copy_folder(source, overrides)
            self.run(_discover(manager))
        status = self.run(manager.load(name))
        assert status.id is not None
        handle = PluginHandle(self, name, status.id, source, overrides)
        self.handles[name] = handle
        return handle

    def _add_class(self, cls: type, overrides: dict[str, Any]) -> str:
        from ..source.manifest import manifest_from_dict

        document = class_manifest(cls, overrides)
        manifest = manifest_from_dict(document, f"nyx_host.load({cls.__qualname__})")
        # A subclass carries the test's manifest, so the class itself stays as written.
        marked = type(cls.__name__, (cls,), {"__module__": cls.__module__})
        marked.__qualname__ = cls.__qualname__
        marked.__nyxplug_manifest__ = manifest  # type: ignore[attr-defined]
        self.run(_add(self.manager, marked))
        return manifest.plugin.name

    def _copy_folder(self, source: Path, overrides: dict[str, Any], name: str | None = None) -> str:
        try:
            with open(source / _MANIFEST, "rb") as file:
                document = tomllib.load(file)
        except FileNotFoundError:
            raise FileNotFoundError(
                f"Expected a plugin folder with a {_MANIFEST}, got {source} - give the folder "
                "`nyxplug new` wrote (or a Plugin class)"
            ) from None
        document = apply_overrides(document, overrides)
        new_name = str(document.get("plugin", {}).get("name", source.name))
        target = self.plugin_dir / (name or new_name)
        if name is None and target.exists():
            raise ValueError(f"Expected one load of plugin {new_name!r} per host, got a second")
        staging = self.plugin_dir.parent / f".staging-{target.name}"
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(source, staging, ignore=_IGNORE, symlinks=True)
        if overrides:
            (staging / _MANIFEST).write_text(dumps(document), encoding="utf-8")
        shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)
        return new_name

    # -- the ledger and closing -----------------------------------------------------

    def ledger(self, *, timeout: float = 5.0) -> list[LedgerRow]:
        """Wait until the host is quiet, then check SPEC 4's ledger; ``LedgerError`` if
        a frame is unaccounted for (its message is the ledger, printed as a table)."""
        if self._loop is None:
            return []
        return check_ledger(self, timeout=timeout)

    def close(self) -> None:
        """Unload every plugin (draining), stop the loop and its thread. Idempotent."""
        if self.closed:
            return
        self.closed = True
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        try:
            if self._manager is not None:
                self.run(self._manager.aclose())
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(self.timeout)
            if not thread.is_alive():
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.close()

    def __enter__(self) -> NyxHost:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<NyxHost {self.root} plugins={sorted(self.handles)}>"


async def _discover(manager: PluginManager) -> None:
    manager.discover()


async def _add(manager: PluginManager, cls: type) -> None:
    manager.add(cls)


class PluginHandle:
    """One loaded plugin, seen from a test: send it frames, read its stats and instance.

    Every call waits until the host has done it: ``send`` returns once the frame was
    handled, with the handler's reply (SPEC 8).
    """

    def __init__(
        self,
        host: NyxHost,
        name: str,
        plugin_id: int,
        source: Path | None,
        overrides: dict[str, Any],
    ) -> None:
        self.host = host
        self.name = name
        self.id = plugin_id
        self.source = source
        self._overrides = overrides

    @property
    def folder(self) -> Path | None:
        """The host's copy of the plugin folder (None for a plugin class)."""
        return self.host.plugin_dir / self.name if self.source is not None else None

    def _header(self, flags: int, data: bytes) -> Any:
        from .._impl import PluginHeader

        return PluginHeader(self.id, flags, data)

    async def _request(self, frame_type: int, header: Any, payload: bytes) -> bytes | None:
        host = self.host
        dispatcher = host.manager.dispatcher
        try:
            future = await dispatcher.submit(frame_type, header, payload)
        except NyxplugError:
            host.calls += 1
            host.refused[self.id] += 1
            raise
        host.calls += 1
        host.sent[self.id] += 1
        reply: bytes | None = await future
        return reply

    def send(
        self,
        payload: bytes = b"",
        *,
        frame_type: int = FrameType.DATA,
        flags: int = 0,
        data: bytes = b"",
    ) -> bytes | None:
        """Send one frame and wait until it was handled; returns the handler's reply.

        A refusal raises its typed error (``PermissionDenied``, ``SandboxViolation``, ...);
        a raising handler raises ``HandlerError`` with the plugin's exception as cause.
        """
        return self.host.run(self._request(frame_type, self._header(flags, data), payload))

    async def asend(
        self,
        payload: bytes = b"",
        *,
        frame_type: int = FrameType.DATA,
        flags: int = 0,
        data: bytes = b"",
    ) -> bytes | None:
        """``send`` for async tests: the test's own loop keeps running meanwhile."""
        return await self.host.arun(self._request(frame_type, self._header(flags, data), payload))

    async def _send_many(
        self, frame_type: int, header: Any, payloads: Iterable[bytes]
    ) -> list[bytes | None]:
        host = self.host
        dispatcher = host.manager.dispatcher
        futures: list[asyncio.Future[bytes | None]] = []
        refusal: BaseException | None = None
        for index, payload in enumerate(payloads):
            try:
                futures.append(await dispatcher.submit(frame_type, header, payload))
            except NyxplugError as exc:
                host.calls += 1
                host.refused[self.id] += 1
                exc.add_note(f"frame {index} of send_many to plugin {self.name!r}")
                refusal = exc
                break
            host.calls += 1
            host.sent[self.id] += 1
        # Every frame that went in is handled before anything is raised: the host is
        # quiet when the test goes on.
        results = await asyncio.gather(*futures, return_exceptions=True)
        if refusal is not None:
            raise refusal
        for index, result in enumerate(results):
            if isinstance(result, BaseException):
                result.add_note(f"frame {index} of {len(results)} sent by send_many")
                raise result
        return list(results)  # type: ignore[arg-type]

    def send_many(
        self,
        payloads: Iterable[bytes],
        *,
        frame_type: int = FrameType.DATA,
        flags: int = 0,
        data: bytes = b"",
    ) -> list[bytes | None]:
        """Send frames in order (with backpressure, as a socket would) and wait until all
        were handled; returns their replies. The first error raises, after all were handled.
        """
        payloads = list(payloads)
        header = self._header(flags, data)
        limit = self.host.timeout + len(payloads) * 0.001
        return self.host.run(self._send_many(frame_type, header, payloads), timeout=limit)

    @property
    def stats(self) -> PluginStats:
        """The plugin's counters now (SPEC 4); its final ones after ``unload``."""
        final = self.host.final.get(self.id)
        if final is not None:
            return final
        stats = self.host.run(_call(self.host.manager.stats, self.name))
        if stats is None:
            raise RuntimeError(f"Expected plugin {self.name!r} loaded, got it unloaded")
        return stats

    @property
    def status(self) -> PluginStatus:
        """The plugin's catalog entry: state, reason, version, reloads."""
        return self.host.run(_call(self.host.manager.status, self.name))

    @property
    def instance(self) -> Any:
        """The running plugin object (for an isolated plugin: its host-side proxy)."""
        return self.host.manager.instance(self.name)

    @property
    def isolation_stats(self) -> IsolationStats | None:
        """An isolated plugin's child, faults and ledger (None when it runs in-process)."""
        return self.host.run(_call(self.host.manager.isolation_stats, self.name))

    def reload(self, path: str | os.PathLike[str] | None = None) -> ReloadResult:
        """Hot-swap the plugin for the folder at ``path`` (default: the folder it was
        loaded from, re-read - edits included) while its frames keep flowing.

        The manifest overrides of ``load`` apply to the new version too. Raises
        ``ReloadFailed`` and keeps the old version serving when the new one fails.
        """
        if self.source is None:
            raise TypeError(
                f"Expected a plugin loaded from a folder, got the class plugin {self.name!r} "
                "- reload() swaps in a folder's new version; unload() and load() a class"
            )
        source = Path(path).resolve() if path is not None else self.source
        self.host._copy_folder(source, self._overrides, name=self.name)
        return self.host.run(self.host.manager.reload(self.name))

    def unload(self, *, drain: bool = True) -> PluginStats:
        """Unload the plugin (``drain=False`` drops its queued frames, counted); returns
        its final stats."""
        stats = self.host.run(self.host.manager.unload(self.name, drain=drain))
        self.host.final[self.id] = stats
        return stats

    def __repr__(self) -> str:
        return f"<PluginHandle {self.name!r} id={self.id}>"


async def _call(fn: Callable[..., T], *args: Any) -> T:
    """A plain function of the manager, run on the host's loop thread."""
    return fn(*args)
