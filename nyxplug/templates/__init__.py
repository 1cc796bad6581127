"""The files ``nyxplug new`` writes: ``str.format`` templates (braces in them are doubled).

One manifest, and a plugin and its tests per handler kind (``KINDS``): ``async`` (the
default), ``sync``, ``batch``, ``stateful`` and ``isolated``. Fields: ``name`` (the
plugin name), ``id``, ``module`` (``name`` with ``_`` for ``-``, plus ``_plugin``),
``class_name``, ``description`` and ``isolation``; the test also gets ``plugin_dir``
(the folder holding the plugin's folder, relative to the test's folder) and
``test_path`` (where it was written). Every test file uses the testing kit
(``nyx_host``, ``nyx_bench``) and ends with a benchmark.
"""

from __future__ import annotations

__all__ = ("DESCRIPTIONS", "KINDS", "MANIFEST", "PLUGINS", "TESTS")

MANIFEST = """\
# nyxplug.toml - the manifest of the plugin "{name}".
# Only [plugin] is required; the other tables show their defaults. Unknown keys are errors.
# Check the folder with: nyxplug validate <this folder>

[plugin]
name = "{name}"                   # ^[a-z][a-z0-9_-]{{0,63}}$, unique in the host
id = {id}                         # the plugin id in frame headers (0..4294967295), unique
version = "0.1.0"                 # semantic version of this plugin
entry = "{module}:{class_name}"   # module:attr - a Plugin class (or a factory) in this folder
api = ">=1.0, <2"                 # the plugin-API versions this plugin works with
description = "{description}"
authors = []
tags = []

[permissions]
# Frame types it may receive and send: HANDSHAKE, DATA_ACCESS, CONTROL, ERROR_REPORTING.
frames = ["DATA_ACCESS"]

[sandbox]
# Checked while its code runs (cooperative: stops mistakes, not a determined attacker).
network = false                   # may it open sockets at all?
network_allowlist = []            # when network = true: "api.example.com", "*.example.com"
filesystem = "none"               # "none", "read-only" or "full"
filesystem_allowlist = []         # path prefixes it may open
# memory_limit = "64MiB"          # only with isolation = "process": the child's cgroup

[resources]
# capacity = 100                  # queue slots (default: the host's defaults.capacity)
# handler_timeout = 5.0           # seconds per frame (default: defaults.handler_timeout)
isolation = "{isolation}"{isolation_pad}# "in-process" or "process" (a child process)

[config]
# A free table, handed to the plugin as ctx.config (read-only).
greeting = "hello"

[dependencies]
# Other plugins this one needs, loaded before it: name = "version range".
# other-plugin = ">=1.0, <2"
"""

#: The handler kinds ``nyxplug new --kind`` offers, the default first.
KINDS = ("async", "sync", "batch", "stateful", "isolated")

DESCRIPTIONS = {
    "async": "Counts the frames it receives",
    "sync": "Answers each frame with its payload in upper case",
    "batch": "Answers each frame with its size, a run of queued frames at a time",
    "stateful": "Counts frames and keeps the count across hot reloads",
    "isolated": "Checks that each payload is UTF-8 text, in a child process",
}

_ASYNC = '''\
"""The "{name}" plugin: counts the frames it receives (written by `nyxplug new`)."""

from __future__ import annotations

from typing import Any

from nyxplug import PluginMessage
from nyxplug.plugins import Plugin, PluginContext


class {class_name}(Plugin):
    """Counts frames and bytes; put the plugin's work in ``handle``."""

    def __init__(self) -> None:
        self.frames = 0
        self.bytes = 0
        self.last_payload: bytes | None = None

    async def on_load(self, ctx: PluginContext) -> None:
        """Called once before the first frame (``self.ctx`` is set); raise to refuse."""
        ctx.logger.info(
            "%s %s loaded as id %d: %s",
            ctx.name,
            ctx.version,
            ctx.id,
            ctx.config.get("greeting", "hello"),
        )

    async def handle(self, message: PluginMessage) -> None:
        """One frame; an exception is counted and logged, and the next frame follows."""
        self.frames += 1
        self.bytes += message.size
        self.last_payload = message.payload
        self.ctx.logger.debug("frame 0x%02x, %d bytes", message.frame_type, message.size)

    async def health(self) -> bool:
        """True when the plugin can take traffic (checked after on_load)."""
        return True

    async def on_unload(self) -> None:
        """Called once after the last frame was handled."""
        self.ctx.logger.info(
            "%s unloaded after %d frames (%d bytes)", self.ctx.name, self.frames, self.bytes
        )

    def export_state(self) -> Any:
        """Handed to the next version of this plugin on a hot swap."""
        return {{"frames": self.frames, "bytes": self.bytes}}

    def import_state(self, state: Any) -> None:
        """Take over what the previous version exported."""
        if isinstance(state, dict):
            self.frames = int(state.get("frames", 0))
            self.bytes = int(state.get("bytes", 0))
'''

