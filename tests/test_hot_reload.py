"""``PluginManager.reload``: a new version takes over under load, or never takes traffic.

Real plugin folders (and real signed packages) in a temp dir, both dispatcher twins, both
loops. The counter plugin (``reload_helpers.COUNTER``) reports every frame as
``(seq, version, count)`` to a sink, so one list answers: was a frame lost, duplicated or
reordered, which version handled it, and did the count carry across every swap. A sender
task pushes sequenced frames the whole time, waiting for room like a real sender.
"""

from __future__ import annotations

import asyncio
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from plugin_helpers import RECORDER, write_plugin
from reload_helpers import (
    DATA,
    SINK_MODULE,
    Sender,
    Sink,
    install_sink,
    runs,
    seq_payload,
    settle,
    wait_until,
    write_counter,
)

from nyxplug import NyxplugError
from nyxplug.config import HostConfig, RuntimeSection
from nyxplug.plugins import (
    PluginLoadError,
    PluginManager,
    PluginNotFound,
    PluginStateError,
    ReloadFailed,
    ReloadResult,
    ReloadStats,
)
from nyxplug.trust import SigningKey, TrustStore, install_package, package_folder, sign_package

NAME = "counter"
PID = 7
#: Retries on, backoff short: a transient failure costs milliseconds here.
RETRIES = 2
FAST = HostConfig(runtime=RuntimeSection(reload_retries=RETRIES, reload_backoff=0.001))


@pytest.fixture
def sink() -> Iterator[Sink]:
    sink = install_sink()
    yield sink
    sys.modules.pop(SINK_MODULE, None)


class Rig:
    """A plugin folder (or installed package) for the counter, a manager, the sink."""

    def __init__(
        self, impl: Any, tmp_path: Path, sink: Sink, *, name: str = NAME, version: str = "1.0.0",
        **manager_kwargs: Any,
    ) -> None:  # fmt: skip
        self.name = name
        self.pid = PID
        self.sink = sink
        self.root = tmp_path / "plugins"
        self.state = tmp_path / "state"
        self.root.mkdir(parents=True, exist_ok=True)
        self._earlier_code = set(code_packages(name))  # left by other tests' managers
        if manager_kwargs.pop("write", True):
            self.write(version)
        manager_kwargs.setdefault("require_signatures", False)
        manager_kwargs.setdefault("plugin_dirs", [self.root])
        self.manager = PluginManager(
            manager_kwargs.pop("config", FAST), dispatcher=impl.Dispatcher(),
            state_dir=self.state, entry_points=False, include_registered=False, **manager_kwargs,
        )  # fmt: skip

    @property
    def dispatcher(self) -> Any:
        return self.manager.dispatcher

    def write(self, version: str, **kwargs: Any) -> Path:
        return write_counter(self.root, self.name, self.pid, version, **kwargs)

    async def start(self) -> Any:
        await self.manager.start()
        status = self.manager.status(self.name)
        assert status.state == "active", status
        return self.manager.instance(self.name)

    async def serving(self) -> Sender:
        """A running sender, once the plugin has handled its first frame."""
        sender = Sender(self.dispatcher, self.pid).start()
        await self.sink.wait_frames(len(self.sink.frames) + 1)
        return sender

    async def finish(self, sender: Sender) -> int:
        """Stop the sender, let the plugin catch up; the number of frames sent."""
        sent = await sender.stop()
        assert sender.error is None, sender.error
        await self.dispatcher.wait_idle(self.pid)
        return sent

    def assert_every_frame_once_in_order(self, sent: int) -> None:
        seqs = self.sink.seqs()
        assert len(seqs) == sent, f"{sent} frames sent, {len(seqs)} handled"
        assert seqs == list(range(sent)), "a frame was lost, duplicated or reordered"
        assert self.sink.counts() == list(range(1, sent + 1)), "the count did not carry over"

    def code_packages(self) -> list[str]:
        """The synthetic packages holding this plugin's code now in ``sys.modules``."""
        return [p for p in code_packages(self.name) if p not in self._earlier_code]

    def reloads(self) -> ReloadStats:
        stats: ReloadStats = self.manager.status(self.name).reloads
        return stats


def assert_pause(pause: Any) -> None:
    assert type(pause) is float and pause >= 0, pause


def serials_of(sink: Sink, what: str, version: str) -> list[int]:
    return [serial for w, v, serial in sink.events if w == what and v == version]


