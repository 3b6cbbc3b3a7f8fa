# BECO — one Makefile; each area adds its targets in mk/*.mk.
# Heavy, version-keyed builds (Python wheels, Go binaries) live in $(CACHE), outside the repo.
SHELL := /bin/bash
.DEFAULT_GOAL := help

CACHE ?= $(HOME)/.cache/beco
PYTHON ?= python3
LOCK_HASH := $(shell cat requirements.lock | sha256sum | cut -c1-12)
WHEELS := $(CACHE)/wheels-$(LOCK_HASH)
VENV := $(CURDIR)/.venv
PY := $(VENV)/bin/python
export PATH := $(VENV)/bin:$(PATH)

.PHONY: help venv system-packages lint fmt typecheck test test-unit run bench clean

help:  ## list the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | sort

# keyed by the lock's hash, so existence is enough (a fresh clone's new mtimes must not rebuild it)
$(WHEELS)/.ok:
	$(PYTHON) -m pip wheel -q --disable-pip-version-check -r requirements.lock -w $(WHEELS)
	touch $@

$(VENV)/.ok: $(WHEELS)/.ok pyproject.toml
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --disable-pip-version-check --no-index --find-links $(WHEELS) -r requirements.lock
	$(VENV)/bin/pip install -q --disable-pip-version-check --no-index --no-deps --no-build-isolation -e .
	touch $@

venv: $(VENV)/.ok  ## the project's virtualenv (.venv), from cached wheels

system-packages:  ## Debian packages the tests need (.ci/packages.d/*.txt), installed when missing
	@bash -c '. .ci/system-packages.sh && ensure_system_packages'

fmt: venv  ## format the code
	$(PY) -m ruff format node operator tests e2e benchmarks
	$(PY) -m ruff check --fix node operator tests e2e benchmarks

lint: venv  ## ruff, mypy and the import layering contract
	$(PY) -m ruff format --check node operator tests e2e benchmarks
	$(PY) -m ruff check node operator tests e2e benchmarks
	$(PY) -m mypy
	$(VENV)/bin/lint-imports

test-unit: venv  ## fast tests only (no processes, no control plane)
	$(PY) -m pytest -q tests/unit

include $(wildcard mk/*.mk)

# Every area appends its checks to TEST_DEPS in its mk/*.mk.
test: venv system-packages lint $(TEST_DEPS)  ## everything CI checks
	$(PY) -m pytest -q -ra $(PYTEST_ARGS)

bench: venv $(BENCH_DEPS)  ## run the benchmarks; results go to docs/benchmarks.md
	@echo "benchmarks written to docs/benchmarks.md"

clean:  ## remove build output in the repo (the cache stays)
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
