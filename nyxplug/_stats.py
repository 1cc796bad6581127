"""Immutable statistics snapshots returned by both dispatcher twins (SPEC 4)."""

from __future__ import annotations

import msgspec

__all__ = ("DispatchStats", "PluginStats")


class PluginStats(msgspec.Struct, frozen=True, kw_only=True):
    """One plugin's counters at the moment of the call.

    At any quiet moment (no sender parked, no handler running) the frames enqueued
    for the plugin equal ``messages_processed + dropped + queue_depth``.
    """

    #: Frames handed to the handler (counted when handed, whether or not it raised).
    messages_processed: int = 0
    #: Handler calls that raised (a raising ``handle_batch`` call counts once).
    errors: int = 0
    #: Sum of ``PluginMessage.size`` over the frames handed to the handler.
    bytes_processed: int = 0
    #: Frames refused because the plugin lacks the permission their type requires.
    permission_violations: int = 0
    #: Operations refused by the plugin's sandbox policy.
    sandbox_violations: int = 0
    #: Queued frames discarded by ``unload_plugin(drain=False)``.
    dropped: int = 0
    #: Frames waiting in the queue now (the frame in the handler is not counted).
    queue_depth: int = 0
    #: Largest ``queue_depth`` seen since the plugin was loaded.
    high_watermark: int = 0


class DispatchStats(msgspec.Struct, frozen=True, kw_only=True):
    """The dispatcher's counters at the moment of the call.

    ``frames_dispatched + dispatch_errors`` equals the number of dispatch calls that
    returned or raised a nyxplug error.
    """

    #: Successful ``load_plugin`` calls since the dispatcher was created.
    plugins_loaded: int = 0
    #: Successful ``unload_plugin`` calls since the dispatcher was created.
    plugins_unloaded: int = 0
    #: Frames enqueued.
    frames_dispatched: int = 0
    #: Dispatch calls that failed, whatever the cause.
    dispatch_errors: int = 0
