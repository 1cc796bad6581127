"""A plugin folder's throughput as its author measures it: ``nyx_bench`` (issue 17).

The example "fast" plugin (counts frames) loaded by the testing kit's host exactly as
``nyxplug run`` loads it - manifest, supervision, sandbox guard - on each twin and loop.
Its times are per frame and its OPS is frames per second; ``test_bench_dispatch``'s
no-op rows are the same path without the plugin runtime around it.
"""

from __future__ import annotations

from typing import Any

from nyxplug.cli.demo import EXAMPLES_DIR
from nyxplug.testing import NyxHost

FRAMES = 10_000


def test_kit_fast_plugin_folder(nyx_host: NyxHost, nyx_bench: Any) -> None:
    fast = nyx_host.load(EXAMPLES_DIR / "fast")
    info = nyx_bench(fast, [b"x" * 64] * FRAMES)
    assert info["frames_per_round"] == FRAMES
    assert fast.stats.errors == 0
