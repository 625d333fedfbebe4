"""InferenceSession: cached logits equal a full recomputation over the same window, eviction, batching, seeds."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from omnipolicy.agent import GatoModel, ModelConfig
from omnipolicy.agent.inference import InferenceSession, ObsTokens, SessionConfig
from omnipolicy.tokenizers import Tokenizer

LAYOUT = Tokenizer.default().layout
CONT = LAYOUT.continuous_offset
DISC = LAYOUT.discrete_offset
# a 3-dim action: two continuous elements and a discrete one with 5 values (different ranges per dimension)
RANGES = np.array([[CONT, CONT + 1024], [CONT, CONT + 1024], [DISC, DISC + 5]])
CUDA = torch.cuda.is_available()


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/agent/conftest.py


def tiny_model(seed: int = 0, context: int = 64, **overrides) -> GatoModel:
    base = dict(n_layer=2, n_embd=32, n_head=4, d_ff=64, context=context, local_positions=32, patch_channels=8,
                patch_stride=4)
    torch.manual_seed(seed)
    return GatoModel(ModelConfig(**{**base, **overrides}).with_layout(LAYOUT)).eval()


def make_obs(rng: np.random.Generator, n_patches: int = 2, n_values: int = 4, n_text: int = 0) -> ObsTokens:
    """Text ids, patch slots, continuous values and the separator, with random patches."""
    tok = np.concatenate([
        rng.integers(0, LAYOUT.text_size, n_text),
        np.full(n_patches, LAYOUT.patch_id),
        rng.integers(CONT, CONT + 1024, n_values),
        [LAYOUT.separator_id],
    ]).astype(np.int64)
    patches = rng.uniform(-0.25, 0.25, (n_patches, 3, 16, 16)).astype(np.float32)
    pos = np.stack([np.zeros(n_patches), np.arange(n_patches)], 1).astype(np.int64)
    return ObsTokens(tok, patches, pos)


@torch.no_grad()
def reference_logits(model: GatoModel, window: list[tuple[ObsTokens, np.ndarray]]) -> torch.Tensor:
    """Logits (A, V) predicting the newest timestep's action tokens, by one full forward over ``window``."""
    A = len(window[-1][1])
    tokens = np.concatenate([np.concatenate([o.tokens, a]) for o, a in window])
    local = np.concatenate([np.arange(len(o.tokens) + len(a)) for o, a in window])
    is_patch = tokens == LAYOUT.patch_id
    pidx = np.where(is_patch, np.cumsum(is_patch) - 1, -1)
    patches = np.concatenate([o.patches for o, _ in window]).reshape(-1, 3, 16, 16)
    ppos = np.concatenate([o.patch_pos for o, _ in window]).reshape(-1, 2)
    dev, dt = next(model.parameters()).device, next(model.parameters()).dtype
    t = lambda a: torch.from_numpy(np.asarray(a, dtype=np.int64)).to(dev)[None]  # noqa: E731
    h = model(t(tokens), t(local), t(pidx), torch.from_numpy(patches).to(dev, dt), torch.from_numpy(ppos).to(dev))
    n = len(tokens)
    return model.logits(h[0, n - A - 1 : n - 1]).float().cpu()  # position p predicts token p + 1


def check_against_reference(model, session, histories, out, env_ids, atol):
    for row, e in enumerate(env_ids):
        window = histories[e][-session.window_timesteps(e):]
        ref = reference_logits(model, window)
        got = out.logits[row]
        for k, (lo, hi) in enumerate(RANGES):
            assert torch.isinf(got[k, :lo]).all() and torch.isinf(got[k, hi:]).all()
            np.testing.assert_allclose(got[k, lo:hi].numpy(), ref[k, lo:hi].numpy(), atol=atol, rtol=1e-3)
        assert (out.action_tokens[row] >= RANGES[:, 0]).all() and (out.action_tokens[row] < RANGES[:, 1]).all()


@pytest.mark.parametrize("evict_keep,static,inputs", [(0.5, False, "tokens"), (1.0, False, "tokens"), (0.5, True, "tokens"),
                                                     (0.5, False, "hidden"), (0.5, True, "hidden")])
