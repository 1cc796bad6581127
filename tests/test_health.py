"""Scheduled health checks (issue 19, item 3): Envoy's thresholds in a table, timeouts
counted, a hung ``health()`` never delaying frames, readiness routing traffic away
through the circuit breaker and back, and the manifest's ``[health]`` table.

Both twins, both loops. Rounds are run with ``HealthMonitor.check()`` where the schedule
does not matter; where it does, the test waits for the round with ``wait_checked()``.
"""

from __future__ import annotations

import asyncio
import logging
import re
from pathlib import Path
from typing import Any

import pytest
from nyx_helpers import DATA, Recorder, info
from plugin_helpers import write_plugin

from nyxplug import BreakerConfig, BreakerState, CircuitOpen, DispatchStatus
from nyxplug.config import DefaultsSection, HostConfig, RuntimeSection
from nyxplug.plugins import HealthConfig, HealthMonitor, PluginManager

FAST = HealthConfig(interval=0.01, timeout=0.2, unhealthy_threshold=3, healthy_threshold=2)


class Script:
    """A health hook that answers from a script: True, False, "raise" or "hang"."""

    def __init__(self, *answers: Any) -> None:
        self.answers = list(answers)
        self.release = asyncio.Event()

    async def __call__(self) -> bool:
        answer = self.answers.pop(0) if self.answers else True
        if answer == "raise":
            raise RuntimeError("database unreachable")
        if answer == "hang":
            await self.release.wait()
        return bool(answer)


async def loaded(impl: Any, handler: Any = None) -> Any:
    d = impl.Dispatcher()
    await d.load_plugin(info(7), handler)
    return d


# -- thresholds ------------------------------------------------------------------------

#: (answers of health(), after each round: "L" live / "D" unhealthy, and routed away?)
TABLE = [
    ("two-failures-stay-live", [False, False, True], "LLL", "---"),
    ("three-failures-in-a-row-make-it-unhealthy", [False, False, False], "LLD", "--X"),
    ("a-success-restarts-the-count", [False, False, True, False, False], "LLLLL", "-----"),
    ("one-success-is-not-enough-to-recover",
     [False, False, False, True, False, True, True], "LLDDDDL", "--XXXX-"),
    ("raising-counts-as-a-failure", ["raise", "raise", "raise", True, True], "LLDDL", "--XX-"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("answers", "live", "away"), [pytest.param(*row[1:], id=row[0]) for row in TABLE]
)
async def test_thresholds(impl: Any, answers: list[Any], live: str, away: str) -> None:
    d = await loaded(impl)
    monitor = HealthMonitor(d, 7, FAST, Script(*answers))
    seen_live, seen_away = "", ""
    for _ in answers:
        await monitor.check()
        stats = monitor.stats()
        seen_live += "L" if stats.live else "D"
        seen_away += "X" if stats.routed_away else "-"
    assert (seen_live, seen_away) == (live, away)
    assert monitor.stats().checks == len(answers)
    assert monitor.stats().liveness_failures == sum(1 for a in answers if a is not True)
    await d.aclose()


async def test_a_check_that_hangs_times_out_and_is_counted(impl: Any) -> None:
    d = await loaded(impl)
    config = HealthConfig(interval=1.0, timeout=0.05, unhealthy_threshold=1)
    monitor = HealthMonitor(d, 7, config, Script("hang"))
    await monitor.check()
    stats = monitor.stats()
    assert (stats.live, stats.timeouts, stats.liveness_failures) == (False, 1, 1)
    assert stats.last_failure == "health() took longer than 0.05 s"
    await d.aclose()


async def test_a_hung_health_check_never_delays_frames(impl: Any) -> None:
    recorder = Recorder()
    d = await loaded(impl, recorder)
    hook = Script("hang")
    monitor = HealthMonitor(d, 7, FAST, hook)
    monitor.start()
    checked = asyncio.ensure_future(monitor.wait_checked())
    header = impl.PluginHeader(7)
    for round_ in range(20):
        await asyncio.sleep(0)  # the monitor's task gets its turns: its check is hanging
        for i in range(50):
            d.dispatch_nowait(DATA, header, bytes([round_, i]))
        await d.wait_idle(7)
    assert len(recorder.messages) == 1000
    assert not checked.done()  # all 1,000 frames handled while the first check hangs
    await checked  # ... until its timeout
    assert monitor.stats().timeouts == 1
    await monitor.aclose()
    await d.aclose()


# -- routing away and back ------------------------------------------------------------


async def test_readiness_failures_route_traffic_away_and_back(impl: Any) -> None:
    d = await loaded(impl)
    ready = Script(False, False, False, True, True)
    monitor = HealthMonitor(d, 7, FAST, Script(), ready)
    header = impl.PluginHeader(7)
    for _ in range(3):
        await monitor.check()
    stats = monitor.stats()
    assert (stats.live, stats.ready, stats.routed_away) == (True, False, True)
    assert stats.last_failure == "ready() returned False"
    with pytest.raises(CircuitOpen) as refused:
        d.dispatch_nowait(DATA, header)
    assert refused.value.reason == "forced_open"
    assert str(refused.value) == (
        "Circuit breaker of plugin 'plugin_7' (id 7) is held open by its health checks "
        "(ready() returned False) - frame 0x52 (DATA) was not enqueued; retry once it "
        "recovers, or see Dispatcher.breaker_stats(7) and reset it with "
        "set_breaker_state(7, BreakerState.CLOSED)"
    )
    assert d.breaker_stats(7).forced_by == "its health checks (ready() returned False)"
    await monitor.check()
    assert d.try_dispatch(DATA, header) is DispatchStatus.CIRCUIT_OPEN  # one success: not yet
    await monitor.check()
    assert monitor.stats().routed_away is False
    assert d.try_dispatch(DATA, header) is DispatchStatus.OK
    assert d.breaker_stats(7) is None  # the breaker it borrowed is gone again
    await d.aclose()


async def test_a_plugin_s_own_breaker_is_given_back_in_its_state(impl: Any) -> None:
    d = await loaded(impl)
    d.set_breaker(7, BreakerConfig())
    d.set_breaker_state(7, BreakerState.METRICS_ONLY)
    monitor = HealthMonitor(d, 7, FAST, Script(False, False, False, True, True))
    for _ in range(3):
        await monitor.check()
    assert d.breaker_stats(7).state is BreakerState.FORCED_OPEN
    for _ in range(2):
        await monitor.check()
    assert d.breaker_stats(7).state is BreakerState.METRICS_ONLY
    await d.aclose()


async def test_an_operator_s_forced_open_is_left_alone(impl: Any) -> None:
    d = await loaded(impl)
    d.set_breaker(7, BreakerConfig())
    d.set_breaker_state(7, BreakerState.FORCED_OPEN)
    monitor = HealthMonitor(d, 7, FAST, Script(False, False, False, True, True))
    for _ in range(5):
        await monitor.check()
    assert monitor.stats().routed_away is False
    assert d.breaker_stats(7).state is BreakerState.FORCED_OPEN
    await d.aclose()


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("interval", 0.0, "Expected `interval` to be a finite number of seconds > 0, got 0.0"),
        ("timeout", float("nan"), "Expected `timeout` to be a finite number of seconds > 0"),
        ("jitter", 1.0, "Expected `jitter` in [0, 1), got 1.0"),
        ("unhealthy_threshold", 0, "Expected `unhealthy_threshold` to be an int >= 1, got 0"),
    ],
)
def test_health_config_is_checked(field: str, value: Any, message: str) -> None:
    with pytest.raises(ValueError, match="^" + re.escape(message)):
        HealthConfig(**{field: value})


