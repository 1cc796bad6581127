"""The isolation wire: frame batches in both twins, and the strict reader of child messages."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nyxplug import _dispatch_py
from nyxplug.isolation import ProtocolViolation, wire
from nyxplug.isolation.wire import Kind

MAX_HEADER = 4096
MAX_PAYLOAD = 1 << 20

frames_strategy = st.lists(
    st.tuples(
        st.integers(0, 255),  # frame type
        st.integers(0, 0xFFFFFFFF),  # plugin id
        st.integers(0, 255),  # flags
        st.binary(max_size=40),  # header data
        st.binary(max_size=200),  # payload
    ),
    max_size=30,
)


def messages(impl: Any, frames: list[tuple[int, int, int, bytes, bytes]]) -> list[Any]:
    return [impl.PluginMessage(t, impl.PluginHeader(i, f, d), p) for t, i, f, d, p in frames]


def shape(msgs: list[Any]) -> list[tuple[Any, ...]]:
    return [(int(m.frame_type), m.header, m.payload, m.size) for m in msgs]


@settings(max_examples=150, deadline=None)
@given(frames=frames_strategy, seq=st.integers(0, 2**64 - 1))
def test_batches_round_trip_and_both_twins_write_the_same_bytes(
    impl: Any, frames: list[Any], seq: int
) -> None:
    msgs = messages(impl, frames)
    data = impl.encode_batch(Kind.FRAMES, seq, msgs)
    assert data == _dispatch_py.encode_batch(Kind.FRAMES, seq, messages(_dispatch_py, frames))
    assert int.from_bytes(data[:4], "little") == len(data) - 4
    assert data[4] == Kind.FRAMES
    got_seq, got = impl.decode_batch(data[5:], MAX_HEADER, MAX_PAYLOAD)
    assert got_seq == seq
    assert [(t, h.id, h.flags, h.data, p) for t, h, p, _ in shape(got)] == [
        (t, i, f, d, p) for t, i, f, d, p in frames
    ]


@settings(max_examples=200, deadline=None)
@given(body=st.binary(max_size=120))
def test_garbage_batches_fail_alike_in_both_twins(impl: Any, body: bytes) -> None:
    outcomes = []
    for module in (impl, _dispatch_py):
        try:
            seq, msgs = module.decode_batch(body, MAX_HEADER, MAX_PAYLOAD)
            outcomes.append(("ok", seq, [(t, h.id, h.flags, h.data, p) for t, h, p, _ in
                                         shape(msgs)]))  # fmt: skip
        except ValueError as exc:  # HeaderDecodeError is one too
            outcomes.append((type(exc).__name__, str(exc)))
    assert outcomes[0] == outcomes[1]


def test_a_truncated_or_padded_batch_is_refused(impl: Any) -> None:
    msgs = messages(impl, [(0x52, 7, 0, b"", b"abc")] * 3)
    body = impl.encode_batch(Kind.FRAMES, 9, msgs)[5:]
    with pytest.raises(ValueError, match=r"^Frame batch 9 ends inside frame 2 of 3$"):
        impl.decode_batch(body[:-1], MAX_HEADER, MAX_PAYLOAD)
    with pytest.raises(ValueError, match=r"^Expected frame batch 9 to end after 3 frames$"):
        impl.decode_batch(body + b"\x00", MAX_HEADER, MAX_PAYLOAD)
    with pytest.raises(ValueError, match=r"^Expected a header <= 4 and a payload"):
        impl.decode_batch(body, 4, MAX_PAYLOAD)


def test_encode_batch_takes_only_its_own_messages(impl: Any) -> None:
    with pytest.raises(
        TypeError, match=r"^Expected PluginMessage or PluginFrame objects, got int$"
    ):
        impl.encode_batch(Kind.FRAMES, 1, [1])


def test_decode_frames_turns_a_bad_batch_into_a_protocol_violation() -> None:
    with pytest.raises(ProtocolViolation, match=r"^Protocol violation: Expected at least 12"):
        wire.decode_frames(b"\x01", MAX_HEADER, MAX_PAYLOAD)


@settings(max_examples=100, deadline=None)
@given(cuts=st.lists(st.integers(1, 40), max_size=20))
def test_the_reader_reassembles_messages_cut_anywhere(cuts: list[int]) -> None:
    stream = b"".join(
        [
            wire.encode_seq(Kind.PONG, 5),
            wire.encode_ack(1, 3, 1, 0, "ValueError: no"),
            wire.encode(Kind.LOG, wire.Log(20, "hello")),
        ]
    )
    reader = wire.MessageReader(wire.CHILD_KINDS, wire.CHILD_MESSAGE_LIMIT)
    got: list[tuple[Kind, bytes]] = []
    offset = 0
    for cut in [*cuts, len(stream)]:
        got += reader.feed(stream[offset : offset + cut])
        offset += cut
    assert [kind for kind, _ in got] == [Kind.PONG, Kind.ACK, Kind.LOG]
    assert wire.decode_seq(Kind.PONG, got[0][1]) == 5
    assert wire.decode_ack(got[1][1]) == (1, 3, 1, 0, "ValueError: no")
    assert wire.decode(Kind.LOG, got[2][1]) == wire.Log(20, "hello")


def test_the_reader_refuses_what_a_child_may_not_send() -> None:
    reader = wire.MessageReader(wire.CHILD_KINDS, 1024)
    with pytest.raises(ProtocolViolation, match=r"unexpected message kind 18$"):
        list(reader.feed(wire.encode_seq(Kind.PING, 1)[:4] + bytes([Kind.FRAMES])))
    reader = wire.MessageReader(wire.CHILD_KINDS, 1024)
    # The length is refused before any of the body is buffered.
    with pytest.raises(ProtocolViolation, match=r"^Protocol violation: Expected a message of "):
        list(reader.feed((10**9).to_bytes(4, "little") + bytes([Kind.LOG])))
    reader = wire.MessageReader(wire.CHILD_KINDS, 1024)
    with pytest.raises(ProtocolViolation):
        list(reader.feed((0).to_bytes(4, "little") + bytes([Kind.LOG])))


def read(reader: wire.MessageReader, data: bytes) -> int:
    """Copy ``data`` into the reader's buffer as a transport would (one read)."""
    space = reader.get_buffer(-1)
    assert len(space) >= len(data)
    space[: len(data)] = data
    return len(data)