def test_logits_equal_full_recomputation_at_every_step_of_a_long_episode(evict_keep, static, inputs):
    model = tiny_model(action_inputs=inputs)
    session = InferenceSession(model, SessionConfig(num_envs=3, evict_keep=evict_keep), patch_id=LAYOUT.patch_id)
    session._static = static  # the CUDA-graph bodies (fixed prefill width, whole cache, device counters), eagerly
    rng = np.random.default_rng(1)
    histories = {e: [] for e in range(3)}
    windows, rebuilds = set(), 0
    for t in range(30):  # 30 timesteps of 10-12 tokens: about 5 windows of 64 tokens
        # env 2 joins late and env 1 skips steps: rows with different fills and lengths share one batch
        env_ids = [e for e in range(3) if not (e == 2 and t < 3) and not (e == 1 and t % 4 == 3)]
        obs = [make_obs(rng, n_patches=2, n_values=4 + (e == 1) * 2) for e in env_ids]
        out = session.step(obs, RANGES, env_ids=env_ids, return_logits=True)
        for o, e, a in zip(obs, env_ids, out.action_tokens):
            histories[e].append((o, a))
        check_against_reference(model, session, histories, out, env_ids, atol=1e-4)
        rebuilds += len(out.rebuilt)
        windows.update(session.window_timesteps(e) for e in env_ids)
        assert (session.num_tokens <= model.cfg.context).all()
    assert rebuilds > 5 and len(histories[0]) > max(windows)  # the episode outgrew the window many times
    if evict_keep == 1.0:  # minimal eviction keeps the window as full as whole timesteps allow
        assert session.num_tokens[0] + 10 + len(RANGES) - 1 > model.cfg.context


@pytest.mark.parametrize("static", [False, True])
def test_expected_dims_take_the_rounded_mean_bin_and_the_others_the_mode(static):
    model = tiny_model(seed=2)
    session = InferenceSession(model, SessionConfig(num_envs=2), patch_id=LAYOUT.patch_id)
    session._static = static
    rng = np.random.default_rng(3)
    means = 0
    for t in range(6):
        expect = [True, t % 2 == 0, False]  # the flags may change between steps
        out = session.step([make_obs(rng), make_obs(rng)], RANGES, return_logits=True, expected_dims=expect)
        for row in range(2):
            for k, (lo, hi) in enumerate(RANGES):
                logits = out.logits[row, k, lo:hi]
                if expect[k]:
                    want = int((torch.softmax(logits, -1) @ torch.arange(hi - lo, dtype=torch.float32)).round()) + lo
                    means += int(want != int(logits.argmax()) + lo)  # an untrained model: mean and mode differ
                else:
                    want = int(logits.argmax()) + lo
                assert out.action_tokens[row, k] == want
    assert means > 6
    with pytest.raises(ValueError, match=r"one flag per action dimension \(3\), got 2"):
        session.step([make_obs(rng), make_obs(rng)], RANGES, expected_dims=[True, False])


def test_eviction_drops_whole_oldest_timesteps_to_the_configured_fraction():
    model = tiny_model(context=64)
    session = InferenceSession(model, SessionConfig(evict_keep=0.5))
    rng = np.random.default_rng(0)
    lengths = []
    for _ in range(12):  # 9-token observations + 3 actions = 12 tokens per timestep
        session.step([make_obs(rng, n_patches=0, n_values=8)], RANGES)
        lengths.append(session.window_timesteps(0))
    # 5 timesteps fill 60 tokens; the 6th needs 9 + 2 more (71 > 64): drop the oldest until the window with the
    # new timestep fits half the context (12 + 11 <= 32 < 24 + 11), so 1 old timestep stays and 2 are in the window
    assert lengths == [1, 2, 3, 4, 5, 2, 3, 4, 5, 2, 3, 4]


