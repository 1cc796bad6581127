"""Versions side by side in the plugin runtime (issue 19, items 4-6): discovery keeps every
version of a plugin, ``PluginManager`` loads them beside the stable one and rolls them out
with its own ``Rollouts``; promotions are remembered across restarts; the recovery
ladder's ``rollback`` rung goes back to the previous good version; each loaded version
has its own health checks.

Real plugin folders, a real ``PluginManager`` on both twins and both loops. Rollouts run
on a fake clock the tests move by hand, then ``await manager.tick_rollouts()`` (one pass
of the manager's rollout task); nothing sleeps.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from isolation_helpers import FAST
from nyx_helpers import DATA
from plugin_helpers import RECORDER, manifest_text

from nyxplug import BreakerState, CircuitOpen, PluginHeader
from nyxplug._stats import PluginStats
from nyxplug.config import ConfigError, DefaultsSection, HostConfig, RuntimeSection, load_config
from nyxplug.plugins import (
    ManifestError,
    PluginLoadError,
    PluginManager,
    PluginWatcher,
    RecoveryConfig,
    RolloutConfig,
    RolloutStateError,
    RolloutStatus,
    StepStats,
    VersionNotFound,
    VersionStateError,
    VersionStatus,
)
from nyxplug.plugins.reload import ReloadResult
from nyxplug.plugins.versions import StableVersions, rollout_config
from nyxplug.source.manifest import decode_manifest

WAIT = 10.0
PID = 41

#: Fails every frame (a bad release).
FAILING = """
from nyxplug.plugins import Plugin

class Entry(Plugin):
    async def handle(self, message):
        raise RuntimeError("version 2 is broken")
"""

#: Health hooks the test flips through class attributes (shared by every instance).
FLAKY = """
from nyxplug.plugins import Plugin

class Entry(Plugin):
    live = True
    ready_now = True

    async def handle(self, message):
        pass

    async def health(self):
        return Entry.live

    async def ready(self):
        return Entry.ready_now
"""


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def write_version(
    root: Path, name: str, version: str, code: str = RECORDER, *, plugin_id: int = PID,
    **manifest: Any,
) -> Path:  # fmt: skip
    """``root/<name>-<version>/``: one version of plugin ``name``."""
    folder = root / f"{name}-{version}"
    folder.mkdir(parents=True)
    (folder / "nyxplug.toml").write_text(
        manifest_text(name, plugin_id, version=version, **manifest)
    )
    (folder / "main.py").write_text(code)
    return folder


def manager_for(
    impl: Any, root: Path, clock: Callable[[], float] | None = None, **options: Any
) -> PluginManager:
    runtime = RuntimeSection(**options.pop("runtime", {}))
    return PluginManager(
        HostConfig(runtime=runtime, defaults=DefaultsSection(**options), isolation=FAST),
        dispatcher=impl.Dispatcher(), plugin_dirs=[root], state_dir=root / ".state",
        entry_points=False, include_registered=False, require_signatures=False, clock=clock,
    )  # fmt: skip


async def send(manager: PluginManager, n: int, start: int = 0) -> int:
    """``n`` keyed frames (keys ``start..start+n``), handled; returns how many were sent."""
    d = manager.dispatcher
    header = PluginHeader(PID).encode()
    for key in range(start, start + n):
        try:
            await d.dispatch(DATA, header, b"%d" % key, key=key)
        except CircuitOpen:
            pass  # refused: counted on its lane (circuit_open)
    async with asyncio.timeout(WAIT):
        await d.wait_idle(PID)  # every version's lane
    return n


async def senders(
    manager: PluginManager, n: int, *, start: int = 0, tasks: int = 4,
    midway: Callable[[], object] | None = None,
) -> int:  # fmt: skip
    """``n`` keyed frames from ``tasks`` concurrent senders; ``midway()`` (an action, maybe
    a coroutine) runs once half of them are sent, while the others keep sending."""
    d = manager.dispatcher
    header = PluginHeader(PID).encode()
    sent = 0
    half = asyncio.Event()

    async def one(offset: int) -> None:
        nonlocal sent
        for i in range(offset, n, tasks):
            try:
                await d.dispatch(DATA, header, b"x", key=start + i)
            except CircuitOpen:
                pass  # shed by a breaker: counted on its lane
            sent += 1
            if sent == n // 2:
                half.set()
            await asyncio.sleep(0)  # ok-sleep: a single yield, never a wait for work

    async def action() -> None:
        await half.wait()
        result = midway() if midway is not None else None
        if asyncio.iscoroutine(result):
            await result

    async with asyncio.timeout(WAIT):
        await asyncio.gather(*(one(k) for k in range(tasks)), action())
        await d.wait_idle(PID)
    assert sent == n
    return n


def accounted(stats: dict[str, PluginStats]) -> int:
    """Frames a plugin's lanes took or refused: each is in exactly one count."""
    return sum(
        s.messages_processed + s.dropped + s.queue_depth + s.circuit_open for s in stats.values()
    )


def roles(manager: PluginManager, name: str = "geo") -> dict[str, str]:
    return {v.version: v.role for v in manager.versions(name)}


def audit(manager: PluginManager, event: str) -> list[dict[str, Any]]:
    assert manager.audit is not None
    return [e for e in manager.audit.entries() if e["event"] == event]


# -- discovery ---------------------------------------------------------------------------


async def test_every_version_found_is_listed_and_the_highest_runs(
    impl: Any, tmp_path: Path
) -> None:
    write_version(tmp_path, "geo", "1.0.0")
    write_version(tmp_path, "geo", "1.10.0")
    write_version(tmp_path, "geo", "1.9.0")
    async with manager_for(impl, tmp_path) as manager:
        status = manager.status("geo")
        assert (status.version, status.state) == ("1.10.0", "active")
        assert status.versions == ("1.0.0", "1.9.0", "1.10.0")  # semver order, not text
        assert [(v.version, v.role, v.loaded) for v in manager.versions("geo")] == [
            ("1.0.0", "available", False), ("1.9.0", "available", False),
            ("1.10.0", "stable", True),
        ]  # fmt: skip
        stable = manager.versions("geo")[-1]
        assert stable.location == str(tmp_path / "geo-1.10.0") and stable.weight == 100.0
        assert stable.stats is not None and stable.stats.messages_processed == 0
        assert manager.discovery_errors == []
        assert [s.name for s in manager.catalog()] == ["geo"]


