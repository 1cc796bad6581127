"""The memory measures run on both twins and return sane numbers.

Whether the issue's targets are met is the benchmark's report (``python -m benchmarks.memory``),
not a pass/fail here: a test box's allocator and RSS are not the ones the targets are about.
"""

from __future__ import annotations

from typing import Any

import pytest

from benchmarks import memory

SANE_LIMIT = 1024 * 1024  # bytes per plugin or frame: far above any real cost, far below garbage


def test_idle_plugin_bytes_are_positive(impl: Any) -> None:
    per_plugin = memory.idle_plugin_bytes(impl, 50)
    assert 0 < per_plugin < SANE_LIMIT


def test_queued_frame_bytes_are_positive(impl: Any) -> None:
    per_frame = memory.queued_frame_bytes(impl, 500)
    assert 0 < per_frame < SANE_LIMIT


def test_idle_plugins_rss_is_read_in_a_child(impl: Any) -> None:
    before, after = memory.idle_plugins_rss(impl.__name__, 200)
    assert 0 < before
    assert 0 < after < before + 200 * SANE_LIMIT


def test_allocation_sites_and_object_census_name_something(impl: Any) -> None:
    sites = memory.allocation_sites(impl, 20, limit=5)
    assert sites and sites[0].size_diff > 0
    census = memory.new_objects_by_type(impl, 20)
    assert census and all(size > 0 for _name, size in census)


def test_rss_of_this_process_is_positive() -> None:
    assert memory.rss_bytes() > 0


def test_main_prints_every_measure(capsys: pytest.CaptureFixture[str]) -> None:
    assert memory.main(["--plugins", "20", "--frames", "200", "--idle", "50"]) == 0
    out = capsys.readouterr().out
    for measure in ("idle plugin, tracemalloc", "idle plugin, RSS", "queued frame", "idle plugins"):
        assert measure in out
    assert "compiled" in out and "pure twin" in out
