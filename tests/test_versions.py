"""Semantic versions and version ranges (``nyxplug.source.versions``)."""

from __future__ import annotations

import pickle
import re

import pytest
import semver
from hypothesis import given
from hypothesis import strategies as st

from nyxplug._errors import NyxplugError
from nyxplug.source.versions import (
    PLUGIN_API_VERSION,
    VersionError,
    VersionRange,
    parse_version,
)


def exact(message: str) -> str:
    """An anchored regex matching ``message`` literally."""
    return f"^{re.escape(message)}$"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0.0.0", semver.Version(0, 0, 0)),
        ("1.2.3", semver.Version(1, 2, 3)),
        ("10.20.30", semver.Version(10, 20, 30)),
        ("1.2.3-rc.1", semver.Version(1, 2, 3, "rc.1")),
        ("1.2.3+build.5", semver.Version(1, 2, 3, None, "build.5")),
        ("1.2.3-alpha.1+b.2", semver.Version(1, 2, 3, "alpha.1", "b.2")),
    ],
)
def test_parse_version(text: str, expected: semver.Version) -> None:
    version = parse_version(text)
    assert isinstance(version, semver.Version)
    assert version.to_tuple() == expected.to_tuple()


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("1.2", "it needs all three of MAJOR.MINOR.PATCH"),
        ("1", "it needs all three of MAJOR.MINOR.PATCH"),
        ("v1.2.3", "drop the leading `v`"),
        (" 1.2.3", "remove the surrounding whitespace"),
        ("01.2.3", "numbers must not have leading zeros"),
        ("1.2.03", "numbers must not have leading zeros"),
        ("1.2.3.4", "it is not of the form MAJOR.MINOR.PATCH[-prerelease][+build]"),
        ("1.2.3-", "it is not of the form MAJOR.MINOR.PATCH[-prerelease][+build]"),
        ("1.x.0", "it is not of the form MAJOR.MINOR.PATCH[-prerelease][+build]"),
        ("", "it is not of the form MAJOR.MINOR.PATCH[-prerelease][+build]"),
    ],
)
def test_parse_version_rejects(text: str, problem: str) -> None:
    with pytest.raises(
        VersionError,
        match=exact(f"Expected a semantic version like `1.2.3`, got `{text}` - {problem}"),
    ):
        parse_version(text)


def test_parse_version_rejects_non_string() -> None:
    with pytest.raises(
        VersionError,
        match=r"^Expected a semantic version like `1\.2\.3`, got `123` - not a string but `int`$",
    ):
        parse_version(123)  # type: ignore[arg-type]


def test_version_error_is_a_value_error_and_pickles() -> None:
    with pytest.raises(VersionError) as info:
        parse_version("1.2")
    error = info.value
    assert isinstance(error, NyxplugError)
    assert isinstance(error, ValueError)
    assert (error.text, error.is_range) == ("1.2", False)
    clone = pickle.loads(pickle.dumps(error))
    assert str(clone) == str(error)
    assert clone.args == error.args


def test_plugin_api_version_is_strict_semver() -> None:
    assert parse_version(PLUGIN_API_VERSION) == semver.Version(1, 0, 0)


@pytest.mark.parametrize(
    ("text", "normalized"),
    [
        ("*", "*"),
        ("", "*"),
        ("  ", "*"),
        (">=1.2.0", ">=1.2.0"),
        (">=1.2", ">=1.2.0"),
        (">=1", ">=1.0.0"),
        (">=1.0, <2", ">=1.0.0, <2.0.0"),
        (" >= 1.0 ,<2 ", ">=1.0.0, <2.0.0"),
        (">1, <=3.4, ==3.4.0, !=3.0.1", ">1.0.0, <=3.4.0, ==3.4.0, !=3.0.1"),
        ("==1.2.3-rc.1", "==1.2.3-rc.1"),
        ("^1.2.3", ">=1.2.3, <2.0.0"),
        ("^0.2.3", ">=0.2.3, <0.3.0"),
        ("^0.0.3", ">=0.0.3, <0.0.4"),
        ("^0.0.0", ">=0.0.0, <0.0.1"),
        ("^1.2", ">=1.2.0, <2.0.0"),
        ("^0.0", ">=0.0.0, <0.1.0"),
        ("^0", ">=0.0.0, <1.0.0"),
        ("^1.2.3-beta.2", ">=1.2.3-beta.2, <2.0.0"),
        ("~1.2.3", ">=1.2.3, <1.3.0"),
        ("~0.2.3", ">=0.2.3, <0.3.0"),
        ("~1.2", ">=1.2.0, <1.3.0"),
        ("~1", ">=1.0.0, <2.0.0"),
        ("^1.2, !=1.5.0", ">=1.2.0, <2.0.0, !=1.5.0"),
    ],
)
def test_range_normalizes(text: str, normalized: str) -> None:
    parsed = VersionRange.parse(text)
    assert str(parsed) == normalized
    assert VersionRange.parse(normalized) == parsed