def code_packages(name: str) -> list[str]:
    """The synthetic packages in ``sys.modules`` holding code of plugin ``name``."""
    slug = "".join(ch if ch.isalnum() else "_" for ch in name)
    prefix = f"nyxplug_plugin_{slug}_"
    return [m for m in sys.modules if m.startswith(prefix) and "." not in m]


async def assert_rolled_back(
    rig: Rig, step: str, *, transient: bool = False, retries: int = 0,
    new_version: str | None = None, **reload_kwargs: Any,
) -> ReloadFailed:  # fmt: skip
    """Reload under load must fail at ``step``; the old version serves throughout."""
    manager, sink = rig.manager, rig.sink
    old = manager.instance(rig.name)
    before = manager.status(rig.name)
    sender = await rig.serving()
    with pytest.raises(ReloadFailed) as caught:
        await manager.reload(rig.name, **reload_kwargs)
    failed = caught.value
    assert isinstance(failed, PluginLoadError)
    assert (failed.name, failed.step, failed.transient) == (rig.name, step, transient), failed
    text = str(failed)
    assert rig.name in text and step in text and "serving" in text, text
    await sink.wait_frames(len(sink.frames) + 3)  # and it goes on serving
    sent = await rig.finish(sender)
    rig.assert_every_frame_once_in_order(sent)
    assert set(sink.versions()) == {before.version}, "the new version took traffic"
    assert manager.instance(rig.name) is old
    status = manager.status(rig.name)
    assert (status.state, status.version, status.id) == ("active", before.version, rig.pid)
    stats = status.reloads
    assert (stats.attempted, stats.succeeded, stats.rolled_back, stats.retries) == (
        1, 0, 1, retries,
    ), stats  # fmt: skip
    assert stats.last_outcome == "rolled-back"
    assert stats.last_error is not None and stats.last_error.startswith(f"{step} failed: ")
    assert old.serial not in sink.serials("on_unload"), "the old version was unloaded"
    assert rig.dispatcher.plugin_stats(rig.pid).messages_processed == sent
    assert len(rig.code_packages()) == 1, "the failed version's modules were left behind"
    if new_version is not None:  # every new instance that was loaded was unloaded again
        loaded = serials_of(sink, "on_load", new_version)
        assert serials_of(sink, "on_unload", new_version) == loaded
    return failed


# -- the happy path --------------------------------------------------------------------------


async def test_100_reloads_under_load_lose_nothing_and_the_counter_keeps_counting(
    impl: Any, tmp_path: Path, sink: Sink
) -> None:
    rig = Rig(impl, tmp_path, sink)
    await rig.start()
    sender = await rig.serving()
    versions = ["1.0.0"]
    for i in range(1, 101):
        version = f"1.0.{i}"
        rig.write(version, marker=f"reload {i}")
        result = await rig.manager.reload(NAME)
        assert isinstance(result, ReloadResult)
        assert (result.name, result.outcome, result.from_version, result.to_version) == (
            NAME, "swapped", versions[-1], version,
        )  # fmt: skip
        assert result.attempts == 1
        assert_pause(result.pause)
        versions.append(version)
        # the new version serves before the next reload (the sender never stopped)
        await wait_until(lambda v=version: sink.versions()[-1] == v, sink.progress)
        assert sender.error is None
    sent = await rig.finish(sender)
    rig.assert_every_frame_once_in_order(sent)
    assert runs(sink.versions()) == versions, "an old version handled a frame after its swap"
    instance = rig.manager.instance(NAME)
    assert instance.count == sent and instance.ctx.version == "1.0.100"
    status = rig.manager.status(NAME)
    assert (status.state, status.version) == ("active", "1.0.100")
    stats = status.reloads
    assert (stats.attempted, stats.succeeded, stats.rolled_back, stats.retries) == (100, 100, 0, 0)
    assert (stats.last_outcome, stats.last_error) == ("swapped", None)
    assert stats.last_pause is not None and stats.max_pause is not None
    assert 0 <= stats.last_pause <= stats.max_pause
    assert sink.serials("on_unload") == list(range(100)), "each old instance unloaded once"
    assert len(rig.code_packages()) == 1, "old versions' modules were left in sys.modules"
    assert rig.dispatcher.plugin_stats(PID).messages_processed == sent
    await rig.manager.aclose()
    assert sink.serials("on_unload") == list(range(101))


