"""The ``[rollout]`` table of a manifest and ``[defaults.rollout]`` of the host configuration.

Plain values, checked when the file is read so a bad key is reported with its name; the
runtime turns them into a ``nyxplug.plugins.rollout.RolloutConfig`` (this layer cannot
import the runtime). Every key is optional: a key left out takes the controller's
default (``RolloutConfig``).
"""

from __future__ import annotations

import math
from typing import Literal

import msgspec

from .._schema import _Invalid

__all__ = ("RolloutSettings",)

#: The strategies a table can name (A/B needs match rules, which only code can give).
Strategy = Literal["canary", "blue_green", "split"]


def _rate(key: str, value: float | None) -> None:
    if value is not None and not (math.isfinite(value) and 0.0 <= value <= 1.0):
        raise _Invalid(key, f"Expected `{key}` to be a fraction in 0..1 (0.01 = 1 %), got {value}")


def _seconds(key: str, value: float | None, low: float = 0.0, strict: bool = False) -> None:
    if value is None:
        return
    bad = not math.isfinite(value) or value < low or (strict and value == low)
    if bad:
        bound = f"> {low:g}" if strict else f">= {low:g}"
        raise _Invalid(
            key, f"Expected `{key}` to be a finite number of seconds {bound}, got {value}"
        )


def _count(key: str, value: int | None) -> None:
    if value is not None and value < 1:
        raise _Invalid(key, f"Expected `{key}` to be an integer >= 1, got {value}")


class RolloutSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """How a new version of the plugin is rolled out (``nyxplug.plugins.rollout``).

    ``strategy``: ``canary`` raises the candidate's share through ``steps`` (percent,
    rising), ``blue_green`` switches all traffic at once (``mirror = true``: checked on
    shadow copies first), ``split`` holds one fixed share (``steps = [weight]``) for
    ``hold`` seconds and never promotes by itself. Error rates are fractions.
    """

    strategy: Strategy = "canary"
    steps: tuple[float, ...] | None = None
    iterations: int | None = None
    interval: float | None = None
    min_frames: int | None = None
    max_error_rate: float | None = None
    max_error_rate_over_stable: float | None = None
    #: The candidate's share of slow calls, as its circuit breaker times them (its
    #: ``[breaker] slow_call_duration``); None: not checked.
    max_slow_rate: float | None = None
    max_slow_rate_over_stable: float | None = None
    threshold: int | None = None
    inconclusive_limit: int | None = None
    auto_promote: bool | None = None
    deadline: float | None = None
    rollback_window: float | None = None
    #: ``split`` only: seconds the split is held.
    hold: float | None = None
    #: ``blue_green`` only: judge the candidate on shadow copies before the switch.
    mirror: bool = False
    #: ``"canary"``: a new, higher version of the plugin - a folder that appears, or the
    #: running one's folder or package replaced by another version - starts a rollout
    #: (with these settings) instead of a hot reload. None: hot reload, as without a table.
    on_new_version: Literal["canary"] | None = None

    def __post_init__(self) -> None:
        if self.steps is not None:
            if not self.steps:
                raise _Invalid("steps", "Expected at least one weight in `steps`, got none")
            for weight in self.steps:
                if not (math.isfinite(weight) and 0.0 < weight <= 100.0):
                    raise _Invalid("steps", f"Expected weights in (0, 100] percent, got {weight}")
            if any(b <= a for a, b in zip(self.steps, self.steps[1:], strict=False)):
                raise _Invalid("steps", f"Expected `steps` rising, got {list(self.steps)}")
        for key in ("iterations", "min_frames", "threshold", "inconclusive_limit"):
            _count(key, getattr(self, key))
        _seconds("interval", self.interval, low=0.001)  # a check a millisecond at most
        _seconds("rollback_window", self.rollback_window)
        _seconds("deadline", self.deadline, strict=True)
        _seconds("hold", self.hold, strict=True)
        _rate("max_error_rate", self.max_error_rate)
        _rate("max_error_rate_over_stable", self.max_error_rate_over_stable)
        _rate("max_slow_rate", self.max_slow_rate)
        _rate("max_slow_rate_over_stable", self.max_slow_rate_over_stable)
        interval = self.interval if self.interval is not None else 60.0
        if self.deadline is not None and self.deadline < interval:
            raise _Invalid(
                "deadline",
                f"Expected `deadline` >= `interval` ({interval:g} s), got {self.deadline} - "
                "a state must outlast one check",
            )
        if self.strategy == "split":
            if self.hold is None:
                raise _Invalid(
                    "hold", 'Expected `hold` (seconds) with strategy = "split", got none'
                )
            if self.steps is None or len(self.steps) != 1:
                raise _Invalid(
                    "steps",
                    'Expected one weight in `steps` with strategy = "split" (the fixed share), '
                    f"got {None if self.steps is None else list(self.steps)}",
                )
            if self.auto_promote:
                raise _Invalid(
                    "auto_promote",
                    'Expected no `auto_promote` with strategy = "split" (a split never '
                    "promotes by itself), got true",
                )
        elif self.hold is not None:
            raise _Invalid(
                "hold", f'Expected `hold` only with strategy = "split", got strategy = '
                f'"{self.strategy}"',
            )  # fmt: skip
        if self.mirror and self.strategy != "blue_green":
            raise _Invalid(
                "mirror", f'Expected `mirror` only with strategy = "blue_green", got strategy '
                f'= "{self.strategy}"',
            )  # fmt: skip
        if self.strategy == "blue_green" and self.steps is not None:
            raise _Invalid(
                "steps",
                'Expected no `steps` with strategy = "blue_green" (it switches all traffic at '
                "once), got some",
            )
