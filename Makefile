# Two commands a newcomer needs: `make demo` (the main job) and `make test` (the suite); `make lint` runs
# ruff and mypy as pyproject.toml configures them, `make test-quick` the suite without the slow tests.
# Each creates its own virtual environment in $(VENV) and installs what it needs.
# TORCH_SPEC pins the CPU wheel; GPU users: `make demo TORCH_SPEC=torch` (PyPI's CUDA build on Linux).
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.irface-installed

.PHONY: demo test test-quick lint install clean

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	rm -rf demo_out
	$(VENV)/bin/irface demo --out demo_out $(DEMO_ARGS)

# --durations=15: the 15 slowest tests, so a slow newcomer is seen (mark it @pytest.mark.slow).
test: $(STAMP)
	$(PY) -m pytest -q --durations=15 $(TEST_ARGS)

test-quick: $(STAMP)
	$(PY) -m pytest -q -m "not slow" --durations=15 $(TEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
