"""Hypothesis strategies for Nyx frames: valid headers and frames, and hostile bytes.

``header_bytes()`` and ``frame_bytes()`` draw only encodings the strict decoders accept
(SPEC 1 and 8: a map with its keys in any order, the ``[id, flags, data]`` array, extra
scalar keys); ``hostile_header_bytes()`` / ``hostile_frame_bytes()`` draw near misses of
them and of the refused shapes (tags, indefinite lengths, nested containers, trailing
bytes, truncations, oversize lengths) - what a fuzzing peer sends. ``mutations(base)``
is the byte-editing strategy both build on.

    from hypothesis import given
    from nyxplug.testing import strategies as nyx_st

    @given(payload=nyx_st.payloads())
    def test_never_raises(nyx_host, payload): ...
"""

from __future__ import annotations

from typing import Any

import cbor2
from hypothesis import strategies as st

from .._constants import FrameType

__all__ = (
    "flags",
    "frame_bytes",
    "frame_types",
    "frames",
    "header_bytes",
    "headers",
    "hostile_frame_bytes",
    "hostile_header_bytes",
    "mutations",
    "payloads",
    "plugin_ids",
)

#: Encodings every strict decoder must refuse, one per refusal rule of SPEC 1.
REFUSED_HEADERS = (
    b"\xc1" + cbor2.dumps({"id": 1, "flags": 0, "data": b""}),  # a tag
    b"\xbf\x62id\x01\x65flags\x00\x64data\x40\xff",  # an indefinite-length map
    b"\xa3\x62id\x01\x65flags\x00\x64data\x5f\x41a\xff",  # an indefinite byte string
    cbor2.dumps({"id": 1, "flags": 0, "data": b""}) + b"\x00",  # trailing bytes
    cbor2.dumps({"id": [1], "flags": 0, "data": b""}),  # a nested container
    cbor2.dumps({"id": 2**32, "flags": 0, "data": b""}),  # id out of range
    cbor2.dumps({"id": 1, "flags": 256, "data": b""}),  # flags out of range
    cbor2.dumps({"id": 1, "flags": 0}),  # a missing key
    cbor2.dumps({"id": 1, "flags": 0, "data": "text"}),  # data not bytes
    cbor2.dumps([1, 0, b"", 0]),  # an array of 4
    b"\xa3\x62id\x01\x65flags\x00\x64data\x5b" + b"\xff" * 8,  # a length past the end
    b"\x81" * 64 + b"\x00",  # deep nesting
)


def plugin_ids() -> st.SearchStrategy[int]:
    """Plugin ids as headers carry them: ``0..2**32-1``."""
    return st.integers(0, 2**32 - 1)


def flags() -> st.SearchStrategy[int]:
    """Header flags: ``0..255`` (bit 0 is "required")."""
    return st.integers(0, 255)


def payloads(*, max_size: int = 1024) -> st.SearchStrategy[bytes]:
    """Frame payloads: any bytes up to ``max_size``."""
    return st.binary(max_size=max_size)


def frame_types(*, plugin_range: bool = False) -> st.SearchStrategy[int]:
    """The four Nyx frame types; with ``plugin_range`` any of ``0x50..0x5F``."""
    if plugin_range:
        return st.integers(0x50, 0x5F)
    return st.sampled_from([int(t) for t in FrameType])


def headers(
    ids: st.SearchStrategy[int] | None = None, *, max_data: int = 64
) -> st.SearchStrategy[Any]:
    """``PluginHeader`` objects (of the active dispatcher); ``ids`` fixes the plugin ids."""
    from .._impl import PluginHeader

    return st.builds(
        PluginHeader,
        ids if ids is not None else plugin_ids(),
        flags(),
        st.binary(max_size=max_data),
    )


_extra_values = st.one_of(
    st.integers(-(2**64), 2**64 - 1), st.text(max_size=4), st.binary(max_size=4),
    st.none(), st.booleans(), st.floats(allow_nan=False),
)  # fmt: skip


