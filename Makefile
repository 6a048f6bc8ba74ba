# The two commands of the README, and the pieces they are made of.
#   make run    a local single-node swarm, then swarmkeeper against desired-state/
#   make test   lint, types and the whole test suite against a real local swarm
#   make bench  the benchmarks against the local swarm; writes docs/benchmarks.md

PYTHON ?= python3
VENV ?= .venv
STATE_DIR ?= desired-state
BIN := $(VENV)/bin

.PHONY: run test lint bench swarm-up swarm-down test-deps venv clean

# The virtualenv is rebuilt when the dependency list or its pins change.
$(BIN)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check --upgrade pip
	$(BIN)/pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[test,lint,bench]'
	touch $@

venv: $(BIN)/.installed

swarm-up:
	scripts/local-swarm.sh up

swarm-down:
	scripts/local-swarm.sh down

# What tests need beyond the engine (Prometheus, for the scrape test).
test-deps:
	scripts/test-deps.sh

run: venv swarm-up
	$(BIN)/swarmkeeper run --state-dir $(STATE_DIR)

lint: venv
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/mypy src tests benchmarks

# Every benchmark case against the local swarm (DOCKER_HOST or the default
# socket); writes docs/benchmarks.md. BENCH_ARGS passes options through.
bench: venv swarm-up
	$(BIN)/python benchmarks/run_all.py $(BENCH_ARGS)

test: lint swarm-up test-deps
	$(BIN)/pytest

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache .mypy_cache .ruff_cache