async def test_a_version_with_another_id_is_refused_with_the_fix(impl: Any, tmp_path: Path) -> None:
    write_version(tmp_path, "geo", "1.0.0")
    write_version(tmp_path, "geo", "2.0.0", plugin_id=PID + 1)
    manager = manager_for(impl, tmp_path)
    manager.discover()
    assert manager.status("geo").versions == ("1.0.0",)
    assert manager.discovery_errors == [
        f"Expected every version of plugin 'geo' to keep id {PID} (as "
        f"{tmp_path / 'geo-1.0.0'} does), got id {PID + 1} for version 2.0.0 at "
        f"{tmp_path / 'geo-2.0.0'} - it is ignored; give it the same [plugin] id, or another "
        "name"
    ]


async def test_one_name_and_version_twice_keeps_the_ignored_warning(
    impl: Any, tmp_path: Path
) -> None:
    write_version(tmp_path, "geo", "1.0.0")
    other = tmp_path / "geo-copy"
    other.mkdir()
    (other / "nyxplug.toml").write_text(manifest_text("geo", PID, version="1.0.0"))
    manager = manager_for(impl, tmp_path)
    manager.discover()
    assert manager.status("geo").versions == ("1.0.0",)
    assert manager.discovery_errors == [
        f"Plugin 'geo' at {other} is ignored: the name is already taken by "
        f"{tmp_path / 'geo-1.0.0'} - rename one of them"
    ]


# -- load and unload a version -------------------------------------------------------------


async def test_load_and_unload_a_version_beside_the_stable_one(impl: Any, tmp_path: Path) -> None:
    write_version(tmp_path, "geo", "1.0.0")
    write_version(tmp_path, "geo", "2.0.0")
    async with manager_for(impl, tmp_path) as manager:
        loaded = await manager.load_version("geo", "1.0.0", caller="ops")
        assert isinstance(loaded, VersionStatus)
        assert (loaded.role, loaded.loaded, loaded.weight) == ("loaded", True, 0.0)
        assert loaded.stats == PluginStats()
        assert roles(manager) == {"1.0.0": "loaded", "2.0.0": "stable"}
        # It takes no frames until a rollout routes some to it.
        await send(manager, 20)
        by_version = {v.version: v.stats for v in manager.versions("geo")}
        assert by_version["2.0.0"] is not None and by_version["2.0.0"].messages_processed == 20
        assert by_version["1.0.0"] == PluginStats()
        with pytest.raises(VersionStateError, match=r"it is loaded already"):
            await manager.load_version("geo", "1.0.0")
        with pytest.raises(VersionNotFound, match=re.escape("got '3.0.0' - found: 1.0.0, 2.0.0")):
            await manager.load_version("geo", "3.0.0")
        with pytest.raises(VersionStateError, match=r"it is the stable version - make another"):
            await manager.unload_version("geo", "2.0.0")
        instance = manager._record("geo").lanes["1.0.0"].instance
        stats = await manager.unload_version("geo", "1.0.0", caller="ops")
        assert stats.messages_processed == 0 and instance.unloaded
        assert roles(manager) == {"1.0.0": "available", "2.0.0": "stable"}
        with pytest.raises(VersionStateError, match=r"it is not loaded"):
            await manager.unload_version("geo", "1.0.0")
        lines = [(e["decision"], e["version"], e.get("caller")) for e in audit(manager, "version")]
        assert lines == [("loaded", "1.0.0", "ops"), ("unloaded", "1.0.0", "ops")]


async def test_the_breaker_of_a_loaded_version_is_set_by_its_version(
    impl: Any, tmp_path: Path
) -> None:
    for version in ("1.0.0", "2.0.0", "3.0.0"):
        write_version(tmp_path, "geo", version)
    async with manager_for(impl, tmp_path) as manager:
        await manager.load_version("geo", "2.0.0")
        assert manager.breaker("geo", version="2.0.0") is None  # none configured
        with pytest.raises(VersionStateError, match=r"^Cannot show the circuit breaker of"):
            manager.breaker("geo", version="1.0.0")  # found, not loaded
        # A version beside the stable one gets the default breaker, then the state.
        stats = manager.set_breaker_state("geo", BreakerState.FORCED_OPEN, version="2.0.0",
                                          caller="ops")  # fmt: skip
        assert stats.state is BreakerState.FORCED_OPEN
        assert manager.breaker("geo", version="2.0.0") == stats
        assert manager.breaker("geo") is None  # the stable one's is untouched
        by_version = {v.version: v.breaker for v in manager.versions("geo")}
        assert by_version["2.0.0"] is not None
        assert by_version["2.0.0"].state is BreakerState.FORCED_OPEN
        # The stable version by its version string is the stable lane.
        manager.set_breaker_state("geo", BreakerState.METRICS_ONLY, version="3.0.0", caller="ops")
        stable = manager.breaker("geo")
        assert stable is not None and stable.state is BreakerState.METRICS_ONLY
        assert manager.breaker("geo", version="3.0.0") == stable
        with pytest.raises(VersionStateError) as not_loaded:
            manager.set_breaker_state("geo", BreakerState.CLOSED, version="1.0.0")
        assert str(not_loaded.value) == (
            "Cannot set the circuit breaker of version 1.0.0 of plugin 'geo': it is not loaded "
            "(loaded: 2.0.0 (loaded), 3.0.0 (stable)) - load it first: `nyxplug versions geo "
            "--load 1.0.0` (load_version)"
        )
        with pytest.raises(VersionNotFound) as unknown:
            manager.set_breaker_state("geo", BreakerState.CLOSED, version="9.0.0")
        assert str(unknown.value) == (
            "Expected a loaded version of plugin 'geo', got '9.0.0' - loaded: 2.0.0 (loaded), "
            "3.0.0 (stable); found: 1.0.0, 2.0.0, 3.0.0 (`nyxplug versions geo` lists them)"
        )
        with pytest.raises(VersionNotFound):
            manager.breaker("geo", version="9.0.0")
        lines = [(e["state"], e.get("version"), e["caller"])
                 for e in audit(manager, "breaker") if e["decision"] == "set"]  # fmt: skip
        assert lines == [("forced_open", "2.0.0", "ops"), ("metrics_only", "3.0.0", "ops")]


