"""Meta-World's observation: the state and the two offsets computed from it, along an expert's episode."""

from __future__ import annotations

import numpy as np
import pytest

from omnipolicy.envs import get_task, make_env, make_expert


@pytest.mark.parametrize("task_id", ["metaworld/pick-place-v3", "metaworld/push-v3", "metaworld/peg-insert-side-v3"])
def test_offsets_are_the_states_object_from_hand_and_goal_from_object(task_id: str) -> None:
    spec = get_task(task_id)
    assert [f.name for f in spec.timestep.observation] == ["state", "to_object", "to_goal", "instruction"]
    env, expert = make_env(task_id, seed=0), make_expert(task_id, seed=0)
    try:
        obs, _ = env.reset(seed=5)
        expert.reset(env, obs)
        start = np.linalg.norm(obs["to_object"][:2])
        for _ in range(30):  # the expert moves the hand over the object: the offsets follow the state
            state = obs["state"]
            np.testing.assert_allclose(obs["to_object"], state[4:7] - state[0:3], atol=1e-6)
            np.testing.assert_allclose(obs["to_goal"], state[36:39] - state[4:7], atol=1e-6)
            obs, *_ = env.step(expert.act(env, obs))
        assert np.linalg.norm(obs["to_object"][:2]) < 0.5 * start
    finally:
        env.close()
