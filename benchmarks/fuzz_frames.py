"""Fuzz the whole-frame codec and the stream reader with seeded hostile bytes.

    python -m benchmarks.fuzz_frames --count 1000000            # both twins, lockstep
    python -m benchmarks.fuzz_frames --count 1000000 --twin python

Each input is a mutated valid frame (canonical, reordered keys, unknown keys, long
heads), a mutated refusal case, or random bytes. It goes through ``PluginFrame.decode``
and ``PluginFrame.decode_prefix`` of each twin and through a ``FrameReader`` (as one
length-prefixed message, fed in random chunks). The only outcomes allowed are a frame
(``None`` in prefix mode), ``FrameDecodeError`` or ``FrameTooLarge`` (``FramingError``
for the reader); anything else is counted as an untyped error and printed. With both
twins, their outcomes (exception type and text included) must be identical. A crash
ends the process: the seed and count printed first reproduce it.
"""

from __future__ import annotations

import argparse
import importlib
import random
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import cbor2

from nyxplug import FrameDecodeError, FrameError, FrameReader, FrameTooLarge, frame_message

TWINS = {"cython": "nyxplug._dispatch", "python": "nyxplug._dispatch_py"}


def _valid_frames(rng: random.Random, count: int) -> list[bytes]:
    """Valid frames of every accepted shape, built with cbor2 alone."""
    out = []
    for _ in range(count):
        header = {
            "id": rng.choice([0, 1, 23, 24, 255, 256, 65535, 65536, 2**32 - 1]),
            "flags": rng.choice([0, 1, 23, 24, 255]),
            "data": rng.randbytes(rng.choice([0, 1, 4, 23, 24, 300])),
        }
        frame: dict[Any, Any] = {
            "frame_type": rng.choice([0x50, 0x51, 0x52, 0x53, 0x54, 0x5F, 0, 23, 24, 255]),
            "header": header,
            "payload": rng.randbytes(rng.choice([0, 1, 23, 24, 64, 255, 256, 1000])),
        }
        shape = rng.randrange(4)
        if shape == 1:  # keys in another order
            frame = dict(rng.sample(list(frame.items()), 3))
            frame["header"] = dict(rng.sample(list(header.items()), 3))
        elif shape == 2:  # unknown keys with scalar values
            frame["x"] = rng.choice([1, -5, "t", b"b", None, True, 1.5])
            header["y"] = rng.choice([2**64 - 1, "", b"", False])
        out.append(cbor2.dumps(frame))
    return out


def _hostile_seeds() -> list[bytes]:
    base = cbor2.dumps({"frame_type": 0x52, "header": {"id": 1, "flags": 0, "data": b""},
                        "payload": b"abc"})  # fmt: skip
    return [
        b"",
        b"\xa3",
        b"\xbf" + base[1:] + b"\xff",
        b"\xd9\xd9\xf7" + base,
        base + base,
        b"\xa3\x6aframe_type\x18\x52\x66header\x83\x01\x00\x40\x67payload\x40",
        b"\xa3\x6aframe_type\x18\x52\x66header\xa1\x61x\xa0\x67payload\x40",
        b"\xbb" + b"\xff" * 8,
        b"\xa1\x61x" * 50 + b"\x00",
        base[:30] + b"\x5b" + b"\xff" * 8,
    ]


def mutate(rng: random.Random, base: bytes) -> bytes:
    """1-4 random edits of ``base``: bit flips, byte sets, inserts, cuts, truncation,
    appends (shared by the session fuzzer)."""
    buf = bytearray(base)
    for _ in range(rng.randrange(1, 5)):
        op = rng.randrange(6)
        pos = rng.randrange(len(buf)) if buf else 0
        if op == 0 and buf:
            buf[pos] ^= 1 << rng.randrange(8)
        elif op == 1 and buf:
            buf[pos] = rng.randrange(256)
        elif op == 2:
            buf[pos:pos] = rng.randbytes(rng.randrange(1, 10))
        elif op == 3 and buf:
            del buf[pos : pos + rng.randrange(1, 4)]
        elif op == 4:
            del buf[pos:]
        else:
            buf += rng.randbytes(rng.randrange(1, 10))
    return bytes(buf)


def inputs(seed: int, count: int) -> Iterator[tuple[bytes, int]]:
    """``count`` hostile inputs, each with the ``max_size`` to decode it under."""
    rng = random.Random(seed)
    pool = _valid_frames(rng, 256) + _hostile_seeds()
    limits = [1052672, 1052672, 1052672, 64, 48, 8]
    for _ in range(count):
        kind = rng.randrange(10)
        if kind == 0:
            buf = rng.randbytes(rng.randrange(64))
        elif kind == 1:
            buf = rng.choice(pool)
        else:
            buf = mutate(rng, rng.choice(pool))
        yield buf, rng.choice(limits)


