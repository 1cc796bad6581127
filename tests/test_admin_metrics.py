"""``/metrics``: parsed back, checked by promtool, scraped by a real Prometheus server.

The host runs in the test's loop with the admin API on a loopback port; HTTP calls run
in a thread (``asyncio.to_thread``) so the loop keeps serving. Prometheus and promtool
come from Debian's ``prometheus`` package, which ``.ci/run`` installs: in CI (``$CI``
set) their absence fails the test; elsewhere it is skipped with the reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from admin_helpers import AdminHost, call
from nyx_helpers import DATA
from plugin_helpers import RECORDER, write_plugin
from prometheus_client.parser import text_string_to_metric_families

from nyxplug import BreakerState, CircuitOpen, PluginHeader
from nyxplug.admin import AdminAddress, AdminServer, build_app
from nyxplug.plugins import PluginManager

TIMEOUT = 30.0
VERSION = ("version", "1.0.0")


def need(binary: str) -> str:
    path = shutil.which(binary)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{binary} is missing in CI - .ci/run installs Debian's `prometheus`")
        pytest.skip(f"{binary} is not installed (apt-get install prometheus); CI runs this")
    return path


class Running:
    def __init__(self, host: AdminHost, manager: PluginManager, address: AdminAddress) -> None:
        self.host, self.manager, self.address = host, manager, address

    async def get(self, path: str, **kwargs: Any) -> tuple[int, dict[str, str], Any]:
        return await asyncio.to_thread(call, self.address, "GET", path, **kwargs)


@contextlib.asynccontextmanager
async def running_host(
    tmp_path: Path, impl: Any, *, guarded: bool = False
) -> AsyncIterator[Running]:
    host = AdminHost(tmp_path)
    if guarded:  # a plugin with a circuit breaker, health checks and a recovery ladder
        write_plugin(
            host.plugins, "guarded", 11, RECORDER, breaker={"window_size": 10},
            health={"interval": 3600.0}, recovery={"steps": ["reset", "quarantine"]},
        )  # fmt: skip
    manager = host.manager(impl.Dispatcher())
    await manager.start()
    app = build_app(manager, host.token)
    app.metrics.cache_seconds = 0.0
    server = AdminServer(app, AdminAddress(host="127.0.0.1", port=0))
    try:
        address = await server.start()
        yield Running(host, manager, address)
    finally:
        await server.aclose()
        await manager.aclose()


async def send_frames(manager: PluginManager, count: int) -> None:
    header = PluginHeader(7).encode()
    for n in range(count):
        await manager.dispatcher.dispatch(DATA, header, b"%d" % n)
    await manager.dispatcher.wait_idle(7)


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def test_metrics_parse_back_with_the_counters_of_the_host(tmp_path: Path, impl: Any) -> None:
    async with running_host(tmp_path, impl) as running:
        await send_frames(running.manager, 5)
        status, headers, text = await running.get("/metrics", token=running.host.token)
        assert status == 200 and headers["content-type"].startswith("text/plain; version=0.0.4")
        got = samples(text)
        echo = (("plugin", "echo"), ("version", "1.0.0"))
        assert got[("nyxplug_frames_processed_total", echo)] == 5
        assert got[("nyxplug_plugin_active", echo)] == 1
        assert got[("nyxplug_queue_depth", echo)] == 0
        assert (
            got[
                (
                    "nyxplug_frames_refused_total",
                    (("plugin", "echo"), ("reason", "would_block"), ("version", "1.0.0")),
                )
            ]
            == 0
        )
        assert got[("nyxplug_plugins", (("state", "active"),))] == 2
        assert got[("nyxplug_dispatched_frames_total", ())] == 5
        assert got[("nyxplug_dispatch_errors_total", (("reason", "permission_denied"),))] == 0
        # No unbounded labels: plugin, version, reason, result, state only.
        labels = {name for (_, pairs) in got for name, _ in pairs}
        assert labels <= {"plugin", "version", "reason", "result", "state"}


async def test_breaker_recovery_and_health_series_parse_back(tmp_path: Path, impl: Any) -> None:
    """The breaker's state (one series per state), its refusals, the ladder's steps and
    the health checks' failures, read from the counters that exist anyway."""
    async with running_host(tmp_path, impl, guarded=True) as running:
        running.manager.set_breaker_state("guarded", BreakerState.FORCED_OPEN)
        with pytest.raises(CircuitOpen):
            running.manager.dispatcher.dispatch_nowait(DATA, PluginHeader(11).encode(), b"x")
        _, _, text = await running.get("/metrics", token=running.host.token)
        got = samples(text)
        guarded = (("plugin", "guarded"),)
        states = {
            state: got[("nyxplug_breaker_state", guarded + (("state", state), VERSION))]
            for state in ("closed", "open", "half_open", "disabled", "forced_open", "metrics_only")
        }
        assert states == {**dict.fromkeys(states, 0.0), "forced_open": 1.0}
        refused = (("plugin", "guarded"), ("reason", "circuit_open"), VERSION)
        assert got[("nyxplug_frames_refused_total", refused)] == 1
        reason = guarded + (("reason", "forced_open"), VERSION)
        assert got[("nyxplug_breaker_refusals_total", reason)] == 1
        assert got[("nyxplug_breaker_trips_total", guarded + (VERSION,))] == 0
        for step in ("reset", "quarantine"):
            labels = guarded + (("step", step),)
            for series in ("attempts", "successes", "failures", "timeouts"):
                assert got[(f"nyxplug_recovery_{series}_total", labels)] == 0
        assert got[("nyxplug_recovery_episodes_total", guarded)] == 0
        assert got[("nyxplug_recovery_recoveries_total", guarded)] == 0
        assert got[("nyxplug_health_checks_total", guarded)] >= 0
        for probe in ("liveness", "readiness"):
            assert got[("nyxplug_health_check_failures_total", guarded + (("probe", probe),))] == 0
        # echo has no breaker, checks or ladder: no series for it.
        assert not any(name.startswith("nyxplug_breaker") and ("plugin", "echo") in pairs
                       for name, pairs in got)  # fmt: skip
        labels = {name for (_, pairs) in got for name, _ in pairs}
        assert labels <= {"plugin", "version", "reason", "result", "state", "step", "probe"}


