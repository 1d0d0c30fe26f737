# shoal: run as root on Debian 12. `make demo` and `make test` install what is missing first.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.stamp

# command -> Debian package providing it. A command already on PATH needs nothing installed.
TOOLS := ip:iproute2 nft:nftables dig:dnsutils iperf3:iperf3 wrk:wrk dnsmasq:dnsmasq-base \
         curl:curl dnsperf:dnsperf sysctl:procps pgrep:procps nsenter:util-linux python3:python3 \
         haproxy:haproxy openssl:openssl wireguard-go:wireguard-go

.PHONY: help setup system demo test unit integration lint clean

help:
	@echo "make demo   build a 3-node lab and walk through what shoal does (as root)"
	@echo "make test   lint, then unit and integration tests (as root)"
	@echo "make setup  install missing Debian packages and the Python venv"
	@echo "make lint   ruff check"
	@echo "make clean  take the default lab down"

setup: system $(STAMP)

# apt only when something is missing, so that a ready machine pays nothing.
system:
	@missing=""; \
	for pair in $(TOOLS); do \
	  command -v "$${pair%%:*}" >/dev/null 2>&1 || missing="$$missing $${pair##*:}"; \
	done; \
	if [ ! -x $(PY) ] && ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then \
	  missing="$$missing python3-venv"; \
	fi; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  apt-get update; \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $$missing; \
	fi

$(PY): | system
	python3 -m venv $(VENV)

# Reinstall only when pyproject.toml changed since the last install.
$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

lint: setup
	$(VENV)/bin/ruff check .

unit: setup
	$(VENV)/bin/pytest -q tests/unit

integration: setup
	$(VENV)/bin/pytest -q tests/integration

# Unit tests first: they are fast and need no root.
test: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/pytest -q tests/unit tests/integration

demo: setup
	$(PY) -m shoal demo

# The lab code needs only the standard library, so this works even without the venv.
clean:
	@py=$(PY); [ -x $$py ] || py=python3; \
	PYTHONPATH=. $$py -c 'from shoal.lab import lab_down; lab_down("shoal")'
