# The one command surface: the README and CI (.ci/run) call these targets.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: install demo test faults lint typecheck check bench bench-deps clean deploy-deps

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

## make demo: the whole relay on embedded defaults (Valkey, local SNS, workers) with a spike of events
demo: install
	$(BIN)/relay demo

## make test: the test suite (real Valkey servers, real worker processes, moto, Prometheus tools)
test: install deploy-deps
	$(BIN)/python -m pytest

## make faults: only the process-level fault tests
faults: install
	$(BIN)/python -m pytest tests/faults

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install
	$(BIN)/mypy

check: lint typecheck test

## make bench: throughput against baselines measured in the same run
bench: install bench-deps
	$(BIN)/python -m benchmarks.run

## make bench-deps: wrk (Debian), the HTTP load generator; without it the bench uses its own
bench-deps:
	@command -v wrk >/dev/null || { $(SUDO) apt-get update -qq && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends wrk; } || \
		echo "wrk could not be installed: the HTTP floods use benchmarks/http_load.py instead"

SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

## make deploy-deps: the Debian tools tests/deploy runs (promtool and the Prometheus server)
deploy-deps:
	@if command -v promtool >/dev/null && command -v prometheus >/dev/null; then \
		echo "promtool and prometheus are installed"; \
	else \
		$(SUDO) apt-get update && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends prometheus && \
		if [ -d /run/systemd/system ]; then $(SUDO) systemctl disable --now prometheus || true; fi; \
	fi

clean:
	rm -rf $(VENV) .relay .pytest_cache .mypy_cache .ruff_cache .hypothesis
