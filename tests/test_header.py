"""SPEC 1: the plugin header codec, on valid and on hostile input, in both twins.

The encoder must be byte-for-byte cbor2; the decoder must accept exactly what SPEC 1
accepts and refuse everything else with ``HeaderDecodeError`` (``FrameTooLarge`` for
input over ``max_size``, before decoding) - never with any other exception, and with
the same message from both twins.
"""

from __future__ import annotations

import itertools
from typing import Any

import cbor2
import pytest
from conftest import available_impls
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from nyx_helpers import DATA, info

from nyxplug import FrameTooLarge, HeaderDecodeError
from nyxplug.testing import strategies as nyx_st

V = cbor2.dumps({"id": 1, "flags": 0, "data": b"\x01\x02\x03\x04"})  # the SPEC example
MAP_HEAD = b"\xa3\x62id\x01\x65flags\x00\x64data"

ids = st.integers(0, 2**32 - 1)
flags = st.integers(0, 255)
datas = st.binary(max_size=300)


# -- encoding ------------------------------------------------------------------------


def test_spec_example_is_22_bytes(impl) -> None:
    header = impl.PluginHeader(1, 0, bytes([1, 2, 3, 4]))
    expected = bytes.fromhex("a3 62 6964 01 65 666c616773 00 64 64617461 44 01020304")
    assert header.encode() == expected == V
    assert len(expected) == 22
    assert impl.PluginHeader.decode(expected) == header


@settings(max_examples=300)
@given(id_=ids, flags_=flags, data=datas)
@example(id_=0, flags_=0, data=b"")
@example(id_=23, flags_=23, data=bytes(23))
@example(id_=24, flags_=24, data=bytes(24))
@example(id_=255, flags_=255, data=bytes(255))
@example(id_=256, flags_=1, data=bytes(256))
@example(id_=65535, flags_=0, data=b"")
@example(id_=65536, flags_=0, data=b"")
@example(id_=2**32 - 1, flags_=255, data=b"\xff")
def test_encode_is_cbor2_and_decode_round_trips(impl, id_: int, flags_: int, data: bytes) -> None:
    header = impl.PluginHeader(id_, flags_, data)
    encoded = header.encode()
    assert encoded == cbor2.dumps({"id": id_, "flags": flags_, "data": data})
    decoded = impl.PluginHeader.decode(encoded)
    assert decoded == header
    assert (decoded.id, decoded.flags, decoded.data) == (id_, flags_, data)
    assert decoded.is_required == bool(flags_ & 1) == header.is_required
    assert hash(decoded) == hash(header)
    assert impl.PluginHeader.decode(bytearray(encoded)) == header
    assert impl.PluginHeader.decode(memoryview(encoded)) == header


def test_header_constructors_validate(impl) -> None:
    assert impl.PluginHeader.required(5, b"x") == impl.PluginHeader(5, 1, b"x")
    assert impl.PluginHeader.optional(5) == impl.PluginHeader(5, 0, b"")
    assert impl.PluginHeader(5, 0, bytearray(b"ab")).data == b"ab"
    for bad_id in (-1, 2**32):
        with pytest.raises(ValueError):
            impl.PluginHeader(bad_id)
    for bad_flags in (-1, 256):
        with pytest.raises(ValueError):
            impl.PluginHeader(1, bad_flags)
    with pytest.raises(TypeError):
        impl.PluginHeader("1")
    with pytest.raises(TypeError):
        impl.PluginHeader(1, 0, "text")


# -- accepted shapes -----------------------------------------------------------------


@pytest.mark.parametrize("order", list(itertools.permutations(["id", "flags", "data"])))
def test_decode_accepts_keys_in_any_order(impl, order: tuple[str, ...]) -> None:
    fields = {"id": 70000, "flags": 3, "data": b"xyz"}
    buf = cbor2.dumps({key: fields[key] for key in order})
    assert impl.PluginHeader.decode(buf) == impl.PluginHeader(70000, 3, b"xyz")


def test_decode_accepts_the_array_form(impl) -> None:
    assert impl.PluginHeader.decode(cbor2.dumps([9, 1, b"d"])) == impl.PluginHeader(9, 1, b"d")
    assert impl.PluginHeader.decode(cbor2.dumps([0, 0, b""])) == impl.PluginHeader(0)


