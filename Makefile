# The README's two commands: `make run` (set up + run the main job) and `make test` (set up + run the tests).
PYTHON ?= python3
VENV ?= .venv
# CPU installs pin torch through this file; GPU hosts: make venv CONSTRAINTS=/dev/null
CONSTRAINTS ?= constraints/cpu.txt
BIN := $(VENV)/bin
DEMO_MODEL ?= .cache/demo-model
PYTEST_ARGS ?=

.PHONY: venv tools run sidecar test test-fast lint bench clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml $(CONSTRAINTS)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c $(CONSTRAINTS) -e '.[sidecar,dev]'
	touch $@

$(DEMO_MODEL)/manifest.json: | venv
	$(BIN)/dssidecar demo-model $(DEMO_MODEL) --size tiny --train-steps 200

# The main job on the embedded default: the agent supervising the sidecar on the demo model.
run: venv
	$(BIN)/dsagent run --data-dir .cache/dsagent

# The sidecar alone on the demo model.
sidecar: venv $(DEMO_MODEL)/manifest.json
	$(BIN)/dssidecar serve --model $(DEMO_MODEL)

# Reference tools the tests prove against (promtool, chromium); missing ones make their tests skip with the reason.
tools:
	@bash .ci/install-deps

test: venv tools
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

test-fast: venv
	$(BIN)/python -m pytest -q -m "not slow" $(PYTEST_ARGS)

lint: venv
	$(BIN)/python -m ruff check .
	$(BIN)/python -m mypy

bench: venv
	$(BIN)/python bench/engine_throughput.py

clean:
	rm -rf $(VENV) .cache
