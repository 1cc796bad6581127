"""The recovery ladder (issue 19, item 2): while a plugin's breaker is open its ladder
repairs it - restart, reset, reload, rollback, degrade, quarantine - each step bounded by
a timeout, counted, and shown on the breaker ("repairing"); after a step that works the
breaker goes half-open and probe frames decide.

Both twins, both loops; real plugin folders and, for ``restart``, real isolated child
processes killed with SIGKILL. Waits are on the ladder's own event (``wait_changed``)
under a timeout, never a sleep.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from isolation_helpers import FAST as FAST_ISOLATION
from nyx_helpers import DATA
from plugin_helpers import write_plugin

from nyxplug import BreakerState, CircuitOpen, DispatchStatus, PluginHeader
from nyxplug.config import ConfigError, DefaultsSection, HostConfig, load_config
from nyxplug.plugins import (
    ManifestError,
    PluginManager,
    RecoveryConfig,
    RecoveryLadder,
    StepStats,
)
from nyxplug.source.manifest import decode_manifest

WAIT = 10.0

#: An in-process plugin whose instance can go bad (a broken flag it never clears).
BREAKABLE = """
from nyxplug.plugins import Plugin

class Entry(Plugin):
    def __init__(self):
        self.broken = False
        self.seen = 0

    async def handle(self, message):
        self.seen += 1
        if self.broken:
            raise RuntimeError("its state went bad")

    async def health(self):
        return not self.broken
