# The two commands of the README: `make run` and `make test`.
# Both set themselves up from nothing: a virtualenv in .venv with Baton installed.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
HOST   ?= 127.0.0.1
PORT   ?= 8000

.PHONY: run test lint types unit clean

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

unit: $(STAMP)
	$(BIN)/pytest

clean:
	rm -rf $(VENV) var .mypy_cache .ruff_cache .pytest_cache test-artifacts
