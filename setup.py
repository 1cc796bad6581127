"""Build the compiled dispatcher ``nyxplug._dispatch``; all metadata is in pyproject.toml.

Environment flags (each 1/true/yes/on or 0/false/no/off, anything else is an error):

* ``NYXPLUG_NO_EXTENSIONS``  - build nothing: a pure-Python package (the twin is used)
* ``NYXPLUG_DEBUG_BUILD``    - ``-O0 -g3 -UNDEBUG`` and a Cython annotate ``.html``
* ``NYXPLUG_CYTHON_TRACING`` - line tracing for coverage; never benchmark such a build
"""

from __future__ import annotations

import os
import re
import sys

from setuptools import Extension, setup

MIN_CYTHON = (3, 1)
PYX = "nyxplug/_dispatch.pyx"


def env_flag(name: str) -> bool:
    """Strict flag parsing, the same rule as ``nyxplug._impl.env_flag``."""
    raw = os.environ.get(name, "").strip().lower()
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("", "0", "false", "no", "off"):
        return False
    sys.exit(f"nyxplug: expected {name} to be one of 1/true/yes/on or 0/false/no/off, got {raw!r}")


def cythonize_dispatcher(*, debug: bool, tracing: bool) -> list[Extension]:
    """The one extension, with the directives the stubs and tests rely on."""
    try:
        import Cython
        from Cython.Build import cythonize
    except ImportError:
        sys.exit(
            "nyxplug: Cython is needed to build the compiled dispatcher - "
            f"`pip install 'Cython>={MIN_CYTHON[0]}.{MIN_CYTHON[1]},<4'`, "
            "or set NYXPLUG_NO_EXTENSIONS=1 for a pure-Python build"
        )
    found = tuple(int(part) for part in re.findall(r"\d+", Cython.__version__)[:2])
    if found < MIN_CYTHON:
        sys.exit(
            f"nyxplug: expected Cython >= {MIN_CYTHON[0]}.{MIN_CYTHON[1]}, got "
            f"{Cython.__version__} - upgrade it, or set NYXPLUG_NO_EXTENSIONS=1"
        )
    if not os.path.exists(PYX):
        sys.exit(f"nyxplug: {PYX} is missing - set NYXPLUG_NO_EXTENSIONS=1 for a pure-Python build")

    directives = {
        "language_level": 3,
        "binding": True,  # real signatures for inspect and mypy.stubtest
        "embedsignature": True,
        "autotestdict": False,
        "auto_pickle": False,
        "boundscheck": False,
        "wraparound": False,
        "cdivision": True,
        "initializedcheck": False,
    }
    macros: list[tuple[str, str | None]] = []
    if tracing:
        directives["linetrace"] = True
        macros += [("CYTHON_TRACE_NOGIL", "1"), ("CYTHON_USE_SYS_MONITORING", "0")]
    if sys.platform == "win32":
        cflags: list[str] = []
    elif debug:
        cflags = ["-O0", "-g3", "-UNDEBUG"]
    else:
        # -g0: no debug info (Python's own CFLAGS ask for -g), a third of the compile time;
        # NYXPLUG_DEBUG_BUILD=1 is the build to debug.
        cflags = ["-O3", "-g0"]
    ext = Extension("nyxplug._dispatch", [PYX], define_macros=macros, extra_compile_args=cflags)
    mode = ", ".join(["debug -O0 -g3" if debug else "-O3"] + (["line tracing"] if tracing else []))
    print(f"nyxplug: building the compiled dispatcher (Cython {Cython.__version__}, {mode})")
    # force: debug/tracing change the generated C without touching the .pyx's mtime.
    return cythonize([ext], compiler_directives=directives, annotate=debug, force=True)


if env_flag("NYXPLUG_NO_EXTENSIONS") or sys.implementation.name != "cpython":
    print("nyxplug: pure-Python build (NYXPLUG_NO_EXTENSIONS=1 or not CPython)")
    ext_modules: list[Extension] = []
else:
    ext_modules = cythonize_dispatcher(
        debug=env_flag("NYXPLUG_DEBUG_BUILD"), tracing=env_flag("NYXPLUG_CYTHON_TRACING")
    )

setup(ext_modules=ext_modules)
