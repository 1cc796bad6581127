"""The hot-reload watcher: real plugin folders, real watchfiles (native and polling).

Nothing sleeps to wait for the watcher. A test awaits the outcome it expects
(``next_outcome``); to show that something did *not* happen it writes a dot file
(``barrier``), which the watcher ignores and counts once the batch holding it is
handled - file events arrive in order, so every earlier change was handled by then.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import shutil
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from plugin_helpers import write_plugin
from reload_helpers import DATA, EVENT_TIMEOUT, SINK_MODULE, Sink, install_sink, write_counter
from watchfiles import Change

import nyxplug
from nyxplug.plugins import PluginManager, PluginStatus, ReloadFailed, ReloadResult
from nyxplug.plugins.watch import ChangeFilter, PluginWatcher

QUICK = 0.05  # debounce (s) for tests that do not depend on it


@pytest.fixture
def sink() -> Iterator[Sink]:
    yield install_sink()
    sys.modules.pop(SINK_MODULE, None)


@pytest.fixture
def plugins(tmp_path: Path) -> Path:
    folder = tmp_path / "plugins"
    folder.mkdir()
    return folder


def manager_for(impl: Any, tmp_path: Path) -> PluginManager:
    return PluginManager(
        dispatcher=impl.Dispatcher(), plugin_dirs=[tmp_path / "plugins"],
        state_dir=tmp_path / "state", require_signatures=False, entry_points=False,
        include_registered=False,
    )  # fmt: skip


async def serving(manager: PluginManager, sink: Sink, plugin_id: int) -> str:
    """The version that handles the next frame sent to ``plugin_id``."""
    before = len(sink.frames)
    header = nyxplug.PluginHeader(plugin_id).encode()
    await manager.dispatcher.dispatch(DATA, header, before.to_bytes(8, "big"))
    await sink.wait_frames(before + 1)
    return sink.frames[before][1]


async def started(watcher: PluginWatcher) -> PluginWatcher:
    async with asyncio.timeout(EVENT_TIMEOUT):
        await watcher.ready.wait()
    return watcher


async def barrier(watcher: PluginWatcher, root: Path) -> None:
    """Return once every change made before this call was handled."""
    seen = watcher.ignored_changes
    (root / f".barrier-{watcher.batches}-{seen}").write_text("")
    await watcher.wait_for(lambda: watcher.ignored_changes > seen, EVENT_TIMEOUT)


# -- which paths matter ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("rel", "relevant"),
    [
        ("", True),  # the root itself (created, removed)
        ("echo", True),
        ("echo/main.py", True),
        ("echo/nyxplug.toml", True),
        ("echo/pkg/util.py", True),
        ("echo/__pycache__", False),
        ("echo/__pycache__/main.cpython-311.pyc", False),
        ("echo/main.pyc", False),
        ("echo/.main.py.swp", False),
        ("echo/main.py.swp", False),
        ("echo/main.py~", False),
        ("echo/.#main.py", False),
        ("echo/#main.py#", False),
        ("echo/main.py___jb_tmp___", False),
        (".install-echo-x1y2", False),
        (".install-echo-x1y2/main.py", False),
        (".old-echo-42/main.py", False),
        ("echo/.git/index", False),
    ],
)
def test_change_filter_ignores_what_no_plugin_runs_from(
    tmp_path: Path, rel: str, relevant: bool
) -> None:
    root = tmp_path / ".nyxplug" / "packages"  # a dot folder above the root does not count
    path = root / rel if rel else root
    assert ChangeFilter([root])(Change.modified, str(path)) is relevant


def test_change_filter_ignores_paths_outside_every_root(tmp_path: Path) -> None:
    store = tmp_path / "state" / "packages"
    assert not ChangeFilter([store]).relevant(tmp_path / "state" / "audit.log")
    assert ChangeFilter([store]).relevant(store / "echo" / "main.py")


@pytest.mark.parametrize("bad", [-0.1, math.nan, math.inf])
def test_debounce_must_be_seconds(tmp_path: Path, bad: float) -> None:
    manager = PluginManager(plugin_dirs=[tmp_path], entry_points=False, include_registered=False)
    with pytest.raises(ValueError, match=r"^Expected `debounce` in seconds >= 0, got "):
        PluginWatcher(manager, debounce=bad)


# -- reloading -----------------------------------------------------------------------------


async def test_editing_an_active_plugin_reloads_it_once_and_the_new_code_serves(
    impl: Any, tmp_path: Path, plugins: Path, sink: Sink
) -> None:
    write_counter(plugins, "counter", 7, "1.0.0")
    async with manager_for(impl, tmp_path) as manager:
        assert await serving(manager, sink, 7) == "1.0.0"
        async with PluginWatcher(manager, debounce=QUICK, force_polling=False) as watcher:
            await started(watcher)
            assert watcher.mode == "native"
            write_counter(plugins, "counter", 7, "1.1.0")
            name, result = await watcher.next_outcome(EVENT_TIMEOUT)
            assert name == "counter" and isinstance(result, ReloadResult)
            assert (result.outcome, result.from_version, result.to_version) == (
                "swapped", "1.0.0", "1.1.0",
            )  # fmt: skip
            assert await serving(manager, sink, 7) == "1.1.0"
            await barrier(watcher, plugins)
            assert watcher.outcomes == [(name, result)] and watcher.reloads == [result]
            stats = manager.status("counter").reloads
            assert (stats.attempted, stats.succeeded, stats.rolled_back) == (1, 1, 0)
    assert sink.counts() == [1, 2]  # the count went across the swap


async def test_a_change_made_while_the_loop_is_busy_is_grouped_without_the_loop(
    impl: Any, tmp_path: Path, plugins: Path, sink: Sink
) -> None:
    """Detecting and debouncing a change never waits for the event loop (issue 15, 24).

    The loop is kept busy (a spin holding it, as a saturated host holds it) from before
    the change until well after its quiet period; the change is made meanwhile from
    another thread. Once the loop is free the batch is already decided, so the reload
    follows at once - not after a debounce that starts only when the loop gets round to
    watching again (about 2 x 400 ms here).
    """
    write_counter(plugins, "counter", 7, "1.0.0")
    async with manager_for(impl, tmp_path) as manager:
        async with PluginWatcher(manager, debounce=0.8) as watcher:  # quiet: 0.4 s
            await started(watcher)
            edit = threading.Timer(0.6, write_counter, (plugins, "counter", 7, "1.1.0"))
            edit.start()
            busy_until = time.monotonic() + 2.0  # the edit, then 1.4 s: quiet is long over
            while time.monotonic() < busy_until:  # ok-sleep: the busy loop under test
                pass
            free = time.monotonic()
            name, result = await watcher.next_outcome(EVENT_TIMEOUT)
            handled = time.monotonic() - free
            edit.join()
            assert name == "counter" and isinstance(result, ReloadResult)
            assert result.to_version == "1.1.0"
            assert handled < 0.4, f"handled {handled:.3f} s after the loop was free"


async def test_two_quick_edits_inside_the_debounce_window_reload_once(
    impl: Any, tmp_path: Path, plugins: Path, sink: Sink
) -> None:
    folder = write_counter(plugins, "counter", 7, "1.0.0")
    async with manager_for(impl, tmp_path) as manager:
        async with PluginWatcher(manager, debounce=0.3) as watcher:
            await started(watcher)
            write_counter(plugins, "counter", 7, "1.1.0")
            write_counter(plugins, "counter", 7, "1.2.0")  # the same files again
            (folder / "util.py").write_text("HELPER = 1\n")  # and one more, same plugin
            name, result = await watcher.next_outcome(EVENT_TIMEOUT)
            assert name == "counter" and isinstance(result, ReloadResult)
            assert (result.outcome, result.to_version) == ("swapped", "1.2.0")
            await barrier(watcher, plugins)
            assert len(watcher.outcomes) == 1
            assert manager.status("counter").reloads.attempted == 1
            assert await serving(manager, sink, 7) == "1.2.0"
            assert sink.calls("imported", "1.1.0") == 0  # the intermediate edit never ran


async def test_a_touch_that_changes_no_byte_reloads_nothing(
    impl: Any, tmp_path: Path, plugins: Path, sink: Sink
) -> None:
    folder = write_counter(plugins, "counter", 7, "1.0.0")
    async with manager_for(impl, tmp_path) as manager:
        instance = manager.instance("counter")
        async with PluginWatcher(manager, debounce=QUICK) as watcher:
            await started(watcher)
            write_counter(plugins, "counter", 7, "1.0.0")  # the same bytes, rewritten
            os.utime(folder / "main.py")
            name, result = await watcher.next_outcome(EVENT_TIMEOUT)
            assert name == "counter" and isinstance(result, ReloadResult)
            assert (result.outcome, result.pause) == ("unchanged", None)
            assert manager.instance("counter") is instance
            assert manager.status("counter").reloads.attempted == 0
            assert sink.calls("imported") == 1


async def test_a_broken_edit_is_rolled_back_and_fixing_it_reloads(
    impl: Any, tmp_path: Path, plugins: Path, sink: Sink, caplog: pytest.LogCaptureFixture
) -> None:
    write_counter(plugins, "counter", 7, "1.0.0")
    async with manager_for(impl, tmp_path) as manager:
        async with PluginWatcher(manager, debounce=QUICK) as watcher:
            await started(watcher)
            with caplog.at_level(logging.WARNING):
                write_counter(plugins, "counter", 7, "1.1.0", source="def broken(:\n")
                name, failure = await watcher.next_outcome(EVENT_TIMEOUT)
            assert name == "counter" and isinstance(failure, ReloadFailed)
            assert (failure.step, failure.running, failure.transient) == ("import", "1.0.0", False)
            logged = [r.name for r in caplog.records if "failed at import" in r.getMessage()]
            assert logged == ["nyxplug.runtime"]  # once, by the manager; not again by the watcher
            assert manager.status("counter").state == "active"
            assert await serving(manager, sink, 7) == "1.0.0"  # the old version serves on

            write_counter(plugins, "counter", 7, "1.1.0")
            name, result = await watcher.next_outcome(EVENT_TIMEOUT)
            assert isinstance(result, ReloadResult) and result.outcome == "swapped"
            assert await serving(manager, sink, 7) == "1.1.0"
            stats = manager.status("counter").reloads
            assert (stats.attempted, stats.succeeded, stats.rolled_back) == (2, 1, 1)


# -- loading what appears or was fixed ----------------------------------------------------


async def test_a_new_plugin_folder_is_discovered_and_loaded(
    impl: Any, tmp_path: Path, plugins: Path, sink: Sink
) -> None:
    write_counter(plugins, "first", 1)
    async with manager_for(impl, tmp_path) as manager:
        async with PluginWatcher(manager, debounce=QUICK) as watcher:
            await started(watcher)
            write_counter(plugins, "late", 2, "2.0.0")
            name, status = await watcher.next_outcome(EVENT_TIMEOUT)
            assert name == "late" and isinstance(status, PluginStatus)
            assert (status.state, status.version) == ("active", "2.0.0")
            assert await serving(manager, sink, 2) == "2.0.0"
            await barrier(watcher, plugins)
            assert [n for n, _ in watcher.outcomes] == ["late"]  # "first" was left alone
    assert sink.calls("imported", "1.0.0") == 1


async def test_a_failed_plugin_loads_once_its_folder_is_fixed(
    impl: Any, tmp_path: Path, plugins: Path, sink: Sink
) -> None:
    write_counter(plugins, "counter", 7, source="raise ImportError('not yet')\n")
    async with manager_for(impl, tmp_path) as manager:
        assert manager.status("counter").state == "failed"
        async with PluginWatcher(manager, debounce=QUICK) as watcher:
            await started(watcher)
            (plugins / "counter" / "nyxplug.toml").write_text("[plugin]\nname = 'counter'\n")
            name, failure = await watcher.next_outcome(EVENT_TIMEOUT)
            assert name == "counter" and isinstance(failure, nyxplug.plugins.PluginLoadError)
            assert failure.step == "discovery" and "nyxplug.toml" in failure.reason

            write_counter(plugins, "counter", 7, "1.0.1")
            name, status = await watcher.next_outcome(EVENT_TIMEOUT)
            assert isinstance(status, PluginStatus) and status.state == "active"
            assert await serving(manager, sink, 7) == "1.0.1"


async def test_the_first_install_into_a_missing_package_store_is_seen(
    impl: Any, tmp_path: Path, plugins: Path, sink: Sink
) -> None:
    (tmp_path / "state").mkdir()
    manager = manager_for(impl, tmp_path)
    store = manager.package_dir
    assert store is not None and not store.exists()
    async with manager:
        async with PluginWatcher(manager, debounce=QUICK) as watcher:
            await started(watcher)
            assert (tmp_path / "state").resolve() in watcher.roots
            # As `nyxplug install` does it: write into a dot folder, rename into place.
            staging = write_counter(store, ".install-pkg-x1", 9, "3.0.0", manifest_name="pkg")
            staging.rename(store / "pkg")
            name, status = await watcher.next_outcome(EVENT_TIMEOUT)
            assert name == "pkg" and isinstance(status, PluginStatus)
            assert (status.state, status.source) == ("active", "package")
            assert await serving(manager, sink, 9) == "3.0.0"
            await barrier(watcher, plugins)
            assert len(watcher.outcomes) == 1


async def test_a_plugin_directory_removed_and_made_again_is_watched_again(
    impl: Any, tmp_path: Path, plugins: Path, sink: Sink
) -> None:
    write_counter(plugins, "counter", 7)
    (tmp_path / "state").mkdir()
    async with manager_for(impl, tmp_path) as manager:
        async with PluginWatcher(manager, debounce=QUICK) as watcher:
            await started(watcher)
            shutil.rmtree(plugins)  # the inotify watch on the folder dies with it
            plugins.mkdir()
            write_counter(plugins, "late", 2)
            name, status = await watcher.next_outcome(EVENT_TIMEOUT)
            assert name == "late" and isinstance(status, PluginStatus)
            write_counter(plugins, "later", 3)  # only seen if the new folder is watched
            name, status = await watcher.next_outcome(EVENT_TIMEOUT)
            assert name == "later" and isinstance(status, PluginStatus)
            assert [n for n, _ in watcher.outcomes] == ["late", "later"]
            assert manager.status("counter").state == "active"  # its folder is gone: it runs on
            assert await serving(manager, sink, 7) == "1.0.0"


# -- polling, ignored paths, stopping -------------------------------------------------------


async def test_polling_mode_reloads_too(
    impl: Any, tmp_path: Path, plugins: Path, sink: Sink
) -> None:
    write_counter(plugins, "counter", 7, "1.0.0")
    async with manager_for(impl, tmp_path) as manager:
        watcher = PluginWatcher(manager, debounce=QUICK, force_polling=True, poll_interval=0.02)
        async with watcher:
            await started(watcher)
            assert watcher.mode == "polling"
            write_counter(plugins, "counter", 7, "1.1.0")
            name, result = await watcher.next_outcome(EVENT_TIMEOUT)
            assert isinstance(result, ReloadResult) and result.outcome == "swapped"
            assert await serving(manager, sink, 7) == "1.1.0"
            write_counter(plugins, "late", 8, "1.0.0")
            name, status = await watcher.next_outcome(EVENT_TIMEOUT)
            assert name == "late" and isinstance(status, PluginStatus)


async def test_ignored_paths_trigger_nothing(
    impl: Any, tmp_path: Path, plugins: Path, sink: Sink
) -> None:
    folder = write_counter(plugins, "counter", 7, "1.0.0")
    async with manager_for(impl, tmp_path) as manager:
        async with PluginWatcher(manager, debounce=QUICK) as watcher:
            await started(watcher)
            (folder / "__pycache__").mkdir()
            (folder / "__pycache__" / "main.cpython-311.pyc").write_bytes(b"\0" * 16)
            for junk in ("main.pyc", ".main.py.swp", "main.py.swp", "main.py~", "#main.py#"):
                (folder / junk).write_text("junk")
            (plugins / ".staging").mkdir()
            await barrier(watcher, plugins)
            assert watcher.outcomes == []
            assert watcher.ignored_changes >= 7  # 6 above (at least) and the barrier
            assert manager.status("counter").reloads.attempted == 0
            assert sink.calls("imported") == 1


#: Run in a child process whose user namespace allows no inotify watch or instance.
FALLBACK_SCRIPT = """
import asyncio, json, sys
from pathlib import Path
from nyxplug.plugins import PluginManager
from nyxplug.plugins.watch import PluginWatcher

