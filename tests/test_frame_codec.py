"""SPEC 8 "Whole frames": ``PluginFrame`` encodes as cbor2 does and decodes strictly.

The encoder must be byte-for-byte ``cbor2.dumps`` of Nyx's own layout; the decoder
accepts the keys in any order (and unknown keys with scalar values, as the header
decoder does), refuses everything else with ``FrameDecodeError`` (``FrameTooLarge`` over
``max_size``), and both twins answer every input identically, error texts included.
Prefix mode (``decode_prefix``) reads one frame from the front of a buffer: bytes after
it are allowed, ``None`` means the buffer ends inside the frame (read more).
"""

from __future__ import annotations

import itertools
import pickle
from typing import Any

import cbor2
import pytest
from conftest import available_impls
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from benchmarks import fuzz_frames
from nyxplug import (
    DEFAULT_MAX_FRAME_SIZE,
    FrameDecodeError,
    FrameError,
    FrameTooLarge,
    FrameType,
    HeaderDecodeError,
)
from nyxplug.testing import strategies as nyx_st

H = {"id": 1, "flags": 0, "data": b""}


def nyx(frame_type: Any = 0x52, header: Any = None, payload: Any = b"abc", **extra: Any) -> bytes:
    """A frame as Nyx's encoder writes it, built by cbor2 alone."""
    header = H if header is None else header
    return cbor2.dumps({"frame_type": frame_type, "header": header, "payload": payload, **extra})


V = nyx()  # 51 bytes

frame_types = st.integers(0, 255)
ids = st.integers(0, 2**32 - 1)
flag_values = st.integers(0, 255)
blobs = st.binary(max_size=300)


# -- encoding ------------------------------------------------------------------------


def test_encoding_is_nyx_layout(impl) -> None:
    frame = impl.PluginFrame(FrameType.DATA, impl.PluginHeader(1, 0, b"\x01\x02\x03\x04"), b"hi")
    expected = bytes.fromhex(
        "a3 6a 6672616d655f74797065 1852"  # "frame_type": 0x52
        " 66 686561646572"  # "header":
        " a3 62 6964 01 65 666c616773 00 64 64617461 44 01020304"  # the SPEC 1 example
        " 67 7061796c6f6164 42 6869"  # "payload": b"hi"
    )
    assert frame.encode() == expected
    assert expected == nyx(0x52, {"id": 1, "flags": 0, "data": b"\x01\x02\x03\x04"}, b"hi")
    assert impl.PluginFrame.decode(expected) == frame


@settings(max_examples=300)
@given(ft=frame_types, id_=ids, flags=flag_values, data=blobs, payload=st.binary(max_size=2000))
@example(ft=0, id_=0, flags=0, data=b"", payload=b"")
@example(ft=23, id_=23, flags=23, data=bytes(23), payload=bytes(23))
@example(ft=24, id_=24, flags=24, data=bytes(24), payload=bytes(24))
@example(ft=255, id_=2**32 - 1, flags=255, data=bytes(256), payload=bytes(65536))
def test_encode_is_cbor2_and_decode_round_trips(
    impl, ft: int, id_: int, flags: int, data: bytes, payload: bytes
) -> None:
    frame = impl.PluginFrame(ft, impl.PluginHeader(id_, flags, data), payload)
    encoded = frame.encode()
    assert encoded == nyx(ft, {"id": id_, "flags": flags, "data": data}, payload)
    for buf in (encoded, bytearray(encoded), memoryview(encoded)):
        decoded = impl.PluginFrame.decode(buf)
        assert decoded == frame and hash(decoded) == hash(frame)
        assert (decoded.frame_type, decoded.payload) == (ft, payload)
        assert type(decoded.header) is impl.PluginHeader
        assert (decoded.header.id, decoded.header.flags, decoded.header.data) == (id_, flags, data)
    # prefix mode: what follows the frame is left alone, and the bytes used are exact
    for tail in (b"", b"\x00", encoded):
        for buf in (encoded + tail, bytearray(encoded + tail), memoryview(encoded + tail)):
            assert impl.PluginFrame.decode_prefix(buf) == (frame, len(encoded))


