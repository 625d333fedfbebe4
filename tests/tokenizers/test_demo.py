"""Smoke test with values: `omnipolicy tokenize-demo` on a tiny budget."""

from __future__ import annotations

import re

from omnipolicy.tokenizers import Tokenizer
from omnipolicy.tokenizers.demo import main


def test_tokenize_demo_prints_layout_and_round_trips(capsys) -> None:
    main(["--timesteps", "6", "--show", "1", "--instruction", "Close the window \u2581."], prog="omnipolicy tokenize-demo")
    out = capsys.readouterr().out
    lay = Tokenizer.default().layout
    assert f"continuous [{lay.continuous_offset}, {lay.continuous_offset + 1024})" in out
    assert "tokens per timestep L = 38 (observation + separator 37, action 1)" in out  # 36 patches + | + action
    assert "t=0: <patch> x36 | d" in out
    assert "decoded actions equal the originals: True" in out
    err, half = map(float, re.search(r"max \|decoded - original\| = ([\d.]+) \(half a bin = ([\d.]+)\)", out).groups())
    assert err <= half
    assert "(exact: True)" in out and "clipped values: {'state': 1, 'action': 0}" in out
    assert f"valid action ids per element: [({lay.discrete_offset}, {lay.discrete_offset + 18})]" in out