def test_a_lone_plain_ack_is_taken_whole_and_anything_else_is_left_to_update() -> None:
    reader = wire.MessageReader(wire.CHILD_KINDS, wire.CHILD_MESSAGE_LIMIT)
    assert reader.plain_ack(read(reader, wire.encode_ack(9, 3, 1, 2, ""))) == (9, 3, 1, 2)
    for data in (
        wire.encode_ack(10, 1, 1, 0, "ValueError: no"),  # with text
        wire.encode_ack(11, 1, 0, 0, "") + wire.encode_seq(Kind.PONG, 1),  # two messages
        (29).to_bytes(4, "little") + bytes([Kind.LOG]) + bytes(28),  # 33 bytes, not an ACK
    ):
        n = read(reader, data)
        assert reader.plain_ack(n) is None
        assert [kind for kind, _ in reader.update(n)][:1] in ([Kind.ACK], [Kind.LOG])
    reader = wire.MessageReader(wire.PARENT_KINDS, 1024)  # may not receive ACKs at all
    n = read(reader, wire.encode_ack(1, 1, 0, 0, ""))
    assert reader.plain_ack(n) is None
    with pytest.raises(ProtocolViolation, match=r"unexpected message kind 3$"):
        reader.update(n)


def test_a_large_message_grows_the_buffer_once_validated_and_gives_it_back() -> None:
    body = bytes(range(256)) * 12_000  # ~3 MiB, over the 1 MiB kept after a message
    message = len(body).to_bytes(4, "little") + bytes([Kind.LOG]) + body[:-1]
    reader = wire.MessageReader(wire.CHILD_KINDS, 4 << 20, chunk=4096)
    got: list[tuple[Kind, bytes]] = []
    offset = 0
    while offset < len(message):
        space = reader.get_buffer(-1)
        assert len(space) <= max(4096, len(message))  # never more than the message needs
        n = min(len(space), len(message) - offset)
        space[:n] = message[offset : offset + n]
        offset += n
        got += reader.update(n)
    assert got == [(Kind.LOG, body[:-1])]
    assert len(reader.get_buffer(-1)) == 4096  # the large buffer went with its message


