"""Hypothesis strategies shared by the decoder tests (headers and whole frames)."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st


def mutations(base: bytes) -> st.SearchStrategy[bytes]:
    """``base`` with one to four random edits: flipped, set, inserted, deleted,
    truncated or appended bytes - near misses of a valid encoding."""

    @st.composite
    def mutate(draw: Any) -> bytes:
        buf = bytearray(base)
        for _ in range(draw(st.integers(1, 4))):
            op = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate", "append"]))
            pos = draw(st.integers(0, max(len(buf) - 1, 0)))
            if op == "flip" and buf:
                buf[pos] ^= 1 << draw(st.integers(0, 7))
            elif op == "set" and buf:
                buf[pos] = draw(st.integers(0, 255))
            elif op == "insert":
                buf[pos:pos] = draw(st.binary(min_size=1, max_size=9))
            elif op == "delete" and buf:
                del buf[pos : pos + draw(st.integers(1, 3))]
            elif op == "truncate":
                del buf[pos:]
            elif op == "append":
                buf += draw(st.binary(min_size=1, max_size=9))
        return bytes(buf)

    return mutate()
