"""The msgspec error translator against the real msgspec, one test per message it reads.

``nyxplug._schema`` reads two things from msgspec's message text: where the problem is and,
for a type or constraint problem, what was expected. Each test here feeds the installed
msgspec one bad input and first checks msgspec's own words: when a msgspec release words
them differently, the test fails naming msgspec and its version, before a user sees a
garbled config or manifest error. Everything else the translator takes from data (the
bytes, the chained ``__post_init__`` error, the structs' fields) is covered here too.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

import msgspec
import pytest
from msgspec import Meta

from nyxplug._schema import _Invalid, explain_decode_error


class Inner(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    count: int = 0
    window: int = 0

    def __post_init__(self) -> None:
        if self.window < 0:
            raise _Invalid("window", f"Expected seconds >= 0, got {self.window}")


class Root(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    inner: Inner = Inner()
    needed: Inner | None = None
    tags: tuple[int, ...] = ()
    deps: dict[Annotated[str, Meta(pattern="^[a-z]+$")], str] = {}
    name: Annotated[str, Meta(pattern="^[a-z]+$")] = "x"
    capacity: Annotated[int, Meta(ge=1)] | None = None
    mode: Literal["fast", "slow"] = "fast"


class Required(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    inner: Inner
    name: str


def msgspec_says(document: Any, root: type[msgspec.Struct], wording: str) -> msgspec.DecodeError:
    """Convert ``document``; msgspec's message must match ``wording`` (an anchored regex)."""
    with pytest.raises(msgspec.ValidationError) as caught:
        msgspec.convert(document, type=root)
    message = str(caught.value)
    if not re.fullmatch(wording, message):
        pytest.fail(
            f"msgspec {msgspec.__version__} words this error differently from what "
            f"nyxplug/_schema.py reads: expected /{wording}/, got {message!r} - "
            "update the translator (and this test) for this msgspec release"
        )
    return caught.value


def test_location_of_a_nested_key() -> None:
    document = {"inner": {"count": "many"}}
    exc = msgspec_says(document, Root, r"Expected `int`, got `str` - at `\$\.inner\.count`")
    assert explain_decode_error(exc, document, Root) == (
        "inner.count",
        "Expected `int`, got `str`",
    )


def test_location_in_an_array() -> None:
    document = {"tags": [1, "two"]}
    exc = msgspec_says(document, Root, r"Expected `int`, got `str` - at `\$\.tags\[1\]`")
    assert explain_decode_error(exc, document, Root) == ("tags[1]", "Expected `int`, got `str`")


def test_location_of_a_table_key() -> None:
    document = {"deps": {"Bad": "1.0"}}
    exc = msgspec_says(
        document, Root, r"Expected `str` matching regex '\^\[a-z\]\+\$' - at `key` in `\$\.deps`"
    )
    assert explain_decode_error(exc, document, Root) == (
        "deps.<key>",
        "Expected `str` matching regex '^[a-z]+$'",
    )


def test_pattern_constraint_without_the_found_value() -> None:
    document = {"name": "Bad"}
    exc = msgspec_says(
        document, Root, r"Expected `str` matching regex '\^\[a-z\]\+\$' - at `\$\.name`"
    )
    assert explain_decode_error(exc, document, Root) == (
        "name",
        "Expected `str` matching `^[a-z]+$`, got `Bad`",
    )


def test_bound_constraint_without_the_found_value() -> None:
    document = {"capacity": 0}
    exc = msgspec_says(document, Root, r"Expected `int` >= 1 - at `\$\.capacity`")
    assert explain_decode_error(exc, document, Root) == (
        "capacity",
        "Expected `int` >= 1, got `0`",
    )


def test_optional_type_spoken_without_null() -> None:
    document = {"capacity": "lots"}
    exc = msgspec_says(document, Root, r"Expected `int \| null`, got `str` - at `\$\.capacity`")
    assert explain_decode_error(exc, document, Root) == ("capacity", "Expected `int`, got `str`")


def test_object_spoken_as_table() -> None:
    document = {"inner": 5}
    exc = msgspec_says(document, Root, r"Expected `object`, got `int` - at `\$\.inner`")
    assert explain_decode_error(exc, document, Root) == ("inner", "Expected `table`, got `int`")


def test_unknown_key_found_in_the_table_msgspec_points_at() -> None:
    document = {"inner": {"cuont": 1}}
    exc = msgspec_says(document, Root, r"Object contains unknown field `cuont` - at `\$\.inner`")
    assert explain_decode_error(exc, document, Root) == (
        "inner.cuont",
        "Unknown key `cuont` (did you mean `count`?)",
    )


def test_unknown_table_at_the_root() -> None:
    document = {"zzz": {}}
    exc = msgspec_says(document, Root, r"Object contains unknown field `zzz`")
    assert explain_decode_error(exc, document, Root) == (
        "zzz",
        "Unknown table `[zzz]`, expected one of `inner`, `needed`, `tags`, `deps`, `name`, "
        "`capacity`, `mode`",
    )


def test_missing_table_and_key_from_the_struct_fields() -> None:
    exc = msgspec_says({"name": "x"}, Required, r"Object missing required field `inner`")
    assert explain_decode_error(exc, {"name": "x"}, Required) == (
        "inner",
        "Missing required table `[inner]`",
    )
    exc = msgspec_says({"inner": {}}, Required, r"Object missing required field `name`")
    assert explain_decode_error(exc, {"inner": {}}, Required) == (
        "name",
        "Missing required key `name`",
    )


def test_literal_choices_from_the_type() -> None:
    document = {"mode": "medium"}
    exc = msgspec_says(document, Root, r"Invalid enum value 'medium' - at `\$\.mode`")
    assert explain_decode_error(exc, document, Root) == (
        "mode",
        "Expected one of `fast`, `slow`, got `medium`",
    )


def test_post_init_problem_is_chained_not_parsed() -> None:
    document = {"inner": {"window": -1}}
    exc = msgspec_says(
        document, Root, r"Expected seconds >= 0, got -1 - at `window` - at `\$\.inner`"
    )
    if not isinstance(exc.__cause__, _Invalid):
        pytest.fail(
            f"msgspec {msgspec.__version__} no longer chains a __post_init__ ValueError as "
            f"the ValidationError's __cause__ (got {exc.__cause__!r}) - update nyxplug/_schema.py"
        )
    assert explain_decode_error(exc, document, Root) == (
        "inner.window",
        "Expected seconds >= 0, got -1",
    )


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b"name = 'ok'\nmode = '\xff'\n", "Expected UTF-8 text, got byte 0xff at offset 20"),
        (b"name = \n", "Invalid TOML: Invalid value (at line 1, column 8)"),
    ],
    ids=["not-utf8", "not-toml"],
)
def test_bytes_are_read_again_whatever_msgspec_raised(data: bytes, problem: str) -> None:
    with pytest.raises((msgspec.DecodeError, UnicodeDecodeError)) as caught:
        msgspec.toml.decode(data, type=Root)
    assert explain_decode_error(caught.value, data, Root) == ("$", problem)


def test_toml_bytes_give_the_found_value() -> None:
    data = b"[inner]\ncount = 'many'\n"
    with pytest.raises(msgspec.ValidationError) as caught:
        msgspec.toml.decode(data, type=Root)
    assert explain_decode_error(caught.value, data, Root) == (
        "inner.count",
        "Expected `int`, got `str`",
    )
