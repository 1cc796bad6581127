"""Immutable statistics snapshots returned by both dispatcher twins (SPEC 4)."""

from __future__ import annotations

import msgspec

from ._constants import DispatchStatus

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
    #: Frames refused because the queue was full (``WouldBlock`` / ``WOULD_BLOCK``):
    #: backpressure, not an error.
    would_block: int = 0
    #: Parked ``dispatch`` calls refused because the plugin was unloaded (``PluginClosed``).
    plugin_closed: int = 0
    #: Frames refused by the plugin's circuit breaker (``CircuitOpen`` / ``CIRCUIT_OPEN``);
    #: ``Dispatcher.breaker_stats`` splits them by reason.
    circuit_open: int = 0


class DispatchStats(msgspec.Struct, frozen=True, kw_only=True):
    """The dispatcher's counters at the moment of the call.

    ``frames_dispatched + dispatch_errors`` equals the number of dispatch calls that
    returned or raised a ``DispatchError``; ``dispatch_errors`` is the sum of the
    per-reason counters after it, one per ``DispatchStatus`` reason (``by_status()``).
    """

    #: Successful ``load_plugin`` calls since the dispatcher was created.
    plugins_loaded: int = 0
    #: Successful ``unload_plugin`` calls since the dispatcher was created.
    plugins_unloaded: int = 0
    #: Frames enqueued.
    frames_dispatched: int = 0
    #: Dispatch calls that failed, whatever the cause (the sum of the counters below).
    dispatch_errors: int = 0
    #: Refused because the plugin's queue was full: backpressure, not an error.
    would_block: int = 0
    #: Parked ``dispatch`` calls refused because their plugin was unloaded.
    plugin_closed: int = 0
    #: Refused because no plugin is registered under the header's id.
    plugin_not_registered: int = 0
    #: Refused because the plugin is registered but not loaded (or unloading).
    plugin_not_loaded: int = 0
    #: Refused because the plugin lacks the frame type's permission.
    permission_denied: int = 0
    #: Refused by the plugin's sandbox preflight.
    sandbox_violation: int = 0
    #: Refused because the header did not decode.
    header_decode_error: int = 0
    #: Refused because the header or payload was over its limit.
    frame_too_large: int = 0
    #: Refused because the dispatcher does not route the frame type.
    unknown_frame_type: int = 0
    #: Refused by the target plugin's circuit breaker (open, forced open, or half-open
    #: with every probe taken).
    circuit_open: int = 0

    def by_status(self) -> dict[DispatchStatus, int]:
        """The refusal counters keyed by ``DispatchStatus`` (every member but ``OK``)."""
        return {status: getattr(self, status.name.lower()) for status in _REASONS}


_REASONS = tuple(status for status in DispatchStatus if status != DispatchStatus.OK)