async def test_one_reload_step_by_step(impl: Any, tmp_path: Path, sink: Sink) -> None:
    rig = Rig(impl, tmp_path, sink)
    old = await rig.start()
    assert rig.reloads() == ReloadStats()
    sender = await rig.serving()
    rig.write("1.1.0", on_load="await SINK.more(3)")  # the old version serves meanwhile
    result = await rig.manager.reload(NAME)
    assert (result.outcome, result.from_version, result.to_version, result.attempts) == (
        "swapped", "1.0.0", "1.1.0", 1,
    )  # fmt: skip
    assert_pause(result.pause)
    new = rig.manager.instance(NAME)
    assert new is not old and new.ctx.version == "1.1.0" and new.ctx.id == PID
    s0, s1 = old.serial, new.serial
    at = sink.index
    assert at("on_load", s1) < at("health", s1) < at("export_state", s0)
    assert at("export_state", s0) < at("import_state", s1) < at("on_unload", s0)
    assert new.imported is not None and set(new.imported) == {"count", "last_seq"}
    assert s1 not in sink.serials("on_unload")
    assert sink.calls("migrate_state") == 0
    sent = await rig.finish(sender)
    rig.assert_every_frame_once_in_order(sent)
    assert runs(sink.versions()) == ["1.0.0", "1.1.0"]
    assert new.count == sent
    stats = rig.reloads()
    assert stats == ReloadStats(
        attempted=1, succeeded=1, rolled_back=0, retries=0, last_error=None,
        last_pause=result.pause, max_pause=result.pause, last_outcome="swapped",
    )  # fmt: skip
    assert [s.reloads for s in rig.manager.catalog()] == [stats]
    await rig.manager.aclose()


async def test_a_major_upgrade_with_migrate_state_carries_the_migrated_state(
    impl: Any, tmp_path: Path, sink: Sink
) -> None:
    rig = Rig(impl, tmp_path, sink)
    old = await rig.start()
    sender = await rig.serving()
    rig.write("2.0.0", migrate=True)
    result = await rig.manager.reload(NAME)
    assert (result.outcome, result.from_version, result.to_version) == ("swapped", "1.0.0", "2.0.0")
    new = rig.manager.instance(NAME)
    assert new.imported["migrated_from"] == "1.0.0"
    at = sink.index
    assert at("export_state", old.serial) < at("migrate_state", new.serial)
    assert at("migrate_state", new.serial) < at("import_state", new.serial)
    await sink.more(3)
    # migrate_state, when defined, runs on a minor upgrade too, with the version it left
    rig.write("2.1.0", migrate=True)
    await rig.manager.reload(NAME)
    assert rig.manager.instance(NAME).imported["migrated_from"] == "2.0.0"
    sent = await rig.finish(sender)
    rig.assert_every_frame_once_in_order(sent)
    assert runs(sink.versions())[0] == "1.0.0" and sink.versions()[-1] == "2.1.0"
    assert rig.reloads().succeeded == 2
    await rig.manager.aclose()


async def test_a_downgrade_swaps_when_allowed(impl: Any, tmp_path: Path, sink: Sink) -> None:
    rig = Rig(impl, tmp_path, sink, version="1.2.0")
    await rig.start()
    sender = await rig.serving()
    rig.write("1.1.0")
    result = await rig.manager.reload(NAME, allow_downgrade=True)
    assert (result.outcome, result.from_version, result.to_version) == ("swapped", "1.2.0", "1.1.0")
    await sink.more(2)
    sent = await rig.finish(sender)
    rig.assert_every_frame_once_in_order(sent)
    await rig.manager.aclose()


async def test_if_changed_skips_unchanged_bytes(impl: Any, tmp_path: Path, sink: Sink) -> None:
    rig = Rig(impl, tmp_path, sink)
    old = await rig.start()
    result = await rig.manager.reload(NAME, if_changed=True)
    assert (result.outcome, result.pause, result.from_version) == ("unchanged", None, "1.0.0")
    assert rig.manager.instance(NAME) is old
    assert rig.reloads().attempted == 0
    assert sink.calls("imported") == 1 and sink.serials("on_load") == [old.serial]
    rig.write("1.0.0", marker="edited, same version")
    changed = await rig.manager.reload(NAME, if_changed=True)
    assert changed.outcome == "swapped" and rig.manager.instance(NAME) is not old
    again = await rig.manager.reload(NAME)  # unchanged bytes, but a manual reload swaps
    assert again.outcome == "swapped"
    assert (rig.reloads().attempted, rig.reloads().succeeded) == (2, 2)
    await rig.manager.aclose()


