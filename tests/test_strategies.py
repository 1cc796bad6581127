"""``nyxplug.testing.strategies``: valid draws decode on both twins, hostile ones are
refused with the typed errors only (SPEC 1 and 8)."""

from __future__ import annotations

from typing import Any

import cbor2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nyxplug import FrameError, FrameType, HeaderDecodeError
from nyxplug.testing import strategies as nyx_st


@settings(max_examples=150)
@given(buf=nyx_st.header_bytes())
def test_header_bytes_decode_to_what_cbor2_reads(impl: Any, buf: bytes) -> None:
    header = impl.PluginHeader.decode(buf)
    item = cbor2.loads(buf)
    fields = item if isinstance(item, list) else [item["id"], item["flags"], item["data"]]
    assert [header.id, header.flags, header.data] == fields


@settings(max_examples=100)
@given(buf=nyx_st.frame_bytes(max_payload=64))
def test_frame_bytes_decode(impl: Any, buf: bytes) -> None:
    frame = impl.PluginFrame.decode(buf)
    assert frame.frame_type in set(FrameType)
    assert impl.PluginFrame.decode(frame.encode()) == frame


@settings(max_examples=100)
@given(header=nyx_st.headers(ids=st.just(7)), frame=nyx_st.frames(max_payload=32))
def test_header_and_frame_objects_round_trip(impl: Any, header: Any, frame: Any) -> None:
    assert header.id == 7
    assert impl.PluginHeader.decode(header.encode()).encode() == header.encode()
    assert impl.PluginFrame.decode(frame.encode()).encode() == frame.encode()


@pytest.mark.parametrize("index", range(len(nyx_st.REFUSED_HEADERS)))
def test_every_refused_shape_is_refused(impl: Any, index: int) -> None:
    with pytest.raises(HeaderDecodeError):
        impl.PluginHeader.decode(nyx_st.REFUSED_HEADERS[index])


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(header=nyx_st.hostile_header_bytes(), frame=nyx_st.hostile_frame_bytes())
def test_hostile_bytes_meet_only_typed_refusals(impl: Any, header: bytes, frame: bytes) -> None:
    for decode, buf in ((impl.PluginHeader.decode, header), (impl.PluginFrame.decode, frame)):
        try:
            decode(buf)
        except FrameError:  # HeaderDecodeError, FrameDecodeError, FrameTooLarge
            pass
