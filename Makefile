# chatgate: `make run` starts a gateway, `make test` runs every test.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
JOBS   := $(shell nproc 2>/dev/null || echo 2)

.PHONY: install run test lint typecheck docs bench bench-deps browser-deps clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip wheel setuptools
	# llama-cpp-python (the bundled local model's server) compiles llama.cpp: a few minutes, once.
	CMAKE_BUILD_PARALLEL_LEVEL=$(JOBS) $(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# `make run CONFIG=chatgate.yaml` serves with that config file (relative paths in it: from its folder).
CONFIG ?=
run: install
	$(BIN)/chatgate serve $(if $(CONFIG),--config $(CONFIG))

# Every test, the API fuzz (tests/integration/test_fuzz.py, ~70 s) and the docs page in a real browser among them.
test: install browser-deps
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy
	$(BIN)/pytest

lint: install
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

typecheck: install
	$(BIN)/mypy

docs: install
	$(BIN)/chatgate config docs --output docs/configuration.md

bench-deps:
	@command -v wrk >/dev/null && command -v nginx >/dev/null || \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk nginx-light)

# Debian's chromium for the docs-page test (Playwright drives it; no browser is downloaded).
browser-deps:
	@command -v /usr/bin/chromium >/dev/null || \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium)

bench: install bench-deps
	$(BIN)/python bench/overhead.py

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache .ruff_cache .mypy_cache