def outcome(fn: Callable[[], Any]) -> tuple[Any, ...]:
    """What one call gave: ("ok", value), or the typed error's class name and text.
    An error outside the contract is returned as ("UNTYPED", ...)."""
    try:
        value = fn()
    except (FrameDecodeError, FrameTooLarge) as exc:
        return (type(exc).__name__, str(exc))
    except Exception as exc:  # noqa: BLE001 - counted and reported, never hidden
        return ("UNTYPED", f"{type(exc).__name__}: {exc}")
    if value is None:
        return ("none",)
    if isinstance(value, tuple):
        frame, used = value
        return ("ok", frame.encode(), used)
    return ("ok", value.encode())


def check(mod: Any, buf: bytes, max_size: int) -> list[tuple[Any, ...]]:
    """The outcomes of ``decode`` and ``decode_prefix`` (plain and with a trailing byte)."""
    frame_cls = mod.PluginFrame
    results = [
        outcome(lambda: frame_cls.decode(buf, max_size=max_size)),
        outcome(lambda: frame_cls.decode_prefix(buf, max_size=max_size)),
        outcome(lambda: frame_cls.decode_prefix(memoryview(buf + b"\x00"), max_size=max_size)),
    ]
    whole, prefix = results[0], results[1]
    if whole[0] == "ok" and (prefix[0] != "ok" or prefix[2] != len(buf)):
        results.append(("UNTYPED", "decode accepted what decode_prefix did not use up"))
    if prefix[0] == "none" and len(buf) >= max_size:
        results.append(("UNTYPED", "decode_prefix asked for more bytes past max_size"))
    return results


def check_reader(rng: random.Random, buf: bytes) -> tuple[Any, ...]:
    """Feed ``buf`` as one framed message (or as raw stream bytes) in random chunks."""
    stream = frame_message(buf) if buf and rng.random() < 0.7 else buf
    reader = FrameReader(max_size=rng.choice([1052672, 64, 16]))
    got: list[bytes] = []
    pos = 0
    try:
        while pos < len(stream):
            step = rng.randrange(1, 40)
            got += reader.feed(stream[pos : pos + step])
            pos += step
            if reader.buffered > reader.max_size + 4:
                return ("UNTYPED", f"reader buffered {reader.buffered} bytes")
        reader.close()
    except FrameError as exc:
        return (type(exc).__name__,)
    except Exception as exc:  # noqa: BLE001 - counted and reported
        return ("UNTYPED", f"{type(exc).__name__}: {exc}")
    return ("ok", len(got))


def run(count: int, seed: int, twins: list[str], *, report: bool = False) -> dict[str, int]:
    """Fuzz ``count`` inputs; return counters (``untyped`` and ``mismatch`` must be 0)."""
    mods = [importlib.import_module(TWINS[name]) for name in twins]
    rng = random.Random(seed ^ 0x5EED)
    counts = {"inputs": 0, "accepted": 0, "refused": 0, "untyped": 0, "mismatch": 0}
    for buf, max_size in inputs(seed, count):
        counts["inputs"] += 1
        per_twin = [check(mod, buf, max_size) for mod in mods]
        for results in per_twin:
            for result in results:
                if result[0] == "UNTYPED":
                    counts["untyped"] += 1
                    if report:
                        print(f"untyped: {result[1]} for {buf.hex()} max_size={max_size}")
        if len(per_twin) == 2 and per_twin[0] != per_twin[1]:
            counts["mismatch"] += 1
            if report:
                print(f"mismatch for {buf.hex()} max_size={max_size}: {per_twin}")
        counts["accepted" if per_twin[0][0][0] == "ok" else "refused"] += 1
        if check_reader(rng, buf)[0] == "UNTYPED":
            counts["untyped"] += 1
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=20261206)
    parser.add_argument("--twin", choices=["both", *TWINS], default="both")
    args = parser.parse_args(argv)
    twins = list(TWINS) if args.twin == "both" else [args.twin]
    print(f"fuzz_frames: {args.count} inputs, seed {args.seed}, twins {', '.join(twins)}")
    sys.stdout.flush()
    started = time.perf_counter()
    counts = run(args.count, args.seed, twins, report=True)
    elapsed = time.perf_counter() - started
    print(", ".join(f"{key} {value}" for key, value in counts.items()), f"in {elapsed:.1f} s")
    return 1 if counts["untyped"] or counts["mismatch"] else 0


if __name__ == "__main__":
    sys.exit(main())
