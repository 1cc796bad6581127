"""The public face: ``nyxplug.__all__``, and the twins exposing the same API."""

from __future__ import annotations

import ast
import copy
import inspect
import operator
import os
from pathlib import Path
from typing import Any

import pytest
from conftest import IMPL_MODULES, available_impls, require_extensions

import nyxplug
from nyxplug import _constants, _impl

CLASSES = ("Dispatcher", "PluginHeader", "PluginMessage", "PluginRegistry")


def test_all_is_a_tuple_of_resolvable_names() -> None:
    assert isinstance(nyxplug.__all__, tuple)
    assert len(set(nyxplug.__all__)) == len(nyxplug.__all__)
    for name in nyxplug.__all__:
        assert getattr(nyxplug, name) is not None, name
    public = {n for n in vars(nyxplug) if not n.startswith("_")} - {"annotations"}
    submodules = {n for n in public if inspect.ismodule(getattr(nyxplug, n))}
    assert public - submodules <= set(nyxplug.__all__)


def test_facade_exports_the_chosen_twin() -> None:
    chosen = IMPL_MODULES["cython" if nyxplug.USE_EXTENSIONS else "python"]
    for name in CLASSES:
        assert getattr(nyxplug, name).__module__ == chosen


def test_use_extensions_when_required() -> None:
    if not require_extensions():
        pytest.skip("NYXPLUG_REQUIRE_EXTENSIONS is not set")
    assert nyxplug.USE_EXTENSIONS is True
    assert nyxplug.Dispatcher.__module__ == "nyxplug._dispatch"


def test_no_extensions_flag_selects_the_pure_twin() -> None:
    if not _impl.env_flag("NYXPLUG_NO_EXTENSIONS"):
        pytest.skip("NYXPLUG_NO_EXTENSIONS is not set")
    assert nyxplug.USE_EXTENSIONS is False


def test_env_flags_are_parsed_strictly(monkeypatch: pytest.MonkeyPatch) -> None:
    for raw, value in [("1", True), ("TRUE", True), (" yes ", True), ("on", True),
                       ("", False), ("0", False), ("false", False), ("No", False),
                       ("off", False)]:  # fmt: skip
        monkeypatch.setenv("NYXPLUG_TEST_FLAG", raw)
        assert _impl.env_flag("NYXPLUG_TEST_FLAG") is value, raw
    monkeypatch.delenv("NYXPLUG_TEST_FLAG")
    assert _impl.env_flag("NYXPLUG_TEST_FLAG") is False
    monkeypatch.setenv("NYXPLUG_TEST_FLAG", "maybe")
    with pytest.raises(ValueError, match=r"^Expected NYXPLUG_TEST_FLAG to be one of"):
        _impl.env_flag("NYXPLUG_TEST_FLAG")
    assert os.environ["NYXPLUG_TEST_FLAG"] == "maybe"


def _public_members(cls: type) -> set[str]:
    names = {n for n in dir(cls) if not n.startswith("_")}
    dunders = {"__aenter__", "__aexit__", "__len__", "__iter__", "__contains__", "__eq__",
               "__hash__", "__reduce__"}  # fmt: skip
    return names | {n for n in dunders if getattr(cls, n, None) is not getattr(object, n, None)}


def _shape(obj: Any) -> list[tuple[str, Any, Any]] | None:
    """Names, kinds and defaults of the parameters (annotations differ in form)."""
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return None
    params = list(sig.parameters.values())
    if params and params[0].name == "self":
        # a compiled method descriptor shows `self, /`; how self is passed is not API
        params = params[1:]
    return [(p.name, p.kind, p.default) for p in params]


@pytest.fixture(scope="module")
def twins() -> list[Any]:
    mods = available_impls()
    if len(mods) < 2:
        pytest.skip("compiled extension not built: nothing to compare the pure twin with")
    return mods


@pytest.mark.parametrize("class_name", CLASSES)
def test_twins_have_the_same_public_api(twins: list[Any], class_name: str) -> None:
    compiled, pure = (getattr(m, class_name) for m in twins)
    assert _public_members(compiled) == _public_members(pure)
    for name in sorted(_public_members(pure)):
        c_attr, p_attr = inspect.getattr_static(compiled, name), inspect.getattr_static(pure, name)
        if isinstance(p_attr, property):
            assert not callable(getattr(compiled, name, None)) or isinstance(
                getattr(compiled, name), property
            ), name
            continue
        if isinstance(p_attr, classmethod):
            c_func, p_func = getattr(compiled, name), getattr(pure, name)
        else:
            c_func, p_func = c_attr, p_attr
        if not callable(p_func):
            continue
        assert callable(c_func), name
        if name.startswith("__"):
            continue  # slot wrappers of a cdef class have no real signature
        p_shape, c_shape = _shape(p_func), _shape(c_func)
        if p_shape is not None and c_shape is not None:
            assert c_shape == p_shape, f"{class_name}.{name}"
        assert inspect.iscoroutinefunction(c_func) == inspect.iscoroutinefunction(p_func), name


