"""Versions side by side and sticky routing (issue 19, item 4), on both twins and loops.

The route hash is checked against published constants (SplitMix64's first outputs,
FNV-1a's vectors) and the checked-in vectors of ``tests/data/route_vectors.json``; the
dispatcher's choices are checked against ``route_point`` key by key, and keyless frames'
against the error diffusion of ``_routing`` (``diffuse`` below), frame by frame.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from typing import Any

import pytest
from breaker_helpers import FakeClock
from conftest import ROOT, TESTS, available_impls, loop_factory
from hypothesis import given, settings
from hypothesis import strategies as st
from nyx_helpers import DATA, info

from nyxplug import BreakerConfig, BreakerState, CircuitOpen, PluginNotLoaded, VersionError
from nyxplug import _routing as routing
from nyxplug._routing import MatchRule

VECTORS = json.loads((TESTS / "data" / "route_vectors.json").read_text("utf-8"))["vectors"]


def diffuse(threshold: int, frames: int, acc: int = 0) -> tuple[list[bool], int]:
    """The spec's keyless rule, naively: whether each of ``frames`` keyless frames goes
    to the candidate, and the accumulator after them."""
    lanes = []
    for _ in range(frames):
        acc += threshold
        lanes.append(acc >= routing.POINT_RANGE)
        if lanes[-1]:
            acc -= routing.POINT_RANGE
    return lanes, acc


def vector_key(vector: dict[str, Any]) -> int | str | bytes:
    if vector["kind"] == "bytes":
        return bytes.fromhex(vector["key"])
    key: int | str = vector["key"]
    return key


def test_hash_matches_published_constants() -> None:
    # SplitMix64 seeded with 0: its first two outputs (Vigna's reference splitmix64.c).
    assert routing.splitmix64(0) == 0xE220A8397B1DCDAF
    assert routing.splitmix64(0x9E3779B97F4A7C15) == 0x6E789E6AA1B965F4
    # FNV-1a 64 (Fowler/Noll/Vo test suite).
    assert routing.fnv1a64(b"") == 0xCBF29CE484222325
    assert routing.fnv1a64(b"a") == 0xAF63DC4C8601EC8C
    assert routing.fnv1a64(b"foobar") == 0x85944171F73967E8


@pytest.mark.parametrize("vector", VECTORS, ids=lambda v: f"{v['kind']}:{v['key']}:{v['salt']}")
def test_route_vectors(impl: Any, vector: dict[str, Any]) -> None:
    key = vector_key(vector)
    salt = int(vector["salt"], 16)
    assert routing.key_bits(key) == int(vector["bits"], 16)
    assert impl.route_point(key, salt) == vector["point"]
    if isinstance(key, bytes):  # every bytes-like type hashes alike
        assert impl.route_point(bytearray(key), salt) == vector["point"]
        assert impl.route_point(memoryview(key), salt) == vector["point"]


def test_route_key_types(impl: Any) -> None:
    with pytest.raises(TypeError, match=r"^Expected `key` to be an int, str or bytes-like, got"):
        impl.route_point(1.5)
    # str keys hash their UTF-8; lone surrogates too (surrogatepass), in both twins
    assert impl.route_point("\udc80", 3) == routing.route_point("\udc80", 3)


def test_share_and_stickiness_over_a_million_keys(impl: Any) -> None:
    """10**6 distinct keys: share within +-0.3 pp at each step; none moves back."""
    salt = routing.route_salt(7, "v2")
    point = impl.route_point
    points = [point(k, salt) for k in range(1_000_000)]
    previous: set[int] | None = None
    for weight in (1, 5, 10, 25, 50):
        threshold = routing.weight_threshold(weight)
        chosen = {k for k, p in enumerate(points) if p < threshold}
        share = 100 * len(chosen) / len(points)
        assert abs(share - weight) <= 0.3, (weight, share)
        if previous is not None:
            assert previous <= chosen  # 0 keys moved candidate -> stable
        previous = chosen


def test_routing_identical_across_processes_and_hash_seeds() -> None:
    """The same keys route alike in two interpreters with different PYTHONHASHSEED."""
    script = textwrap.dedent(
        """
        import asyncio, hashlib, sys
        import nyxplug
        from nyxplug import Permission, PluginInfo

        async def main():
            seen = []
            d = nyxplug.Dispatcher()
            await d.load_plugin(PluginInfo(7, "p", list(Permission)), capacity=30000)
            await d.load_version(7, "v2", lambda m: seen.append(m.payload), capacity=30000)
            d.set_route(7, stable="base", candidate="v2", weight=25)
            for i in range(10000):
                key = f"session-{i}" if i % 2 else i.to_bytes(4, "big") if i % 3 else None
                d.dispatch_nowait(0x52, nyxplug.PluginHeader(7), str(i).encode(), key=key)
            await d.wait_idle()
            await d.aclose()
            print(len(seen), hashlib.sha256(b",".join(seen)).hexdigest())

        asyncio.run(main())
        """
    )
    outputs = []
    for seed in ("1", "4242"):
        env = dict(os.environ, PYTHONHASHSEED=seed, PYTHONPATH=str(ROOT))
        done = subprocess.run(
            [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stderr
        outputs.append(done.stdout)
    assert outputs[0] == outputs[1]
    assert 2300 < int(outputs[0].split()[0]) < 2700


class Lanes:
    """A plugin with versions "base", "v2", ...: each records the payloads it handled."""

    def __init__(self) -> None:
        self.handled: dict[str, list[bytes]] = {}

    def handler(self, version: str) -> Any:
        got = self.handled.setdefault(version, [])
        return lambda msg: got.append(msg.payload)


async def two_lanes(impl: Any, weight: float = 10.0, capacity: int = 100_000) -> tuple[Any, Lanes]:
    d = impl.Dispatcher()
    lanes = Lanes()
    await d.load_plugin(info(7), lanes.handler("base"), capacity=capacity)
    await d.load_version(7, "v2", lanes.handler("v2"), capacity=capacity)
    d.set_route(7, stable="base", candidate="v2", weight=weight)
    return d, lanes


async def test_keys_go_where_route_point_says(impl: Any) -> None:
    d, lanes = await two_lanes(impl, weight=30)
    salt = routing.route_salt(7, "v2")
    threshold = routing.weight_threshold(30)
    header = impl.PluginHeader(7)
    keys: list[int | str | bytes] = [*range(3000), *(f"c{i}" for i in range(3000))]
    for key in keys:
        d.dispatch_nowait(DATA, header, str(key).encode(), key=key)
    await d.wait_idle()
    expect_v2 = [str(k).encode() for k in keys if routing.route_point(k, salt) < threshold]
    assert lanes.handled["v2"] == expect_v2
    assert len(lanes.handled["base"]) == len(keys) - len(expect_v2)
    route = d.route_info(7)
    assert route.routed == {"base": len(keys) - len(expect_v2), "v2": len(expect_v2)}
    assert (route.stable, route.candidate, route.weight, route.salt) == ("base", "v2", 30, salt)
    await d.aclose()


async def test_no_route_ignores_key_but_checks_its_type(impl: Any) -> None:
    d = impl.Dispatcher()
    got: list[bytes] = []
    await d.load_plugin(info(7), lambda m: got.append(m.payload))
    d.dispatch_nowait(DATA, impl.PluginHeader(7), b"a", key="conn-1")
    assert d.try_dispatch(DATA, impl.PluginHeader(7), b"b", key=5) == 0
    await d.dispatch(DATA, impl.PluginHeader(7), b"c", key=b"x")
    with pytest.raises(TypeError, match=r"^Expected `key` to be an int, str or bytes-like, got"):
        d.dispatch_nowait(DATA, impl.PluginHeader(7), b"d", key=1.0)
    await d.wait_idle()
    assert got == [b"a", b"b", b"c"]
    assert d.route_info(7).candidate is None
    await d.aclose()


async def test_weight_changes_apply_from_the_next_frame_and_queued_frames_stay(
    impl: Any,
) -> None:
    """Frames queued on a lane drain there after a rollback; none reach it afterwards."""
    d, lanes = await two_lanes(impl, weight=50)
    header = impl.PluginHeader(7)
    for key in range(1000):  # no await: all queued, none handled yet
        d.dispatch_nowait(DATA, header, b"before", key=key)
    queued = d.version_stats(7)
    assert queued["v2"].queue_depth > 0 and queued["base"].queue_depth > 0
    d.set_route(7, stable="base")  # rollback: the candidate keeps its queue
    for key in range(1000):
        d.dispatch_nowait(DATA, header, b"after", key=key)
    await d.wait_idle()
    assert lanes.handled["v2"] == [b"before"] * queued["v2"].queue_depth
    assert lanes.handled["base"].count(b"after") == 1000
    stats = d.version_stats(7)
    total = sum(s.messages_processed + s.queue_depth + s.dropped for s in stats.values())
    assert total == d.dispatch_stats().frames_dispatched == 2000
    await d.aclose()


async def test_rising_weight_moves_no_key_back(impl: Any) -> None:
    d, _lanes = await two_lanes(impl, weight=1)
    header = impl.PluginHeader(7)
    on_candidate: set[int] = set()
    for weight in (1, 5, 10, 25, 50, 100):
        d.set_route(7, stable="base", candidate="v2", weight=weight)
        before = d.route_info(7).routed["v2"]
        now: set[int] = set()
        for key in range(2000):
            d.dispatch_nowait(DATA, header, b"", key=key)
            after = d.route_info(7).routed["v2"]
            if after != before:
                now.add(key)
                before = after
        assert on_candidate <= now
        on_candidate = now
    assert len(on_candidate) == 2000
    await d.wait_idle()
    await d.aclose()


async def test_promotion_moves_stable_and_keeps_old_warm(impl: Any) -> None:
    d, lanes = await two_lanes(impl, weight=10)
    header = impl.PluginHeader(7)
    d.set_route(7, stable="v2")  # promote: v2 takes everything, base stays loaded
    for key in range(100):
        d.dispatch_nowait(DATA, header, b"p", key=key)
    d.dispatch_nowait(DATA, header, b"nokey")
    await d.wait_idle()
    assert lanes.handled["v2"] == [b"p"] * 100 + [b"nokey"]
    assert sorted(d.version_stats(7)) == ["base", "v2"]
    assert d.plugin_stats(7).messages_processed == 101  # the stable version's
    d.set_route(7, stable="base")  # instant rollback to the warm one
    d.dispatch_nowait(DATA, header, b"back", key=1)
    await d.wait_idle()
    assert lanes.handled["base"] == [b"back"]
    stats = await d.unload_version(7, "v2")
    assert stats.messages_processed == 101
    await d.aclose()


async def test_keyless_frames_spread_deterministically(impl: Any) -> None:
    d, lanes = await two_lanes(impl, weight=20)
    header = impl.PluginHeader(7)
    for i in range(5000):
        d.dispatch_nowait(DATA, header, str(i).encode())
    await d.wait_idle()
    threshold = routing.weight_threshold(20)
    to_v2, _acc = diffuse(threshold, 5000)
    expect = [str(i).encode() for i in range(5000) if to_v2[i]]
    assert lanes.handled["v2"] == expect
    # the exact share: five thresholds of 20 % fall 2 short of 2**53
    assert len(expect) == 5000 * threshold // routing.POINT_RANGE == 999
    await d.aclose()


def lane_of(d: Any, send: Any, *args: Any, **kwargs: Any) -> str:
    """The version plugin 7's route sent one frame to (``send(*args, **kwargs)``)."""
    before = d.route_info(7).routed
    send(*args, **kwargs)
    after = d.route_info(7).routed
    (lane,) = (name for name, count in after.items() if count != before[name])
    return lane