"""

#: Trips on 10 calls at >= 50 % failures; the clock alone would not half-open it for a
#: minute, so only the ladder does; two probes decide.
BREAKER = {"window_size": 10, "minimum_calls": 10, "open_wait": 60.0, "half_open_probes": 2,
           "record_every": 1}  # fmt: skip


def manager_for(impl: Any, root: Path, **defaults: Any) -> PluginManager:
    return PluginManager(
        HostConfig(defaults=DefaultsSection(**defaults), isolation=FAST_ISOLATION),
        dispatcher=impl.Dispatcher(), plugin_dirs=[root], state_dir=root / ".state",
        entry_points=False, include_registered=False, require_signatures=False,
    )  # fmt: skip


async def until(manager: PluginManager, name: str, done: Callable[[], bool]) -> None:
    """Wait (on the ladder's reactions) until ``done()``; fail after WAIT seconds."""
    ladder = manager._record(name).recovery
    assert ladder is not None
    async with asyncio.timeout(WAIT):
        while not done():
            waiter = asyncio.ensure_future(ladder.wait_changed())
            await asyncio.wait([waiter], timeout=0.05)  # a frame-driven change wakes it too
            waiter.cancel()


async def send(manager: PluginManager, plugin_id: int, n: int) -> tuple[int, int]:
    """Dispatch ``n`` frames and wait until they are handled; (admitted, refused)."""
    d = manager.dispatcher
    header = PluginHeader(plugin_id).encode()
    admitted = refused = 0
    for i in range(n):
        try:
            await d.dispatch(DATA, header, b"%d" % i)
            admitted += 1
        except CircuitOpen:
            refused += 1
    async with asyncio.timeout(WAIT):
        await d.wait_idle(plugin_id)
    return admitted, refused


def breaker_state(manager: PluginManager, plugin_id: int) -> BreakerState | None:
    stats = manager.dispatcher.breaker_stats(plugin_id)
    return None if stats is None else stats.state


def ledger_holds(manager: PluginManager, plugin_id: int, sent: int, refused: int) -> None:
    stats = manager.dispatcher.plugin_stats(plugin_id)
    assert stats is not None
    # Every frame sent was refused (counted by reason) or enqueued; every enqueued one
    # was handled (successfully or not), dropped, or is still queued.
    assert stats.circuit_open == refused
    assert sent - refused == stats.messages_processed + stats.dropped + stats.queue_depth


# -- reset: a new instance of the same code ------------------------------------------


async def test_reset_recovers_a_plugin_failing_every_frame(impl: Any, tmp_path: Path) -> None:
    write_plugin(
        tmp_path, "breakable", 31, BREAKABLE, breaker=BREAKER,
        recovery={"steps": ["restart", "reset", "quarantine"], "step_timeout": 5.0},
    )  # fmt: skip
    async with manager_for(impl, tmp_path) as manager:
        old = manager.instance("breakable")
        old.broken = True
        transitions: list[BreakerState] = []
        sent, refused = 0, 0
        admitted, no = await send(manager, 31, 10)  # 10 failures: it trips
        sent, refused = sent + admitted + no, refused + no
        await until(manager, "breakable", lambda: breaker_state(manager, 31) != BreakerState.OPEN)
        transitions.append(breaker_state(manager, 31))  # type: ignore[arg-type]
        new = manager.instance("breakable")
        assert new is not old and new.broken is False and new.seen == 0
        admitted, no = await send(manager, 31, 2)  # the two probes work: it closes
        sent, refused = sent + admitted + no, refused + no
        await until(manager, "breakable", lambda: manager.status("breakable").recovery.recoveries)
        transitions.append(breaker_state(manager, 31))  # type: ignore[arg-type]
        assert transitions == [BreakerState.HALF_OPEN, BreakerState.CLOSED]
        assert new.seen == 2
        recovery = manager.status("breakable").recovery
        assert recovery is not None
        assert recovery.steps == {
            "restart": StepStats(not_available=1),
            "reset": StepStats(attempts=1, successes=1),
            "quarantine": StepStats(),
        }
        assert (recovery.episodes, recovery.recoveries, recovery.repairing) == (1, 1, None)
        assert recovery.last_recovery_seconds is not None and recovery.last_recovery_seconds > 0
        ledger_holds(manager, 31, sent, refused)
        # Every transition and step is in the audit trail, in order.
        manager.flush_breaker_audit()
        assert manager.audit is not None
        entries = [e for e in manager.audit.entries() if e.get("plugin") == "breakable"]
        assert [(e["previous"], e["decision"]) for e in entries if e["event"] == "breaker"] == [
            ("closed", "open"), ("open", "half_open"), ("half_open", "closed"),
        ]  # fmt: skip
        steps = [(e["decision"], e.get("step"), e.get("cause"))
                 for e in entries if e["event"] == "recovery"]  # fmt: skip
        assert steps == [
            ("started", None, "tripped"), ("worked", "reset", None), ("recovered", None, None),
        ]  # fmt: skip


async def test_a_step_is_shown_as_repairing_and_refusals_name_it(impl: Any, tmp_path: Path) -> None:
    write_plugin(
        tmp_path, "breakable", 31, BREAKABLE, breaker=BREAKER,
        recovery={"steps": ["reset"], "step_timeout": 5.0},
    )  # fmt: skip
    async with manager_for(impl, tmp_path) as manager:
        manager.instance("breakable").broken = True
        gate = asyncio.Event()
        record = manager._record("breakable")
        assert record.recovery is not None
        real = record.recovery._actions["reset"]
        assert real is not None
        entered = asyncio.Event()

        async def held_reset() -> object:
            entered.set()
            await gate.wait()
            return await real()

        record.recovery._actions["reset"] = held_reset
        await send(manager, 31, 10)
        async with asyncio.timeout(WAIT):
            await entered.wait()
        stats = manager.dispatcher.breaker_stats(31)
        assert stats is not None
        assert (stats.state, stats.repairing) == (BreakerState.OPEN, "reset")
        assert manager.status("breakable").recovery.repairing == "reset"
        header = PluginHeader(31).encode()
        with pytest.raises(CircuitOpen, match=r"its recovery ladder \(reset running\)") as caught:
            manager.dispatcher.dispatch_nowait(DATA, header, b"x")
        assert caught.value.retry_after is None
        gate.set()
        await until(manager, "breakable", lambda: breaker_state(manager, 31) != BreakerState.OPEN)
        stats = manager.dispatcher.breaker_stats(31)
        assert stats is not None and (stats.state, stats.repairing) == (
            BreakerState.HALF_OPEN,
            None,
        )


async def test_the_ledger_holds_through_the_ladder_under_load(impl: Any, tmp_path: Path) -> None:
    """A producer keeps sending while the plugin breaks, trips, is reset, probed and
    closes: every frame sent is accepted or refused by reason, every accepted one is
    handled, dropped or queued, and the breaker's refusals add up to the plugin's."""
    write_plugin(
        tmp_path, "breakable", 31, BREAKABLE, breaker=BREAKER,
        recovery={"steps": ["reset", "quarantine"], "step_timeout": 5.0},
    )  # fmt: skip
    async with manager_for(impl, tmp_path) as manager:
        d = manager.dispatcher
        header = impl.PluginHeader(31)
        statuses: Counter[DispatchStatus] = Counter()
        stop = asyncio.Event()

        async def produce() -> None:
            while not stop.is_set():
                for _ in range(16):
                    statuses[d.try_dispatch(DATA, header, b"x")] += 1
                await asyncio.sleep(0)  # let the worker and the ladder run

        producer = asyncio.ensure_future(produce())
        manager.instance("breakable").broken = True
        await until(
            manager, "breakable", lambda: manager.status("breakable").recovery.recoveries == 1
        )
        stop.set()
        await producer
        async with asyncio.timeout(WAIT):
            await d.wait_idle(31)
        stats = d.plugin_stats(31)
        breaker = d.breaker_stats(31)
        assert set(statuses) <= {DispatchStatus.OK, DispatchStatus.CIRCUIT_OPEN,
                                 DispatchStatus.WOULD_BLOCK}  # fmt: skip
        assert statuses[DispatchStatus.CIRCUIT_OPEN] > 0 and breaker.trips == 1
        assert stats.circuit_open == statuses[DispatchStatus.CIRCUIT_OPEN]
        assert stats.would_block == statuses[DispatchStatus.WOULD_BLOCK]
        assert statuses[DispatchStatus.OK] == stats.messages_processed + stats.dropped + (
            stats.queue_depth
        )
        assert stats.circuit_open == (
            breaker.refused_open + breaker.refused_half_open + breaker.refused_forced_open
        )
        assert breaker.state == BreakerState.CLOSED


# -- timeouts, exhausted steps and the quarantine end -----------------------------------


async def hangs() -> object:
    """A recovery step that never ends: the ladder's step timeout cuts it."""
    await asyncio.Event().wait()  # never set
    return None


async def test_each_step_is_bounded_counted_and_the_ladder_ends_in_quarantine(
    impl: Any, tmp_path: Path
) -> None:
    write_plugin(
        tmp_path, "breakable", 31, BREAKABLE, breaker=BREAKER,
        recovery={"steps": ["restart", "reset", "reload", "rollback", "degrade", "quarantine"],
                  "step_timeout": 0.2},
    )  # fmt: skip
    async with manager_for(impl, tmp_path) as manager:
        manager.instance("breakable").broken = True
        ladder = manager._record("breakable").recovery
        assert ladder is not None

        async def fails() -> object:
            raise OSError("the package store is gone")

        ladder._actions["reset"] = hangs
        ladder._actions["reload"] = fails
        _admitted, refused = await send(manager, 31, 10)
        assert refused == 0
        await until(manager, "breakable", lambda: manager.status("breakable").state == "failed")
        status = manager.status("breakable")
        assert status.reason == (
            "its recovery ladder ran out of steps (last: reload raised OSError: the package "
            "store is gone)"
        )
        recovery = status.recovery
        assert recovery is not None
        assert recovery.steps == {
            "restart": StepStats(not_available=1),
            "reset": StepStats(attempts=1, failures=1, timeouts=1),
            "reload": StepStats(attempts=1, failures=1),
            "rollback": StepStats(not_available=1),
            "degrade": StepStats(not_available=1),
            "quarantine": StepStats(attempts=1, successes=1),
        }
        assert (recovery.episodes, recovery.recoveries) == (1, 0)
        assert not manager.dispatcher.is_loaded(31)
        assert manager.audit is not None
        trail = [(e["decision"], e.get("step")) for e in manager.audit.entries()
                 if e["event"] == "recovery"]  # fmt: skip
        assert trail == [
            ("started", None), ("timed_out", "reset"), ("failed", "reload"),
            ("not_available", "rollback"), ("quarantined", None), ("worked", "quarantine"),
        ]  # fmt: skip


async def test_every_rung_is_cut_at_its_timeout_and_counted(impl: Any, tmp_path: Path) -> None:
    write_plugin(
        tmp_path, "breakable", 31, BREAKABLE, breaker=BREAKER,
        recovery={"steps": ["restart", "reset", "reload", "rollback", "degrade", "quarantine"],
                  "step_timeout": 0.05},
    )  # fmt: skip
    async with manager_for(impl, tmp_path) as manager:
        manager.instance("breakable").broken = True
        ladder = manager._record("breakable").recovery
        assert ladder is not None

        for step in ("restart", "reset", "reload", "rollback", "degrade"):
            ladder._actions[step] = hangs  # every rung available, every one hangs
        await send(manager, 31, 10)
        await until(manager, "breakable", lambda: manager.status("breakable").state == "failed")
        recovery = manager.status("breakable").recovery
        assert recovery is not None
        hung = StepStats(attempts=1, failures=1, timeouts=1)
        assert recovery.steps == {
            "restart": hung, "reset": hung, "reload": hung, "rollback": hung, "degrade": hung,
            "quarantine": StepStats(attempts=1, successes=1),
        }  # fmt: skip
        assert recovery.last_failure == "degrade took longer than 0.05 s"
        assert manager.status("breakable").reason == (
            "its recovery ladder ran out of steps (last: degrade took longer than 0.05 s)"
        )


async def test_reload_is_a_rung_and_a_failed_probe_climbs_to_the_next_after_backoff(
    impl: Any, tmp_path: Path
) -> None:
    """reset works but the new instance fails its probes too (the folder's code is bad):
    the breaker trips again, the ladder waits its open time and runs reload, which
    reads the fixed folder; its probes pass and the breaker closes."""
    folder = write_plugin(
        tmp_path, "breakable", 31,
        BREAKABLE.replace("self.broken = False", "self.broken = True").replace(
            "return not self.broken", "return True"
        ),
        breaker={**BREAKER, "open_wait": 0.05},
        recovery={"steps": ["reset", "reload", "quarantine"], "step_timeout": 5.0},
    )  # fmt: skip
    async with manager_for(impl, tmp_path) as manager:
        await send(manager, 31, 10)
        await until(
            manager, "breakable", lambda: breaker_state(manager, 31) == BreakerState.HALF_OPEN
        )
        (folder / "main.py").write_text(BREAKABLE)  # the fix lands on disk
        await send(manager, 31, 2)  # the reset instance still fails: it trips again
        await until(
            manager, "breakable",
            lambda: manager.status("breakable").recovery.steps["reload"].successes == 1
            and breaker_state(manager, 31) == BreakerState.HALF_OPEN,
        )  # fmt: skip
        await send(manager, 31, 2)
        await until(manager, "breakable", lambda: breaker_state(manager, 31) == BreakerState.CLOSED)
        recovery = manager.status("breakable").recovery
        assert recovery is not None
        assert recovery.steps["reset"] == StepStats(attempts=1, successes=1)
        assert recovery.steps["reload"] == StepStats(attempts=1, successes=1)
        assert (recovery.episodes, recovery.recoveries) == (1, 1)
        stats = manager.dispatcher.breaker_stats(31)
        assert stats is not None and stats.trips == 2


async def test_degrade_refuses_with_a_message_naming_the_fallback(
    impl: Any, tmp_path: Path
) -> None:
    write_plugin(
        tmp_path, "breakable", 31, BREAKABLE, breaker=BREAKER,
        recovery={"steps": ["degrade", "quarantine"], "fallback": "spare"},
    )  # fmt: skip
    write_plugin(tmp_path, "spare", 32)
    async with manager_for(impl, tmp_path) as manager:
        manager.instance("breakable").broken = True
        await send(manager, 31, 10)
        await until(manager, "breakable", lambda: manager.status("breakable").recovery.degraded_to)
        header = PluginHeader(31).encode()
        with pytest.raises(
            CircuitOpen,
            match=r"send its frames to plugin 'spare' \(id 32\) instead",
        ):
            manager.dispatcher.dispatch_nowait(DATA, header, b"x")
        stats = manager.dispatcher.breaker_stats(31)
        assert stats is not None and stats.state == BreakerState.FORCED_OPEN
        assert stats.refused_forced_open == 1
        assert manager.status("breakable").state == "active"
        assert manager.status("breakable").recovery.steps["quarantine"] == StepStats()
        manager.dispatcher.set_breaker_state(31, BreakerState.CLOSED)  # an operator ends it
        await until(
            manager, "breakable", lambda: manager.status("breakable").recovery.degraded_to is None
        )


# -- liveness failures feed the ladder ----------------------------------------------------


async def test_a_liveness_failure_climbs_the_ladder(impl: Any, tmp_path: Path) -> None:
    write_plugin(
        tmp_path, "breakable", 31, BREAKABLE, breaker=BREAKER,
        health={"interval": 0.01, "timeout": 1.0, "unhealthy_threshold": 2},
        recovery={"steps": ["reset"]},
    )  # fmt: skip
    async with manager_for(impl, tmp_path) as manager:
        old = manager.instance("breakable")
        old.broken = True  # health() says False from now on; no frame is sent
        await until(manager, "breakable", lambda: manager.instance("breakable") is not old)
        await until(
            manager, "breakable", lambda: breaker_state(manager, 31) == BreakerState.HALF_OPEN
        )
        health = manager.status("breakable").health
        assert health is not None and health.live and not health.routed_away
        await send(manager, 31, 2)
        await until(manager, "breakable", lambda: breaker_state(manager, 31) == BreakerState.CLOSED)
        assert manager.status("breakable").recovery.recoveries == 1


# -- restart: a new isolated child after SIGKILL -----------------------------------------

ECHO = """
class Entry:
    async def handle(self, message):
        pass
"""


async def test_an_isolated_plugin_killed_goes_open_repairing_half_open_closed(
    impl: Any, tmp_path: Path
) -> None:
    write_plugin(
        tmp_path, "far", 41, ECHO, resources={"isolation": "process"},
        breaker={"window_size": 1, "minimum_calls": 1, "open_wait": 60.0,
                 "half_open_probes": 1, "record_every": 1},
        recovery={"steps": ["restart", "quarantine"], "step_timeout": 5.0},
    )  # fmt: skip
    async with manager_for(impl, tmp_path) as manager:
        seen: list[tuple[BreakerState, str | None]] = []
        ladder = manager._record("far").recovery
        assert ladder is not None
        watch = ladder.breaker_changed

        def note(state: BreakerState) -> None:
            stats = manager.dispatcher.breaker_stats(41)
            seen.append((state, None if stats is None else stats.repairing))
            watch(state)

        manager.dispatcher.watch_breaker(41, note)
        real_mark = ladder._mark

        def mark(step: str | None) -> None:
            real_mark(step)
            seen.append((BreakerState.OPEN, step))

        ladder._mark = mark  # type: ignore[method-assign]
        before = manager.instance("far").pid
        await send(manager, 41, 3)
        os.kill(before, signal.SIGKILL)
        sent, refused = 3, 0
        header = PluginHeader(41).encode()
        async with asyncio.timeout(WAIT):
            while breaker_state(manager, 41) == BreakerState.CLOSED:
                try:  # the frame in the dead child is lost: a failure, the breaker trips
                    await manager.dispatcher.dispatch(DATA, header, b"x")
                except CircuitOpen:
                    refused += 1
                sent += 1
                await manager.dispatcher.wait_idle(41)
        await until(manager, "far", lambda: breaker_state(manager, 41) == BreakerState.HALF_OPEN)
        assert manager.instance("far").pid not in (None, before)
        admitted, no = await send(manager, 41, 1)
        sent, refused = sent + admitted + no, refused + no
        await until(manager, "far", lambda: breaker_state(manager, 41) == BreakerState.CLOSED)
        states = [state for state, _ in seen]
        assert states[0] == BreakerState.OPEN
        assert (BreakerState.OPEN, "restart") in seen
        assert states[-2:] == [BreakerState.HALF_OPEN, BreakerState.CLOSED]
        recovery = manager.status("far").recovery
        assert recovery is not None
        assert recovery.steps["restart"] == StepStats(attempts=1, successes=1)
        assert recovery.recoveries == 1
        isolation = manager.isolation_stats("far")
        assert isolation is not None and isolation.restarts == 1
        ledger_holds(manager, 41, sent, refused)


# -- configuration -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"steps": ()}, "Expected `steps` to name at least one step, got ()"),
        ({"steps": ("reset", "reset")}, "Expected `steps` to name each step at most once"),
        ({"steps": ("quarantine", "reset")}, "Expected `steps` to end with `quarantine`"),
        ({"step_timeout": 0.0}, "Expected `step_timeout` to be a finite number of seconds > 0"),
        ({"fallback": ""}, "Expected `fallback` to be a plugin name or left out, got ''"),
    ],
)
def test_recovery_config_is_checked(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match="^" + re.escape(message)):
        RecoveryConfig(**fields)


