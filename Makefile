# chatgate: `make run` starts a gateway, `make test` runs every test.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
JOBS   := $(shell nproc 2>/dev/null || echo 2)

# The web page: npm packages pinned by package-lock.json, built by Vite into src/chatgate/web/dist (served by chatgate).
WEB       := src/chatgate/web
WEB_SRC   := $(shell find $(WEB)/src -type f 2>/dev/null) $(WEB)/index.html $(WEB)/admin.html $(WEB)/vite.config.js \
             $(WEB)/scripts/compress.mjs
WEB_DEPS  := $(WEB)/node_modules/.package-lock.json
WEB_BUILT := $(WEB)/dist/.built

.PHONY: install run test test-clients lint typecheck docs bench bench-deps bench-web browser-deps screenshots clean

install: $(STAMP) $(WEB_BUILT) browser-deps

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip wheel setuptools
	# llama-cpp-python (the bundled local model's server) compiles llama.cpp: a few minutes, once.
	CMAKE_BUILD_PARALLEL_LEVEL=$(JOBS) $(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

$(WEB_DEPS): $(WEB)/package.json $(WEB)/package-lock.json
	cd $(WEB) && npm ci --no-audit --no-fund --loglevel=error
	touch $@

$(WEB_BUILT): $(WEB_DEPS) $(WEB_SRC)
	cd $(WEB) && npm run build --silent
	touch $@

# Debian's Chromium for the browser tests (Playwright drives it; it never downloads a browser of its own).
browser-deps:
	@test -x /usr/bin/chromium || \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium)

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

# Real clients in front of a real gateway (tests/clients/): Open WebUI in its own virtual environment,
# built once per checkout (about 3 minutes and 2.9 GB) and rebuilt when its version or pins change.
# CLIENTS_DIR may point elsewhere (a per-machine cache shared by several checkouts).
CLIENTS_DIR  ?= .venv-clients
OWUI_VERSION := 0.12.4
OWUI_VENV    := $(CLIENTS_DIR)/open-webui
OWUI_STAMP   := $(OWUI_VENV)/.installed-$(OWUI_VERSION)

$(OWUI_STAMP): tests/clients/constraints.txt
	test -x $(OWUI_VENV)/bin/python || $(PYTHON) -m venv $(OWUI_VENV)
	$(OWUI_VENV)/bin/python -m pip install --quiet --upgrade pip wheel
	# torch first, from its CPU build on this disk; the constraints keep Open WebUI's resolver on it.
	$(OWUI_VENV)/bin/python -m pip install --quiet -c tests/clients/constraints.txt torch==2.13.0
	$(OWUI_VENV)/bin/python -m pip install --quiet -c tests/clients/constraints.txt open-webui==$(OWUI_VERSION)
	rm -f $(OWUI_VENV)/.installed-*
	touch $@

test-clients: install browser-deps $(OWUI_STAMP)
	OPENWEBUI_VENV=$(abspath $(OWUI_VENV)) $(BIN)/pytest tests/clients

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

bench-web: install browser-deps
	$(BIN)/python bench/web.py

# PNGs of both pages, filled with the fake upstream's data, for the README.
screenshots: install browser-deps
	$(BIN)/python -m tests.integration.web_screenshots docs/img

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache .ruff_cache .mypy_cache $(WEB)/node_modules $(WEB)/dist