# weight -> the 0-based indices of the first 40 keyless frames that go to the candidate
KEYLESS_SEQUENCES = {
    0: [],
    10: [10, 20, 30],  # ten thresholds of 10 % are 2**53 - 2: the 11th frame is the first
    33.3: [3, 6, 9, 12, 15, 18, 21, 24, 27, 30, 33, 36, 39],
    50: list(range(1, 40, 2)),
    100: list(range(40)),
}


@pytest.mark.parametrize("weight", list(KEYLESS_SEQUENCES))
async def test_keyless_sequence_is_exact_and_the_same_on_both_twins(
    weight: float, loop_kind: str
) -> None:
    """Each twin sends 40 keyless frames; both give the sequence the integer rule gives."""
    del loop_kind  # run on each loop
    lanes, _acc = diffuse(routing.weight_threshold(weight), 40)
    expect = [i for i, to_v2 in enumerate(lanes) if to_v2]
    assert expect == KEYLESS_SEQUENCES[weight]
    for mod in available_impls():
        d, _lanes = await two_lanes(mod, weight=weight)
        send, header = d.dispatch_nowait, mod.PluginHeader(7)
        seen = [lane_of(d, send, DATA, header, str(i).encode()) for i in range(40)]
        assert [i for i, lane in enumerate(seen) if lane == "v2"] == expect, mod.__name__
        await d.aclose()