async def test_a_candidate_taken_out_by_its_breaker_is_neither_rolled_out_nor_promoted(
    impl: Any, tmp_path: Path
) -> None:
    for version in ("1.0.0", "2.0.0"):
        write_version(tmp_path, "geo", version)
    async with manager_for(impl, tmp_path) as manager:
        await manager.load_version("geo", "1.0.0")
        manager.set_breaker_state("geo", BreakerState.FORCED_OPEN, version="1.0.0")
        with pytest.raises(RolloutStateError) as refused:
            await manager.start_rollout("geo", "1.0.0")
        assert str(refused.value) == (
            "Cannot start a rollout of plugin 'geo': version 1.0.0's circuit breaker is forced "
            "open (an operator forced it open): as the stable version it would refuse every "
            "frame - close it first: `nyxplug breaker geo --version 1.0.0 --set closed`"
        )
        assert manager.rollout("geo") is None
        manager.set_breaker_state("geo", BreakerState.CLOSED, version="1.0.0")
        await manager.start_rollout("geo", "1.0.0")
        manager.set_breaker_state("geo", BreakerState.FORCED_OPEN, version="1.0.0")
        with pytest.raises(RolloutStateError, match=r"^Cannot promote the rollout of plugin "
                           r"'geo': version 1.0.0's circuit breaker is forced open"):  # fmt: skip
            manager.rollout_action("geo", "promote")
        status = manager.rollout("geo")
        assert status is not None and status.state == "progressing"
        assert manager.rollout_action("geo", "abort").state == "aborted"


async def test_at_most_max_versions_are_loaded(impl: Any, tmp_path: Path) -> None:
    for version in ("1.0.0", "1.1.0", "1.2.0"):
        write_version(tmp_path, "geo", version)
    async with manager_for(impl, tmp_path, runtime={"max_versions": 2}) as manager:
        await manager.load_version("geo", "1.0.0")
        with pytest.raises(VersionStateError, match=r"2 versions are loaded already"):
            await manager.load_version("geo", "1.1.0")


# -- rollouts --------------------------------------------------------------------------------

CANARY = RolloutConfig.canary(
    steps=(10.0, 50.0), interval=60.0, min_frames=20, threshold=1, rollback_window=120.0
)


async def new_version_appears(manager: PluginManager, root: Path, code: str = RECORDER) -> None:
    write_version(root, "geo", "2.0.0", code)
    manager.discover()
    assert roles(manager) == {"1.0.0": "stable", "2.0.0": "available"}


async def test_a_canary_is_promoted_and_the_old_version_retired(impl: Any, tmp_path: Path) -> None:
    write_version(tmp_path, "geo", "1.0.0")
    clock = Clock()
    async with manager_for(impl, tmp_path, clock) as manager:
        await new_version_appears(manager, tmp_path)
        status = await manager.start_rollout("geo", "2.0.0", CANARY, caller="alice")
        assert isinstance(status, RolloutStatus)
        assert (status.stable, status.candidate, status.strategy, status.state) == (
            "1.0.0", "2.0.0", "canary", "progressing",
        )  # fmt: skip
        assert {v.version: (v.role, v.weight) for v in manager.versions("geo")} == {
            "1.0.0": ("stable", 90.0), "2.0.0": ("candidate", 10.0),
        }  # fmt: skip
        sent = await send(manager, 1000)
        clock.now += 60
        await manager.tick_rollouts()
        assert manager.rollout("geo").weight == 50.0  # type: ignore[union-attr]
        sent += await send(manager, 1000, start=1000)
        stats = manager.dispatcher.version_stats(PID)
        assert accounted(stats) == sent  # every frame, on one lane or the other
        assert all(s.messages_processed for s in stats.values())
        clock.now += 60
        await manager.tick_rollouts()
        status = manager.rollout("geo")  # type: ignore[assignment]
        assert status.state == "promoted"
        assert manager.status("geo").version == "2.0.0"
        assert roles(manager) == {"1.0.0": "warm", "2.0.0": "stable"}
        state = json.loads((tmp_path / ".state" / "versions.json").read_text())
        assert state == {"plugins": {"geo": {"stable": "2.0.0", "previous": ["1.0.0"]}}}
        sent += await send(manager, 100, start=2000)
        stats = manager.dispatcher.version_stats(PID)
        assert accounted(stats) == sent
        warm_processed = stats["base"].messages_processed
        # The rollback window ends: the old version is drained and unloaded.
        clock.now += 120
        await manager.tick_rollouts()
        assert manager.rollout("geo").state == "succeeded"  # type: ignore[union-attr]
        assert roles(manager) == {"1.0.0": "available", "2.0.0": "stable"}
        assert list(manager.dispatcher.version_stats(PID)) == ["2.0.0"]
        kinds = [(e["decision"], e["version"], e["stable"]) for e in audit(manager, "rollout")]
        assert kinds == [
            ("started", "2.0.0", "1.0.0"), ("check_passed", "2.0.0", "1.0.0"),
            ("step", "2.0.0", "1.0.0"), ("check_passed", "2.0.0", "1.0.0"),
            ("promoted", "2.0.0", "1.0.0"), ("finalised", "2.0.0", "1.0.0"),
        ]  # fmt: skip
        assert audit(manager, "rollout")[0]["caller"] == "alice"
        versions = [(e["decision"], e["version"]) for e in audit(manager, "version")]
        assert versions == [("loaded", "2.0.0"), ("stable", "2.0.0"), ("unloaded", "1.0.0")]
        retired = audit(manager, "version")[-1]
        assert retired["processed"] == warm_processed
        assert (retired["dropped"], retired["refused"]) == (0, 0)
        total = accounted(manager.dispatcher.version_stats(PID)) + retired["processed"]
        assert total == sent


async def test_the_task_judges_a_rollout_when_it_is_due_by_itself(
    impl: Any, tmp_path: Path
) -> None:
    write_version(tmp_path, "geo", "1.0.0")
    async with manager_for(impl, tmp_path) as manager:  # the real clock: nobody ticks
        await new_version_appears(manager, tmp_path)
        config = RolloutConfig.canary(
            steps=(50.0,), interval=0.05, min_frames=1, threshold=1, inconclusive_limit=100,
            rollback_window=0.05,
        )  # fmt: skip
        await manager.start_rollout("geo", "2.0.0", config)
        await send(manager, 100)
        async with asyncio.timeout(WAIT):
            while (await manager.wait_rollout("geo")).state != "succeeded":
                pass
        await manager.tick_rollouts()  # the pass that retired the warm version is over
        assert roles(manager) == {"1.0.0": "available", "2.0.0": "stable"}
        passes = manager._passes_started
        assert passes < 40, passes  # it slept until each check was due: no busy polling
        await manager.tick_rollouts()
        assert manager._passes_started == passes + 1  # and sleeps for good with none left