@pytest.mark.parametrize(
    "kind, body",
    [
        (Kind.HELLO, b"\x93\x01\x01\x01"),  # too few fields
        (Kind.LOG, b"\x92\xa1x\x01"),  # level is text
        (Kind.REPLY, b"\xc1"),  # never-used msgpack byte
        (Kind.LOADED, b"\x92\xa0\xc3\x00"),  # trailing byte
    ],
)
def test_control_messages_are_decoded_strictly(kind: Kind, body: bytes) -> None:
    with pytest.raises(ProtocolViolation, match=rf"^Protocol violation: malformed {kind.name} "):
        wire.decode(kind, body)


def test_acks_and_pongs_have_exact_sizes() -> None:
    with pytest.raises(ProtocolViolation):
        wire.decode_ack(b"\x00" * 19)
    with pytest.raises(ProtocolViolation):
        wire.decode_ack(b"\x00" * (20 + wire.TEXT_LIMIT + 1))
    with pytest.raises(ProtocolViolation):
        wire.decode_seq(Kind.PONG, b"\x00" * 7)


@pytest.mark.parametrize("wrap", [lambda v: [v], lambda v: {"k": v}, lambda v: [1, v, b"x", {}]])
def test_a_childs_reply_nested_past_the_limit_is_a_violation_not_a_recursion(wrap: Any) -> None:
    def nested(depth: int) -> Any:
        value: Any = None
        for _ in range(depth):
            value = wrap(value)
        return value

    def body(depth: int) -> bytes:
        return msgspec.msgpack.encode(wire.Reply(1, nested(depth), ""))

    limit = wire.CHILD_DEPTH_LIMIT
    assert wire.decode(Kind.REPLY, body(limit - 1)).value == nested(limit - 1)  # + the Reply
    with pytest.raises(ProtocolViolation, match=r"^Protocol violation: Expected REPLY nested at "
                       r"most 32 deep, got deeper$"):  # fmt: skip
        wire.decode(Kind.REPLY, body(limit))
    hostile = b"\x93\x01" + b"\x91" * 100_000 + b"\xc0\xa0"
    with pytest.raises(ProtocolViolation, match=r"nested at most 32 deep"):
        wire.decode(Kind.REPLY, hostile)
    with pytest.raises(ProtocolViolation, match=r"^Protocol violation: malformed REPLY message"):
        wire.decode(Kind.REPLY, b"\x93\x01\xdc\xff")  # truncated: the decoder's own refusal


@settings(max_examples=100, deadline=None)
@given(
    seq=st.integers(0, 2**64 - 1),
    index=st.integers(0, 2**32 - 1),
    answer=st.one_of(
        st.just((wire.NO_REPLY, b"")),
        st.binary(max_size=64).map(lambda b: (wire.REPLY, b)),
        st.text(max_size=64).map(lambda t: (wire.REPLY_ERROR, t.encode())),
        st.integers(0, 2**64 - 1).map(lambda n: (wire.REPLY_TOO_LARGE, n.to_bytes(8, "little"))),
    ),
)
def test_ask_and_result_round_trip(seq: int, index: int, answer: tuple[int, bytes]) -> None:
    [(kind, body)] = wire.MessageReader(wire.CHILD_KINDS, wire.CHILD_MESSAGE_LIMIT).feed(
        wire.encode_result(seq, index, *answer)
    )
    assert kind is Kind.RESULT and wire.decode_result(body) == (seq, index, *answer)
    [(kind, body)] = wire.MessageReader(wire.PARENT_KINDS, wire.PARENT_MESSAGE_LIMIT).feed(
        wire.encode_ask(seq, [index, 0])
    )
    assert kind is Kind.ASK and wire.decode_ask(body) == (seq, [index, 0])


@pytest.mark.parametrize(
    "body",
    [
        b"\x00" * 12,  # no status
        b"\x00" * 12 + b"\x04",  # no such status
        b"\x00" * 12 + b"\x00x",  # no reply, with data
        b"\x00" * 12 + b"\x03" + b"\x00" * 7,  # too large, without its 8-byte size
        b"\x00" * 12 + b"\x02" + b"x" * (wire.TEXT_LIMIT + 1),  # error text over the limit
    ],
)
def test_a_malformed_result_is_a_protocol_violation(body: bytes) -> None:
    with pytest.raises(ProtocolViolation):
        wire.decode_result(body)


def test_a_malformed_ask_is_a_protocol_violation() -> None:
    with pytest.raises(ProtocolViolation):
        wire.decode_ask(b"\x00" * 10)
