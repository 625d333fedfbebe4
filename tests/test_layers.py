"""The layer order of pyproject.toml's import-linter contract: it holds, and it covers every module."""

from __future__ import annotations

import ast
import pkgutil
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import omnipolicy

REPO = Path(__file__).resolve().parents[1]
PACKAGES = {"omnipolicy", "omnipolicy.robot_bridge"}
"""Package ``__init__`` modules that only document their subpackages (they import none of them)."""


def layer_modules() -> list[str]:
    contract = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"][0]
    return [m.strip() for layer in contract["layers"] for m in layer.split("|")]


def test_every_module_is_in_a_layer():
    layers = layer_modules()
    modules = [m.name for m in pkgutil.walk_packages(omnipolicy.__path__, "omnipolicy.")] + ["omnipolicy"]
    outside = [m for m in modules if m not in PACKAGES and not any(m == l or m.startswith(l + ".") for l in layers)]
    assert len(modules) > 60
    assert outside == [], f"modules in no layer of pyproject.toml's import-linter contract: {outside}"


def test_package_inits_import_nothing():
    for name in PACKAGES:
        tree = ast.parse((REPO / Path(*name.split(".")[1:]) / "__init__.py").read_text())
        imports = [ast.unparse(n) for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))]
        assert [i for i in imports if i != "from __future__ import annotations"] == [], name


def test_no_layer_imports_a_higher_one():
    lint = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    if lint is None:
        pytest.skip("import-linter is not installed (the `dev` extra)")
    run = subprocess.run([lint], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout[-3000:]
    assert "1 kept, 0 broken" in run.stdout