def test_frame_fields_and_identity(impl) -> None:
    header = impl.PluginHeader(7, 1, b"d")
    frame = impl.PluginFrame(0x52, header, bytearray(b"p"))
    assert frame.frame_type is FrameType.DATA and frame.header is header
    assert frame.payload == b"p" and type(frame.payload) is bytes
    assert impl.PluginFrame(0x5A, header).frame_type == 0x5A
    assert type(impl.PluginFrame(0x5A, header).frame_type) is int
    assert impl.PluginFrame(0x52, header).payload == b""
    assert repr(frame) == (
        "PluginFrame(frame_type=0x52, header=PluginHeader(id=7, flags=1, data=b'd'), payload=b'p')"
    )
    assert frame == impl.PluginFrame(FrameType.DATA, impl.PluginHeader(7, 1, b"d"), b"p")
    assert frame != impl.PluginFrame(0x53, header, b"p")
    assert frame != impl.PluginFrame(0x52, header, b"q")
    assert frame != impl.PluginFrame(0x52, impl.PluginHeader(8, 1, b"d"), b"p")
    assert frame != (0x52, header, b"p")
    assert len({frame, impl.PluginFrame(0x52, impl.PluginHeader(7, 1, b"d"), b"p")}) == 1
    copy = pickle.loads(pickle.dumps(frame))
    assert copy == frame and type(copy) is impl.PluginFrame
    assert copy.frame_type is FrameType.DATA


@pytest.mark.parametrize(
    ("args", "error", "message"),
    [
        ((256, None), ValueError, r"^Expected `frame_type` in 0\.\.255, got 256$"),
        ((-1, None), ValueError, r"^Expected `frame_type` in 0\.\.255, got -1$"),
        (("DATA", None), TypeError, r"^Expected `frame_type` to be an int, got str$"),
        ((True, None), TypeError, r"^Expected `frame_type` to be an int, got bool$"),
        ((0x52, b"hdr"), TypeError, r"^Expected `header` to be a PluginHeader, got bytes$"),
        ((0x52, None, "text"), TypeError, r"^Expected `payload` to be bytes-like, got str$"),
    ],
)
def test_constructor_validates(impl, args: tuple[Any, ...], error: type, message: str) -> None:
    frame_type, header, *rest = args
    with pytest.raises(error, match=message):
        impl.PluginFrame(frame_type, impl.PluginHeader(1) if header is None else header, *rest)


# -- accepted shapes -----------------------------------------------------------------


@pytest.mark.parametrize("order", list(itertools.permutations(["frame_type", "header", "payload"])))
@pytest.mark.parametrize("header_order", [("id", "flags", "data"), ("data", "id", "flags")])
def test_decode_accepts_keys_in_any_order(
    impl, order: tuple[str, ...], header_order: tuple[str, ...]
) -> None:
    header = {"id": 70000, "flags": 3, "data": b"xyz"}
    fields = {"frame_type": 0x53, "header": {k: header[k] for k in header_order}, "payload": b"p"}
    buf = cbor2.dumps({key: fields[key] for key in order})
    expected = impl.PluginFrame(0x53, impl.PluginHeader(70000, 3, b"xyz"), b"p")
    assert impl.PluginFrame.decode(buf) == expected
    assert impl.PluginFrame.decode_prefix(buf + b"\xff") == (expected, len(buf))


def test_decode_ignores_unknown_keys_with_scalar_values(impl) -> None:
    expected = impl.PluginFrame(0x52, impl.PluginHeader(1), b"abc")
    for value in (5, -7, 2**64 - 1, "text", b"bytes", None, True, 1.5):
        assert impl.PluginFrame.decode(nyx(x=value)) == expected
        header = {"y": value, **H}
        assert impl.PluginFrame.decode(nyx(header=header, z=value)) == expected


def test_decode_accepts_non_shortest_heads(impl) -> None:
    # well-formed CBOR, not canonical: the strict path reads it (the fast path declines)
    buf = (
        b"\xa3\x6aframe_type\x19\x00\x52\x66header\xa3\x62id\x1a\x00\x00\x00\x07"
        b"\x65flags\x18\x01\x64data\x59\x00\x01z\x67payload\x5a\x00\x00\x00\x01p"
    )
    assert impl.PluginFrame.decode(buf) == impl.PluginFrame(
        0x52, impl.PluginHeader(7, 1, b"z"), b"p"
    )


# -- refused input, with the message each one gets ----------------------------------

