"""The plugin runtime (SPEC 6): real plugin folders, real imports, both dispatcher twins."""

from __future__ import annotations

import asyncio
import logging
import os
import py_compile
import re
import socket
import sys
from pathlib import Path
from typing import Any

import pytest
from plugin_helpers import RECORDER, manifest_text, write_plugin

from nyxplug import (
    FrameType,
    HandlerError,
    Permission,
    PermissionDenied,
    PluginClosed,
    PluginHeader,
    PluginNotLoaded,
    SandboxViolation,
    WouldBlock,
)
from nyxplug.plugins import (
    DependencyError,
    Plugin,
    PluginLoadError,
    PluginManager,
    PluginNotFound,
    PluginState,
    PluginStateError,
    plugin,
)
from nyxplug.testing import NyxHost

DATA = FrameType.DATA
EVENT_TIMEOUT = 5.0


def manager_for(impl: Any, root: Path, **kwargs: Any) -> PluginManager:
    kwargs.setdefault("entry_points", False)
    kwargs.setdefault("include_registered", False)
    kwargs.setdefault("require_signatures", False)  # development folders, unsigned
    return PluginManager(dispatcher=impl.Dispatcher(), plugin_dirs=[root], **kwargs)


async def send(manager: PluginManager, plugin_id: int, payload: bytes, ft: int = DATA) -> None:
    await manager.dispatcher.dispatch(ft, PluginHeader(plugin_id).encode(), payload)


async def arrived(instance: Any) -> None:
    async with asyncio.timeout(EVENT_TIMEOUT):
        await instance.arrived.wait()
    instance.arrived.clear()


# -- discovery and lifecycle ------------------------------------------------------------


async def test_a_folder_plugin_goes_discovered_validated_active_unloaded(
    impl: Any, tmp_path: Path
) -> None:
    write_plugin(tmp_path, "echo", 11, tags=("demo",))
    manager = manager_for(impl, tmp_path)
    [entry] = manager.discover()
    assert (entry.name, entry.id, entry.version, entry.state) == ("echo", 11, "1.0.0", "validated")
    assert (entry.source, entry.tags, entry.permissions) == (
        "directory",
        ("demo",),
        ("DATA_ACCESS",),
    )
    status = await manager.load("echo")
    assert status.state == "active"
    instance = manager.instance("echo")
    assert instance.loaded and instance.ctx.id == 11 and instance.ctx.name == "echo"
    await send(manager, 11, b"hello")
    await arrived(instance)
    assert instance.seen == [b"hello"]
    stats = await manager.unload("echo")
    assert (stats.messages_processed, stats.errors) == (1, 0)
    assert instance.unloaded
    assert manager.status("echo").state == "unloaded"
    assert not manager.dispatcher.is_loaded(11)


async def test_context_manager_starts_every_enabled_plugin_and_unloads_on_exit(
    impl: Any, tmp_path: Path
) -> None:
    write_plugin(tmp_path, "one", 1)
    write_plugin(tmp_path, "two", 2)
    async with manager_for(impl, tmp_path) as manager:
        assert [s.state for s in manager.catalog()] == ["active", "active"]
        dispatcher = manager.dispatcher
    assert [s.state for s in manager.catalog()] == ["unloaded", "unloaded"]
    assert len(dispatcher) == 0


def test_broken_manifest_is_listed_failed_with_its_reason(impl: Any, tmp_path: Path) -> None:
    folder = write_plugin(tmp_path, "broken", 5)
    (folder / "nyxplug.toml").write_text('[plugin]\nname = "broken"\n')
    write_plugin(tmp_path, "fine", 6)
    manager = manager_for(impl, tmp_path)
    by_name = {s.name: s for s in manager.discover()}
    assert by_name["fine"].state == "validated"
    assert by_name["broken"].state == "failed"
    assert "broken" in (by_name["broken"].reason or "")
    assert "nyxplug.toml" in (by_name["broken"].reason or "")


def test_duplicate_ids_and_names_are_refused(impl: Any, tmp_path: Path) -> None:
    write_plugin(tmp_path, "first", 9)
    write_plugin(tmp_path, "second", 9)
    other = tmp_path / "elsewhere"
    write_plugin(other, "first", 10)
    manager = PluginManager(
        dispatcher=impl.Dispatcher(), plugin_dirs=[tmp_path, other], entry_points=False,
        include_registered=False, require_signatures=False,
    )  # fmt: skip
    by_name = {s.name: s for s in manager.discover()}
    assert by_name["first"].state == "validated" and by_name["first"].location.endswith("first")
    assert by_name["second"].state == "failed"
    assert "plugin id 9 is already used by 'first'" in (by_name["second"].reason or "")
    assert any("already taken" in e for e in manager.discovery_errors)


