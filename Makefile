# eniplane: `make demo` and `make test` are the two entry points; both run `make setup` first.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: setup test test-unit test-datapath test-e2e demo fuzz bench clean install install-unit

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

# The agent as a systemd service: the unit (Type=notify) into $(DESTDIR)/etc/systemd/system, the
# command on PATH (setup's launcher). Nothing is enabled or started unless ENABLE=1.
UNIT_DIR := $(DESTDIR)/etc/systemd/system
SYSTEMCTL := systemctl
install: setup install-unit
	@if [ "$(ENABLE)" = 1 ]; then $(SYSTEMCTL) enable --now eniplane-agent.service; \
	 else echo "installed; start it with: systemctl enable --now eniplane-agent"; fi

install-unit:
	install -D -m 0644 packaging/eniplane-agent.service $(UNIT_DIR)/eniplane-agent.service
	@if [ -z "$(DESTDIR)" ] && [ -d /run/systemd/system ]; then $(SYSTEMCTL) daemon-reload; fi