# -- roll back: the old version keeps serving ------------------------------------------------


async def test_a_version_that_fails_to_import_is_rolled_back(
    impl: Any, tmp_path: Path, sink: Sink
) -> None:
    rig = Rig(impl, tmp_path, sink)
    await rig.start()
    rig.write("1.0.1", source="def broken(:\n    pass\n")
    failed = await assert_rolled_back(rig, "import")
    assert "SyntaxError" in failed.reason
    assert "SyntaxError" in (rig.reloads().last_error or "")
    await rig.manager.aclose()


async def test_a_version_whose_constructor_raises_is_rolled_back(
    impl: Any, tmp_path: Path, sink: Sink
) -> None:
    rig = Rig(impl, tmp_path, sink)
    await rig.start()
    rig.write("1.0.1", init="raise RuntimeError('cannot build')")
    await assert_rolled_back(rig, "instantiate")
    await rig.manager.aclose()


async def test_a_version_whose_on_load_raises_is_rolled_back(
    impl: Any, tmp_path: Path, sink: Sink
) -> None:
    rig = Rig(impl, tmp_path, sink)
    await rig.start()
    # on_load first waits until the old version handled 3 more frames: it serves meanwhile
    rig.write("1.0.1", on_load="await SINK.more(3)\nraise RuntimeError('not today')")
    failed = await assert_rolled_back(rig, "on_load")
    assert "not today" in failed.reason
    assert (rig.reloads().last_error or "").startswith("on_load failed: RuntimeError: not today")
    assert sink.calls("on_load", "1.0.1") == 1, "a permanent failure is not retried"
    await rig.manager.aclose()


@pytest.mark.parametrize(
    "health", ["return False", "raise RuntimeError('sick')"], ids=["false", "raises"]
)
async def test_a_version_failing_health_is_retried_then_rolled_back(
    impl: Any, tmp_path: Path, sink: Sink, health: str
) -> None:
    rig = Rig(impl, tmp_path, sink)
    await rig.start()
    rig.write("1.0.1", health=f"await SINK.more(1)\n{health}")
    await assert_rolled_back(rig, "health", transient=True, retries=RETRIES, new_version="1.0.1")
    assert sink.calls("health", "1.0.1") == 1 + RETRIES
    # each new instance got on_unload, after its on_load
    for serial in serials_of(sink, "on_load", "1.0.1"):
        assert sink.index("on_load", serial) < sink.index("on_unload", serial)
    await rig.manager.aclose()


async def test_a_transient_health_failure_that_clears_swaps_on_retry(
    impl: Any, tmp_path: Path, sink: Sink
) -> None:
    rig = Rig(impl, tmp_path, sink)
    await rig.start()
    sender = await rig.serving()
    rig.write("1.0.1", health="return SINK.calls('health', VERSION) > 1")
    result = await rig.manager.reload(NAME)
    assert (result.outcome, result.attempts) == ("swapped", 2)
    stats = rig.reloads()
    assert (stats.attempted, stats.succeeded, stats.rolled_back, stats.retries) == (1, 1, 0, 1)
    final = rig.manager.instance(NAME).serial
    loaded = [s for s in serials_of(sink, "on_load", "1.0.1") if s != final]
    assert serials_of(sink, "on_unload", "1.0.1") == loaded, "the unhealthy try was unloaded"
    await sink.more(2)
    sent = await rig.finish(sender)
    rig.assert_every_frame_once_in_order(sent)
    await rig.manager.aclose()


async def test_a_folder_that_cannot_be_read_is_retried_then_rolled_back(
    impl: Any, tmp_path: Path, sink: Sink
) -> None:
    rig = Rig(impl, tmp_path, sink)
    await rig.start()
    (rig.root / NAME).rename(tmp_path / "moved-away")
    await assert_rolled_back(rig, "stage", transient=True, retries=RETRIES)
    await rig.manager.aclose()


