# The two commands: `make demo` and `make test`. Both (re)build .venv when it is
# missing or older than the files that define what they install.
#
# Two sets, each with its stamp file, rebuilt when its inputs change:
# - the device package alone (`pip install -e .`): all `make demo` needs, so the demo
#   runs as a device would, without pytest, moto or any dev tool;
# - the development set on top of it: the dev extras, the example plugin and
#   cloud_tools with its training extra (torch 2.13.0, CPU), for `make test`, `fuzz`,
#   `bench` and `lint`.
# `make venv` builds the development set (what working on edged needs) and runs nothing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DEVICE_STAMP := $(VENV)/.installed-device
DEV_STAMP := $(VENV)/.installed-dev
DEMO_ARGS ?= --duration 60
DASHBOARD_STAMP := $(VENV)/.installed-dashboard
DASHBOARD ?= 127.0.0.1:8088

.PHONY: venv demo dashboard-demo fleet-demo test fuzz bench lint clean

venv: $(DEV_STAMP)

$(DEVICE_STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e .
	touch $(DEVICE_STAMP)

$(DEV_STAMP): $(DEVICE_STAMP) plugins/edged-example/pyproject.toml cloud_tools/pyproject.toml
	$(BIN)/python -m pip install --quiet -e '.[dev]' -e plugins/edged-example \
		-e 'cloud_tools[train]'
	touch $(DEV_STAMP)

demo: $(DEVICE_STAMP)
	$(BIN)/edged demo -c configs/demo.yaml $(DEMO_ARGS)

# The demo with its dashboard on http://$(DASHBOARD)/ (the device package and its
# `dashboard` extra, aiohttp), until Ctrl-C.
$(DASHBOARD_STAMP): $(DEVICE_STAMP)
	$(BIN)/python -m pip install --quiet -e '.[dashboard]'
	touch $(DASHBOARD_STAMP)

dashboard-demo: $(DASHBOARD_STAMP)
	$(BIN)/edged demo -c configs/demo.yaml --dashboard $(DASHBOARD)

fleet-demo: $(DEV_STAMP)
	$(BIN)/edged-cloud fleet-demo $(FLEET_ARGS)

test: $(DEV_STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

# The property-based tests of every decoder of untrusted input, with many more examples
# than `make test` runs (HYPOTHESIS_PROFILE=fuzz; see tests/conftest.py).
fuzz: $(DEV_STAMP)
	HYPOTHESIS_PROFILE=fuzz $(BIN)/python -m pytest -q -m fuzz -p no:cacheprovider

bench: $(DEV_STAMP)
	$(BIN)/python benchmarks/run.py
	$(BIN)/python benchmarks/capture.py
	$(BIN)/python benchmarks/mqtt_e2e.py
	$(BIN)/python benchmarks/lean.py
	$(BIN)/python benchmarks/idle_floor.py
	$(BIN)/python benchmarks/mqtt_read.py
	$(BIN)/python benchmarks/agent.py
	$(BIN)/python benchmarks/swap.py
	$(BIN)/python benchmarks/watch.py
	$(BIN)/python benchmarks/open_page.py

lint: $(DEV_STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
