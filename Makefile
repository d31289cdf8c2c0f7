# Two commands: `make run` and `make test`. Both set up what they need first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# What running needs (the package and its dependencies), and on top of it the test tools.
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: run test lint typecheck check bench setup setup-test services clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade --quiet pip
	$(BIN)/pip install --quiet -e .
	touch $(STAMP)

$(TEST_STAMP): $(STAMP)
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(TEST_STAMP)

setup: $(STAMP)

setup-test: $(TEST_STAMP)

# nats-server (for tests also mosquitto and chromium; for benchmarks wrk) from Debian's
# packages when missing.
services:
	@missing=""; \
	command -v nats-server >/dev/null 2>&1 || [ -x /usr/sbin/nats-server ] || missing="$$missing nats-server"; \
	if [ "$(WITH_TEST_TOOLS)" = 1 ]; then \
		command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || missing="$$missing mosquitto"; \
		command -v chromium >/dev/null 2>&1 || missing="$$missing chromium"; \
	fi; \
	if [ "$(WITH_BENCH_TOOLS)" = 1 ]; then command -v wrk >/dev/null 2>&1 || missing="$$missing wrk"; fi; \
	if [ -n "$$missing" ]; then \
		echo "installing$$missing with apt-get"; \
		$(SUDO) apt-get update -qq && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi
	@# The tests create and drop their own database on the local PostgreSQL server: say so up front.
	@if [ "$(WITH_TEST_TOOLS)" = 1 ] && ! $(PYTHON) -c "import socket; socket.create_connection(('127.0.0.1', 5432), 2)" 2>/dev/null; then \
		echo "make test needs PostgreSQL on 127.0.0.1:5432 (user postgres, trust auth) for the task-history tests;"; \
		echo "start it (e.g. apt-get install postgresql && service postgresql start) and run make test again"; \
		exit 1; \
	fi

run: setup services
	$(BIN)/fngate serve -c examples/fngate.yaml

test: setup-test
	$(MAKE) services WITH_TEST_TOOLS=1
	$(BIN)/ruff check .
	$(BIN)/mypy gateway triggers sinks tests
	@# Most tests wait on brokers and gateways, not on the CPU: two workers halve the wall time.
	@# A file stays on one worker (its module gateway is started once); the tests marked serial
	@# (timing and broker outages, tests/conftest.py) then run alone, as they flaked under load.
	$(BIN)/pytest -p no:cacheprovider -q -n 2 --dist loadfile -m "not serial"
	$(BIN)/pytest -p no:cacheprovider -q -m serial

lint: setup-test
	$(BIN)/ruff check .
	$(BIN)/mypy gateway triggers sinks tests

bench: setup
	$(MAKE) services WITH_BENCH_TOOLS=1
	$(BIN)/pip install --quiet -e '.[bench]'
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .fngate .pytest_cache .mypy_cache .ruff_cache
