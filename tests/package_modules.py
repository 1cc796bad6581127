"""The modules of the nyxplug package, found from its files (nothing is imported to list them).

Shared by ``test_circular_imports.py`` and ``test_layering.py``. A module is a ``.py``
file in a folder chain of packages (each with an ``__init__.py``) from ``nyxplug/``, or
the compiled dispatcher. The only ``.py`` files that are not modules are the example
plugins under ``nyxplug/examples/plugins/``: plugin folders shipped as data, loaded by
the runtime from their bytes; :func:`package_modules` refuses any other stray file.
"""

from __future__ import annotations

from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "nyxplug"
#: Plugin folders shipped as data, not modules of the package.
PLUGIN_FOLDERS = PACKAGE / "examples" / "plugins"
#: The compiled twin: a module built from ``_dispatch.pyx``, listed even when not built.
COMPILED = {"nyxplug._dispatch": PACKAGE / "_dispatch.pyx"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def package_modules() -> dict[str, Path]:
    """``{dotted name: source file}`` for every module; the compiled one maps to its ``.pyx``."""
    modules: dict[str, Path] = dict(COMPILED)
    for path in sorted(PACKAGE.rglob("*.py")):
        if "__pycache__" in path.parts:
            continue
        if path.is_relative_to(PLUGIN_FOLDERS):
            continue
        folders = path.relative_to(PACKAGE).parents
        if not all((PACKAGE / folder / "__init__.py").is_file() for folder in folders):
            raise AssertionError(
                f"{path} is neither a module (its folder is no package) nor an example plugin"
            )
        modules[module_name(path)] = path
    return modules
