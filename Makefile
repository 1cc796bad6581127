# Developer workflow. `make demo` and `make test` work on a fresh machine with
# python3 >= 3.11, a C compiler and PyPI: they create .venv, install the exact versions
# locked in requirements/ and build the extension from the locked Cython and setuptools.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
UV := $(BIN)/uv
STAMP := $(VENV)/.installed
# Rebuild when the build inputs change (the .pyx/.pxd may not exist yet) or when the
# build flags setup.py reads differ from the last build's (recorded in FLAGS_FILE).
BUILD_INPUTS := pyproject.toml setup.py $(wildcard nyxplug/*.pyx nyxplug/*.pxd)
BUILD_FLAGS := NYXPLUG_NO_EXTENSIONS=$(NYXPLUG_NO_EXTENSIONS) \
  NYXPLUG_DEBUG_BUILD=$(NYXPLUG_DEBUG_BUILD) NYXPLUG_CYTHON_TRACING=$(NYXPLUG_CYTHON_TRACING)
FLAGS_FILE := $(VENV)/.build-flags
# The lock files; `make lock` rewrites them.
LOCK := requirements
UV_PIP := $(UV) pip install --python $(BIN)/python
UV_COMPILE := $(UV) pip compile --quiet --universal --generate-hashes --python-version 3.11 \
  --upgrade --custom-compile-command 'make lock'

.DEFAULT_GOAL := help
.PHONY: help install demo test test-pure bench wheel lock clean distclean FORCE

help:
	@echo "make install    create .venv, install the locked test set, build nyxplug._dispatch in place"
	@echo "make demo       run the demo (nyxplug demo); installs only what the demo needs"
	@echo "make test       run the tests; fails if the compiled dispatcher is missing"
	@echo "make test-pure  run the tests on the pure-Python dispatcher only"
	@echo "make typecheck  mypy --strict (package + tests/typing), stubtest of the compiled stub"
	@echo "make bench      run the benchmarks (compiled and pure side by side)"
	@echo "make wheel      build a wheel into dist/"
	@echo "make lock       re-resolve requirements/*.txt to the newest versions pyproject.toml allows"
	@echo "make clean      remove build products (distclean also removes .venv)"
	@echo "build flags: NYXPLUG_DEBUG_BUILD=1 / NYXPLUG_CYTHON_TRACING=1 / NYXPLUG_NO_EXTENSIONS=1"
	@echo "               make install  (a change of flags rebuilds)"

$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
	  { echo "nyxplug needs Python >= 3.11; run e.g. 'make PYTHON=python3.11 ...'" >&2; exit 1; }
	$(PYTHON) -m venv --without-pip $(VENV)

# uv installs everything else; pip installs uv, pinned with hashes: the base Python's pip
# when it has one (pip >= 22.3 installs into another environment, and the venv needs no pip
# of its own, 3 s saved), else the pip that ensurepip puts into the venv.
PIP_BOOTSTRAP := install --disable-pip-version-check --progress-bar off --no-deps \
  --require-hashes -r $(LOCK)/bootstrap.txt
$(UV): $(LOCK)/bootstrap.txt | $(BIN)/python
	$(PYTHON) -m pip --python $(BIN)/python $(PIP_BOOTSTRAP) || \
	  { $(BIN)/python -m ensurepip && $(BIN)/python -m pip $(PIP_BOOTSTRAP); }
	@touch $@

# .venv/.build-deps, .demo-deps, .test-deps: that lock file is installed (again when it changes).
$(VENV)/.%-deps: $(LOCK)/%.txt $(UV)
	$(UV_PIP) --require-hashes -r $<
	@touch $@

$(FLAGS_FILE): FORCE | $(BIN)/python
	@echo '$(BUILD_FLAGS)' | cmp -s - $@ || echo '$(BUILD_FLAGS)' > $@

# The extension is built from the locked build tools (no isolated build environment).
$(STAMP): $(BUILD_INPUTS) $(FLAGS_FILE) $(VENV)/.build-deps
	$(UV_PIP) --no-deps --no-build-isolation --reinstall-package nyxplug -e .
	@touch $@

install: $(STAMP) $(VENV)/.test-deps

demo: $(STAMP) $(VENV)/.demo-deps
	$(BIN)/nyxplug demo

test: install
	NYXPLUG_REQUIRE_EXTENSIONS=1 $(BIN)/python -m pytest

test-pure: install
	NYXPLUG_NO_EXTENSIONS=1 $(BIN)/python -m pytest

bench: install
	NYXPLUG_REQUIRE_EXTENSIONS=1 $(BIN)/python -m pytest benchmarks --benchmark-group-by=func

wheel: install
	$(UV) build --python $(BIN)/python --no-build-isolation --wheel --out-dir dist
	@# setuptools leaves nyxplug.egg-info here; on sys.path (python -m pytest) its stale
	@# metadata would hide the installed entry points (the pytest11 kit among them).
	rm -rf nyxplug.egg-info

# One line refreshes every lock: the build tools are read from [build-system] requires.
lock: $(UV)
	$(UV_COMPILE) $(LOCK)/bootstrap.in -o $(LOCK)/bootstrap.txt
	$(BIN)/python -c 'import tomllib; print(*tomllib.load(open("pyproject.toml", "rb"))["build-system"]["requires"], sep="\n")' \
	  | $(UV_COMPILE) - -o $(LOCK)/build.txt
	$(UV_COMPILE) pyproject.toml --extra test --extra bench --extra uvloop --extra admin -o $(LOCK)/test.txt
	$(UV_COMPILE) pyproject.toml --extra uvloop -c $(LOCK)/test.txt -o $(LOCK)/demo.txt

# Types as users see them: mypy --strict over the package (it reads the pure twin) and the
# examples in tests/typing; stubtest checks nyxplug/_dispatch.pyi against the built module.
.PHONY: typecheck
typecheck: install
	$(BIN)/python -m mypy --strict nyxplug tests/typing
	$(BIN)/python -m mypy.stubtest nyxplug._dispatch \
	  --allowlist tests/typing/stubtest-allowlist.txt

clean:
	rm -rf build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache .hypothesis .benchmarks
	rm -f nyxplug/*.so nyxplug/*.pyd nyxplug/_dispatch.c nyxplug/*.html $(STAMP) $(FLAGS_FILE)
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)
