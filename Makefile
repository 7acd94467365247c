# gdispatch developer tasks (GNU make). A fresh Debian machine needs only python3:
# the venv, the package and its test tools are installed on first use, and `make test`
# installs SIPp (Debian package sip-tester), Kamailio, openssl (the TLS tests'
# certificates), Chromium (the status page's test) and redis-server (a pair of nodes)
# when they are missing.

SHELL := /bin/bash
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
# root runs apt-get directly; anyone else through sudo
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
APT := $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get

.PHONY: all install install-sipp install-kamailio install-kamailio-tls install-openssl install-chromium install-redis run test bench bench-tls bench-rounds bench-syscalls bench-latency bench-attack bench-inproc bench-memory bench-scrape bench-hep bench-cluster bench-compare lint clean distclean

all: test

# The venv and an editable install of the package with its test extra. Rebuilt when the
# packaging files change. Some Debian machines lack python3-venv (ensurepip): there
# `python3 -m venv` fails, so python3-venv is installed and the venv made again.
$(VENV)/.installed: setup.cfg pyproject.toml
	@if ! $(PY) -m pip --version >/dev/null 2>&1; then \
	  rm -rf $(VENV); \
	  if ! $(PYTHON) -m venv $(VENV); then \
	    echo "python3 -m venv failed: installing python3-venv"; rm -rf $(VENV); \
	    $(APT) update && $(APT) install -y python3-venv && $(PYTHON) -m venv $(VENV); \
	  fi; \
	fi
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

install: $(VENV)/.installed

install-sipp:
	@command -v sipp >/dev/null 2>&1 || { \
	  echo "sipp not found: installing sip-tester"; \
	  $(APT) update && $(APT) install -y sip-tester; }
	@command -v sipp >/dev/null 2>&1 || { echo "SIPp is still missing" >&2; exit 1; }

run: $(VENV)/.installed
	$(VENV)/bin/gdispatch run --config gdispatch.toml

# Kamailio is the reference the drop-in tests compare gdispatch with (tests/e2e/kamailio.py);
# without it they compare with Kamailio's recorded answers. The package enables its
# service (Kamailio's own script on port 5060): it is disabled, the tests start their own.
install-kamailio:
	@command -v kamailio >/dev/null 2>&1 || [ -x /usr/sbin/kamailio ] || { \
	  echo "kamailio not found: installing it"; \
	  $(APT) update && $(APT) install -y kamailio; \
	  $(SUDO) systemctl disable --now kamailio >/dev/null 2>&1 || true; }

# Kamailio's tls module (Debian package kamailio-tls-modules), for the TLS step of the
# bench, when Kamailio is installed without it. Not fatal: without it the TLS step
# measures gdispatch alone and says why.
install-kamailio-tls:
	@if { command -v kamailio >/dev/null 2>&1 || [ -x /usr/sbin/kamailio ]; } && \
	    ! ls /usr/lib/*/kamailio/modules/tls.so /usr/lib/kamailio/modules/tls.so >/dev/null 2>&1; then \
	  echo "Kamailio's tls module not found: installing kamailio-tls-modules"; \
	  $(APT) install -y kamailio-tls-modules || { $(APT) update && $(APT) install -y kamailio-tls-modules; } || \
	    echo "kamailio-tls-modules could not be installed: the TLS step measures gdispatch alone"; \
	fi

# The TLS tests make their certificates with openssl (tests/support/tlspeers.py).
install-openssl:
	@command -v openssl >/dev/null 2>&1 || { \
	  echo "openssl not found: installing it"; \
	  $(APT) update && $(APT) install -y openssl; }

# The status page's test drives a headless Chromium through chromedriver
# (tests/e2e/test_status_page.py, tests/e2e/webdriver.py).
install-chromium:
	@command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1 || { \
	  echo "chromium or chromedriver not found: installing them"; \
	  $(APT) update && $(APT) install -y chromium chromium-driver; }

# The tests of a pair of nodes ([cluster], gdispatch.ha) start their own redis-server.
install-redis:
	@command -v redis-server >/dev/null 2>&1 || { \
	  echo "redis-server not found: installing it"; \
	  $(APT) update && $(APT) install -y redis-server; \
	  $(SUDO) systemctl disable --now redis-server >/dev/null 2>&1 || true; }

test: $(VENV)/.installed install-sipp install-kamailio install-openssl install-chromium install-redis
	$(PY) -m pytest -q tests

# TLS=0 leaves out the TLS step (and the install of Kamailio's tls module)
bench: $(VENV)/.installed install-sipp $(if $(filter 0,$(TLS)),,install-kamailio-tls)
	PY=$(PY) bench/bench.sh

# The TLS step alone (bench/tls.sh): SIP over TLS with connections reused, max calls/s and
# CPU per call at 200 calls/s, next to Kamailio's tls module when it is installed.
bench-tls: $(VENV)/.installed install-kamailio-tls
	PY=$(PY) bench/tls.sh

# CPU per call at one fixed rate, ROUNDS times in one run, the proxies one after another:
# the same-run A/B of bench/PROFILE.md (bench/rounds.sh).
bench-rounds: $(VENV)/.installed install-sipp
	PY=$(PY) bench/rounds.sh

# The system calls per call of each proxy, by name, at one fixed rate (bench/syscalls.sh;
# needs perf).
bench-syscalls: $(VENV)/.installed install-sipp
	PY=$(PY) bench/syscalls.sh

bench-latency: $(VENV)/.installed install-sipp
	PY=$(PY) bench/latency.sh

# Floods, TCP exhaustion, reflection and forged relays from one source on the loopback,
# next to Kamailio when it is installed (bench/attack.sh; ~3.5 minutes per proxy).
bench-attack: $(VENV)/.installed install-sipp
	PY=$(PY) bench/attack.sh

bench-inproc: $(VENV)/.installed
	$(PY) bench/lib/inproc.py

bench-memory: $(VENV)/.installed install-sipp
	PY=$(PY) bench/memory.sh

# The CPU a Prometheus scrape of /metrics costs the proxy, A/B (bench/scrape.sh).
bench-scrape: $(VENV)/.installed install-sipp
	PY=$(PY) bench/scrape.sh

# The CPU HEP capture costs the proxy, on and off in alternating rounds (bench/hep_ab.sh).
bench-hep: $(VENV)/.installed install-sipp
	PY=$(PY) bench/hep_ab.sh

# The CPU the cluster mode ([cluster] redis) costs the proxy, alone and in cluster in
# alternating rounds, with calls/s (bench/cluster_ab.sh; starts its own redis-server).
bench-cluster: $(VENV)/.installed install-sipp install-redis
	PY=$(PY) bench/cluster_ab.sh

bench-compare: $(VENV)/.installed
	PY=$(PY) bench/compare.sh

# ruff and mypy are development tools, not dependencies: installed into the venv on first
# use. ruff targets Python 3.9, the oldest version the package supports; mypy checks the
# package with the settings in setup.cfg ([mypy]) and must find nothing.
lint: $(VENV)/.installed
	@[ -x $(VENV)/bin/ruff ] || $(PY) -m pip install -q ruff
	@[ -x $(VENV)/bin/mypy ] || $(PY) -m pip install -q mypy
	$(VENV)/bin/ruff check --target-version py39 .
	$(VENV)/bin/mypy

clean:
	rm -rf build dist *.egg-info .pytest_cache .ruff_cache
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -exec rm -rf {} +

# clean, and remove the venv too
distclean: clean
	rm -rf $(VENV)
