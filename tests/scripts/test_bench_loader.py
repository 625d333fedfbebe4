"""Smoke test with values: scripts/bench_loader.py on a tiny budget, the video path on the committed fixture."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "bench_loader.py"


def test_bench_loader_tiny_budget() -> None:
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--episodes", "2", "--steps", "40", "--seconds", "0.2", "--no-lerobot",
         "--train-steps", "1"],
        capture_output=True, text=True, timeout=300, check=True,
    )
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["bench"] == "loader" and result["frames"] == 2 * 2 * 40
    assert result["cache_windows_per_s"] > 0 and result["parquet_windows_per_s"] > 0
    video = result["video"]
    assert video["source"] == "committed fixture tests/data/lerobot_so101_v30"
    assert video["frames"] == 46  # the fixture's four episodes: 12 + 9 + 14 + 11
    assert video["cameras"] == {"front": [96, 96, 3], "wrist": [96, 96, 3]}
    assert video["context"] == 256 and video["train_preset"] == "cpu-tiny"
    # two 96x96 cameras (36 patches each), six joints, the task's text tokens, a separator and six actions
    assert video["tokens_per_timestep"] == 91
    assert video["import_frames_per_s"] > 0 and video["decode_frames_per_s"] >= video["import_frames_per_s"]
    assert abs(video["cache_timesteps_per_s"] - video["cache_windows_per_s"] * 256 / 91) < 1  # timesteps a window holds
    assert video["train_timesteps_per_s"] > 0 and "lerobot_samples_per_s" not in video
