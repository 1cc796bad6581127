"""The demo is a newcomer's first run: its numbers must add up, and the CLI must work."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from typing import Any

import pytest

import nyxplug
from nyxplug.cli import main
from nyxplug.cli.demo import (
    GEO_CONFIG,
    GEO_FAIL_EVERY,
    GEO_FRAMES_PER_INTERVAL,
    SLOW_BURST,
    SLOW_CAPACITY,
    render,
    run_demo,
)

LOOPS = [
    pytest.param(False, id="asyncio"),
    pytest.param(True, id="uvloop", marks=pytest.mark.skipif(
        sys.platform == "win32", reason="uvloop does not run on Windows")),
]  # fmt: skip


@pytest.fixture(scope="module", params=LOOPS)
def results(request: pytest.FixtureRequest) -> dict[str, Any]:
    if request.param:
        pytest.importorskip("uvloop")
    return run_demo(frames=2000, use_uvloop=request.param)


def test_every_enqueued_frame_is_processed_dropped_or_queued(results: dict[str, Any]) -> None:
    for name, plugin in results["plugins"].items():
        s = plugin["stats"]
        assert plugin["enqueued"] == s["messages_processed"] + s["dropped"] + s["queue_depth"], name
    reload = results["reload"]
    assert results["fast_handled"] == 2000
    assert results["plugins"]["fast"]["stats"]["messages_processed"] == 2000 + reload["sent"]
    # slow was unloaded with drain=False right after try_dispatch filled its queue
    assert results["plugins"]["slow"]["stats"]["dropped"] == SLOW_CAPACITY


def test_live_reload_swapped_in_the_signed_version_losing_nothing(results: dict[str, Any]) -> None:
    reload = results["reload"]
    assert (reload["from"], reload["to"]) == ("1.0.0", "1.1.0")
    assert reload["verified"]
    assert reload["sent"] > 0 and reload["handled"] == reload["sent"]
    assert 0 <= reload["pause"] < reload["serving"]


def test_every_call_is_a_dispatched_frame_or_an_error(results: dict[str, Any]) -> None:
    totals = results["dispatch_stats"]
    assert totals["frames_dispatched"] + totals["dispatch_errors"] == results["calls"]
    rollouts = results["rollouts"]
    geo = rollouts["promoted"]["sent"] + rollouts["rolled_back"]["sent"]
    assert totals["frames_dispatched"] == (
        sum(p["enqueued"] for p in results["plugins"].values()) + geo
    )
    assert totals["plugins_loaded"] == totals["plugins_unloaded"] == 4  # with "geo"


def test_the_canary_is_promoted_and_the_bad_version_rolled_back(results: dict[str, Any]) -> None:
    """Step 6: the printed path, minutes and frame counts follow from the configuration."""
    rollouts = results["rollouts"]
    good, bad = rollouts["promoted"], rollouts["rolled_back"]
    assert (good["stable"], good["candidate"], good["state"]) == ("base", "v2", "succeeded")
    assert good["path"] == "5 % -> 25 % -> 50 % -> promoted"
    assert good["minute"] == len(GEO_CONFIG.steps)  # one passing check per step
    assert (bad["stable"], bad["candidate"], bad["state"]) == ("v2", "v3", "rolled_back")
    assert bad["path"] == "5 % -> check failed -> check failed -> rolled back"
    assert bad["minute"] == GEO_CONFIG.threshold  # one failed check a minute
    # every frame sent during a rollout was handled by one of its two versions
    for rollout in (good, bad):
        assert sum(rollout["frames"].values()) == rollout["sent"], rollout
        assert rollout["sent"] % GEO_FRAMES_PER_INTERVAL == 0
    # the canary's share is what its weights say: 5 %, 25 %, then 50 % of new keys
    v2_share = good["frames"]["v2"] / GEO_FRAMES_PER_INTERVAL
    assert abs(v2_share - (5 + 25 + 50) / 100) < 0.1, v2_share
    assert bad["errors"]["v3"] == bad["frames"]["v3"] // GEO_FAIL_EVERY > 0
    assert rollouts["logged_errors"] == bad["errors"]["v3"]  # counted, kept off the screen
    assert good["errors"] == {"base": 0, "v2": 0}
    # per version over both rollouts: v2 took frames in both
    versions = rollouts["versions"]
    assert versions == {
        "base": good["frames"]["base"],
        "v2": good["frames"]["v2"] + bad["frames"]["v2"],
        "v3": bad["frames"]["v3"],
    }
    assert sum(versions.values()) == good["sent"] + bad["sent"]
    text = render(results)
    assert f"frames base {good['frames']['base']:,} + v2 {good['frames']['v2']:,} = " in text
    assert "rolled back to v2 at minute 2;" in text


def test_errors_match_what_the_demo_sent(results: dict[str, Any]) -> None:
    errors = {name: entry["count"] for name, entry in results["errors"].items()}
    assert errors == {
        "WouldBlock": SLOW_BURST - SLOW_CAPACITY,
        "PermissionDenied": results["plugins"]["limited"]["stats"]["permission_violations"],
        "HeaderDecodeError": 1,
        "PluginNotRegistered": 1,
        "UnknownFrameType": 1,
    }
    assert errors["PermissionDenied"] > 0
    assert results["slow_nowait"]["would_block"] == errors["WouldBlock"]
    assert results["slow_try_dispatch"] == {
        "OK": SLOW_CAPACITY,
        "WOULD_BLOCK": errors["WouldBlock"],
    }
    # the dispatcher's own breakdown agrees: backpressure apart from errors (issue 15 item 3)
    totals = results["dispatch_stats"]
    assert totals["would_block"] == 2 * errors["WouldBlock"]
    assert totals["permission_denied"] == errors["PermissionDenied"]
    assert totals["dispatch_errors"] == sum(
        totals[status.name.lower()] for status in nyxplug.DispatchStatus if status
    )
    assert results["slow_awaited"]["parked"] > 0


def test_the_printed_refusals_name_the_plugin_and_its_manifest_fix(
    results: dict[str, Any],
) -> None:
    """The example plugins are installed from manifests: the fix is in them (issue 15 item 17)."""
    sep = re.escape(os.sep)
    manifest = rf"\S+{sep}packages{sep}{{name}}{sep}nyxplug\.toml"
    assert re.match(
        r"^Queue of plugin 'slow' \(id 2\) is full \(capacity 8\) - frame 0x52 \(DATA\) was "
        r"not enqueued; await dispatch\(\) to wait for space, retry later, or raise "
        rf"\[resources\] capacity of {manifest.format(name='slow')}$",
        results["errors"]["WouldBlock"]["example"],
    )
    assert re.match(
        r"^Plugin 'limited' \(id 3\) lacks permission DATA_ACCESS required by frame 0x52 "
        rf"\(DATA\) - grant it in \[permissions\] of {manifest.format(name='limited')}$",
        results["errors"]["PermissionDenied"]["example"],
    )


def test_report_names_the_implementation_and_fits_a_screen(results: dict[str, Any]) -> None:
    text = render(results)
    expected = "compiled (Cython)" if nyxplug.USE_EXTENSIONS else "pure Python"
    assert f"  dispatcher: {expected}" in text.splitlines()
    assert len(text.splitlines()) <= 45


def test_cli_demo_in_a_subprocess() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "nyxplug", "demo", "--frames", "2000"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONWARNINGS": "error"},
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    lines = proc.stdout.splitlines()
    expected = "compiled (Cython)" if nyxplug.USE_EXTENSIONS else "pure Python"
    assert any(line.startswith(f"  dispatcher: {expected}") for line in lines)
    assert any(line.startswith("  event loop: ") for line in lines)
    for needle in (
        "frames/s",
        "PluginStats returned by unload_plugin()",
        "PermissionDenied x",
        "HeaderDecodeError x1",
        "PluginNotRegistered x1",
        "UnknownFrameType x1",
        "-> 50 % -> promoted at minute 3;",
        "-> check failed -> rolled back to v2 at minute 2;",
    ):
        assert needle in proc.stdout, needle


def test_cli_without_a_command_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 0
    assert "demo" in capsys.readouterr().out


def test_cli_rejects_a_bad_frame_count(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc_info:
        main(["demo", "--frames", "many"])
    assert exc_info.value.code == 2
    assert "expected a whole number, got 'many'" in capsys.readouterr().err
