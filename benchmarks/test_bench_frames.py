"""Whole frames and stream framing (SPEC 8): the codec against cbor2, and the reader.

Rows, compiled and pure side by side (``--benchmark-group-by=group``); each round
handles ``FRAMES`` frames with 64-byte payloads, so ns/frame = mean / ``FRAMES``:

* ``encode`` - ``PluginFrame.encode`` vs ``cbor2.dumps`` of the same dict;
* ``decode`` - ``PluginFrame.decode`` (strict, builds the frame and its header) vs
  ``cbor2.loads`` (builds dicts, checks nothing);
* ``reader`` - ``FrameReader.feed`` over a length-prefixed stream in 64 KiB chunks, and
  ``reader+decode``: the same, each message decoded to a ``PluginFrame`` (what an
  interop listener does per frame).
"""

from __future__ import annotations

from typing import Any

import cbor2
import pytest

from benchmarks._corpus import header_fields
from nyxplug import FrameReader, frame_message

FRAMES = 1024
CHUNK = 64 * 1024
PAYLOAD = bytes(range(64))


def _dicts() -> list[dict[str, Any]]:
    return [
        {"frame_type": 0x52, "header": {"id": i, "flags": f, "data": d}, "payload": PAYLOAD}
        for i, f, d in header_fields((7, 300, 70000), FRAMES)
    ]


def _frames(impl: Any) -> list[Any]:
    return [
        impl.PluginFrame(d["frame_type"], impl.PluginHeader(**d["header"]), d["payload"])
        for d in _dicts()
    ]


def _stream() -> tuple[bytes, list[bytes]]:
    encoded = [cbor2.dumps(d) for d in _dicts()]
    stream = b"".join(frame_message(e) for e in encoded)
    return stream, [stream[i : i + CHUNK] for i in range(0, len(stream), CHUNK)]


@pytest.mark.benchmark(group="frame encode")
def test_frame_encode(benchmark: Any, impl: Any) -> None:
    frames = _frames(impl)
    out = benchmark(lambda: [f.encode() for f in frames])
    assert out == [cbor2.dumps(d) for d in _dicts()]


@pytest.mark.benchmark(group="frame encode")
def test_frame_encode_cbor2_dumps(benchmark: Any) -> None:
    dicts = _dicts()
    benchmark(lambda: [cbor2.dumps(d) for d in dicts])


@pytest.mark.benchmark(group="frame decode")
def test_frame_decode(benchmark: Any, impl: Any) -> None:
    encoded = [cbor2.dumps(d) for d in _dicts()]
    decode = impl.PluginFrame.decode
    out = benchmark(lambda: [decode(e) for e in encoded])
    assert out == _frames(impl)


@pytest.mark.benchmark(group="frame decode")
def test_frame_decode_cbor2_loads(benchmark: Any) -> None:
    encoded = [cbor2.dumps(d) for d in _dicts()]
    benchmark(lambda: [cbor2.loads(e) for e in encoded])


@pytest.mark.benchmark(group="stream reader")
def test_reader_64_byte_payloads(benchmark: Any) -> None:
    stream, chunks = _stream()

    def read() -> int:
        reader = FrameReader()
        return sum(len(reader.feed(chunk)) for chunk in chunks)

    assert benchmark(read) == FRAMES


@pytest.mark.benchmark(group="stream reader")
def test_reader_and_decode_64_byte_payloads(benchmark: Any, impl: Any) -> None:
    stream, chunks = _stream()
    decode = impl.PluginFrame.decode

    def read() -> int:
        reader = FrameReader()
        return sum(len([decode(m) for m in reader.feed(chunk)]) for chunk in chunks)

    assert benchmark(read) == FRAMES