def test_decode_ignores_unknown_keys_with_scalar_values(impl) -> None:
    extras = {
        "n": 5, "neg": -7, "big": 2**64 - 1, "t": "text", "b": b"bytes", "none": None,
        "yes": True, "no": False, "f": 1.5, "e": "", "uni": "\u00e9\u4e2d",
    }  # fmt: skip
    for key, value in extras.items():
        buf = cbor2.dumps({"id": 1, key: value, "flags": 0, "data": b"x"})
        assert impl.PluginHeader.decode(buf) == impl.PluginHeader(1, 0, b"x"), key
    everything = {"id": 1, "flags": 0, "data": b"x", **extras}
    assert impl.PluginHeader.decode(cbor2.dumps(everything)) == impl.PluginHeader(1, 0, b"x")
    # keys that are not the three field names, of any scalar type, are skipped too
    assert impl.PluginHeader.decode(
        b"\xa5\x62id\x01\x01\x02\x42id\x03\x65flags\x00\x64data\x40"
    ) == impl.PluginHeader(1)
    # half, single and double floats and simple values as unknown values
    for value in (b"\xf9\x3c\x00", b"\xfa\x3f\x80\x00\x00", b"\xfb" + bytes(8), b"\xf7",
                  b"\xf8\x20", b"\xf8\xff"):  # fmt: skip
        assert impl.PluginHeader.decode(b"\xa4\x61x" + value + V[1:]) == impl.PluginHeader(
            1, 0, b"\x01\x02\x03\x04"
        )


def test_decode_accepts_non_shortest_integers(impl) -> None:
    # not canonical, still well-formed CBOR: accepted, and sized as received
    buf = b"\xa3\x62id\x1a\x00\x00\x00\x07\x65flags\x18\x01\x64data\x59\x00\x01z"
    assert impl.PluginHeader.decode(buf) == impl.PluginHeader(7, 1, b"z")


# -- refused input, with the message each one gets ----------------------------------

