"""Action chunking: acting (one action per tick; temporal ensembling, the receding horizon), the option in configs
and checkpoints, and a tiny train-then-act run. Chunked decoding through the session against recomputation:
test_inference_vs_policy.py."""

from __future__ import annotations

import json
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from omnipolicy.agent import CheckpointMeta, GatoModel, ModelConfig, Policy, PolicyActor, TrainConfig, load_meta, train
from omnipolicy.agent.checkpoint import resolve_checkpoint, save_checkpoint
from omnipolicy.agent.chunking import ChunkExecutor, ensemble_weights
from omnipolicy.datasets import Episode, EpisodeStore, TokenCache
from omnipolicy.tokenizers import FieldSpec, TimestepSpec, Tokenizer
from omnipolicy.tokenizers.chunking import ActionChunking

TOK = Tokenizer.default()
TASK = "test/state-v0"
SPEC = TimestepSpec((FieldSpec("state", "continuous", (3,), "float32"),),
                    FieldSpec("action", "continuous", (2,), "float32", low=(-1.0, -1.0), high=(1.0, 1.0)))
DISCRETE_TASK = "test/discrete-v0"
DISCRETE_SPEC = TimestepSpec((FieldSpec("state", "continuous", (3,), "float32"),),
                             FieldSpec("action", "discrete", (), "int64", n=3))

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/agent/conftest.py


def observation(rng: np.random.Generator) -> dict:
    return {"state": rng.normal(size=3).astype(np.float32)}


def chunked_model(inputs: str, chunk: int = 3, execution: str = "ensemble", context: int = 128) -> GatoModel:
    torch.manual_seed(0)
    cfg = ModelConfig(n_layer=2, n_embd=32, n_head=4, d_ff=64, context=context, local_positions=64, patch_channels=8,
                      patch_stride=4, action_inputs=inputs, action_chunk=chunk,
                      chunk_execution=execution).with_layout(TOK.layout)
    return GatoModel(cfg).eval()


def policy_of(model: GatoModel, **kw) -> Policy:
    tasks = {TASK: SPEC, DISCRETE_TASK: DISCRETE_SPEC}
    return Policy(model, CheckpointMeta(model.cfg, TOK.layout, tasks), TOK, **kw)


# ------------------------------------------------------------------------------ acting


def test_discrete_tasks_of_a_chunked_checkpoint_act_one_action_and_act_refuses_chunks():
    policy = policy_of(chunked_model("hidden"), use_session=True)
    assert policy.chunk_size(DISCRETE_TASK) == 1
    rng = np.random.default_rng(0)
    a = policy.act(DISCRETE_TASK, [{"state": rng.normal(size=3).astype(np.float32)}])
    assert a[0].shape == () and 0 <= a[0] < 3
    with pytest.raises(ValueError, match=r"predicts chunks of 3 actions .*act_chunks returns them"):
        policy.act(TASK, [observation(rng)])


# ------------------------------------------------------------------------------ execution


def test_temporal_ensemble_is_acts_weighted_mean_with_the_oldest_prediction_weighing_most():
    m = 0.5
    ex = ChunkExecutor(num_envs=2, chunk=3, execution="ensemble", weight=m)
    chunks = [np.array([[10.0], [11.0], [12.0]]), np.array([[20.0], [21.0], [22.0]]),
              np.array([[30.0], [31.0], [32.0]]), np.array([[40.0], [41.0], [42.0]])]
    got = []
    for c in chunks:
        assert ex.needs_chunk(0)
        ex.add(0, c.astype(np.float32))
        got.append(float(ex.next_action(0)[0]))
    w = np.exp(-m * np.arange(3))  # i = 0 the oldest
    assert got[0] == 10.0  # tick 0: only chunk 0's element 0
    assert got[1] == pytest.approx((w[0] * 11 + w[1] * 20) / w[:2].sum())  # chunk 0 elem 1, chunk 1 elem 0
    assert got[2] == pytest.approx((w[0] * 12 + w[1] * 21 + w[2] * 30) / w.sum())
    assert got[3] == pytest.approx((w[0] * 22 + w[1] * 31 + w[2] * 40) / w.sum())  # chunk 0 has left
    np.testing.assert_allclose(ensemble_weights(3, m), w / w.sum())
    assert ex.next_action(0).dtype == np.float32
    ex.reset(0)  # a new episode forgets the old chunks
    ex.add(0, chunks[3])
    assert float(ex.next_action(0)[0]) == 40.0
    with pytest.raises(ValueError, match=r"env 1: no predicted action for this tick; add a chunk first"):
        ex.next_action(1)
    with pytest.raises(ValueError, match=r"expected a chunk of 3 actions \(k, \*action shape\), got shape \(2, 1\)"):
        ex.add(1, np.zeros((2, 1)))


