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
	sip-tester rtpengine-daemon openssl python3 python3-venv python3-pip
# Browser tests: Debian's Chromium (Playwright drives it; no browser download) and
# Node.js for the client build (esbuild from the npm registry).
TEST_DEB_PACKAGES := chromium fonts-dejavu-core docker-compose
NODE_DEB_PACKAGES := nodejs npm
CLIENT_MIN := client/dist/webrtc-custom.min.js

PYTEST_ARGS ?=

.PHONY: deps deb-deps test-deps py-deps client run test unit integration browser clean

deps: deb-deps py-deps client

# apt-get only runs when a package is missing (Node.js counts as present when
# node and npm are on the PATH, however they were installed).
deb-deps:
	@missing=""; for p in $(DEB_PACKAGES) $(if $(TEST_DEPS),$(TEST_DEB_PACKAGES)); do \
		dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if ! command -v node >/dev/null || ! command -v npm >/dev/null; then missing="$$missing $(NODE_DEB_PACKAGES)"; fi; \
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

# The minified client library (esbuild, pinned in client/package-lock.json).
client: $(CLIENT_MIN)

$(CLIENT_MIN): client/webrtc-custom.js client/package.json client/package-lock.json | deb-deps
	cd client && npm ci --no-audit --no-fund --loglevel=error && npm run --silent build

run: deps
	./kamailio/run-demo.sh

test: TEST_DEPS := 1
test: deps
	$(PY) -m pytest tests $(PYTEST_ARGS)

browser: TEST_DEPS := 1
browser: deps
	$(PY) -m pytest tests/browser $(PYTEST_ARGS)

unit: deps
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

integration: deps
	$(PY) -m pytest tests/integration $(PYTEST_ARGS)

clean:
	rm -rf .run .pytest_cache