def test_unknown_plugin_is_plugin_not_found(impl: Any, tmp_path: Path) -> None:
    write_plugin(tmp_path, "known", 1)
    manager = manager_for(impl, tmp_path)
    manager.discover()
    with pytest.raises(PluginNotFound, match=r"^No plugin named 'nope' in the catalog; known"):
        manager.status("nope")


def test_catalog_filters_by_name_tag_permission_and_state(impl: Any, tmp_path: Path) -> None:
    write_plugin(tmp_path, "alpha", 1, tags=("net",))
    write_plugin(tmp_path, "beta", 2, frames=("CONTROL",))
    write_plugin(tmp_path, "gamma", 3, tags=("net", "x"))
    manager = manager_for(impl, tmp_path)
    manager.discover()
    manager.disable("gamma")
    assert [s.name for s in manager.catalog(tag="net")] == ["alpha", "gamma"]
    assert [s.name for s in manager.catalog(permission=Permission.CONTROL)] == ["beta"]
    assert [s.name for s in manager.catalog(state="disabled")] == ["gamma"]
    assert [s.name for s in manager.catalog(state=PluginState.VALIDATED)] == ["alpha", "beta"]
    assert [s.name for s in manager.catalog(name="et")] == ["beta"]


async def test_disabled_is_remembered_across_restarts(impl: Any, tmp_path: Path) -> None:
    plugins, state = tmp_path / "plugins", tmp_path / "state"
    write_plugin(plugins, "quiet", 4)
    manager = manager_for(impl, plugins, state_dir=state)
    manager.discover()
    manager.disable("quiet")
    with pytest.raises(PluginStateError, match=r"^Cannot load plugin 'quiet' while it is disabled"):
        await manager.load("quiet")
    again = manager_for(impl, plugins, state_dir=state)
    await again.start()
    assert again.status("quiet").state == "disabled" and not again.status("quiet").enabled
    again.enable("quiet")
    third = manager_for(impl, plugins, state_dir=state)
    await third.start()
    assert third.status("quiet").state == "active"
    await third.aclose()


def test_rediscovery_reuses_unchanged_manifests(impl: Any, tmp_path: Path) -> None:
    for i in range(50):
        write_plugin(tmp_path, f"p{i:02d}", 100 + i)
    manager = manager_for(impl, tmp_path)
    manager.discover()
    cached = dict(manager._manifest_cache)
    manager.discover()
    assert all(manager._manifest_cache[path][1] is entry[1] for path, entry in cached.items())
    (tmp_path / "p07" / "nyxplug.toml").write_text(
        (tmp_path / "p07" / "nyxplug.toml").read_text().replace("1.0.0", "1.0.1")
    )
    assert manager.discover()[7].version == "1.0.1"


# -- what runs is what was read ---------------------------------------------------------


async def test_code_is_imported_from_the_bytes_read_not_a_planted_pyc(
    impl: Any, tmp_path: Path
) -> None:
    folder = write_plugin(tmp_path, "honest", 12)
    evil = tmp_path / "evil.py"
    evil.write_text(
        RECORDER.replace("self.seen.append(message.payload)", "self.seen.append(b'EVIL')")
    )
    cache = folder / "__pycache__"
    cache.mkdir()
    py_compile.compile(str(evil), cfile=str(cache / "main.cpython-311.pyc"))
    manager = manager_for(impl, tmp_path)
    manager.discover()
    await manager.load("honest")
    await send(manager, 12, b"real")
    await arrived(manager.instance("honest"))
    assert manager.instance("honest").seen == [b"real"]
    await manager.aclose()


async def test_relative_imports_work_and_plugins_do_not_share_modules(
    impl: Any, tmp_path: Path
) -> None:
    code = RECORDER.replace(
        "from nyxplug.plugins import Plugin",
        "from nyxplug.plugins import Plugin\nfrom . import util",
    )
    code = code.replace("self.seen.append(message.payload)", "self.seen.append(util.TAG)")
    write_plugin(tmp_path, "left", 21, code, files={"util.py": "TAG = b'left'\n"})
    write_plugin(tmp_path, "right", 22, code, files={"util.py": "TAG = b'right'\n"})
    async with manager_for(impl, tmp_path) as manager:
        for name, plugin_id in (("left", 21), ("right", 22)):
            await send(manager, plugin_id, b"")
            await arrived(manager.instance(name))
        assert manager.instance("left").seen == [b"left"]
        assert manager.instance("right").seen == [b"right"]


async def test_unload_then_load_imports_fresh_bytes(impl: Any, tmp_path: Path) -> None:
    folder = write_plugin(tmp_path, "fresh", 13)
    manager = manager_for(impl, tmp_path)
    manager.discover()
    await manager.load("fresh")
    await manager.unload("fresh")
    (folder / "main.py").write_text(
        RECORDER.replace("self.seen.append(message.payload)", "self.seen.append(b'v2')")
    )
    await manager.load("fresh")
    await send(manager, 13, b"x")
    await arrived(manager.instance("fresh"))
    assert manager.instance("fresh").seen == [b"v2"]
    await manager.aclose()


