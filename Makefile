# syncd: `make demo` runs it, `make test` tests it. Both create .venv and install on first use.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test test-fast lint bench install clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,embedded]'
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/syncd demo

test: $(STAMP)
	$(PY) -m pytest

test-fast: $(STAMP)
	$(PY) -m pytest -m "not slow"

lint: $(STAMP)
	$(PY) -m ruff check syncd tests
	$(PY) -m ruff format --check syncd tests
	$(PY) -m mypy syncd tests

bench: $(STAMP)
	$(PY) -m tests.bench.bench_account_sync --accounts 1000 --positions 50
	$(PY) -m tests.bench.bench_issue14 --small-only
	$(PY) -m tests.bench.bench_monitor --accounts 1000 --positions 50
	$(PY) -m tests.bench.bench_cycles --accounts 1000 --positions 50
	$(PY) -m tests.bench.bench_startup
	$(PY) -m tests.bench.bench_fill_latency
	$(PY) -m tests.bench.bench_quote_exit
	$(PY) -m tests.bench.bench_alpaca_adapter
	$(PY) -m tests.bench.bench_sim

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
