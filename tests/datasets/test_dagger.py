"""DAgger rounds: the expert labels the states another actor reaches; rounds add new seeds to a store."""

from __future__ import annotations

import json

import numpy as np
import pytest

from omnipolicy.agent import PolicyActor, TrainConfig, train
from omnipolicy.cli import main
from omnipolicy.datasets import EpisodeStore
from omnipolicy.datasets.collect import collect, rollout, task_path
from omnipolicy.datasets.dagger import DEFAULT_SEED, dagger_round, policy_episodes
from omnipolicy.envs import get_task, make_env, make_expert
from omnipolicy.envs.rollout import RandomActor

PENDULUM, CARTPOLE = "classic/pendulum-v1", "classic/cartpole-v1"


class Recording:
    """Wraps an actor and keeps the actions it chose, per environment."""

    def __init__(self, inner) -> None:
        self.inner, self.name, self.taken = inner, inner.name, {}

    def begin(self, task, envs) -> None:
        self.inner.begin(task, envs)
        self.taken = {k: [] for k in range(len(envs))}

    def reset_env(self, index, obs) -> None:
        self.inner.reset_env(index, obs)

    def act(self, active, observations):
        actions = self.inner.act(active, observations)
        for k, a in zip(active, actions):
            self.taken[k].append(np.asarray(a))
        return actions


def test_with_the_expert_driving_a_round_is_the_expert_rollout():
    episodes = policy_episodes(RandomActor(), PENDULUM, [5, 6], max_steps=30, expert_share=1.0)
    task = get_task(PENDULUM)
    for ep, seed in zip(episodes, (5, 6)):
        ref = rollout(make_env(PENDULUM), make_expert(PENDULUM, seed=seed), task, seed, max_steps=30)
        assert ep.seed == seed and len(ep.actions) == 30
        np.testing.assert_array_equal(ep.actions, ref.actions)
        np.testing.assert_array_equal(ep.observations["state"], ref.observations["state"])
        np.testing.assert_array_equal(ep.rewards, ref.rewards)


def test_the_expert_labels_the_states_the_actor_reaches():
    actor = Recording(RandomActor(seed=3))
    (ep,) = policy_episodes(actor, PENDULUM, [11], max_steps=40)
    expert_run = rollout(make_env(PENDULUM), make_expert(PENDULUM, seed=11), get_task(PENDULUM), 11, max_steps=40)
    obs = ep.observations["state"]
    np.testing.assert_array_equal(obs[0], expert_run.observations["state"][0])  # the same reset
    assert np.abs(obs[1:] - expert_run.observations["state"][1:]).max() > 0.1  # then the random actor's states
    # replaying the random actor's actions, the expert chooses exactly the stored labels
    env, expert = make_env(PENDULUM), make_expert(PENDULUM, seed=11)
    o, _ = env.reset(seed=11)
    expert.reset(env, o)
    for t, taken in enumerate(actor.taken[0]):
        np.testing.assert_array_equal(o["state"], obs[t])
        np.testing.assert_array_equal(expert.act(env, o), ep.actions[t])
        o, *_ = env.step(taken)
    assert not np.allclose(np.stack(actor.taken[0]), ep.actions)  # labels are not what was executed
    assert -1400 < ep.rewards.sum() < 0 and ep.success is None


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    root = tmp_path_factory.mktemp("dagger")
    collect([PENDULUM, CARTPOLE], 2, root / "data", workers=0, max_steps=30, progress=False)
    train(TrainConfig(data=(root / "data",), out=root / "train", steps=3, batch_size=2, warmup_steps=1,
                      progress=False, tensorboard=False, threads=1))
    return root / "train"


def test_rounds_add_new_seeds_and_report_the_policy(checkpoint, tmp_path):
    out = tmp_path / "rounds"
    first = dagger_round(PolicyActor.from_checkpoint(checkpoint), [PENDULUM, CARTPOLE], 2, out, max_steps=25, progress=False)
    second = dagger_round(PolicyActor.from_checkpoint(checkpoint), [PENDULUM, CARTPOLE], {PENDULUM: 1}, out, max_steps={PENDULUM: 20},
                          progress=False)
    assert first[PENDULUM]["new"] == 2 and first[PENDULUM]["steps"] == 50 and first[CARTPOLE]["new"] == 2
    assert second[PENDULUM] | {"policy_return": 0} == {
        "path": str(task_path(out, PENDULUM)), "episodes": 3, "new": 1, "steps": 20, "policy_return": 0,
        "policy_success_rate": None,
    }
    assert second[CARTPOLE]["new"] == 0  # 0 episodes asked: the task is skipped
    store = EpisodeStore(task_path(out, PENDULUM))
    assert store.seeds(PENDULUM) == {DEFAULT_SEED, DEFAULT_SEED + 1, DEFAULT_SEED + 2}
    assert np.isfinite(first[PENDULUM]["policy_return"]) and first[PENDULUM]["policy_return"] < 0
    with pytest.raises(ValueError, match=r"was not trained on \['classic/acrobot-v1'\]"):
        dagger_round(PolicyActor.from_checkpoint(checkpoint), ["classic/acrobot-v1"], 1, out, progress=False)
    with pytest.raises(ValueError, match=r"expert_share must be in \[0, 1\], got 2.0"):
        dagger_round(PolicyActor.from_checkpoint(checkpoint), [PENDULUM], 1, out, expert_share=2.0, progress=False)


