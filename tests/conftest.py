"""Shared test fixtures."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

# Before any test module loads torch, as `omnipolicy` (cli.py) and `make test` do: why in omnipolicy/cli.py.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


@pytest.fixture()
def load_script(monkeypatch):
    """``load_script(name)``: import ``scripts/<name>.py`` as a module, registered in ``sys.modules`` for the test only
    (its dataclasses look their module up there)."""

    def load(name: str):
        spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        monkeypatch.setitem(sys.modules, name, module)
        spec.loader.exec_module(module)
        return module

    return load
