# Berth: one command to run it, one to test it. Everything else is installed on demand.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
# iproute2, iptables and util-linux (setpriv) isolate tools; python3-aiohttp runs the bundled
# echo tool under Debian's python3, which every tool user may execute.
RUN_PACKAGES := nginx iproute2 iptables util-linux python3-aiohttp
TEST_PACKAGES := nginx iproute2 iptables util-linux python3-aiohttp redis-server postgresql chromium fonts-dejavu-core docker.io busybox-static debootstrap docker-compose nodejs curl

.PHONY: run test test-fast bench clean

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed-test: $(BIN)/activate setup.cfg pyproject.toml
	$(BIN)/pip install -q -e '.[test]'
	touch $@

$(VENV)/.installed: $(BIN)/activate setup.cfg pyproject.toml
	$(BIN)/pip install -q -e .
	touch $@

# The demo tools' interpreter. Tools run as users of their own, who cannot execute a venv built
# on a private interpreter: this one is built on Debian's /usr/bin/python3, with its aiohttp.
TOOLS_VENV ?= .venv-tools
$(TOOLS_VENV)/.installed:
	@deploy/install-system-packages.sh python3-venv python3-aiohttp
	/usr/bin/python3 -m venv --system-site-packages $(TOOLS_VENV)
	$(TOOLS_VENV)/bin/pip install -q 'jupyterlab>=4'
	touch $@

## make run: Berth on http://berth.localhost:8080/ with the demo catalogue (Ctrl-C stops it)
run: $(VENV)/.installed $(TOOLS_VENV)/.installed
	@deploy/install-system-packages.sh $(RUN_PACKAGES)
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