async def test_a_state_handover_failure_rolls_back_and_the_old_handler_stays_supervised(
    impl: Any, tmp_path: Path, sink: Sink
) -> None:
    """import_state raising fails the swap step: the old worker resumes, timeout and all."""
    rig = Rig(impl, tmp_path, sink, write=False)
    hang = "if message.payload == b'hang':\n    await SINK.hold('hang', VERSION, self.serial)"
    rig.write("1.0.0", handle=hang, handler_timeout=0.2)
    await rig.start()
    rig.write("1.0.1", import_state="raise RuntimeError('cannot take this state')")
    await assert_rolled_back(rig, "swap", new_version="1.0.1")
    assert rig.reloads().last_error == "swap failed: RuntimeError: cannot take this state"
    gate = sink.gate("hang")  # opened only to clean up: the timeout must end the frame
    try:
        header, handled = Sender(rig.dispatcher, PID).header, len(sink.frames)
        await rig.dispatcher.dispatch(DATA, header, b"hang")
        await rig.dispatcher.dispatch(DATA, header, seq_payload(handled))
        await sink.wait_event("held:hang")
        try:
            async with asyncio.timeout(2.0):  # 10x the handler timeout
                await sink.wait_frames(handled + 1)
        except TimeoutError:
            pytest.fail(
                "a hung frame was not cancelled after 0.2 s: the resumed old handler is no "
                "longer under its handler_timeout", pytrace=False,
            )  # fmt: skip
        assert rig.manager.status(NAME).handler_timeouts == 1
    finally:
        gate.set()
        await rig.manager.aclose()


async def test_cancelling_a_reload_before_the_swap_leaves_the_old_version_and_nothing_else(
    impl: Any, tmp_path: Path, sink: Sink
) -> None:
    rig = Rig(impl, tmp_path, sink)
    old = await rig.start()
    sender = await rig.serving()
    rig.write("1.0.1", on_load="await SINK.hold('on_load', VERSION, self.serial)")
    sink.gate("on_load")
    reload = asyncio.ensure_future(rig.manager.reload(NAME))
    await sink.wait_event("held:on_load", "1.0.1")
    reload.cancel()
    with pytest.raises(asyncio.CancelledError):
        await reload
    await sink.more(3)
    sent = await rig.finish(sender)
    rig.assert_every_frame_once_in_order(sent)
    assert set(sink.versions()) == {"1.0.0"}
    assert rig.manager.instance(NAME) is old
    assert (rig.manager.status(NAME).state, rig.manager.status(NAME).version) == (
        "active", "1.0.0",
    )  # fmt: skip
    assert len(rig.code_packages()) == 1, "the cancelled version's modules were left behind"
    rig.write("1.0.2")  # and the plugin is not stuck: the next reload runs
    assert (await rig.manager.reload(NAME)).to_version == "1.0.2"
    await rig.manager.aclose()


INCOMPATIBLE = {
    "api-range": {"version": "1.0.1", "api": ">=2.0, <3"},
    "id-changed": {"version": "1.0.1", "plugin_id": PID + 1},
    "name-changed": {"version": "1.0.1", "manifest_name": "renamed"},
    "major-without-migrate-state": {"version": "2.0.0"},
    "downgrade": {"version": "0.9.0"},
}


@pytest.mark.parametrize("change", list(INCOMPATIBLE))
async def test_an_incompatible_version_is_rolled_back(
    impl: Any, tmp_path: Path, sink: Sink, change: str
) -> None:
    rig = Rig(impl, tmp_path, sink)
    await rig.start()
    kwargs = dict(INCOMPATIBLE[change])
    version = kwargs.pop("version")
    write_counter(rig.root, NAME, kwargs.pop("plugin_id", PID), version, **kwargs)
    await assert_rolled_back(rig, "compatibility")
    if change != "major-without-migrate-state":  # decided from the manifest: nothing ran
        assert sink.calls("imported", version) == 0
    assert sink.calls("on_load", version) == 0
    await rig.manager.aclose()


async def test_a_major_upgrade_breaking_a_dependents_range_is_rolled_back(
    impl: Any, tmp_path: Path, sink: Sink
) -> None:
    rig = Rig(impl, tmp_path, sink)
    write_plugin(rig.root, "user", PID + 1, RECORDER, dependencies={NAME: ">=1.0, <2"})
    await rig.start()
    assert rig.manager.status("user").state == "active"
    rig.write("2.0.0", migrate=True)
    failed = await assert_rolled_back(rig, "compatibility")
    assert "user" in failed.reason
    await rig.manager.aclose()


# -- signatures --------------------------------------------------------------------------------


