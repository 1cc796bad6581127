"""``nyxplug versions`` and ``nyxplug rollout ...`` against a real ``nyxplug serve`` host.

The host is a subprocess with its control socket in tmp_path; a second version of the
plugin appears on disk while it runs, as a release would. The commands run in-process
(``nyxplug.cli.main``) over the socket. The rollout's interval is an hour, so nothing
moves by itself: every transition here is an operator's, and the audit log (read back
from the state dir) names the caller the host read from the socket.
"""

from __future__ import annotations

import getpass
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest
from plugin_helpers import RECORDER, manifest_text
from test_cli_reload import WAIT, cli, host_env

from nyxplug.admin.operations import RolloutOptions, rollout_settings
from nyxplug.cli.control import SOCKET_FILE, Failure, RolloutRequest, request
from nyxplug.plugins.versions import rollout_config
from nyxplug.source.rollout import RolloutSettings

__all__ = ("host_env",)  # the fixture, used here by name

PID = 7


def write_version(root: Path, version: str, **tables: dict[str, object]) -> None:
    folder = root / f"counter-{version}"
    folder.mkdir(parents=True)
    (folder / "main.py").write_text(RECORDER)
    text = manifest_text("counter", PID, version=version, **tables)  # type: ignore[arg-type]
    (folder / "nyxplug.toml").write_text(text)