TOP = "a CBOR map {id, flags, data} or array [id, flags, data]"
ID_TYPE = "`id` as an unsigned integer in 0..4294967295"
HOSTILE: dict[str, tuple[bytes, str]] = {
    "empty": (b"", f"Expected {TOP}, got empty input at byte 0"),
    "uint": (b"\x01", f"Expected {TOP}, got an unsigned integer at byte 0"),
    "negint": (b"\x20", f"Expected {TOP}, got a negative integer at byte 0"),
    "text": (b"\x61a", f"Expected {TOP}, got a text string at byte 0"),
    "bytes": (b"\x41a", f"Expected {TOP}, got a byte string at byte 0"),
    "float": (b"\xf9\x3c\x00", f"Expected {TOP}, got a simple value or float at byte 0"),
    "stray break": (b"\xff", "Expected a CBOR item, got a stray break byte 0xff at byte 0"),
    "reserved info": (
        b"\x1c",
        "Expected well-formed CBOR, got reserved additional information 28 in byte 0x1c at byte 0",
    ),
    "reserved info in map": (
        b"\xa3\x62id\x1d",
        "Expected well-formed CBOR, got reserved additional information 29 in byte 0x1d at byte 4",
    ),
    "tag around": (
        b"\xd8\x18" + V,
        "Expected no CBOR tags, got tag 24 around the header at byte 0",
    ),
    "self-describe tag": (
        b"\xd9\xd9\xf7" + V,
        "Expected no CBOR tags, got tag 55799 around the header at byte 0",
    ),  # fmt: skip
    "tag on id": (
        cbor2.dumps({"id": cbor2.CBORTag(2, b"\x01"), "flags": 0, "data": b""}),
        "Expected no CBOR tags, got tag 2 as value of key 'id' at byte 4",
    ),
    "bignum id": (
        cbor2.dumps({"id": 2**70, "flags": 0, "data": b""}),
        "Expected no CBOR tags, got tag 2 as value of key 'id' at byte 4",
    ),
    "tag on data": (
        MAP_HEAD + b"\xc0\x40",
        "Expected no CBOR tags, got tag 0 as value of key 'data' at byte 17",
    ),
    "tag on key": (
        b"\xa3\xc0\x62id\x01\x65flags\x00\x64data\x40",
        "Expected no CBOR tags, got tag 0 as a map key at byte 1",
    ),
    "tag on unknown value": (
        b"\xa4" + V[1:] + b"\x61x\xc1\x01",
        "Expected no CBOR tags, got tag 1 as value of key 'x' at byte 24",
    ),
    "tag in array": (
        b"\x83\x01\x00\xd8\x40\x40",
        "Expected no CBOR tags, got tag 64 as item 2 of the header array at byte 3",
    ),
    "indefinite map": (
        b"\xbf" + V[1:] + b"\xff",
        "Expected a definite-length item, got an indefinite-length map at byte 0",
    ),
    "indefinite array": (
        b"\x9f\x01\x00\x40\xff",
        "Expected a definite-length item, got an indefinite-length array at byte 0",
    ),
    "indefinite data": (
        MAP_HEAD + b"\x5f\x41\x01\xff",
        "Expected a definite-length item, got an indefinite-length byte string at byte 17",
    ),
    "indefinite key": (
        b"\xa3\x7f\x62id\xff\x01\x65flags\x00\x64data\x40",
        "Expected a definite-length item, got an indefinite-length text string at byte 1",
    ),
    "indefinite unknown value": (
        b"\xa4\x61x\x5f\xff" + V[1:],
        "Expected a definite-length item, got an indefinite-length byte string at byte 3",
    ),
    "id text": (
        cbor2.dumps({"id": "1", "flags": 0, "data": b""}),
        f"Expected {ID_TYPE}, got a text string at byte 4",
    ),
    "id float": (
        cbor2.dumps({"id": 1.0, "flags": 0, "data": b""}),
        f"Expected {ID_TYPE}, got a simple value or float at byte 4",
    ),
    "id bool": (
        cbor2.dumps({"id": True, "flags": 0, "data": b""}),
        f"Expected {ID_TYPE}, got a simple value or float at byte 4",
    ),
    "id null": (
        cbor2.dumps({"id": None, "flags": 0, "data": b""}),
        f"Expected {ID_TYPE}, got a simple value or float at byte 4",
    ),
    "id array item text": (
        cbor2.dumps(["1", 0, b""]),
        f"Expected {ID_TYPE}, got a text string at byte 1",
    ),
    "flags bytes": (
        cbor2.dumps({"id": 1, "flags": b"\x00", "data": b""}),
        "Expected `flags` as an unsigned integer in 0..255, got a byte string at byte 11",
    ),
    "data text": (
        cbor2.dumps({"id": 1, "flags": 0, "data": "abc"}),
        "Expected `data` as a byte string, got a text string at byte 17",
    ),
    "data int": (
        cbor2.dumps({"id": 1, "flags": 0, "data": 5}),
        "Expected `data` as a byte string, got an unsigned integer at byte 17",
    ),
    "data array": (
        cbor2.dumps({"id": 1, "flags": 0, "data": [1]}),
        "Expected a scalar, text or byte string as value of key 'data', got an array (nested "
        "containers are not allowed) at byte 17",
    ),
    "id negative": (
        cbor2.dumps({"id": -1, "flags": 0, "data": b""}),
        "Expected `id` in 0..4294967295, got -1 at byte 4",
    ),
    "id 2**32": (
        cbor2.dumps({"id": 2**32, "flags": 0, "data": b""}),
        "Expected `id` in 0..4294967295, got 4294967296 at byte 4",
    ),
    "id 2**64-1": (
        cbor2.dumps({"id": 2**64 - 1, "flags": 0, "data": b""}),
        "Expected `id` in 0..4294967295, got 18446744073709551615 at byte 4",
    ),
    "id -2**64": (
        b"\xa3\x62id\x3b" + b"\xff" * 8 + b"\x65flags\x00\x64data\x40",
        "Expected `id` in 0..4294967295, got -18446744073709551616 at byte 4",
    ),
    "flags 256": (
        cbor2.dumps({"id": 1, "flags": 256, "data": b""}),
        "Expected `flags` in 0..255, got 256 at byte 11",
    ),
    "flags -1": (
        cbor2.dumps({"id": 1, "flags": -1, "data": b""}),
        "Expected `flags` in 0..255, got -1 at byte 11",
    ),
    "array flags 2**32": (
        cbor2.dumps([1, 2**32, b""]),
        "Expected `flags` in 0..255, got 4294967296 at byte 2",
    ),
    "one trailing byte": (
        V + b"\x00",
        "Expected the end of the header after one CBOR item, got 1 trailing bytes at byte 22",
    ),
    "two headers": (
        V + V,
        "Expected the end of the header after one CBOR item, got 22 trailing bytes at byte 22",
    ),
    "trailing after array": (
        cbor2.dumps([1, 0, b""]) + b"\xff",
        "Expected the end of the header after one CBOR item, got 1 trailing bytes at byte 4",
    ),
    "duplicate id": (
        b"\xa4\x62id\x01\x62id\x02\x65flags\x00\x64data\x40",
        "Expected key `id` once, got a duplicate at byte 5",
    ),
    "duplicate flags": (
        b"\xa4\x65flags\x00" + V[1:],
        "Expected key `flags` once, got a duplicate at byte 12",
    ),
    "duplicate data": (
        b"\xa4\x62id\x01\x64data\x40\x65flags\x00\x64data\x40",
        "Expected key `data` once, got a duplicate at byte 18",
    ),
    "unknown key with array": (
        cbor2.dumps({"id": 1, "flags": 0, "data": b"", "x": [1]}),
        "Expected a scalar, text or byte string as value of key 'x', got an array (nested "
        "containers are not allowed) at byte 20",
    ),
    "unknown key with map": (
        cbor2.dumps({"id": 1, "x": {}, "flags": 0, "data": b""}),
        "Expected a scalar, text or byte string as value of key 'x', got a map (nested "
        "containers are not allowed) at byte 7",
    ),
    "array key": (
        b"\xa4\x81\x01\x01" + V[1:],
        "Expected a scalar, text or byte string as a map key, got an array (nested containers "
        "are not allowed) at byte 1",
    ),
    "invalid utf-8 key": (
        b"\xa4\x62\xff\xfe\x01" + V[1:],
        "Expected UTF-8 text, got invalid UTF-8 in a text string at byte 1",
    ),
    "invalid utf-8 unknown value": (
        b"\xa4\x61x\x61\x80" + V[1:],
        "Expected UTF-8 text, got invalid UTF-8 in a text string at byte 3",
    ),
    "two-byte simple below 32": (
        b"\xa4" + V[1:] + b"\x61x\xf8\x10",
        "Expected well-formed CBOR, got two-byte simple value 16 (must be >= 32) at byte 24",
    ),
    "missing data": (
        cbor2.dumps({"id": 1, "flags": 0}),
        "Expected key `data`, got a map without it at byte 0",
    ),
    "missing id": (
        cbor2.dumps({"flags": 0, "data": b""}),
        "Expected key `id`, got a map without it at byte 0",
    ),
    "empty map": (b"\xa0", "Expected key `id`, got a map without it at byte 0"),
    "field under another key type": (
        b"\xa3\x42id\x01\x65flags\x00\x64data\x40",
        "Expected key `id`, got a map without it at byte 0",
    ),
    "array of 2": (
        cbor2.dumps([1, 0]),
        "Expected an array of exactly 3 items [id, flags, data], got 2 items at byte 0",
    ),
    "array of 4": (
        cbor2.dumps([1, 0, b"", 0]),
        "Expected an array of exactly 3 items [id, flags, data], got 4 items at byte 0",
    ),
    "nested array item": (
        cbor2.dumps([[1], 0, b""]),
        "Expected a scalar, text or byte string as item 0 of the header array, got an array "
        "(nested containers are not allowed) at byte 1",
    ),
    "deep arrays": (
        b"\x81" * 4000 + b"\x00",
        "Expected an array of exactly 3 items [id, flags, data], got 1 items at byte 0",
    ),
    "deep triples": (
        b"\x83" * 4000,
        "Expected a scalar, text or byte string as item 0 of the header array, got an array "
        "(nested containers are not allowed) at byte 1",
    ),
    "deep maps": (
        b"\xa1\x61x" * 1300 + b"\x00",
        "Expected a scalar, text or byte string as value of key 'x', got a map (nested "
        "containers are not allowed) at byte 3",
    ),
    "data length 2**63": (
        MAP_HEAD + b"\x5b" + (2**63).to_bytes(8, "big"),
        "Expected 9223372036854775808 more bytes for a byte string, got 0 left (truncated "
        "header) at byte 26",
    ),
    "data length 2**64-1": (
        MAP_HEAD + b"\x5b" + b"\xff" * 8 + b"abc",
        "Expected 18446744073709551615 more bytes for a byte string, got 3 left (truncated "
        "header) at byte 26",
    ),
    "data length 2**32": (
        MAP_HEAD + b"\x5b" + (2**32).to_bytes(8, "big") + b"a",
        "Expected 4294967296 more bytes for a byte string, got 1 left (truncated header) at "
        "byte 26",
    ),
    "data length 2**31 in 4 bytes": (
        MAP_HEAD + b"\x5a\x80\x00\x00\x00",
        "Expected 2147483648 more bytes for a byte string, got 0 left (truncated header) at "
        "byte 22",
    ),
    "data one byte short": (
        MAP_HEAD + b"\x44\x01\x02\x03",
        "Expected 4 more bytes for a byte string, got 3 left (truncated header) at byte 18",
    ),
    "map of 2**64-1 entries": (
        b"\xbb" + b"\xff" * 8,
        "Expected 1 more bytes for an item head, got 0 left (truncated header) at byte 9",
    ),
    "map of 2**63 entries": (
        b"\xbb\x80" + bytes(7) + V[1:],
        "Expected 1 more bytes for an item head, got 0 left (truncated header) at byte 30",
    ),
    "array of 2**64-1 items": (
        b"\x9b" + b"\xff" * 8,
        "Expected an array of exactly 3 items [id, flags, data], got 18446744073709551615 "
        "items at byte 0",
    ),
    "key length 2**63-1": (
        b"\xa3\x7b\x7f" + b"\xff" * 7,
        "Expected 9223372036854775807 more bytes for a text string, got 0 left (truncated "
        "header) at byte 10",
    ),
    "truncated argument": (
        b"\xa3\x62id\x1a\x00\x01",
        "Expected 4 more bytes for the argument of an unsigned integer, got 2 left (truncated "
        "header) at byte 5",
    ),
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_header_is_refused_with_its_message(impl, name: str) -> None:
    buf, message = HOSTILE[name]
    with pytest.raises(HeaderDecodeError) as excinfo:
        impl.PluginHeader.decode(buf)
    assert str(excinfo.value) == message + " - in plugin header"
    err = excinfo.value
    assert err.frame_type is None and err.plugin_id is None
    assert isinstance(err, ValueError)


def test_every_truncation_of_a_valid_header_is_refused(impl) -> None:
    shapes = [
        V,
        impl.PluginHeader(2**32 - 1, 255, bytes(300)).encode(),
        cbor2.dumps([70000, 1, b"abc"]),
        cbor2.dumps({"x": "skip", "data": b"dd", "id": 5, "flags": 2, "f": 1.5}),
    ]
    for buf in shapes:
        impl.PluginHeader.decode(buf)
        for cut in range(len(buf)):
            with pytest.raises(HeaderDecodeError):
                impl.PluginHeader.decode(buf[:cut])


def test_size_limit_is_checked_before_decoding(impl) -> None:
    with pytest.raises(
        FrameTooLarge,
        match=r"^Expected a header of at most 21 bytes, got 22 bytes - in header; "
        r"raise max_header_size or send less$",
    ) as excinfo:
        impl.PluginHeader.decode(V, max_size=21)
    assert (excinfo.value.part, excinfo.value.size, excinfo.value.limit) == ("header", 22, 21)
    assert impl.PluginHeader.decode(V, max_size=22) == impl.PluginHeader(1, 0, b"\x01\x02\x03\x04")
    with pytest.raises(FrameTooLarge):
        impl.PluginHeader.decode(b"\xff" * 4097)  # garbage, but too long first
    with pytest.raises(FrameTooLarge):
        impl.PluginHeader.decode(b"\x81" * 10000 + b"\x00")
    # under a raised limit, deep nesting is refused without recursing
    with pytest.raises(HeaderDecodeError):
        impl.PluginHeader.decode(b"\x81" * 100000 + b"\x00", max_size=200000)
    with pytest.raises(HeaderDecodeError):
        impl.PluginHeader.decode(b"\x83" * 100000, max_size=200000)
    with pytest.raises(HeaderDecodeError):
        impl.PluginHeader.decode(b"\xa1\x61x" * 50000 + b"\x00", max_size=200000)


async def test_dispatcher_refuses_hostile_headers_and_keeps_serving(impl) -> None:
    d = impl.Dispatcher()
    await d.load_plugin(info(1))
    errors = 0
    for name, (buf, message) in HOSTILE.items():
        with pytest.raises(HeaderDecodeError) as excinfo:
            d.dispatch_nowait(DATA, buf, b"payload")
        assert str(excinfo.value) == message + " - in plugin header of frame 0x52 (DATA)", name
        assert excinfo.value.frame_type == DATA
        with pytest.raises(HeaderDecodeError):
            await d.dispatch(DATA, buf)
        errors += 2
    for cut in range(len(V)):
        assert d.try_dispatch(DATA, V[:cut]) == 7  # HEADER_DECODE_ERROR
        errors += 1
    with pytest.raises(
        FrameTooLarge,
        match=r"^Expected a header of at most 4096 bytes, got 10001 bytes - in header of frame "
        r"0x52 \(DATA\); raise max_header_size or send less$",
    ):
        d.dispatch_nowait(DATA, b"\x81" * 10000 + b"\x00")
    errors += 1
    await d.dispatch(DATA, V)
    d.dispatch_nowait(DATA, V)
    await d.wait_idle(1)
    ds = d.dispatch_stats()
    assert (ds.frames_dispatched, ds.dispatch_errors) == (2, errors)
    assert d.plugin_stats(1).messages_processed == 2
    await d.aclose()


# -- property tests --------------------------------------------------------------------


def check_outcome(impl: Any, buf: bytes, max_size: int = 4096) -> tuple[Any, ...]:
    """Decode; only a valid header, HeaderDecodeError or FrameTooLarge may come out."""
    try:
        header = impl.PluginHeader.decode(buf, max_size=max_size)
    except FrameTooLarge as exc:
        assert len(buf) > max_size
        return ("FrameTooLarge", str(exc))
    except HeaderDecodeError as exc:
        assert len(buf) <= max_size
        assert exc.offset is None or 0 <= exc.offset <= len(buf)
        return ("HeaderDecodeError", str(exc))
    assert len(buf) <= max_size
    assert 0 <= header.id <= 2**32 - 1 and 0 <= header.flags <= 255
    assert isinstance(header.data, bytes)
    # what the strict decoder accepts is CBOR that cbor2 reads to the same fields
    item = cbor2.loads(buf)
    if isinstance(item, list):
        assert item == [header.id, header.flags, header.data]
    else:
        assert (item["id"], item["flags"], item["data"]) == (header.id, header.flags, header.data)
    return ("ok", header.id, header.flags, header.data)


# Every shape the decoder accepts: map keys in any order, extra scalar keys, the array.
valid_shapes = nyx_st.header_bytes(max_data=300)
hostile_bytes = st.one_of(
    st.binary(max_size=64),
    valid_shapes.flatmap(nyx_st.mutations),
    st.sampled_from([buf for buf, _ in HOSTILE.values()]).flatmap(nyx_st.mutations),
)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(buf=hostile_bytes, max_size=st.sampled_from([4096, 4096, 24, 8]))
def test_decode_never_raises_anything_else(impl, buf: bytes, max_size: int) -> None:
    check_outcome(impl, buf, max_size)


@settings(max_examples=100)
@given(buf=valid_shapes)
def test_decode_accepts_every_valid_shape(impl, buf: bytes) -> None:
    assert check_outcome(impl, buf)[0] == "ok"


@pytest.fixture(scope="module")
def both_impls() -> list[Any]:
    mods = available_impls()
    if len(mods) < 2:
        pytest.skip("compiled extension not built: nothing to compare the pure decoder with")
    return mods


@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
@given(buf=hostile_bytes, max_size=st.sampled_from([4096, 30]))
def test_both_twins_decode_identically(both_impls: list[Any], buf: bytes, max_size: int) -> None:
    outcomes = [check_outcome(mod, buf, max_size) for mod in both_impls]
    assert outcomes[0] == outcomes[1]
    # and through the dispatcher, with the frame type in the message
    results = []
    for mod in both_impls:
        d = mod.Dispatcher(max_header_size=max_size)
        try:
            d.dispatch_nowait(DATA, buf)
        except Exception as exc:  # noqa: BLE001 - the type and text are compared
            results.append((type(exc), str(exc), d.dispatch_stats()))
        else:  # pragma: no cover - no plugin is loaded, so a valid header is not routed
            results.append(("ok", d.dispatch_stats()))
    assert results[0] == results[1]


def test_hostile_table_is_identical_in_both_twins(both_impls: list[Any]) -> None:
    for buf, _ in HOSTILE.values():
        assert check_outcome(both_impls[0], buf) == check_outcome(both_impls[1], buf)


@pytest.mark.parametrize(
    ("max_size", "error", "message"),
    [
        (-1, ValueError, r"^Expected `max_size` in 0\.\.4611686018427387904, got -1$"),
        (2**70, ValueError, r"^Expected `max_size` in 0\.\.4611686018427387904, got \d+$"),
        (4096.0, TypeError, r"^Expected `max_size` to be an int, got float$"),
    ],
)
def test_decode_refuses_a_bad_max_size_alike_in_both_twins(
    impl: Any, max_size: Any, error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        impl.PluginHeader.decode(impl.PluginHeader(1).encode(), max_size=max_size)