async def test_a_weight_change_keeps_the_keyless_accumulator(impl: Any) -> None:
    """``set_route`` with the same stable and candidate carries the accumulator over;
    a new candidate starts at 0; frames an A/B rule takes, and keyed frames, leave it."""
    d, lanes = await two_lanes(impl, weight=30)
    await d.load_version(7, "v3", lanes.handler("v3"))
    send, header, ruled = d.dispatch_nowait, impl.PluginHeader(7), impl.PluginHeader(7, 0, b"r:")

    def keyless(count: int, candidate: str, weight: float, acc: int = 0) -> int:
        expect, acc = diffuse(routing.weight_threshold(weight), count, acc)
        seen = [lane_of(d, send, DATA, header) for _ in range(count)]
        assert seen == [candidate if to_candidate else "base" for to_candidate in expect]
        return acc

    acc = keyless(7, "v2", 30)
    assert acc != 0
    d.set_route(
        7, stable="base", candidate="v2", weight=70, rules=[MatchRule("v3", data_prefix=b"r:")]
    )
    for key in range(5):
        assert lane_of(d, send, DATA, ruled) == "v3"  # the rule takes it: acc stays
        send(DATA, header, b"", key=key)  # keyed: acc stays
    keyless(9, "v2", 70, acc)  # from acc, at the new weight
    d.set_route(7, stable="base", candidate="v3", weight=70)  # a new candidate: acc is 0
    keyless(9, "v3", 70)
    d.set_route(7, stable="v2", candidate="v3", weight=70)  # a new stable: 0 again
    expect, _acc = diffuse(routing.weight_threshold(70), 9)
    seen = [lane_of(d, send, DATA, header) for _ in range(9)]
    assert seen == ["v3" if to_candidate else "v2" for to_candidate in expect]
    await d.wait_idle()
    await d.aclose()