# -- supervision: no plugin mistake takes the host down -------------------------------


@pytest.mark.parametrize(
    ("code", "step", "reason"),
    [
        ("raise ImportError('no such thing')", "import", "ImportError: no such thing"),
        ("def broken(:\n", "import", "SyntaxError"),
        (
            "from nyxplug.plugins import Plugin\nclass Entry(Plugin):\n"
            "    async def on_load(self, ctx):\n        raise ValueError('bad config')\n",
            "on_load",
            "ValueError: bad config",
        ),
        (
            "from nyxplug.plugins import Plugin\nclass Entry(Plugin):\n"
            "    async def health(self):\n        return False\n",
            "health",
            "RuntimeError: health() returned False",
        ),
        ("Entry = 42\n", "instantiate", "TypeError"),
        ("X = 1\n", "import", "ImportError: Expected 'Entry' in module 'main'"),
    ],
    ids=["import-error", "syntax-error", "on-load-raises", "unhealthy", "not-a-plugin", "no-entry"],
)
async def test_a_plugin_that_cannot_load_fails_with_the_step_and_the_host_runs_on(
    impl: Any, tmp_path: Path, code: str, step: str, reason: str
) -> None:
    write_plugin(tmp_path, "bad", 31, code)
    write_plugin(tmp_path, "good", 32)
    manager = manager_for(impl, tmp_path)
    manager.discover()
    with pytest.raises(PluginLoadError, match=rf"^Plugin 'bad' failed to load at {step}: "):
        await manager.load("bad")
    status = manager.status("bad")
    assert status.state == "failed"
    assert (status.reason or "").startswith(f"{step} failed: ")
    assert reason in (status.reason or "")
    assert not manager.dispatcher.is_loaded(31)
    await manager.start()  # the good one still comes up; the bad one stays failed
    assert manager.status("good").state == "active"
    assert manager.status("bad").state == "failed"
    await send(manager, 32, b"ok")
    await arrived(manager.instance("good"))
    await manager.aclose()


