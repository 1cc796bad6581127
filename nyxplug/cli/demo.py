"""``nyxplug demo``: a newcomer's first minute with the dispatcher.

Three example plugins show the three kinds of handler and what the dispatcher does
around them: "fast" takes a timed burst, "slow" (capacity 8) shows backpressure, and
"limited" (HANDSHAKE only) shows a permission check. A few bad frames show the typed
errors. ``run_demo`` returns every number it printed, so a test can check that they
add up; it uses only the public API, like any program built on nyxplug.
"""

from __future__ import annotations

import asyncio
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
    PluginHeader,
)
from nyxplug.cli.plugins import EXAMPLES_DIR
from nyxplug.plugins import PluginManager, ReloadResult

__all__ = ("print_demo", "render", "run_demo")

FAST, SLOW, LIMITED, UNKNOWN = 1, 2, 3, 99
FAST_CAPACITY, SLOW_CAPACITY, LIMITED_CAPACITY = 1024, 8, 100
#: Frames for the backpressure steps: awaited from 4 senders, then a nowait burst.
SLOW_AWAITED, SLOW_SENDERS, SLOW_BURST = 200, 4, 100
LIMITED_HANDSHAKES, LIMITED_DATA = 10, 20
PAYLOAD = b"x" * 32
UNROUTED_TYPE = 0x5A  # in the plugin range 0x50..0x5F, but never registered
MALFORMED_HEADER = b"\x82\x01\x00"  # a CBOR array of 2 items; a header needs 3


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
    """The demo's report as text: under 40 lines, aligned, one idea per block."""
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


def print_demo(frames: int = 200_000, *, use_uvloop: bool | None = None) -> None:
    """Run the demo and print its report (what ``nyxplug demo`` does)."""
    results = run_demo(frames, use_uvloop=use_uvloop)
    hint = ""
    if not nyxplug.USE_EXTENSIONS:
        from nyxplug._impl import NO_EXTENSIONS

        hint = "" if NO_EXTENSIONS else " (compiled module not built: run `make install`)"
    print(render(results, hint=hint))
