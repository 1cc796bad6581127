"""SPEC 8 "Stream framing": a 4-byte big-endian length N, then N bytes, per message.

``FrameReader`` must return exactly the messages sent however the stream is split,
hold at most one message of the largest size plus its prefix whatever the peer sends,
and end the stream at the first bad length (0, or above ``max_size``) with an error it
repeats for every later call.
"""

from __future__ import annotations

import os
import pickle
import random
import re
import subprocess
import sys

import pytest
from conftest import ROOT

from nyxplug import (
    DEFAULT_MAX_FRAME_SIZE,
    FrameError,
    FrameReader,
    FrameTooLarge,
    FramingError,
    PluginFrame,
    PluginHeader,
    frame_message,
)

MESSAGES = [b"a", b"hello", bytes(range(256)), b"\x00\x00\x00\x00", b"x" * 1000]
STREAM = b"".join(frame_message(m) for m in MESSAGES)


def test_frame_message_is_a_big_endian_length_prefix() -> None:
    assert frame_message(b"abc") == b"\x00\x00\x00\x03abc"
    assert frame_message(bytearray(b"x" * 256))[:4] == b"\x00\x00\x01\x00"
    with pytest.raises(
        ValueError, match=r"^Expected a message of 1\.\.4294967295 bytes, got 0 bytes$"
    ):
        frame_message(b"")


def test_whole_stream_in_one_chunk() -> None:
    reader = FrameReader()
    assert reader.feed(STREAM) == MESSAGES
    assert all(type(m) is bytes for m in reader.feed(STREAM))
    assert (reader.buffered, reader.offset, reader.error) == (0, 2 * len(STREAM), None)
    reader.close()


def test_split_at_every_byte_boundary() -> None:
    for cut in range(len(STREAM) + 1):
        reader = FrameReader()
        got = reader.feed(STREAM[:cut]) + reader.feed(memoryview(STREAM)[cut:])
        assert got == MESSAGES, cut
        reader.close()
    for cut_a in range(0, 30):
        for cut_b in range(cut_a, 60):
            reader = FrameReader()
            got = []
            for chunk in (STREAM[:cut_a], STREAM[cut_a:cut_b], STREAM[cut_b:]):
                got += reader.feed(bytearray(chunk))
            assert got == MESSAGES, (cut_a, cut_b)


def test_byte_by_byte_and_random_chunks() -> None:
    reader = FrameReader()
    got = []
    for i in range(len(STREAM)):
        got += reader.feed(STREAM[i : i + 1])
        assert reader.buffered <= reader.max_size + 4
    assert got == MESSAGES
    rng = random.Random(8)
    for _ in range(50):
        reader, got, pos = FrameReader(), [], 0
        while pos < len(STREAM):
            step = rng.randrange(0, 300)
            got += reader.feed(STREAM[pos : pos + step])
            pos += step
        assert got == MESSAGES


def test_messages_carry_plugin_frames() -> None:
    frames = [PluginFrame(0x52, PluginHeader(i, 0, b"d"), bytes(64)) for i in range(10)]
    stream = b"".join(frame_message(f.encode()) for f in frames)
    reader = FrameReader()
    assert [PluginFrame.decode(m) for m in reader.feed(stream)] == frames


@pytest.mark.parametrize("size", [DEFAULT_MAX_FRAME_SIZE + 1, 2**32 - 1])
def test_a_length_above_the_limit_ends_the_stream(size: int) -> None:
    reader = FrameReader()
    prefix = size.to_bytes(4, "big")
    message = (
        rf"^Expected a message of at most {DEFAULT_MAX_FRAME_SIZE} bytes, got {size} bytes - "
        r"in message; raise max_size or send less$"
    )
    with pytest.raises(FrameTooLarge, match=message) as excinfo:
        reader.feed(prefix)
    assert (excinfo.value.part, excinfo.value.size) == ("message", size)
    assert isinstance(reader.error, FrameTooLarge) and reader.buffered == 0
    # sticky: every later call raises the same error, whatever it is given
    for data in (b"", frame_message(b"ok"), prefix):
        with pytest.raises(FrameTooLarge, match=message):
            reader.feed(data)
    with pytest.raises(FrameTooLarge, match=message):
        reader.close()


def test_the_limit_itself_is_accepted() -> None:
    reader = FrameReader(max_size=10)
    assert reader.feed(frame_message(bytes(10))) == [bytes(10)]
    with pytest.raises(FrameTooLarge, match=r"^Expected a message of at most 10 bytes, got 11 "):
        reader.feed(frame_message(bytes(11)))


