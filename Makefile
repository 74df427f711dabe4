# The two commands of the README: `make run` and `make test`.
# Both set themselves up from nothing: a virtualenv in .venv with Baton installed.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
HOST   ?= 127.0.0.1
PORT   ?= 8000

CHROMIUM ?= /usr/bin/chromium
INTEROP  := tests/interop

.PHONY: run test lint types unit browser interop fuzz clean

$(STAMP): pyproject.toml
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Baton needs Python 3.11 or newer"'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $@

# Serve Baton on the embedded SQLite database with the demo client, over plain
# HTTP on loopback (hence non-Secure cookies). Any BATON_* variable overrides.
run: export BATON_DEMO ?= true
run: export BATON_SECURE_COOKIES ?= false
run: export BATON_PUBLIC_URL ?= http://$(HOST):$(PORT)
run: $(STAMP)
	$(BIN)/baton db upgrade
	$(BIN)/baton bootstrap --username admin
	@echo
	@echo "Baton is starting on $(BATON_PUBLIC_URL)"
	@echo "  Demo:  open $(BATON_PUBLIC_URL)/demo, press 'Start the OAuth flow' and sign in as admin"
	@echo "         with the password printed above (reset it: $(BIN)/baton users passwd admin)."
	@echo "  Stop:  Ctrl-C"
	@echo
	exec $(BIN)/baton serve --host $(HOST) --port $(PORT)

test: lint types unit

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

types: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP) browser interop
	$(BIN)/pytest

# The browser tests drive Debian's Chromium with Playwright (no browser
# download). Installed here when missing and we may (root with apt-get);
# otherwise those tests skip, unless BATON_TEST_BROWSER=required (CI).
browser:
	@if [ ! -x "$(CHROMIUM)" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing Debian's chromium for the browser tests"; \
	    export DEBIAN_FRONTEND=noninteractive; \
	    apt-get install -y -q chromium >/dev/null 2>&1 \
	      || (apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null); \
	  else \
	    echo "note: $(CHROMIUM) is missing; browser tests will skip (apt-get install chromium)"; \
	  fi; \
	fi

# The interop tests drive Baton with the npm package openid-client, pinned by
# tests/interop/package-lock.json and installed from it when node_modules is
# missing or older than the lockfile. Without npm those tests skip, unless
# BATON_TEST_INTEROP=required (CI).
interop: $(INTEROP)/node_modules

$(INTEROP)/node_modules: $(INTEROP)/package-lock.json
	@if command -v npm >/dev/null; then \
	  npm ci --prefix $(INTEROP) --no-audit --no-fund && touch $@; \
	else \
	  echo "note: npm is missing; the openid-client interop tests will skip"; \
	fi

# A longer property-based and fuzzing run than make test's.
fuzz: $(STAMP)
	BATON_FUZZ_EXAMPLES=1000 $(BIN)/pytest tests/test_fuzz_api.py tests/test_flow_model.py tests/test_hardening.py tests/test_oauth_malformed.py

clean:
	rm -rf $(VENV) var .mypy_cache .ruff_cache .pytest_cache test-artifacts $(INTEROP)/node_modules
