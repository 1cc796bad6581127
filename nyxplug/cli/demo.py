"""``nyxplug demo``: a newcomer's first minute with the dispatcher.

Three example plugins show the three kinds of handler and what the dispatcher does
around them: "fast" takes a timed burst, "slow" (capacity 8) shows backpressure, and
"limited" (HANDSHAKE only) shows a permission check. A few bad frames show the typed
errors. A fourth plugin, "geo", runs three versions side by side: a healthy canary is
promoted step by step and a failing one is rolled back, by a rollout controller on a
simulated clock (so it takes milliseconds, not the minutes it would in production).
``run_demo`` returns every number it printed, so a test can check that they add up; it
uses only the public API, like any program built on nyxplug.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import cbor2
import msgspec

import nyxplug
from nyxplug import (
    Dispatcher,
    DispatchError,
    DispatchStatus,
    FrameType,
    Permission,
    PluginHeader,
    PluginInfo,
)
from nyxplug.cli.plugins import EXAMPLES_DIR
from nyxplug.plugins import PluginManager, ReloadResult
from nyxplug.plugins.rollout import RolloutConfig, RolloutEvent, Rollouts, RolloutState

__all__ = ("print_demo", "render", "run_demo")

FAST, SLOW, LIMITED, UNKNOWN = 1, 2, 3, 99
FAST_CAPACITY, SLOW_CAPACITY, LIMITED_CAPACITY = 1024, 8, 100
#: Frames for the backpressure steps: awaited from 4 senders, then a nowait burst.
SLOW_AWAITED, SLOW_SENDERS, SLOW_BURST = 200, 4, 100
LIMITED_HANDSHAKES, LIMITED_DATA = 10, 20
PAYLOAD = b"x" * 32
UNROUTED_TYPE = 0x5A  # in the plugin range 0x50..0x5F, but never registered
MALFORMED_HEADER = b"\x82\x01\x00"  # a CBOR array of 2 items; a header needs 3
#: The rollout step: plugin "geo", its versions, the frames (one key each: a new
#: connection) sent per check interval, and the controller's configuration.
GEO, GEO_CAPACITY, GEO_FRAMES_PER_INTERVAL = 4, 2048, 1000
GEO_FAIL_EVERY = 5  # v3 fails one frame in 5
GEO_CONFIG = RolloutConfig.canary(
    steps=(5.0, 25.0, 50.0), interval=60.0, min_frames=20, threshold=2, rollback_window=60.0
)


class _Tally:
    """What the demo itself sent, to check the dispatcher's counters against."""

    def __init__(self) -> None:
        self.calls = 0
        self.enqueued: Counter[int] = Counter()
        self.errors: dict[str, dict[str, Any]] = {}

    def ok(self, plugin_id: int, count: int = 1) -> None:
        self.calls += count
        self.enqueued[plugin_id] += count

    def failed(self, exc: DispatchError) -> None:
        self.calls += 1
        entry = self.errors.setdefault(type(exc).__name__, {"count": 0, "example": str(exc)})
        entry["count"] += 1


def _loop_name() -> str:
    module = type(asyncio.get_running_loop()).__module__.split(".")[0]
    if module == "uvloop":
        from importlib.metadata import version

        return f"uvloop {version('uvloop')}"
    return "asyncio"


async def _burst(d: Dispatcher, tally: _Tally, header: PluginHeader | bytes, frames: int) -> float:
    """Send ``frames`` to "fast" with dispatch_nowait, a queueful at a time; return seconds.

    Between queuefuls the sender awaits ``wait_idle`` so the plugin can drain; without
    that, frame 1025 would raise WouldBlock (the queue holds 1024).
    """
    start = time.perf_counter()
    sent = 0
    while sent < frames:
        chunk = min(FAST_CAPACITY, frames - sent)
        for _ in range(chunk):
            d.dispatch_nowait(FrameType.DATA, header, PAYLOAD)
        tally.ok(FAST, chunk)
        sent += chunk
        await d.wait_idle(FAST)
    return time.perf_counter() - start


