"""The sticky routing hash and the route record shared by both dispatcher twins.

A plugin with a rollout has a *route*: its stable version, a candidate version and the
candidate's share. Each frame's route key picks the lane with one fixed, specified hash
(never Python's ``hash()``, which is salted per process by ``PYTHONHASHSEED``)::

    bits  = key mod 2**64                    if key is an int
          = FNV-1a-64(key bytes)             if key is bytes-like (a str: its UTF-8)
    point = splitmix64(bits XOR salt) >> 11  (53 bits)
    lane  = candidate if point < threshold else stable
    threshold = round(weight / 100 * 2**53)  (weight in percent, 0..100)

``splitmix64(x)`` is Vigna's SplitMix64 output for state ``x``: ``z = x + 0x9E3779B97F4A7C15``,
``z = (z ^ z >> 30) * 0xBF58476D1CE4E5B9``, ``z = (z ^ z >> 27) * 0x94D049BB133111EB``,
``z ^ z >> 31`` (all mod 2**64). The same key and salt give the same lane in every
process and host; raising the weight only moves keys from stable to candidate (the
threshold grows), never back. ``tests/data/route_vectors.json`` holds the test vectors
both twins are checked against. The compiled twin computes the same in C.

Keyless frames (``key=None``) are not hashed: they are spread by error diffusion, an
accumulator ``acc`` on the route (0 when a route is set) that each keyless frame moves::

    acc += threshold
    lane = candidate, acc -= 2**53   if acc >= 2**53
         = stable                    otherwise

So of ``n`` keyless frames the weight decides at one threshold the candidate takes
exactly ``(acc0 + n * threshold) // 2**53`` (``acc0``: the accumulator before them, 0 for
a new route), evenly spaced (weight 50: every second frame; 10: one in ten, from the 11th
frame on, as ten thresholds fall 2 short of 2**53; 33.3: every third, 999 in 3000): the
same sequence in every process and both twins, and no hash to pay. ``set_route`` with
the same stable and candidate (a weight change; or new rules, salt or shadow) keeps
``acc``: the new threshold applies from the next keyless frame, and no share is lost or
doubled at the change; a new candidate or stable starts at 0. A/B rules are tried first,
as for keyed frames (a keyless frame never matches a key set); a frame a rule takes
leaves ``acc`` as it is. One session's keyless frames cross lanes - give a key to keep a
session on one version.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final, final

__all__ = (
    "BASE_VERSION",
    "MAX_VERSIONS",
    "MatchRule",
    "RouteInfo",
    "check_key",
    "check_version",
    "fnv1a64",
    "key_bits",
    "route_point",
    "route_salt",
    "splitmix64",
    "weight_threshold",
)

#: The version name of the lane ``load_plugin`` created.
BASE_VERSION: Final = "base"
#: Loaded versions of one plugin, the base lane included.
MAX_VERSIONS: Final = 5
#: ``point < POINT_RANGE`` for every point; a threshold of ``POINT_RANGE`` takes every key.
POINT_RANGE: Final = 1 << 53

_MASK64 = (1 << 64) - 1
_FNV_OFFSET = 0xCBF29CE484222325
_FNV_PRIME = 0x100000001B3


def splitmix64(x: int) -> int:
    """SplitMix64's output for state ``x`` (its ``next()`` after one increment)."""
    z = (x + 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def fnv1a64(data: bytes) -> int:
    """FNV-1a, 64 bits (offset basis 0xcbf29ce484222325, prime 0x100000001b3)."""
    h = _FNV_OFFSET
    for byte in data:
        h = ((h ^ byte) * _FNV_PRIME) & _MASK64
    return h


def check_key(key: object) -> None:
    """TypeError unless ``key`` is a route key: an int, a str or bytes-like."""
    if not isinstance(key, (int, str, bytes, bytearray, memoryview)):
        raise TypeError(
            f"Expected `key` to be an int, str or bytes-like, got {type(key).__name__} - "
            "pass a connection or session id"
        )


def key_bits(key: int | str | bytes | bytearray | memoryview) -> int:
    """The 64 bits a route key hashes to before the salt (see the module docstring)."""
    if isinstance(key, int):
        return key & _MASK64
    if isinstance(key, str):
        return fnv1a64(key.encode("utf-8", "surrogatepass"))
    check_key(key)
    return fnv1a64(bytes(key))


def route_point(key: int | str | bytes | bytearray | memoryview, salt: int = 0) -> int:
    """The key's 53-bit point on the route: the candidate takes points below its threshold."""
    return splitmix64(key_bits(key) ^ (salt & _MASK64)) >> 11


def weight_threshold(weight: float) -> int:
    """The threshold for a candidate ``weight`` in percent (0..100)."""
    if isinstance(weight, bool) or not isinstance(weight, (int, float)):
        raise TypeError(f"Expected `weight` to be a number, got {type(weight).__name__}")
    if not 0.0 <= weight <= 100.0:
        raise ValueError(f"Expected `weight` in 0..100 (percent), got {weight!r}")
    return round(weight * POINT_RANGE / 100)


def route_salt(plugin_id: int, candidate: str) -> int:
    """The default salt of a rollout: a new cohort per candidate, the same on every host."""
    return fnv1a64(f"{plugin_id}/{candidate}".encode())


def check_version(version: object) -> str:
    """A version name: a non-empty str of at most 64 characters."""
    if not isinstance(version, str):
        raise TypeError(f"Expected `version` to be a str, got {type(version).__name__}")
    if not 1 <= len(version) <= 64:
        raise ValueError(f"Expected `version` of 1..64 characters, got {version!r}")
    return version


@final
class MatchRule:
    """An A/B rule: the frames it matches go to ``version``, whatever the weight.

    Every condition given must hold: ``flags & flags_mask == flags`` (header flags),
    the header ``data`` starts with ``data_prefix``, the frame type is ``frame_type``,
    the route key is one of ``keys`` (compared by their hash bits, so ``"a"`` and
    ``b"a"`` are one key; a keyless frame never matches a key set). Rules are tried in
    order before the weight; the first match wins.
    """

    __slots__ = ("version", "flags_mask", "flags", "data_prefix", "frame_type", "keys", "_bits")

    def __init__(
        self,
        version: str,
        *,
        flags_mask: int = 0,
        flags: int = 0,
        data_prefix: bytes = b"",
        frame_type: int | None = None,
        keys: Iterable[int | str | bytes] | None = None,
    ) -> None:
        self.version = check_version(version)
        for name, value in (("flags_mask", flags_mask), ("flags", flags)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"Expected `{name}` to be an int, got {type(value).__name__}")
            if not 0 <= value <= 255:
                raise ValueError(f"Expected `{name}` in 0..255, got {value} - in MatchRule")
        if flags & ~flags_mask:
            raise ValueError(
                f"Expected `flags` within `flags_mask` ({flags_mask:#04x}), got {flags:#04x} - "
                "in MatchRule; such a rule could never match"
            )
        if not isinstance(data_prefix, (bytes, bytearray, memoryview)):
            raise TypeError(
                f"Expected `data_prefix` to be bytes-like, got {type(data_prefix).__name__}"
            )
        if frame_type is not None and (
            isinstance(frame_type, bool)
            or not isinstance(frame_type, int)
            or not 0 <= frame_type <= 255
        ):
            raise ValueError(f"Expected `frame_type` in 0..255 or None, got {frame_type!r}")
        self.flags_mask = flags_mask
        self.flags = flags
        self.data_prefix = bytes(data_prefix)
        self.frame_type = frame_type
        self.keys = None if keys is None else tuple(keys)
        self._bits = None if self.keys is None else frozenset(key_bits(k) for k in self.keys)

    def matches(self, flags: int, data: bytes, frame_type: int, bits: int | None) -> bool:
        """Whether a frame with these header flags and data, type and key bits matches."""
        if flags & self.flags_mask != self.flags:
            return False
        if self.data_prefix and not data.startswith(self.data_prefix):
            return False
        if self.frame_type is not None and frame_type != self.frame_type:
            return False
        return self._bits is None or (bits is not None and bits in self._bits)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, MatchRule):
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def _key(self) -> tuple[object, ...]:
        return (
            self.version, self.flags_mask, self.flags, self.data_prefix, self.frame_type,
            self._bits,
        )  # fmt: skip

    def __repr__(self) -> str:
        return (
            f"MatchRule({self.version!r}, flags_mask={self.flags_mask:#04x}, "
            f"flags={self.flags:#04x}, data_prefix={self.data_prefix!r}, "
            f"frame_type={self.frame_type!r}, keys={self.keys!r})"
        )