#: One step of ``test_keyless_twins_agree``: keyless frames (some taken by an A/B rule),
#: keyed frames, a weight change, or a new candidate.
STEPS = st.lists(
    st.one_of(
        st.tuples(st.just("keyless"), st.integers(1, 40), st.booleans()),
        st.tuples(st.just("keyed"), st.integers(0, 2**64 - 1), st.just(False)),
        st.tuples(
            st.just("weight"),
            st.one_of(st.sampled_from([0, 1, 10, 33.3, 50, 99.9, 100]), st.floats(0, 100)),
            st.booleans(),
        ),
        st.tuples(st.just("candidate"), st.sampled_from(["v2", "v3"]), st.floats(0, 100)),
    ),
    max_size=25,
)


@settings(max_examples=60, deadline=None)
@given(steps=STEPS)
def test_keyless_twins_agree(steps: list[tuple[str, Any, Any]]) -> None:
    """Random weights, weight changes, new candidates, A/B rules and keyed frames in
    between: both twins send every keyless frame where the naive rule does."""
    runs = []
    for mod in available_impls():
        loop = loop_factory("asyncio")()
        try:
            runs.append(loop.run_until_complete(keyless_run(mod, steps)))
        finally:
            loop.close()
    for seen, expect in runs:
        assert seen == expect
    assert runs[0][0] == runs[-1][0]


