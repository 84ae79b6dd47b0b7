# Evergreen: the two commands of the README are `make demo` and `make test`.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.evergreen-installed
export PYTHONPATH :=

.PHONY: help setup demo stop status test test-fast lint lock clean bench env

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): requirements-dev.lock requirements.lock pyproject.toml
	@echo "[setup] creating $(VENV) (Python: $(PYTHON)) and installing the locked stack with compiled bytecode"
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -m pip install --quiet --disable-pip-version-check uv
	@$(BIN)/uv pip install --quiet --compile-bytecode -p $(BIN)/python -r requirements-dev.lock
	@$(BIN)/uv pip install --quiet --compile-bytecode -p $(BIN)/python --no-deps -e .
	@touch $@
	@echo "[setup] done: $$($(BIN)/python --version), $$($(BIN)/airflow version 2>/dev/null | tail -1 | sed 's/^/airflow /')"

setup: $(STAMP) ## create .venv with the locked stack (idempotent)

demo: setup ## run the embedded demo (Airflow UI :8080, MLflow UI :5000, local storage); leaves it running
	@$(BIN)/python -m devtools.demo

stop: ## stop the demo stack started by `make demo`
	@$(BIN)/python -m devtools.demo stop

status: ## show whether the demo stack is running
	@$(BIN)/python -m devtools.demo status

test: setup ## run every test tier (unit, DAG, S3 over HTTP, real scheduler)
	@echo "[test] running the whole suite"
	@$(BIN)/python -m pytest

test-fast: setup ## skip the slow tiers (real scheduler, production topology)
	@$(BIN)/python -m pytest -m "not scheduler and not production"

bench: setup ## benchmarks vs their baselines (BENCH_ARGS="--scale L --only training"); see docs/performance.md
	@$(BIN)/python -m benchmarks.run $(BENCH_ARGS)

lint: setup ## ruff (with Airflow's AIR rules)
	@$(BIN)/ruff check .

lock: ## re-resolve requirements*.lock from requirements*.txt
	@$(BIN)/uv pip compile -q -p 3.11 requirements.txt -o requirements.lock
	@$(BIN)/uv pip compile -q -p 3.11 requirements-dev.txt -o requirements-dev.lock

env: ## write .env for docker compose with freshly generated secrets (keeps an existing one)
	@$(PYTHON) scripts/make-env.py

clean: stop ## remove local demo state (not the venv)
	rm -rf .evergreen
