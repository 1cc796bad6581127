"""In which order plugins load: their dependencies first, each range and state checked."""

from __future__ import annotations

import graphlib
from collections.abc import Iterable, Mapping

from .catalog import PluginRecord
from .errors import DependencyError, PluginNotFound

__all__ = ("dependency_order",)


def dependency_order(names: Iterable[str], records: Mapping[str, PluginRecord]) -> list[str]:
    """``names`` and their dependencies, dependencies first.

    Raises ``PluginNotFound`` for a name that is not in ``records``, and
    ``DependencyError`` for a missing dependency, a version outside the required
    range, a disabled or broken dependency, or a cycle.
    """
    graph: dict[str, list[str]] = {}
    pending = sorted(set(names))
    while pending:
        name = pending.pop()
        if name in graph:
            continue
        record = records.get(name)
        if record is None:
            raise PluginNotFound(name, tuple(sorted(records)))
        if record.manifest is None:
            raise DependencyError(name, f"its manifest is broken: {record.reason}")
        deps = []
        for dep, wanted in sorted(record.manifest.dependency_ranges.items()):
            other = records.get(dep)
            if other is None or other.manifest is None:
                raise DependencyError(
                    name,
                    f"needs {dep!r} {wanted}, which is not in the catalog - install it "
                    f"(`nyxplug install` its package) or add the folder holding {dep!r} with "
                    f"--plugin-dir",
                )
            if not wanted.contains(other.manifest.version):
                raise DependencyError(
                    name,
                    f"needs {dep!r} {wanted}, but {other.manifest.version} is installed - "
                    f"install a {dep!r} in that range, or change the range in [dependencies]",
                )
            if not other.enabled:
                raise DependencyError(
                    name, f"needs {dep!r}, which is disabled - run `nyxplug enable {dep}`"
                )
            deps.append(dep)
            pending.append(dep)
        graph[name] = deps
    sorter = graphlib.TopologicalSorter(graph)
    try:
        return list(sorter.static_order())
    except graphlib.CycleError as exc:
        cycle = " -> ".join(exc.args[1])
        raise DependencyError(exc.args[1][0], f"dependency cycle {cycle}") from None
