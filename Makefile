SHELL := /bin/bash
# Quick start: `make train` trains the default experiment, `make test` runs the tests.
# Both create the virtual environment at .venv and install the project into it when missing or outdated.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
ARGS ?=

.PHONY: install train eval test test-slow clean

$(VENV)/.installed: pyproject.toml
	@echo "Setting up $(VENV): installing the project and its dependencies (the first time takes a few minutes)"
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e ".[dev]" 2>&1 | grep -v "^WARNING: Location"; test $${PIPESTATUS[0]} -eq 0
	touch $@

install: $(VENV)/.installed

train: $(VENV)/.installed
	$(BIN)/vla-train $(ARGS)

eval: $(VENV)/.installed
	$(BIN)/vla-eval $(ARGS)

test: $(VENV)/.installed
	$(BIN)/python -m pytest -q $(ARGS)

test-slow: $(VENV)/.installed
	$(BIN)/python -m pytest -q -m slow $(ARGS)

clean:
	rm -rf $(VENV) runs .pytest_cache