async def test_openmetrics_is_served_when_asked_for(tmp_path: Path, impl: Any) -> None:
    async with running_host(tmp_path, impl) as running:
        status, headers, text = await running.get(
            "/metrics",
            token=running.host.token,
            headers={"Accept": "application/openmetrics-text; version=1.0.0"},
        )
        assert status == 200 and headers["content-type"].startswith("application/openmetrics-text")
        assert text.endswith("# EOF\n")


async def test_scrapes_within_the_cache_share_one_render(tmp_path: Path, impl: Any) -> None:
    async with running_host(tmp_path, impl) as running:
        app = build_app(running.manager, running.host.token)
        try:
            first = await asyncio.gather(*(app.metrics.render(None) for _ in range(5)))
            assert app.metrics.renders == 1 and len({body for body, _ in first}) == 1
            await app.metrics.render(None)
            assert app.metrics.renders == 1  # cached for a second
        finally:
            await app.metrics.aclose()


async def test_promtool_accepts_the_metrics(tmp_path: Path, impl: Any) -> None:
    async with running_host(tmp_path, impl, guarded=True) as running:
        promtool = need("promtool")
        await send_frames(running.manager, 3)
        running.manager.set_breaker_state("guarded", BreakerState.FORCED_OPEN)
        _, _, text = await running.get("/metrics", token=running.host.token)
        result = await asyncio.to_thread(
            subprocess.run,
            [promtool, "check", "metrics"],
            input=text,
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert result.stdout + result.stderr == ""  # no lint warnings either


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def prometheus_query(port: int, query: str) -> list[dict[str, Any]]:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": query})
    with urllib.request.urlopen(url, timeout=5) as response:
        result: list[dict[str, Any]] = json.load(response)["data"]["result"]
        return result


@pytest.mark.timeout(120)
async def test_a_real_prometheus_server_scrapes_the_host(tmp_path: Path, impl: Any) -> None:
    async with running_host(tmp_path, impl) as running:
        prometheus = need("prometheus")
        await send_frames(running.manager, 4)
        token_file = tmp_path / "token"
        token_file.write_bytes(running.host.token)
        token_file.chmod(0o600)
        config = tmp_path / "prometheus.yml"
        config.write_text(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
            "scrape_configs:\n  - job_name: nyxplug\n"
            f"    authorization:\n      credentials_file: {token_file}\n"
            f"    static_configs:\n      - targets: ['127.0.0.1:{running.address.port}']\n"
        )
        port = free_port()
        process = await asyncio.create_subprocess_exec(
            prometheus, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn",
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        try:
            # Prometheus has no "scraped" event to await: ask its API until the sample is
            # there, within a deadline (scrapes run every second).
            deadline = time.monotonic() + 60
            found: list[dict[str, Any]] = []
            while not found:
                assert time.monotonic() < deadline, "Prometheus never stored a scraped sample"
                assert process.returncode is None, "prometheus exited"
                try:
                    found = await asyncio.to_thread(
                        prometheus_query, port, 'nyxplug_frames_processed_total{plugin="echo"}'
                    )
                except OSError:
                    found = []
                if not found:
                    await asyncio.sleep(0.2)  # ok-sleep: polls a real Prometheus (no event)
            assert found[0]["metric"]["version"] == "1.0.0"
            assert found[0]["value"][1] == "4"
            up = await asyncio.to_thread(prometheus_query, port, 'up{job="nyxplug"}')
            assert up[0]["value"][1] == "1"
        finally:
            process.terminate()
            await asyncio.wait_for(process.wait(), TIMEOUT)


DASHBOARD = Path(__file__).resolve().parent.parent / "contrib" / "grafana" / "nyxplug.json"


async def test_the_grafana_dashboard_queries_series_the_host_exports(
    tmp_path: Path, impl: Any
) -> None:
    """Every query is valid PromQL (promtool checks it as a recording rule) and names only
    series ``/metrics`` has."""
    promtool = need("promtool")
    exprs = [
        target["expr"].replace("$plugin", ".*")
        for panel in json.loads(DASHBOARD.read_text())["panels"]
        for target in panel["targets"]
    ]
    rules = tmp_path / "rules.yml"
    rules.write_text(
        "groups:\n  - name: dashboard\n    rules:\n"
        + "".join(
            f"      - record: dashboard:q{n}\n        expr: {json.dumps(e)}\n"
            for n, e in enumerate(exprs)
        )  # fmt: skip
    )
    checked = await asyncio.to_thread(
        subprocess.run, [promtool, "check", "rules", str(rules)], capture_output=True,
        text=True, timeout=TIMEOUT,
    )  # fmt: skip
    assert checked.returncode == 0, checked.stdout + checked.stderr
    async with running_host(tmp_path, impl) as running:
        _, _, text = await running.get("/metrics", token=running.host.token)
    exported = {family.name for family in text_string_to_metric_families(text)}
    exported |= {f"{name}_total" for name in exported}
    used = {name for e in exprs for name in re.findall(r"\bnyxplug_[a-z_]+", e)}
    assert used <= exported, used - exported


async def test_versions_side_by_side_get_per_version_series(tmp_path: Path, impl: Any) -> None:
    """A canary of echo 1.1.0 at 25 % of the keys: frames by version and outcome, each
    version's share and breaker, the rollout's state, events and versions - all read at
    scrape time - and promtool accepts the text."""
    from nyxplug.plugins import RolloutConfig

    async with running_host(tmp_path, impl) as running:
        promtool = need("promtool")
        manager = running.manager
        newer = write_plugin(running.host.plugins, "echo-1.1.0", 7, FAILS_ON_7, version="1.1.0",
                             breaker={"window_size": 100})  # fmt: skip
        toml = newer / "nyxplug.toml"
        toml.write_text(toml.read_text().replace('"echo-1.1.0"', '"echo"'))
        manager.discover()
        config = RolloutConfig.canary(steps=(25.0, 50.0), interval=3600.0)
        await manager.start_rollout("echo", "1.1.0", config, caller="test")
        header = PluginHeader(7).encode()
        d = manager.dispatcher
        for n in range(200):
            await d.dispatch(DATA, header, b"%d" % n, key=n)
        for _ in d.version_stats(7):
            await d.wait_idle(7)
        by_version = {v.version: v for v in manager.versions("echo")}
        _, _, text = await running.get("/metrics", token=running.host.token)
        got = samples(text)
        echo = (("plugin", "echo"),)

        def frames(version: str, outcome: str) -> float:
            labels = (("outcome", outcome), *echo, ("version", version))
            return got[("nyxplug_version_frames_total", labels)]

        new, old = by_version["1.1.0"].stats, by_version["1.0.0"].stats
        assert new is not None and old is not None
        ran = new.messages_processed
        assert 0 < ran < 200 and ran + old.messages_processed == 200
        assert (frames("1.1.0", "ok"), frames("1.1.0", "error")) == (ran - new.errors, new.errors)
        assert frames("1.0.0", "ok") == 200 - ran and frames("1.0.0", "error") == 0
        assert frames("1.0.0", "refused") == frames("1.1.0", "refused") == 0
        assert got[("nyxplug_route_weight", echo + (("version", "1.0.0"),))] == 0.75
        assert got[("nyxplug_route_weight", echo + (("version", "1.1.0"),))] == 0.25
        closed = echo + (("state", "closed"), ("version", "1.1.0"))
        assert got[("nyxplug_breaker_state", closed)] == 1
        assert not any(n == "nyxplug_breaker_state" and ("version", "1.0.0") in pairs
                       for n, pairs in got)  # fmt: skip  # 1.0.0 has no breaker
        states = {dict(pairs)["state"]: value for (n, pairs), value in got.items()
                  if n == "nyxplug_rollout_state"}  # fmt: skip
        assert states == {
            "progressing": 1.0, "paused": 0.0, "awaiting_promotion": 0.0, "promoted": 0.0,
            "succeeded": 0.0, "rolled_back": 0.0, "aborted": 0.0,
        }  # fmt: skip
        assert got[("nyxplug_rollout_events_total", (("kind", "started"), *echo))] == 1
        info = (("candidate", "1.1.0"), *echo, ("stable", "1.0.0"), ("strategy", "canary"))
        assert got[("nyxplug_rollout_info", info)] == 1
        # spare runs one version: no per-version series for it.
        per_version = ("nyxplug_version", "nyxplug_route", "nyxplug_rollout")
        assert not any(("plugin", "spare") in pairs for n, pairs in got
                       if n.startswith(per_version))  # fmt: skip
        result = await asyncio.to_thread(
            subprocess.run, [promtool, "check", "metrics"], input=text, capture_output=True,
            text=True, timeout=TIMEOUT,
        )  # fmt: skip
        assert result.returncode == 0 and result.stdout + result.stderr == "", result.stderr
        manager.rollout_action("echo", "abort", caller="test")


FAILS_ON_7 = """
from nyxplug.plugins import Plugin

class Entry(Plugin):
    async def handle(self, message):
        if message.payload.endswith(b"7"):
            raise RuntimeError("1.1.0 fails the frames ending in 7")
"""
