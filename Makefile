# Two entry points for newcomers: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CONFIG ?= etc/taskschedd.yaml

.PHONY: install install-test run test lint typecheck clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

install: $(BIN)/python
	$(BIN)/pip install --quiet -e .

install-test: $(BIN)/python
	$(BIN)/pip install --quiet -e '.[test]'

# Runs a node on the embedded SQLite store with the reference configuration; the store
# lives in ./var so no root is needed (point taskschedctl at it with TASKSCHED_STORE).
run: install
	mkdir -p var && chmod 0700 var   # taskschedd refuses a store directory others can write
	$(BIN)/taskschedd -c $(CONFIG) --store sqlite:///$(CURDIR)/var/taskschedd.db

lint: install-test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: install-test lint
	$(BIN)/pytest -n auto -q

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build *.egg-info
