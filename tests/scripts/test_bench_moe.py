"""Smoke test of scripts/bench_moe.py with a tiny budget: every variant trains and reports every figure."""

from __future__ import annotations

import json

import torch


def test_bench_moe_tiny_budget_prints_one_json_line_with_every_figure(tmp_path, capsys, load_script):
    bench = load_script("bench_moe")
    n = torch.get_num_threads()
    try:
        res = bench.run(bench.Args(out=tmp_path, episodes=2, context=64, steps=2, batch_size=4, experts=(2,),
                                   top_k=(1, 2), val_fraction=0.5, threads=1))
    finally:
        torch.set_num_threads(n)
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert json.loads(last) == json.loads(json.dumps(res))  # the last line is the JSON of the returned figures
    rows = res["variants"]
    assert set(rows) == {"dense", "moe-e2-k1", "moe-e2-k2"}
    dense, k1, k2 = rows["dense"], rows["moe-e2-k1"], rows["moe-e2-k2"]
    assert dense["params_active"] == dense["params_total"]
    # top-1 of 2 experts of the dense shape: the dense model's active parameters plus a router per block
    assert k1["params_active"] - dense["params_active"] == 2 * 2 * 128  # cpu-tiny: 2 blocks, width 128
    assert k1["params_total"] == k2["params_total"] == k2["params_active"] > k1["params_active"]
    for r in rows.values():
        assert r["tokens_per_s"] > 0 and 0 < r["train_loss"] < 10 and 0 < r["val_loss"] < 10 and 0 < r["fit_loss"] < 10
        assert len(r["val_loss_per_task"]) == 4  # the four classic-control tasks, each with a held-out episode
