"""InferenceSession fed by the real tokenizer acts like the cache-less Policy over whole episodes, with and
without action chunking."""

from __future__ import annotations

from dataclasses import replace

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


@pytest.mark.parametrize("decoding,inputs,ffn,conditioned", [
    ("mode", "tokens", "dense", False), ("mean", "tokens", "dense", False), ("mean", "hidden", "dense", False),
    ("mode", "tokens", "moe", False), ("mean", "hidden", "dense", True)])
def test_session_acts_like_the_recomputing_policy_over_episodes_longer_than_the_window(decoding, inputs, ffn,
                                                                                     conditioned):
    """``conditioned``: FiLM and keypoints conditioned on the instruction, their projections drawn (trained-like)."""
    torch.manual_seed(0)
    cfg = ModelConfig(n_layer=2, n_embd=32, n_head=4, d_ff=64, context=96, local_positions=64, patch_channels=8,
                      patch_stride=4, action_inputs=inputs, ffn=ffn, moe_experts=4, film=conditioned,
                      keypoints=3 * conditioned, keypoint_film=conditioned).with_layout(TOK.layout)
    model = GatoModel(cfg).eval()
    if conditioned:
        with torch.no_grad():
            for layer in (model.film.proj, model.keypoints.proj, model.keypoints.film):
                layer.weight.normal_(0.0, 0.3)
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
    # the run's own choice (TrainConfig.decoding) wins over the bin_sigma rule; an explicit one wins over both
    assert policy({"config": {"bin_sigma": 8.0, "decoding": "mode"}}).continuous_decoding == "mode"
    assert policy({"config": {"bin_sigma": 0.0, "decoding": "mean"}}).continuous_decoding == "mean"
    assert policy({"config": {"bin_sigma": 8.0, "decoding": "auto"}}).continuous_decoding == "mean"
    assert policy({"config": {"decoding": "mode"}}, continuous_decoding="mean").continuous_decoding == "mean"
    with pytest.raises(ValueError, match=r"training config has decoding 'median'; expected one of"):
        policy({"config": {"decoding": "median"}})
    with pytest.raises(ValueError, match=r"continuous_decoding must be one of \('auto', 'mean', 'mode'\), got 'median'"):
        policy({}, continuous_decoding="median")


def test_auto_decoding_takes_the_runs_per_domain_and_per_task_choices():
    """``TrainConfig.task_decoding``: a task's entry wins over its domain's, which wins over ``decoding``; an
    explicit decoding applies to every task."""
    cfg = ModelConfig(n_layer=1, n_embd=32, n_head=4, d_ff=64, context=96, local_positions=64, patch_channels=8,
                      patch_stride=4).with_vocab(TOK.layout.vocab_size)
    tasks = {TASK: SPEC, "test/grasp-v0": SPEC, "other/reach-v0": SPEC}
    state = {"config": {"bin_sigma": 8.0, "task_decoding": {"test": "mode", "test/grasp-v0": "mean"}}}

    def policy(train_state, **kw):
        return Policy(GatoModel(cfg).eval(), CheckpointMeta(cfg, TOK.layout, tasks, train_state), TOK, **kw)

    auto = policy(state)
    assert {t: auto.decoding_for(t) for t in tasks} == {TASK: "mode", "test/grasp-v0": "mean", "other/reach-v0": "mean"}
    assert {t: auto.expected_dims(t).tolist() for t in tasks} == {
        TASK: [False, False], "test/grasp-v0": [True, True], "other/reach-v0": [True, True]}
    told = policy(state, continuous_decoding="mode")
    assert told.task_decoding == {} and {told.decoding_for(t) for t in tasks} == {"mode"}
    with pytest.raises(ValueError, match=r"checkpoint's TrainConfig.task_decoding values must be 'mean' or 'mode', got \{'test': 'median'\}"):
        policy({"config": {"task_decoding": {"test": "median"}}})


# ------------------------------------------------------------------------------ action chunking


def chunked_policy(inputs: str, use_session: bool, decoding: str = "mode", context: int = 128) -> Policy:
    """A policy of a model that predicts chunks of 3 actions (6 action tokens a timestep)."""
    torch.manual_seed(0)
    cfg = ModelConfig(n_layer=2, n_embd=32, n_head=4, d_ff=64, context=context, local_positions=64, patch_channels=8,
                      patch_stride=4, action_inputs=inputs, action_chunk=3).with_layout(TOK.layout)
    return Policy(GatoModel(cfg).eval(), CheckpointMeta(cfg, TOK.layout, {TASK: SPEC}), TOK, use_session=use_session,
                  continuous_decoding=decoding)


