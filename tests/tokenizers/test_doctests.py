"""The examples in the tokenizers' docstrings run and give what they show."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = ["__init__", "vocab", "spec", "continuous", "discrete", "text", "image", "episode", "chunking"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str) -> None:
    module = importlib.import_module("omnipolicy.tokenizers" + ("" if name == "__init__" else f".{name}"))
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0, f"{result.failed} docstring example(s) failed in {module.__name__}"
    assert result.attempted > 0, f"{module.__name__} has no docstring example"