async def keyless_run(mod: Any, steps: list[tuple[str, Any, Any]]) -> tuple[list[str], list[str]]:
    """The lanes the frames of ``steps`` went to on ``mod``, and where the rule says."""
    d, lanes = await two_lanes(mod, weight=10)
    await d.load_version(7, "v3", lanes.handler("v3"), capacity=100_000)
    send, header, ruled = d.dispatch_nowait, mod.PluginHeader(7), mod.PluginHeader(7, 0, b"r:")
    candidate, weight, rules, acc = "v2", 10.0, False, 0
    seen: list[str] = []
    expect: list[str] = []
    for kind, value, flag in steps:
        if kind == "keyless":
            for i in range(value):
                if rules and flag and i % 2:  # taken by the rule: the accumulator stays
                    seen.append(lane_of(d, send, DATA, ruled))
                    expect.append("v3")
                    continue
                seen.append(lane_of(d, send, DATA, header))
                to_candidate, acc = diffuse(routing.weight_threshold(weight), 1, acc)
                expect.append(candidate if to_candidate[0] else "base")
        elif kind == "keyed":
            send(DATA, header, b"", key=value)
        else:
            if kind == "candidate":
                acc = 0 if value != candidate else acc
                candidate, weight = value, flag
            else:
                weight, rules = value, flag
            rule = [MatchRule("v3", data_prefix=b"r:")] if rules else []
            d.set_route(7, stable="base", candidate=candidate, weight=weight, rules=rule)
    await d.aclose()
    return seen, expect


async def test_version_limits_and_errors(impl: Any) -> None:
    d, _lanes = await two_lanes(impl)
    for name in ("v3", "v4", "v5"):
        await d.load_version(7, name)
    with pytest.raises(
        VersionError,
        match=r"^Expected at most 5 loaded versions, got one more - in version 'v6' of plugin 7; "
        r"unload_version\(\) an old one first$",
    ):
        await d.load_version(7, "v6")
    with pytest.raises(VersionError, match=r"^Expected a new version name, got a loaded one"):
        await d.load_version(7, "v3")
    with pytest.raises(VersionError, match=r"^Expected a loaded version, got none by that name"):
        d.set_route(7, stable="nope")
    with pytest.raises(VersionError, match=r"got the candidate - in version 'v2' of plugin 7"):
        await d.unload_version(7, "v2")
    with pytest.raises(VersionError, match=r"got the stable one - in version 'base'"):
        await d.unload_version(7, "base")
    with pytest.raises(VersionError, match=r"^Expected a candidate other than the stable"):
        d.set_route(7, stable="v2", candidate="v2")
    with pytest.raises(ValueError, match=r"^Expected `weight` in 0..100 \(percent\), got 101$"):
        d.set_route(7, stable="base", candidate="v2", weight=101)
    with pytest.raises(PluginNotLoaded):
        await d.load_version(8, "v2")
    assert isinstance(VersionError(7, "v", "p", "f"), ValueError)
    await d.unload_version(7, "v5")
    await d.load_version(7, "v6")
    stats = await d.unload_plugin(7)  # unloads every version
    assert stats.messages_processed == 0
    assert d.route_info(7) is None and d.version_stats(7) == {}


async def test_each_version_has_its_own_breaker(impl: Any) -> None:
    d, lanes = await two_lanes(impl, weight=50)
    clock = FakeClock()
    d.set_breaker(7, BreakerConfig(), clock=clock, version="v2")
    d.set_breaker_state(7, BreakerState.FORCED_OPEN, version="v2")
    assert d.breaker_stats(7) is None  # the stable version has none
    assert d.breaker_stats(7, version="v2").state == BreakerState.FORCED_OPEN
    header = impl.PluginHeader(7)
    refused = 0
    for key in range(400):
        try:
            d.dispatch_nowait(DATA, header, b"x", key=key)
        except CircuitOpen:
            refused += 1
    await d.wait_idle()
    stats = d.version_stats(7)
    assert stats["v2"].circuit_open == refused > 100
    assert stats["base"].messages_processed == 400 - refused
    assert d.route_info(7).routed == {"base": 400 - refused, "v2": refused}
    await d.aclose()


