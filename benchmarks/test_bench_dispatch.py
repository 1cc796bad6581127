"""pytest-benchmark scenarios; ``compare.py`` runs the same ones interleaved in one table."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import cbor2
import pytest

from benchmarks import compare
from benchmarks._corpus import encoded_headers, ready_headers

FRAMES = 20_000


def test_dispatch_nowait_cbor_bytes(
    benchmark: Any, impl: Any, loop: asyncio.AbstractEventLoop
) -> None:
    benchmark.pedantic(
        lambda: loop.run_until_complete(compare._nowait(impl, FRAMES, ready=False)), rounds=5
    )


def test_dispatch_nowait_ready_header(
    benchmark: Any, impl: Any, loop: asyncio.AbstractEventLoop
) -> None:
    benchmark.pedantic(
        lambda: loop.run_until_complete(compare._nowait(impl, FRAMES, ready=True)), rounds=5
    )


@pytest.mark.parametrize("mode", ["each", "many", "framed"])
def test_try_dispatch_batch(
    benchmark: Any, impl: Any, loop: asyncio.AbstractEventLoop, mode: str
) -> None:
    """One try_dispatch per frame, try_dispatch_many, try_dispatch_framed (issue 16 item 3)."""
    benchmark.pedantic(
        lambda: loop.run_until_complete(compare._batch(impl, FRAMES, mode)), rounds=5
    )


def test_end_to_end_cbor_bytes(benchmark: Any, impl: Any, loop: asyncio.AbstractEventLoop) -> None:
    benchmark.pedantic(
        lambda: loop.run_until_complete(compare._end_to_end(impl, FRAMES, False, 1024, 1, False)),
        rounds=5,
    )


def test_end_to_end_await_dispatch(
    benchmark: Any, impl: Any, loop: asyncio.AbstractEventLoop
) -> None:
    benchmark.pedantic(
        lambda: loop.run_until_complete(compare._end_to_end(impl, FRAMES, False, 1024, 1, True)),
        rounds=5,
    )


def test_end_to_end_eight_plugins(
    benchmark: Any, impl: Any, loop: asyncio.AbstractEventLoop
) -> None:
    benchmark.pedantic(
        lambda: loop.run_until_complete(compare._end_to_end(impl, FRAMES, False, 1024, 8, True)),
        rounds=5,
    )


def test_end_to_end_capacity_8(benchmark: Any, impl: Any, loop: asyncio.AbstractEventLoop) -> None:
    benchmark.pedantic(
        lambda: loop.run_until_complete(compare._end_to_end(impl, FRAMES, False, 8, 1, True)),
        rounds=5,
    )


def test_try_dispatch_refused_when_full(
    benchmark: Any, impl: Any, loop: asyncio.AbstractEventLoop
) -> None:
    benchmark.pedantic(
        lambda: loop.run_until_complete(compare._refused_when_full(impl, FRAMES)), rounds=5
    )


def test_end_to_end_baseline_anyio_streams(benchmark: Any, loop: asyncio.AbstractEventLoop) -> None:
    pytest.importorskip("anyio")
    benchmark.pedantic(
        lambda: loop.run_until_complete(compare._anyio_streams(FRAMES // 4, 1024)), rounds=3
    )


def test_load_unload_1000_plugins(
    benchmark: Any, impl: Any, loop: asyncio.AbstractEventLoop
) -> None:
    benchmark.pedantic(lambda: loop.run_until_complete(compare._load_unload(impl, 1000)), rounds=5)


def test_header_encode(benchmark: Any, impl: Any) -> None:
    encoders = [impl.PluginHeader.decode(raw).encode for raw in encoded_headers()]
    benchmark(lambda: [encode() for encode in encoders])


def test_end_to_end_baseline_asyncio_queue(benchmark: Any, loop: asyncio.AbstractEventLoop) -> None:
    benchmark.pedantic(
        lambda: loop.run_until_complete(compare._asyncio_queue(FRAMES, 1024, 1)), rounds=5
    )


def test_header_decode(benchmark: Any, impl: Any) -> None:
    corpus = encoded_headers()
    decode = impl.PluginHeader.decode
    benchmark(lambda: [decode(raw) for raw in corpus])


def test_header_decode_baseline_cbor2(benchmark: Any) -> None:
    corpus = encoded_headers()
    benchmark(lambda: [cbor2.loads(raw) for raw in corpus])


def test_corpus_is_shared_and_canonical(impl: Any) -> None:
    """Not a benchmark: the corpus decodes to the same headers it was made from."""
    for raw, header in zip(encoded_headers(), ready_headers(impl), strict=True):
        assert impl.PluginHeader.decode(raw) == header
        assert header.encode() == raw
    assert len(list(itertools.islice(encoded_headers(), 3))) == 3