@pytest.fixture(params=["compiled", "pure"])
def serving(
    request: pytest.FixtureRequest, tmp_path: Path, host_env: dict[str, str]
) -> Iterator[subprocess.Popen[str]]:
    """``nyxplug serve`` on the compiled engine or on the pure-Python twin."""
    write_version(tmp_path / "plugins", "1.0.0")
    env = dict(host_env)
    if request.param == "pure":
        env.pop("NYXPLUG_REQUIRE_EXTENSIONS", None)
        env["NYXPLUG_NO_EXTENSIONS"] = "1"
    proc = subprocess.Popen(
        [sys.executable, "-m", "nyxplug", "serve", "--listen", "127.0.0.1:0",
         "--plugin-dir", str(tmp_path / "plugins"), "--state-dir", str(tmp_path / "state")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert proc.stdout is not None
    seen = []
    while not (line := proc.stdout.readline()).startswith("listening on"):
        assert line, (seen, proc.stderr.read() if proc.stderr else "")
        seen.append(line)
    yield proc
    if proc.poll() is None:
        proc.kill()
    proc.communicate(timeout=WAIT)


def table(out: str) -> dict[str, list[str]]:
    """``nyxplug versions``' rows by version: role, weight, frames, errors, breaker, health."""
    lines = out.splitlines()
    start = next(n for n, line in enumerate(lines) if line.startswith("VERSION "))
    assert lines[start].split() == [
        "VERSION", "ROLE", "WEIGHT", "FRAMES", "ERRORS", "BREAKER", "HEALTH", "LOCATION"
    ]  # fmt: skip
    return {cells[0]: cells[1:7] for cells in (line.split() for line in lines[start + 1 :])}


def audit(state: Path, event: str) -> list[dict[str, object]]:
    lines = (state / "audit.jsonl").read_text().splitlines()
    return [e for e in map(json.loads, lines) if e.get("event") == event]


@pytest.mark.timeout(120)
def test_versions_and_a_rollout_driven_from_the_shell(
    tmp_path: Path, serving: subprocess.Popen[str], capsys: pytest.CaptureFixture[str]
) -> None:
    state = tmp_path / "state"
    s = ("--state-dir", str(state))
    me = f"local:{getpass.getuser()} (uid {os.getuid()}, pid {os.getpid()})"
    # A release lands next to the running one (with a circuit breaker of its own).
    write_version(tmp_path / "plugins", "1.1.0", breaker={"window_size": 10})

    code, out, err = cli(capsys, "versions", "counter", *s)
    assert (code, err) == (0, ""), err
    assert table(out) == {
        "1.0.0": ["stable", "100%", "0", "0", "-", "-"],
        "1.1.0": ["available", "-", "-", "-", "-", "-"],
    }
    code, out, err = cli(capsys, "versions", "counter", "--load", "1.1.0", *s)
    assert (code, err) == (0, ""), err
    assert out.splitlines()[0] == (
        "loaded counter 1.1.0 beside the running version (no traffic until `nyxplug rollout "
        "start counter 1.1.0`)"
    )
    assert table(out)["1.1.0"] == ["loaded", "0%", "0", "0", "closed", "-"]

    code, out, _ = cli(capsys, "rollout", "status", "counter", *s)
    assert (code, out) == (
        0,
        "counter: no rollout yet - start one with `nyxplug rollout start counter VERSION` "
        "(`nyxplug versions counter` lists the versions)\n",
    )
    code, out, err = cli(capsys, "rollout", "start", "counter", "1.1.0", "--steps", "10,50",
                         "--interval", "3600", "--min-frames", "5", *s)  # fmt: skip
    assert (code, err) == (0, ""), err
    lines = out.splitlines()
    assert lines[0] == "counter: canary 1.0.0 -> 1.1.0: progressing, weight 10%, step 1"
    assert re.fullmatch(r"  started \d{4}-\d\d-\d\d \d\d:\d\d:\d\d", lines[1])
    assert lines[2] == "  last event: started - 1.0.0 -> 1.1.0"
    rows = table(cli(capsys, "versions", "counter", *s)[1])
    assert (rows["1.0.0"][:2], rows["1.1.0"][:2]) == (["stable", "90%"], ["candidate", "10%"])
    code, out, _ = cli(capsys, "breaker", "counter", "--set", "forced-open", *s)
    assert code == 0 and out.splitlines()[-1] == (
        "version 1.1.0 (candidate): closed, 0 calls, 0 failures, 0 trips, 0 refused"
    )
    cli(capsys, "breaker", "counter", "--set", "closed", *s)
    # The candidate's own breaker, by its version.
    code, out, err = cli(capsys, "breaker", "counter", "--version", "1.1.0", "--set",
                         "forced-open", *s)  # fmt: skip
    assert (code, err) == (0, ""), err
    lines = out.splitlines()
    assert lines[0] == f"counter 1.1.0 (candidate, id 7): forced-open (set by {me})"
    assert lines[1].startswith("  count window of 10: 0 calls")
    assert "  recovery: - (the ladder repairs the stable version; a rollout judges this one)" in (
        lines
    )
    assert lines[-1] == ("version 1.0.0 (stable): closed, 0 calls, 0 failures, 0 trips, 0 "
                         "refused")  # fmt: skip
    rows = table(cli(capsys, "versions", "counter", *s)[1])
    assert (rows["1.0.0"][4], rows["1.1.0"][4]) == ("closed", "forced-open")
    cli(capsys, "breaker", "counter", "--version", "1.1.0", "--set", "closed", *s)
    code, out, err = cli(capsys, "breaker", "counter", "--version", "9.9.9", *s)
    assert (code, out) == (1, "")
    assert err == (
        "nyxplug breaker: Expected a loaded version of plugin 'counter', got '9.9.9' - loaded: "
        "1.0.0 (stable), 1.1.0 (candidate); found: 1.0.0, 1.1.0 (`nyxplug versions counter` "
        "lists them)\n"
    )
    sets = [(e["state"], e.get("version")) for e in audit(state, "breaker")
            if e["decision"] == "set"]  # fmt: skip
    assert sets == [("forced_open", "1.0.0"), ("closed", "1.0.0"), ("forced_open", "1.1.0"),
                    ("closed", "1.1.0")]  # fmt: skip

    # A second start while one runs is refused with the fix.
    code, out, err = cli(capsys, "rollout", "start", "counter", "1.1.0", *s)
    assert (code, out) == (1, "")
    assert err == (
        "nyxplug rollout: Cannot start a rollout of plugin 'counter': its canary rollout 1.0.0 "
        "-> 1.1.0 is progressing - abort it first: `nyxplug rollout abort counter` "
        "(rollout_action('counter', 'abort')), or promote it: `nyxplug rollout promote counter`\n"
    )

    for verb, state_now in (("pause", "paused"), ("resume", "progressing"),
                            ("promote", "promoted")):  # fmt: skip
        code, out, err = cli(capsys, "rollout", verb, "counter", *s)
        assert (code, err) == (0, ""), err
        assert out.splitlines()[0].startswith(f"counter: canary 1.0.0 -> 1.1.0: {state_now}")
    rows = table(cli(capsys, "versions", "counter", *s)[1])
    assert (rows["1.0.0"][:2], rows["1.1.0"][:2]) == (["warm", "0%"], ["stable", "100%"])

    code, out, _ = cli(capsys, "rollout", "rollback", "counter", *s)
    assert code == 0 and out.startswith("counter: canary 1.0.0 -> 1.1.0: rolled_back\n")
    code, out, _ = cli(capsys, "rollout", "status", "counter", *s)
    kinds = [line.split()[1] for line in out.splitlines()[2:]]
    assert kinds == ["started", "paused", "resumed", "promoted", "rolled_back"]

    # Ended: every action is refused, naming the state and the fix; exit status 1.
    code, out, err = cli(capsys, "rollout", "abort", "counter", *s)
    assert (code, out) == (1, "")
    assert err == (
        "nyxplug rollout: Cannot abort the rollout of plugin 'counter': its canary rollout "
        "1.0.0 -> 1.1.0 has ended (rolled_back) - start a new one (from step 0): `nyxplug "
        "rollout start counter 1.1.0` (start_rollout('counter', '1.1.0'))\n"
    )
    # Every operator's step is in the audit log with the caller the host read.
    callers = {(e["decision"], e.get("caller")) for e in audit(state, "rollout")}
    assert {("paused", me), ("resumed", me), ("promoted", me), ("rolled_back", me)} <= callers
    loaded = [e for e in audit(state, "version") if e["decision"] == "loaded"]
    assert [(e["version"], e["caller"]) for e in loaded] == [("1.1.0", me)]

    # The stable one cannot be unloaded; the other can, drained.
    code, out, err = cli(capsys, "versions", "counter", "--unload", "1.0.0", *s)
    assert (code, out) == (1, "")
    assert err.startswith(
        "nyxplug versions: Cannot unload version 1.0.0 of plugin 'counter': it is the stable "
        "version - "
    )
    code, out, err = cli(capsys, "versions", "counter", "--unload", "1.1.0", *s)
    assert (code, err) == (0, ""), err
    assert out.splitlines()[0] == "unloaded counter 1.1.0 (0 frames handled)"
    assert table(out)["1.1.0"][0] == "available"


def test_rollout_errors_name_the_plugin_version_and_fix(
    tmp_path: Path, serving: subprocess.Popen[str], capsys: pytest.CaptureFixture[str]
) -> None:
    s = ("--state-dir", str(tmp_path / "state"))
    code, out, err = cli(capsys, "rollout", "start", "counter", "9.9.9", *s)
    assert (code, out) == (1, "")
    assert err == (
        "nyxplug rollout: Expected a version of plugin 'counter' that discovery found, got "
        "'9.9.9' - found: 1.0.0; put its folder under a plugin directory (or `nyxplug "
        "install` it) and rediscover\n"
    )
    code, out, err = cli(capsys, "rollout", "start", "nobody", "1.0.0", *s)
    assert (code, out) == (1, "")
    assert err.startswith("nyxplug rollout: No plugin named 'nobody' in the catalog; known "
                          "plugins: counter")  # fmt: skip
    code, out, err = cli(capsys, "rollout", "start", "counter", *s)
    assert (code, out) == (1, "")
    assert err == (
        "nyxplug rollout: which version? give the candidate: `nyxplug rollout start counter "
        "VERSION` (`nyxplug versions counter` lists the ones found)\n"
    )
    code, out, err = cli(capsys, "rollout", "pause", "counter", "--steps", "5", *s)
    assert (code, err) == (
        1, "nyxplug rollout: --steps is an option of `nyxplug rollout start`, not of pause\n"
    )  # fmt: skip
    code, out, err = cli(capsys, "rollout", "pause", "counter", *s)
    assert (code, out) == (1, "")
    assert err == (
        "nyxplug rollout: Cannot pause the rollout of plugin 'counter': it has none - start one "
        "first: `nyxplug rollout start counter VERSION` (start_rollout); `nyxplug versions "
        "counter` lists the versions\n"
    )
    write_version(tmp_path / "plugins", "1.1.0")
    code, out, err = cli(capsys, "rollout", "start", "counter", "1.1.0", "--strategy", "split",
                         *s)  # fmt: skip
    assert (code, out) == (1, "")
    assert err.startswith("nyxplug rollout: Expected `hold`") and "split" in err, err
    code, out, err = cli(capsys, "rollout", "start", "counter", "1.1.0", "--max-error-rate", "2",
                         *s)  # fmt: skip
    assert (code, out) == (1, "")
    assert err == (
        "nyxplug rollout: --max-error-rate: Expected `float` <= 1.0 - at `$.max_error_rate` - "
        "for the rollout of counter\n"
    )
    # A split: the share and the hold, never promoting by itself.
    code, out, err = cli(capsys, "rollout", "start", "counter", "1.1.0", "--strategy", "split",
                         "--weight", "20", "--hold", "7200", "--interval", "3600", *s)  # fmt: skip
    assert (code, err) == (0, ""), err
    assert out.splitlines()[0] == ("counter: split 1.0.0 -> 1.1.0: progressing, weight 20%, step 1")
    bad = request(tmp_path / "state" / SOCKET_FILE,
                  RolloutRequest(name="counter", verb="explode"), timeout=WAIT)  # fmt: skip
    assert isinstance(bad, Failure) and bad.error == "bad-request"
    assert bad.message == (
        "Expected a rollout verb in start, status, pause, resume, promote, rollback, abort, "
        "got 'explode' - for plugin 'counter'"
    )


def test_rollout_without_a_host_says_how_to_start_one(
    tmp_path: Path, host_env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = cli(capsys, "rollout", "start", "counter", "1.1.0")
    assert (code, out) == (1, "")
    path = tmp_path / "state" / SOCKET_FILE
    assert err == (
        f"nyxplug rollout: cannot start a rollout of counter: no running host at {path} - "
        "start one with `nyxplug run --watch` or `nyxplug serve` (versions run in a running "
        "host)\n"
    )


# -- the options over the plugin's own [rollout] -------------------------------------------


def options(**given: object) -> RolloutOptions:
    return msgspec.convert(given, RolloutOptions)


def test_options_apply_over_the_plugins_rollout_table() -> None:
    base = RolloutSettings(steps=(1.0, 2.0), interval=30.0, min_frames=50)
    got = rollout_settings(base, options(min_frames=9))
    assert (got.strategy, got.steps, got.interval, got.min_frames) == (
        "canary", (1.0, 2.0), 30.0, 9
    )  # fmt: skip
    # Another strategy drops the keys only the old one took.
    green = rollout_settings(base, options(strategy="blue_green"))
    assert (green.strategy, green.steps, green.interval) == ("blue_green", None, 30.0)
    assert rollout_config(green).steps == (100.0,)
    split = rollout_settings(None, options(strategy="split", weight=20.0, hold=600.0))
    config = rollout_config(split)
    assert (config.steps, config.auto_promote, config.deadline) == ((20.0,), False, 600.0)
    with pytest.raises(ValueError, match=r"^Expected `hold`.* - in the rollout options$"):
        rollout_settings(None, options(strategy="split", weight=20.0))
    assert not options().given() and options(interval=5.0).given()
    slow = rollout_config(rollout_settings(base, options(max_slow_rate=0.05)))
    assert (slow.max_slow_rate, slow.min_frames) == (0.05, 50)


def test_a_reload_that_started_a_rollout_says_so() -> None:
    """``[rollout] on_new_version``: ``nyxplug reload`` and the watching host's lines."""
    from nyxplug.cli.reload import describe
    from nyxplug.plugins import ReloadResult

    result = ReloadResult(name="counter", outcome="rollout", from_version="1.0.0",
                          to_version="1.1.0", pause=None, attempts=1)  # fmt: skip
    assert describe(result) == (
        "rolling out counter 1.0.0 -> 1.1.0 instead of a reload ([rollout] on_new_version) - "
        "`nyxplug rollout status counter` follows it"
    )
