"""Semantic versions and version ranges for plugin manifests.

Parsing and ordering come from the ``semver`` package (python-semver 3.x), so nyxplug
follows semver.org exactly; this module only adds the small range language manifests
use (``>=1.2, <2``, ``^1.2.3``, ``~1.2``, ``*``) and error messages in nyxplug's grammar.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal, cast

import semver

from .._errors import NyxplugError

__all__ = (
    "PLUGIN_API_VERSION",
    "Comparator",
    "VersionError",
    "VersionRange",
    "parse_version",
)

#: The plugin-API version this nyxplug offers; a manifest's ``api`` range must contain it.
PLUGIN_API_VERSION = "1.0.0"

Operator = Literal[">=", ">", "<=", "<", "==", "!="]

_OPERATOR_RE = re.compile(r"^(>=|<=|==|!=|>|<|\^|~(?!=))\s*(.*)$", re.DOTALL)
_LEADING_ZERO_RE = re.compile(r"(?:^|\.)0\d")
_OPERATORS_TEXT = "`>=`, `>`, `<=`, `<`, `==`, `!=`, `^`, `~`"


class VersionError(NyxplugError, ValueError):
    """A version or a version range did not parse; ``text`` is what was given."""

    def __init__(self, text: str, problem: str, is_range: bool = False) -> None:
        super().__init__(text, problem, is_range)
        self.text = text
        self.problem = problem
        self.is_range = is_range

    def __str__(self) -> str:
        if self.is_range:
            return f"Expected a version range like `>=1.0, <2`, got `{self.text}` - {self.problem}"
        return f"Expected a semantic version like `1.2.3`, got `{self.text}` - {self.problem}"


def parse_version(text: str) -> semver.Version:
    """Parse a strict ``MAJOR.MINOR.PATCH[-pre][+build]`` version (no ``v``, no spaces)."""
    if not isinstance(text, str):
        raise VersionError(repr(text), f"not a string but `{type(text).__name__}`")
    try:
        return semver.Version.parse(text)
    except ValueError:
        raise VersionError(text, _why_not_semver(text)) from None


def _why_not_semver(text: str, partial: bool = False) -> str:
    """Name the likeliest mistake; ``semver`` itself only says "not valid"."""
    if text != text.strip():
        return "remove the surrounding whitespace"
    if text[:1] in ("v", "V"):
        return "drop the leading `v`"
    core = re.split(r"[-+]", text, maxsplit=1)[0]
    parts = core.split(".")
    if all(part.isdigit() for part in parts):
        if _LEADING_ZERO_RE.search(core):
            return "numbers must not have leading zeros"
        if len(parts) < 3 and not partial:
            return "it needs all three of MAJOR.MINOR.PATCH"
    if partial:
        return "it is not of the form MAJOR[.MINOR[.PATCH[-prerelease]]]"
    return "it is not of the form MAJOR.MINOR.PATCH[-prerelease][+build]"


@dataclass(frozen=True, slots=True)
class Comparator:
    """One comparison of a range, such as ``>=1.2.0``."""

    op: Operator
    version: semver.Version

    def matches(self, version: semver.Version) -> bool:
        """Compare by semver precedence (build metadata never counts)."""
        order = version.compare(self.version)
        if self.op == ">=":
            return order >= 0
        if self.op == ">":
            return order > 0
        if self.op == "<=":
            return order <= 0
        if self.op == "<":
            return order < 0
        if self.op == "==":
            return order == 0
        return order != 0

    def __str__(self) -> str:
        return f"{self.op}{self.version}"


@dataclass(frozen=True, slots=True)
class VersionRange:
    """Comparisons that must all hold; no comparisons means any version.

    Pre-releases follow npm's rule, because ``<2.0.0`` should not admit ``2.0.0-rc.1``:
    a pre-release version is contained only if the range also names a pre-release of
    the same ``MAJOR.MINOR.PATCH`` in one of its comparisons (other than ``!=``). The
    any-range ``*`` contains every version, pre-releases included.
    """

    comparators: tuple[Comparator, ...] = ()

    @classmethod
    def parse(cls, text: str) -> VersionRange:
        """Parse ``>=1.2, <2`` / ``^1.2.3`` / ``~1.2`` / ``*`` (or empty) into a range.

        Partial versions are padded with zeros (``>=1.2`` is ``>=1.2.0``); ``^`` and ``~``
        follow npm (``^0.2.3`` is ``>=0.2.3, <0.3.0``, ``~1.2`` is ``>=1.2.0, <1.3.0``).
        """
        if not isinstance(text, str):
            raise VersionError(repr(text), f"not a string but `{type(text).__name__}`", True)
        stripped = text.strip()
        if stripped in ("", "*"):
            return cls()
        comparators: list[Comparator] = []
        for part in stripped.split(","):
            comparators.extend(_parse_part(text, part.strip()))
        return cls(tuple(comparators))

    @property
    def is_any(self) -> bool:
        """True for ``*``: every version is contained."""
        return not self.comparators

    def contains(self, version: semver.Version | str) -> bool:
        """Whether ``version`` (a ``semver.Version`` or strict version text) is in range."""
        if isinstance(version, str):
            version = parse_version(version)
        if not all(comparator.matches(version) for comparator in self.comparators):
            return False
        if version.prerelease is None or self.is_any:
            return True
        core = (version.major, version.minor, version.patch)
        return any(
            comparator.op != "!="
            and comparator.version.prerelease is not None
            and (comparator.version.major, comparator.version.minor, comparator.version.patch)
            == core
            for comparator in self.comparators
        )

    def __contains__(self, version: object) -> bool:
        if not isinstance(version, (semver.Version, str)):
            return False
        return self.contains(version)

    def __str__(self) -> str:
        if self.is_any:
            return "*"
        return ", ".join(str(comparator) for comparator in self.comparators)


def _parse_part(text: str, part: str) -> list[Comparator]:
    if not part:
        raise VersionError(text, "it has an empty comparison between commas", True)
    match = _OPERATOR_RE.match(part)
    if match is None:
        if part[:1].isdigit():
            raise VersionError(
                text,
                f"`{part}` has no operator; write `=={part}` for exactly that version "
                f"or `^{part}` for compatible ones",
                True,
            )
        hint = " (`~=` is Python's; nyxplug spells it `~`)" if part.startswith("~=") else ""
        raise VersionError(
            text, f"`{part}` does not start with one of {_OPERATORS_TEXT}{hint}", True
        )
    op, rest = match.group(1), match.group(2).strip()
    version, given = _parse_partial(text, part, rest)
    if op == "^":
        return [Comparator(">=", version), Comparator("<", _caret_limit(version, given))]
    if op == "~":
        limit = version.bump_major() if given == 1 else version.bump_minor()
        return [Comparator(">=", version), Comparator("<", limit)]
    return [Comparator(cast(Operator, op), version)]


def _parse_partial(text: str, part: str, rest: str) -> tuple[semver.Version, int]:
    """Parse ``1``, ``1.2`` or a full version; also return how many numbers were given."""
    if not rest:
        raise VersionError(text, f"`{part}` has no version after its operator", True)
    if len(rest.split()) > 1:
        raise VersionError(
            text, f"`{part}` has a space inside; separate comparisons with commas", True
        )
    if "+" in rest:
        raise VersionError(
            text, f"`{part}` has build metadata, which never affects precedence; drop it", True
        )
    core, _, pre = rest.partition("-")
    given = core.count(".") + 1
    if pre and given < 3:
        raise VersionError(
            text, f"`{part}` has a pre-release, which needs all of MAJOR.MINOR.PATCH", True
        )
    try:
        version = semver.Version.parse(rest, optional_minor_and_patch=True)
    except ValueError:
        raise VersionError(
            text,
            f"`{rest}` in `{part}` is not a version: {_why_not_semver(rest, partial=True)}",
            True,
        ) from None
    return version, given


def _caret_limit(version: semver.Version, given: int) -> semver.Version:
    """Bump the leftmost non-zero number given (or the last one given, if all are zero)."""
    numbers = (version.major, version.minor, version.patch)[:given]
    position = next((i for i, n in enumerate(numbers) if n), given - 1)
    if position == 0:
        return version.bump_major()
    if position == 1:
        return version.bump_minor()
    return version.bump_patch()
