# The one command surface: the README and CI (.ci/run) call these targets.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: install demo test faults lint typecheck check bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

## make demo: the whole relay on embedded defaults (Valkey, local SNS, workers) with a spike of events
demo: install
	$(BIN)/relay demo

## make test: the test suite (real Valkey servers, real worker processes, moto)
test: install
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
bench: install
	$(BIN)/python -m benchmarks.run

clean:
	rm -rf $(VENV) .relay .pytest_cache .mypy_cache .ruff_cache .hypothesis
