"""Shared by the hot-reload tests: a counter plugin, a sink it reports to, a sequenced sender.

* ``Sink`` is what the plugin reports to. A test puts one in ``sys.modules["reload_sink"]``
  (``install_sink``; the ``sink`` fixtures do it) and the plugin module looks it up when it
  is imported. Every frame lands in ``sink.frames`` as ``(seq, version, count)`` - ``count``
  is the instance's counter after the frame, so a counter that carried its state across a
  swap reads ``1, 2, 3, ...`` without a gap. Lifecycle calls land in ``sink.events`` as
  ``(what, version, serial)`` (``serial`` numbers the instances in creation order).
* ``write_counter`` writes (or rewrites, in place) the counter plugin folder for a version;
  hooks can be swapped for failing or waiting ones, and the module can be made unimportable.
* ``Sender`` pushes DATA frames carrying 0, 1, 2, ... with ``await dispatch(...)``, so it
  waits for room in a full queue like a real sender; it stops at the first refusal.

Nothing sleeps: waits are on events (``Sink.wait_frames``, ``wait_until``) under a timeout.
"""

from __future__ import annotations

import asyncio
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

from plugin_helpers import manifest_text

import nyxplug
from nyxplug import NyxplugError

__all__ = (
    "COUNTER",
    "DATA",
    "EVENT_TIMEOUT",
    "SINK_MODULE",
    "Sender",
    "Sink",
    "install_sink",
    "runs",
    "seq_of",
    "seq_payload",
    "settle",
    "wait_until",
    "write_counter",
)

DATA = nyxplug.FrameType.DATA
#: How long a test waits for an event it expects before failing.
EVENT_TIMEOUT = 5.0
#: Where the counter plugin finds its sink.
SINK_MODULE = "reload_sink"


def seq_payload(seq: int) -> bytes:
    return seq.to_bytes(8, "big")


def seq_of(payload: bytes) -> int:
    return int.from_bytes(payload, "big")


async def settle(rounds: int = 20) -> None:
    """Single yields, to give a task the chance to do what it must *not* do yet."""
    for _ in range(rounds):
        await asyncio.sleep(0)  # ok-sleep: a single yield, never a wait for work


async def wait_until(
    predicate: Callable[[], bool], event: asyncio.Event, timeout: float = EVENT_TIMEOUT
) -> None:
    """Wait until ``predicate()`` holds; ``event`` is set whenever it may have changed."""
    async with asyncio.timeout(timeout):
        while not predicate():
            event.clear()
            await event.wait()


def runs(labels: list[Any]) -> list[Any]:
    """``labels`` with repeats collapsed: ``[a, a, b, a] -> [a, b, a]``."""
    out: list[Any] = []
    for label in labels:
        if not out or out[-1] != label:
            out.append(label)
    return out


class Sink:
    """What the counter plugin reports to; see the module docstring."""

    def __init__(self) -> None:
        self.frames: list[tuple[int, str, int]] = []
        self.events: list[tuple[str, str, int]] = []
        self.progress = asyncio.Event()  # set on every frame and every event
        self.gates: dict[str, asyncio.Event] = {}
        self._serial = 0

    # -- called by the plugin ---------------------------------------------------------

    def new_serial(self) -> int:
        serial = self._serial
        self._serial += 1
        return serial

    def frame(self, seq: int, version: str, count: int) -> None:
        self.frames.append((seq, version, count))
        self.progress.set()

    def event(self, what: str, version: str, serial: int) -> None:
        self.events.append((what, version, serial))
        self.progress.set()

    async def more(self, frames: int) -> None:
        """Return once ``frames`` more frames were handled (by whichever version serves)."""
        target = len(self.frames) + frames
        await wait_until(lambda: len(self.frames) >= target, self.progress)

    async def hold(self, point: str, version: str, serial: int) -> None:
        """Record ``held:<point>`` and wait until the test opens that gate (if it made one)."""
        self.event(f"held:{point}", version, serial)
        gate = self.gates.get(point)
        if gate is not None:
            async with asyncio.timeout(EVENT_TIMEOUT):
                await gate.wait()

    def calls(self, what: str, version: str | None = None) -> int:
        return sum(1 for w, v, _ in self.events if w == what and version in (None, v))

    # -- used by the tests --------------------------------------------------------------

    def gate(self, point: str) -> asyncio.Event:
        """Make ``hold(point)`` wait until the returned event is set."""
        self.gates[point] = asyncio.Event()
        return self.gates[point]

    async def wait_frames(self, total: int) -> None:
        await wait_until(lambda: len(self.frames) >= total, self.progress)

    async def wait_event(self, what: str, version: str | None = None) -> None:
        await wait_until(lambda: self.calls(what, version) > 0, self.progress)

    def seqs(self) -> list[int]:
        return [seq for seq, _, _ in self.frames]

    def versions(self) -> list[str]:
        return [version for _, version, _ in self.frames]

    def counts(self) -> list[int]:
        return [count for _, _, count in self.frames]

    def serials(self, what: str) -> list[int]:
        return [serial for w, _, serial in self.events if w == what]

    def index(self, what: str, serial: int) -> int:
        """Position of the first ``what`` event of instance ``serial`` in ``events``."""
        for i, (w, _, s) in enumerate(self.events):
            if w == what and s == serial:
                return i
        raise AssertionError(f"no {what!r} event for instance {serial}: {self.events}")


