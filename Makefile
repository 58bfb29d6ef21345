# Two commands: `make run` starts the gateway, `make test` runs the whole suite.
# Both install what is missing first (Debian packages and a Python venv built from
# the same system Python that Kamailio embeds), and are quick when all is present.

SHELL := /bin/bash
ROOT := $(abspath .)
VENV := $(ROOT)/.venv
PY := $(VENV)/bin/python
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

DEB_PACKAGES := kamailio kamailio-python3-modules kamailio-websocket-modules \
	kamailio-tls-modules kamailio-utils-modules kamailio-extra-modules \
	sip-tester python3 python3-venv python3-pip

PYTEST_ARGS ?=

.PHONY: deps deb-deps py-deps run test unit integration clean

deps: deb-deps py-deps

# apt-get only runs when a package is missing.
deb-deps:
	@missing=""; for p in $(DEB_PACKAGES); do \
		dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:$$missing"; \
		$(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing; \
	fi

# Kamailio embeds /usr/bin/python3, so the venv must come from that interpreter.
$(VENV)/.stamp: requirements-kemi.txt requirements-test.txt
	@test -x $(PY) || /usr/bin/python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements-kemi.txt -r requirements-test.txt
	@touch $@

py-deps: deb-deps $(VENV)/.stamp

run: deps
	./kamailio/run-gateway.sh

test: deps
	$(PY) -m pytest tests $(PYTEST_ARGS)

unit: deps
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

integration: deps
	$(PY) -m pytest tests/integration $(PYTEST_ARGS)

clean:
	rm -rf .run .pytest_cache