TOP = "a CBOR map {frame_type, header, payload}"
NESTED = "(nested containers are not allowed)"
HOSTILE: dict[str, tuple[bytes, str]] = {
    "empty": (b"", f"Expected {TOP}, got empty input at byte 0"),
    "not a map": (b"\x01", f"Expected {TOP}, got an unsigned integer at byte 0"),
    "array form": (
        cbor2.dumps([0x52, [1, 0, b""], b"abc"]),
        f"Expected {TOP}, got an array at byte 0",
    ),
    "tag around": (
        b"\xd9\xd9\xf7" + V,
        "Expected no CBOR tags, got tag 55799 around the frame at byte 0",
    ),
    "indefinite map": (
        b"\xbf" + V[1:] + b"\xff",
        "Expected a definite-length item, got an indefinite-length map at byte 0",
    ),
    "trailing byte": (
        V + b"\x00",
        "Expected the end of the frame after one CBOR item, got 1 trailing bytes at byte 51",
    ),
    "two frames": (
        V + V,
        "Expected the end of the frame after one CBOR item, got 51 trailing bytes at byte 51",
    ),
    "missing frame_type": (
        cbor2.dumps({"header": H, "payload": b""}),
        "Expected key `frame_type`, got a map without it at byte 0",
    ),
    "missing header": (
        cbor2.dumps({"frame_type": 0x52, "payload": b""}),
        "Expected key `header`, got a map without it at byte 0",
    ),
    "missing payload": (
        cbor2.dumps({"frame_type": 0x52, "header": H}),
        "Expected key `payload`, got a map without it at byte 0",
    ),
    "header under a byte-string key": (
        cbor2.dumps({"frame_type": 0x52, b"header": 1, "payload": b""}),
        "Expected key `header`, got a map without it at byte 0",
    ),
    "duplicate frame_type": (
        b"\xa4\x6aframe_type\x01" + V[1:],
        "Expected key `frame_type` once, got a duplicate at byte 13",
    ),
    "duplicate header": (
        b"\xa4" + V[1:] + b"\x66header" + cbor2.dumps(H),
        "Expected key `header` once, got a duplicate at byte 51",
    ),
    "duplicate payload": (
        b"\xa4" + V[1:] + b"\x67payload\x40",
        "Expected key `payload` once, got a duplicate at byte 51",
    ),
    "frame_type 256": (nyx(256), "Expected `frame_type` in 0..255, got 256 at byte 12"),
    "frame_type -1": (nyx(-1), "Expected `frame_type` in 0..255, got -1 at byte 12"),
    "frame_type text": (
        nyx("DATA"),
        "Expected `frame_type` as an unsigned integer in 0..255, got a text string at byte 12",
    ),
    "frame_type bignum": (
        nyx(2**70),
        "Expected no CBOR tags, got tag 2 as value of key 'frame_type' at byte 12",
    ),
    "payload text": (
        nyx(payload="abc"),
        "Expected `payload` as a byte string, got a text string at byte 47",
    ),
    "payload array": (
        nyx(payload=[1]),
        "Expected a scalar, text or byte string as value of key 'payload', got an array "
        f"{NESTED} at byte 47",
    ),
    "payload indefinite": (
        V[:-4] + b"\x5f\x43abc\xff",
        "Expected a definite-length item, got an indefinite-length byte string at byte 47",
    ),
    "header as bytes": (
        nyx(header=cbor2.dumps(H)),
        "Expected `header` as a CBOR map {id, flags, data}, got a byte string at byte 21",
    ),
    "header as array": (
        nyx(header=[1, 0, b""]),
        "Expected `header` as a CBOR map {id, flags, data}, got an array at byte 21",
    ),
    "header tagged": (
        nyx(header=cbor2.CBORTag(1, H)),
        "Expected no CBOR tags, got tag 1 as value of key 'header' at byte 21",
    ),
    "header indefinite": (
        V[:21] + b"\xbf" + V[22:-12] + b"\xff" + V[-12:],
        "Expected a definite-length item, got an indefinite-length map at byte 21",
    ),
    "header without id": (
        nyx(header={"flags": 0, "data": b""}),
        "Expected key `id`, got a map without it at byte 21",
    ),
    "header id 2**32": (
        nyx(header={"id": 2**32, "flags": 0, "data": b""}),
        "Expected `id` in 0..4294967295, got 4294967296 at byte 25",
    ),
    "header flags 256": (
        nyx(header={"id": 1, "flags": 256, "data": b""}),
        "Expected `flags` in 0..255, got 256 at byte 32",
    ),
    "header data text": (
        nyx(header={"id": 1, "flags": 0, "data": "x"}),
        "Expected `data` as a byte string, got a text string at byte 38",
    ),
    "header duplicate id": (
        nyx(header={"id": 1, "flags": 0, "data": b""})[:21] + b"\xa4\x62id\x02" + V[22:],
        "Expected key `id` once, got a duplicate at byte 26",
    ),
    "map inside the header": (
        nyx(header={**H, "x": {}}),
        f"Expected a scalar, text or byte string as value of key 'x', got a map {NESTED} at "
        "byte 41",
    ),
    "map under an unknown key": (
        cbor2.dumps({"frame_type": 0x52, "x": {}, "header": H, "payload": b""}),
        f"Expected a scalar, text or byte string as value of key 'x', got a map {NESTED} at "
        "byte 16",
    ),
    "array under an unknown key": (
        nyx(payload=b"", x=[1]),
        "Expected a scalar, text or byte string as value of key 'x', got an array "
        f"{NESTED} at byte 50",
    ),
    "array as a key": (
        b"\xa4\x81\x01\x01" + V[1:],
        f"Expected a scalar, text or byte string as a map key, got an array {NESTED} at byte 1",
    ),
    "payload one byte short": (
        V[:-1],
        "Expected 3 more bytes for a byte string, got 2 left (truncated frame) at byte 48",
    ),
    "payload length 2**64-1": (
        V[:-4] + b"\x5b" + b"\xff" * 8,
        "Expected 18446744073709551615 more bytes for a byte string, got 0 left (truncated "
        "frame) at byte 56",
    ),
    "map of 2**64-1 entries": (
        b"\xbb" + b"\xff" * 8,
        "Expected 1 more bytes for an item head, got 0 left (truncated frame) at byte 9",
    ),
    "deep maps": (
        b"\xa1\x61x" * 1000 + b"\x00",
        f"Expected a scalar, text or byte string as value of key 'x', got a map {NESTED} at byte 3",
    ),
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_frame_is_refused_with_its_message(impl, name: str) -> None:
    buf, message = HOSTILE[name]
    with pytest.raises(FrameDecodeError) as excinfo:
        impl.PluginFrame.decode(buf)
    err = excinfo.value
    assert str(err) == message + " - in plugin frame"
    assert isinstance(err, HeaderDecodeError) and isinstance(err, FrameError)
    assert isinstance(err, ValueError)
    assert err.frame_type is None and err.plugin_id is None
    copy = pickle.loads(pickle.dumps(err))
    assert type(copy) is FrameDecodeError and str(copy) == str(err)


def test_every_truncation_needs_more_bytes(impl) -> None:
    """Each proper prefix of a valid frame: ``decode`` refuses it, ``decode_prefix``
    answers None (read more) - never an error, never a frame."""
    shapes = [
        V,
        impl.PluginFrame(255, impl.PluginHeader(2**32 - 1, 255, bytes(300)), bytes(70000)).encode(),
        cbor2.dumps({"payload": b"pp", "x": "skip", "header": {"data": b"d", "id": 5, "flags": 2},
                     "frame_type": 1, "f": 1.5}),
    ]  # fmt: skip
    for buf in shapes:
        for cut in itertools.chain(range(min(len(buf), 400)), range(len(buf) - 50, len(buf))):
            with pytest.raises(FrameDecodeError):
                impl.PluginFrame.decode(buf[:cut])
            assert impl.PluginFrame.decode_prefix(buf[:cut]) is None, cut
            assert impl.PluginFrame.decode_prefix(bytearray(buf[:cut])) is None, cut


def test_prefix_mode_refuses_what_is_already_wrong(impl) -> None:
    # a frame that is wrong from its first bytes is refused at once, not waited for
    with pytest.raises(FrameDecodeError, match=r"^Expected a CBOR map .* at byte 0 - in plugin"):
        impl.PluginFrame.decode_prefix(b"\x01")
    with pytest.raises(FrameDecodeError, match=r"^Expected `frame_type` in 0\.\.255, got 256 "):
        impl.PluginFrame.decode_prefix(nyx(256)[:16])
    with pytest.raises(FrameDecodeError, match=r"^Expected a definite-length item"):
        impl.PluginFrame.decode_prefix(b"\xbf")


def test_size_limit_is_checked_before_decoding(impl) -> None:
    assert DEFAULT_MAX_FRAME_SIZE == 1024 * 1024 + 4096
    with pytest.raises(
        FrameTooLarge,
        match=r"^Expected a frame of at most 50 bytes, got 51 bytes - in frame; "
        r"raise max_size or send less$",
    ) as excinfo:
        impl.PluginFrame.decode(V, max_size=50)
    assert (excinfo.value.part, excinfo.value.size, excinfo.value.limit) == ("frame", 51, 50)
    assert impl.PluginFrame.decode(V, max_size=51).payload == b"abc"
    with pytest.raises(FrameTooLarge):
        impl.PluginFrame.decode(b"\xff" * (DEFAULT_MAX_FRAME_SIZE + 1))  # garbage, too long first
    big = impl.PluginFrame(0x52, impl.PluginHeader(1), bytes(DEFAULT_MAX_FRAME_SIZE - 60))
    assert impl.PluginFrame.decode(big.encode()) == big


def test_prefix_mode_bounds_the_frame_not_the_buffer(impl) -> None:
    many = V * 1000  # far more than max_size: each frame still fits
    assert impl.PluginFrame.decode_prefix(many, max_size=60)[1] == 51
    assert impl.PluginFrame.decode_prefix(memoryview(many)[51:], max_size=51)[1] == 51
    # a frame that needs more than max_size: FrameTooLarge once max_size bytes are there
    assert impl.PluginFrame.decode_prefix(V[:40], max_size=50) is None
    for buf in (V[:50], V, V + V):
        with pytest.raises(
            FrameTooLarge,
            match=r"^Expected a frame of at most 50 bytes, got 51 bytes - in frame; "
            r"raise max_size or send less$",
        ):
            impl.PluginFrame.decode_prefix(buf, max_size=50)
    huge = V[:-4] + b"\x5a\x7f\xff\xff\xff"  # a payload of 2 GiB declared
    with pytest.raises(FrameTooLarge, match=r"^Expected a frame of at most 60 bytes, got "):
        impl.PluginFrame.decode_prefix(huge + bytes(60), max_size=60)
    assert impl.PluginFrame.decode_prefix(huge) is None  # might still fit: read more


@pytest.mark.parametrize("method", ["decode", "decode_prefix"])
@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        (
            {"max_size": -1},
            ValueError,
            r"^Expected `max_size` in 0\.\.4611686018427387904, got -1$",
        ),
        ({"max_size": 1.0}, TypeError, r"^Expected `max_size` to be an int, got float$"),
        ({"buf": "text"}, TypeError, r"^Expected `buf` to be bytes-like, got str$"),
    ],
)
def test_bad_arguments_alike_in_both_twins(
    impl, method: str, kwargs: dict[str, Any], error: type, message: str
) -> None:
    args = {"buf": V, **kwargs}
    buf = args.pop("buf")
    with pytest.raises(error, match=message):
        getattr(impl.PluginFrame, method)(buf, **args)


