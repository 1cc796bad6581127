"""The file watch of ``PluginWatcher``, run as a process of its own (started by path).

It reads one JSON line of options at a time on stdin (``gen``, ``paths``, ``quiet``,
``burst``, ``idle``, ``force_polling``, ``poll_delay_ms``); each new line replaces the
watch at once (the old one keeps watching until then, so no change falls in between),
and stdin's end stops it. For the current options it groups changes until no new path
changed for ``quiet`` ms (or ``burst`` ms passed since the first) and writes one JSON
line per finished batch to stdout, ``{"gen": N, "changes": [[change, path], ...]}``;
with no change ``{"gen": N, "idle": true}`` every ``idle`` ms; if the watch cannot
start or fails, ``{"gen": N, "error": TYPE, "message": TEXT}`` and it waits for new
options.

A process, not a thread: a thread of the host needs the host's GIL between looks, and
a busy event loop (uvloop releases and retakes the GIL on every iteration) can starve
it for a second. Here nothing the host does delays noticing a change or its debounce;
the host only reads the finished line. Imports only the standard library and
watchfiles, so it starts in a few tens of milliseconds.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from typing import Any

#: How often the watch looks for changes (ms; RustNotify sleeps between looks).
TICK_MS = 10


class _Inbox:
    """The latest options from stdin; ``changed`` is set when new ones (or the end) came."""

    def __init__(self) -> None:
        self.options: dict[str, Any] | None = None
        self.ended = False
        self.changed = threading.Event()
        self.lock = threading.Lock()

    def read(self) -> None:
        for line in sys.stdin.buffer:
            with self.lock:
                self.options = json.loads(line)
            self.changed.set()
        self.ended = True
        self.changed.set()

    def take(self) -> dict[str, Any] | None:
        with self.lock:
            self.changed.clear()
            options, self.options = self.options, None
            return options


def main() -> int:
    inbox = _Inbox()
    threading.Thread(target=inbox.read, daemon=True).start()
    notify: Any = None
    current: dict[str, Any] = {}
    while not inbox.ended:
        if notify is None:
            inbox.changed.wait()
        options = inbox.take()
        if options is not None:
            # The new watch starts before the old one ends, and what the old one saw
            # meanwhile is reported: switching folders loses no change.
            old, notify, current = notify, _start(options), options
            if old is not None:
                _drain(old, options["gen"])
                old.close()
        if notify is None:
            continue
        try:
            _watch(notify, current, inbox)
        except Exception as exc:
            _say({"gen": current["gen"], "error": type(exc).__name__, "message": str(exc)})
            notify.close()
            notify = None
    if notify is not None:
        notify.close()
    return 0


def _start(options: dict[str, Any]) -> Any:
    """A ``RustNotify`` for ``options``, or ``None`` (and the error said) if it cannot start."""
    from watchfiles._rust_notify import RustNotify

    try:
        return RustNotify(
            options["paths"], False, options["force_polling"], options["poll_delay_ms"], True,
            False,
        )  # fmt: skip
    except Exception as exc:
        _say({"gen": options["gen"], "error": type(exc).__name__, "message": str(exc)})
        return None


def _drain(notify: Any, gen: int) -> None:
    found = notify.watch(1, 1, 1, None)
    if isinstance(found, set) and found:
        _say({"gen": gen, "changes": sorted(found)})


def _watch(notify: Any, options: dict[str, Any], inbox: _Inbox) -> None:
    """Report batches for ``options`` until new options (or the end) arrive.

    No stop event is handed to ``RustNotify.watch``: stopping it drops the changes it
    holds. New options are looked at between calls (at most ``idle`` ms apart).
    """
    gen, idle = options["gen"], options["idle"]
    quiet, burst = options["quiet"] / 1000, options["burst"] / 1000
    pending: set[tuple[int, str]] = set()
    first = last = 0.0
    while True:
        switching = inbox.changed.is_set()
        if switching and not pending:
            return
        if pending:  # wait out the rest of the quiet period, no longer
            wait = max(1, round((last + quiet - time.monotonic()) * 1000))
        else:
            wait = idle
        raw = notify.watch(wait, TICK_MS, wait, None)
        now = time.monotonic()
        if isinstance(raw, set):
            first = first if pending else now
            pending |= raw
            last = now
        elif not pending:
            _say({"gen": gen, "idle": True})
        if pending and (now - last >= quiet or now - first >= burst or switching):
            _say({"gen": gen, "changes": sorted(pending)})
            pending = set()


def _say(message: dict[str, object]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except (BrokenPipeError, KeyboardInterrupt):  # the host is gone, or stops us
        raise SystemExit(0) from None
