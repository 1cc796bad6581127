"""Health-check records shared by the manifest, the host configuration and the runtime.

``HealthConfig`` is the ``[health]`` table of a manifest and ``[defaults.health]`` of the
host configuration; ``HealthStats`` what ``nyxplug.plugins.HealthMonitor`` reports. The
checks themselves run in the runtime (``nyxplug/plugins/health.py``).
"""

from __future__ import annotations

import math

import msgspec

__all__ = ("HealthConfig", "HealthStats")


def _invalid(field: str, expected: str, got: object) -> ValueError:
    return ValueError(f"Expected `{field}` {expected}, got {got!r} - in HealthConfig")


class HealthConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """When and how strictly a plugin's health is checked (the ``[health]`` table of a
    manifest, ``[defaults.health]`` of the host configuration)."""

    #: Seconds between checks (scaled by ``1 ± jitter``).
    interval: float = 10.0
    #: Seconds a check may take; a slower one is a failure (counted in ``timeouts``).
    timeout: float = 5.0
    jitter: float = 0.1
    #: Failures in a row that make a probe unhealthy, successes that make it healthy.
    unhealthy_threshold: int = 3
    healthy_threshold: int = 2

    def __post_init__(self) -> None:
        for name in ("interval", "timeout"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0.0):
                raise _invalid(name, "to be a finite number of seconds > 0", value)
        if not 0.0 <= self.jitter < 1.0:
            raise _invalid("jitter", "in [0, 1)", self.jitter)
        for name in ("unhealthy_threshold", "healthy_threshold"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise _invalid(name, "to be an int >= 1", value)


class HealthStats(msgspec.Struct, frozen=True, kw_only=True):
    """A plugin's health checks at the moment of the call."""

    #: The probes' verdicts (a plugin without ``ready()`` is always ready).
    live: bool
    ready: bool
    #: True while the checks hold the plugin's breaker forced open.
    routed_away: bool
    checks: int
    liveness_failures: int
    readiness_failures: int
    #: Checks that took longer than ``timeout`` (counted in the failures too).
    timeouts: int
    #: Why the last failing check failed; None before any failure.
    last_failure: str | None