async def test_batches_are_routed_like_keyless_frames(impl: Any) -> None:
    """try_dispatch_many and try_dispatch_framed leave their fast path during a rollout."""
    d, lanes = await two_lanes(impl, weight=20)
    frames = [impl.PluginFrame(DATA, impl.PluginHeader(7), str(i).encode()) for i in range(3000)]
    result = d.try_dispatch_many(frames)
    assert result.dispatched == 3000
    await d.wait_idle()
    to_v2, _acc = diffuse(routing.weight_threshold(20), 3000)
    expect = [str(i).encode() for i in range(3000) if to_v2[i]]
    assert lanes.handled["v2"] == expect
    assert len(lanes.handled["base"]) == 3000 - len(expect)
    await d.aclose()


async def test_ab_rules_first_match_wins_then_the_weight(impl: Any) -> None:
    d, lanes = await two_lanes(impl, weight=0)
    await d.load_version(7, "v3", lanes.handler("v3"), capacity=1000)
    rules = [
        MatchRule("v3", flags_mask=0x80, flags=0x80),
        MatchRule("v2", data_prefix=b"beta:"),
        MatchRule("v3", keys=["vip", 99]),
        MatchRule("base", frame_type=0x53),
    ]
    d.set_route(7, stable="base", candidate="v2", weight=0, rules=rules)
    send = d.dispatch_nowait
    send(DATA, impl.PluginHeader(7, 0x80, b"beta:x"), b"flag", key=1)  # rule 1 first
    send(DATA, impl.PluginHeader(7, 0, b"beta:x"), b"prefix")
    send(DATA, impl.PluginHeader(7), b"vip", key=b"vip")  # b"vip" and "vip" are one key
    send(DATA, impl.PluginHeader(7), b"99", key=99)
    send(DATA, impl.PluginHeader(7), b"nokey")  # a keyless frame never matches a key set
    send(DATA, impl.PluginHeader(7), b"plain", key=5)
    await d.wait_idle()
    assert lanes.handled == {
        "base": [b"nokey", b"plain"],
        "v2": [b"prefix"],
        "v3": [b"flag", b"vip", b"99"],
    }
    assert d.route_info(7).rules == tuple(rules)
    with pytest.raises(
        VersionError, match=r"got one an A/B rule or the shadow names - in version 'v3'"
    ):
        await d.unload_version(7, "v3")
    d.set_route(7, stable="base", rules=[MatchRule("v3", keys=[1])])  # rules without a weight
    send(DATA, impl.PluginHeader(7), b"one", key=1)
    send(DATA, impl.PluginHeader(7), b"two", key=2)
    await d.wait_idle()
    assert lanes.handled["v3"][-1:] == [b"one"] and lanes.handled["base"][-1:] == [b"two"]
    d.set_route(7, stable="base")
    await d.unload_version(7, "v3")
    await d.aclose()


def test_match_rules_are_validated() -> None:
    with pytest.raises(ValueError, match=r"^Expected `flags` within `flags_mask` \(0x01\)"):
        MatchRule("v2", flags_mask=1, flags=2)
    with pytest.raises(ValueError, match=r"^Expected `flags_mask` in 0..255, got 256"):
        MatchRule("v2", flags_mask=256)
    with pytest.raises(ValueError, match=r"^Expected `frame_type` in 0..255 or None"):
        MatchRule("v2", frame_type=300)
    with pytest.raises(TypeError, match=r"^Expected `key` to be an int, str or bytes-like"):
        MatchRule("v2", keys=[1.5])  # type: ignore[list-item]