def test_batch_of_episodes_equals_running_them_one_by_one():
    model = tiny_model(seed=3)
    rng = np.random.default_rng(2)
    episodes = [[make_obs(rng, n_patches=1 + e % 2, n_values=3 + e) for _ in range(20)] for e in range(3)]
    batched = InferenceSession(model, SessionConfig(num_envs=3), patch_id=LAYOUT.patch_id)
    got = np.stack([batched.step([ep[t] for ep in episodes], RANGES).action_tokens for t in range(20)], 1)  # (3, T, A)
    for e, ep in enumerate(episodes):
        single = InferenceSession(model, SessionConfig(num_envs=1), patch_id=LAYOUT.patch_id)
        alone = np.stack([single.step([o], RANGES).action_tokens[0] for o in ep])
        np.testing.assert_array_equal(got[e], alone)


def test_sampling_is_deterministic_for_a_fixed_seed_and_reset_restarts_it():
    model = tiny_model(seed=4)
    rng = np.random.default_rng(5)
    episode = [[make_obs(rng, n_patches=0, n_values=5) for _ in range(2)] for _ in range(8)]

    def run(seed):
        s = InferenceSession(model, SessionConfig(num_envs=2, seed=seed))
        return np.stack([s.step(o, RANGES, temperature=1.0).action_tokens for o in episode]), s

    a, s = run(0)
    b, _ = run(0)
    s_static = InferenceSession(model, SessionConfig(num_envs=2, seed=0))
    s_static._static = True  # the graph path draws the same noise and decodes the same actions
    np.testing.assert_array_equal(np.stack([s_static.step(o, RANGES, temperature=1.0).action_tokens for o in episode]), a)
    c, _ = run(1)
    np.testing.assert_array_equal(a, b)
    assert (a != c).any()
    s.reset()  # a full reset reseeds: the same episode samples the same actions again
    np.testing.assert_array_equal(np.stack([s.step(o, RANGES, temperature=1.0).action_tokens for o in episode]), a)
    greedy = InferenceSession(model, SessionConfig(num_envs=2))
    g = np.stack([greedy.step(o, RANGES).action_tokens for o in episode])
    assert (g != a).any()  # temperature 1 does sample


def test_reset_of_one_env_starts_its_episode_over_and_leaves_the_others():
    model = tiny_model(seed=6)
    rng = np.random.default_rng(6)
    session = InferenceSession(model, SessionConfig(num_envs=2), patch_id=LAYOUT.patch_id)
    histories = {0: [], 1: []}
    for t in range(9):
        if t == 5:
            session.reset([1])
            histories[1] = []
            assert session.num_tokens[1] == 0 and session.window_timesteps(1) == 0
        obs = [make_obs(rng), make_obs(rng)]
        out = session.step(obs, RANGES, return_logits=True)
        for e in range(2):
            histories[e].append((obs[e], out.action_tokens[e]))
        check_against_reference(model, session, histories, out, [0, 1], atol=1e-4)
    assert session.window_timesteps(1) == 4 and session.window_timesteps(0) > 4


@pytest.mark.parametrize("inputs", ["tokens", "hidden"])
def test_rollback_and_append_keep_the_cache_consistent(inputs):
    model = tiny_model(seed=7, action_inputs=inputs)
    rng = np.random.default_rng(7)
    prompt = [make_obs(rng, n_patches=1) for _ in range(2)]
    prompt_actions = [rng.integers(RANGES[:, 0], RANGES[:, 1]) for _ in prompt]
    session = InferenceSession(model, SessionConfig(num_envs=1), patch_id=LAYOUT.patch_id)
    session._static = True
    session.append([[ObsTokens(np.concatenate([o.tokens, a]), o.patches, o.patch_pos) for o, a in zip(prompt, prompt_actions)]])
    history = list(zip(prompt, prompt_actions))
    obs = make_obs(rng, n_patches=1)
    first = session.step([obs], RANGES, return_logits=True)
    check_against_reference(model, session, {0: history + [(obs, first.action_tokens[0])]}, first, [0], atol=1e-4)
    session.rollback(1)
    assert session.window_timesteps(0) == 2
    again = session.step([obs], RANGES, return_logits=True)
    np.testing.assert_allclose(again.logits.numpy(), first.logits.numpy(), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="cannot roll back 4"):
        session.rollback(4)


