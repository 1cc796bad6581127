"""Recovery-ladder records shared by the manifest, the host configuration and the runtime.

``RecoveryConfig`` is the ``[recovery]`` table of a manifest and ``[defaults.recovery]``
of the host configuration; ``RecoveryStats`` / ``StepStats`` what
``nyxplug.plugins.RecoveryLadder`` reports. The ladder itself runs in the runtime
(``nyxplug/plugins/recovery.py``).
"""

from __future__ import annotations

import math
from typing import Literal

import msgspec

from ._schema import _Invalid

__all__ = ("RECOVERY_STEPS", "RecoveryConfig", "RecoveryStats", "Step", "StepStats")

Step = Literal["restart", "reset", "reload", "rollback", "degrade", "quarantine"]

#: Every step, in the order the default ladder climbs them.
RECOVERY_STEPS: tuple[Step, ...] = (
    "restart", "reset", "reload", "rollback", "degrade", "quarantine",
)  # fmt: skip


def _invalid(field: str, expected: str, got: object) -> ValueError:
    # _Invalid: a manifest or host config error names the key (`recovery.steps`).
    return _Invalid(field, f"Expected `{field}` {expected}, got {got!r}")


class RecoveryConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """How a plugin whose breaker trips (or whose liveness fails) is repaired (the
    ``[recovery]`` table of a manifest, ``[defaults.recovery]`` of the host configuration).

    The ladder climbs ``steps`` in order, one step per trip: a step that works sends
    the breaker half-open so probe frames decide; if they fail the breaker trips again
    and, after its (growing) open time - the backoff - the next step runs. A step that
    does not apply to the plugin (``restart`` of an in-process plugin, ``reset`` of an
    isolated one, ``rollback`` without an earlier version, ``degrade`` without a
    ``fallback``) is skipped and counted as not available.
    """

    #: The steps, in order; ``quarantine`` (the plugin ``failed``) can only be last.
    steps: tuple[Step, ...] = RECOVERY_STEPS
    #: Seconds one step may take; a slower one is a failed attempt (counted in ``timeouts``).
    step_timeout: float = 10.0
    #: ``degrade``: the plugin that takes this one's traffic; refusals name it.
    fallback: str | None = None

    def __post_init__(self) -> None:
        if not self.steps:
            raise _invalid("steps", "to name at least one step", self.steps)
        if len(set(self.steps)) != len(self.steps):
            raise _invalid("steps", "to name each step at most once", self.steps)
        if "quarantine" in self.steps and self.steps[-1] != "quarantine":
            raise _invalid("steps", "to end with `quarantine` when it names it", self.steps)
        if not (math.isfinite(self.step_timeout) and self.step_timeout > 0.0):
            raise _invalid("step_timeout", "to be a finite number of seconds > 0",
                           self.step_timeout)  # fmt: skip
        if self.fallback is not None and not self.fallback:
            raise _invalid("fallback", "to be a plugin name or left out", self.fallback)


class StepStats(msgspec.Struct, frozen=True, kw_only=True):
    """One step of a plugin's ladder: how often it ran and how it went."""

    #: Times it ran (not counting skips), and of those: worked, failed (raised or timed out).
    attempts: int = 0
    successes: int = 0
    failures: int = 0
    #: Attempts cut at ``step_timeout`` (counted in ``failures`` too).
    timeouts: int = 0
    #: Times it was skipped because it does not apply to the plugin (yet).
    not_available: int = 0


class RecoveryStats(msgspec.Struct, frozen=True, kw_only=True):
    """A plugin's recovery ladder at the moment of the call."""

    #: The step running now ("repairing"), "backoff" while waiting before the next one,
    #: None when idle.
    repairing: str | None
    #: Times the ladder started (a trip or a liveness failure while it was idle) and
    #: times it ended with the breaker closed again.
    episodes: int
    recoveries: int
    #: Seconds from the start of the last recovered episode to its breaker closing.
    last_recovery_seconds: float | None
    #: The plugin whose name refusals give since a ``degrade`` step; None if not degraded.
    degraded_to: str | None
    #: Per step, in the ladder's order.
    steps: dict[str, StepStats]
    #: Why the last failed step failed; None before any failure.
    last_failure: str | None
