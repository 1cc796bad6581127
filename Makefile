# Developer workflow. `make demo` and `make test` work on a fresh machine with
# python3 >= 3.11, a C compiler and PyPI: they create .venv and build the extension.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Rebuild when the build inputs change (the .pyx/.pxd may not exist yet) or when the
# build flags setup.py reads differ from the last build's (recorded in FLAGS_FILE).
BUILD_INPUTS := pyproject.toml setup.py $(wildcard nyxplug/*.pyx nyxplug/*.pxd)
BUILD_FLAGS := NYXPLUG_NO_EXTENSIONS=$(NYXPLUG_NO_EXTENSIONS) \
  NYXPLUG_DEBUG_BUILD=$(NYXPLUG_DEBUG_BUILD) NYXPLUG_CYTHON_TRACING=$(NYXPLUG_CYTHON_TRACING)
FLAGS_FILE := $(VENV)/.build-flags

.DEFAULT_GOAL := help
.PHONY: help install demo test test-pure bench wheel clean distclean FORCE

help:
	@echo "make install    create .venv, build nyxplug._dispatch in place, install test+bench extras"
	@echo "make demo       run the demo (nyxplug demo)"
	@echo "make test       run the tests; fails if the compiled dispatcher is missing"
	@echo "make test-pure  run the tests on the pure-Python dispatcher only"
	@echo "make typecheck  mypy --strict (package + tests/typing), stubtest of the compiled stub"
	@echo "make bench      run the benchmarks (compiled and pure side by side)"
	@echo "make wheel      build a wheel into dist/"
	@echo "make clean      remove build products (distclean also removes .venv)"
	@echo "build flags: NYXPLUG_DEBUG_BUILD=1 / NYXPLUG_CYTHON_TRACING=1 / NYXPLUG_NO_EXTENSIONS=1"
	@echo "               make install  (a change of flags rebuilds)"

$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
	  { echo "nyxplug needs Python >= 3.11; run e.g. 'make PYTHON=python3.11 ...'" >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --progress-bar off --upgrade pip

$(FLAGS_FILE): FORCE | $(BIN)/python
	@echo '$(BUILD_FLAGS)' | cmp -s - $@ || echo '$(BUILD_FLAGS)' > $@

$(STAMP): $(BIN)/python $(BUILD_INPUTS) $(FLAGS_FILE)
	$(BIN)/python -m pip install --progress-bar off -e '.[test,bench]'
	@touch $@

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/nyxplug demo

test: $(STAMP)
	NYXPLUG_REQUIRE_EXTENSIONS=1 $(BIN)/python -m pytest

test-pure: $(STAMP)
	NYXPLUG_NO_EXTENSIONS=1 $(BIN)/python -m pytest

bench: $(STAMP)
	NYXPLUG_REQUIRE_EXTENSIONS=1 $(BIN)/python -m pytest benchmarks --benchmark-group-by=func

# Types as users see them: mypy --strict over the package (it reads the pure twin) and the
# examples in tests/typing; stubtest checks nyxplug/_dispatch.pyi against the built module.
.PHONY: typecheck
typecheck: $(STAMP)
	$(BIN)/python -m mypy --strict nyxplug tests/typing
	$(BIN)/python -m mypy.stubtest nyxplug._dispatch \
	  --allowlist tests/typing/stubtest-allowlist.txt

wheel: $(STAMP)
	$(BIN)/python -m pip wheel --no-deps -w dist .

clean:
	rm -rf build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache .hypothesis .benchmarks
	rm -f nyxplug/*.so nyxplug/*.pyd nyxplug/_dispatch.c nyxplug/*.html $(STAMP) $(FLAGS_FILE)
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)