async def main(plugins):
    manager = PluginManager(plugin_dirs=[plugins], require_signatures=False,
                            entry_points=False, include_registered=False)
    async with manager, PluginWatcher(manager, debounce=0.05, poll_interval=0.02) as watcher:
        async with asyncio.timeout(10):
            await watcher.ready.wait()
            main = plugins / "echo" / "main.py"
            main.write_text(main.read_text() + "# edited\\n")
            name, result = await watcher.next_outcome()
        print(json.dumps([watcher.mode, name, type(result).__name__, str(result)]))

asyncio.run(main(Path(sys.argv[1])))
"""


@pytest.mark.parametrize("limit", ["max_inotify_watches", "max_inotify_instances"])
def test_native_watcher_that_cannot_start_falls_back_to_polling(
    tmp_path: Path, plugins: Path, limit: str
) -> None:
    """A real inotify limit (0, in a user namespace of our own), not a mock."""
    unshare = shutil.which("unshare")
    if unshare is None or sys.platform != "linux":
        pytest.skip("needs Linux and unshare(1)")
    probe = subprocess.run([unshare, "-U", "-r", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"no unprivileged user namespaces here: {probe.stderr.decode().strip()}")
    write_plugin(plugins, "echo", 3)
    script = tmp_path / "fallback.py"
    script.write_text(textwrap.dedent(FALLBACK_SCRIPT))
    root = Path(__file__).resolve().parent.parent
    env = dict(os.environ, PYTHONPATH=str(root), WATCHFILES_FORCE_POLLING="")
    command = f'echo 0 > /proc/sys/user/{limit} && exec "$0" "$@"'
    done = subprocess.run(
        [unshare, "-U", "-r", "sh", "-c", command, sys.executable, str(script), str(plugins)],
        capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    mode, name, kind, text = json.loads(done.stdout.splitlines()[-1])
    assert (mode, name, kind) == ("polling", "echo", "ReloadResult"), text
    assert "The native file watcher could not start" in done.stderr
    assert "polling every 0.02 s instead" in done.stderr


async def test_closing_does_not_wait_for_the_debounce(impl: Any, tmp_path: Path) -> None:
    (tmp_path / "plugins").mkdir()
    manager = manager_for(impl, tmp_path)
    watcher = PluginWatcher(manager, debounce=60.0)  # would not even be armed for a minute
    async with watcher:
        for _ in range(20):
            await asyncio.sleep(0)  # ok-sleep: single yields, to let the watch start
    async with asyncio.timeout(EVENT_TIMEOUT):
        await watcher.aclose()  # closing twice is fine
    assert watcher._task is not None and watcher._task.done()


def test_watcher_is_importable_where_the_readme_says() -> None:
    """README: ``PluginWatcher(manager)`` from ``nyxplug.plugins`` (issue 15 item 23)."""
    import nyxplug.plugins
    from nyxplug.plugins import PluginWatcher
    from nyxplug.plugins.watch import PluginWatcher as defined

    assert PluginWatcher is defined
    assert "PluginWatcher" in nyxplug.plugins.__all__