_SYNC = '''\
"""The "{name}" plugin: answers each frame with its payload in upper case.

A plain ``def handle``: no awaiting, the cheapest handler there is. It holds the event
loop while it runs, so keep it short (the host times it against its handler timeout).
"""

from __future__ import annotations

from nyxplug import PluginMessage
from nyxplug.plugins import Plugin


class {class_name}(Plugin):
    def handle(self, message: PluginMessage) -> bytes:  # type: ignore[override]
        """One frame; what it returns is the reply to a request."""
        return message.payload.upper()
'''

_BATCH = '''\
"""The "{name}" plugin: answers each frame with its size, a run of frames at a time.

With ``handle_batch`` the host may hand over every frame waiting in the queue in one
call (each frame reaches exactly one call, in order): one call's overhead for many
frames. ``handle`` still serves a frame on its own.
"""

from __future__ import annotations

from nyxplug import PluginMessage
from nyxplug.plugins import Plugin


class {class_name}(Plugin):
    def __init__(self) -> None:
        self.batches = 0

    async def handle(self, message: PluginMessage) -> bytes:
        return len(message.payload).to_bytes(4, "big")

    async def handle_batch(self, messages: list[PluginMessage]) -> list[bytes]:
        """A run of queued frames; returns one reply per frame (or None for none)."""
        self.batches += 1
        return [len(message.payload).to_bytes(4, "big") for message in messages]
'''

_STATEFUL = '''\
"""The "{name}" plugin: counts frames, and keeps the count across hot reloads.

On a reload the host pauses the plugin, calls the running version's ``export_state``,
the new version's ``migrate_state`` (only when the major version changes) and its
``import_state``, then lets frames flow to the new version. The three are plain
functions: the plugin is paused while they run.
"""

from __future__ import annotations

from typing import Any

from nyxplug import PluginMessage
from nyxplug.plugins import Plugin

#: The shape of the exported state; bump it with the major version.
STATE_VERSION = 2


class {class_name}(Plugin):
    def __init__(self) -> None:
        self.frames = 0
        self.bytes = 0

    async def handle(self, message: PluginMessage) -> bytes:
        """Counts the frame; the reply is the count so far (8 bytes, big-endian)."""
        self.frames += 1
        self.bytes += message.size
        return self.frames.to_bytes(8, "big")

    def export_state(self) -> Any:
        """Handed to the next version: plain data (it may cross a process boundary)."""
        return {{"v": STATE_VERSION, "frames": self.frames, "bytes": self.bytes}}

    def migrate_state(self, state: Any, from_version: str) -> Any:
        """The previous major version's state, in this version's shape."""
        if isinstance(state, dict) and state.get("v") != STATE_VERSION:
            return {{
                "v": STATE_VERSION,
                "frames": int(state.get("count", state.get("frames", 0))),
                "bytes": 0,
            }}
        return state

    def import_state(self, state: Any) -> None:
        """Take over what the previous version exported (and migrate_state shaped)."""
        if isinstance(state, dict):
            self.frames = int(state.get("frames", 0))
            self.bytes = int(state.get("bytes", 0))
'''

_ISOLATED = '''\
"""The "{name}" plugin: checks that each payload is UTF-8 text, in a child process.

``[resources] isolation = "process"`` in nyxplug.toml runs it in a child of its own,
under the kernel's limits ([sandbox]: seccomp, no network, memory_limit in a cgroup): a
crash or a hang takes down the child, never the host, which restarts it. The code is
the same as for an in-process plugin; replies do not cross the process boundary (a
request to an isolated plugin gets None).
"""

from __future__ import annotations

import os

from nyxplug import PluginMessage
from nyxplug.plugins import Plugin, PluginContext


class {class_name}(Plugin):
    async def on_load(self, ctx: PluginContext) -> None:
        ctx.logger.info("%s runs in process %d", ctx.name, os.getpid())

    async def handle(self, message: PluginMessage) -> None:
        """Raises (counted in the plugin's errors) for a payload that is not UTF-8."""
        message.payload.decode("utf-8")
'''

PLUGINS = {
    "async": _ASYNC,
    "sync": _SYNC,
    "batch": _BATCH,
    "stateful": _STATEFUL,
    "isolated": _ISOLATED,
}

_TEST_HEAD = '''\
"""The "{name}" plugin in a real host, through nyxplug's testing kit.

Written by `nyxplug new` outside the plugin folder (tests stay out of its package).
`nyx_host` loads the folder as `nyxplug run` does (manifest, permissions, sandbox,
isolation); when a test ends, every frame it sent must be accounted for, or the test
fails with the ledger printed. `nyx_bench` times the plugin with pytest-benchmark.
Run: `python -m pytest -q {test_path}` (`--benchmark-disable` skips the timing).
"""

from __future__ import annotations
{imports}
from pathlib import Path

from nyxplug.testing import NyxHost

#: The plugin's folder (what `nyx_host.load` reads, as `nyxplug run --plugin-dir` would).
PLUGIN = (Path(__file__).resolve().parent / "{plugin_dir}" / "{name}").resolve()
'''