def test_receding_executor_runs_each_chunk_open_loop_then_asks_again():
    ex = ChunkExecutor(num_envs=1, chunk=2, execution="receding")
    out = []
    for tick in range(5):
        if ex.needs_chunk(0):
            ex.add(0, np.array([[tick], [tick + 0.5]]))
        out.append(float(ex.next_action(0)[0]))
    assert out == [0.0, 0.5, 2.0, 2.5, 4.0]


class _Counting:
    """Wraps a Policy's act_chunks to record which environments it was asked about and with which observations."""

    def __init__(self, policy: Policy) -> None:
        self.calls: list[tuple[list[int], list[float]]] = []
        inner = policy.act_chunks

        def act_chunks(task_id, observations, env_ids=None):
            self.calls.append((list(env_ids), [float(o["state"][0]) for o in observations]))
            return inner(task_id, observations, env_ids=env_ids)

        policy.act_chunks = act_chunks


@pytest.mark.parametrize("use_session", [True, False])
def test_receding_actor_executes_k_actions_then_observes_again_and_restarts_at_each_episode(use_session):
    policy = policy_of(chunked_model("hidden", chunk=3, execution="receding"), use_session=use_session)
    counting = _Counting(policy)
    actor = PolicyActor(policy)
    actor.begin(SimpleNamespace(id=TASK), [None, None])
    rng = np.random.default_rng(0)

    def obs(tick: int) -> dict:
        o = observation(rng)
        o["state"][0] = tick
        return o

    actor.reset_env(0, obs(0)), actor.reset_env(1, obs(0))
    executed = {0: [], 1: []}
    for tick in range(7):
        if tick == 4:  # env 1 starts a new episode: its horizon starts over
            actor.reset_env(1, obs(0))
        acts = actor.act([0, 1], [obs(tick), obs(tick)])
        for e, a in zip((0, 1), acts):
            assert a.shape == (2,) and a.dtype == np.float32
            executed[e].append(a)
    # env 0 queried at ticks 0, 3, 6; env 1 at 0, 3, then at its new episode's first tick (4)
    assert counting.calls == [([0, 1], [0.0, 0.0]), ([0, 1], [3.0, 3.0]), ([1], [4.0]), ([0], [6.0])]
    assert len(executed[0]) == 7
    if use_session:
        assert policy._session.window_timesteps(0) == 3  # skipped ticks never reached the model
        assert policy._session.window_timesteps(1) == 1
    else:
        assert len(policy._envs[0].steps) == 3 and len(policy._envs[1].steps) == 1


def test_ensemble_actor_queries_every_tick_and_executes_the_weighted_mean():
    policy = policy_of(chunked_model("hidden", chunk=3, execution="ensemble"), use_session=True)
    counting = _Counting(policy)
    twin = policy_of(chunked_model("hidden", chunk=3, execution="ensemble"), use_session=True)
    actor = PolicyActor(policy, ensemble_weight=0.3)
    actor.begin(SimpleNamespace(id=TASK), [None])
    twin.reset(1)
    rng = np.random.default_rng(1)
    actor.reset_env(0, None)
    chunks = []
    for tick in range(5):
        o = observation(rng)
        a = actor.act([0], [o])[0]
        chunks.append(twin.act_chunks(TASK, [o])[0])  # the same model fed the same observations
        n = min(len(chunks), 3)
        preds = np.stack([chunks[-n + j][n - 1 - j] for j in range(n)]).astype(np.float64)
        w = ensemble_weights(n, 0.3)[:, None]
        np.testing.assert_allclose(a, (w * preds).sum(0), rtol=1e-6)
    assert len(counting.calls) == 5


