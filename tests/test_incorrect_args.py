"""Wrong arguments: the same bad calls against both twins, with the same errors (multidict's habit).

Each table row runs on ``[cython]`` and ``[python]`` through the ``impl`` fixture with an
anchored message; the hypothesis tests then call both twins with the same arguments
(any int as a kind or sequence number, every buffer type) and compare results, or
exception types and texts.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from conftest import available_impls
from hypothesis import given, settings
from hypothesis import strategies as st

from nyxplug import Permission, PluginInfo
from nyxplug.isolation.wire import Kind

MAX_HEADER = 4096
MAX_PAYLOAD = 1 << 20
U64 = 2**64 - 1
LIMIT = 2**62  # the largest max_header / max_payload


def one_message(impl: Any) -> Any:
    return impl.PluginMessage(0x52, impl.PluginHeader(7, 1, b"h"), b"payload")


def batch_body(impl: Any) -> bytes:
    data: bytes = impl.encode_batch(Kind.FRAMES, 3, [one_message(impl)])
    return data[5:]  # after length and kind, as the reader hands it over


def outcome(call: Callable[[], Any]) -> tuple[Any, ...]:
    """What a call gave, comparable across twins: its result's shape, or the error."""
    try:
        result = call()
    except Exception as exc:  # noqa: BLE001 - the type and text are what is compared
        return (type(exc), str(exc))
    if isinstance(result, tuple):  # decode_batch: (seq, messages)
        seq, messages = result
        return ("ok", seq, [(int(m.frame_type), m.header.id, m.header.flags, m.header.data,
                             m.payload, m.size) for m in messages])  # fmt: skip
    return ("ok", result)


@pytest.fixture(scope="module")
def twins() -> list[Any]:
    mods = available_impls()
    if len(mods) < 2:
        pytest.skip("compiled extension not built: nothing to compare the pure twin with")
    return mods


# -- encode_batch ------------------------------------------------------------------

ENCODE_CASES = [
    ("kind", 256, ValueError, r"^Expected `kind` in 0\.\.255, got 256$"),
    ("kind", -1, ValueError, r"^Expected `kind` in 0\.\.255, got -1$"),
    ("kind", 2**70, ValueError, r"^Expected `kind` in 0\.\.255, got 1180591620717411303424$"),
    ("kind", True, TypeError, r"^Expected `kind` to be an int, got bool$"),
    ("kind", 18.0, TypeError, r"^Expected `kind` to be an int, got float$"),
    ("kind", "18", TypeError, r"^Expected `kind` to be an int, got str$"),
    ("seq", -1, ValueError, r"^Expected `seq` in 0\.\.18446744073709551615, got -1$"),
    ("seq", 2**64, ValueError,
     r"^Expected `seq` in 0\.\.18446744073709551615, got 18446744073709551616$"),
    ("seq", None, TypeError, r"^Expected `seq` to be an int, got NoneType$"),
    ("messages", "tuple", TypeError, r"^Expected `messages` to be a list, got tuple$"),
    ("messages", None, TypeError, r"^Expected `messages` to be a list, got NoneType$"),
    ("messages", [b"frame"], TypeError,
     r"^Expected PluginMessage or PluginFrame objects, got bytes$"),
]  # fmt: skip


@pytest.mark.parametrize(("argument", "value", "error", "message"), ENCODE_CASES)
def test_encode_batch_refuses(
    impl: Any, argument: str, value: Any, error: type[Exception], message: str
) -> None:
    arguments: dict[str, Any] = {"kind": Kind.FRAMES, "seq": 1, "messages": [one_message(impl)]}
    arguments[argument] = (one_message(impl),) if value == "tuple" else value
    with pytest.raises(error, match=message):
        impl.encode_batch(**arguments)


