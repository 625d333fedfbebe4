"""scripts/expert_on_tokens.py: the scripted experts act as well on observations passed through the tokenizer."""

import numpy as np


def test_experts_act_as_well_on_tokenised_observations(load_script):
    tool = load_script("expert_on_tokens")
    from omnipolicy.envs import get_task
    from omnipolicy.tokenizers.continuous import encode_continuous

    spec = get_task("classic/pendulum-v1").timestep
    obs = {"state": np.array([0.3, -0.95, 7.9], dtype=np.float32)}
    seen = tool.through_tokens(obs, spec)["state"]
    assert seen.dtype == np.float32 and np.abs(seen - obs["state"]).max() < 0.05
    assert not np.array_equal(seen, obs["state"])  # binned to bin centres ...
    np.testing.assert_array_equal(encode_continuous(seen)[0], encode_continuous(obs["state"])[0])  # ... of the same bins
    results = tool.main(tool.Config(tasks=("classic/cartpole-v1", "classic/pendulum-v1"), episodes=1))
    assert results["classic/cartpole-v1"]["exact_return"] == results["classic/cartpole-v1"]["tokens_return"] == 500.0
    exact, tokens = results["classic/pendulum-v1"]["exact_return"], results["classic/pendulum-v1"]["tokens_return"]
    assert abs(tokens - exact) < 0.1 * abs(exact)
