# Set-up and entry points.  `make demo` and `make test` each create the virtual environment on first use.
# torch is pinned to 2.13.0 here: an unpinned torch would pull multi-GB CUDA wheels.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH := torch==2.13.0

.PHONY: demo test lint bench clean

$(BIN)/bilevel: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH)" -e ".[test]"
	touch $@

demo: $(BIN)/bilevel
	$(BIN)/bilevel run hyperclean --dataset digits --corruption 0.8 --solver lancbio --max-iter 1000 --out results/demo.csv

test: $(BIN)/bilevel
	$(BIN)/python -m ruff check src tests benchmarks
	$(BIN)/python -m pytest -q

lint: $(BIN)/bilevel
	$(BIN)/python -m ruff check src tests benchmarks

bench: $(BIN)/bilevel
	$(BIN)/python benchmarks/overhead.py

clean:
	rm -rf $(VENV) results .pytest_cache