@final
class RouteInfo:
    """A snapshot of one plugin's route: which versions take frames, and how."""

    __slots__ = (
        "plugin_id", "stable", "candidate", "weight", "salt", "routed", "rules", "shadow",
        "shadowed", "shadow_dropped",
    )  # fmt: skip

    def __init__(
        self,
        plugin_id: int,
        stable: str,
        candidate: str | None,
        weight: float,
        salt: int,
        routed: dict[str, int],
        rules: tuple[MatchRule, ...] = (),
        shadow: str | None = None,
        shadowed: dict[str, int] | None = None,
        shadow_dropped: dict[str, int] | None = None,
    ) -> None:
        self.plugin_id = plugin_id
        self.stable = stable
        self.candidate = candidate
        self.weight = weight
        self.salt = salt
        #: Frames the router sent to each loaded version while a route was set.
        self.routed = routed
        self.rules = rules
        #: The version that gets a copy of the other frames (None: no mirroring).
        self.shadow = shadow
        #: Copies each version was given, and copies it refused (full queue, breaker
        #: not closed); both also count in its own stats, never in frames_dispatched.
        self.shadowed = {} if shadowed is None else shadowed
        self.shadow_dropped = {} if shadow_dropped is None else shadow_dropped

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RouteInfo):
            return NotImplemented
        return self._key() == other._key()

    __hash__ = None  # type: ignore[assignment]

    def _key(self) -> tuple[object, ...]:
        return (
            self.plugin_id, self.stable, self.candidate, self.weight, self.salt, self.routed,
            self.rules, self.shadow, self.shadowed, self.shadow_dropped,
        )  # fmt: skip

    def __repr__(self) -> str:
        return (
            f"RouteInfo(plugin_id={self.plugin_id}, stable={self.stable!r}, "
            f"candidate={self.candidate!r}, weight={self.weight!r}, salt={self.salt:#x}, "
            f"routed={self.routed!r}, rules={self.rules!r}, shadow={self.shadow!r}, "
            f"shadowed={self.shadowed!r}, shadow_dropped={self.shadow_dropped!r})"
        )