async def _awaiting_senders(d: Dispatcher, tally: _Tally) -> tuple[int, float]:
    """Several senders ``await dispatch()`` into "slow"; count those that had to park.

    ``dispatch()`` enqueues at once when the queue has room; when it is full the
    sender parks (FIFO) until the plugin frees a slot. A call that did not bump
    ``frames_dispatched`` before being awaited is one that parked.
    """
    header = PluginHeader(SLOW)
    parked = 0

    async def sender(count: int) -> None:
        nonlocal parked
        for _ in range(count):
            before = d.dispatch_stats().frames_dispatched
            pending = d.dispatch(FrameType.DATA, header, PAYLOAD)
            if d.dispatch_stats().frames_dispatched == before:
                parked += 1
            await pending
            tally.ok(SLOW)

    start = time.perf_counter()
    async with asyncio.TaskGroup() as group:
        for _ in range(SLOW_SENDERS):
            group.create_task(sender(SLOW_AWAITED // SLOW_SENDERS))
    await d.wait_idle(SLOW)
    return parked, time.perf_counter() - start


def _sign_and_install_examples(state: Path) -> Any:
    """``nyxplug keygen / package / sign / install`` for the example plugins; the key."""
    from nyxplug.trust import SigningKey, TrustStore

    key = SigningKey.generate("demo")
    trust = TrustStore(state / "trust.json")
    trust.add_key(key.public, scopes=("fast", "slow", "limited"))
    for folder in sorted(EXAMPLES_DIR.iterdir()):
        _publish(folder, state, key)
    return key


def _publish(folder: Path, state: Path, key: Any, version: str = "1.0.0") -> None:
    """Package ``folder``, sign it with ``key`` and install it into ``state``'s package store."""
    from nyxplug.trust import AuditLog, TrustStore, install_package, package_folder, sign_package

    package, _ = package_folder(folder, state / f"{folder.name}-{version}.nyxp")
    sign_package(package, key)
    install_package(
        package, state / "packages", TrustStore(state / "trust.json"),
        audit=AuditLog(state / "audit.jsonl"),
    )  # fmt: skip


async def _live_reload(manager: PluginManager, state: Path, key: Any) -> dict[str, Any]:
    """Publish "fast" 1.1.0 while frames flow to it; the watcher swaps it in.

    A sender keeps awaiting ``dispatch`` to "fast" throughout; the handled count
    carried over (``export_state`` / ``import_state``) shows that no frame was lost.
    """
    from nyxplug.plugins.watch import PluginWatcher

    before = manager.instance("fast").frames
    sent = 0
    stop = asyncio.Event()

    async def sender() -> None:
        nonlocal sent
        header = PluginHeader(FAST)
        while not stop.is_set():
            await manager.dispatcher.dispatch(FrameType.DATA, header, PAYLOAD)
            sent += 1
            if sent % 64 == 0:
                await asyncio.sleep(0)  # let the loop breathe, as a socket reader would

    with tempfile.TemporaryDirectory(prefix="nyxplug-demo-v2-") as work:
        new = Path(work) / "fast"
        shutil.copytree(EXAMPLES_DIR / "fast", new)
        manifest = new / "nyxplug.toml"
        manifest.write_text(manifest.read_text().replace('version = "1.0.0"', 'version = "1.1.0"'))
        async with PluginWatcher(manager) as watcher:
            await asyncio.wait_for(watcher.ready.wait(), 10)
            task = asyncio.create_task(sender())
            published = time.perf_counter()
            _publish(new, state, key, "1.1.0")
            outcome = await watcher.next_outcome(timeout=10)
            serving = time.perf_counter() - published
            stop.set()
            await task
    await manager.dispatcher.wait_idle(FAST)
    result = outcome.result
    if not isinstance(result, ReloadResult) or result.outcome != "swapped":
        raise RuntimeError(f"Expected the watcher to swap in fast 1.1.0, got {result!r}")
    status = manager.status("fast")
    return {
        "from": result.from_version,
        "to": result.to_version,
        "sent": sent,
        "handled": manager.instance("fast").frames - before,
        "pause": status.reloads.last_pause,
        "serving": serving,
        "verified": status.verified,
    }


class _SimulatedClock:
    """The rollout controller's clock: minutes pass when the demo says so."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class _GeoVersion:
    """A version of the "geo" plugin: counts its frames, fails every ``fail_every``-th."""

    def __init__(self, fail_every: int = 0) -> None:
        self.fail_every = fail_every
        self.frames = 0

    def __call__(self, message: nyxplug.PluginMessage) -> None:
        self.frames += 1
        if self.fail_every and self.frames % self.fail_every == 0:
            raise ValueError(f"geo v3 failed on frame {self.frames} (a bug in the new version)")


class _CountHandlerErrors(logging.Filter):
    """Count (and keep off the screen) the logged handler errors of the failing version;
    the demo prints their number instead of their tracebacks."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if record.getMessage().startswith("Handler of plugin 'geo'"):
            self.count += 1
            return False
        return True


async def _rollouts(d: Dispatcher, tally: _Tally) -> dict[str, Any]:
    """Two rollouts of "geo" on the demo's dispatcher: v2 (healthy) is promoted step by
    step; then v3 (fails one frame in five) is rolled back after two failed checks.

    Every simulated minute the demo sends a minute's frames (a new route key each, as new
    connections would), waits for the versions to handle them, moves the clock on a
    minute and lets the controller check; the controller does the rest.
    """
    clock = _SimulatedClock()
    rollouts = Rollouts(d, clock=clock)
    header = PluginHeader(GEO)
    key = 0

    async def until_ended(stable: str, candidate: str, end: str) -> dict[str, Any]:
        """Run a rollout to its end; ``end`` is the event that decided it."""
        nonlocal key
        before = {name: s.messages_processed for name, s in d.version_stats(GEO).items()}
        controller = rollouts.start(GEO, stable, candidate, GEO_CONFIG)
        sent = 0
        while controller.state not in (RolloutState.SUCCEEDED, RolloutState.ROLLED_BACK):
            if controller.state is not RolloutState.PROMOTED:
                for _ in range(GEO_FRAMES_PER_INTERVAL):
                    d.dispatch_nowait(FrameType.DATA, header, PAYLOAD, key=key)
                    key += 1
                tally.ok(GEO, GEO_FRAMES_PER_INTERVAL)
                sent += GEO_FRAMES_PER_INTERVAL
                await d.wait_idle(GEO)
            clock.now += GEO_CONFIG.interval
            rollouts.tick()
        stats = d.version_stats(GEO)
        return {
            "stable": stable,
            "candidate": candidate,
            "state": controller.state.value,
            "path": _path(controller.events),
            "minute": next(e.at for e in controller.events if e.kind == end) / 60,
            "sent": sent,
            "frames": {
                name: stats[name].messages_processed - before[name] for name in (stable, candidate)
            },
            "errors": {name: stats[name].errors for name in (stable, candidate)},
        }

    await d.load_plugin(
        PluginInfo(GEO, "geo", Permission.DATA_ACCESS), _GeoVersion(), capacity=GEO_CAPACITY
    )
    await d.load_version(GEO, "v2", _GeoVersion(), capacity=GEO_CAPACITY)
    await d.load_version(GEO, "v3", _GeoVersion(GEO_FAIL_EVERY), capacity=GEO_CAPACITY)
    quiet = _CountHandlerErrors()
    logging.getLogger("nyxplug").addFilter(quiet)
    try:
        promoted = await until_ended("base", "v2", "promoted")
        rolled_back = await until_ended("v2", "v3", "rolled_back")
    finally:
        logging.getLogger("nyxplug").removeFilter(quiet)
    versions = {name: s.messages_processed for name, s in d.version_stats(GEO).items()}
    await d.unload_plugin(GEO)
    return {
        "promoted": promoted,
        "rolled_back": rolled_back,
        "versions": versions,
        "logged_errors": quiet.count,
    }


def _path(events: list[RolloutEvent]) -> str:
    """The weights and verdicts of a rollout, as a newcomer reads them."""
    steps = []
    for event in events:
        if event.kind in ("started", "step"):
            steps.append(f"{event.weight:g} %")
        elif event.kind == "check_failed":
            steps.append("check failed")
        elif event.kind in ("promoted", "rolled_back"):
            steps.append(event.kind.replace("_", " "))
    return " -> ".join(steps)


async def _demo(frames: int) -> dict[str, Any]:
    tally = _Tally()
    results: dict[str, Any] = {
        "implementation": "compiled (Cython)" if nyxplug.USE_EXTENSIONS else "pure Python",
        "loop": _loop_name(),
        "python": sys.version.split()[0],
        "frames": frames,
        "plugin_dir": str(EXAMPLES_DIR),
    }
    # The three plugins are real folders (nyxplug.toml + code), shipped the way any
    # publisher ships them: packaged, signed (here with a throwaway key) and installed;
    # the manager verifies each one's bytes as it loads them, like a production host.
    with tempfile.TemporaryDirectory(prefix="nyxplug-demo-") as state:
        key = _sign_and_install_examples(Path(state))
        results["key_id"] = key.key_id
        manager = PluginManager(plugin_dirs=[], state_dir=state, entry_points=False,
                                include_registered=False, require_signatures=True)  # fmt: skip
        await manager.start()
        return await _run_steps(manager, Path(state), key, tally, results)


async def _run_steps(
    manager: PluginManager, state: Path, key: Any, tally: _Tally, results: dict[str, Any]
) -> dict[str, Any]:
    frames = results["frames"]
    results["verified"] = [s.name for s in manager.catalog() if s.verified]
    failed = [s for s in manager.catalog() if s.state != "active"]
    if failed:
        raise RuntimeError(f"example plugin {failed[0].name!r} did not load: {failed[0].reason}")
    plugins = {name: manager.status(name) for name in ("fast", "slow", "limited")}
    d = manager.dispatcher
    try:
        # 1. Throughput: header bytes as any CBOR encoder writes them, then a ready header.
        wire_header = cbor2.dumps({"id": FAST, "flags": 0, "data": b""})
        half = frames // 2
        results["bursts"] = [
                {"label": "CBOR header bytes", "frames": half,
                 "seconds": await _burst(d, tally, wire_header, half)},
                {"label": "ready PluginHeader", "frames": frames - half,
                 "seconds": await _burst(d, tally, PluginHeader(FAST), frames - half)},
            ]  # fmt: skip
        results["fast_handled"] = manager.instance("fast").frames

        # 2. Live reload: a new signed version is installed while frames flow; the
        # watcher verifies it and swaps it in, state and queue carried over.
        results["reload"] = reload = await _live_reload(manager, state, key)
        tally.ok(FAST, reload["sent"])

        # 3. Backpressure, waiting: senders park while "slow" works through its 8 slots.
        parked, seconds = await _awaiting_senders(d, tally)
        results["slow_awaited"] = {"frames": SLOW_AWAITED, "senders": SLOW_SENDERS,
                                       "parked": parked, "seconds": seconds}  # fmt: skip

        # 4. Backpressure, failing fast: no awaiting, so all but 8 frames are refused.
        header = PluginHeader(SLOW)
        would_block = 0
        for _ in range(SLOW_BURST):
            try:
                d.dispatch_nowait(FrameType.DATA, header, PAYLOAD)
                tally.ok(SLOW)
            except nyxplug.WouldBlock as exc:
                would_block += 1
                tally.failed(exc)
        results["slow_nowait"] = {"sent": SLOW_BURST, "would_block": would_block}
        await d.wait_idle(SLOW)
        # try_dispatch is the same check, returning a status instead of raising.
        statuses: Counter[str] = Counter()
        for _ in range(SLOW_BURST):
            status = d.try_dispatch(FrameType.DATA, header, PAYLOAD)
            statuses[status.name] += 1
            if status == DispatchStatus.OK:
                tally.ok(SLOW)
            else:
                tally.calls += 1
        results["slow_try_dispatch"] = dict(statuses)

        # 5. Frames the dispatcher refuses, each with its typed error.
        for _ in range(LIMITED_HANDSHAKES):
            d.dispatch_nowait(FrameType.HANDSHAKE, PluginHeader(LIMITED))
            tally.ok(LIMITED)
        refused: list[tuple[int, PluginHeader | bytes, int]] = [
            (FrameType.DATA, PluginHeader(LIMITED), LIMITED_DATA),  # PermissionDenied
            (FrameType.DATA, MALFORMED_HEADER, 1),  # HeaderDecodeError
            (FrameType.DATA, PluginHeader(UNKNOWN), 1),  # PluginNotRegistered
            (UNROUTED_TYPE, PluginHeader(FAST), 1),  # UnknownFrameType
        ]
        for frame_type, bad_header, count in refused:
            for _ in range(count):
                try:
                    d.dispatch_nowait(frame_type, bad_header, PAYLOAD)
                    tally.ok(bad_header.id if isinstance(bad_header, PluginHeader) else -1)
                except DispatchError as exc:
                    tally.failed(exc)

        # 6. Unload. Nothing above awaited since try_dispatch, so "slow" still holds the
        # 8 frames it queued: drain=False drops them. The others drain their queues.
        results["plugins"] = {}
        for name in ("slow", "fast", "limited"):
            status = plugins[name]
            capacity = manager.manifest(name).resources.capacity  # type: ignore[union-attr]
            stats = await manager.unload(name, drain=name != "slow")
            results["plugins"][name] = {
                "id": status.id,
                "permissions": "|".join(status.permissions),
                "capacity": capacity,
                "handler": status.description,
                "enqueued": tally.enqueued[status.id or 0],
                "stats": msgspec.structs.asdict(stats),
            }

        # 7. Versions side by side, on the same dispatcher: "geo" v2 is promoted step by
        # step, then v3 is rolled back (after the unloads, so "slow" kept its queue above).
        results["rollouts"] = await _rollouts(d, tally)
        results["dispatch_stats"] = msgspec.structs.asdict(d.dispatch_stats())
    finally:
        await manager.aclose()
    results["calls"] = tally.calls
    results["errors"] = tally.errors
    return results


def run_demo(frames: int = 200_000, *, use_uvloop: bool | None = None) -> dict[str, Any]:
    """Run the demo on a fresh event loop (uvloop when installed) and return its numbers."""
    if frames < 2:
        raise ValueError(f"Expected `frames` >= 2, got {frames}")
    return nyxplug.run(_demo(frames), use_uvloop=use_uvloop)


def render(results: dict[str, Any], *, hint: str = "") -> str:
    """The demo's report as text: under 45 lines, aligned, one idea per block."""
    lines = [
        f"nyxplug {nyxplug.__version__} demo on Python {results['python']}",
        f"  dispatcher: {results['implementation']}{hint}",
        f"  event loop: {results['loop']}",
        "",
        f"Plugins from {results['plugin_dir']}, signed with a throwaway key {results['key_id']},",
        f"installed, and verified as loaded: {', '.join(results['verified'])}",
    ]
    for name in ("fast", "slow", "limited"):
        p = results["plugins"][name]
        lines.append(
            f"  {p['id']:>2} {name:<8} {p['permissions']:<22} capacity {p['capacity']:>4}"
            f"   {p['handler']}"
        )
    lines += ["", '1. Burst to "fast" with dispatch_nowait(), a queueful at a time + wait_idle():']
    for burst in results["bursts"]:
        rate = burst["frames"] / burst["seconds"] if burst["seconds"] else float("inf")
        lines.append(
            f"   {burst['frames']:>9,} frames, {burst['label']:<19} {burst['seconds']:7.3f} s"
            f" {rate:>12,.0f} frames/s (dispatch + handling)"
        )
    reload = results["reload"]
    lost = reload["sent"] - reload["handled"]
    lines += [
        f'2. Live reload: "fast" {reload["to"]} signed and installed under load; the watcher '
        f"verified it and swapped it in {reload['serving'] * 1e3:.0f} ms later,",
        f"   queue paused {reload['pause'] * 1e3:.3f} ms: {reload['sent']:,} frames sent "
        f"meanwhile, {lost} lost, count carried over",
    ]
    awaited, nowait = results["slow_awaited"], results["slow_nowait"]
    statuses = ", ".join(f"{k} {v}" for k, v in results["slow_try_dispatch"].items())
    lines += [
        f'3. {awaited["frames"]} frames to "slow" from {awaited["senders"]} senders with await '
        f"dispatch(): {awaited['parked']} calls parked",
        f"   on a full queue until a slot freed ({awaited['seconds']:.2f} s, paced by the plugin)",
        f'4. {nowait["sent"]} frames to "slow" with dispatch_nowait(): '
        f"{nowait['sent'] - nowait['would_block']} enqueued, {nowait['would_block']} WouldBlock;",
        f"   the same with try_dispatch(): {statuses}",
        '5. Refused at once: DATA to "limited" (HANDSHAKE only), a malformed header, plugin 99, '
        "frame type 0x5a",
        *_render_rollouts(results["rollouts"]),
        "",
        "PluginStats returned by unload_plugin() (slow was unloaded with drain=False):",
        "  plugin   messages_processed errors bytes_processed permission_violations dropped"
        " high_watermark",
    ]
    for name in ("fast", "slow", "limited"):
        s = results["plugins"][name]["stats"]
        lines.append(
            f"  {name:<8} {s['messages_processed']:>18,} {s['errors']:>6} "
            f"{s['bytes_processed']:>15,} {s['permission_violations']:>21} {s['dropped']:>7} "
            f"{s['high_watermark']:>14}"
        )
    lines += ["", "Typed errors met (count, then one message):"]
    for name, entry in results["errors"].items():
        lines += [f"  {name} x{entry['count']}", f"    {entry['example']}"]
    totals = results["dispatch_stats"]
    lines += [
        "",
        f"Dispatcher: {totals['frames_dispatched']:,} frames dispatched + "
        f"{totals['dispatch_errors']:,} dispatch errors ({totals['would_block']:,} of them "
        f"backpressure: WouldBlock) = {results['calls']:,} calls; "
        f"{totals['plugins_loaded']} plugins loaded, {totals['plugins_unloaded']} unloaded",
    ]
    return "\n".join(lines)


def _render_rollouts(rollouts: dict[str, Any]) -> list[str]:
    good, bad = rollouts["promoted"], rollouts["rolled_back"]

    def frames(rollout: dict[str, Any]) -> str:
        counts = " + ".join(f"{name} {n:,}" for name, n in rollout["frames"].items())
        failed = rollout["errors"][rollout["candidate"]]
        return f"frames {counts} = {rollout['sent']:,}" + (f" ({failed} failed)" if failed else "")

    return [
        '6. Three versions of "geo" side by side, moved by a rollout controller (a check and '
        f"{GEO_FRAMES_PER_INTERVAL:,} frames a simulated minute):",
        f"   {good['candidate']}: {good['path']} at minute {good['minute']:g}; {frames(good)}",
        f"   {bad['candidate']} (fails 1 frame in {GEO_FAIL_EVERY}; limit "
        f"{GEO_CONFIG.max_error_rate:.0%}): {bad['path']} to {bad['stable']} at minute "
        f"{bad['minute']:g}; {frames(bad)}",
    ]


def print_demo(frames: int = 200_000, *, use_uvloop: bool | None = None) -> None:
    """Run the demo and print its report (what ``nyxplug demo`` does)."""
    results = run_demo(frames, use_uvloop=use_uvloop)
    hint = ""
    if not nyxplug.USE_EXTENSIONS:
        from nyxplug._impl import NO_EXTENSIONS

        hint = "" if NO_EXTENSIONS else " (compiled module not built: run `make install`)"
    print(render(results, hint=hint))
