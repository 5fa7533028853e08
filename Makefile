# The two commands of the README: `make run` and `make test`. Both set everything up.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test bench bench-check bench-zero lint setup system-tools clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[standard,test]'
	touch $(STAMP)

setup: $(STAMP)

# nginx, HAProxy, curl, systemd-socket-activate and wrk from the system's package manager when missing
# (only as root; otherwise the tests that need them name the missing tool).
system-tools:
	@./tests/install-system-tools.sh

run: setup
	$(BIN)/corral examples.hello:app --workers 2 --host 127.0.0.1 --port 8000

test: setup system-tools
	$(BIN)/python -m pytest -q

bench: setup system-tools
	$(BIN)/pip install --quiet -e '.[standard,test,bench]' hypercorn
	$(BIN)/python -m tests.bench.run

# The hot path's instructions per request (valgrind) against tests/bench/baseline.json: fails when a
# case costs more than the baseline beyond the tolerance (docs/BENCH_CHECK.md; --update lowers it).
bench-check: setup system-tools
	$(BIN)/python -m tests.bench.check

bench-zero: setup
	$(BIN)/pip install --quiet -e '.[standard,test,bench]'
	$(BIN)/python -m tests.bench.zero_downtime

lint: setup
	$(BIN)/ruff check daemon server_core tests
	$(BIN)/mypy

clean:
	rm -rf $(VENV) build *.egg-info