def header_bytes(
    ids: st.SearchStrategy[int] | None = None, *, max_data: int = 64
) -> st.SearchStrategy[bytes]:
    """Valid encoded headers in every shape the decoder accepts (SPEC 1)."""
    ids = ids if ids is not None else plugin_ids()
    data = st.binary(max_size=max_data)

    def as_map(i: int, f: int, d: bytes, extra: dict[str, Any], order: list[str]) -> bytes:
        fields = {"id": i, "flags": f, "data": d}
        return cbor2.dumps({**{key: fields[key] for key in order}, **extra})

    extra_keys = st.text(max_size=4).filter(lambda k: k not in ("id", "flags", "data"))
    return st.one_of(
        st.builds(
            as_map, ids, flags(), data, st.dictionaries(extra_keys, _extra_values, max_size=3),
            st.permutations(["id", "flags", "data"]),
        ),
        st.builds(lambda i, f, d: cbor2.dumps([i, f, d]), ids, flags(), data),
    )  # fmt: skip


def frames(
    ids: st.SearchStrategy[int] | None = None,
    *,
    types: st.SearchStrategy[int] | None = None,
    max_payload: int = 1024,
) -> st.SearchStrategy[Any]:
    """Whole ``PluginFrame`` objects (SPEC 8) of the active dispatcher."""
    from .._impl import PluginFrame

    return st.builds(
        PluginFrame,
        types if types is not None else frame_types(),
        headers(ids),
        payloads(max_size=max_payload),
    )


def frame_bytes(
    ids: st.SearchStrategy[int] | None = None, *, max_payload: int = 1024
) -> st.SearchStrategy[bytes]:
    """Valid encoded frames, the outer map's keys in any order (SPEC 8)."""
    ids = ids if ids is not None else plugin_ids()

    def encode(t: int, i: int, f: int, d: bytes, p: bytes, order: list[str]) -> bytes:
        fields = {"frame_type": t, "header": {"id": i, "flags": f, "data": d}, "payload": p}
        return cbor2.dumps({key: fields[key] for key in order})

    return st.builds(
        encode, frame_types(), ids, flags(), st.binary(max_size=64),
        payloads(max_size=max_payload), st.permutations(["frame_type", "header", "payload"]),
    )  # fmt: skip


def mutations(base: bytes) -> st.SearchStrategy[bytes]:
    """``base`` with one to four random edits: flipped, set, inserted, deleted,
    truncated or appended bytes - near misses of a valid encoding."""

    @st.composite
    def mutate(draw: Any) -> bytes:
        buf = bytearray(base)
        for _ in range(draw(st.integers(1, 4))):
            op = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate", "append"]))
            pos = draw(st.integers(0, max(len(buf) - 1, 0)))
            if op == "flip" and buf:
                buf[pos] ^= 1 << draw(st.integers(0, 7))
            elif op == "set" and buf:
                buf[pos] = draw(st.integers(0, 255))
            elif op == "insert":
                buf[pos:pos] = draw(st.binary(min_size=1, max_size=9))
            elif op == "delete" and buf:
                del buf[pos : pos + draw(st.integers(1, 3))]
            elif op == "truncate":
                del buf[pos:]
            elif op == "append":
                buf += draw(st.binary(min_size=1, max_size=9))
        return bytes(buf)

    return mutate()


def hostile_header_bytes() -> st.SearchStrategy[bytes]:
    """Bytes a hostile peer sends as a header: noise, near misses of valid headers, and
    every refused shape (and near misses of those). Some happen to be valid."""
    return st.one_of(
        st.binary(max_size=64),
        header_bytes().flatmap(mutations),
        st.sampled_from(REFUSED_HEADERS),
        st.sampled_from(REFUSED_HEADERS).flatmap(mutations),
    )


def hostile_frame_bytes() -> st.SearchStrategy[bytes]:
    """Hostile whole frames: noise and near misses of valid frames."""
    return st.one_of(
        st.binary(max_size=80),
        frame_bytes(max_payload=30).flatmap(mutations),
    )
