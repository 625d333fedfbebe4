# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
# Both create the virtual environment when it is missing; torch 2.13.0 (the CPU
# build) is installed before the package so pip never pulls a CUDA build.

SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.omnipolicy-installed
export MUJOCO_GL ?= egl
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: setup demo test test-all test-interop bench clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[all]'
	@touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/omnipolicy tokenize-demo

test: $(STAMP)
	$(PY) -m pytest -q -m "not slow and not interop and not ros" --timeout=600

test-all: $(STAMP)
	$(PY) -m pytest -q -m "not interop" --timeout=1800

bench: $(STAMP)
	$(PY) scripts/bench_tokenizer.py

clean:
	rm -rf $(VENV) runs .pytest_cache .hypothesis
