# Everything a maintainer does. `make help` lists the targets.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# `make run` needs only the package; the test, dev and bench tools come with `make install`.
RUN_STAMP := $(VENV)/.installed-run

.DEFAULT_GOAL := help
.PHONY: help install system-deps run test lint format bench chart clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,dev,bench]'
	touch $(STAMP) $(RUN_STAMP)

$(RUN_STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -e .
	touch $(RUN_STAMP)

install: $(STAMP) ## create .venv and install the package with its test and dev tools

system-deps: ## install redis-server with apt when it is missing (the tests start their own)
	@command -v redis-server >/dev/null 2>&1 || { \
	  echo "redis-server not found: installing it with apt-get"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq redis-server >/dev/null; }

run: $(RUN_STAMP) ## run the issuer on http://127.0.0.1:8080/_services/token with the file key store in keys/
	$(BIN)/idp serve

test: $(STAMP) system-deps ## run the whole test suite (unit and functional)
	$(BIN)/pytest $(PYTEST_ARGS)

lint: $(STAMP) ## ruff (lint and format check) and mypy
	$(BIN)/ruff check idp tests bench
	$(BIN)/ruff format --check idp tests bench
	$(BIN)/mypy

chart: $(STAMP) ## render the helm chart with Helm's engine, lint it and validate it against Kubernetes schemas
	$(BIN)/pytest -q tests/chart

bench: $(STAMP) system-deps ## benchmark minting, JWKS and discovery against the machine's ceilings (BENCH_QUICK=1: under a minute)
	@command -v wrk >/dev/null 2>&1 || { \
	  echo "wrk not found: installing it with apt-get"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq wrk >/dev/null; }
	$(BIN)/python -m bench $(BENCH_ARGS)

format: $(STAMP) ## reformat the code with ruff
	$(BIN)/ruff format idp tests bench
	$(BIN)/ruff check --fix idp tests bench

clean: ## remove the virtual environment and caches (keeps keys/)
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
