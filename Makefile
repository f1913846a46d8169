# Two entry points for newcomers: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CONFIG ?= etc/taskschedd.yaml

.PHONY: install install-test run test lint typecheck clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# Installed once, again when pyproject.toml changes (make run works offline after that).
install: $(VENV)/.installed
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e .
	touch $@

install-test: $(VENV)/.installed-test
$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@ $(VENV)/.installed

# Runs a node on the embedded SQLite store with the reference configuration made local:
# var/taskschedd.yaml is etc/taskschedd.yaml with the store in ./var (no root needed)
# and the example setup hook, so the README's examples run as written.
DEVCONFIG := var/taskschedd.yaml

run: install $(DEVCONFIG)
	@echo "In a second terminal: export TASKSCHED_CONFIG=$(CURDIR)/$(DEVCONFIG)"
	$(BIN)/taskschedd -c $(DEVCONFIG)

# Regenerated when etc/taskschedd.yaml changes: edit that one (or pass CONFIG=FILE).
$(DEVCONFIG): $(CONFIG)
	mkdir -p var && chmod 0700 var   # taskschedd refuses a store directory others can write
	sed -e 's|^store: .*|store: sqlite:///$(CURDIR)/var/taskschedd.db|' \
	    -e 's|^setup_hook: null.*|setup_hook: taskschedd.examples.mail:setup|' $(CONFIG) > $@.tmp
	grep -q '^store: sqlite:///$(CURDIR)/var/' $@.tmp && grep -q '^setup_hook: taskschedd' $@.tmp
	mv $@.tmp $@

lint: install-test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: install-test lint
	$(BIN)/pytest -n auto -q

clean:
	rm -rf $(VENV) var/taskschedd.yaml .pytest_cache .mypy_cache .ruff_cache build *.egg-info
