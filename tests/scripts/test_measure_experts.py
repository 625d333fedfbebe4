"""scripts/measure_experts.py: expert and random scores of a task, written with the protocol they were measured under."""

from __future__ import annotations

import json

from omnipolicy.envs.registry import SCORES_PATH


def test_measure_script_writes_scores(tmp_path, load_script) -> None:
    module = load_script("measure_experts")
    out = tmp_path / "scores.json"
    module.main(["--tasks", "classic/cartpole-v1", "--episodes", "3", "--out", str(out)])
    entry = json.loads(out.read_text())["tasks"]["classic/cartpole-v1"]
    assert entry["expert"]["return_mean"] == 500.0 and entry["expert"]["episodes"] == 3
    assert entry["random"]["return_mean"] < 100.0 and len(entry["random"]["returns"]) == 3
    assert "--tasks classic/cartpole-v1" in entry["expert"]["command"]
    assert entry["expert"]["protocol"] == entry["random"]["protocol"] == {"max_steps": 500}
    assert out.parent.joinpath(f".{out.name}.lock").exists() is False and SCORES_PATH.name == "expert_scores.json"
