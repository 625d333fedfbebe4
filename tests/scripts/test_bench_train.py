"""scripts/bench_train.py compares equal work: both sides compute logits over the same number of positions."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from omnipolicy.agent.synthetic import SyntheticWindows
from omnipolicy.tokenizers import Tokenizer

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "bench_train.py"


def test_bench_train_heads_compute_logits_over_equal_positions() -> None:
    if importlib.util.find_spec("transformers") is None:
        pytest.skip("transformers is not installed (the `bench` extra; `make bench` installs it)")
    batch_size, context = 2, 64
    proc = subprocess.run(  # a subprocess: the repository root on sys.path would shadow Hugging Face's `tokenizers`
        [sys.executable, str(SCRIPT), "--preset", "cpu-tiny", "--context", str(context), "--batch-size", str(batch_size),
         "--steps", "1", "--warmup", "0", "--kinds", "metaworld"],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])["results"]["metaworld"]
    batch = SyntheticWindows(Tokenizer.default().layout, context=context, batch_size=batch_size, obs_tokens=39,
                             action_tokens=4, seed=0).next_batch()
    targets = int(batch["loss_mask"][:, 1:].sum())
    assert 0 < targets < batch_size * context
    # each comparison counts the rows entering both LM heads; the bench refuses to time unequal ones
    assert res["full_head"]["logit_positions"] == batch_size * context  # GPT-2 as shipped: every position
    assert res["target_head"]["logit_positions"] == targets  # ours as trained: the target positions only
    for head in ("full_head", "target_head"):
        r = res[head]
        assert r["ratio"] == pytest.approx(r["ours_tokens_per_s"] / r["gpt2_tokens_per_s"])
    assert res["ratio"] == res["full_head"]["ratio"]  # the headline ratio is the equal-work one