async def test_shadow_copies_never_hold_up_the_frame_and_are_counted(impl: Any) -> None:
    """Every frame not already on the shadow lane is offered to it as a copy; a full
    shadow queue drops the copy (counted), the ledger holds with the copies apart."""
    d, lanes = await two_lanes(impl, weight=10, capacity=100_000)
    await d.load_version(7, "dark", lanes.handler("dark"), capacity=50)
    d.set_route(7, stable="base", candidate="v2", weight=10, shadow="dark")
    header = impl.PluginHeader(7)
    for key in range(200):  # no await: the shadow queue (capacity 50) fills
        d.dispatch_nowait(DATA, header, str(key).encode(), key=key)
    await d.wait_idle()
    route = d.route_info(7)
    assert route.shadow == "dark"
    assert route.shadowed["dark"] == 50 and route.shadow_dropped["dark"] == 150
    assert lanes.handled["dark"] == [str(k).encode() for k in range(50)]
    assert len(lanes.handled["base"]) + len(lanes.handled["v2"]) == 200  # none held up
    stats = d.version_stats(7)
    total = sum(s.messages_processed + s.queue_depth + s.dropped for s in stats.values())
    assert total - sum(route.shadowed.values()) == d.dispatch_stats().frames_dispatched == 200
    # a shadow that is also the candidate gets copies of the stable lane's frames only
    d.set_route(7, stable="base", candidate="v2", weight=50, shadow="v2")
    before = len(lanes.handled["v2"])
    for key in range(40):
        d.dispatch_nowait(DATA, header, b"x", key=key)
        await d.wait_idle()
    assert len(lanes.handled["v2"]) - before == 40
    with pytest.raises(VersionError, match=r"^Expected a shadow other than the stable version"):
        d.set_route(7, stable="base", shadow="base")
    d.set_route(7, stable="base", candidate="v2", weight=10, shadow="dark")
    with pytest.raises(VersionError, match=r"got one an A/B rule or the shadow names"):
        await d.unload_version(7, "dark")
    d.set_route(7, stable="base", shadow="dark")  # mirroring alone, no candidate
    d.dispatch_nowait(DATA, header, b"only", key=3)
    await d.wait_idle()
    assert lanes.handled["dark"][-1] == b"only" and lanes.handled["base"][-1] == b"only"
    await d.aclose()


async def test_repeated_keys_route_alike_and_only_route_keys_are_remembered(impl: Any) -> None:
    """A key's lane is remembered per route (the pure twin's memo; the compiled one
    hashes in C): repeats go where ``route_point`` says, a new route forgets, and a
    value equal to a remembered key but of no route key type (1.0 == 1) is refused."""
    d, lanes = await two_lanes(impl, weight=30)
    salt = routing.route_salt(7, "v2")
    header = impl.PluginHeader(7)
    keys: list[int | str | bytes] = [*range(300), *(f"s{i}" for i in range(300))]
    keys += [str(i).encode() for i in range(300)]
    for _round in range(3):
        for key in keys:
            d.dispatch_nowait(DATA, header, b"", key=key)
    with pytest.raises(TypeError, match=r"^Expected `key` to be an int, str or bytes-like, got"):
        d.dispatch_nowait(DATA, header, b"", key=1.0)
    d.dispatch_nowait(DATA, header, b"", key=True)  # a bool is an int key: 1's lane
    d.dispatch_nowait(DATA, header, b"", key=bytearray(b"7"))  # hashes as b"7"
    expect = [routing.route_point(k, salt) < routing.weight_threshold(30) for k in [*keys, 1, b"7"]]
    routed = d.route_info(7).routed
    assert routed["v2"] == 3 * sum(expect[:-2]) + sum(expect[-2:])
    d.set_route(7, stable="base", candidate="v2", weight=60)  # a new record: keys move
    for key in keys:
        d.dispatch_nowait(DATA, header, b"", key=key)
    moved = d.route_info(7).routed["v2"] - routed["v2"]
    assert moved == sum(routing.route_point(k, salt) < routing.weight_threshold(60) for k in keys)
    await d.wait_idle()
    await d.aclose()
    assert lanes.handled  # the lanes ran


