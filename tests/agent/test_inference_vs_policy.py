"""InferenceSession fed by the real tokenizer acts like the cache-less Policy over whole episodes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from omnipolicy.agent import CheckpointMeta, GatoModel, ModelConfig, Policy
from omnipolicy.agent.inference import InferenceSession, ObsTokens, SessionConfig
from omnipolicy.tokenizers import FieldSpec, TimestepSpec, Tokenizer

TOK = Tokenizer.default()
TASK = "test/pixels-and-state-v0"
# 4 image patches, a 3-value state, an instruction, and a bounded 2-dim continuous action
SPEC = TimestepSpec(
    observation=(
        FieldSpec("image", "image", (32, 32, 3), "uint8"),
        FieldSpec("instruction", "text", (), "str"),
        FieldSpec("state", "continuous", (3,), "float32"),
    ),
    action=FieldSpec("action", "continuous", (2,), "float32", low=(-1.0, -1.0), high=(1.0, 1.0)),
)


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/agent/conftest.py


def observation(rng: np.random.Generator) -> dict:
    return {"image": rng.integers(0, 256, (32, 32, 3), dtype=np.uint8), "instruction": "reach the red cube",
            "state": rng.normal(size=3).astype(np.float32)}


def tokenize(obs: dict) -> ObsTokens:
    one = {"image": obs["image"][None], "instruction": [obs["instruction"]], "state": obs["state"][None]}
    ep = TOK.tokenize_episode(SPEC, one, None)  # observation tokens and the separator
    return ObsTokens(ep.tokens.astype(np.int64), ep.patches, ep.patch_pos)


@pytest.mark.parametrize("decoding,inputs", [("mode", "tokens"), ("mean", "tokens"), ("mean", "hidden")])
def test_session_acts_like_the_recomputing_policy_over_episodes_longer_than_the_window(decoding, inputs):
    torch.manual_seed(0)
    cfg = ModelConfig(n_layer=2, n_embd=32, n_head=4, d_ff=64, context=96, local_positions=64, patch_channels=8,
                      patch_stride=4, action_inputs=inputs).with_layout(TOK.layout)
    model = GatoModel(cfg).eval()
    policy = Policy(model, CheckpointMeta(cfg, TOK.layout, {TASK: SPEC}), TOK, continuous_decoding=decoding)
    expect = policy.expected_dims(TASK)
    assert expect.tolist() == [decoding == "mean"] * 2
    policy.reset(2)
    # Policy drops only the timesteps that no longer fit: evict_keep=1.0 is the same window
    session = InferenceSession(model, SessionConfig(num_envs=2, evict_keep=1.0), patch_id=TOK.layout.patch_id)
    ranges = TOK.action_token_ranges(SPEC)
    rng = np.random.default_rng(0)
    rebuilt = 0
    for t in range(14):  # about 17 tokens a timestep: the 96-token window overflows after 5
        obs = [observation(rng), observation(rng)]
        expected = policy.act(TASK, obs)
        out = session.step([tokenize(o) for o in obs], ranges, expected_dims=expect)
        got = TOK.decode_actions(SPEC, out.action_tokens)
        np.testing.assert_array_equal(got, np.stack(expected))
        rebuilt += len(out.rebuilt)
    assert rebuilt >= 10 and session.window_timesteps(0) < 14


def test_auto_decoding_follows_the_training_targets_and_bad_names_are_refused():
    cfg = ModelConfig(n_layer=1, n_embd=32, n_head=4, d_ff=64, context=96, local_positions=64, patch_channels=8,
                      patch_stride=4).with_vocab(TOK.layout.vocab_size)
    model = GatoModel(cfg).eval()

    def policy(train_state, **kw):
        return Policy(model, CheckpointMeta(cfg, TOK.layout, {TASK: SPEC}, train_state), TOK, **kw)

    assert policy({}).continuous_decoding == "mode"  # no training record: Gato's argmax
    assert policy({"config": {"bin_sigma": 0.0}}).continuous_decoding == "mode"
    assert policy({"config": {"bin_sigma": 8.0}}).continuous_decoding == "mean"
    assert policy({"config": {"bin_sigma": 8.0}}, continuous_decoding="mode").continuous_decoding == "mode"
    with pytest.raises(ValueError, match=r"continuous_decoding must be one of \('auto', 'mean', 'mode'\), got 'median'"):
        policy({}, continuous_decoding="median")
