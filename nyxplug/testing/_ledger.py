"""The ledger a test is checked against when it ends (SPEC 4: nothing is lost silently).

At a quiet moment (no frame queued, no handler running) every frame the host enqueued
was handled or counted as dropped, and every frame the test sent reached the
dispatcher's counters. A frame outside that - still in a handler when the test ended,
or gone with a plugin that failed - fails the test, with the ledger printed.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .._stats import DispatchStats, PluginStats

if TYPE_CHECKING:
    from ._host import NyxHost

__all__ = ("LedgerError", "LedgerRow", "check_ledger", "format_ledger")


class LedgerError(AssertionError):
    """A frame the test sent is unaccounted for; the message is the ledger."""


@dataclass(frozen=True)
class LedgerRow:
    """One plugin's line of the ledger."""

    name: str
    id: int
    sent: int  # frames this test's handles got enqueued
    refused: int  # sends refused with a typed error (never enqueued)
    stats: PluginStats | None  # None: gone, and its final counters are unknown
    state: str

    @property
    def handled(self) -> int:
        return 0 if self.stats is None else self.stats.messages_processed


def _snapshot(host: NyxHost) -> tuple[DispatchStats, dict[int, PluginStats], dict[int, str]]:
    """Counters and plugin names read on the host's loop thread."""
    manager = host.manager

    async def read() -> tuple[DispatchStats, dict[int, PluginStats], dict[int, str]]:
        d = manager.dispatcher
        loaded = {pid: d.plugin_stats(pid) for pid in d.loaded_plugins()}
        states: dict[int, str] = {}
        for status in manager.catalog():
            if status.id is not None:
                states[status.id] = status.state + (f" ({status.reason})" if status.reason else "")
        return d.dispatch_stats(), {k: v for k, v in loaded.items() if v is not None}, states

    return host.run(read())


def check_ledger(host: NyxHost, *, timeout: float) -> list[LedgerRow]:
    """Wait up to ``timeout`` s for quiet, then check the ledger; ``LedgerError`` if off."""
    problems: list[str] = []
    dispatcher = host.manager.dispatcher
    try:
        host.run(asyncio.wait_for(dispatcher.wait_idle(), timeout), timeout=timeout + 5)
    except TimeoutError:
        problems.append(
            f"the host was not quiet {timeout} s after the test: a handler still runs or "
            "frames wait in a queue (a handler that never returns? raise the time with "
            "--nyx-ledger-timeout)"
        )
    ds, loaded, states = _snapshot(host)
    known = {**host.final, **loaded}
    names = {handle.id: name for name, handle in host.handles.items()}
    ids = sorted(set(known) | set(host.sent) | set(host.refused))
    rows = [
        LedgerRow(
            name=names.get(pid, "?"),
            id=pid,
            sent=host.sent[pid],
            refused=host.refused[pid],
            stats=known.get(pid),
            state=states.get(pid, "?"),
        )  # fmt: skip
        for pid in ids
    ]
    for row in rows:
        if row.stats is None:
            if row.sent:
                problems.append(
                    f"plugin {row.name!r} (id {row.id}) is gone and its counters with it - "
                    f"{row.sent} frame(s) sent to it are unaccounted for; it is {row.state}"
                )
            continue
        accounted = row.stats.messages_processed + row.stats.dropped
        if row.stats.queue_depth or accounted < row.sent:
            problems.append(
                f"plugin {row.name!r} (id {row.id}): {row.sent} frame(s) sent, "
                f"{row.stats.messages_processed} handled, {row.stats.dropped} dropped, "
                f"{row.stats.queue_depth} still queued"
            )
    in_ledger = sum(s.messages_processed + s.dropped + s.queue_depth for s in known.values())
    if in_ledger != ds.frames_dispatched and not problems:
        problems.append(
            f"the dispatcher enqueued {ds.frames_dispatched} frame(s), the plugins account "
            f"for {in_ledger} (handled + dropped + queued)"
        )
    if ds.frames_dispatched + ds.dispatch_errors < host.calls:
        problems.append(
            f"the test made {host.calls} send call(s), the dispatcher counted "
            f"{ds.frames_dispatched + ds.dispatch_errors} (enqueued + refused)"
        )
    for error in host.loop_errors:
        problems.append(f"the host's event loop reported: {error}")
    if problems:
        raise LedgerError(format_ledger(rows, ds, host.calls, problems))
    return rows


def format_ledger(
    rows: list[LedgerRow], ds: DispatchStats, calls: int, problems: list[str] | None = None
) -> str:
    """The ledger as text: what went wrong, then one line per plugin and the totals."""
    lines: list[str] = []
    if problems:
        lines.append(f"nyxplug ledger (SPEC 4): {len(problems)} problem(s)")
        lines += [f"  - {problem}" for problem in problems]
    header = ("plugin", "id", "sent", "refused", "handled", "errors", "dropped", "queued", "state")
    table: list[tuple[Any, ...]] = [header]
    for row in rows:
        s = row.stats
        counters = (
            ("?",) * 4 if s is None else (s.messages_processed, s.errors, s.dropped, s.queue_depth)
        )
        table.append((row.name, row.id, row.sent, row.refused, *counters, row.state))
    widths = [max(len(str(line[i])) for line in table) for i in range(len(header) - 1)]
    for line in table:
        cells = [str(cell).ljust(w) if i == 0 else str(cell).rjust(w)
                 for i, (cell, w) in enumerate(zip(line, widths, strict=False))]  # fmt: skip
        lines.append("  " + "  ".join(cells) + "  " + str(line[-1]))
    lines.append(
        f"  dispatcher: {ds.frames_dispatched} enqueued, {ds.dispatch_errors} refused, "
        f"{calls} send call(s) by this test"
    )
    return "\n".join(lines)