async def test_the_pure_memo_forgets_at_its_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    """The pure twin's memo holds a bounded number of keys: emptied when full while keys
    repeat, given up for the record when they mostly do not; routing never changes."""
    from nyxplug import _dispatch_py

    monkeypatch.setattr(_dispatch_py, "_MEMO_LIMIT", 16)
    d, _lanes = await two_lanes(_dispatch_py, weight=50)
    salt = routing.route_salt(7, "v2")
    header = _dispatch_py.PluginHeader(7)
    route = d._runtimes[7].route
    sessions = [k % 10 for k in range(100)]  # 10 keys, each 10 times
    grouped = [1000 + k // 4 for k in range(80)]  # 20 new keys, 4 frames each
    fresh = list(range(5000, 5040))  # 40 keys never repeated
    sent: list[int] = []
    for phase, keys in enumerate((sessions, grouped, fresh)):
        for key in keys:
            d.dispatch_nowait(DATA, header, b"", key=key)
        sent += keys
        if phase == 0:
            assert sorted(route.memo) == list(range(10))
        elif phase == 1:
            assert 0 < len(route.memo) <= 16 and route.memo is not _dispatch_py._NO_MEMO
        else:
            assert route.memo is _dispatch_py._NO_MEMO
        threshold = routing.weight_threshold(50)
        expect = sum(routing.route_point(k, salt) < threshold for k in sent)
        assert d.route_info(7).routed["v2"] == expect
    await d.wait_idle()
    await d.aclose()


async def test_send_arguments_any_way_they_may_be_passed(impl: Any) -> None:
    """The compiled senders parse the usual calls themselves (see nyx_install_sender):
    every other way of passing the same arguments, and every wrong one, behaves alike."""
    d, lanes = await two_lanes(impl, weight=50)
    header = impl.PluginHeader(7)
    name = "".join(["k", "ey"])  # not the interned "key" object
    for send in (d.dispatch_nowait, d.try_dispatch):
        send(DATA, header)
        send(DATA, header, b"p")
        send(DATA, header, key=3)
        send(DATA, header, b"p", key=3)
        send(DATA, header, **{name: 3})
        send(frame_type=DATA, header=header, payload=b"p", key=3)
        send(DATA, header, payload=b"p", key=3)
        send(DATA, header, key=3, payload=b"p")
        for bad in ((DATA,), (DATA, header, b"", 3), ()):
            with pytest.raises(TypeError):
                send(*bad)
        with pytest.raises(TypeError):
            send(DATA, header, kee=3)
        with pytest.raises(TypeError):
            send(DATA, header, b"", payload=b"")
    await d.dispatch(DATA, header, key=3)
    await d.dispatch(DATA, header, b"p", **{name: 3})
    type(d).dispatch_nowait(d, DATA, header, key=3)  # through the class
    await d.wait_idle()
    assert sum(d.route_info(7).routed.values()) == 2 * 8 + 3
    await d.aclose()
    assert lanes.handled


async def test_ab_rules_match_every_key_type(impl: Any) -> None:
    """A rule's key set matches a key whatever its type (int, str, bytes-like, bool),
    on the compiled twin's fast and general paths alike."""
    d, lanes = await two_lanes(impl, weight=0)
    rule = MatchRule("v2", keys=[1, "s", b"b"])
    d.set_route(7, stable="base", candidate="v2", weight=0, rules=[rule])
    header = impl.PluginHeader(7)
    keys: list[Any] = [1, True, "s", b"s", b"b", bytearray(b"b"), memoryview(b"b"), 2, None]
    for i, key in enumerate(keys):
        d.dispatch_nowait(DATA, header, str(i).encode(), key=key)
    await d.wait_idle()
    # "s" and b"s" hash alike (a str key hashes its UTF-8)
    assert lanes.handled["v2"] == [str(i).encode() for i in range(7)]
    assert lanes.handled["base"] == [b"7", b"8"]
    await d.aclose()