async def test_an_isolated_version_is_rolled_out_beside_an_in_process_one(
    impl: Any, tmp_path: Path
) -> None:
    write_version(tmp_path, "geo", "1.0.0")
    clock = Clock()
    async with manager_for(impl, tmp_path, clock, recovery=RecoveryConfig()) as manager:
        assert manager._record("geo").recovery._actions["restart"] is None  # type: ignore[union-attr]
        write_version(tmp_path, "geo", "2.0.0", resources={"isolation": "process"})
        manager.discover()
        await manager.start_rollout("geo", "2.0.0", CANARY)
        candidate = manager._record("geo").lanes["2.0.0"]
        assert candidate.instance.stats().pid is not None  # its own child process
        sent = await send(manager, 1000)
        clock.now += 60
        await manager.tick_rollouts()
        sent += await send(manager, 1000, start=1000)
        clock.now += 60
        await manager.tick_rollouts()
        assert manager.rollout("geo").state == "promoted"  # type: ignore[union-attr]
        assert manager.isolation_stats("geo") is not None  # the stable version is isolated
        ladder = manager._record("geo").recovery
        assert ladder is not None  # and its ladder restarts it (the in-process one reset it)
        assert ladder._actions["restart"] is not None and ladder._actions["reset"] is None
        stats = manager.dispatcher.version_stats(PID)
        assert accounted(stats) == sent and stats["2.0.0"].errors == 0


async def test_every_frame_is_accounted_for_while_rollouts_promote_and_roll_back(
    impl: Any, tmp_path: Path
) -> None:
    """Concurrent senders all along; a candidate that fails every frame trips its breaker
    (frames shed, counted) and is rolled back by its checks, then promoted and rolled back
    by an operator mid-flight; a good version is promoted and the old one retired while
    frames flow. Every frame sent is in exactly one count of one version's lane."""
    write_version(tmp_path, "geo", "1.0.0")
    clock = Clock()
    async with manager_for(impl, tmp_path, clock) as manager:
        write_version(tmp_path, "geo", "2.0.0", FAILING, breaker=BREAKER)
        manager.discover()
        await manager.start_rollout("geo", "2.0.0", CANARY)
        sent = await senders(manager, 2000)
        assert manager.dispatcher.version_stats(PID)["2.0.0"].circuit_open > 0  # shed
        clock.now += 60
        await manager.tick_rollouts()
        assert manager.rollout("geo").state == "rolled_back"  # type: ignore[union-attr]
        await manager.start_rollout("geo", "2.0.0", CANARY)

        def close_and_promote() -> None:  # a tripped candidate is not promoted as it is
            manager.set_breaker_state("geo", BreakerState.CLOSED, version="2.0.0")
            manager.rollout_action("geo", "promote")

        sent += await senders(manager, 2000, start=2000, midway=close_and_promote)
        assert manager.status("geo").version == "2.0.0"
        sent += await senders(
            manager, 2000, start=4000, midway=lambda: manager.rollout_action("geo", "rollback")
        )
        assert manager.status("geo").version == "1.0.0"
        assert accounted(manager.dispatcher.version_stats(PID)) == sent
        write_version(tmp_path, "geo", "3.0.0")
        manager.discover()
        config = RolloutConfig.blue_green(
            iterations=1, interval=60.0, min_frames=20, rollback_window=60.0
        )
        await manager.start_rollout("geo", "3.0.0", config)
        sent += await senders(manager, 1000, start=6000)
        clock.now += 60
        await manager.tick_rollouts()
        assert manager.status("geo").version == "3.0.0"

        def window_over() -> object:
            clock.now += 60
            return manager.tick_rollouts()  # retires 1.0.0 while frames flow

        sent += await senders(manager, 1000, start=7000, midway=window_over)
        assert roles(manager) == {"1.0.0": "available", "2.0.0": "loaded", "3.0.0": "stable"}
        gone = [e for e in audit(manager, "version") if e["decision"] == "unloaded"]
        assert [e["version"] for e in gone] == ["1.0.0"]
        retired = sum(e["processed"] + e["dropped"] + e["refused"] for e in gone)
        assert accounted(manager.dispatcher.version_stats(PID)) + retired == sent
        # ... and in total: the dispatcher's own count agrees.
        dispatched = manager.dispatcher.dispatch_stats()
        assert dispatched.frames_dispatched + dispatched.circuit_open == sent


async def test_a_bad_candidate_is_rolled_back_by_its_checks(impl: Any, tmp_path: Path) -> None:
    write_version(tmp_path, "geo", "1.0.0")
    clock = Clock()
    async with manager_for(impl, tmp_path, clock) as manager:
        await new_version_appears(manager, tmp_path, FAILING)
        await manager.start_rollout("geo", "2.0.0", CANARY)
        sent = await send(manager, 1000)
        clock.now += 60
        await manager.tick_rollouts()
        status = manager.rollout("geo")
        assert status is not None and status.state == "rolled_back"
        assert [e.kind for e in status.events] == ["started", "check_failed", "rolled_back"]
        assert manager.status("geo").version == "1.0.0"
        assert roles(manager) == {"1.0.0": "stable", "2.0.0": "loaded"}
        stats = manager.dispatcher.version_stats(PID)
        assert stats["2.0.0"].errors == stats["2.0.0"].messages_processed > 0
        sent += await send(manager, 500, start=1000)  # all on the stable version now
        after = manager.dispatcher.version_stats(PID)
        assert after["2.0.0"] == stats["2.0.0"]
        assert accounted(after) == sent
        assert not (tmp_path / ".state" / "versions.json").exists()  # nothing was promoted
        # A rolled-back version can be unloaded, and a new rollout started.
        await manager.unload_version("geo", "2.0.0")
        with pytest.raises(RolloutStateError, match=re.escape(
            "Cannot promote the rollout of plugin 'geo': its canary rollout 1.0.0 -> 2.0.0 has "
            "ended (rolled_back) - start a new one (from step 0): `nyxplug rollout start geo "
            "2.0.0` (start_rollout('geo', '2.0.0'))"
        )):  # fmt: skip
            manager.rollout_action("geo", "promote")


