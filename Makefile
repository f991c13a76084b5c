# Set-up and entry points.  `make demo` and `make test` each create the virtual environment on first use.
# torch is pinned to 2.13.0 here: an unpinned torch would pull multi-GB CUDA wheels.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH := torch==2.13.0

.PHONY: demo test lint bench docs docs-serve docs-figures clean

$(BIN)/bilevel: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH)" -e ".[test]"
	touch $@

demo: $(BIN)/bilevel
	$(BIN)/bilevel run hyperclean --dataset digits --corruption 0.8 --solver lancbio --max-iter 1000 --out results/demo.csv

test: $(BIN)/bilevel
	$(BIN)/python -m ruff check src tests benchmarks examples tools
	$(BIN)/python -m pytest -q

lint: $(BIN)/bilevel
	$(BIN)/python -m ruff check src tests benchmarks examples tools

bench: $(BIN)/bilevel
	$(BIN)/python benchmarks/overhead.py

# the documentation site (mkdocs.yml, docs/): the docs extra goes into the same venv; --strict fails on any warning
$(VENV)/.docs: $(BIN)/bilevel pyproject.toml
	$(BIN)/python -m pip install --quiet "$(TORCH)" -e ".[docs]"
	touch $@

docs: $(VENV)/.docs
	$(BIN)/python -m mkdocs build --strict

docs-serve: $(VENV)/.docs
	$(BIN)/python -m mkdocs serve

# the gallery's figures: each example at its default budget, its PNG copied under docs/examples/figures/
EXAMPLE_FIGURES := own_problem hyperclean_digits mini_batch yaml_sweep bilevel_rl data_parallel
docs-figures: $(BIN)/bilevel
	for name in $(EXAMPLE_FIGURES); do \
		BILEVEL_EXAMPLES_OUT=examples/output $(BIN)/python examples/$$name.py > /dev/null && \
		cp examples/output/$$name.png docs/examples/figures/$$name.png || exit 1; \
	done

clean:
	rm -rf $(VENV) results .pytest_cache site examples/output