def test_dagger_command_in_two_worker_processes(checkpoint, tmp_path, capsys):
    main(["dagger", "--checkpoint", str(checkpoint), "--task", PENDULUM, "--task", CARTPOLE, "--episodes", "2",
          "--max-steps", "15", "--workers", "2", "--out", str(tmp_path / "d")])
    line = capsys.readouterr().out.strip().splitlines()[-1]
    summary = json.loads(line)
    assert 32 <= summary["steps"] <= 60  # Pendulum 2 x 15 steps; CartPole may fall before 15
    assert set(summary["policy_return"]) == {PENDULUM, CARTPOLE}
    assert EpisodeStore(task_path(tmp_path / "d", CARTPOLE)).num_episodes == 2


def test_dagger_command_drives_with_the_decoding_it_is_given(checkpoint, tmp_path, capsys):
    """A round run with ``--continuous-decoding`` visits the states eval's policy with that decoding visits."""
    common = ["--checkpoint", str(checkpoint), "--episodes", "2", "--max-steps", "15", "--seed", "500"]
    returns = {}
    for decoding in ("mean", "mode"):
        main(["dagger", *common, "--task", PENDULUM, "--continuous-decoding", decoding,
              "--out", str(tmp_path / decoding)])
        returns[decoding] = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["policy_return"][PENDULUM]
        main(["eval", *common, "--tasks", PENDULUM, "--continuous-decoding", decoding, "--no-video",
              "--out", str(tmp_path / f"eval_{decoding}")])
        report = json.loads((tmp_path / f"eval_{decoding}" / "report.json").read_text())
        assert report["protocol"]["continuous_decoding"] == decoding
        assert returns[decoding] == pytest.approx(report["tasks"][PENDULUM]["return_mean"], abs=2e-3)
    assert abs(returns["mean"] - returns["mode"]) > 0.1  # the decoding changed what the policy did


class FailsOnBatch:
    """Wraps an actor and raises when batch ``n`` (counted from 1) begins: an interrupted round."""

    def __init__(self, inner, n: int) -> None:
        self.inner, self.name, self.n, self.begun = inner, inner.name, n, 0

    def begin(self, task, envs) -> None:
        self.begun += 1
        if self.begun == self.n:
            raise KeyboardInterrupt
        self.inner.begin(task, envs)

    def reset_env(self, index, obs) -> None:
        self.inner.reset_env(index, obs)

    def act(self, active, observations):
        return self.inner.act(active, observations)


def test_a_round_in_batches_stores_each_batch_and_keeps_those_done(checkpoint, tmp_path):
    whole = dagger_round(PolicyActor.from_checkpoint(checkpoint), [PENDULUM], 5, tmp_path / "whole", max_steps=10,
                         expert_share=1.0, progress=False)
    batched = dagger_round(PolicyActor.from_checkpoint(checkpoint), [PENDULUM], 5, tmp_path / "batched", max_steps=10,
                           expert_share=1.0, progress=False, num_envs=2)
    assert batched[PENDULUM]["new"] == whole[PENDULUM]["new"] == 5 and batched[PENDULUM]["steps"] == 50
    a = EpisodeStore(task_path(tmp_path / "whole", PENDULUM))
    b = EpisodeStore(task_path(tmp_path / "batched", PENDULUM))
    assert b.seeds(PENDULUM) == set(range(DEFAULT_SEED, DEFAULT_SEED + 5))
    np.testing.assert_array_equal(np.concatenate([e.actions for e in a]),
                                  np.concatenate([e.actions for e in b]))
    with pytest.raises(KeyboardInterrupt):
        dagger_round(FailsOnBatch(PolicyActor.from_checkpoint(checkpoint), 3), [PENDULUM], 5, tmp_path / "cut",
                     max_steps=10, progress=False, num_envs=2)
    cut = EpisodeStore(task_path(tmp_path / "cut", PENDULUM))
    assert cut.seeds(PENDULUM) == set(range(DEFAULT_SEED, DEFAULT_SEED + 4))  # two batches of two were stored
    with pytest.raises(ValueError, match="num_envs must be >= 1, got 0"):
        dagger_round(PolicyActor.from_checkpoint(checkpoint), [PENDULUM], 1, tmp_path / "x", num_envs=0, progress=False)