async def test_operator_actions_and_refusals(impl: Any, tmp_path: Path) -> None:
    write_version(tmp_path, "geo", "1.0.0")
    clock = Clock()
    async with manager_for(impl, tmp_path, clock) as manager:
        await new_version_appears(manager, tmp_path)
        with pytest.raises(RolloutStateError) as none:
            manager.rollout_action("geo", "pause")
        assert str(none.value) == (
            "Cannot pause the rollout of plugin 'geo': it has none - start one first: `nyxplug "
            "rollout start geo VERSION` (start_rollout); `nyxplug versions geo` lists the versions"
        )
        assert manager.rollout("geo") is None
        await manager.start_rollout("geo", "2.0.0", CANARY)
        with pytest.raises(RolloutStateError) as running:
            await manager.start_rollout("geo", "2.0.0", CANARY)
        assert str(running.value) == (
            "Cannot start a rollout of plugin 'geo': its canary rollout 1.0.0 -> 2.0.0 is "
            "progressing - abort it first: `nyxplug rollout abort geo` (rollout_action('geo', "
            "'abort')), or promote it: `nyxplug rollout promote geo`"
        )
        with pytest.raises(VersionStateError, match=r"the rollout in progress uses it"):
            await manager.unload_version("geo", "2.0.0")
        with pytest.raises(ValueError, match=r"got 'explode' - for plugin 'geo'"):
            manager.rollout_action("geo", "explode")
        assert manager.rollout_action("geo", "pause", caller="bob").state == "paused"
        assert manager.rollout_action("geo", "resume", caller="bob").state == "progressing"
        status = manager.rollout_action("geo", "promote", caller="bob")
        assert status.state == "promoted"
        with pytest.raises(RolloutStateError, match=re.escape(
            "its canary rollout 1.0.0 -> 2.0.0 is promoted - wait until its rollback window "
            "ends (1.0.0 is kept warm until then), or roll it back: `nyxplug rollout rollback "
            "geo`"
        )):  # fmt: skip
            await manager.start_rollout("geo", "1.0.0", CANARY)
        with pytest.raises(VersionStateError, match=r"keeps it warm for an instant rollback"):
            await manager.unload_version("geo", "1.0.0")
        status = manager.rollout_action("geo", "rollback", caller="bob")
        assert status.state == "rolled_back"
        assert manager.status("geo").version == "1.0.0"
        state = json.loads((tmp_path / ".state" / "versions.json").read_text())
        assert state == {"plugins": {"geo": {"stable": "1.0.0", "previous": []}}}
        lines = [(e["decision"], e.get("caller")) for e in audit(manager, "rollout")]
        assert lines == [
            ("started", None), ("paused", "bob"), ("resumed", "bob"), ("promoted", "bob"),
            ("rolled_back", "bob"),
        ]  # fmt: skip


async def test_checking_slow_calls_needs_a_candidate_breaker(impl: Any, tmp_path: Path) -> None:
    """The refusal names the version and the fixes an operator has; the one the command
    gives works."""
    write_version(tmp_path, "geo", "1.0.0")
    async with manager_for(impl, tmp_path, Clock()) as manager:
        await new_version_appears(manager, tmp_path)
        slow = RolloutConfig.canary(steps=(10.0,), interval=60.0, max_slow_rate=0.1)
        with pytest.raises(RolloutStateError) as refused:
            await manager.start_rollout("geo", "2.0.0", slow)
        assert str(refused.value) == (
            "Cannot start a rollout of plugin 'geo': version 2.0.0 has no circuit breaker to "
            "time the slow calls max_slow_rate checks - give it one: a [breaker] (with "
            "slow_call_duration) in its manifest or the host's [defaults.breaker], or the "
            "default one now: `nyxplug breaker geo --version 2.0.0 --set closed` "
            "(set_breaker_state(..., version='2.0.0')); or leave max_slow_rate unset"
        )
        assert manager.rollout("geo") is None
        manager.set_breaker_state("geo", BreakerState.CLOSED, version="2.0.0")
        status = await manager.start_rollout("geo", "2.0.0", slow)
        assert (status.state, status.candidate) == ("progressing", "2.0.0")


async def test_a_promotion_is_remembered_across_a_restart(impl: Any, tmp_path: Path) -> None:
    write_version(tmp_path, "geo", "1.0.0")
    write_version(tmp_path, "geo", "2.0.0")
    async with manager_for(impl, tmp_path, Clock()) as manager:
        assert manager.status("geo").version == "2.0.0"
        # Going back to 1.0.0 on purpose: a rollout of the lower version, promoted.
        await manager.start_rollout("geo", "1.0.0", CANARY)
        manager.rollout_action("geo", "promote")
        assert manager.status("geo").version == "1.0.0"
    async with manager_for(impl, tmp_path, Clock()) as manager:
        assert manager.status("geo").version == "1.0.0"  # not the highest: the promoted one
        assert roles(manager) == {"1.0.0": "stable", "2.0.0": "available"}
        await send(manager, 10)
        assert manager.dispatcher.version_stats(PID)["base"].messages_processed == 10


# -- the recovery ladder's rollback rung ------------------------------------------------------

BREAKER = {"window_size": 10, "minimum_calls": 10, "open_wait": 60.0, "half_open_probes": 2,
           "record_every": 1}  # fmt: skip


async def until(manager: PluginManager, done: Callable[[], bool]) -> None:
    ladder = manager._record("geo").recovery
    assert ladder is not None
    async with asyncio.timeout(WAIT):
        while not done():
            waiter = asyncio.ensure_future(ladder.wait_changed())
            await asyncio.wait([waiter], timeout=0.05)  # a frame-driven change wakes it too
            waiter.cancel()


