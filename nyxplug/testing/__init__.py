"""nyxplug's testing kit for plugin authors: a pytest plugin, fixtures and strategies.

Installed with nyxplug and active in every pytest run of an environment that has it
(entry point ``pytest11``: ``nyxplug = nyxplug.testing``; ``-p no:nyxplug`` turns it
off). It imports only pytest when pytest starts; the host, the benchmark helper and
the strategies load when a test first asks for them.

- ``nyx_host``: a started plugin host (a real ``PluginManager``, temporary state
  folder, signatures not required) on its own event loop thread, so plain sync tests,
  pytest-asyncio and anyio tests use it alike. ``nyx_host.load(folder_or_class,
  **manifest_overrides)`` returns a ``PluginHandle`` (``send``, ``send_many``,
  ``stats``, ``instance``, ``reload``, ``unload``). When the test ends, the ledger of
  SPEC 4 must hold - every frame it sent handled or counted - or the test fails with
  the ledger printed (``@pytest.mark.nyx_no_ledger`` opts out).
- ``nyx_bench(handle, payloads)``: the plugin's throughput through pytest-benchmark,
  on the host's long-lived loop; frames per second in ``extra_info`` and as the
  table's OPS column.
- ``nyxplug.testing.strategies``: hypothesis strategies for frames and hostile bytes.

The kit defines no hook that runs async tests (no ``pytest_pyfunc_call``): which
plugin runs them is the project's choice.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import pytest

from .._lazy import lazy_exports

if TYPE_CHECKING:
    from ._bench import bench as bench
    from ._host import NyxHost as NyxHost
    from ._host import PluginHandle as PluginHandle
    from ._ledger import LedgerError as LedgerError
    from ._ledger import LedgerRow as LedgerRow

__all__ = (
    "LedgerError",
    "LedgerRow",
    "NyxHost",
    "PluginHandle",
    "bench",
    "nyx_bench",
    "nyx_host",
    "nyx_host_options",
)

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "NyxHost": "_host",
        "PluginHandle": "_host",
        "LedgerError": "_ledger",
        "LedgerRow": "_ledger",
        "bench": "_bench",
    },
)

_HOST = pytest.StashKey["NyxHost"]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("nyxplug", "nyxplug testing kit (nyx_host, nyx_bench)")
    group.addoption(
        "--nyx-loop",
        choices=("auto", "asyncio", "uvloop"),
        default="auto",
        help="event loop of nyx_host: uvloop when installed (auto, the default), or force one",
    )
    group.addoption(
        "--nyx-timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="how long one nyx_host call (load, send, reload) may take (default: 30)",
    )
    group.addoption(
        "--nyx-ledger-timeout",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="how long the ledger check waits for the host to be quiet (default: 5)",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "nyx_no_ledger: do not check nyx_host's frame ledger when the test ends"
    )


@pytest.fixture
def nyx_host_options() -> dict[str, Any]:
    """Keyword arguments for ``nyx_host``'s ``NyxHost``; override it in a conftest, e.g.
    ``{"dispatcher_factory": ...}`` parametrized to run every test on several dispatchers
    (options given here win over the command line's ``--nyx-loop`` / ``--nyx-timeout``)."""
    return {}


@pytest.fixture
def nyx_host(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    nyx_host_options: dict[str, Any],
) -> Iterator[NyxHost]:
    """A started nyxplug plugin host; ``nyx_host.load(folder_or_class, **overrides)``.

    Plugins run as in ``nyxplug run``: manifest, permissions, sandbox, and a child
    process when the manifest asks for ``isolation = "process"``. Closed after the test;
    the test fails if a frame it sent is unaccounted for (the ledger is printed).
    """
    from ._host import NyxHost

    config = request.config
    options = {
        "loop": config.getoption("nyx_loop"),
        "timeout": config.getoption("nyx_timeout"),
        **nyx_host_options,
    }
    host = NyxHost(tmp_path_factory.mktemp("nyx-host"), **options)
    request.node.stash[_HOST] = host
    try:
        yield host
    finally:
        host.close()


@pytest.fixture
def nyx_bench(request: pytest.FixtureRequest) -> Callable[..., dict[str, Any]]:
    """``nyx_bench(handle, payloads)``: time the plugin with pytest-benchmark, per frame.

    One round sends every payload and waits until all were handled, on the host's
    long-lived loop; the table's times are per frame, its OPS frames per second, and
    ``extra_info`` has ``frames_per_second``. Returns that ``extra_info``.
    """
    try:
        benchmark = request.getfixturevalue("benchmark")
    except pytest.FixtureLookupError:
        pytest.fail(
            "nyx_bench needs pytest-benchmark: pip install pytest-benchmark (or nyxplug[testing])",
            pytrace=False,
        )
    from ._bench import bench

    def run(handle: PluginHandle, payloads: Any, **options: Any) -> dict[str, Any]:
        return bench(benchmark, handle, payloads, **options)

    return run


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    """After a passing test that used ``nyx_host``: the ledger must hold."""
    result = yield
    host = item.stash.get(_HOST, None)
    if host is not None and item.get_closest_marker("nyx_no_ledger") is None:
        from ._ledger import LedgerError

        try:
            host.ledger(timeout=item.config.getoption("nyx_ledger_timeout"))
        except LedgerError as exc:
            ledger = str(exc)
        else:
            return result
        pytest.fail(ledger, pytrace=False)  # outside the except: the ledger is printed once
    return result