@pytest.mark.parametrize("decoding", ["mode", "mean"])
@pytest.mark.parametrize("inputs", ["tokens", "hidden"])
def test_chunked_decoding_through_the_session_equals_recomputation_over_episodes_longer_than_the_window(
        inputs, decoding):
    session = chunked_policy(inputs, True, decoding)
    recompute = chunked_policy(inputs, False, decoding)
    recompute.model = session.model  # one set of weights
    assert session.chunk_size(TASK) == 3 and len(session.action_ranges(TASK)) == 6
    for p in (session, recompute):
        p.reset(2)
    rng = np.random.default_rng(0)
    for t in range(14):  # 17 observation tokens + 6 action tokens a timestep: the 128-token window holds 5
        obs = [observation(rng), observation(rng)]
        want = recompute.act_chunks(TASK, obs)
        got = session.act_chunks(TASK, obs)
        if t == 0:  # the recomputing policy drops only the timesteps that no longer fit: the same windows
            session._session.config = replace(session._session.config, evict_keep=1.0)
        assert [c.shape for c in got] == [(3, 2)] * 2 and all(c.dtype == np.float32 for c in got)
        np.testing.assert_array_equal(np.stack(got), np.stack(want))
    assert session._session.stats["rebuilds"] > 0  # evictions happened on the way


@torch.no_grad()
def window_logits(model: GatoModel, window: list[tuple[ObsTokens, np.ndarray]]) -> torch.Tensor:
    """Logits (n, V) predicting the newest timestep's n action tokens, by one forward over ``window``."""
    tokens = np.concatenate([np.concatenate([o.tokens, a]) for o, a in window])
    local = np.concatenate([np.arange(len(o.tokens) + len(a)) for o, a in window])
    is_patch = tokens == TOK.layout.patch_id
    pidx = np.where(is_patch, np.cumsum(is_patch) - 1, -1)
    patches = torch.from_numpy(np.concatenate([o.patches for o, _ in window]))
    ppos = torch.from_numpy(np.concatenate([o.patch_pos for o, _ in window]).astype(np.int64))
    t = lambda a: torch.from_numpy(np.asarray(a, dtype=np.int64))[None]  # noqa: E731
    h = model(t(tokens), t(local), t(pidx), patches, ppos)
    n, A = len(tokens), len(window[-1][1])
    return model.logits(h[0, n - A - 1 : n - 1]).float()  # position p predicts token p + 1


@pytest.mark.parametrize("run", ["eager", "static", "cuda-graphs"])
@pytest.mark.parametrize("inputs", ["tokens", "hidden"])
def test_chunk_logits_of_the_session_equal_one_forward_over_the_window(inputs, run):
    """Every action token of a chunk: the session's logits (hidden: from the one prefill, no decode step) equal a
    full forward's over the same window, through evictions, with timesteps of different lengths in one batch."""
    if run == "cuda-graphs" and not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    model = chunked_policy(inputs, True, context=96).model
    ranges = np.tile(TOK.action_token_ranges(SPEC), (3, 1))  # (6, 2)
    device = "cuda" if run == "cuda-graphs" else "cpu"
    session = InferenceSession(model, SessionConfig(num_envs=2, dtype="float32"), device=device,
                               patch_id=TOK.layout.patch_id)
    session._static = run == "static"  # the CUDA-graph bodies (fixed prefill width, device counters), eagerly
    atol = 1e-3 if run == "cuda-graphs" else 2e-4
    rng = np.random.default_rng(3)
    histories: dict[int, list] = {0: [], 1: []}
    for t in range(12):
        obs = [observation(rng), observation(rng)]
        if t % 3 == 1:
            obs[1]["instruction"] = "reach the red cube and then the blue one"  # a longer timestep in one row
        out = session.step([tokenize(o) for o in obs], ranges, return_logits=True)
        for e in (0, 1):
            histories[e].append((tokenize(obs[e]), out.action_tokens[e]))
            ref = window_logits(model, histories[e][-session.window_timesteps(e):])  # (6, V)
            for k, (lo, hi) in enumerate(ranges):
                np.testing.assert_allclose(out.logits[e, k, lo:hi].numpy(), ref[k, lo:hi].numpy(), atol=atol, rtol=1e-3)
                assert lo <= out.action_tokens[e, k] < hi
    assert session.stats["rebuilds"] > 0
