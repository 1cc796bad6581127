"""``nyx_host`` as nyxplug's own tests use it: real folders and classes, in a real host,
on both twins and both loops (tests/conftest.py's ``nyx_host_options``)."""

from __future__ import annotations

import os
import re
import zlib
from pathlib import Path

import pytest
from plugin_helpers import RECORDER, write_plugin

from nyxplug import HandlerError, PermissionDenied, SandboxViolation
from nyxplug.plugins import Plugin, PluginLoadError, ReloadFailed, plugin
from nyxplug.testing import LedgerError, NyxHost
from nyxplug.testing._manifest import dumps

STATEFUL = """
from nyxplug.plugins import Plugin

class Entry(Plugin):
    def __init__(self):
        self.count = 0

    async def handle(self, message):
        self.count += 1
        return b"%d:%s" % (self.count, message.payload)

    def export_state(self):
        return {"count": self.count}

    def import_state(self, state):
        self.count = state["count"]
"""


class Echo(Plugin):
    async def handle(self, message: object) -> bytes:
        return bytes(reversed(message.payload))  # type: ignore[attr-defined]


class OpensFiles(Plugin):
    async def handle(self, message: object) -> None:
        open(message.payload.decode()).close()  # type: ignore[attr-defined]


def test_a_folder_plugin_sends_reloads_and_unloads(nyx_host: NyxHost, tmp_path: Path) -> None:
    folder = write_plugin(tmp_path / "v1", "counter", 31, STATEFUL)
    counter = nyx_host.load(folder, config={"mode": "test"})
    assert counter.send(b"a") == b"1:a"
    assert counter.send_many([b"b", b"c"]) == [b"2:b", b"3:c"]
    assert counter.instance.ctx.config == {"mode": "test"}
    # the source stays as written: the overrides went into the host's copy
    assert "[config]" not in (folder / "nyxplug.toml").read_text()
    assert counter.folder is not None
    assert 'mode = "test"' in (counter.folder / "nyxplug.toml").read_text()
    v2 = write_plugin(tmp_path / "v2", "counter", 31, STATEFUL.replace(b"%d:%s".decode(), "%d;%s"),
                      version="1.1.0")  # fmt: skip
    result = counter.reload(v2)
    assert (result.outcome, result.from_version, result.to_version) == ("swapped", "1.0.0", "1.1.0")
    assert counter.send(b"d") == b"4;d"
    stats = counter.unload()
    assert (stats.messages_processed, stats.errors) == (4, 0)
    assert counter.stats == stats  # the final counters stay readable
    (row,) = nyx_host.ledger()
    assert (row.name, row.sent, row.refused, row.handled) == ("counter", 4, 0, 4)


def test_a_failing_reload_keeps_the_old_version(nyx_host: NyxHost, tmp_path: Path) -> None:
    counter = nyx_host.load(write_plugin(tmp_path / "v1", "counter", 31, STATEFUL))
    counter.send(b"a")
    broken = write_plugin(tmp_path / "v2", "counter", 31, "raise ImportError('nope')\n",
                          version="1.1.0")  # fmt: skip
    with pytest.raises(ReloadFailed, match=r"ImportError: nope"):
        counter.reload(broken)
    assert counter.send(b"b") == b"2:b"


def test_a_class_plugin_gets_a_manifest_and_its_permissions_hold(nyx_host: NyxHost) -> None:
    echo = nyx_host.load(Echo)
    assert (echo.name, echo.id) == ("echo", zlib.crc32(b"echo") & 0x7FFFFFFF)
    assert echo.status.permissions == ("DATA_ACCESS",)
    assert echo.send(b"abc") == b"cba"
    with pytest.raises(PermissionDenied):
        echo.send(frame_type=0x53)  # CONTROL
    assert echo.stats.permission_violations == 1
    (row,) = nyx_host.ledger()
    assert (row.sent, row.refused) == (1, 1)
    with pytest.raises(TypeError, match=r"^Expected a plugin loaded from a folder, got the class"):
        echo.reload()


def test_a_decorated_class_keeps_its_manifest_and_takes_overrides(nyx_host: NyxHost) -> None:
    @plugin(name="marked", id=77, version="2.0.0", permissions=["DATA_ACCESS", "CONTROL"])
    class Marked(Echo):
        pass

    handle = nyx_host.load(Marked, config={"k": 1})
    assert (handle.name, handle.id, handle.status.version) == ("marked", 77, "2.0.0")
    assert handle.send(b"x", frame_type=0x53) == b"x"
    assert handle.instance.ctx.config == {"k": 1}
    assert isinstance(handle.instance, Marked)


def test_the_sandbox_applies(nyx_host: NyxHost, tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("x")
    snoop = nyx_host.load(OpensFiles, name="snoop", sandbox={"filesystem": "none"})
    with pytest.raises(HandlerError) as excinfo:
        snoop.send(str(secret).encode())
    assert isinstance(excinfo.value.__cause__, SandboxViolation)
    assert snoop.stats.sandbox_violations == 1


def test_a_plugin_that_cannot_load_says_why(nyx_host: NyxHost, tmp_path: Path) -> None:
    folder = write_plugin(tmp_path, "broken", 5, "raise ImportError('missing dep')\n")
    with pytest.raises(PluginLoadError, match=r"import.*ImportError: missing dep"):
        nyx_host.load(folder)
    with pytest.raises(TypeError, match=r"^Expected a manifest keyword \(.*\), got 'colour'"):
        nyx_host.load(write_plugin(tmp_path, "ok", 6), colour="red")
    with pytest.raises(FileNotFoundError, match=r"^Expected a plugin folder with a nyxplug\.toml"):
        nyx_host.load(tmp_path / "nowhere")


def test_an_isolated_plugin_runs_in_its_own_process(nyx_host: NyxHost, tmp_path: Path) -> None:
    folder = write_plugin(tmp_path, "far", 8, RECORDER, resources={"isolation": "process"})
    far = nyx_host.load(folder)
    far.send_many([b"a", b"b"])
    child = far.isolation_stats
    assert child is not None and child.pid not in (None, os.getpid())
    assert child.frames_completed == 2 and far.stats.messages_processed == 2


def test_the_ledger_names_a_plugin_that_vanished(tmp_path: Path) -> None:
    """A plugin gone without its final counters (here: unloaded behind the kit's back)."""
    with NyxHost(tmp_path / "host", loop="asyncio") as host:
        gone = host.load(write_plugin(tmp_path, "gone", 9))
        gone.send(b"x")
        host.run(host.manager.unload("gone"))
        with pytest.raises(LedgerError) as excinfo:
            host.ledger(timeout=1.0)
    text = str(excinfo.value)
    assert re.search(
        r"^  - plugin 'gone' \(id 9\) is gone and its counters with it - 1 frame\(s\) sent to "
        r"it are unaccounted for; it is unloaded$",
        text,
        re.M,
    ), text
    assert re.search(r"^  gone +9 +1 +0 +\? +\? +\? +\?  unloaded$", text, re.M), text


def test_the_manifest_writer_round_trips_through_tomllib() -> None:
    import tomllib

    document = {
        "plugin": {"name": "x", "id": 1, "version": "1.0.0", "tags": ["a", 'b"c']},
        "config": {"nested": {"k": 1.5, "on": True}, "key with space": "v\n"},
    }
    assert tomllib.loads(dumps(document)) == document
