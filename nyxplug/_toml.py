"""Bounds on TOML documents (manifests, host configurations) before they are decoded.

``tomllib`` parses nested arrays and inline tables recursively, so a 10 KB
``a = [[[...]]]`` raises ``RecursionError`` (not a decode error) from the middle of the
parser; msgspec's conversion recurses too. ``nesting_problem`` scans the bytes first
and names the line where the nesting goes too deep, so the caller can refuse that one
document with its typed error; ``too_deep`` checks decoded data, where dotted keys
(``a.b.c = 1``) nest without a single bracket.
"""

from __future__ import annotations

import re
import sys
from typing import Any

__all__ = ("MAX_NESTING", "TOO_DEEP", "nesting_problem", "too_deep", "toml_value_problem")

#: Arrays and tables nested deeper than this are refused: far above what a manifest or
#: a host configuration needs, far below what the recursive parsers can take.
MAX_NESTING = 32
#: The problem reported when a parser still runs out of stack (or decoded data nests too
#: deeply): the scan should have caught it first, so no line number is known.
TOO_DEEP = (
    f"Expected arrays and tables nested at most {MAX_NESTING} levels deep, got deeper "
    "nesting - flatten the document"
)

_SPECIAL = re.compile(rb"""[\[\]{}#"']""")
#: Where a string that starts at a match position ends (TOML's four string forms).
_STRING_ENDS = (
    (b'"""', re.compile(rb'"""(?:[^"\\]|\\.|"{1,2}(?!"))*"{3,5}', re.DOTALL)),
    (b"'''", re.compile(rb"'''.*?'{3,5}", re.DOTALL)),
    (b'"', re.compile(rb'"(?:[^"\\\n]|\\.)*"')),
    (b"'", re.compile(rb"'[^'\n]*'")),
)


def nesting_problem(data: bytes, limit: int = MAX_NESTING) -> str | None:
    """Why ``data`` nests arrays and tables too deeply for decoding, or ``None``.

    A lexical scan: brackets and braces outside strings and comments. A document the
    scan cannot follow (an unterminated string) is left to the parser, which stops
    at that error before it reaches any deeper bracket.
    """
    depth = 0
    pos = 0
    while (match := _SPECIAL.search(data, pos)) is not None:
        start = match.start()
        char = data[start : start + 1]
        if char == b"#":
            newline = data.find(b"\n", start)
            if newline < 0:
                return None
            pos = newline + 1
        elif char in b"\"'":
            for opening, pattern in _STRING_ENDS:
                if data.startswith(opening, start):
                    string = pattern.match(data, start)
                    if string is None:
                        return None
                    pos = string.end()
                    break
        elif char in b"[{":
            depth += 1
            if depth > limit:
                line = data.count(b"\n", 0, start) + 1
                return (
                    f"Expected arrays and tables nested at most {limit} levels deep, got "
                    f"deeper nesting at line {line} - flatten that value"
                )
            pos = start + 1
        else:
            depth = max(depth - 1, 0)
            pos = start + 1
    return None


def too_deep(value: Any, limit: int = MAX_NESTING) -> bool:
    """Whether decoded ``value`` nests dicts and lists more than ``limit`` levels (no recursion)."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list | tuple):
            children = item
        else:
            continue
        if depth + 1 > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


def toml_value_problem(exc: ValueError) -> str:
    """The problem to report for a ``ValueError`` that ``tomllib`` let through.

    The one known: an integer longer than Python's int-to-text limit (its message advises
    raising the limit, which is no fix for a document).
    """
    if "integer string conversion" in str(exc):
        digits = sys.get_int_max_str_digits()
        return (
            f"Expected integers of at most {digits} digits, got a longer one - write such a "
            "number as a string"
        )
    return f"Invalid TOML: {exc}"