# ------------------------------------------------------------------------------ config and checkpoints


def test_the_option_travels_with_the_checkpoint_and_old_checkpoints_load_unchunked(tmp_path):
    model = chunked_model("hidden", chunk=4, execution="receding")
    path = save_checkpoint(tmp_path / "step_0000001", model, CheckpointMeta(model.cfg, TOK.layout, {TASK: SPEC}))
    meta = load_meta(path)
    assert (meta.model.action_chunk, meta.model.chunk_execution) == (4, "receding")
    assert meta.model.chunking == ActionChunking(4, "receding")
    d = json.loads((path / "checkpoint.json").read_text())
    for key in ("action_chunk", "chunk_execution"):  # a checkpoint written before chunking existed
        del d["model"][key]
    (path / "checkpoint.json").write_text(json.dumps(d))
    assert load_meta(path).model.chunking == ActionChunking(1, "ensemble")


def test_bad_chunk_options_are_refused_with_what_was_expected(tmp_path):
    with pytest.raises(ValueError, match=r"ModelConfig: action chunk size must be an int >= 1 \(1 = no chunking\), got 0"):
        ModelConfig(n_layer=1, n_embd=32, n_head=4, d_ff=64, action_chunk=0)
    with pytest.raises(ValueError, match=r"TrainConfig: action chunk size must be an int >= 1 .*got -2"):
        TrainConfig(action_chunk=-2)
    with pytest.raises(ValueError, match=r"chunk execution must be one of \('ensemble', 'receding'\), got 'later'"):
        TrainConfig(action_chunk=2, chunk_execution="later")
    with pytest.raises(ValueError, match=r"action_chunk=3 needs datasets \(--data\)"):
        TrainConfig(action_chunk=3, synthetic=True)
    root = tmp_path / "data"
    rng = np.random.default_rng(0)
    obs = {"state": rng.normal(size=(6, 3)).astype(np.float32)}
    EpisodeStore(root / "d").append_episodes([Episode(DISCRETE_TASK, obs, np.zeros(6, np.int64), rewards=np.ones(6),
                                                      seed=0, spec=DISCRETE_SPEC)])
    with pytest.raises(ValueError, match=r"action_chunk=3 chunks continuous actions, but every task .*discrete action: "
                                         r"\['test/discrete-v0'\]"):
        train(TrainConfig(data=(root,), out=tmp_path / "run", action_chunk=3, steps=1, progress=False,
                          tensorboard=False))


# ------------------------------------------------------------------------------ train and act


def episode(seed: int, T: int = 10) -> Episode:
    rng = np.random.default_rng(seed)
    obs = [observation(rng) for _ in range(T)]
    observations = {"state": np.stack([o["state"] for o in obs])}
    actions = np.clip(observations["state"][:, :2], -1, 1).astype(np.float32)
    return Episode(TASK, observations, actions, rewards=np.ones(T), seed=seed, spec=SPEC)