def install_sink() -> Sink:
    sink = Sink()
    sys.modules[SINK_MODULE] = sink  # type: ignore[assignment]
    return sink


#: The counter plugin; ``@...@`` markers are filled in by ``write_counter``.
COUNTER = '''
"""Counter plugin @VERSION@ (@MARKER@): counts frames, hands its count to the next version."""

import asyncio
import sys

from nyxplug.plugins import Plugin

VERSION = "@VERSION@"
SINK = sys.modules["reload_sink"]
SINK.event("imported", VERSION, -1)


class Entry(Plugin):
    def __init__(self):
        self.serial = SINK.new_serial()
        self.count = 0
        self.last_seq = -1
        self.imported = None
@INIT@

    async def on_load(self, ctx):
        SINK.event("on_load", VERSION, self.serial)
@ON_LOAD@

    async def handle(self, message):
@HANDLE@
        self.count += 1
        self.last_seq = int.from_bytes(message.payload, "big")
        SINK.frame(self.last_seq, VERSION, self.count)

    async def health(self):
        SINK.event("health", VERSION, self.serial)
@HEALTH@

    def export_state(self):
        SINK.event("export_state", VERSION, self.serial)
        return {"count": self.count, "last_seq": self.last_seq}

    def import_state(self, state):
        SINK.event("import_state", VERSION, self.serial)
@IMPORT_STATE@
        self.imported = state
        self.count = state["count"]
        self.last_seq = state["last_seq"]

    async def on_unload(self):
        SINK.event("on_unload", VERSION, self.serial)
@MIGRATE@
'''

_MIGRATE = """
    def migrate_state(self, state, from_version):
        SINK.event("migrate_state", VERSION, self.serial)
        return dict(state, migrated_from=from_version)
"""


def _body(code: str) -> str:
    return textwrap.indent(textwrap.dedent(code).strip("\n"), " " * 8)


def write_counter(
    root: Path,
    name: str,
    plugin_id: int,
    version: str = "1.0.0",
    *,
    marker: str = "",
    init: str = "pass",
    on_load: str = "pass",
    health: str = "return True",
    handle: str = "pass",
    import_state: str = "pass",
    migrate: bool = False,
    source: str | None = None,
    manifest_name: str | None = None,
    api: str | None = None,
    capacity: int = 8,
    handler_timeout: float | None = None,
    dependencies: dict[str, str] | None = None,
) -> Path:
    """Write ``root/name/`` for ``version`` (overwriting files in place, like an editor).

    ``init``/``on_load``/``health`` replace those method bodies (plain code, dedented);
    ``handle``/``import_state`` run first in those methods;
    ``migrate`` adds ``migrate_state``; ``source`` replaces the whole module;
    ``manifest_name``/``api`` write another ``[plugin] name``/``api`` than the defaults.
    """
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    tables: dict[str, dict[str, Any]] = {"resources": {"capacity": capacity}}
    if handler_timeout is not None:
        tables["resources"]["handler_timeout"] = handler_timeout
    if dependencies:
        tables["dependencies"] = dict(dependencies)
    manifest = manifest_text(manifest_name or name, plugin_id, version=version, **tables)
    if api is not None:
        manifest = manifest.replace('api = ">=1.0, <2"', f'api = "{api}"')
    (folder / "nyxplug.toml").write_text(manifest)
    if source is None:
        source = (
            COUNTER.replace("@VERSION@", version)
            .replace("@MARKER@", marker or version)
            .replace("@INIT@", _body(init))
            .replace("@ON_LOAD@", _body(on_load))
            .replace("@HEALTH@", _body(health))
            .replace("@HANDLE@", _body(handle))
            .replace("@IMPORT_STATE@", _body(import_state))
            .replace("@MIGRATE@", _MIGRATE if migrate else "")
        )
    (folder / "main.py").write_text(source)
    return folder


class Sender:
    """Sends DATA frames carrying 0, 1, 2, ... to one plugin until stopped or refused.

    ``sent`` counts the ``dispatch`` calls that returned: each enqueued exactly one frame.
    The first refusal (the plugin closed or unloaded) ends the sender, kept in ``error``.
    """

    def __init__(self, dispatcher: Any, plugin_id: int) -> None:
        self.dispatcher = dispatcher
        self.header = nyxplug.PluginHeader(plugin_id).encode()
        self.sent = 0
        self.error: NyxplugError | None = None
        self._stopping = False
        self._task: asyncio.Task[None] | None = None

    def start(self) -> Sender:
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    async def _run(self) -> None:
        dispatch = self.dispatcher.dispatch
        while not self._stopping:
            try:
                await dispatch(DATA, self.header, seq_payload(self.sent))
            except NyxplugError as exc:
                self.error = exc
                return
            self.sent += 1
            if self.sent % 64 == 0:
                # A queue with room never makes dispatch wait: yield now and then anyway.
                await asyncio.sleep(0)  # ok-sleep: a single yield, never a wait for work

    @property
    def done(self) -> bool:
        return self._task is not None and self._task.done()

    async def stop(self) -> int:
        """Stop sending; the number of frames sent."""
        self._stopping = True
        assert self._task is not None
        async with asyncio.timeout(EVENT_TIMEOUT):
            await self._task
        return self.sent
