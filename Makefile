# eniplane: `make demo` and `make test` are the two entry points; both run `make setup` first.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: setup test test-unit test-datapath test-e2e demo fuzz bench clean

setup:
	@bash scripts/setup.sh

test: setup
	$(PY) -m pytest -q tests

test-unit: setup
	$(PY) -m pytest -q tests/unit

test-datapath: setup
	$(PY) -m pytest -q tests/datapath

test-e2e: setup
	$(PY) -m pytest -q tests/e2e

demo: setup
	$(PY) -m eniplane.demo

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info ctl/*.egg-info

# Long differential fuzzing of the datapath against the reference model (not part of `make test`).
fuzz: setup
	$(PY) tests/model/fuzz.py --packets $${PACKETS:-1000000}

# The full benchmark run that docs/performance.md reports (minutes; not part of `make test`).
bench: setup
	$(PY) -m bench --json docs/performance.json --png docs/performance.png --update-doc docs/performance.md
