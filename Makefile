# Berth: one command to run it, one to test it. Everything else is installed on demand.
VENV ?= .venv
# Berth's auth service and web app run as an unprivileged user (BERTH_SERVICE_USER), which must be
# able to run this Python: Debian's, where there is one, rather than one in a private home.
PYTHON ?= $(firstword $(wildcard /usr/bin/python3) python3)
BIN := $(VENV)/bin
# iproute2, iptables and util-linux (setpriv) isolate tools; python3-aiohttp runs the bundled
# echo tool under Debian's python3, which every tool user may execute.
RUN_PACKAGES := nginx iproute2 iptables util-linux python3-aiohttp
TEST_PACKAGES := nginx iproute2 iptables util-linux python3-aiohttp redis-server postgresql chromium fonts-dejavu-core docker.io busybox-static debootstrap docker-compose nodejs curl

.PHONY: run run-https test test-fast bench clean

$(BIN)/activate:
	deploy/install-system-packages.sh python3-venv
	echo "Creating the Python environment $(VENV)…"
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed-test: $(BIN)/activate setup.cfg pyproject.toml
	deploy/pip-quietly.sh "Installing Berth and its test tools into $(VENV)" $(BIN)/pip install -e '.[test]'
	touch $@

$(VENV)/.installed: $(BIN)/activate setup.cfg pyproject.toml
	deploy/pip-quietly.sh "Installing Berth into $(VENV)" $(BIN)/pip install -e .
	touch $@

# The demo tools' interpreter. Tools run as users of their own, who cannot execute a venv built
# on a private interpreter: this one is built on Debian's /usr/bin/python3, with its aiohttp.
TOOLS_VENV ?= .venv-tools
$(TOOLS_VENV)/.installed:
	@deploy/install-system-packages.sh python3-venv python3-aiohttp
	echo "Creating the demo tools' Python environment $(TOOLS_VENV)…"
	/usr/bin/python3 -m venv --system-site-packages $(TOOLS_VENV)
	deploy/pip-quietly.sh "Installing JupyterLab into $(TOOLS_VENV)" $(TOOLS_VENV)/bin/pip install 'jupyterlab>=4'
	touch $@

# Each stage says what it does in one line; pip's own output goes to the screen only if it fails.
.SILENT: $(BIN)/activate $(VENV)/.installed-test $(VENV)/.installed $(TOOLS_VENV)/.installed run

## make run: Berth on http://berth.localhost:8080/ with the demo catalogue (Ctrl-C stops it).
## Tools live on a site of their own, *.berth-tools.localhost, so that no tool's page can set a
## cookie for Berth's (BERTH_TOOLS_DOMAIN; set it empty for tools under berth.localhost).
run: $(VENV)/.installed $(TOOLS_VENV)/.installed
	deploy/install-system-packages.sh $(RUN_PACKAGES)
	echo "Starting Berth (berth run)…"
	BERTH_TOOLS_DOMAIN=$${BERTH_TOOLS_DOMAIN-berth-tools.localhost} \
	BERTH_TOOL_PYTHON=$${BERTH_TOOL_PYTHON:-$(abspath $(TOOLS_VENV))/bin/python} $(BIN)/berth run

## make run-https: the same over HTTPS, on https://berth.localhost:8443/ (http://…:8080/ redirects),
## with a certificate from a CA of this machine's own, in var/tls (`berth local-certificate` says how to trust it)
run-https: $(VENV)/.installed $(TOOLS_VENV)/.installed
	@deploy/install-system-packages.sh $(RUN_PACKAGES) openssl
	eval "$$(BERTH_SCHEME=https $(BIN)/berth local-certificate --exports)" && \
	BERTH_SCHEME=https BERTH_HTTP_PORT=$${BERTH_HTTP_PORT:-8443} BERTH_HTTP_REDIRECT_PORT=$${BERTH_HTTP_REDIRECT_PORT:-8080} \
	BERTH_CATALOGUE=$${BERTH_CATALOGUE:-deploy/demo-catalogue.yml} \
	BERTH_TOOL_PYTHON=$${BERTH_TOOL_PYTHON:-$(abspath $(TOOLS_VENV))/bin/python} $(BIN)/berth run

## make test: the whole suite, against real nginx, PostgreSQL, Redis and Chromium
test: $(VENV)/.installed-test
	@deploy/install-system-packages.sh $(TEST_PACKAGES)
	@status=0; $(BIN)/python -m pytest $(PYTEST_ARGS) || status=$$?; \
	if [ $$status -eq 5 ]; then echo "pytest collected no tests (exit 5): nothing failed"; status=0; fi; \
	exit $$status

## make bench: proxied throughput and latency, as ratios to plain nginx (and to JupyterHub's
## configurable-http-proxy) measured in the same run; bench/README.md lists the other benchmarks
bench: $(VENV)/.installed-test
	@deploy/install-system-packages.sh nginx:nginx wrk:wrk node:nodejs npm:npm curl:curl
	$(BIN)/python -m bench.proxy

clean:
	rm -rf var .pytest_cache