class Publisher:
    """A host state folder trusting the key "acme" for acme-*, and packages built for it."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp = tmp_path
        self.state = tmp_path / "state"
        self.store = self.state / "packages"
        self.key = SigningKey.generate("acme")
        self.trust = TrustStore(self.state / "trust.json")
        self.trust.add_key(self.key.public, scopes=("acme-*",))
        self._built = 0

    def package(self, name: str, version: str, key: SigningKey | None = None) -> Path:
        self._built += 1
        src = self.tmp / "src" / str(self._built)
        write_counter(src, name, PID, version)
        (self.tmp / "out").mkdir(exist_ok=True)
        package, _ = package_folder(src / name, self.tmp / "out" / f"{self._built}.nyxp")
        sign_package(package, key or self.key)
        return package

    def install(self, name: str, version: str) -> Path:
        return install_package(self.package(name, version), self.store, self.trust).folder


def signed_rig(impl: Any, tmp_path: Path, sink: Sink, publisher: Publisher) -> Rig:
    rig = Rig(
        impl, tmp_path, sink, name="acme-counter", write=False, plugin_dirs=[],
        require_signatures=True, trust=TrustStore(publisher.state / "trust.json"),
    )  # fmt: skip
    assert rig.state == publisher.state
    return rig


async def test_a_signed_upgrade_swaps_and_stays_verified(
    impl: Any, tmp_path: Path, sink: Sink
) -> None:
    publisher = Publisher(tmp_path)
    publisher.install("acme-counter", "1.0.0")
    rig = signed_rig(impl, tmp_path, sink, publisher)
    await rig.start()
    assert rig.manager.status("acme-counter").verified
    sender = await rig.serving()
    publisher.install("acme-counter", "1.0.1")
    result = await rig.manager.reload("acme-counter")
    assert (result.outcome, result.to_version) == ("swapped", "1.0.1")
    status = rig.manager.status("acme-counter")
    assert (status.version, status.verified, status.signer) == ("1.0.1", True, "acme")
    await sink.more(2)
    sent = await rig.finish(sender)
    rig.assert_every_frame_once_in_order(sent)
    await rig.manager.aclose()


async def test_an_unsigned_version_is_refused_when_signatures_are_required(
    impl: Any, tmp_path: Path, sink: Sink
) -> None:
    publisher = Publisher(tmp_path)
    folder = publisher.install("acme-counter", "1.0.0")
    rig = signed_rig(impl, tmp_path, sink, publisher)
    await rig.start()
    write_counter(publisher.store, "acme-counter", PID, "1.0.1")
    (folder / "NYXPLUG-INDEX").unlink()
    (folder / "NYXPLUG-SIGNATURE").unlink()
    failed = await assert_rolled_back(rig, "verify")
    assert "[unsigned]" in failed.reason
    assert sink.calls("imported", "1.0.1") == 0, "refused code must not run"
    assert rig.manager.status("acme-counter").verified
    await rig.manager.aclose()


async def test_a_version_signed_by_an_untrusted_key_is_refused(
    impl: Any, tmp_path: Path, sink: Sink
) -> None:
    publisher = Publisher(tmp_path)
    folder = publisher.install("acme-counter", "1.0.0")
    rig = signed_rig(impl, tmp_path, sink, publisher)
    await rig.start()
    # a genuine package signed by a key this host does not trust, copied into its store
    mallory = SigningKey.generate("mallory")
    elsewhere = TrustStore(tmp_path / "elsewhere" / "trust.json")
    elsewhere.add_key(mallory.public)
    forged = install_package(
        publisher.package("acme-counter", "1.0.1", key=mallory), tmp_path / "elsewhere", elsewhere
    ).folder
    shutil.rmtree(folder)
    shutil.copytree(forged, folder)
    failed = await assert_rolled_back(rig, "verify")
    assert "[untrusted-key]" in failed.reason
    assert sink.calls("imported", "1.0.1") == 0, "refused code must not run"
    await rig.manager.aclose()


# -- what reload refuses, and reloads racing unloads and reloads ----------------------------


async def test_reloading_a_plugin_that_is_not_active_is_a_state_error(
    impl: Any, tmp_path: Path, sink: Sink
) -> None:
    rig = Rig(impl, tmp_path, sink)
    rig.manager.discover()
    assert rig.manager.status(NAME).state == "validated"
    with pytest.raises(PluginStateError, match=r"^Cannot reload plugin 'counter' while it is"):
        await rig.manager.reload(NAME)
    await rig.manager.load(NAME)
    await rig.manager.unload(NAME)
    with pytest.raises(PluginStateError, match=r"while it is unloaded"):
        await rig.manager.reload(NAME)
    with pytest.raises(PluginNotFound):
        await rig.manager.reload("nope")
    assert rig.reloads() == ReloadStats()


def assert_lifecycle_balanced(sink: Sink) -> None:
    """Every instance that was loaded was unloaded, exactly once."""
    assert sorted(sink.serials("on_unload")) == sorted(sink.serials("on_load")), sink.events


async def test_a_reload_asked_during_an_unload_is_refused_and_nothing_is_lost(
    impl: Any, tmp_path: Path, sink: Sink
) -> None:
    rig = Rig(impl, tmp_path, sink)
    await rig.start()
    sender = await rig.serving()
    rig.write("1.0.1")
    unload = asyncio.ensure_future(rig.manager.unload(NAME))
    reload = asyncio.ensure_future(rig.manager.reload(NAME))
    stats, reloaded = await asyncio.gather(unload, reload, return_exceptions=True)
    assert isinstance(reloaded, PluginStateError), reloaded
    assert not isinstance(stats, BaseException), stats
    sent = await sender.stop()
    assert isinstance(sender.error, NyxplugError)  # the plugin closed under the sender
    rig.assert_every_frame_once_in_order(sent)
    assert stats.messages_processed == sent and stats.dropped == 0
    assert rig.manager.status(NAME).state == "unloaded"
    assert not rig.dispatcher.is_loaded(PID)
    assert sink.calls("imported", "1.0.1") == 0
    assert_lifecycle_balanced(sink)
    assert rig.code_packages() == []


async def test_an_unload_asked_during_a_reload_is_safe_and_nothing_is_lost(
    impl: Any, tmp_path: Path, sink: Sink
) -> None:
    rig = Rig(impl, tmp_path, sink)
    await rig.start()
    sender = await rig.serving()
    rig.write("1.0.1", on_load="await SINK.hold('on_load', VERSION, self.serial)")
    gate = sink.gate("on_load")
    reload = asyncio.ensure_future(rig.manager.reload(NAME))
    await sink.wait_event("held:on_load", "1.0.1")
    await sink.more(3)  # the old version serves while the new one loads
    unload = asyncio.ensure_future(rig.manager.unload(NAME))
    await settle()
    gate.set()
    reloaded, stats = await asyncio.gather(reload, unload, return_exceptions=True)
    # Either the unload waited for the swap, or it won and the reload rolled back.
    assert isinstance(reloaded, (ReloadResult, ReloadFailed, PluginStateError)), reloaded
    if isinstance(reloaded, ReloadResult):
        assert reloaded.outcome == "swapped"
    assert not isinstance(stats, BaseException), stats
    sent = await sender.stop()
    rig.assert_every_frame_once_in_order(sent)
    assert stats.messages_processed == sent and stats.dropped == 0
    assert rig.manager.status(NAME).state == "unloaded"
    assert not rig.dispatcher.is_loaded(PID)
    assert_lifecycle_balanced(sink)
    assert rig.code_packages() == []


async def test_two_concurrent_reloads_both_complete_one_after_the_other(
    impl: Any, tmp_path: Path, sink: Sink
) -> None:
    rig = Rig(impl, tmp_path, sink)
    old = await rig.start()
    sender = await rig.serving()
    rig.write("1.0.1", on_load="await SINK.more(2)")  # each reload yields while loading
    first = asyncio.ensure_future(rig.manager.reload(NAME))
    second = asyncio.ensure_future(rig.manager.reload(NAME))
    one, two = await asyncio.gather(first, second)
    assert (one.outcome, one.from_version, one.to_version) == ("swapped", "1.0.0", "1.0.1")
    assert (two.outcome, two.from_version, two.to_version) == ("swapped", "1.0.1", "1.0.1")
    s1, s2 = serials_of(sink, "on_load", "1.0.1")
    at = sink.index
    assert at("on_load", s1) < at("on_unload", old.serial) < at("on_load", s2)
    assert at("on_load", s2) < at("on_unload", s1)
    assert rig.manager.instance(NAME).serial == s2
    stats = rig.reloads()
    assert (stats.attempted, stats.succeeded, stats.rolled_back) == (2, 2, 0)
    await sink.more(2)
    sent = await rig.finish(sender)
    rig.assert_every_frame_once_in_order(sent)
    await rig.manager.aclose()
    assert_lifecycle_balanced(sink)