@pytest.mark.parametrize("execution", ["ensemble", "receding"])
def test_tiny_training_with_chunks_then_acting_one_action_per_tick(tmp_path, execution):
    root = tmp_path / "data"
    EpisodeStore(root / "pixels").append_episodes([episode(s) for s in range(3)])
    cfg = TrainConfig(data=(root,), out=tmp_path / "run", preset="cpu-tiny", context=128, steps=3, batch_size=2,
                      warmup_steps=1, save_every=3, progress=False, tensorboard=False, threads=1, prompt_prob=0.0,
                      action_inputs="hidden", action_chunk=4, chunk_execution=execution, bin_sigma=4.0)
    result = train(cfg)
    assert np.isfinite(result.losses).all()
    meta = load_meta(resolve_checkpoint(result.checkpoint))
    assert (meta.model.action_chunk, meta.model.chunk_execution) == (4, execution)
    cache = TokenCache(tmp_path / "run" / "token_cache")
    ep = cache.episode(0)
    assert cache.chunking == ActionChunking(4, execution)
    assert ep.num_timesteps == (10 if execution == "ensemble" else 3)  # ticks 0, 4, 8 for the receding horizon
    # the cache key follows the chunking: another setting rebuilds, the same one is reused
    again = TokenCache.build([root], TOK, tmp_path / "run" / "token_cache", progress=False,
                             chunking=ActionChunking(4, execution))
    assert again.manifest["digest"] == cache.manifest["digest"]
    other = TokenCache.build([root], TOK, tmp_path / "other", progress=False)
    assert other.manifest["digest"] != cache.manifest["digest"] and other.episode(0).num_timesteps == 10

    actor = PolicyActor.from_checkpoint(result.checkpoint, ensemble_weight=0.2)
    assert actor.recipe().ensemble_weight == 0.2  # evaluation workers rebuild the same actor
    actor.begin(SimpleNamespace(id=TASK), [None, None])
    rng = np.random.default_rng(5)
    for e in (0, 1):
        actor.reset_env(e, None)
    for tick in range(6):
        actions = actor.act([0, 1], [observation(rng), observation(rng)])
        assert all(a.shape == (2,) and a.dtype == np.float32 and (np.abs(a) <= 1).all() for a in actions)
    steps = actor.policy._session.window_timesteps(0)
    assert steps == (6 if execution == "ensemble" else 2)
    assert replace(meta.model, action_chunk=1).chunking.size == 1


@pytest.mark.parametrize("width", [None, 12])  # padded per episode, or to a fixed width (the SO-101 tasks')
def test_a_new_instruction_mid_episode_starts_a_fresh_context_as_deploy_does(width):
    from omnipolicy.tokenizers.spec import FieldSpec, TimestepSpec

    policy = policy_of(chunked_model("hidden", chunk=1, execution="ensemble"), use_session=True)
    base = policy.spec(TASK)
    spec = TimestepSpec((*base.observation, FieldSpec("instruction", "text", (), "str", n=width)), base.action)
    policy.meta.tasks[TASK] = spec
    actor = PolicyActor(policy)
    actor.begin(SimpleNamespace(id=TASK, timestep=spec), [None])
    rng = np.random.default_rng(0)

    def obs(text: str) -> dict:
        return {**observation(rng), "instruction": text}

    actor.reset_env(0, obs("lift the red cube"))
    for _ in range(3):
        actor.act([0], [obs("lift the red cube")])
    assert policy._session.window_timesteps(0) == 3
    actor.act([0], [obs("lift the blue cube")])  # the instruction changed: the context starts over
    assert policy._session.window_timesteps(0) == 1
    actor.act([0], [obs("lift the blue cube")])
    assert policy._session.window_timesteps(0) == 2


def test_a_variant_of_a_trained_task_acts_as_that_task():
    policy = policy_of(chunked_model("hidden", chunk=1, execution="ensemble"), use_session=True)
    actor = PolicyActor(policy)
    spec = policy.spec(TASK)
    variant = SimpleNamespace(id=TASK + "-unseen", scores_from=TASK, timestep=spec)
    assert actor.acts_as(variant) == TASK
    other = SimpleNamespace(id="x/other", scores_from=TASK, timestep=_with_extra_field(spec))
    with pytest.raises(KeyError, match="trained on"):
        actor.acts_as(other)
    # what `eval` and `dagger` check before they run: registered variants of a trained task (held-out phrasings,
    # instruction swaps) are accepted, other tasks are not
    assert actor.can_act(TASK) and not actor.can_act("classic/acrobot-v1")


def _with_extra_field(spec):
    """``spec`` with one more observation field: not the same observations."""
    from omnipolicy.tokenizers.spec import FieldSpec, TimestepSpec

    return TimestepSpec((*spec.observation, FieldSpec("extra", "continuous", (1,), "float32")), spec.action)
