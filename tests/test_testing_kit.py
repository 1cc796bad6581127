"""Issue 17: the plugin author's kit, run as an author runs it - through ``pytester``.

Each test writes a project into pytester's folder (a plugin from ``nyxplug new``, or
plugin classes) and runs pytest on it: the kit is found through its ``pytest11`` entry
point, as in any environment where nyxplug is installed. The async styles run in a
subprocess each (pytest-asyncio strict and auto, anyio), so their plugins load exactly as
they would for an author, and never in this suite (which runs with ``-p no:asyncio``).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from nyxplug.cli import main

#: Plugin classes the projects below load with ``nyx_host.load(Class, ...)``.
CLASSES = """
import asyncio

from nyxplug import FrameType, PluginHeader
from nyxplug.plugins import Plugin


class Echo(Plugin):
    async def handle(self, message):
        return message.payload


class Boom(Plugin):
    async def handle(self, message):
        raise ValueError(f"cannot take {message.payload!r}")


class Stuck(Plugin):
    async def handle(self, message):
        await asyncio.Event().wait()


class Forward(Plugin):
    async def handle(self, message):
        self.ctx.dispatch_nowait(FrameType.DATA, PluginHeader(2), message.payload)
"""


def project(pytester: pytest.Pytester, **files: str) -> None:
    """``plugin_classes.py`` plus ``files`` (name -> source) in pytester's folder."""
    pytester.makepyfile(plugin_classes=CLASSES)
    pytester.makepyfile(**{name: textwrap.dedent(src) for name, src in files.items()})


def test_a_generated_plugin_project_passes_and_fails_as_it_should(
    pytester: pytest.Pytester, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["new", "greeter", "--dir", "plugins"]) == 0
    capsys.readouterr()
    project(
        pytester,
        test_more="""
        from pathlib import Path

        import pytest

        from nyxplug import HandlerError, PermissionDenied
        from nyxplug.testing import NyxHost
        from plugin_classes import Boom, Echo

        PLUGIN = Path(__file__).parent / "plugins" / "greeter"


        def test_counts(nyx_host: NyxHost) -> None:
            plugin = nyx_host.load(PLUGIN, config={"greeting": "hi"})
            assert plugin.send(b"x") is None
            assert plugin.instance.frames == 1
            assert plugin.instance.ctx.config["greeting"] == "hi"


        def test_counts_wrong(nyx_host: NyxHost) -> None:
            plugin = nyx_host.load(PLUGIN)
            plugin.send_many([b"a", b"b"])
            assert plugin.stats.messages_processed == 3


        def test_a_raising_handler(nyx_host: NyxHost) -> None:
            nyx_host.load(Boom).send(b"x")


        def test_permissions_hold(nyx_host: NyxHost) -> None:
            echo = nyx_host.load(Echo, name="echo", id=9)
            assert echo.send(b"hi") == b"hi"
            with pytest.raises(PermissionDenied):
                echo.send(frame_type=0x53)  # CONTROL: not in its permissions
            with pytest.raises(HandlerError):
                nyx_host.load(Boom).send(b"y")
            assert echo.unload().messages_processed == 1
        """,
    )
    result = pytester.runpytest("-p", "no:asyncio", "-p", "no:anyio", "--benchmark-disable")
    # the generated test file (2: frames, throughput) and the four above
    result.assert_outcomes(passed=4, failed=2)
    result.stdout.fnmatch_lines(
        [
            "FAILED test_more.py::test_counts_wrong - *assert 2 == 3",
            "FAILED test_more.py::test_a_raising_handler - nyxplug.*HandlerError: *",
        ]
    )
    assert "cannot take b'x'" in result.stdout.str()


def test_the_ledger_fails_a_test_that_lost_track_of_a_frame(pytester: pytest.Pytester) -> None:
    project(
        pytester,
        test_ledger="""
        import pytest

        from plugin_classes import Forward, Stuck


        def lose_a_frame(nyx_host):
            nyx_host.load(Stuck, name="stuck", id=2, resources={"handler_timeout": 1.0})
            nyx_host.load(Forward, name="forward", id=1).send(b"x")


        def test_lost(nyx_host):
            lose_a_frame(nyx_host)


        @pytest.mark.nyx_no_ledger
        def test_lost_unchecked(nyx_host):
            lose_a_frame(nyx_host)
        """,
    )
    result = pytester.runpytest("-p", "no:asyncio", "--nyx-ledger-timeout=0.2", "--strict-markers")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*_ test_lost _*",
            "nyxplug ledger (SPEC 4): 1 problem(s)",
            "  - the host was not quiet 0.2 s after the test: a handler still runs or frames "
            "wait in a queue*",
            "  plugin   id  sent  refused  handled  errors  dropped  queued  state",
            "  forward   1     1        0        1       0        0       0  active",
            "  stuck     2     0        0        1       0        0       0  active",
            "  dispatcher: 2 enqueued, 0 refused, 1 send call(s) by this test",
            "*- Captured log teardown -*",
            "*Handler of plugin 'stuck' (id 2) exceeded its 1 s timeout*",
            "*= short test summary info =*",
            "FAILED test_ledger.py::test_lost - Failed: nyxplug ledger (SPEC 4): 1 problem(s)",
        ]
    )


