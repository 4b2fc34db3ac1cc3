# optbench: `make sweep` runs the benchmark, `make test` checks the code. See README.md.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python

.PHONY: setup test bench lint cell clean

# The venv is rebuilt only when pyproject.toml changes (idempotent).
setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

test: setup
	$(PY) -m ruff check .
	$(PY) -m pytest

bench: setup
	$(PY) tests/bench/bench_cell_timer.py

lint: setup
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

# One cell without any queue, e.g. `make cell ARGS="--optimization fp16 --batch-size 4"`.
cell: setup
	$(PY) -m worker.cell $(ARGS)

clean:
	rm -rf .pytest_cache .ruff_cache build *.egg-info
	find . -name __pycache__ -not -path './$(VENV)/*' -prune -exec rm -rf {} +