_TEST_BENCH = '''

def test_{module}_throughput(nyx_host: NyxHost, nyx_bench) -> None:
    """Frames per second through the plugin: the OPS column of the benchmark table."""
    plugin = nyx_host.load(PLUGIN)
    info = nyx_bench(plugin, [b"x" * 64] * 2_000)
    assert info["frames_per_round"] == 2_000
    assert plugin.stats.errors == 0
'''

_TEST_ASYNC = """

def test_{module}_handles_data_frames(nyx_host: NyxHost) -> None:
    plugin = nyx_host.load(PLUGIN)
    plugin.send_many([b"ping", b"pong"])  # returns once both were handled
    stats = plugin.stats
    assert stats.messages_processed == 2
    assert stats.errors == 0, "the handler raised: see the log above"
    assert stats.sandbox_violations == 0
"""

_TEST_SYNC = """

def test_{module}_answers_in_upper_case(nyx_host: NyxHost) -> None:
    plugin = nyx_host.load(PLUGIN)
    assert plugin.send(b"ping") == b"PING"
    assert plugin.send_many([b"a", b"b"]) == [b"A", b"B"]
    assert plugin.stats.messages_processed == 3
"""

_TEST_BATCH = """

def test_{module}_answers_every_frame_of_a_batch(nyx_host: NyxHost) -> None:
    plugin = nyx_host.load(PLUGIN, resources={{"capacity": 64}})
    payloads = [bytes(n) for n in range(50)]
    replies = plugin.send_many(payloads)
    assert replies == [len(p).to_bytes(4, "big") for p in payloads]
    assert plugin.stats.messages_processed == 50
    assert plugin.instance.batches >= 1
"""

_TEST_STATEFUL = """

def test_{module}_counts(nyx_host: NyxHost) -> None:
    plugin = nyx_host.load(PLUGIN)
    assert plugin.send(b"a") == (1).to_bytes(8, "big")
    assert plugin.send(b"b") == (2).to_bytes(8, "big")


def test_{module}_keeps_its_count_across_a_reload(nyx_host: NyxHost) -> None:
    plugin = nyx_host.load(PLUGIN)
    plugin.send_many([b"a", b"b", b"c"])
    result = plugin.reload()  # the same folder, read again: edits included
    assert result.outcome == "swapped"
    assert plugin.instance.frames == 3
    assert plugin.send(b"d") == (4).to_bytes(8, "big")


def test_{module}_migrates_state_across_a_major_version(
    nyx_host: NyxHost, tmp_path: Path
) -> None:
    plugin = nyx_host.load(PLUGIN)
    plugin.send_many([b"a", b"b"])
    new = tmp_path / "{name}"
    shutil.copytree(PLUGIN, new, ignore=shutil.ignore_patterns("__pycache__"))
    manifest = new / "nyxplug.toml"
    manifest.write_text(manifest.read_text().replace('version = "0.1.0"', 'version = "1.0.0"', 1))
    result = plugin.reload(new)  # 0.x -> 1.x: migrate_state runs before import_state
    assert (result.from_version, result.to_version) == ("0.1.0", "1.0.0")
    assert plugin.send(b"c") == (3).to_bytes(8, "big")
"""

_TEST_ISOLATED = '''

def test_{module}_answers_from_its_own_process(nyx_host: NyxHost) -> None:
    plugin = nyx_host.load(PLUGIN)
    plugin.send_many(["héllo".encode(), b"abc"])
    child = plugin.isolation_stats
    assert child is not None and child.pid not in (None, os.getpid())
    assert child.frames_completed == 2
    assert (plugin.stats.messages_processed, plugin.stats.errors) == (2, 0)


def test_{module}_also_runs_in_process(nyx_host: NyxHost) -> None:
    """The same code without a child: quicker to debug (pdb works in it)."""
    plugin = nyx_host.load(PLUGIN, resources={{"isolation": "in-process"}})
    plugin.send(b"abc")
    assert plugin.isolation_stats is None
    assert plugin.stats.messages_processed == 1
'''

TESTS = {
    kind: _TEST_HEAD.replace("{imports}", imports) + body + _TEST_BENCH
    for kind, imports, body in (
        ("async", "", _TEST_ASYNC),
        ("sync", "", _TEST_SYNC),
        ("batch", "", _TEST_BATCH),
        ("stateful", "\nimport shutil", _TEST_STATEFUL),
        ("isolated", "\nimport os", _TEST_ISOLATED),
    )
}