HEAD = '[plugin]\nname = "x"\nid = 1\nversion = "1.0.0"\nentry = "main:Entry"\napi = ">=1.0, <2"\n'


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ('steps = ["reboot"]', "Expected one of `restart`, `reset`, `reload`, `rollback`, "
         "`degrade`, `quarantine`, got `reboot` - at `recovery.steps[0]`"),
        ("retries = 3", "Unknown key `retries`, expected one of `steps`, `step_timeout`, "
         "`fallback` - at `recovery.retries`"),
        ('steps = ["quarantine", "reset"]', "Expected `steps` to end with `quarantine` when it "
         "names it, got ('quarantine', 'reset') - at `recovery.steps`"),
    ],
)  # fmt: skip
def test_manifest_recovery_table_decodes_strictly(table: str, message: str) -> None:
    assert decode_manifest(HEAD + '[recovery]\nsteps = ["reset", "quarantine"]\n').recovery == (
        RecoveryConfig(steps=("reset", "quarantine"))
    )
    with pytest.raises(ManifestError, match=re.escape(message) + "$"):
        decode_manifest(HEAD + "[recovery]\n" + table + "\n")


def test_host_defaults_recovery_decodes_strictly(tmp_path: Path) -> None:
    file = tmp_path / "nyxplug.host.toml"
    file.write_text('[defaults.recovery]\nsteps = ["reset", "quarantine"]\nstep_timeout = 2.5\n')
    config = load_config(file, environ={})
    assert config.defaults.recovery == RecoveryConfig(
        steps=("reset", "quarantine"), step_timeout=2.5
    )
    file.write_text('[defaults.recovery]\nsteps = ["reset", "bogus"]\n')
    with pytest.raises(ConfigError, match=r"got `bogus` - at `defaults\.recovery\.steps\[1\]`$"):
        load_config(file, environ={})


def test_a_ladder_needs_a_recovery_config() -> None:
    with pytest.raises(TypeError, match=r"^Expected `config` to be a RecoveryConfig, got dict$"):
        RecoveryLadder(None, 1, {}, {})  # type: ignore[arg-type]
