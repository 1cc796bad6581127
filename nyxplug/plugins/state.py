"""The lifecycle of a plugin as an explicit state machine (SPEC 6)."""

from __future__ import annotations

import enum

__all__ = ("PluginState", "can_move")


class PluginState(enum.Enum):
    """Where a plugin is in its life; ``failed`` and ``disabled`` always carry a reason."""

    DISCOVERED = "discovered"
    VALIDATED = "validated"
    LOADING = "loading"
    ACTIVE = "active"
    DRAINING = "draining"
    UNLOADED = "unloaded"
    FAILED = "failed"
    DISABLED = "disabled"

    def __str__(self) -> str:
        return self.value


_S = PluginState
#: The moves the runtime makes; anything else is a bug or a refused operation.
_MOVES: dict[PluginState, frozenset[PluginState]] = {
    _S.DISCOVERED: frozenset({_S.VALIDATED}),
    _S.VALIDATED: frozenset({_S.LOADING, _S.DISCOVERED}),
    _S.LOADING: frozenset({_S.ACTIVE}),
    _S.ACTIVE: frozenset({_S.DRAINING}),
    _S.DRAINING: frozenset({_S.UNLOADED}),
    _S.UNLOADED: frozenset({_S.LOADING, _S.DISCOVERED}),
    _S.FAILED: frozenset({_S.LOADING, _S.DISCOVERED}),
    _S.DISABLED: frozenset({_S.DISCOVERED}),
}


def can_move(current: PluginState, new: PluginState) -> bool:
    """True if ``current -> new`` is a lifecycle move (failed/disabled: from any state)."""
    if new in (_S.FAILED, _S.DISABLED):
        return True
    return new in _MOVES[current]
