"""Smoke test of scripts/bench_chunking.py with a tiny budget: every figure is there, and the queries per tick
are what each execution mode promises."""

from __future__ import annotations

import json

import torch


def test_bench_chunking_tiny_budget_prints_one_json_line_with_every_figure(capsys, load_script):
    bench = load_script("bench_chunking")
    n = torch.get_num_threads()
    try:
        res = bench.run(bench.Args(chunk=3, ticks=12, episode_ticks=6, warmup_ticks=0, context=128))
    finally:
        torch.set_num_threads(n)
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert json.loads(last) == json.loads(json.dumps(res))  # the last line is the JSON of the returned figures
    for inputs in ("hidden", "tokens"):
        mode = res["modes"][inputs]
        assert set(mode) == {"k1", "k3-ensemble", "k3-receding"}
        assert mode["k1"]["queries_per_tick"] == 1.0 and mode["k3-ensemble"]["queries_per_tick"] == 1.0
        assert mode["k3-receding"]["queries_per_tick"] == 4 / 12  # ticks 0 and 3 of each 6-tick episode
        assert mode["k1"]["p50_vs_k1"] == 1.0 and all(r["n"] == 12 and r["p50_ms"] > 0 for r in mode.values())
    assert len(res["targets"]) == 8 and all(row["value"] > 0 for row in res["targets"])
