"""pytest-benchmark scenarios; ``compare.py`` runs the same ones interleaved in one table."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import cbor2

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


def test_end_to_end_cbor_bytes(benchmark: Any, impl: Any, loop: asyncio.AbstractEventLoop) -> None:
    benchmark.pedantic(
        lambda: loop.run_until_complete(compare._end_to_end(impl, FRAMES, False, 1024, 1, False)),
        rounds=5,
    )


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