# -- both twins, property tests ---------------------------------------------------------


@pytest.fixture(scope="module")
def both_impls() -> list[Any]:
    mods = available_impls()
    if len(mods) < 2:
        pytest.skip("compiled extension not built: nothing to compare the pure decoder with")
    return mods


valid_frames = st.builds(
    lambda ft, i, f, d, p: nyx(ft, {"id": i, "flags": f, "data": d}, p),
    frame_types, ids, flag_values, st.binary(max_size=30), st.binary(max_size=30),
)  # fmt: skip
hostile_bytes = st.one_of(
    st.binary(max_size=80),
    valid_frames.flatmap(nyx_st.mutations),
    st.sampled_from([buf for buf, _ in HOSTILE.values()]).flatmap(nyx_st.mutations),
)


@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
@given(buf=hostile_bytes, max_size=st.sampled_from([DEFAULT_MAX_FRAME_SIZE, 60, 40, 8]))
def test_both_twins_decode_identically(both_impls: list[Any], buf: bytes, max_size: int) -> None:
    outcomes = [fuzz_frames.check(mod, buf, max_size) for mod in both_impls]
    assert all(result[0] != "UNTYPED" for results in outcomes for result in results), outcomes
    assert outcomes[0] == outcomes[1]
    ok = outcomes[0][0]
    if ok[0] == "ok":  # what the strict decoder accepts, cbor2 reads to the same fields
        item = cbor2.loads(buf)
        frame = both_impls[0].PluginFrame.decode(buf)
        assert item["frame_type"] == frame.frame_type and item["payload"] == frame.payload
        assert item["header"]["id"] == frame.header.id


def test_hostile_table_is_identical_in_both_twins(both_impls: list[Any]) -> None:
    for buf, _ in HOSTILE.values():
        outcomes = [fuzz_frames.check(mod, buf, DEFAULT_MAX_FRAME_SIZE) for mod in both_impls]
        assert outcomes[0] == outcomes[1]


def test_seeded_fuzz_run_finds_no_untyped_error(both_impls: list[Any]) -> None:
    """A small run of ``python -m benchmarks.fuzz_frames`` (the large one: 1,000,000)."""
    counts = fuzz_frames.run(20_000, seed=16, twins=["cython", "python"])
    assert counts["untyped"] == 0 and counts["mismatch"] == 0, counts
    assert counts["accepted"] > 500 and counts["refused"] > 10_000, counts
