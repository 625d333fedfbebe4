# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
# Both create the virtual environment when it is missing; torch 2.13.0 (the CPU
# build) is installed before the package so pip never pulls a CUDA build.

SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.omnipolicy-installed
export MUJOCO_GL ?= egl
export OMP_WAIT_POLICY ?= PASSIVE
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: setup demo demo-so101 test test-all test-interop test-ros bench clean
LEROBOT_VENV ?= .venv-lerobot
ROS_VENV ?= .venv-ros

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[all]'
	@touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/omnipolicy demo --out runs/demo

# The SO-101 camera + instruction job (about an hour on 2 cores): report in runs/demo-so101/report.md
demo-so101: $(STAMP)
	$(VENV)/bin/omnipolicy demo-so101 --out runs/demo-so101

# The ROS 2 end-to-end tests run sim-robot as a real rclpy node from .venv-ros (PyPI's ros-rclpy wheels,
# Kilted, in their own venv); if that venv cannot be built the `ros` tests skip and say why.
test: $(STAMP)
	-@test -f $(ROS_VENV)/.omnipolicy-ros-sim-ok || bash scripts/make_ros_venv.sh --with-sim $(ROS_VENV)
	$(VENV)/bin/lint-imports  # the layer order of pyproject.toml: no module imports a higher layer
	$(PY) -m pytest -q -m "not slow and not interop" --timeout=600

test-all: $(STAMP)
	$(PY) -m pytest -q -m "not interop" --timeout=1800

# Opt-in: LeRobot's own loader reads our datasets (lerobot 0.4.4 pins torch<2.11: ~8 GB in its own venv).
$(LEROBOT_VENV)/.lerobot-installed:
	@test -x $(LEROBOT_VENV)/bin/python || $(PYTHON) -m venv $(LEROBOT_VENV)
	$(LEROBOT_VENV)/bin/python -m pip install --quiet "lerobot==0.4.4"
	@touch $@

test-interop: $(STAMP) $(LEROBOT_VENV)/.lerobot-installed
	OMNIPOLICY_LEROBOT_PYTHON=$(LEROBOT_VENV)/bin/python $(PY) -m pytest -q -m interop tests/datasets/test_interop.py --timeout=1800

# Opt-in: a real rclpy (PyPI's ros-rclpy wheels, Kilted) in its own venv, for the cross-implementation tests.
$(ROS_VENV)/.omnipolicy-ros-torch-ok:
	bash scripts/make_ros_venv.sh --with-torch $(ROS_VENV)

test-ros: $(STAMP) $(ROS_VENV)/.omnipolicy-ros-torch-ok
	$(PY) -m pytest -q -m ros --timeout=1800

# All six benchmarks in their quick profiles (scripts/bench_all.py: 2-3 minutes on 2 cores), ending with one
# table: each figure, its target, met or not. transformers (the pin of pyproject's `bench` extra) is GPT-2 for the
# train and inference baselines; it does not depend on torch, so the CPU torch 2.13.0 stays as it is.
BENCH_STAMP := $(VENV)/.omnipolicy-bench-installed
$(BENCH_STAMP): $(STAMP)
	$(PY) -m pip install --quiet 'transformers>=4.40'
	@touch $@

bench: $(BENCH_STAMP)
	$(PY) scripts/bench_all.py

clean:
	rm -rf $(VENV) runs .pytest_cache .hypothesis