def test_twins_constructors_take_the_same_keywords(twins: list[Any]) -> None:
    # a cdef class __init__ has no introspectable signature, so call both by keyword
    for mod in twins:
        registry = mod.PluginRegistry()
        mod.Dispatcher(registry=registry, sandbox=None, max_header_size=100,
                       max_payload_size=100)  # fmt: skip
        header = mod.PluginHeader(id=1, flags=1, data=b"x")
        message = mod.PluginMessage(frame_type=0x52, header=header, payload=b"yz")
        assert (message.plugin_id, message.is_required, message.size) == (1, True, 19 + 2)


def test_twins_async_methods_agree(twins: list[Any]) -> None:
    compiled, pure = (m.Dispatcher for m in twins)
    for name in ("load_plugin", "unload_plugin", "aclose", "wait_idle", "request"):
        assert inspect.iscoroutinefunction(getattr(pure, name)), name
        assert inspect.iscoroutinefunction(getattr(compiled, name)), name


def _declared_signatures(path: Path) -> dict[str, str]:
    """Every public ``def`` of a module and of its public classes, as written: decorators,
    ``async``, parameter names, kinds and annotations, and the return annotation; for an
    overloaded one every ``@overload`` (the twin's implementation after them is not API).

    Defaults count only as present: the stub writes ``4096`` where the twin names
    ``DEFAULT_MAX_HEADER_SIZE``; stubtest and ``test_twins_have_the_same_public_api``
    check their values.
    """
    found: dict[str, str] = {}

    def add(node: ast.stmt, owner: str) -> None:
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            return
        if node.name.startswith("_") and not node.name.endswith("__"):
            return
        args = copy.deepcopy(node.args)
        args.defaults = [ast.Constant(...) for _ in args.defaults]
        args.kw_defaults = [None if d is None else ast.Constant(...) for d in args.kw_defaults]
        decorators = "".join(f"@{ast.unparse(d)} " for d in node.decorator_list)
        is_async = "async " if isinstance(node, ast.AsyncFunctionDef) else ""
        returns = ast.unparse(node.returns) if node.returns else "(none)"
        signature = f"{decorators}{is_async}({ast.unparse(args)}) -> {returns}"
        key = owner + node.name
        overloaded = found.get(key, "").startswith("@overload ")
        if overloaded and decorators.startswith("@overload "):
            found[key] += " | " + signature  # every overload, in order
        elif not overloaded:  # (the twin's implementation after its overloads: not API)
            found[key] = signature

    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ClassDef):
            if not node.name.startswith("_"):
                for item in node.body:
                    add(item, f"{node.name}.")
        else:
            add(node, "")
    return found


def test_the_stub_declares_what_the_twin_declares() -> None:
    # mypy reads the twin (users of `nyxplug`), the stub serves users of the compiled
    # module: both must say the same, down to each annotation.
    package = Path(nyxplug.__file__).parent
    stub = _declared_signatures(package / "_dispatch.pyi")
    twin = _declared_signatures(package / "_dispatch_py.py")
    assert stub == twin


def test_constant_mirrors_agree(twins: list[Any]) -> None:
    mirrors = twins[0]._C_MIRRORS
    assert _constants.mirror_mismatches(mirrors) == []
    for name, value in mirrors.items():  # the same comparison, spelled out
        assert value == operator.attrgetter(name)(_constants), name
    statuses = {name for name in mirrors if name.startswith("DispatchStatus.")}
    assert statuses == {f"DispatchStatus.{status.name}" for status in _constants.DispatchStatus}


def test_a_wrong_mirror_is_reported() -> None:
    mirrors = {"FLAG_REQUIRED": 2, "FrameType.CONTROL": 0x53, "DispatchStatus.OK": 1}
    assert _constants.mirror_mismatches(mirrors) == [
        "FLAG_REQUIRED is 2 in C, 1 here",
        "DispatchStatus.OK is 1 in C, 0 here",
    ]
