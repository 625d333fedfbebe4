"""Smoke test with values: scripts/bench_tokenizer.py on a tiny budget."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "bench_tokenizer.py"


def test_bench_script_tiny_budget() -> None:
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--episode-len", "20", "--total", "3000", "--chunk", "1000", "--repeats", "1"],
        capture_output=True, text=True, timeout=120, check=True,
    )
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["metaworld_total"]["timesteps"] == 3000
    assert result["metaworld_total"]["tokens"] == 3000 * 44
    assert result["atari"]["tokens_per_timestep"] == 38 and result["metaworld"]["speedup"] > 1