ASYNC_STYLES = """
import pytest

from nyxplug.testing import NyxHost
from plugin_classes import Echo


def test_sync(nyx_host: NyxHost) -> None:
    assert nyx_host.load(Echo).send(b"sync") == b"sync"


{marker}
async def test_async(nyx_host: NyxHost) -> None:
    echo = nyx_host.load(Echo)
    assert await echo.asend(b"awaited") == b"awaited"
    assert echo.send(b"blocking") == b"blocking"  # the host has a loop of its own
    assert echo.stats.messages_processed == 2
"""


def run_subprocess(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", *args, timeout=60)


@pytest.mark.parametrize(
    ("style", "marker", "args"),
    [
        ("plain", "", ["-p", "no:asyncio", "-p", "no:anyio"]),
        (
            "pytest-asyncio strict",
            "@pytest.mark.asyncio",
            ["-p", "asyncio", "-o", "asyncio_mode=strict",
             "-o", "asyncio_default_fixture_loop_scope=function"],
        ),
        (
            "pytest-asyncio auto",
            "",
            ["-p", "asyncio", "-o", "asyncio_mode=auto",
             "-o", "asyncio_default_fixture_loop_scope=function"],
        ),
        (
            "anyio",
            "@pytest.mark.anyio\n@pytest.mark.parametrize('anyio_backend', "
            "[('asyncio', {'use_uvloop': False}), ('asyncio', {'use_uvloop': True})])",
            ["-p", "no:asyncio"],
        ),
    ],
)  # fmt: skip
def test_beside_each_async_test_plugin(
    pytester: pytest.Pytester, style: str, marker: str, args: list[str]
) -> None:
    project(pytester, test_styles=ASYNC_STYLES.format(marker=marker))
    result = run_subprocess(pytester, "-W", "error", *args)
    if style == "plain":  # no async plugin: the kit does not run async tests either
        result.assert_outcomes(passed=1, failed=1)
        result.stdout.fnmatch_lines(["async def functions are not natively supported."])
    elif style == "anyio":
        result.assert_outcomes(passed=3)
    else:
        result.assert_outcomes(passed=2)


def test_nyx_bench_reports_frames_per_second(pytester: pytest.Pytester) -> None:
    project(
        pytester,
        test_bench="""
        from plugin_classes import Echo


        def test_echo_throughput(nyx_host, nyx_bench):
            info = nyx_bench(nyx_host.load(Echo), [b"x"] * 500, rounds=3)
            assert info["frames_per_round"] == 500
        """,
    )
    result = pytester.runpytest("-p", "no:asyncio", "--benchmark-json=bench.json")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*Name (time in *s)*OPS*", "test_echo_throughput *"])
    (bench,) = json.loads((pytester.path / "bench.json").read_text())["benchmarks"]
    info = bench["extra_info"]
    assert info["frames_per_second"] == pytest.approx(bench["stats"]["ops"], rel=0.01)
    assert info["ns_per_frame"] == pytest.approx(bench["stats"]["mean"] * 1e9, rel=0.01)
    assert bench["stats"]["rounds"] == 3
    assert info["dispatcher"].startswith("nyxplug._dispatch")


def test_fixtures_are_documented_and_the_marker_registered(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest("--fixtures", "-p", "no:asyncio")
    result.stdout.fnmatch_lines(["nyx_host -- *", "*A started nyxplug plugin host*"])
    result.stdout.fnmatch_lines(["nyx_bench -- *"])
    result = pytester.runpytest("--markers", "-p", "no:asyncio")
    result.stdout.fnmatch_lines(["@pytest.mark.nyx_no_ledger: *"])


def test_the_pytest_plugin_loads_nothing_heavy() -> None:
    """It is imported by every pytest run where nyxplug is installed: the host, the
    runtime, hypothesis and pytest-benchmark load when a test asks for them."""
    code = (
        "import sys; import nyxplug.testing; "
        "print(sorted(m for m in sys.modules if m.startswith(('nyxplug.plugins', "
        "'nyxplug.testing.', 'nyxplug.trust', 'nyxplug.isolation', 'hypothesis', "
        "'pytest_benchmark', 'cryptography', 'cbor2', 'watchfiles'))))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout == "[]\n", out.stdout + out.stderr


def test_the_kit_declares_no_async_test_hook() -> None:
    import nyxplug.testing as kit

    hooks = {name for name in dir(kit) if name.startswith("pytest_")}
    assert hooks == {"pytest_addoption", "pytest_configure", "pytest_runtest_call"}


def test_the_entry_point_names_the_kit() -> None:
    from importlib.metadata import entry_points

    (point,) = [p for p in entry_points(group="pytest11") if p.name == "nyxplug"]
    assert point.value == "nyxplug.testing"
    assert Path(point.load().__file__).parent.name == "testing"