def test_encode_batch_takes_a_kind_and_seq_at_their_limits(impl: Any) -> None:
    data = impl.encode_batch(255, U64, [one_message(impl)])
    assert data[4] == 255
    assert int.from_bytes(data[5:13], "little") == U64
    assert impl.encode_batch(0, 0, [])[4:] == bytes(13)


# -- decode_batch ------------------------------------------------------------------

DECODE_CASES = [
    ("body", "text", TypeError, r"^Expected `body` to be bytes-like, got str$"),
    ("body", None, TypeError, r"^Expected `body` to be bytes-like, got NoneType$"),
    ("body", [1, 2], TypeError, r"^Expected `body` to be bytes-like, got list$"),
    ("max_header", -1, ValueError, r"^Expected `max_header` in 0\.\.4611686018427387904, got -1$"),
    ("max_header", LIMIT + 1, ValueError,
     r"^Expected `max_header` in 0\.\.4611686018427387904, got 4611686018427387905$"),
    ("max_header", 4096.0, TypeError, r"^Expected `max_header` to be an int, got float$"),
    ("max_payload", -5, ValueError,
     r"^Expected `max_payload` in 0\.\.4611686018427387904, got -5$"),
    ("max_payload", False, TypeError, r"^Expected `max_payload` to be an int, got bool$"),
]  # fmt: skip


@pytest.mark.parametrize(("argument", "value", "error", "message"), DECODE_CASES)
def test_decode_batch_refuses(
    impl: Any, argument: str, value: Any, error: type[Exception], message: str
) -> None:
    arguments: dict[str, Any] = {
        "body": batch_body(impl),
        "max_header": MAX_HEADER,
        "max_payload": MAX_PAYLOAD,
    }
    arguments[argument] = value
    with pytest.raises(error, match=message):
        impl.decode_batch(**arguments)


@pytest.mark.parametrize("buffer", [bytes, bytearray, memoryview])
def test_decode_batch_takes_any_bytes_like_body(impl: Any, buffer: type) -> None:
    body = batch_body(impl)
    assert outcome(lambda: impl.decode_batch(buffer(body), MAX_HEADER, MAX_PAYLOAD)) == outcome(
        lambda: impl.decode_batch(body, MAX_HEADER, MAX_PAYLOAD)
    )


# -- the classes -------------------------------------------------------------------

CLASS_CASES: list[tuple[str, Callable[[Any], Any], type[Exception], str | None]] = [
    # a cdef class's __init__ words its arity error differently: the type is what counts
    ("registry takes no arguments", lambda m: m.PluginRegistry(1), TypeError, None),
    ("message header", lambda m: m.PluginMessage(0x52, b"\xa0"), TypeError,
     r"^Expected `header` to be a PluginHeader, got bytes$"),
    ("message frame type", lambda m: m.PluginMessage(256, m.PluginHeader(1)), ValueError,
     r"^Expected `frame_type` in 0\.\.255, got 256$"),
    ("message payload", lambda m: m.PluginMessage(0x52, m.PluginHeader(1), "x"), TypeError,
     r"^Expected `payload` to be bytes-like, got str$"),
    ("dispatcher sandbox", lambda m: m.Dispatcher(sandbox=1), TypeError,
     r"^Expected `sandbox` to be a SandboxPolicy or None, got int$"),
    ("dispatcher limit", lambda m: m.Dispatcher(max_payload_size=-1), ValueError,
     r"^Expected `max_payload_size` in 0\.\.4611686018427387904, got -1$"),
    ("frame type code", lambda m: m.Dispatcher().register_frame_type(True, Permission.CONTROL),
     TypeError, r"^Expected `code` to be an int, got bool$"),
    ("frame type permission", lambda m: m.Dispatcher().register_frame_type(0x5A, 4),
     TypeError, r"^Expected `permission` to be a non-empty Permission, got 4$"),
    ("dispatch frame type", lambda m: m.Dispatcher().dispatch_nowait("R", b""), TypeError,
     r"^Expected `frame_type` to be an int, got str$"),
    ("dispatch header", lambda m: m.Dispatcher().dispatch_nowait(0x52, 7), TypeError,
     r"^Expected `header` to be bytes-like or a PluginHeader, got int$"),
    ("dispatch payload", lambda m: m.Dispatcher().try_dispatch(0x52, m.PluginHeader(1), "x"),
     TypeError, r"^Expected `payload` to be bytes-like, got str$"),
]  # fmt: skip


