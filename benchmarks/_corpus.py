"""A deterministic frame corpus shared by the benchmarks and the tests.

Small on purpose: benchmarks cycle over it instead of holding millions of frames,
because a huge list makes every full GC collection walk it (perf-notes pitfall 1).
"""

from __future__ import annotations

import random
from typing import Any

import cbor2

CORPUS_SIZE = 1024
SEED = 20261122


def header_fields(
    plugin_ids: tuple[int, ...] = (7,), size: int = CORPUS_SIZE
) -> list[tuple[int, int, bytes]]:
    """``(id, flags, data)`` triples: data of 0-16 bytes, flags 0 or 1, ids cycled."""
    rng = random.Random(SEED)
    out = []
    for i in range(size):
        data = rng.randbytes(rng.randrange(0, 17))
        out.append((plugin_ids[i % len(plugin_ids)], rng.randrange(2), data))
    return out


def encoded_headers(plugin_ids: tuple[int, ...] = (7,), size: int = CORPUS_SIZE) -> list[bytes]:
    """The corpus as canonical CBOR bytes (exactly what ``cbor2.dumps`` writes)."""
    return [
        cbor2.dumps({"id": i, "flags": f, "data": d}) for i, f, d in header_fields(plugin_ids, size)
    ]


def ready_headers(
    impl: Any, plugin_ids: tuple[int, ...] = (7,), size: int = CORPUS_SIZE
) -> list[Any]:
    """The corpus as ``PluginHeader`` objects of the given implementation module."""
    return [impl.PluginHeader(i, f, d) for i, f, d in header_fields(plugin_ids, size)]