async def test_the_ladder_rolls_back_to_the_previous_good_version(
    impl: Any, tmp_path: Path
) -> None:
    ladder = {"steps": ["rollback", "quarantine"], "step_timeout": 5.0}
    write_version(tmp_path, "geo", "1.0.0", breaker=BREAKER, recovery=ladder)
    clock = Clock()
    async with manager_for(impl, tmp_path, clock) as manager:
        write_version(tmp_path, "geo", "2.0.0", FAILING, breaker=BREAKER, recovery=ladder)
        manager.discover()
        await manager.start_rollout("geo", "2.0.0", CANARY)
        manager.rollout_action("geo", "promote")
        clock.now += 120  # the window ends: 1.0.0 is unloaded
        await manager.tick_rollouts()
        assert roles(manager) == {"1.0.0": "available", "2.0.0": "stable"}
        sent = await send(manager, 10)  # 2.0.0 fails them all: its breaker trips
        await until(manager, lambda: manager.status("geo").version == "1.0.0")
        assert roles(manager)["1.0.0"] == "stable"  # loaded again, and stable
        failed = {v.version: v for v in manager.versions("geo")}["2.0.0"]
        assert failed.role == "loaded" and failed.breaker is not None
        assert failed.breaker.repairing is None  # the ladder now marks the new stable lane
        recovery = manager.status("geo").recovery
        assert recovery is not None
        assert recovery.steps["rollback"] == StepStats(attempts=1, successes=1)
        state = json.loads((tmp_path / ".state" / "versions.json").read_text())
        assert state["plugins"]["geo"]["stable"] == "1.0.0"
        # The breaker the ladder watches is the new stable lane's: probes decide there.
        sent += await send(manager, 2, start=100)
        await until(manager, lambda: manager.status("geo").recovery.recoveries == 1)  # type: ignore[union-attr]
        assert accounted(manager.dispatcher.version_stats(PID)) == sent
        decisions = [(e["decision"], e.get("step")) for e in audit(manager, "recovery")]
        assert decisions == [("started", None), ("worked", "rollback"), ("recovered", None)]
        manager.flush_breaker_audit()
        lines = [(e["version"], e["previous"], e["decision"]) for e in audit(manager, "breaker")]
        assert lines == [("2.0.0", "closed", "open")]  # the failing version's lane, by name


