# The two commands: `make demo` and `make test`. Both (re)build .venv when it is
# missing or older than the files that define it.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_ARGS ?= --duration 60

.PHONY: venv demo test fuzz bench lint clean

venv: $(STAMP)

$(STAMP): pyproject.toml plugins/edged-example/pyproject.toml cloud_tools/pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]' -e plugins/edged-example \
		-e cloud_tools
	touch $(STAMP)

demo: venv
	$(BIN)/edged demo -c configs/demo.yaml $(DEMO_ARGS)

test: venv
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

# The property-based tests of every decoder of untrusted input, with many more examples
# than `make test` runs (HYPOTHESIS_PROFILE=fuzz; see tests/conftest.py).
fuzz: venv
	HYPOTHESIS_PROFILE=fuzz $(BIN)/python -m pytest -q -m fuzz -p no:cacheprovider

bench: venv
	$(BIN)/python benchmarks/run.py
	$(BIN)/python benchmarks/capture.py
	$(BIN)/python benchmarks/mqtt_e2e.py
	$(BIN)/python benchmarks/agent.py
	$(BIN)/python benchmarks/swap.py

lint: venv
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
