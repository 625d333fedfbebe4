"""Policy: training from a real dataset store, batched acting, masked decoding, spec checks."""

from __future__ import annotations

import inspect
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from omnipolicy.agent import GatoModel, Policy, TrainConfig, load_meta, train
from omnipolicy.agent.synthetic import SYNTHETIC_TASK_ID, SyntheticWindows, synthetic_spec
from omnipolicy.datasets import Episode, EpisodeStore, WindowLoader
from omnipolicy.tokenizers import FieldSpec, TimestepSpec, Tokenizer, check_observation

TOK = Tokenizer.default()
IMAGE_TASK = "test/images-v0"
VECTOR_TASK = "test/vector-v0"
SPECS = {
    IMAGE_TASK: TimestepSpec(
        observation=(
            FieldSpec("image", "image", (32, 24, 3), "uint8"),  # width 24 is padded to 32: 2 x 2 patches
            FieldSpec("state", "continuous", (3,), "float32"),
            FieldSpec("instruction", "text", (), "str"),
        ),
        action=FieldSpec("action", "discrete", (), "int64", n=3),
    ),
    VECTOR_TASK: TimestepSpec(
        observation=(FieldSpec("joints", "continuous", (4,), "float64"),),
        action=FieldSpec("action", "continuous", (2,), "float32", low=(-2.0, -1.0), high=(2.0, 1.0)),
    ),
}
CONTEXT = 64
# These tests pin the full-recomputation path (its contexts are inspected); the KV-cached session path
# (issue 5) has its own tests in test_inference.py.
RECOMPUTE = {"use_session": False} if "use_session" in inspect.signature(Policy).parameters else {}


def observation(task_id: str, rng: np.random.Generator) -> dict:
    if task_id == IMAGE_TASK:
        return {
            "image": rng.integers(0, 256, size=(32, 24, 3), dtype=np.uint8),
            "state": rng.uniform(-1, 1, 3).astype(np.float32),
            "instruction": "press the red button",
        }
    return {"joints": rng.normal(size=4)}


def episode(task_id: str, seed: int, T: int = 12) -> Episode:
    rng = np.random.default_rng(seed)
    obs = [observation(task_id, rng) for _ in range(T)]
    observations = {k: [o[k] for o in obs] if k == "instruction" else np.stack([o[k] for o in obs]) for k in obs[0]}
    if task_id == IMAGE_TASK:
        actions = (observations["state"][:, 0] > 0).astype(np.int64) + (observations["state"][:, 1] > 0.5)
    else:
        actions = np.clip(observations["joints"][:, :2], -1, 1).astype(np.float32)
    return Episode(task_id, observations, actions, rewards=np.ones(T), seed=seed, spec=SPECS[task_id])


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    for task_id in SPECS:
        EpisodeStore(root / task_id.replace("/", "_")).append_episodes([episode(task_id, s) for s in range(4)])
    return root