def test_a_raising_handler_is_counted_and_logged_and_the_next_frame_follows(
    nyx_host: NyxHost, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    code = RECORDER.replace(
        "        self.seen.append(message.payload)",
        "        self.seen.append(message.payload)\n"
        "        if message.payload == b'boom':\n"
        "            raise RuntimeError('handler bug')",
    )
    flaky = nyx_host.load(write_plugin(tmp_path, "flaky", 41, code))
    with caplog.at_level(logging.ERROR, logger="nyxplug"):
        with pytest.raises(HandlerError) as excinfo:
            flaky.send(b"boom")
        assert isinstance(excinfo.value.__cause__, RuntimeError)
        flaky.send(b"after")
    assert flaky.instance.seen == [b"boom", b"after"]
    assert (flaky.stats.messages_processed, flaky.stats.errors) == (2, 1)
    assert (
        "Handler of plugin 'flaky' (id 41) raised" in caplog.text and "handler bug" in caplog.text
    )


async def test_a_hanging_handler_is_cancelled_at_its_timeout_and_counted(
    impl: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    code = RECORDER.replace(
        "        self.seen.append(message.payload)",
        "        self.seen.append(message.payload)\n"
        "        if message.payload == b'hang':\n"
        "            self.cancelled = asyncio.Event()\n"
        "            try:\n"
        "                await asyncio.Event().wait()\n"
        "            except asyncio.CancelledError:\n"
        "                self.cancelled.set()\n"
        "                raise",
    )
    write_plugin(tmp_path, "sleepy", 42, code, resources={"handler_timeout": 0.05})
    async with manager_for(impl, tmp_path) as manager:
        instance = manager.instance("sleepy")
        with caplog.at_level(logging.ERROR, logger="nyxplug"):
            await send(manager, 42, b"hang")
            await send(manager, 42, b"next")
            await manager.dispatcher.wait_idle(42)
        assert instance.seen == [b"hang", b"next"]
        assert instance.cancelled.is_set()
        stats = manager.stats("sleepy")
        assert stats is not None and stats.errors == 1
        assert manager.status("sleepy").handler_timeouts == 1
        assert "exceeded its 0.05 s timeout" in caplog.text


async def test_a_timeout_is_logged_as_one_line(
    impl: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 15 item 18: no chained tracebacks - the message names plugin, frame and fix."""
    code = RECORDER.replace(
        "        self.seen.append(message.payload)",
        "        self.seen.append(message.payload)\n        await asyncio.Event().wait()",
    )
    write_plugin(tmp_path, "sleepy", 44, code, resources={"handler_timeout": 0.05})
    async with manager_for(impl, tmp_path) as manager:
        with caplog.at_level(logging.ERROR, logger="nyxplug"):
            await send(manager, 44, b"hang")
            await manager.dispatcher.wait_idle(44)
    [record] = [r for r in caplog.records if "exceeded its" in r.getMessage()]
    assert record.exc_info is None
    assert caplog.text.count("Traceback") == 0
    assert record.getMessage() == (
        "Handler of plugin 'sleepy' (id 44) "
        "exceeded its 0.05 s timeout on a 0x52 (DATA) frame and was cancelled; raise "
        "[resources] handler_timeout or make the handler faster"
    )


#: A synchronous handler that, on a b"slow" frame, holds the loop for 0.12 s (a spin on
#: the monotonic clock, as a CPU-bound handler would), past the 0.1 s timeout below.
SLOW_SYNC = RECORDER.replace(
    "    async def handle(self, message):\n",
    "    def handle(self, message):\n"
    "        import time\n"
    "        deadline = time.monotonic() + 0.12\n"
    "        while message.payload == b'slow' and time.monotonic() < deadline:\n"
    "            pass\n",
)
SLOW_SYNC_BATCH = SLOW_SYNC.replace(
    "    def handle(self, message):\n",
    "    def handle_batch(self, messages):\n        [message] = messages\n",
)


@pytest.mark.parametrize("code", [SLOW_SYNC, SLOW_SYNC_BATCH], ids=["handle", "handle_batch"])
async def test_a_sync_handler_over_its_timeout_is_measured_counted_and_logged(
    impl: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture, code: str
) -> None:
    """Issue 15 item 18: a sync overrun cannot be interrupted, but it is not silent.

    The dispatcher's worker times the call (the engine tests cover the timing itself);
    the runtime counts it in ``handler_timeouts`` and logs one line.
    """
    write_plugin(tmp_path, "busy", 45, code, resources={"handler_timeout": 0.1})
    async with manager_for(impl, tmp_path) as manager:
        instance = manager.instance("busy")
        with caplog.at_level(logging.WARNING, logger="nyxplug"):
            await send(manager, 45, b"slow")
            await manager.dispatcher.wait_idle(45)
            await send(manager, 45, b"fast")
            await manager.dispatcher.wait_idle(45)
        assert instance.seen == [b"slow", b"fast"]
        stats = manager.stats("busy")
        assert stats is not None and (stats.messages_processed, stats.errors) == (2, 0)
        assert manager.status("busy").handler_timeouts == 1
    [record] = [r for r in caplog.records if "over its" in r.getMessage()]
    assert record.levelno == logging.WARNING and record.exc_info is None
    took = re.fullmatch(
        r"Handler of plugin 'busy' \(id 45\) took (\S+) s on a 0x52 \(DATA\) frame, over its "
        r"0\.1 s timeout; a synchronous handler cannot be interrupted - make it async \(then it "
        r"is cancelled at the limit\) or faster",
        record.getMessage(),
    )
    assert took is not None, record.getMessage()
    assert float(took[1]) >= 0.12


# -- dependencies ---------------------------------------------------------------------


def test_dependencies_give_the_load_order(impl: Any, tmp_path: Path) -> None:
    write_plugin(tmp_path, "app", 1, dependencies={"db": ">=1.0, <2", "log": "^1.0"})
    write_plugin(tmp_path, "db", 2, dependencies={"log": ">=1.0"})
    write_plugin(tmp_path, "log", 3, version="1.4.0")
    manager = manager_for(impl, tmp_path)
    manager.discover()
    assert manager.load_order(["app"]) == ["log", "db", "app"]
    assert manager.load_order() == ["log", "db", "app"]


@pytest.mark.parametrize(
    ("deps", "message"),
    [
        ({"a": {"b": ">=1.0"}, "b": {"a": ">=1.0"}}, r"dependency cycle (a -> b -> a|b -> a -> b)"),
        (
            {"a": {"ghost": ">=1.0"}},
            r"needs 'ghost' >=1\.0\.0, which is not in the catalog - install it "
            r"\(`nyxplug install` its package\) or add the folder holding 'ghost' with "
            r"--plugin-dir",
        ),
        (
            {"a": {"b": ">=2.0"}, "b": {}},
            r"needs 'b' >=2\.0\.0, but 1\.0\.0 is installed - install a 'b' in that range, or "
            r"change the range in \[dependencies\]",
        ),
    ],
    ids=["cycle", "missing", "out-of-range"],
)
def test_unsatisfiable_dependencies_are_refused_clearly(
    impl: Any, tmp_path: Path, deps: dict[str, dict[str, str]], message: str
) -> None:
    for i, (name, wanted) in enumerate(deps.items()):
        write_plugin(tmp_path, name, i + 1, dependencies=wanted)
    manager = manager_for(impl, tmp_path)
    manager.discover()
    with pytest.raises(
        DependencyError, match=rf"^Plugin '\w+' has unsatisfiable dependencies: {message}$"
    ):
        manager.load_order(["a"])


async def test_start_fails_a_plugin_whose_dependency_failed(impl: Any, tmp_path: Path) -> None:
    write_plugin(tmp_path, "base", 1, "raise ImportError('base is broken')")
    write_plugin(tmp_path, "top", 2, dependencies={"base": ">=1.0"})
    write_plugin(tmp_path, "solo", 3)
    manager = manager_for(impl, tmp_path)
    await manager.start()
    assert manager.status("base").state == "failed"
    assert manager.status("top").state == "failed"
    assert "dependency 'base' is not active" in (manager.status("top").reason or "")
    assert manager.status("solo").state == "active"
    await manager.aclose()


# -- plugins in code, and the context -------------------------------------------------


async def test_a_class_marked_with_the_decorator_is_a_plugin(impl: Any, tmp_path: Path) -> None:
    @plugin(name="incode", id=77, version="2.1.0", permissions=["DATA_ACCESS"], tags=["x"],
            config={"greeting": "hi"})  # fmt: skip
    class InCode(Plugin):
        def __init__(self) -> None:
            self.arrived = asyncio.Event()
            self.seen: list[Any] = []

        async def handle(self, message: Any) -> None:
            self.seen.append((self.ctx.config["greeting"], message.payload))
            self.arrived.set()

    manager = manager_for(impl, tmp_path)
    status = manager.add(InCode)
    assert (status.name, status.source, status.version, status.state) == (
        "incode", "code", "2.1.0", "validated"
    )  # fmt: skip
    await manager.load("incode")
    await send(manager, 77, b"p")
    await arrived(manager.instance("incode"))
    assert manager.instance("incode").seen == [("hi", b"p")]
    await manager.aclose()


FORWARDER = """
import asyncio
from nyxplug import PluginHeader
from nyxplug.plugins import Plugin

class Entry(Plugin):
    def __init__(self):
        self.errors = []
        self.arrived = asyncio.Event()

    async def handle(self, message):
        target = self.ctx.config["target"]
        try:
            await self.ctx.dispatch(self.ctx.config["frame"], PluginHeader(target), message.payload)
        except Exception as exc:
            self.errors.append(exc)
        self.arrived.set()
"""


async def test_ctx_dispatch_sends_under_the_senders_own_permissions(
    impl: Any, tmp_path: Path
) -> None:
    write_plugin(tmp_path, "sink", 50, frames=("DATA_ACCESS", "CONTROL"))
    write_plugin(tmp_path, "relay", 51, FORWARDER, config={"target": 50, "frame": 0x52})
    write_plugin(tmp_path, "sneaky", 52, FORWARDER, config={"target": 50, "frame": 0x53})
    async with manager_for(impl, tmp_path) as manager:
        await send(manager, 51, b"forward me")
        await arrived(manager.instance("relay"))
        await arrived(manager.instance("sink"))
        assert manager.instance("sink").seen == [b"forward me"]
        await send(manager, 52, b"control, without the right")
        await arrived(manager.instance("sneaky"))
        [error] = manager.instance("sneaky").errors
        assert isinstance(error, PermissionDenied) and error.plugin_id == 52
        # Named, and the fix in the terms it was loaded with: its manifest's [permissions].
        assert str(error) == (
            "Plugin 'sneaky' (id 52) lacks permission CONTROL required by frame 0x53 (CONTROL) "
            f"- grant it in [permissions] of {tmp_path / 'sneaky' / 'nyxplug.toml'}"
        )


async def test_a_refused_frame_names_the_manifest_plugin_and_its_fix(
    impl: Any, tmp_path: Path
) -> None:
    write_plugin(tmp_path, "quiet", 53, frames=("CONTROL",))
    async with manager_for(impl, tmp_path) as manager:
        with pytest.raises(PermissionDenied) as caught:
            await send(manager, 53, b"data, without the right")
    assert str(caught.value) == (
        "Plugin 'quiet' (id 53) lacks permission DATA_ACCESS required by frame 0x52 (DATA) "
        f"- grant it in [permissions] of {tmp_path / 'quiet' / 'nyxplug.toml'}"
    )


async def test_after_a_reload_refusals_still_name_the_manifest_fix(
    impl: Any, tmp_path: Path
) -> None:
    folder = write_plugin(tmp_path, "quiet", 53, frames=("CONTROL",))
    async with manager_for(impl, tmp_path) as manager:
        (folder / "nyxplug.toml").write_text(
            manifest_text("quiet", 53, version="1.1.0", frames=("CONTROL",))
        )
        assert (await manager.reload("quiet")).outcome == "swapped"
        with pytest.raises(PermissionDenied) as caught:
            await send(manager, 53, b"data, still without the right")
    assert str(caught.value) == (
        "Plugin 'quiet' (id 53) lacks permission DATA_ACCESS required by frame 0x52 (DATA) "
        f"- grant it in [permissions] of {folder / 'nyxplug.toml'}"
    )


GATED = """
import asyncio
from nyxplug.plugins import Plugin

class Entry(Plugin):
    def __init__(self):
        self.entered = asyncio.Event()
        self.gate = asyncio.Event()

    async def handle(self, message):
        self.entered.set()
        await self.gate.wait()
"""


async def test_queue_refusals_name_the_manifest_plugin_and_its_fix(
    impl: Any, tmp_path: Path
) -> None:
    write_plugin(tmp_path, "gated", 54, GATED, resources={"capacity": 1})
    manifest = tmp_path / "gated" / "nyxplug.toml"
    header = PluginHeader(54).encode()
    async with manager_for(impl, tmp_path) as manager:
        dispatcher, instance = manager.dispatcher, manager.instance("gated")
        try:
            dispatcher.dispatch_nowait(DATA, header)
            async with asyncio.timeout(EVENT_TIMEOUT):
                await instance.entered.wait()  # the handler holds the first frame
            dispatcher.dispatch_nowait(DATA, header)  # the one slot
            with pytest.raises(WouldBlock) as full:
                dispatcher.dispatch_nowait(DATA, header)
            assert str(full.value) == (
                "Queue of plugin 'gated' (id 54) is full (capacity 1) - frame 0x52 (DATA) was not "
                "enqueued; await dispatch() to wait for space, retry later, or raise "
                f"[resources] capacity of {manifest}"
            )
            parked = asyncio.create_task(dispatcher.dispatch(DATA, header))
            unloading = asyncio.create_task(manager.unload("gated"))
            async with asyncio.timeout(EVENT_TIMEOUT):
                with pytest.raises(PluginClosed) as closed:
                    await parked  # the unload closed the queue it waited for
            assert str(closed.value) == (
                "Plugin 'gated' (id 54) was unloaded while frame 0x52 (DATA) waited for queue "
                "space - the frame was not enqueued"
            )
            with pytest.raises(PluginNotLoaded) as draining:
                dispatcher.dispatch_nowait(DATA, header)
            assert str(draining.value) == (
                "Plugin 'gated' (id 54) is not loaded - frame 0x52 (DATA) was refused; load it "
                "with PluginManager.load('gated') first (`nyxplug enable gated` on a running host)"
            )
            instance.gate.set()
            async with asyncio.timeout(EVENT_TIMEOUT):
                await unloading
        finally:
            instance.gate.set()  # a failed check must not leave the handler waiting


# -- the sandbox while plugin code runs -------------------------------------------------

SNOOP = """
import asyncio, socket
from nyxplug.plugins import Plugin

class Entry(Plugin):
    def __init__(self):
        self.results = []
        self.arrived = asyncio.Event()

    async def handle(self, message):
        kind, _, arg = message.payload.decode().partition(" ")
        try:
            if kind == "read":
                with open(arg) as f:
                    self.results.append(("ok", f.read()))
            elif kind == "write":
                with open(arg, "w") as f:
                    f.write("x")
                self.results.append(("ok", "written"))
            elif kind == "connect":
                host, port = arg.split(":")
                with socket.create_connection((host, int(port)), timeout=2):
                    self.results.append(("ok", "connected"))
        except Exception as exc:
            self.results.append((type(exc).__name__, str(exc)))
            raise
        finally:
            self.arrived.set()
"""


async def test_the_sandbox_refuses_files_and_sockets_outside_the_policy_and_counts(
    impl: Any, tmp_path: Path
) -> None:
    allowed, secret = tmp_path / "allowed", tmp_path / "secret"
    allowed.mkdir()
    secret.mkdir()
    (allowed / "data.txt").write_text("public")
    (secret / "key.txt").write_text("private")
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    port = server.getsockname()[1]
    manifest = tmp_path / "plugins" / "snoop" / "nyxplug.toml"
    write_plugin(
        tmp_path / "plugins", "snoop", 60, SNOOP,
        sandbox={"filesystem": "read-only", "filesystem_allowlist": [str(allowed)],
                 "network": True, "network_allowlist": ["example.org"]},
    )  # fmt: skip
    try:
        async with manager_for(impl, tmp_path / "plugins") as manager:
            instance = manager.instance("snoop")
            for command in (
                f"read {allowed / 'data.txt'}",
                f"read {secret / 'key.txt'}",
                f"write {allowed / 'new.txt'}",
                f"connect 127.0.0.1:{port}",
            ):
                await send(manager, 60, command.encode())
                await arrived(instance)
            results = instance.results
            assert results[0] == ("ok", "public")
            assert [kind for kind, _ in results[1:]] == ["SandboxViolation"] * 3
            # each names the plugin and the fix in its manifest's terms
            fix = f" - plugin 'snoop' (id 60); allow it in [sandbox] of {manifest}"
            assert [text.endswith(fix) for _, text in results[1:]] == [True] * 3, results
            assert not (allowed / "new.txt").exists()
            stats = manager.stats("snoop")
            assert stats is not None and stats.sandbox_violations == 3 and stats.errors == 3
            # the host itself is not confined by the plugin's policy
            assert (secret / "key.txt").read_text() == "private"
            with socket.create_connection(("127.0.0.1", port), timeout=2):
                pass
    finally:
        server.close()


async def test_control_frames_naming_a_forbidden_target_are_refused_before_the_queue(
    impl: Any, tmp_path: Path
) -> None:
    write_plugin(tmp_path, "ctl", 70, frames=("CONTROL",), sandbox={"network": False})
    async with manager_for(impl, tmp_path) as manager:
        header = PluginHeader(70, 0, b"SBX:CONNECT evil.example:443").encode()
        with pytest.raises(SandboxViolation) as caught:
            await manager.dispatcher.dispatch(FrameType.CONTROL, header, b"")
        assert str(caught.value) == (
            "Sandbox refused connect to 'evil.example:443' (network is disabled) - frame 0x53 "
            f"(CONTROL) for plugin 'ctl' (id 70); allow it in [sandbox] of {tmp_path / 'ctl'}"
            f"{os.sep}nyxplug.toml"
        )
        stats = manager.stats("ctl")
        assert stats is not None and stats.sandbox_violations == 1
        assert manager.instance("ctl").seen == []


async def test_a_handler_that_swallows_its_cancellation_is_still_a_timeout(
    impl: Any, tmp_path: Path
) -> None:
    code = RECORDER.replace(
        "        self.seen.append(message.payload)",
        "        self.seen.append(message.payload)\n"
        "        if message.payload == b'stubborn':\n"
        "            try:\n"
        "                await asyncio.Event().wait()\n"
        "            except asyncio.CancelledError:\n"
        "                return  # swallowed: the runtime must still count the timeout",
    )
    write_plugin(tmp_path, "stubborn", 43, code, resources={"handler_timeout": 0.05})
    async with manager_for(impl, tmp_path) as manager:
        await send(manager, 43, b"stubborn")
        await send(manager, 43, b"next")
        await manager.dispatcher.wait_idle(43)
        assert manager.instance("stubborn").seen == [b"stubborn", b"next"]
        stats = manager.stats("stubborn")
        assert stats is not None and (stats.messages_processed, stats.errors) == (2, 1)
        assert manager.status("stubborn").handler_timeouts == 1


def _install_distribution(site: Path, module: str, source: str, entry: str) -> None:
    """A real (if minimal) installed distribution: a module and its .dist-info."""
    (site / f"{module}.py").write_text(source)
    info = site / f"{module}_dist-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module}-dist\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[nyxplug.plugins]\n{module} = {entry}\n")


async def test_installed_distributions_are_found_through_their_entry_points(
    impl: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    site = tmp_path / "site"
    site.mkdir()
    source = RECORDER.replace(
        "class Entry(Plugin):",
        "from nyxplug.plugins import plugin\n\n"
        "@plugin(name='builtin-echo', id=88, version='3.0.0', permissions=['DATA_ACCESS'])\n"
        "class Entry(Plugin):",
    )
    _install_distribution(site, "nyx_builtin_echo", source, "nyx_builtin_echo:Entry")
    _install_distribution(site, "nyx_broken", "raise ImportError('gone')\n", "nyx_broken:Entry")
    monkeypatch.syspath_prepend(str(site))
    manager = PluginManager(dispatcher=impl.Dispatcher(), plugin_dirs=[], entry_points=True)
    by_name = {s.name: s for s in manager.discover()}
    status = by_name["builtin-echo"]
    assert (status.source, status.version, status.state) == ("entry-point", "3.0.0", "validated")
    assert status.location == "entry point nyx_builtin_echo = nyx_builtin_echo:Entry"
    assert [e for e in manager.discovery_errors if "nyx_broken" in e] == [
        "Entry point 'nyx_broken' (nyx_broken:Entry) failed to load: ImportError: gone - "
        "it must name a class marked @plugin"
    ]
    assert not any("already taken" in e for e in manager.discovery_errors)
    await manager.load("builtin-echo")
    await send(manager, 88, b"from a distribution")
    await arrived(manager.instance("builtin-echo"))
    assert manager.instance("builtin-echo").seen == [b"from a distribution"]
    await manager.aclose()
    for module in ("nyx_builtin_echo", "nyx_broken"):
        monkeypatch.delitem(sys.modules, module, raising=False)
    from nyxplug.plugins import catalog as catalog_module

    monkeypatch.delitem(catalog_module._CODE_PLUGINS, "builtin-echo", raising=False)


def test_required_permission_follows_the_routing_table(impl: Any) -> None:
    d = impl.Dispatcher()
    assert d.required_permission(FrameType.DATA) is Permission.DATA_ACCESS
    assert d.required_permission(0x55) is None
    d.register_frame_type(0x55, Permission.CONTROL)
    assert d.required_permission(0x55) is Permission.CONTROL
    with pytest.raises(ValueError, match=r"^Expected `frame_type` in 0\.\.255, got 256$"):
        d.required_permission(256)


async def test_a_guard_is_for_one_plugin_so_only_load_plugin_takes_one(impl: Any) -> None:
    from nyxplug.sandbox import SandboxGuard, SandboxPolicy

    guard = SandboxGuard(SandboxPolicy(), 5)
    with pytest.raises(TypeError, match=r"^Expected `sandbox` to be a SandboxPolicy or None, got"):
        impl.Dispatcher(sandbox=guard)
    d = impl.Dispatcher()
    await d.load_plugin(impl_info(5), None, sandbox=guard)
    header = PluginHeader(5, 0, b"SBX:OPEN /etc/passwd").encode()
    d.registry.set_permissions(5, Permission.CONTROL)
    assert d.try_dispatch(FrameType.CONTROL, header) == impl_status("SANDBOX_VIOLATION")
    guard.violations += 2  # counted elsewhere on the same guard (on_load, sending)
    stats = await d.unload_plugin(5)
    assert stats.sandbox_violations == 3


def impl_info(plugin_id: int) -> Any:
    from nyxplug import PluginInfo

    return PluginInfo(plugin_id, f"p{plugin_id}", Permission.DATA_ACCESS)


def impl_status(name: str) -> Any:
    from nyxplug import DispatchStatus

    return DispatchStatus[name]


SENDER = """
import asyncio
from nyxplug import PluginHeader
from nyxplug.plugins import Plugin

class Entry(Plugin):
    async def on_load(self, ctx):
        await ctx.dispatch(0x52, PluginHeader(ctx.config["target"]), b"hello from on_load")

    async def handle(self, message):
        pass
"""


async def test_ctx_dispatch_works_from_on_load_and_follows_the_registry(
    impl: Any, tmp_path: Path
) -> None:
    write_plugin(tmp_path, "sink", 50)
    write_plugin(tmp_path, "early", 53, SENDER, config={"target": 50}, dependencies={"sink": "*"})
    async with manager_for(impl, tmp_path) as manager:
        await arrived(manager.instance("sink"))
        assert manager.instance("sink").seen == [b"hello from on_load"]
        ctx = manager.instance("early").ctx
        assert ctx.permissions is Permission.DATA_ACCESS
        manager.dispatcher.register_frame_type(0x55, Permission.CONTROL)
        with pytest.raises(PermissionDenied):
            ctx.dispatch_nowait(0x55, PluginHeader(50), b"")
        manager.dispatcher.registry.set_permissions(53, Permission(0))
        with pytest.raises(PermissionDenied):
            ctx.dispatch_nowait(FrameType.DATA, PluginHeader(50), b"")


async def test_ctx_try_dispatch_reports_its_own_refusals_as_statuses(impl: Any) -> None:
    """SPEC 3: try_dispatch returns a status and never raises for a refusal (issue 15 item 2)."""
    from nyxplug import DispatchStatus
    from nyxplug.plugins import PluginContext
    from nyxplug.sandbox import SandboxGuard, SandboxPolicy

    async with impl.Dispatcher() as d:
        await d.load_plugin(impl_info(60), None)
        await d.load_plugin(impl_info(61), None)
        guard = SandboxGuard(SandboxPolicy(), 61)
        ctx = PluginContext(
            name="p61", plugin_id=61, version="1.0.0", config={}, dispatcher=d, guard=guard
        )
        assert ctx.try_dispatch(FrameType.CONTROL, PluginHeader(60)) is (
            DispatchStatus.PERMISSION_DENIED
        )
        d.registry.set_permissions(61, Permission.CONTROL | Permission.DATA_ACCESS)
        bad = PluginHeader(60, 0, b"SBX:OPEN /etc/passwd")
        assert ctx.try_dispatch(FrameType.CONTROL, bad) is DispatchStatus.SANDBOX_VIOLATION
        assert ctx.try_dispatch(FrameType.CONTROL, bad.encode()) is (
            DispatchStatus.SANDBOX_VIOLATION
        )
        assert ctx.try_dispatch(FrameType.CONTROL, b"\xff") is DispatchStatus.HEADER_DECODE_ERROR
        assert guard.violations == 2
        assert ctx.try_dispatch(FrameType.DATA, PluginHeader(60), b"ok") is DispatchStatus.OK
        # named from the registry; its info was built in code, so the fix is the code's
        with pytest.raises(
            SandboxViolation,
            match=r"^Sandbox refused read of '/etc/passwd' \(filesystem is disabled\) - frame "
            r"0x53 \(CONTROL\) for plugin 'p61' \(id 61\); allow it in the SandboxPolicy "
            r"given to load_plugin\(\) for 'p61'$",
        ):
            ctx.dispatch_nowait(FrameType.CONTROL, bad)
