# Sluiceway: every target installs what it needs first; a fresh clone needs nothing else.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
UV := $(VENV)/bin/uv
STAMP := $(VENV)/.installed

.PHONY: install proto lint check test test-churn test-unit test-integration test-faults demo bench bench-control \
	bench-venv bench-durability bench-profiles bench-observability up down clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check uv==0.13.8
	$(UV) pip install --quiet --python $(PY) -e '.[dev]'
	touch $(STAMP)

# Regenerate the protobuf/gRPC code from proto/ (committed, checked for drift by the tests).
proto: $(STAMP)
	$(PY) tools/protogen.py

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) -m mypy libs/common/src/sluiceway/common libs/client/src/sluiceway/client services/*/src/sluiceway/*/domain

# lint + the whole suite (which includes the generated-code drift test)
check: lint test

# The whole suite: each test file on one of TEST_JOBS processes (a file's fixtures stay
# together), the 20 slowest tests listed at the end.
TEST_JOBS ?= 3
test: $(STAMP)
	$(VENV)/bin/pytest -q -n $(TEST_JOBS) --dist loadfile --durations=20

# The suite while another process binds and releases random loopback ports throughout:
# proves that no server start races for a port picked as "free".
test-churn: $(STAMP)
	$(PY) tools/port_churn.py --seconds 3600 --hold 300 & churn=$$!; \
	trap 'kill $$churn 2>/dev/null' EXIT; \
	$(VENV)/bin/pytest -q -n $(TEST_JOBS) --dist loadfile --durations=20

test-unit: $(STAMP)
	$(VENV)/bin/pytest -q tests/unit

test-integration: $(STAMP)
	$(VENV)/bin/pytest -q tests/integration

# SIGKILL at every crash point (and a killed nats-server): restart, check the outcome, print
# the table (crash point, outcome, rows, seconds to recover); also in .sluiceway/faults.json
test-faults: $(STAMP)
	$(VENV)/bin/pytest -q tests/integration/test_faults.py

demo: $(STAMP)
	$(PY) -m sluiceway.cli.demo

# DuckDB 1.4.4 and its postgres_scanner extension (a PyPI wheel: LOADed from its file, never
# INSTALLed) in .venv-bench, for bench/references.py only; a stamp makes it idempotent
bench-venv: $(STAMP)
	$(PY) -m bench.references venv

bench: $(STAMP) bench-venv
	@$(PY) -m bench.run

# the same export with telemetry off and on (OTLP spans + scraped /metrics), alternating
bench-observability: $(STAMP)
	$(PY) -m bench.observability

up: $(STAMP)
	$(VENV)/bin/sluiceway up

down: $(STAMP)
	$(VENV)/bin/sluiceway down

clean:
	rm -rf .sluiceway .pytest_cache

# What durability costs: the same 2M-row Parquet parts through PartWriter with and without fsync
# (part file + directory), alternating, best of BENCH_ROUNDS (4); JSON report on stdout
bench-durability: $(STAMP)
	$(PY) -m bench.durability

bench-profiles: $(STAMP)
	$(PY) -m bench.profiles

# The control plane at 100,000 synthetic runs (5M+ events) on a local nats-server: projection
# rate, rebuild time, gRPC read latency, WatchRun latency, planner start-up; JSON on stdout
bench-control: $(STAMP)
	@$(PY) -m bench.control
