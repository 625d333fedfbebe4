"""Action chunking in the tokenizer: each timestep's chunk of the next k actions, padding, the receding stride."""

from __future__ import annotations

import numpy as np
import pytest

from omnipolicy.tokenizers import FieldSpec, TimestepSpec, Tokenizer
from omnipolicy.tokenizers.chunking import ActionChunking

TOK = Tokenizer.default()
ARM = FieldSpec("action", "continuous", (2,), "float32", low=(-1.0, -1.0), high=(1.0, 1.0))
SPEC = TimestepSpec((FieldSpec("instruction", "text", (), "str"), FieldSpec("state", "continuous", (1,), "float64")), ARM)
T = 7


def episode() -> tuple[dict, np.ndarray]:
    actions = np.linspace(-0.9, 0.9, 2 * T).reshape(T, 2).astype(np.float32)  # every action distinct
    return {"instruction": [f"step {t}" for t in range(T)], "state": np.arange(T, dtype=np.float64)[:, None]}, actions


@pytest.mark.parametrize("chunk,stride", [(3, 1), (3, 3), (4, 2)])
def test_each_timestep_holds_the_next_k_actions_and_the_padding_repeats_the_last_without_loss(chunk, stride):
    obs, actions = episode()
    ep = TOK.tokenize_episode(SPEC, obs, actions, chunk=chunk, stride=stride)
    plain = TOK.tokenize_episode(SPEC, obs, actions)
    ticks = np.arange(0, T, stride)
    assert ep.num_timesteps == len(ticks) and ep.action_size == chunk * 2
    assert ep.obs_tokens_per_timestep == plain.obs_tokens_per_timestep
    # observations: the ones at the kept ticks, unchanged
    obs_part = ep.per_timestep()[:, : ep.obs_tokens_per_timestep]
    np.testing.assert_array_equal(obs_part, plain.per_timestep()[ticks, : plain.obs_tokens_per_timestep])
    # actions: a_t .. a_{t+k-1}, the last one repeated past the end
    chunks = TOK.decode_actions(SPEC, ep.action_tokens().reshape(len(ticks), chunk, 2))  # (T', k, 2)
    want = TOK.decode_actions(SPEC, plain.action_tokens())[np.minimum(ticks[:, None] + np.arange(chunk), T - 1)]
    np.testing.assert_array_equal(chunks, want)
    # loss: on every real action token, off on the padded ones (and on the observations but the text)
    loss = ep.per_timestep(ep.loss_mask)[:, ep.obs_tokens_per_timestep:].reshape(len(ticks), chunk, 2)
    valid = ticks[:, None] + np.arange(chunk) < T
    np.testing.assert_array_equal(loss, np.repeat(valid[:, :, None], 2, axis=2))
    np.testing.assert_array_equal(ep.per_timestep(ep.loss_mask)[:, : ep.obs_tokens_per_timestep],
                                  plain.per_timestep(plain.loss_mask)[ticks, : plain.obs_tokens_per_timestep])
    np.testing.assert_array_equal(ep.timestep, np.repeat(np.arange(len(ticks)), ep.tokens_per_timestep))


def test_receding_stride_k_keeps_ticks_0_k_2k_and_every_action_once():
    obs, actions = episode()
    ep = TOK.tokenize_episode(SPEC, obs, actions, chunk=3, stride=3)  # ticks 0, 3, 6
    texts = [TOK.decode_text(ids[ids < TOK.layout.text_size]) for ids in ep.per_timestep()[:, :4]]
    assert [t.split()[-1] for t in texts] == ["0", "3", "6"]
    loss = ep.per_timestep(ep.loss_mask)[:, ep.obs_tokens_per_timestep:]
    assert loss.sum() == T * 2  # each of the 7 actions is a target exactly once


def test_without_actions_only_the_observations_are_strided():
    obs, _ = episode()
    ep = TOK.tokenize_episode(SPEC, obs, None, chunk=4, stride=4)
    assert ep.num_timesteps == 2 and ep.action_size == 0


def test_bad_chunk_settings_are_refused_with_what_was_expected():
    obs, actions = episode()
    with pytest.raises(ValueError, match=r"stride must be an int in \[1, chunk=3\], got 4"):
        TOK.tokenize_episode(SPEC, obs, actions, chunk=3, stride=4)
    with pytest.raises(ValueError, match=r"chunk must be an int >= 1, got 0"):
        TOK.tokenize_episode(SPEC, obs, actions, chunk=0, stride=1)
    with pytest.raises(ValueError, match=r"Observation field 'instruction' has 7 timesteps, expected 6"):
        TOK.tokenize_episode(SPEC, obs, actions[:6], chunk=2, stride=2)
    with pytest.raises(ValueError, match=r"action chunk size must be an int >= 1 \(1 = no chunking\), got 0"):
        ActionChunking(0)
    with pytest.raises(ValueError, match=r"chunk execution must be one of \('ensemble', 'receding'\), got 'open'"):
        ActionChunking(2, "open")


def test_discrete_actions_keep_one_action_per_timestep():
    discrete = FieldSpec("action", "discrete", (), "int64", n=4)
    assert ActionChunking(4, "receding").for_action(discrete) == (1, 1)
    assert ActionChunking(4, "receding").for_action(ARM) == (4, 4)
    assert ActionChunking(4, "ensemble").for_action(ARM) == (4, 1)
    assert ActionChunking(1, "receding").for_action(ARM) == (1, 1)
