"""Smoke test of scripts/bench_inference.py with a tiny budget: every figure is there and sane."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "bench_inference.py"


def import_transformers_gpt2() -> None:
    """Import transformers' GPT-2 with the repository root off sys.path: its folder ``tokenizers/`` (our
    ``omnipolicy.tokenizers``) would shadow Hugging Face's ``tokenizers`` that transformers imports."""
    root = str(SCRIPT.parents[1])
    saved = list(sys.path)
    sys.path[:] = [p for p in sys.path if p not in ("", ".", root)]
    try:
        from transformers import GPT2LMHeadModel  # noqa: F401
    except ImportError as e:
        pytest.skip(f"transformers' GPT-2 is not importable: {e}")
    finally:
        sys.path[:] = saved


@pytest.mark.parametrize("hf", [False, True])
def test_bench_inference_tiny_budget_prints_one_json_line_with_every_figure(hf, capsys, load_script):
    if hf:
        import_transformers_gpt2()
    bench = load_script("bench_inference")
    n = torch.get_num_threads()
    try:
        res = bench.run(bench.Args(preset=("cpu-tiny",), context=256, steps=4, naive_steps=1, rolling_steps=12, hf=hf,
                                           evict_keep=1.0))
    finally:
        torch.set_num_threads(n)
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert json.loads(last) == json.loads(json.dumps(res))  # the last line is the JSON of the returned figures
    r = res["presets"]["cpu-tiny"]
    assert r["history_timesteps"] == 2 and r["session"]["window_tokens"] == 2 * 71 + 70
    assert r["session"]["full_window"]["n"] == 4 and r["naive"]["full_window"]["n"] == 1
    assert r["speedup_vs_naive"] > 1.0 and r["bound_ms"] > 0 and res["bandwidth_GBps"] > 0.1
    assert r["session"]["rolling"]["rebuild_steps"] >= 1  # 12 steps of 71 tokens overflow a 256-token window
    assert ("speedup_vs_hf" in r) == hf
