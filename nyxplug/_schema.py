"""msgspec decode failures in TOML words: ``(key, problem)`` for config and manifest errors.

The host configuration (``nyxplug.config``) and the plugin manifest decode TOML into
msgspec structs. When that fails, :func:`explain_decode_error` says which key, what was
expected and what was found, and suggests the valid key for a typo.

It relies on facts rather than on msgspec's wording wherever it can: the document's bytes
(UTF-8 and TOML syntax are checked again here, with the standard library), the exception
msgspec chains (an :class:`_Invalid` raised by a struct's ``__post_init__``), the structs'
own fields (``msgspec.structs.fields``) and the decoded document. Two things only msgspec's
message carries: where the problem is (`` - at `$.plugin.id` ``) and, for a type or
constraint problem, what was expected. Those are read from its text, and
``tests/test_schema.py`` feeds the real msgspec one bad input per translated message, so a
msgspec release that words them differently fails that test, naming its version.
"""

from __future__ import annotations

import difflib
import math
import re
import tomllib
import types
import typing
from collections.abc import Mapping
from typing import Annotated, Any, Literal

import msgspec

__all__ = ("explain_decode_error",)

_AT_ROOT_RE = re.compile(r"^(?P<problem>.*) - at `\$(?P<path>[^`]*)`$", re.DOTALL)
_DICT_KEY_RE = re.compile(r"^(?P<problem>.*) - at `key` in `\$(?P<path>[^`]*)`$", re.DOTALL)
_PATH_PART_RE = re.compile(r"\.([^.\[]+)|\[(\d+)\]")


class _Invalid(ValueError):
    """Raised by a struct's ``__post_init__`` check; msgspec wraps it in a ``ValidationError``.

    msgspec chains it as the ``ValidationError``'s ``__cause__``, so :func:`explain_decode_error`
    reads the exact ``key`` (relative to the struct) and the ``problem`` from it.
    """

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"{problem} - at `{key}`")
        self.key = key
        self.problem = problem


def _check_finite(key: str, value: float) -> None:
    if not math.isfinite(value):
        raise _Invalid(key, f"Expected a finite number of seconds, got `{value}`")


def explain_decode_error(
    exc: msgspec.DecodeError | UnicodeDecodeError,
    document: bytes | Mapping[str, Any],
    root: type[msgspec.Struct],
) -> tuple[str, str]:
    """Turn a ``msgspec.toml.decode`` / ``msgspec.convert`` failure into ``(key, problem)``.

    ``document`` is what was decoded: the TOML bytes (read again here, so the answer does not
    depend on how msgspec reports bad UTF-8 or TOML) or the data given to ``convert``.
    """
    if isinstance(document, bytes):
        try:
            text = document.decode()
        except UnicodeDecodeError as bad:
            return (
                "$",
                f"Expected UTF-8 text, got byte 0x{document[bad.start]:02x} at offset {bad.start}",
            )
        try:
            raw: Any = tomllib.loads(text)
        except tomllib.TOMLDecodeError as bad:
            return "$", f"Invalid TOML: {bad}"
    else:
        raw = document
    if not isinstance(exc, msgspec.ValidationError):  # valid TOML that msgspec still refused
        return "$", f"Invalid TOML: {exc}"
    message = str(exc)
    if match := _DICT_KEY_RE.match(message):
        return _dotted(_split_path(match["path"]), "<key>"), match["problem"]
    parts: list[str] = []
    if match := _AT_ROOT_RE.match(message):
        message, parts = match["problem"], _split_path(match["path"])
    cause = exc.__cause__
    if isinstance(cause, _Invalid):
        return _dotted(parts, cause.key), cause.problem
    found = _value_at(raw, parts)
    expected = _type_at(root, parts)
    if _is_struct(expected) and isinstance(found, dict):
        if explained := _explain_table(expected, found, parts):
            return explained
    if typing.get_origin(expected) is Literal and isinstance(found, str):
        choices = ", ".join(f"`{choice}`" for choice in typing.get_args(expected))
        return _dotted(parts), f"Expected one of {choices}, got {_show(found)}"
    # A type or constraint problem: msgspec's words, in TOML's terms.
    message = re.sub(r"matching regex '(.*)'$", r"matching `\1`", message)
    message = message.replace("`object`", "`table`").replace(" | null`", "`")
    if ", got " not in message:
        message = f"{message}, got {_show(found)}"
    return _dotted(parts), message


def _explain_table(
    struct: type[msgspec.Struct], table: dict[str, Any], parts: list[str]
) -> tuple[str, str] | None:
    """A table msgspec refused as a whole: a key it does not know, or one it lacks."""
    fields = msgspec.structs.fields(struct)
    known = [field.encode_name for field in fields]
    for name, value in table.items():
        if name in known:
            continue
        unknown = [*parts, name]
        kind = "table" if isinstance(value, dict) else "key"
        shown = f"[{_dotted(unknown)}]" if kind == "table" else name
        close = difflib.get_close_matches(name, known, n=1)
        if close:
            hint = f" (did you mean `{close[0]}`?)"
        else:
            hint = ", expected one of " + ", ".join(f"`{key}`" for key in known)
        return _dotted(unknown), f"Unknown {kind} `{shown}`{hint}"
    for field in fields:
        if field.required and field.encode_name not in table:
            missing = [*parts, field.encode_name]
            if _is_struct(_unwrap(field.type)):
                return _dotted(missing), f"Missing required table `[{_dotted(missing)}]`"
            return _dotted(missing), f"Missing required key `{field.encode_name}`"
    return None


def _split_path(path: str) -> list[str]:
    return [name if name else f"[{index}]" for name, index in _PATH_PART_RE.findall(path)]


def _dotted(parts: list[str], *more: str) -> str:
    text = ""
    for part in [*parts, *more]:
        text += part if part.startswith("[") or not text else f".{part}"
    return text or "$"


def _value_at(raw: Any, parts: list[str]) -> Any:
    for part in parts:
        if part.startswith("[") and isinstance(raw, list):
            index = int(part[1:-1])
            raw = raw[index] if index < len(raw) else None
        elif isinstance(raw, dict):
            raw = raw.get(part)
        else:
            return None
    return raw


def _show(value: Any) -> str:
    text = value if isinstance(value, str) else repr(value)
    if isinstance(value, bool):
        text = "true" if value else "false"
    if len(text) > 60:
        text = text[:57] + "..."
    return f"`{text}`"


def _unwrap(tp: Any) -> Any:
    """The type under ``Annotated`` and an optional table's ``| None``."""
    while True:
        origin = typing.get_origin(tp)
        if origin is Annotated:
            tp = typing.get_args(tp)[0]
        elif origin in (typing.Union, types.UnionType):
            others = [arg for arg in typing.get_args(tp) if arg is not type(None)]
            if len(others) != 1:
                return tp
            tp = others[0]
        else:
            return tp


def _is_struct(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, msgspec.Struct)


def _type_at(root: type[msgspec.Struct], parts: list[str]) -> Any:
    tp: Any = root
    for part in parts:
        if part.startswith("["):  # an item of an array (of tables): its element type
            args = typing.get_args(tp)
            is_array = typing.get_origin(tp) in (tuple, list) and args
            tp = _unwrap(args[0]) if is_array else None
            continue
        if not _is_struct(tp):
            return None
        fields = {field.encode_name: field.type for field in msgspec.structs.fields(tp)}
        tp = _unwrap(fields.get(part))
    return tp