# -- the runtime: [health] in a manifest ----------------------------------------------

FLAKY = """
from nyxplug.plugins import Plugin

class Entry(Plugin):
    def __init__(self):
        self.is_ready = True
        self.is_live = True

    async def handle(self, message):
        pass

    async def health(self):
        return self.is_live

    async def ready(self):
        return self.is_ready
"""


async def test_manifest_health_checks_run_on_the_schedule(
    impl: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write_plugin(
        tmp_path, "flaky", 71, FLAKY,
        health={"interval": 0.01, "timeout": 1.0, "unhealthy_threshold": 2,
                "healthy_threshold": 1},
    )  # fmt: skip
    write_plugin(tmp_path, "plain", 72)
    host = HostConfig(
        runtime=RuntimeSection(
            plugin_dirs=(str(tmp_path),), state_dir=str(tmp_path / "state"),
            require_signatures=False,
        ),
        defaults=DefaultsSection(),
    )  # fmt: skip
    caplog.set_level(logging.ERROR, logger="nyxplug.runtime")
    async with PluginManager(
        dispatcher=impl.Dispatcher(), config=host, entry_points=False, include_registered=False
    ) as manager:
        record = manager._record("flaky")
        assert record.health is not None and manager._record("plain").health is None
        plugin = manager.instance("flaky")
        header = impl.PluginHeader(71)
        plugin.is_ready = False
        while not manager.status("flaky").health.routed_away:
            await record.health.wait_checked()
        assert manager.dispatcher.try_dispatch(DATA, header) is DispatchStatus.CIRCUIT_OPEN
        plugin.is_ready = True
        while manager.status("flaky").health.routed_away:
            await record.health.wait_checked()
        assert manager.dispatcher.try_dispatch(DATA, header) is DispatchStatus.OK
        plugin.is_live = False
        while manager.status("flaky").health.live:
            await record.health.wait_checked()
        assert any("failed its liveness checks" in r.getMessage() for r in caplog.records)
        assert manager.status("plain").health is None
    assert record.health is None  # stopped with the plugin


def test_readme_manifest_tables_decode() -> None:
    from conftest import ROOT

    from nyxplug.plugins import Manifest
    from nyxplug.source.manifest import decode_manifest

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    found = re.search(r"\*\*Breakers and health checks\*\*.*?```toml\n(.*?)```", readme, re.S)
    assert found is not None
    tables = "\n".join(line.strip() for line in found.group(1).splitlines())
    manifest: Manifest = decode_manifest(
        '[plugin]\nname = "x"\nid = 1\nversion = "1.0.0"\nentry = "main:Entry"\n'
        'api = ">=1.0, <2"\n' + tables
    )
    assert manifest.breaker == BreakerConfig(
        window="time", window_size=30, minimum_calls=50, failure_rate=0.25, open_wait=5.0
    )
    assert manifest.health == HealthConfig(interval=5.0, timeout=1.0)