@pytest.mark.parametrize(
    ("text", "version", "expected"),
    [
        ("*", "0.0.1", True),
        ("*", "3.0.0-rc.1", True),
        (">=1.0, <2", "1.0.0", True),
        (">=1.0, <2", "1.9.99", True),
        (">=1.0, <2", "2.0.0", False),
        (">=1.0, <2", "0.9.9", False),
        (">=1.0, <2", "1.5.0+build.7", True),
        (">1.0", "1.0.0", False),
        ("<=1.0", "1.0.0", True),
        ("==1.2.3", "1.2.3+meta", True),
        ("!=1.2.3", "1.2.3", False),
        ("!=1.2.3", "1.2.4", True),
        ("^1.2.3", "1.2.2", False),
        ("^1.2.3", "1.99.0", True),
        ("^0.2.3", "0.2.9", True),
        ("^0.2.3", "0.3.0", False),
        ("^0.0.3", "0.0.3", True),
        ("^0.0.3", "0.0.4", False),
        ("~1.2.3", "1.2.9", True),
        ("~1.2.3", "1.3.0", False),
        # Pre-releases only match a comparator naming the same MAJOR.MINOR.PATCH.
        (">=1.0, <2", "2.0.0-rc.1", False),
        (">=1.0, <2", "1.5.0-beta", False),
        ("^1.2.3-beta.2", "1.2.3-beta.3", True),
        ("^1.2.3-beta.2", "1.2.3-alpha", False),
        ("^1.2.3-beta.2", "1.2.4-beta", False),
        ("^1.2.3-beta.2", "1.2.3", True),
        (">=1.2.3-rc.1, <1.2.3", "1.2.3-rc.2", True),
        ("!=1.2.3-rc.1", "1.2.3-rc.2", False),
    ],
)
def test_range_contains(text: str, version: str, expected: bool) -> None:
    parsed = VersionRange.parse(text)
    assert parsed.contains(version) is expected
    assert parsed.contains(semver.Version.parse(version)) is expected
    assert (version in parsed) is expected


def test_range_contains_rejects_bad_version_text() -> None:
    with pytest.raises(
        VersionError, match=r"^Expected a semantic version like `1\.2\.3`, got `2` - "
    ):
        VersionRange.parse(">=1").contains("2")


def test_range_in_operator_ignores_other_types() -> None:
    assert 1 not in VersionRange.parse("*")


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (
            "1.2.3",
            "`1.2.3` has no operator; write `==1.2.3` for exactly that version"
            " or `^1.2.3` for compatible ones",
        ),
        (">=1.0 <2", "`>=1.0 <2` has a space inside; separate comparisons with commas"),
        (">=1,,<2", "it has an empty comparison between commas"),
        (">=1,", "it has an empty comparison between commas"),
        (">=", "`>=` has no version after its operator"),
        ("=>1", "`=>1` does not start with one of `>=`, `>`, `<=`, `<`, `==`, `!=`, `^`, `~`"),
        (
            "~=1.2",
            "`~=1.2` does not start with one of `>=`, `>`, `<=`, `<`, `==`, `!=`, `^`, `~`"
            " (`~=` is Python's; nyxplug spells it `~`)",
        ),
        ("*, <2", "`*` does not start with one of `>=`, `>`, `<=`, `<`, `==`, `!=`, `^`, `~`"),
        (
            ">=1.2.3+b.1",
            "`>=1.2.3+b.1` has build metadata, which never affects precedence; drop it",
        ),
        (">=1.2-rc", "`>=1.2-rc` has a pre-release, which needs all of MAJOR.MINOR.PATCH"),
        (
            ">=1.x",
            "`1.x` in `>=1.x` is not a version:"
            " it is not of the form MAJOR[.MINOR[.PATCH[-prerelease]]]",
        ),
        ("<01.2", "`01.2` in `<01.2` is not a version: numbers must not have leading zeros"),
    ],
)
def test_range_rejects(text: str, problem: str) -> None:
    message = f"Expected a version range like `>=1.0, <2`, got `{text}` - {problem}"
    with pytest.raises(VersionError, match=exact(message)) as info:
        VersionRange.parse(text)
    assert info.value.is_range


def test_range_is_any() -> None:
    assert VersionRange.parse("*").is_any
    assert not VersionRange.parse(">=0").is_any


versions = st.builds(
    semver.Version,
    st.integers(0, 20),
    st.integers(0, 20),
    st.integers(0, 20),
)


@given(base=versions, candidate=versions)
def test_caret_is_same_leftmost_nonzero(base: semver.Version, candidate: semver.Version) -> None:
    """``^`` keeps the leftmost non-zero number of the base fixed (npm's definition)."""
    if base.major:
        same = candidate.major == base.major
    elif base.minor:
        same = (candidate.major, candidate.minor) == (0, base.minor)
    else:
        same = candidate.to_tuple()[:3] == base.to_tuple()[:3]
    expected = same and candidate >= base
    assert VersionRange.parse(f"^{base}").contains(candidate) is expected


@given(base=versions, candidate=versions)
def test_tilde_is_same_minor(base: semver.Version, candidate: semver.Version) -> None:
    same = (candidate.major, candidate.minor) == (base.major, base.minor)
    assert VersionRange.parse(f"~{base}").contains(candidate) is (same and candidate >= base)