@pytest.mark.parametrize(("call", "error", "message"), [case[1:] for case in CLASS_CASES],
                         ids=[case[0] for case in CLASS_CASES])  # fmt: skip
def test_classes_refuse(
    impl: Any, call: Callable[[Any], Any], error: type[Exception], message: str | None
) -> None:
    with pytest.raises(error, match=message):
        call(impl)


def test_registry_refuses_what_is_not_a_plugin_info(impl: Any) -> None:
    registry = impl.PluginRegistry()
    with pytest.raises(TypeError, match=r"^Expected a PluginInfo, got tuple$"):
        registry.register((1, "x", Permission.CONTROL))
    registry.register(PluginInfo(1, "x", Permission.CONTROL))
    with pytest.raises(
        TypeError, match=r"^Expected a Permission or an iterable of Permission, got str$"
    ):
        registry.set_permissions(1, "CONTROL")
    assert registry.has_permission(1, Permission.CONTROL)


# -- both twins, the same arguments: the same outcome --------------------------------

any_kind = st.one_of(
    st.integers(), st.integers(-2, 260), st.sampled_from(list(Kind)), st.booleans(),
    st.floats(allow_nan=False), st.none(), st.text(max_size=2),
)  # fmt: skip
any_seq = st.one_of(
    st.integers(), st.integers(-2, 2**64 + 2), st.integers(2**63 - 2, 2**63 + 2),
    st.booleans(), st.none(),
)  # fmt: skip
any_limit = st.one_of(
    st.integers(-3, 64), st.integers(), st.integers(LIMIT - 2, LIMIT + 2),
    st.booleans(), st.floats(allow_nan=False),
)  # fmt: skip
containers = st.sampled_from([list, tuple, "none"])
buffers = st.sampled_from([bytes, bytearray, memoryview, "str", "list"])


def as_container(kind: Any, items: list[Any]) -> Any:
    return None if kind == "none" else kind(items)


def as_buffer(kind: Any, body: bytes) -> Any:
    if kind == "str":
        return body.decode("latin-1")
    if kind == "list":
        return list(body)
    return kind(body)


@settings(max_examples=300, deadline=None)
@given(kind=any_kind, seq=any_seq, container=containers, count=st.integers(0, 3))
def test_encode_batch_twins_agree(
    twins: list[Any], kind: Any, seq: Any, container: Any, count: int
) -> None:
    outcomes = [
        outcome(lambda m=m: m.encode_batch(kind, seq, as_container(container, [
            one_message(m) for _ in range(count)])))
        for m in twins
    ]  # fmt: skip
    assert outcomes[0] == outcomes[1]


@settings(max_examples=300, deadline=None)
@given(
    buffer=buffers,
    seq=st.integers(0, U64),
    cut=st.integers(0, 60),
    max_header=any_limit,
    max_payload=any_limit,
)
def test_decode_batch_twins_agree(
    twins: list[Any], buffer: Any, seq: int, cut: int, max_header: Any, max_payload: Any
) -> None:
    pure = twins[1]
    body = pure.encode_batch(Kind.FRAMES, seq, [one_message(pure), one_message(pure)])[5:]
    body = body[: len(body) - cut] if cut < 40 else body  # truncated, or whole
    outcomes = [
        outcome(lambda m=m: m.decode_batch(as_buffer(buffer, body), max_header, max_payload))
        for m in twins
    ]
    assert outcomes[0] == outcomes[1]