async def test_a_candidate_breaker_is_audited_by_its_version_and_not_told_to_the_ladder(
    impl: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failing candidate under a canary trips its own breaker: the audit log has its
    transitions, named by the candidate's version; the stable version's recovery ladder
    hears only of the stable lane's breaker."""
    ladder = {"steps": ["rollback", "quarantine"], "step_timeout": 5.0}
    write_version(tmp_path, "geo", "1.0.0", breaker=BREAKER, recovery=ladder)
    clock = Clock()
    async with manager_for(impl, tmp_path, clock) as manager:
        write_version(tmp_path, "geo", "2.0.0", FAILING, breaker=BREAKER)
        manager.discover()
        recovery = manager._record("geo").recovery
        assert recovery is not None
        told: list[BreakerState] = []
        heard = recovery.breaker_changed

        def spy(state: BreakerState) -> None:
            told.append(state)
            heard(state)

        monkeypatch.setattr(recovery, "breaker_changed", spy)
        await manager.start_rollout("geo", "2.0.0", CANARY)
        await send(manager, 400)  # ~10% to 2.0.0, which fails them all: its breaker trips
        candidate = manager.breaker("geo", version="2.0.0")
        assert candidate is not None and candidate.state is BreakerState.OPEN
        assert manager.breaker("geo").state is BreakerState.CLOSED  # type: ignore[union-attr]
        manager.flush_breaker_audit()
        lines = [(e["version"], e["previous"], e["decision"]) for e in audit(manager, "breaker")]
        assert lines == [("2.0.0", "closed", "open")]
        assert told == []  # the rollout judges a candidate, not the stable one's ladder
        manager.set_breaker_state("geo", BreakerState.CLOSED, version="2.0.0", caller="ops")
        manager.set_breaker_state("geo", BreakerState.METRICS_ONLY, caller="ops")
        lines = [
            (e["version"], e.get("previous"), e["decision"]) for e in audit(manager, "breaker")
        ]
        assert lines == [
            ("2.0.0", "closed", "open"),
            ("2.0.0", None, "set"), ("2.0.0", "open", "closed"),
            ("1.0.0", None, "set"), ("1.0.0", "closed", "metrics_only"),
        ]  # fmt: skip
        assert told == [BreakerState.METRICS_ONLY]  # the stable lane's, and only it
        assert audit(manager, "recovery") == []


async def test_the_ladder_rolls_back_a_promoted_rollout(impl: Any, tmp_path: Path) -> None:
    ladder = {"steps": ["rollback"], "step_timeout": 5.0}
    write_version(tmp_path, "geo", "1.0.0", breaker=BREAKER, recovery=ladder)
    async with manager_for(impl, tmp_path, Clock()) as manager:
        write_version(tmp_path, "geo", "2.0.0", FAILING, breaker=BREAKER, recovery=ladder)
        manager.discover()
        await manager.start_rollout("geo", "2.0.0", CANARY)
        manager.rollout_action("geo", "promote")
        await send(manager, 10)
        await until(manager, lambda: manager.status("geo").version == "1.0.0")
        status = manager.rollout("geo")
        assert status is not None and status.state == "rolled_back"
        assert [e.get("caller") for e in audit(manager, "rollout")] == [None, None, "recovery"]
        assert [e["detail"] for e in audit(manager, "rollout")][:2] == [
            "1.0.0 -> 2.0.0", "by operator; 1.0.0 kept warm",  # versions, never lane names
        ]  # fmt: skip


async def test_with_no_earlier_version_the_rung_is_not_available(impl: Any, tmp_path: Path) -> None:
    ladder = {"steps": ["rollback"], "step_timeout": 5.0}
    write_version(tmp_path, "geo", "1.0.0", FAILING, breaker=BREAKER, recovery=ladder)
    async with manager_for(impl, tmp_path) as manager:
        await send(manager, 10)
        await until(
            manager,
            lambda: (
                manager.status("geo").recovery.episodes == 1  # type: ignore[union-attr]
                and manager.status("geo").recovery.repairing is None
            ),
        )  # type: ignore[union-attr]
        recovery = manager.status("geo").recovery
        assert recovery is not None and recovery.steps["rollback"] == StepStats(not_available=1)
        lines = [(e["decision"], e.get("reason")) for e in audit(manager, "recovery")]
        assert lines[1] == (
            "not_available",
            "no earlier stable version than 1.0.0 is known (one becomes known when a rollout "
            "promotes another)",
        )


# -- health per version ---------------------------------------------------------------------

HEALTH = {"interval": 3600.0, "timeout": 1.0, "unhealthy_threshold": 1, "healthy_threshold": 1}


async def test_each_loaded_version_has_its_own_health_checks(impl: Any, tmp_path: Path) -> None:
    write_version(tmp_path, "geo", "1.0.0", health=HEALTH)
    clock = Clock()
    async with manager_for(impl, tmp_path, clock) as manager:
        write_version(tmp_path, "geo", "2.0.0", FLAKY, health=HEALTH)
        manager.discover()
        await manager.start_rollout("geo", "2.0.0", CANARY)
        record = manager._record("geo")
        candidate = record.lanes["2.0.0"]
        assert candidate.health is not None and record.health is not None
        assert candidate.health is not record.health
        # Not ready: the candidate's own breaker is held open (the stable's is untouched)
        # and the rollout's next check fails on it.
        candidate.instance.__class__.ready_now = False
        await candidate.health.check()
        health = {v.version: v.health for v in manager.versions("geo")}
        assert health["2.0.0"] is not None and health["2.0.0"].routed_away
        assert health["1.0.0"] is not None and not health["1.0.0"].routed_away
        assert manager.dispatcher.breaker_stats(PID) is None
        await send(manager, 200)
        clock.now += 60
        await manager.tick_rollouts()
        status = manager.rollout("geo")
        assert status is not None and status.state == "rolled_back"
        assert "candidate breaker forced_open" in status.events[1].detail


async def test_a_candidate_that_dies_rolls_the_rollout_back(impl: Any, tmp_path: Path) -> None:
    ladder = {"steps": ["reset"], "step_timeout": 5.0}
    write_version(tmp_path, "geo", "1.0.0", health=HEALTH, recovery=ladder)
    async with manager_for(impl, tmp_path, Clock()) as manager:
        write_version(tmp_path, "geo", "2.0.0", FLAKY, health=HEALTH, recovery=ladder)
        manager.discover()
        await manager.start_rollout("geo", "2.0.0", CANARY)
        candidate = manager._record("geo").lanes["2.0.0"]
        candidate.instance.__class__.live = False
        assert candidate.health is not None
        await candidate.health.check()
        status = manager.rollout("geo")
        assert status is not None and status.state == "rolled_back"
        assert audit(manager, "rollout")[-1]["caller"] == "health"
        recovery = manager.status("geo").recovery
        assert recovery is not None and recovery.episodes == 0  # the stable's ladder: untouched


# -- configuration ---------------------------------------------------------------------------


def plugin_doc(rollout: str) -> str:
    return manifest_text("geo", PID) + "\n[rollout]\n" + rollout


@pytest.mark.parametrize(
    ("table", "problem"),
    [
        ('strategy = "rolling"', "Expected one of `canary`, `blue_green`, `split`, got "
         "`rolling` - at `rollout.strategy`"),
        ("steps = [10, 5]", "Expected `steps` rising, got [10.0, 5.0] - at `rollout.steps`"),
        ("steps = [0, 5]", "Expected weights in (0, 100] percent, got 0.0 - at `rollout.steps`"),
        ("max_error_rate = 5", "Expected `max_error_rate` to be a fraction in 0..1 (0.01 = 1 %), "
         "got 5.0 - at `rollout.max_error_rate`"),
        ("threshold = 0", "Expected `threshold` to be an integer >= 1, got 0 - at "
         "`rollout.threshold`"),
        ("interval = 0", "Expected `interval` to be a finite number of seconds >= 0.001, got "
         "0.0 - at `rollout.interval`"),
        ("interval = 60\ndeadline = 30", "Expected `deadline` >= `interval` (60 s), got 30.0 - "
         "a state must outlast one check - at `rollout.deadline`"),
        ('strategy = "split"\nsteps = [10]', 'Expected `hold` (seconds) with strategy = '
         '"split", got none - at `rollout.hold`'),
        ("max_slow_rate = 1.5", "Expected `max_slow_rate` to be a fraction in 0..1 (0.01 = 1 %),"
         " got 1.5 - at `rollout.max_slow_rate`"),
        ("hold = 60", 'Expected `hold` only with strategy = "split", got strategy = "canary" - '
         "at `rollout.hold`"),
        ("mirror = true", 'Expected `mirror` only with strategy = "blue_green", got strategy = '
         '"canary" - at `rollout.mirror`'),
        ('on_new_version = "reload"',
         "Expected one of `canary`, got `reload` - at `rollout.on_new_version`"),
        ("weight = 5", "Unknown key `weight`, expected one of `strategy`, `steps`, "
         "`iterations`, `interval`, `min_frames`, `max_error_rate`, `max_error_rate_over_stable`"
         ", `max_slow_rate`, `max_slow_rate_over_stable`, `threshold`, `inconclusive_limit`, "
         "`auto_promote`, `deadline`, `rollback_window`, "
         "`hold`, `mirror`, `on_new_version` - at `rollout.weight`"),
    ],
)  # fmt: skip
def test_bad_rollout_tables_are_refused_with_the_key(table: str, problem: str) -> None:
    with pytest.raises(ManifestError) as caught:
        decode_manifest(plugin_doc(table), "geo/nyxplug.toml")
    assert str(caught.value).endswith(problem), str(caught.value)


def test_host_rollout_defaults_and_max_versions_are_checked(tmp_path: Path) -> None:
    host = tmp_path / "nyxplug.host.toml"
    host.write_text("[defaults.rollout]\nthreshold = -1\n")
    with pytest.raises(ConfigError, match=r"at `defaults.rollout.threshold`"):
        load_config(host, environ={})
    host.write_text("[runtime]\nmax_versions = 6\n")
    with pytest.raises(
        ConfigError, match=r"Expected 1..5 versions .* got 6 - at `runtime.max_versions`"
    ):
        load_config(host, environ={})
    host.write_text('[defaults.rollout]\nstrategy = "blue_green"\niterations = 2\n')
    config = load_config(host, environ={})
    assert config.defaults.rollout is not None and config.defaults.rollout.iterations == 2


async def test_the_manifest_rollout_table_is_the_default_config(impl: Any, tmp_path: Path) -> None:
    write_version(tmp_path, "geo", "1.0.0")
    async with manager_for(impl, tmp_path, Clock()) as manager:
        write_version(
            tmp_path, "geo", "2.0.0",
            rollout={"strategy": "split", "steps": [20], "hold": 600, "interval": 60},
        )  # fmt: skip
        manager.discover()
        status = await manager.start_rollout("geo", "2.0.0")
        assert (status.strategy, status.weight) == ("split", 20.0)
        assert manager.rollout_action("geo", "abort").state == "aborted"
    # Without a table, the host's [defaults.rollout].
    write_version(tmp_path / "other", "geo", "1.0.0")
    write_version(tmp_path / "other", "geo", "2.0.0")
    async with manager_for(
        impl, tmp_path / "other", Clock(),
        rollout=decode_manifest(plugin_doc('strategy = "blue_green"')).rollout,
    ) as manager:  # fmt: skip
        status = await manager.start_rollout("geo", "1.0.0")
        assert (status.strategy, status.weight) == ("blue_green", 100.0)


async def test_loading_a_version_that_fails_reports_the_step(impl: Any, tmp_path: Path) -> None:
    write_version(tmp_path, "geo", "1.0.0")
    async with manager_for(impl, tmp_path) as manager:
        write_version(tmp_path, "geo", "2.0.0", "raise ImportError('no geodata')\n")
        manager.discover()
        with pytest.raises(PluginLoadError, match=r"failed to load at import: version 2.0.0"):
            await manager.load_version("geo", "2.0.0")
        assert roles(manager) == {"1.0.0": "stable", "2.0.0": "available"}
        assert [e["decision"] for e in audit(manager, "version")] == ["failed"]


# -- on_new_version = "canary" ----------------------------------------------------------------

ON_NEW = {"on_new_version": "canary", "steps": [10, 50], "interval": 60, "min_frames": 20}


async def test_a_new_version_in_the_running_folder_is_rolled_out_not_hot_reloaded(
    impl: Any, tmp_path: Path
) -> None:
    folder = write_version(tmp_path, "geo", "1.0.0", rollout=ON_NEW)
    async with manager_for(impl, tmp_path, Clock()) as manager:
        instance = manager.instance("geo")
        # A new release replaces the folder's contents (as `nyxplug install` replaces a
        # package): the running version keeps serving, the new one becomes the candidate.
        (folder / "nyxplug.toml").write_text(
            manifest_text("geo", PID, version="1.1.0", rollout=ON_NEW)
        )
        result = await manager.reload("geo", if_changed=True)
        assert (result.outcome, result.from_version, result.to_version) == (
            "rollout", "1.0.0", "1.1.0",
        )  # fmt: skip
        assert manager.instance("geo") is instance
        assert {v.version: (v.role, v.location) for v in manager.versions("geo")} == {
            "1.0.0": ("stable", str(folder)), "1.1.0": ("candidate", str(folder)),
        }  # fmt: skip
        status = manager.rollout("geo")
        assert status is not None and (status.strategy, status.weight) == ("canary", 10.0)
        assert audit(manager, "rollout")[0]["caller"] == "reload"
        # Nothing more while it runs; the version is rolled out once.
        assert (await manager.reload("geo", if_changed=True)).outcome == "unchanged"
        manager.rollout_action("geo", "abort")
        assert (await manager.reload("geo", if_changed=True)).outcome == "unchanged"


async def test_the_watcher_rolls_out_a_new_version_folder(impl: Any, tmp_path: Path) -> None:
    write_version(tmp_path, "geo", "1.0.0", rollout=ON_NEW)
    async with manager_for(impl, tmp_path, Clock()) as manager:
        async with PluginWatcher(manager, debounce=0.05, force_polling=False) as watcher:
            async with asyncio.timeout(WAIT):
                await watcher.ready.wait()
            write_version(tmp_path, "geo", "2.0.0", rollout=ON_NEW)
            name, result = await watcher.next_outcome(WAIT)
            assert name == "geo" and isinstance(result, ReloadResult)
            assert (result.outcome, result.to_version) == ("rollout", "2.0.0")
            assert roles(manager) == {"1.0.0": "stable", "2.0.0": "candidate"}


# -- the state file and the table's meaning --------------------------------------------------


def test_the_versions_state_file_is_checked_and_written_atomically(tmp_path: Path) -> None:
    path = tmp_path / "state" / "versions.json"
    state = StableVersions.read(path)
    assert state.stable("geo") is None and state.previous("geo") == []
    state.set("geo", "2.0.0", ["1.0.0"])
    assert StableVersions.read(path).plugins == {"geo": ("2.0.0", ["1.0.0"])}
    assert [p.name for p in path.parent.iterdir()] == ["versions.json"]  # no temp file left
    path.write_text('{"plugins": {"geo": {"stable": 2}}}')
    with pytest.raises(ValueError, match=r"Expected `plugins.geo` in .* fix or delete the file"):
        StableVersions.read(path)
    path.write_text("{")
    with pytest.raises(ValueError, match=r"could not read it: .* - fix or delete the file"):
        StableVersions.read(path)


def test_each_strategy_becomes_its_controller_configuration() -> None:
    def table(text: str) -> RolloutConfig:
        settings = decode_manifest(plugin_doc(text)).rollout
        assert settings is not None
        return rollout_config(settings)

    canary = table("steps = [1, 20]\ninterval = 30\nthreshold = 3")
    assert (canary.steps, canary.interval, canary.threshold) == ((1.0, 20.0), 30.0, 3)
    assert canary == RolloutConfig.canary(steps=(1, 20), interval=30, threshold=3)
    assert table('strategy = "blue_green"\niterations = 2') == RolloutConfig.blue_green(
        iterations=2
    )
    mirror = table('strategy = "blue_green"\nmirror = true')
    assert (mirror.steps, mirror.shadow) == ((0.0,), True)
    split = table('strategy = "split"\nsteps = [30]\nhold = 900\ninterval = 60')
    assert split == RolloutConfig.split(30, hold=900, interval=60)
    assert (split.auto_promote, split.deadline) == (False, 900.0)
    slow = table("max_slow_rate = 0.05\nmax_slow_rate_over_stable = 0.01")
    assert (slow.max_slow_rate, slow.max_slow_rate_over_stable) == (0.05, 0.01)
    assert table("") == RolloutConfig()