def train_cfg(out: Path, data: Path, **kw) -> TrainConfig:
    base = dict(data=(data,), out=out, preset="cpu-tiny", context=CONTEXT, steps=4, batch_size=4, warmup_steps=1,
                save_every=2, progress=False, tensorboard=False, threads=1, prompt_prob=0.5)
    return TrainConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def checkpoint(dataset, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run")
    train(train_cfg(out, dataset))
    return out


def test_training_from_a_dataset_saves_every_task_spec(checkpoint):
    meta = load_meta(checkpoint)
    assert meta.tasks == SPECS
    assert meta.layout == TOK.layout
    assert meta.train_state["step"] == 4


def test_resume_from_a_dataset_run_equals_uninterrupted(dataset, tmp_path, monkeypatch):
    full = train(train_cfg(tmp_path / "full", dataset))
    calls = {"n": 0}
    sample = WindowLoader.sample

    def dying_sample(self):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("killed")
        return sample(self)

    monkeypatch.setattr(WindowLoader, "sample", dying_sample)
    with pytest.raises(KeyboardInterrupt):
        train(train_cfg(tmp_path / "killed", dataset))
    monkeypatch.setattr(WindowLoader, "sample", sample)
    resumed = train(train_cfg(tmp_path / "killed", dataset, resume=True))
    assert resumed.losses == full.losses[2:]


def test_act_returns_valid_actions_for_parallel_envs(checkpoint):
    policy = Policy.from_checkpoint(checkpoint, **RECOMPUTE)
    rng = np.random.default_rng(0)
    policy.reset(3)
    for _ in range(3):
        actions = policy.act(IMAGE_TASK, [observation(IMAGE_TASK, rng) for _ in range(3)])
        assert [a.shape for a in actions] == [()] * 3 and all(a.dtype == np.int64 and 0 <= a < 3 for a in actions)
    policy.reset(2)
    for _ in range(3):
        actions = policy.act(VECTOR_TASK, [observation(VECTOR_TASK, rng) for _ in range(2)])
        for a in actions:
            assert a.shape == (2,) and a.dtype == np.float32
            assert -2 <= a[0] <= 2 and -1 <= a[1] <= 1


@pytest.mark.parametrize("temperature", [0.0, 1.5])
@pytest.mark.parametrize("task_id", [IMAGE_TASK, VECTOR_TASK])
def test_masked_decoding_never_yields_invalid_ids(checkpoint, monkeypatch, task_id, temperature):
    policy = Policy.from_checkpoint(checkpoint, temperature=temperature, seed=1, **RECOMPUTE)
    ranges = policy.action_ranges(task_id)  # (A, 2)
    logits = policy.model.logits
    invalid = torch.ones(TOK.layout.vocab_size, dtype=torch.bool)
    invalid[int(ranges[:, 0].min()) : int(ranges[:, 1].max())] = False

    def prefer_invalid(hidden):  # an adversarial head: invalid ids get far higher logits
        return logits(hidden) + 1e4 * invalid

    monkeypatch.setattr(policy.model, "logits", prefer_invalid)
    rng = np.random.default_rng(2)
    policy.reset(4)
    seen = set()
    for _ in range(6):
        policy.act(task_id, [observation(task_id, rng) for _ in range(4)])
        for env in policy._envs:
            A = len(ranges)
            tokens = env.steps[-1].tokens[-A:]
            assert np.all((tokens >= ranges[:, 0]) & (tokens < ranges[:, 1]))
            seen.update(tokens.tolist())
    if temperature > 0:
        assert len(seen) > 1  # sampling, not a constant


def random_policy(checkpoint: Path, seed: int) -> Policy:
    """A policy with freshly initialised weights: its actions vary with the input, unlike a 4-step model's."""
    meta = load_meta(checkpoint)
    torch.manual_seed(seed)
    model = GatoModel(meta.model)
    with torch.no_grad():
        for p in model.parameters():  # larger weights than GPT-2's init: outputs that vary more with the input
            p.normal_(0.0, 0.3)
    return Policy(model, meta, TOK, **RECOMPUTE)


def recorded_logits(policy: Policy) -> list[torch.Tensor]:
    """Record the (B, V) logits of every decoding step of ``policy``."""
    seen, logits = [], policy.model.logits

    def recording(hidden):
        seen.append(logits(hidden))
        return seen[-1]

    recording.__wrapped__ = logits
    policy.model.logits = recording
    return seen


@pytest.mark.parametrize("task_id", [IMAGE_TASK, VECTOR_TASK])
def test_batched_acting_equals_acting_one_env_at_a_time(checkpoint, task_id):
    rng = np.random.default_rng(3)
    n_envs, T = 3, 8  # long enough for the window to roll (context 64)
    episodes = [[observation(task_id, rng) for _ in range(T)] for _ in range(n_envs)]
    batched = random_policy(checkpoint, seed=0)
    batched.reset(n_envs)
    logits = recorded_logits(batched)
    together = [batched.act(task_id, [episodes[e][t] for e in range(n_envs)]) for t in range(T)]
    for e in range(n_envs):
        single = random_policy(checkpoint, seed=0)
        single.reset(1)
        alone_logits = recorded_logits(single)
        alone = [single.act(task_id, [episodes[e][t]])[0] for t in range(T)]
        np.testing.assert_array_equal(np.array([together[t][e] for t in range(T)]), np.array(alone))
        for step, row in zip(logits, alone_logits):
            torch.testing.assert_close(step[e], row[0], rtol=1e-5, atol=1e-5)
    assert torch.stack(logits).std(dim=1).mean() > 0.05  # the logits depend on the input


def segment(ep, window: slice) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Tokens, local positions, patches and patch positions of ``ep.tokens[window]`` (a training-window piece)."""
    patch_of = np.cumsum(ep.tokens == TOK.layout.patch_id) - 1  # token -> its row of ep.patches
    rows = patch_of[window][ep.tokens[window] == TOK.layout.patch_id]
    return ep.tokens[window].astype(np.int64), ep.local_pos[window].astype(np.int64), ep.patches[rows], ep.patch_pos[rows]


@pytest.mark.parametrize("prompted", [False, True])
@pytest.mark.parametrize("task_id", [IMAGE_TASK, VECTOR_TASK])
def test_policy_sees_what_training_windows_show(checkpoint, task_id, prompted):
    """Teacher-forced acting gives the logits of the model on the training-format window of the same episode
    (after a prompt: the demonstration's last timesteps, then the episode, as WindowLoader's prompted rows)."""
    policy = random_policy(checkpoint, seed=1)
    logits = recorded_logits(policy)
    spec, ep = SPECS[task_id], episode(task_id, seed=7, T=12)
    full = TOK.tokenize_episode(spec, ep.observations, ep.actions)  # what the token cache holds
    L, Lo, expert = full.tokens_per_timestep, full.obs_tokens_per_timestep, full.action_tokens()
    prefix = [np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, 3, 16, 16), np.float32), np.zeros((0, 2), np.int64)]
    if prompted:
        demo = episode(task_id, seed=8, T=12)
        kept = policy.set_prompt(task_id, demo.observations, demo.actions, max_fraction=0.5)
        assert kept == min(12, (CONTEXT // 2) // L)
        demo_tokens = TOK.tokenize_episode(spec, demo.observations, demo.actions)
        prefix = segment(demo_tokens, slice((12 - kept) * L, 12 * L))
    policy.reset(1)
    for t in range(12):
        logits.clear()
        policy.act(task_id, [{k: v[t] for k, v in ep.observations.items()}])
        env = policy._envs[0]
        chosen = env.steps[-1].tokens[Lo:].copy()  # (A,) the policy's own action tokens of this step
        env.steps[-1].tokens[Lo:] = expert[t]  # teacher forcing for the next steps
        start = (t + 1 - len(env.steps)) * L  # the window the policy kept: whole timesteps up to t
        own = list(segment(full, slice(start, t * L + Lo + len(chosen) - 1)))  # up to the last fed action token
        own[0][t * L - start + Lo :] = chosen[:-1]  # this step was fed its own choices
        tokens, local, patches, ppos = (np.concatenate([p, o]) for p, o in zip(prefix, own))
        is_patch = tokens == TOK.layout.patch_id
        patch_index = np.full(len(tokens), -1)
        patch_index[is_patch] = np.arange(is_patch.sum())
        at = len(prefix[0]) + t * L - start + Lo - 1  # where action token 0 is predicted
        with torch.no_grad():
            h = policy.model(*(torch.from_numpy(x)[None] for x in (tokens, local, patch_index)),
                             torch.from_numpy(patches.astype(np.float32)), torch.from_numpy(ppos.astype(np.int64)))
            for k, step_logits in enumerate(logits):  # action token k is predicted at position at + k
                torch.testing.assert_close(step_logits[0], policy.model.logits.__wrapped__(h[0, at + k]), rtol=1e-5, atol=1e-4)
    assert len(policy._envs[0].steps) < 12  # the window rolled


def test_prompt_takes_a_fixed_share_of_the_window_and_can_be_removed(checkpoint):
    policy = Policy.from_checkpoint(checkpoint, **RECOMPUTE)
    demo = episode(VECTOR_TASK, seed=9, T=12)
    with pytest.raises(ValueError, match=r"max_fraction must be in \(0, 1\), got 1.5"):
        policy.set_prompt(VECTOR_TASK, demo.observations, demo.actions, max_fraction=1.5)
    assert policy.set_prompt(VECTOR_TASK, demo.observations, demo.actions, max_fraction=0.25) == 2  # 16 tokens // 7
    rng = np.random.default_rng(6)
    policy.reset(1)
    for _ in range(15):
        policy.act(VECTOR_TASK, [observation(VECTOR_TASK, rng)])
    assert policy._envs[0].num_tokens <= CONTEXT - 14 and len(policy._envs[0].steps) == (CONTEXT - 14 - 1) // 7
    assert policy.set_prompt(VECTOR_TASK, None) == 0
    before = len(policy._envs[0].steps)
    policy.act(VECTOR_TASK, [observation(VECTOR_TASK, rng)])
    assert len(policy._envs[0].steps) == before + 1  # the room the prompt held is free again


def test_rolling_context_drops_whole_oldest_timesteps(checkpoint):
    policy = Policy.from_checkpoint(checkpoint, **RECOMPUTE)
    rng = np.random.default_rng(4)
    policy.reset(2)
    step_len = None
    for t in range(20):
        policy.act(VECTOR_TASK, [observation(VECTOR_TASK, rng) for _ in range(2)])
        env = policy._envs[0]
        step_len = len(env.steps[-1].tokens)
        assert env.num_tokens <= CONTEXT
        assert all(s.local_pos[0] == 0 and len(s.tokens) == step_len for s in env.steps)
    # 4 joints + separator + 2 actions = 7 tokens: the window keeps as many whole timesteps as fit
    assert step_len == 7 and len(policy._envs[0].steps) == (CONTEXT - 1) // 7
    policy.reset_env(1)
    assert len(policy._envs[1].steps) == 0 and len(policy._envs[0].steps) > 0


def test_observation_errors_name_key_expected_and_actual(checkpoint):
    policy = Policy.from_checkpoint(checkpoint, **RECOMPUTE)
    rng = np.random.default_rng(5)
    good = observation(IMAGE_TASK, rng)
    policy.reset(1)
    with pytest.raises(KeyError, match=r"env 0 observation: missing key 'state'; expected keys \['image', 'instruction', 'state'\], got \['image', 'instruction'\]"):
        policy.act(IMAGE_TASK, [{k: v for k, v in good.items() if k != "state"}])
    with pytest.raises(KeyError, match=r"\(as this checkpoint was trained on it\), env 0 observation: unexpected "
                                       r"key 'depth'"):
        policy.act(IMAGE_TASK, [{**good, "depth": np.zeros(3)}])
    with pytest.raises(ValueError, match=r"key 'image' expected shape \(32, 24, 3\), got \(24, 32, 3\)"):
        policy.act(IMAGE_TASK, [{**good, "image": np.zeros((24, 32, 3), np.uint8)}])
    with pytest.raises(ValueError, match=r"key 'image' expected dtype uint8, got float32"):
        policy.act(IMAGE_TASK, [{**good, "image": good["image"].astype(np.float32)}])
    with pytest.raises(ValueError, match=r"key 'state' expected dtype float32 \(or another floating dtype\), got int64"):
        policy.act(IMAGE_TASK, [{**good, "state": np.zeros(3, np.int64)}])
    with pytest.raises(ValueError, match=r"key 'instruction' expected a str \(text\), got int"):
        policy.act(IMAGE_TASK, [{**good, "instruction": 3}])
    with pytest.raises(KeyError, match=r"Unknown task 'atari/pong' for this checkpoint; it was trained on \['test/images-v0', 'test/vector-v0'\]"):
        policy.act("atari/pong", [good])
    with pytest.raises(ValueError, match=r"Expected 1 observations \(one per environment\), got 2"):
        policy.act(IMAGE_TASK, [good, good])
    # float64 where float32 is declared is the same kind: accepted
    check_observation(SPECS[IMAGE_TASK], {**good, "state": good["state"].astype(np.float64)})


@pytest.mark.slow
def test_policy_learns_the_synthetic_copy_rule(tmp_path):
    """End to end: train on synthetic windows, then act through the tokenizer on fresh observations."""
    src = SyntheticWindows(TOK.layout, context=CONTEXT, batch_size=16, seed=0)
    cfg = TrainConfig(out=tmp_path, preset="cpu-tiny", context=CONTEXT, steps=600, batch_size=16, lr=3e-3,
                      warmup_steps=20, progress=False, tensorboard=False)
    train(cfg, loader=src, layout=TOK.layout, tasks={SYNTHETIC_TASK_ID: synthetic_spec(6, 2)})
    policy = Policy.from_checkpoint(tmp_path, **RECOMPUTE)
    spec = policy.spec(SYNTHETIC_TASK_ID)
    rng = np.random.default_rng(0)
    policy.reset(4)
    exact = near = total = 0
    for _ in range(10):
        obs = [{"state": rng.uniform(-1, 1, 6).astype(np.float32)} for _ in range(4)]
        actions = policy.act(SYNTHETIC_TASK_ID, obs)
        for o, a, env in zip(obs, actions, policy._envs):
            want = TOK.tokenize_episode(spec, {"state": o["state"][None]}, None).tokens[:2] + np.arange(2)  # (2,)
            got = env.steps[-1].tokens[-2:]
            np.testing.assert_array_equal(a, TOK.decode_actions(spec, got[None])[0])
            exact += int((got == want).sum())
            near += int((np.abs(got - want) <= 2).sum())
            total += 2
    assert exact / total >= 0.5 and near / total >= 0.85, (exact / total, near / total)


def test_validation_loss_comes_from_held_out_episodes_and_falls(dataset, tmp_path):
    # 4 episodes per task: val_fraction 0.25 holds out each task's last one
    cfg = dict(val_fraction=0.25, val_every=40, val_windows=4, lr=3e-3, prompt_prob=0.0, bin_sigma=8.0)
    early = train(train_cfg(tmp_path / "early", dataset, steps=2, **cfg))
    late = train(train_cfg(tmp_path / "late", dataset, steps=80, **cfg))
    assert set(early.val_loss) == set(late.val_loss) == set(SPECS)
    for task in SPECS:
        assert np.isfinite(late.val_loss[task]) and late.val_loss[task] < 0.9 * early.val_loss[task], (early, late)
    assert set(late.fit_loss) == set(SPECS) and all(np.isfinite(v) for v in late.fit_loss.values())
    state = load_meta(tmp_path / "late").train_state
    assert state["val_loss"] == pytest.approx(late.val_loss) and state["fit_loss"] == pytest.approx(late.fit_loss)
    # 3 training episodes per task: the vector task's continuous actions fit far better than they generalise
    assert late.fit_loss[VECTOR_TASK] < 0.5 * late.val_loss[VECTOR_TASK]
    again = train(train_cfg(tmp_path / "late", dataset, steps=80, resume=True, **cfg))  # nothing left to do
    assert again.losses == [] and again.checkpoint == late.checkpoint
    assert again.val_loss == pytest.approx(late.val_loss) and again.fit_loss == pytest.approx(late.fit_loss)
    none = train(train_cfg(tmp_path / "none", dataset, steps=2))
    assert none.val_loss == {} and none.fit_loss == {}


def test_validation_batches_score_actions_of_the_right_episodes(dataset, tmp_path):
    from omnipolicy.agent.train import build_dataset_loader

    loader, layout, _, val = build_dataset_loader(train_cfg(tmp_path, dataset, val_fraction=0.25, val_windows=8), CONTEXT, False)
    assert set(val) == {(t, k) for t in SPECS for k in ("val", "fit")}
    for (task, kind), b in val.items():
        assert b["loss_mask"].any() and not (b["loss_mask"] & (b["tokens"] < layout.text_size)).any()
        held = set(b["episode"].tolist())
        last = {IMAGE_TASK: 3, VECTOR_TASK: 7}[task]  # each task's last of its 4 episodes (cache order)
        assert (held == {last}) if kind == "val" else (held and last not in held and held <= set(range(last - 3, last)))
    train_batch = loader.sample()
    assert (train_batch["loss_mask"] & (train_batch["tokens"] < layout.text_size)).any()  # training still scores text
    assert not set(train_batch["episode"].tolist()) & {3, 7}


def test_holdout_from_keeps_the_held_out_set_when_data_is_added(dataset, tmp_path):
    from omnipolicy.agent.train import build_dataset_loader

    extra = tmp_path / "dagger"
    EpisodeStore(extra / "vector").append_episodes([episode(VECTOR_TASK, s) for s in (100, 101, 102, 103)])
    demos_only = build_dataset_loader(train_cfg(tmp_path / "a", dataset, val_fraction=0.25, val_windows=8), CONTEXT, False)[3]
    both = build_dataset_loader(replace(train_cfg(tmp_path / "b", dataset, holdout_from=(dataset,), val_fraction=0.25,
                                                  val_windows=8), data=(dataset, extra)), CONTEXT, False)[3]
    for key, b in demos_only.items():  # the same episodes held out; "fit" windows still come from the demonstrations
        assert set(both[key]["episode"].tolist()) <= set(range(8)), key
        if key[1] == "val":
            assert set(both[key]["episode"].tolist()) == set(b["episode"].tolist())
    unheld = build_dataset_loader(replace(train_cfg(tmp_path / "c", dataset, val_fraction=0.25, val_windows=8),
                                          data=(dataset, extra)), CONTEXT, False)[3]
    assert set(unheld[VECTOR_TASK, "val"]["episode"].tolist()) <= {10, 11}  # without it: the added data's last two
    with pytest.raises(ValueError, match="holdout_from .* holds none of the training datasets"):
        build_dataset_loader(train_cfg(tmp_path / "d", dataset, holdout_from=(tmp_path / "elsewhere",),
                                       val_fraction=0.25), CONTEXT, False)
