"""Watch plugin folders and the package store; reload what changed, load what appeared.

``PluginWatcher`` runs ``watchfiles.awatch`` over every plugin directory and the
package store, waits for a quiet period (the debounce) and then, for each plugin whose
folder changed, calls ``PluginManager.reload(name, if_changed=True)`` - so an editor
that writes a file twice, or a touch that changes no byte, costs at most one reload
and often none. A failed plugin whose folder changed is rediscovered and loaded; a new
folder is discovered and loaded - or, when it holds a new version of a running plugin
whose ``[rollout]`` says ``on_new_version = "canary"``, rolled out
(``PluginManager.roll_out_new_version``). Nothing a plugin does stops the watcher: failures are
logged (logger ``nyxplug.watch``) and recorded in ``outcomes``; only cancellation ends
it.

Change detection never waits for the event loop: watchfiles' Rust watcher runs in a
process of its own (``_watch_child.py``), which also does the debounce and writes each
finished batch as one line the loop reads. A loop saturated with frames therefore
delays only the reload itself, not noticing the change (``awatch`` ran one ``watch``
call per loop round trip in a worker thread, and any thread of ours needs our GIL,
which a busy uvloop loop hardly lets go; see ``benchmarks/reload.py``, the
``saturated`` rows).

Where inotify (or FSEvents...) cannot start - typically the per-user watch limit - it
falls back to polling, and says so in ``mode``. A watched folder that is removed and
made again is watched again, and whatever changed meanwhile is looked at.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import json
import logging
import math
import os
import platform
import sys
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import NamedTuple, TypeAlias

from watchfiles import Change

from .errors import (
    DependencyError,
    PluginLoadError,
    PluginNotFound,
    PluginStateError,
    ReloadFailed,
)
from .manager import PluginManager, PluginStatus
from .reload import ReloadResult

__all__ = ("ChangeFilter", "PluginWatcher", "WatchOutcome")

logger = logging.getLogger("nyxplug.watch")

#: Longest wait between two attempts to restart a watcher that failed (seconds).
MAX_RESTART_DELAY = 30.0
#: Shortest ``step`` (ms) handed to watchfiles: it sleeps ``step`` between looks, so 0 spins.
_MIN_STEP_MS = 10
#: An idle watch yields (and our loop runs) at most this often (ms); see ``run``.
_MIN_IDLE_MS = 100
#: With no plugin folder to watch, how often to look for one appearing (seconds).
_ROOTS_RECHECK = 1.0
#: Longest line of changes read from the watch process (bytes).
_MAX_BATCH_LINE = 64 * 1024 * 1024
#: Longest a burst of changes is grouped before it is handled anyway (ms, at least).
_MIN_BURST_MS = 1600

_EDITOR_SUFFIXES = (".pyc", ".pyo", ".swp", ".swo", ".swx", "~", "___jb_tmp___", "___jb_old___")

Outcome: TypeAlias = ReloadResult | PluginStatus | Exception
Fingerprint: TypeAlias = tuple[tuple[str, int, int, int], ...]


class WatchOutcome(NamedTuple):
    """What the watcher did about one plugin: a ``ReloadResult`` (``swapped`` /
    ``unchanged``), the ``PluginStatus`` of a plugin it loaded, or the failure."""

    name: str
    result: Outcome


class ChangeFilter:
    """Which changed paths can matter to a plugin (a ``watchfiles`` ``watch_filter``).

    Ignored, relative to the watched root (so a state dir called ``.nyxplug`` still
    counts): anything under a dot folder (the package store stages installs in
    ``.install-*`` folders and swaps old ones out to ``.old-*``) or ``__pycache__``,
    dot files (``.#x`` editor locks included), editor leftovers (``*.swp``, ``*~``,
    ``#x#``, JetBrains' ``___jb_tmp___``) and compiled ``*.pyc``: the runtime never
    imports those, so a change to them must not reload anything.
    """

    def __init__(self, roots: Iterable[Path]) -> None:
        self.roots = tuple(roots)

    def __call__(self, change: Change, path: str) -> bool:
        return self.relevant(Path(path))

    def relevant(self, path: Path) -> bool:
        """False for a path outside every root, or one a plugin never runs from."""
        root = _root_of(path, self.roots)
        if root is None:
            return False
        for part in path.relative_to(root).parts:
            if part.startswith(".") or part == "__pycache__":
                return False
        name = path.name
        if path != root and (
            name.endswith(_EDITOR_SUFFIXES) or (name.startswith("#") and name.endswith("#"))
        ):
            return False
        return True


def _root_of(path: Path, roots: Iterable[Path]) -> Path | None:
    for root in roots:
        if path == root or root in path.parents:
            return root
    return None


@dataclass
class _Plan:
    """What one batch of changes asks for."""

    reload: dict[str, Path] = field(default_factory=dict)  # active plugin -> its folder
    retry: set[Path] = field(default_factory=set)  # failed plugins' folders
    rescan: bool = False  # something changed outside every known folder
    ignored: int = 0  # paths no plugin runs from
    root_removed: bool = False  # a watched root itself was deleted


class PluginWatcher:
    """Hot reload driven by the file system, for one ``PluginManager``.

    ``async with PluginWatcher(manager) as watcher:`` watches in a task until the block
    ends; ``await watcher.ready.wait()`` before relying on a change being seen.
    ``debounce`` (seconds, default ``runtime.reload_debounce``) sets the quiet period:
    changes are handled once no new path changed for half of it (the watch process
    looks every 10 ms), so a burst of saves reloads once and a change is serving about half
    the debounce plus the reload later, however busy the event loop is.
    ``force_polling``: ``True`` polls every ``poll_interval`` seconds, ``False`` uses
    the native watcher only, ``None`` tries native and polls if it cannot start.

    What it did lands in ``outcomes`` (and ``reloads``); ``changed`` is notified on
    each, ``next_outcome()`` / ``wait_for()`` wait for them without polling.
    """

    def __init__(
        self,
        manager: PluginManager,
        *,
        debounce: float | None = None,
        force_polling: bool | None = None,
        poll_interval: float = 0.3,
    ) -> None:
        if debounce is None:
            debounce = manager.config.runtime.reload_debounce
        for label, value in (("debounce", debounce), ("poll_interval", poll_interval)):
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"Expected `{label}` in seconds >= 0, got {value!r}")
        self.manager = manager
        self.debounce = debounce
        self.poll_interval = poll_interval
        self.force_polling = force_polling
        #: "native" (inotify, FSEvents, ...) or "polling"; may turn to polling while running.
        self.mode = "polling" if _polling_wanted(force_polling) else "native"
        #: Set once the file system watch is armed: changes after this are seen.
        self.ready = asyncio.Event()
        #: Notified whenever an outcome is recorded and after every batch of changes.
        self.changed = asyncio.Condition()
        #: (plugin name, outcome) for everything the watcher did, newest last.
        self.outcomes: list[WatchOutcome] = []
        #: The outcomes alone (``ReloadResult``, ``PluginStatus`` or the failure).
        self.reloads: list[Outcome] = []
        self.batches = 0  # batches of file changes handled
        self.ignored_changes = 0  # changed paths no plugin runs from (see ChangeFilter)
        self.roots: tuple[Path, ...] = ()  # what watchfiles watches now
        self._stop = asyncio.Event()
        self._busy = False  # acting on a batch: not the moment to cancel (see aclose)
        self._recheck: dict[Path, float] = {}  # polling: folder -> when to look again
        self._rescan_due: float | None = None
        self._tried: dict[Path, Fingerprint] = {}  # failed plugin's folder as it last failed
        self._unwatched: set[Path] = set()  # missing folders already warned about
        self._rewatch = False  # a watched root was removed: its watch is gone
        self._task: asyncio.Task[None] | None = None

    # -- what there is to watch ----------------------------------------------------------

    def _watch_roots(self) -> tuple[tuple[Path, ...], tuple[Path, ...]]:
        """(folders to hand to watchfiles, folders plugins live in).

        The package store is created by the first ``nyxplug install``, not by us: until
        it exists the state dir is watched, so that first install is seen too.
        """
        plugin_roots = [Path(d).resolve() for d in self.manager.plugin_dirs]
        watched = [d for d in plugin_roots if d.is_dir()]
        for missing in sorted(set(plugin_roots) - set(watched) - self._unwatched):
            self._unwatched.add(missing)  # said once, not on every restart
            logger.warning("Plugin directory %s does not exist - not watched", missing)
        package_dir = self.manager.package_dir
        if package_dir is not None:
            package_dir = package_dir.resolve()
            plugin_roots.append(package_dir)
            state_dir = package_dir.parent
            if package_dir.is_dir():
                watched.append(package_dir)
            elif state_dir.is_dir():
                watched.append(state_dir)
            elif state_dir not in self._unwatched:
                self._unwatched.add(state_dir)
                logger.warning(
                    "State dir %s does not exist - installed packages are not watched", state_dir
                )
        return tuple(dict.fromkeys(watched)), tuple(dict.fromkeys(plugin_roots))

    # -- running -------------------------------------------------------------------------

    async def run(self) -> None:
        """Watch until ``aclose()`` (or cancellation); survives anything else."""
        process = _WatchProcess()
        try:
            await self._watch(process)
        finally:
            await process.aclose()

    async def _watch(self, process: _WatchProcess) -> None:
        # Quiet for half the debounce: runtime.reload_debounce promises "half to all".
        quiet = max(_MIN_STEP_MS, round(self.debounce * 500))
        failures = 0
        catch_up = False
        while not self._stop.is_set():
            watched, plugin_roots = self._watch_roots()
            self.roots = watched
            relevant = ChangeFilter(plugin_roots)
            identity = _identity(watched)
            if not watched:
                if not self.ready.is_set():
                    logger.warning("No plugin folder exists yet - watching for one to appear")
                self.ready.set()
                catch_up = True
                await self._wait_stop(_ROOTS_RECHECK)
                continue
            armed = False
            try:
                # A batch comes once no new path changed for `quiet` ms (a busy burst is
                # cut at `burst` ms); with no change an empty set comes every `idle` ms:
                # the first of either means the watch is armed, idle ones let rechecks
                # run. Unfiltered, so ignored changes are counted (see _plan).
                changes = process.batches(
                    watched,
                    quiet=quiet,
                    burst=max(_MIN_BURST_MS, 4 * quiet),
                    idle=max(quiet, _MIN_IDLE_MS),
                    force_polling=self.mode == "polling",
                    poll_delay_ms=max(1, round(self.poll_interval * 1000)),
                )
                async with contextlib.aclosing(changes):
                    async for batch in changes:
                        if not armed:
                            armed, failures = True, 0
                            self._armed(watched)
                        if self._stop.is_set():
                            break
                        if batch:
                            await self._handle(batch, relevant)
                        if catch_up:  # changes while no watch was armed went unseen
                            catch_up = False
                            await self._catch_up()
                        if self._recheck or self._rescan_due is not None:
                            await self._recheck_due()
                        if self._stop.is_set():  # asked while acting: no need to wait a step
                            break
                        now, _ = self._watch_roots()
                        if self._rewatch or now != watched or _identity(now) != identity:
                            self._rewatch = False
                            # A root was removed or replaced (its watch died with it), or
                            # one appeared: watch what is there now, and look again.
                            logger.info("Plugin folders changed - watching them anew")
                            catch_up = True
                            break
                if self._stop.is_set():
                    return
            except Exception as exc:
                gone = isinstance(exc, FileNotFoundError)  # a root vanished: not inotify's fault
                if self.mode == "native" and self.force_polling is None and not gone:
                    logger.warning(
                        "The native file watcher %s (%s: %s) - polling every %g s instead",
                        "failed" if armed else "could not start",
                        type(exc).__name__, exc, self.poll_interval,
                    )  # fmt: skip
                    self.mode = "polling"
                    if not armed:
                        continue
                else:
                    logger.error(
                        "The %s file watcher failed: %s: %s", self.mode, type(exc).__name__, exc
                    )
                failures += 1
                catch_up = catch_up or armed or self.ready.is_set()
                await self._wait_stop(min(MAX_RESTART_DELAY, 0.5 * 2 ** (failures - 1)))

    async def _wait_stop(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._stop.wait()

    def _armed(self, watched: tuple[Path, ...]) -> None:
        logger.info("Watching %s for plugin changes (%s)", ", ".join(map(str, watched)), self.mode)
        known = self.manager.watched_paths()
        states = {status.name: status.state for status in self.manager.catalog()}
        for folder, name in known.items():
            if states.get(name) == "failed" and folder not in self._tried:
                self._tried[folder] = _fingerprint(folder)  # retried once it differs
        if self.mode == "polling":
            # Edits in the second the first scan ran are invisible to the poller.
            self._recheck_later([f for f, n in known.items() if states.get(n) == "active"], True)
        self.ready.set()

    async def _handle(self, batch: set[tuple[Change, str]], relevant: ChangeFilter) -> None:
        """Act once per plugin on one batch of changes; a bug here never ends the watch."""
        ignored = 0
        try:
            plan = self._plan(batch, relevant)
            ignored = plan.ignored
            self._rewatch = self._rewatch or plan.root_removed
            if self.mode == "polling":
                self._recheck_later([*plan.reload.values(), *plan.retry], plan.rescan)
            await self._act(list(plan.reload), plan.retry, plan.rescan)
        except Exception:
            logger.exception("Watcher: handling a batch of changes raised - watching on")
        finally:
            self.batches += 1
            self.ignored_changes += ignored
            async with self.changed:
                self.changed.notify_all()

    def _plan(self, batch: set[tuple[Change, str]], relevant: ChangeFilter) -> _Plan:
        known = self.manager.watched_paths()
        plan = _Plan()
        gone: set[str] = set()
        for change, raw in sorted(batch, key=lambda item: item[1]):
            path = Path(raw)
            if change is Change.deleted and path in self.roots:
                plan.root_removed = True
            if not relevant.relevant(path):
                plan.ignored += 1
                continue
            folder = next((p for p in (path, *path.parents) if p in known), None)
            if folder is None:
                plan.rescan = True
                continue
            name = known[folder]
            state = self.manager.status(name).state
            if state == "active" and folder.is_dir():
                plan.reload[name] = folder
            elif state == "active" and name not in gone:
                gone.add(name)
                logger.info(
                    "Folder of plugin %r is gone (%s) - it keeps running until unloaded",
                    name, folder,
                )  # fmt: skip
            elif state == "failed":
                plan.retry.add(folder)
            elif state != "active":
                logger.debug("Plugin %r changed while %s - left alone", name, state)
        return plan

    # Polling (notify's PollWatcher, as bundled with watchfiles 1.x) compares file mtimes
    # in whole seconds: a second edit within the same second as the one it saw (or as
    # its first scan) goes unseen. So in polling mode every folder it reported is looked
    # at again once that second is over - ``reload(if_changed=True)`` compares bytes, so
    # the look costs a read and changes nothing when nothing changed.

    def _recheck_later(self, folders: Iterable[Path], rescan: bool) -> None:
        due = math.floor(time.time()) + 1 + self.debounce  # file times use the wall clock
        for folder in folders:
            self._recheck[folder] = due
        if rescan:
            self._rescan_due = due

    async def _recheck_due(self) -> None:
        now = time.time()
        due = sorted(folder for folder, when in self._recheck.items() if when <= now)
        for folder in due:
            del self._recheck[folder]
        rescan = self._rescan_due is not None and self._rescan_due <= now
        if rescan:
            self._rescan_due = None
        if due or rescan:
            await self._again(due, rescan)

    async def _catch_up(self) -> None:
        """After a restart: look at every folder again."""
        await self._again(list(self.manager.watched_paths()), True)

    async def _again(self, folders: list[Path], rescan: bool) -> None:
        """Reload (if changed) the active plugins in ``folders``; retry the failed ones
        whose folder differs from when they last failed; load new ones if ``rescan``."""
        try:
            known = self.manager.watched_paths()
            states = {status.name: status.state for status in self.manager.catalog()}
            reload = [
                known[f] for f in folders
                if states.get(known.get(f, "")) == "active" and f.is_dir()
            ]  # fmt: skip
            retry = {
                f for f in folders
                if states.get(known.get(f, "")) == "failed"
                and self._tried.get(f) != _fingerprint(f)
            }  # fmt: skip
            await self._act(reload, retry, rescan, quiet=True)
        except Exception:
            logger.exception("Watcher: looking at plugin folders again raised - watching on")
        async with self.changed:
            self.changed.notify_all()

    async def _act(
        self, reload: list[str], retry: set[Path], rescan: bool, *, quiet: bool = False
    ) -> None:
        """Reload, then rediscover and load; ``quiet``: an unchanged plugin is not news."""
        self._busy = True
        try:
            for name in self._ordered(reload):
                if self._stop.is_set():
                    return
                reloading = partial(self.manager.reload, name, if_changed=True)
                await self._attempt(name, reloading, quiet=quiet)
            if not retry and not rescan:
                return
            versions = {status.name: status.versions for status in self.manager.catalog()}
            before = set(versions)
            self.manager.discover()
            for status in self.manager.catalog():  # a new version of a running plugin
                if status.state == "active" and set(status.versions) - set(
                    versions.get(status.name, ())
                ):
                    rolling = partial(self.manager.roll_out_new_version, status.name)
                    await self._attempt(status.name, rolling, quiet=True)
            known = self.manager.watched_paths()
            for folder in retry:
                self._tried[folder] = _fingerprint(folder)
            wanted = [known[folder] for folder in sorted(retry) if folder in known]
            if rescan:
                wanted += [name for name in sorted(known.values()) if name not in before]
            loadable = []
            for name in dict.fromkeys(wanted):
                status = self.manager.status(name)
                if status.state == "validated" and status.enabled:
                    loadable.append(name)
                elif status.state == "failed":  # e.g. a manifest that does not parse (yet)
                    failure = PluginLoadError(name, "discovery", status.reason or "failed")
                    logger.warning("%s", failure)
                    await self._record(name, failure)
            for name in self._ordered(loadable):
                if self._stop.is_set():
                    return
                await self._attempt(name, partial(self.manager.load, name))
        finally:
            self._busy = False

    def _ordered(self, names: list[str]) -> list[str]:
        """Dependencies first, so a dependent's checks see its dependency's new version."""
        try:
            order = self.manager.load_order(names)
        except (DependencyError, PluginNotFound):
            return sorted(names)
        wanted = set(names)
        return [name for name in order if name in wanted]

    async def _attempt(
        self,
        name: str,
        action: Callable[[], Awaitable[ReloadResult | PluginStatus]],
        *,
        quiet: bool = False,
    ) -> None:
        try:
            result = await action()
        except ReloadFailed as exc:  # the manager logged it, with the details
            await self._record(name, exc)
        except (PluginLoadError, PluginStateError, PluginNotFound, DependencyError) as exc:
            logger.warning("%s", exc)
            await self._record(name, exc)
        except Exception as exc:  # a bug, not a plugin's failure: keep watching anyway
            logger.exception("Watcher: handling a change to plugin %r raised", name)
            await self._record(name, exc)
        else:
            if isinstance(result, PluginStatus):
                logger.info("Plugin %r %s loaded (its folder changed)", name, result.version)
            elif quiet and result.outcome == "unchanged":
                return
            await self._record(name, result)

    async def _record(self, name: str, result: Outcome) -> None:
        self.outcomes.append(WatchOutcome(name, result))
        self.reloads.append(result)
        async with self.changed:
            self.changed.notify_all()

    # -- waiting for what the watcher did ----------------------------------------------

    async def wait_for(self, predicate: Callable[[], bool], timeout: float | None = None) -> None:
        """Return once ``predicate()`` holds; checked whenever the watcher did something."""
        async with asyncio.timeout(timeout), self.changed:
            await self.changed.wait_for(predicate)

    async def next_outcome(self, timeout: float | None = None) -> WatchOutcome:
        """The first outcome recorded after this call (``TimeoutError`` after ``timeout``)."""
        seen = len(self.outcomes)
        await self.wait_for(lambda: len(self.outcomes) > seen, timeout)
        return self.outcomes[seen]

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Run the watcher in a task of the running loop (``async with`` does this)."""
        if self._task is not None:
            raise RuntimeError("Expected a watcher that was not started yet, got a started one")
        self._task = asyncio.get_running_loop().create_task(self.run(), name="nyxplug-watch")

    async def aclose(self) -> None:
        """Stop watching; a reload or load in progress finishes first."""
        self._stop.set()
        task = self._task
        if task is None:
            return
        if not self._busy:
            task.cancel()  # waiting in watchfiles: nothing to finish
        try:
            await asyncio.wait([task])
        except asyncio.CancelledError:
            task.cancel()  # our caller is in a hurry: stop acting too
            raise
        if not task.cancelled() and (exc := task.exception()) is not None:
            logger.error("The plugin watcher ended with %s: %s", type(exc).__name__, exc)

    async def __aenter__(self) -> PluginWatcher:
        self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


class _WatchProcess:
    """The file watch in a process of its own (``_watch_child.py``), which also debounces.

    The child groups changes until no new path changed for ``quiet`` ms (or ``burst``
    ms passed since the first) and writes each finished batch as one line; an empty
    set comes every ``idle`` ms without changes. The loop only reads those lines, so
    how busy it is changes neither when a change is noticed nor how long it is grouped
    (a thread of this process would need our GIL between looks). One child serves a
    watcher's life: ``batches()`` hands it the folders to watch now (it keeps watching
    the old ones until then, so a re-arm loses no change); ``aclose()`` ends it.
    """

    def __init__(self) -> None:
        self._child: asyncio.subprocess.Process | None = None
        self._gen = 0

    async def batches(
        self,
        paths: Iterable[Path],
        *,
        quiet: int,
        burst: int,
        idle: int,
        force_polling: bool,
        poll_delay_ms: int,
    ) -> AsyncGenerator[set[tuple[Change, str]], None]:
        if self._child is None:
            self._child = await asyncio.create_subprocess_exec(
                sys.executable, "-I", str(Path(__file__).with_name("_watch_child.py")),
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                limit=_MAX_BATCH_LINE,
            )  # fmt: skip
        child = self._child
        assert child.stdout is not None and child.stdin is not None
        self._gen += 1
        gen = self._gen
        options = {
            "gen": gen, "paths": [str(path) for path in paths], "quiet": quiet,
            "burst": burst, "idle": idle, "force_polling": force_polling,
            "poll_delay_ms": poll_delay_ms,
        }  # fmt: skip
        child.stdin.write(json.dumps(options).encode() + b"\n")
        await child.stdin.drain()
        while line := await child.stdout.readline():
            message = json.loads(line)
            if "error" in message:
                if message["gen"] == gen:  # an older watch's failure is old news
                    raise _child_error(message["error"], message["message"])
            elif "idle" in message:
                yield set()
            else:  # changes seen by an older watch too: they happened
                yield {(Change(change), path) for change, path in message["changes"]}
        code = await child.wait()
        self._child = None
        raise RuntimeError(f"the watch process ended (exit status {code})")

    async def aclose(self) -> None:
        """End the child (killed at once: it holds no state), then reap it."""
        child, self._child = self._child, None
        if child is None:
            return
        if child.stdin is not None:
            child.stdin.close()
        if child.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                child.kill()
        await child.wait()


def _child_error(name: str, message: str) -> Exception:
    """The watch process's failure as the exception it was (for the fallback rules)."""
    kind = getattr(builtins, name, None)
    if isinstance(kind, type) and issubclass(kind, Exception):
        return kind(message)
    return RuntimeError(f"{name}: {message}")


def _polling_wanted(force_polling: bool | None) -> bool:
    """``force_polling``, or for ``None`` watchfiles' own rule: the environment says so
    (``WATCHFILES_FORCE_POLLING``), or this is WSL, whose Windows drives send no events."""
    if force_polling is not None:
        return force_polling
    env = os.environ.get("WATCHFILES_FORCE_POLLING", "")
    if env:
        return env.lower() not in {"false", "disable", "disabled"}
    uname = platform.uname()
    return uname.system.lower() == "linux" and "microsoft-standard" in uname.release.lower()


def _fingerprint(folder: Path) -> Fingerprint:
    """(path, size, mtime in ns, inode) of every file a plugin may run from: a cheap way to
    tell that a failed plugin's folder changed without trying to load it again."""
    relevant = ChangeFilter([folder])
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if relevant.relevant(Path(dirpath, d))]
        for filename in filenames:
            path = Path(dirpath, filename)
            if not relevant.relevant(path):
                continue
            try:
                info = path.stat()
            except OSError:
                continue
            rel = path.relative_to(folder).as_posix()
            found.append((rel, info.st_size, info.st_mtime_ns, info.st_ino))
    return tuple(sorted(found))


def _identity(folders: Iterable[Path]) -> tuple[tuple[int, int] | None, ...]:
    """(device, inode) per folder: a folder removed and made again is another watch."""
    found: list[tuple[int, int] | None] = []
    for folder in folders:
        try:
            info = folder.stat()
        except OSError:
            found.append(None)
        else:
            found.append((info.st_dev, info.st_ino))
    return tuple(found)
