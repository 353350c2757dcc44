# Mall Circle — the index. `make help` lists every target.
SHELL := /bin/bash
.DEFAULT_GOAL := help
export UV_PYTHON_DOWNLOADS := never
export UV_PYTHON := 3.11
UV ?= $(shell command -v uv 2>/dev/null || echo .tools/bin/uv)
VENV := .venv/bin
PYTHON ?= $(shell command -v python3.11 || command -v python3)
PYTEST_ARGS ?=

.PHONY: help
help: ## List every target
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  \033[36m%-14s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

.tools/bin/uv:
	$(PYTHON) -m venv .tools
	.tools/bin/pip install --quiet 'uv==0.13.8'

.PHONY: install
install: $(if $(findstring .tools,$(UV)),.tools/bin/uv) ## Install the workspace (Python 3.11 venv from the lock, no downloads of interpreters)
	$(UV) sync --frozen

.PHONY: run
run: install ## Start the whole suite locally: embedded PostgreSQL + NATS (unless DATABASE_URL/NATS_URL), every service, the gateway, a demo mall
	$(VENV)/python deploy/local/run.py

.PHONY: test
test: install ## Run the whole test suite against real PostgreSQL and NATS (embedded unless URLs are given)
	$(VENV)/pytest -q $(PYTEST_ARGS)

.PHONY: test-unit
test-unit: install ## Fast tests that need no servers (domain and parsing)
	$(VENV)/pytest -q -m "not integration" $(PYTEST_ARGS)

.PHONY: lint
lint: install ## ruff lint and format check
	$(VENV)/ruff check .
	$(VENV)/ruff format --check .

.PHONY: fmt
fmt: install ## Format and auto-fix
	$(VENV)/ruff format .
	$(VENV)/ruff check --fix .

.PHONY: typecheck
typecheck: install ## mypy --strict over libs, services, tests
	$(VENV)/mypy libs services simulators tests bench deploy scripts/k8s_lint.py

.PHONY: protos
protos: install ## Regenerate libs/contracts from protos/
	scripts/protos.sh libs/contracts

.PHONY: protos-check
protos-check: install ## Fail if libs/contracts drifted from protos/
	scripts/protos-check.sh

.PHONY: protos-lint
protos-lint: ## buf lint the protos (buf from the npm registry)
	scripts/protos-lint.sh

.PHONY: k8s-check
k8s-check: ## Deploy checks: hadolint, yamllint, render overlays, kubernetes-validate --strict (1.33), structural checks, checkov
	scripts/k8s-check.sh

.PHONY: bench
.PHONY: bench-tools
bench-tools: ## The flash grab's load generator (autocannon, from the npm registry) into bench/load
	npm ci --prefix bench/load --no-audit --no-fund

bench: install bench-tools ## Benchmarks with same-run baselines; writes bench/results/*.json
	$(VENV)/python bench/payments.py --compare-replicas
	$(VENV)/python bench/webhook.py
	$(VENV)/python bench/consumers.py
	$(VENV)/python bench/gateway_card.py
	$(VENV)/python bench/coupons.py
	$(VENV)/python bench/flash_grab.py --gateways 2 --again
	$(VENV)/python bench/parking.py
	$(VENV)/python bench/storm.py
	$(VENV)/python bench/sse_latency.py --sweep 250,500,750

.PHONY: reconcile
reconcile: install ## Reconcile a mall's payments end to end: MALL=<mall_id> [START=<iso>] [END=<iso>] (default: last 24 h up to 5 min ago); exit 1 on any difference
	$(VENV)/python -m points reconcile $(MALL) $(START) $(END)

.PHONY: chaos
chaos: install ## Long chaos run: a payment storm while every process, nats-server and PostgreSQL are SIGKILLed and restarted; recovery per fault, redeliveries, reconciliation
	$(VENV)/python bench/chaos.py

.PHONY: clean
clean: ## Remove caches and local run state
	rm -rf .run .pytest_cache .mypy_cache .ruff_cache
