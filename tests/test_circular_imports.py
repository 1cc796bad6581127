"""Every module of nyxplug imports on its own, first, in a fresh interpreter.

An import cycle hides as long as something else happens to import the right module
first; a fresh ``python -I -W error -c "import X"`` per module finds it (the test of
aio-libs' multidict). ``-W error`` also turns any warning raised at import into a
failure. The interpreters run in parallel threads; each test waits for its own.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from concurrent.futures import Future, ThreadPoolExecutor

import pytest
from conftest import require_extensions
from package_modules import COMPILED, PACKAGE, package_modules

MODULES = package_modules()
_POOL = ThreadPoolExecutor(max_workers=2 * (os.cpu_count() or 1))
_RUNS: dict[str, Future[subprocess.CompletedProcess[str]]] = {}


#: Errors of starting a process (not of the import under test) seen on a loaded 2-core VM
#: with several suites running: EFAULT from the fork/exec, EAGAIN/ENOMEM from the kernel.
_SPAWN_ERRNOS = frozenset({errno.EFAULT, errno.EAGAIN, errno.ENOMEM})


def _import_alone(module: str) -> subprocess.CompletedProcess[str]:
    for attempt in range(3):
        try:
            return subprocess.run(
                [sys.executable, "-I", "-W", "error", "-c", f"import {module}"],
                cwd=PACKAGE.parent, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                timeout=60, check=False,
            )  # fmt: skip
        except OSError as exc:  # the interpreter did not start: try again, twice at most
            if exc.errno not in _SPAWN_ERRNOS or attempt == 2:
                raise
    raise AssertionError("unreachable")


def _started(module: str) -> Future[subprocess.CompletedProcess[str]]:
    """Start every module's interpreter on first use, so they run side by side."""
    if not _RUNS:
        for name in MODULES:
            _RUNS[name] = _POOL.submit(_import_alone, name)
    return _RUNS[module]


def _built(module: str) -> bool:
    folder = PACKAGE.joinpath(*module.split(".")[1:-1])
    stem = module.rpartition(".")[2]
    return any(folder.glob(f"{stem}.*.so")) or any(folder.glob(f"{stem}.*.pyd"))


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_alone(module: str) -> None:
    if module in COMPILED and not _built(module):
        if require_extensions():
            pytest.fail(f"{module} is not built and NYXPLUG_REQUIRE_EXTENSIONS is set")
        pytest.skip(f"{module} is not built (a NYXPLUG_NO_EXTENSIONS install)")
    result = _started(module).result()
    assert result.returncode == 0, f"`import {module}` alone failed:\n{result.stderr}"
    assert result.stderr == "", result.stderr


def test_the_walk_finds_the_package() -> None:
    assert {"nyxplug", "nyxplug._dispatch", "nyxplug.source.layout", "nyxplug.host"} <= set(MODULES)