def test_a_zero_length_ends_the_stream() -> None:
    reader = FrameReader()
    message = (
        rf"^Expected a message length in 1\.\.{DEFAULT_MAX_FRAME_SIZE}, got a length of 0 at "
        r"stream byte 6 - in a length-prefixed stream; nothing after it can be trusted, close "
        r"the connection$"
    )
    # messages before the bad prefix are delivered; the error comes with the next call
    assert reader.feed(frame_message(b"ok") + b"\x00\x00") == [b"ok"]
    assert reader.error is None
    with pytest.raises(FramingError, match=message):
        reader.feed(b"\x00\x00" + frame_message(b"never"))
    assert isinstance(reader.error, FramingError) and reader.error.offset == 6
    with pytest.raises(FramingError, match=message):
        reader.feed(frame_message(b"still refused"))
    # in one chunk: the good message comes back, the error is kept for the next call
    reader = FrameReader()
    assert reader.feed(frame_message(b"ok") + bytes(4) + frame_message(b"never")) == [b"ok"]
    assert isinstance(reader.error, FramingError)
    with pytest.raises(FramingError, match=message):
        reader.feed(b"")


def test_errors_are_frame_errors_and_fresh_each_time() -> None:
    reader = FrameReader()
    errors = []
    for _ in range(3):
        with pytest.raises(FrameError) as excinfo:
            reader.feed(bytes(4))
        errors.append(excinfo.value)
    assert errors[0] is not errors[1] and str(errors[0]) == str(errors[2])
    assert isinstance(errors[0], ValueError)
    copy = pickle.loads(pickle.dumps(errors[0]))
    assert type(copy) is FramingError and str(copy) == str(errors[0]) and copy.offset == 0


def test_a_flood_stays_bounded() -> None:
    """A peer announcing the largest message and sending it slowly, or sending megabytes
    of small messages in one chunk: the reader holds at most max_size + 4 bytes."""
    reader = FrameReader(max_size=1000)
    reader.feed((1000).to_bytes(4, "big"))
    for _ in range(999):
        assert reader.feed(b"x") == []
        assert reader.buffered <= 1004
    assert reader.feed(b"xyz") == [b"x" * 1000]
    assert reader.buffered == 2  # "yz": the start of the next prefix
    reader = FrameReader(max_size=1000)
    flood = frame_message(b"m" * 100) * 20_000  # 2 MB in one chunk
    assert len(reader.feed(flood[:-50])) == 19_999
    assert reader.buffered == 54  # the unfinished last message only
    assert reader.feed(flood[-50:]) == [b"m" * 100]
    assert reader.buffered == 0
    # garbage announcing a huge message is refused before anything is buffered
    reader = FrameReader(max_size=1000)
    with pytest.raises(FrameTooLarge):
        reader.feed(b"\xff" * 100_000)
    assert reader.buffered == 0


def test_close_reports_a_stream_cut_inside_a_message() -> None:
    reader = FrameReader()
    reader.feed(frame_message(b"hello")[:-2])
    with pytest.raises(
        FramingError,
        match=r"^Expected 5-byte message to end, got the end of the stream after 3 of its bytes at "
        r"stream byte 0 - in a length-prefixed stream",
    ):
        reader.close()
    reader = FrameReader()
    reader.feed(b"\x00\x00")
    with pytest.raises(
        FramingError,
        match=r"^Expected a 4-byte length prefix, got the end of the stream after 2 of its bytes",
    ):
        reader.close()
    reader = FrameReader()
    reader.feed(frame_message(b"x"))
    reader.close()  # ended on a boundary: quiet


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"max_size": -1}, ValueError, r"^Expected `max_size` in 0\.\.4294967295, got -1$"),
        (
            {"max_size": 2**32},
            ValueError,
            r"^Expected `max_size` in 0\.\.4294967295, got 4294967296$",
        ),
        ({"max_size": "1"}, TypeError, r"^Expected `max_size` to be an int, got str$"),
    ],
)
def test_reader_arguments_are_checked(kwargs: dict, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        FrameReader(**kwargs)


def test_feed_refuses_text() -> None:
    with pytest.raises(TypeError, match=r"^Expected `data` to be bytes-like, got str$"):
        FrameReader().feed("text")  # type: ignore[arg-type]


def test_repr_says_the_state() -> None:
    reader = FrameReader(max_size=100)
    reader.feed(b"\x00")
    assert repr(reader) == "<FrameReader max_size=100, 1 bytes buffered, offset 0>"
    with pytest.raises(FramingError):
        reader.feed(b"\x00\x00\x00")
    assert repr(reader) == "<FrameReader max_size=100, failed, offset 0>"


def test_readme_snippet_prints_what_the_readme_says(tmp_path) -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    found = re.search(
        r"### Whole frames and stream framing\n.*?```python\n(.*?)```"
        r"\n\nprints\n\n```text\n(.*?)```",
        readme,
        re.S,
    )
    assert found is not None
    script = tmp_path / "frames.py"
    script.write_text(found.group(1), encoding="utf-8")
    for pure in ("0", "1"):
        env = dict(os.environ, PYTHONPATH=str(ROOT), NYXPLUG_NO_EXTENSIONS=pure)
        if pure == "1":
            env.pop("NYXPLUG_REQUIRE_EXTENSIONS", None)
        result = subprocess.run(
            [sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=60
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout == found.group(2)
