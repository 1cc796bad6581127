"""Test matrix: every behavioural test runs on both twins and, when async, on both loops.

* ``impl`` is the dispatcher module under test: ``nyxplug._dispatch`` (``[cython]``) or
  ``nyxplug._dispatch_py`` (``[python]``). A missing extension skips the ``[cython]``
  half, unless ``NYXPLUG_REQUIRE_EXTENSIONS`` is set: then it fails, and a build older
  than its ``.pyx`` aborts the session before any test runs.
* Every ``async def test_*`` is run by ``pytest_pyfunc_call`` below on a fresh loop per
  test, once on asyncio and once on uvloop (``[asyncio]`` / ``[uvloop]``), under
  ``asyncio.timeout``; an error reported to the loop's exception handler (a task that
  died unobserved, a callback that raised) fails the test. No pytest-asyncio.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import os
import sys
from pathlib import Path
from typing import Any

import pytest

#: pytest's own plugin for testing plugins: the testing kit is tested through it.
pytest_plugins = ("pytester",)

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
for _path in (ROOT, TESTS):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

#: How long one async test may run on its loop before it is failed (seconds).
ASYNC_TEST_TIMEOUT = 30.0

_TRUE = frozenset({"1", "true", "yes", "on"})

IMPL_MODULES = {"cython": "nyxplug._dispatch", "python": "nyxplug._dispatch_py"}
LOOP_KINDS = ("asyncio", "uvloop")


def require_extensions() -> bool:
    """``NYXPLUG_REQUIRE_EXTENSIONS`` read strictly (1/true/yes/on)."""
    return os.environ.get("NYXPLUG_REQUIRE_EXTENSIONS", "").strip().lower() in _TRUE


def loop_factory(kind: str) -> Any:
    if kind == "uvloop":
        import uvloop

        return uvloop.new_event_loop
    if kind == "asyncio":
        return asyncio.new_event_loop
    raise ValueError(f"unknown loop kind {kind!r}")


def import_impl(tag: str) -> Any:
    """The dispatcher module for ``tag``; skip (or fail, when required) if not built."""
    try:
        return importlib.import_module(IMPL_MODULES[tag])
    except ImportError as exc:
        if tag == "cython" and not require_extensions():
            pytest.skip("compiled extension not built")
        pytest.fail(f"cannot import {IMPL_MODULES[tag]}: {exc}", pytrace=False)


def available_impls() -> list[Any]:
    """Every twin that can be imported (the compiled one is mandatory when required)."""
    mods = []
    for tag, name in IMPL_MODULES.items():
        try:
            mods.append(importlib.import_module(name))
        except ImportError as exc:
            if tag != "cython" or require_extensions():
                pytest.fail(f"cannot import {name}: {exc}", pytrace=False)
    return mods


# -- session guard -----------------------------------------------------------------


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "async_timeout(seconds): time limit of one async test on its loop"
    )


def pytest_sessionstart(session: pytest.Session) -> None:
    """With NYXPLUG_REQUIRE_EXTENSIONS, refuse to test a missing or stale build."""
    if not require_extensions():
        return
    pkg = ROOT / "nyxplug"
    sources = [p for p in (pkg / "_dispatch.pyx", pkg / "_dispatch.pxd") if p.exists()]
    built = [p for p in pkg.glob("_dispatch*") if p.suffix in (".so", ".pyd")]
    hint = "rebuild with `make install` / pip install -e ."
    if not built:
        pytest.exit(
            f"NYXPLUG_REQUIRE_EXTENSIONS is set but nyxplug/_dispatch*.so is not built - {hint}",
            returncode=1,
        )
    newest_build = max(p.stat().st_mtime for p in built)
    stale = [p.name for p in sources if p.stat().st_mtime > newest_build]
    if stale:
        pytest.exit(
            f"nyxplug/{', '.join(stale)} is newer than the built extension "
            f"{', '.join(p.name for p in built)} - {hint}",
            returncode=1,
        )


# -- the implementation fixture ----------------------------------------------------


@pytest.fixture(params=list(IMPL_MODULES), scope="session")
def impl(request: pytest.FixtureRequest) -> Any:
    """The dispatcher module under test (``[cython]`` or ``[python]``)."""
    return import_impl(request.param)


@pytest.fixture(params=LOOP_KINDS)
def nyx_host_options(impl: Any, request: pytest.FixtureRequest) -> dict[str, Any]:
    """The testing kit's ``nyx_host`` runs nyxplug's own tests on both twins and loops."""
    return {"dispatcher_factory": impl.Dispatcher, "loop": request.param}


# -- running async tests on both loops ---------------------------------------------


@pytest.hookimpl(trylast=True)
def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    # trylast: the fixture parametrization (impl) comes first in the ids -> [cython-uvloop]
    if not inspect.iscoroutinefunction(metafunc.function):
        return
    if "loop_kind" not in metafunc.fixturenames:
        metafunc.fixturenames.append("loop_kind")
    metafunc.parametrize("loop_kind", LOOP_KINDS)


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    func = pyfuncitem.obj
    if not inspect.iscoroutinefunction(func):
        return None
    funcargs = pyfuncitem.funcargs
    kwargs = {name: funcargs[name] for name in pyfuncitem._fixtureinfo.argnames if name in funcargs}
    marker = pyfuncitem.get_closest_marker("async_timeout")
    limit = float(marker.args[0]) if marker else ASYNC_TEST_TIMEOUT
    loop_errors: list[dict[str, Any]] = []

    async def main() -> None:
        asyncio.get_running_loop().set_exception_handler(
            lambda _loop, context: loop_errors.append(context)
        )
        async with asyncio.timeout(limit):
            await func(**kwargs)

    kind = pyfuncitem.callspec.params["loop_kind"]
    with asyncio.Runner(loop_factory=loop_factory(kind)) as runner:
        runner.run(main())
    if loop_errors:
        details = "; ".join(
            f"{ctx.get('message')} ({ctx.get('exception')!r})" for ctx in loop_errors
        )
        pytest.fail(f"the event loop reported errors: {details}", pytrace=False)
    return True
