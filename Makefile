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

.PHONY: install run test lint typecheck docs bench bench-deps bench-web browser-deps screenshots clean

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
	@command -v chromium >/dev/null || \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium)

run: install
	$(BIN)/chatgate serve

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

bench: install bench-deps
	$(BIN)/python bench/overhead.py

bench-web: install browser-deps
	$(BIN)/python bench/web.py

# PNGs of both pages, filled with the fake upstream's data, for the README.
screenshots: install browser-deps
	$(BIN)/python -m tests.integration.web_screenshots docs/img

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache .ruff_cache .mypy_cache $(WEB)/node_modules $(WEB)/dist