@pytest.mark.parametrize("static", [False, True])
def test_observations_of_growing_length_grow_the_static_buffers(static):
    model = tiny_model(seed=8)
    rng = np.random.default_rng(8)
    session = InferenceSession(model, SessionConfig(num_envs=1, prefill_size=8, max_patches=1), patch_id=LAYOUT.patch_id)
    session._static = static
    history = []
    for t in range(6):
        obs = make_obs(rng, n_patches=t % 3, n_values=2 + 3 * t, n_text=t % 2)
        out = session.step([obs], RANGES, return_logits=True)
        history.append((obs, out.action_tokens[0]))
        check_against_reference(model, session, {0: history}, out, [0], atol=1e-4)
    assert session.C >= 19 and session.P >= 2


def test_invalid_inputs_are_refused_with_what_was_expected():
    model = tiny_model()
    session = InferenceSession(model, SessionConfig(num_envs=2), patch_id=LAYOUT.patch_id)
    rng = np.random.default_rng(0)
    obs = [make_obs(rng), make_obs(rng)]
    with pytest.raises(ValueError, match="Expected 2 observations"):
        session.step(obs[:1], RANGES)
    with pytest.raises(ValueError, match=r"action_ranges must have shape \(A, 2\)"):
        session.step(obs, RANGES[:, :1])
    with pytest.raises(ValueError, match="non-empty"):
        session.step(obs, np.array([[5, 5]]))
    with pytest.raises(ValueError, match="2 patch tokens but 1 patches"):
        session.step([obs[0], ObsTokens(obs[1].tokens, obs[1].patches[:1], obs[1].patch_pos[:1])], RANGES)
    with pytest.raises(ValueError, match="needs 70 tokens of context but the model has 64"):
        session.step([ObsTokens(np.full(68, CONT)), obs[1]], RANGES)
    with pytest.raises(ValueError, match=r"token ids must be in \[0, "):
        session.step([ObsTokens(np.array([-1, 2])), obs[1]], RANGES)
    with pytest.raises(IndexError, match="env index 2 out of range for a session of 2"):
        session.reset([2])
    with pytest.raises(ValueError, match="evict_keep must be in"):
        SessionConfig(evict_keep=0.0)
    with pytest.raises(ValueError, match="dtype must be one of"):
        SessionConfig(dtype="fp8")
    assert session.num_tokens.tolist() == [0, 0]  # nothing was half-applied


@pytest.mark.skipif(not CUDA, reason="needs CUDA")
@pytest.mark.parametrize("dtype,atol", [("float32", 2e-3), ("bfloat16", 0.25)])
def test_cuda_graph_session_equals_full_recomputation(dtype, atol):
    model = tiny_model(seed=9).cuda()
    ref_model = model if dtype == "float32" else tiny_model(seed=9).cuda().to(torch.bfloat16)
    session = InferenceSession(model, SessionConfig(num_envs=3, dtype=dtype), patch_id=LAYOUT.patch_id)
    assert session.use_graphs
    rng = np.random.default_rng(9)
    histories = {e: [] for e in range(3)}
    for t in range(25):
        env_ids = [e for e in range(3) if not (e == 1 and t % 4 == 3)]
        obs = [make_obs(rng, n_values=4 + e) for e in env_ids]
        out = session.step(obs, RANGES, env_ids=env_ids, return_logits=True)
        for o, e, a in zip(obs, env_ids, out.action_tokens):
            histories[e].append((o, a))
        check_against_reference(ref_model, session, histories, out, env_ids, atol=atol)
    kinds = [key[0] for key in session._graphs]
    assert kinds.count("prefill") == 1 and kinds.count("decode") == 1  # captured once, replayed every step
    assert session.stats["rebuilds"] > 0 and "rebuild" in kinds  # the full windows' cache rebuilds were replayed too


def test_docstring_example_runs():
    import doctest

    from omnipolicy.agent import inference

    result = doctest.testmod(inference)
    assert result.failed == 0 and result.attempted > 0
