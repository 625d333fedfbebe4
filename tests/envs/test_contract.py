"""One contract test over every registered task: spec conformance, determinism, no shared buffers."""

from __future__ import annotations

import copy
from dataclasses import replace

import gymnasium as gym
import numpy as np
import pytest

from omnipolicy.envs import DEFAULT_SUITE, get_task, list_tasks, make_env, make_expert
from omnipolicy.envs.experts.base import RandomPolicy
from omnipolicy.envs.registry import load_attr
from omnipolicy.tokenizers import Tokenizer

TASK_IDS = [s.id for s in list_tasks()]
TOKENIZER = Tokenizer.default()
STEPS = 6


def check_obs(spec, obs: dict, instruction: str | None = None) -> None:
    """``instruction``: the env's current one, where it differs per episode (the SO-101 scenes'); else the task's."""
    names = [f.name for f in spec.timestep.observation]
    assert sorted(obs) == sorted(names), f"observation keys {sorted(obs)} != spec {sorted(names)}"
    for f in spec.timestep.observation:
        value = obs[f.name]
        if f.kind == "text" and f.n is not None:  # fits its width
            assert isinstance(value, str) and len(TOKENIZER.encode_text(value)) <= f.n, (f.name, value)
        if f.kind == "text" and f not in spec.timestep.instructions():  # a question: changes every step
            continue
        if f.kind == "text":
            assert isinstance(value, str) and value == (spec.instruction if instruction is None else instruction)
            continue
        assert isinstance(value, np.ndarray), f"{f.name}: {type(value)}"
        assert value.shape == f.shape and value.dtype == np.dtype(f.dtype), (f.name, value.shape, value.dtype)
        if f.kind == "continuous":
            assert np.all(np.isfinite(value)), f.name


def rollout(env, seed: int, actions: list, mutate: bool, instructions: list | None = None):
    """Observations (copied) and rewards of a seeded episode; ``mutate`` scribbles on every returned obs;
    ``instructions`` gets the env's instruction in force at each observation (an SO-101 swap task changes it)."""
    trace = []
    obs, _ = env.reset(seed=seed)
    for a in [None] + actions:
        if a is not None:
            obs, reward, terminated, truncated, _ = env.step(a)
            trace.append(reward)
        trace.append(copy.deepcopy(obs))
        if instructions is not None:
            instructions.append(getattr(env, "instruction", None))
        if mutate:
            for v in obs.values():
                if isinstance(v, np.ndarray):
                    v[...] = 7
        if a is not None and (terminated or truncated):
            break
    return trace


def assert_same(a, b) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        if isinstance(x, dict):
            for k in x:
                np.testing.assert_array_equal(x[k], y[k], err_msg=k)
        else:
            assert x == y


@pytest.mark.parametrize("task_id", TASK_IDS)
def test_task_contract(task_id: str) -> None:
    spec = get_task(task_id)
    env = make_env(task_id, seed=11)
    try:
        # Spaces: the env's spaces are the spec's, and the simulator's own action space agrees.
        a = spec.timestep.action
        assert sorted(env.observation_space.spaces) == sorted(f.name for f in spec.timestep.observation)
        for f in spec.timestep.observation:
            if f.kind == "discrete":
                kind = gym.spaces.Discrete if f.shape == () else gym.spaces.MultiDiscrete
                assert isinstance(env.observation_space[f.name], kind), (f.name, env.observation_space[f.name])
        native = env.native_action_space
        if a.kind == "discrete":
            assert isinstance(native, gym.spaces.Discrete) and native.n == a.n
            # Gymnasium's convention: one discrete value is Discrete(n), several MultiDiscrete.
            expected = gym.spaces.Discrete(a.n) if a.size == 1 else gym.spaces.MultiDiscrete(np.full(a.shape, a.n))
            assert env.action_space == expected, f"action_space {env.action_space} != {expected}"
        elif a.kind == "text":
            assert isinstance(env.action_space, gym.spaces.Text) and native == env.action_space
        else:
            assert isinstance(env.action_space, gym.spaces.Box) and env.action_space.shape == a.shape
            assert native.shape == a.shape
            np.testing.assert_allclose(native.low.ravel(), a.low, rtol=1e-6)
            np.testing.assert_allclose(native.high.ravel(), a.high, rtol=1e-6)

        # The first unseeded reset uses make_env's seed.
        first, _ = env.reset()
        check_obs(spec, first, getattr(env, "instruction", None))
        assert env.observation_space.contains({k: v for k, v in first.items()})
        again, _ = env.reset(seed=11)
        assert_same([first], [again])

        policy = RandomPolicy(spec, seed=0)
        actions = [policy.act(env, first) for _ in range(STEPS)]
        for act in actions:
            if a.kind == "text":
                assert act.shape == () and isinstance(act.item(), str)
            else:
                assert act.shape == a.shape and act.dtype == np.dtype(a.dtype)
        instructions: list = []
        clean = rollout(env, 5, actions, mutate=False, instructions=instructions)
        observed = iter(instructions)
        for item in clean:
            if isinstance(item, dict):
                check_obs(spec, item, next(observed))
            else:
                assert isinstance(item, float) and np.isfinite(item)
        # Same seed, same actions -> same episode, even when every returned array was overwritten.
        assert_same(clean, rollout(env, 5, actions, mutate=True))
        # Consecutive observations never share memory.
        o1, *_ = env.step(actions[0])
        o2, *_ = env.step(actions[1])
        for k, v in o1.items():
            if isinstance(v, np.ndarray):
                assert not np.shares_memory(v, o2[k]), k
        # A different seed gives a different start (seeds reach the simulator). ALE games start
        # from the same screen; there the seed drives the no-op start (another emulator state, see
        # tests/envs/test_atari.py) and the sticky actions.
        if spec.domain != "atari":
            def differs(seed: int) -> bool:
                other = rollout(env, seed, [], mutate=False)
                return any(not np.array_equal(clean[0][k], other[0][k]) for k in clean[0] if k != "instruction")

            # Two seeds may draw the same question where the question is all there is (a question-only task).
            assert differs(6) or (spec.domain == "vqa" and (differs(7) or differs(8)))
    finally:
        env.close()


@pytest.mark.parametrize("task_id", TASK_IDS)
@pytest.mark.filterwarnings("ignore:.*is probably too (low|high):UserWarning")  # unbounded Box observations
@pytest.mark.filterwarnings("ignore:.*symmetric and normalized space:UserWarning")  # the simulators' own torque ranges
def test_gymnasium_check_env_passes(task_id: str) -> None:
    from gymnasium.utils.env_checker import check_env

    env = make_env(task_id, seed=0)
    try:
        check_env(env, skip_render_check=True, skip_close_check=True)
    finally:
        env.close()


def test_discrete_actions_are_gymnasium_discrete_and_step_takes_both_forms() -> None:
    env = make_env("atari/pong", seed=3)
    try:
        assert isinstance(env.action_space, gym.spaces.Discrete) and env.action_space.n == 6
        assert env.action_space.start == 0 and env.action_space.dtype == np.int64
        env.action_space.seed(0)
        samples = [env.action_space.sample() for _ in range(12)]
        assert {type(a) for a in samples} == {np.int64} and set(map(int, samples)) <= set(range(6))
        # The space's values, python ints and the spec's (1,) int64 arrays drive the same episode.
        forms = [samples, [int(a) for a in samples], [np.array([a], np.int64) for a in samples]]
        traces = [rollout(env, 5, actions, mutate=False) for actions in forms]
        assert_same(traces[0], traces[1])
        assert_same(traces[0], traces[2])
        assert len(traces[0]) == 1 + 2 * len(samples)
    finally:
        env.close()
    with pytest.raises(ValueError, match=r"integers in \[0, 6\), got \[6\]"):
        make_env("atari/pong", seed=0).step(6)


def test_discrete_actions_round_trip_through_a_dataset(tmp_path) -> None:
    """Collected actions stay the spec's (T, 1) int64 column; replayed as ints they give the same episode."""
    from omnipolicy.datasets import EpisodeStore
    from omnipolicy.datasets.collect import collect, task_path

    task_id = "classic/cartpole-v1"
    collect([task_id], 2, tmp_path, workers=0, seed=4, progress=False, max_steps=40)  # no noise: the stored actions ran
    store = EpisodeStore(task_path(tmp_path, task_id))
    assert store.timestep_spec(task_id).action == get_task(task_id).timestep.action
    env = make_env(task_id)
    for i in range(store.num_episodes):
        ep = store.load_episode(i)
        assert ep.actions.shape == (ep.length, 1) and ep.actions.dtype == np.int64
        assert set(np.unique(ep.actions).tolist()) == {0, 1}  # both pushes, so the replay below is not trivial
        assert all(env.action_space.contains(int(a[0])) for a in ep.actions)
        obs, _ = env.reset(seed=ep.seed)
        for t, a in enumerate(ep.actions):
            np.testing.assert_array_equal(obs["state"], ep.observations["state"][t])
            obs, reward, *_ = env.step(int(a[0]))  # the Gymnasium form of the stored action
            assert reward == ep.rewards[t]


# A vision-language episode ends at its answer (tests/envs/test_vqa.py), so it never reaches a step limit.
@pytest.mark.parametrize("task_id", [t for t in TASK_IDS if get_task(t).domain != "vqa"])
def test_episode_truncates_at_max_steps(task_id: str) -> None:
    spec = replace(get_task(task_id), max_steps=3)
    env = load_attr(spec.entry_point)(spec, **spec.factory_kwargs)
    try:
        obs, _ = env.reset(seed=0)
        expert = make_expert(task_id)  # the expert survives 3 steps everywhere
        expert.reset(env, obs)
        flags = []
        for _ in range(3):
            obs, _, terminated, truncated, info = env.step(expert.act(env, obs))
            flags.append((terminated, truncated))
            if spec.has_success:
                assert isinstance(info["success"], bool)
        assert flags == [(False, False), (False, False), (False, True)]
    finally:
        env.close()


@pytest.mark.parametrize("task_id", ["classic/pendulum-v1", "mujoco/reacher-v5", "dmc/cartpole-swingup", "metaworld/reach-v3"])
def test_render_gives_rgb_frames(task_id: str) -> None:
    env = make_env(task_id, seed=0, render_mode="rgb_array")
    try:
        env.reset()
        frame = env.render()
        assert frame.dtype == np.uint8 and frame.ndim == 3 and frame.shape[2] == 3
        assert frame.std() > 1.0  # a picture, not a blank buffer
    finally:
        env.close()


def test_unknown_task_lists_close_matches() -> None:
    with pytest.raises(KeyError, match=r"Unknown task id 'metaworld/reach-v2'\. Did you mean: metaworld/reach-v3"):
        get_task("metaworld/reach-v2")
    with pytest.raises(KeyError, match=r"Did you mean: dmc/cartpole-swingup"):
        make_env("dmc/cartpole-swingpu")
    with pytest.raises(ValueError, match=r"Unknown domain 'mujuco'; expected one of \['classic'"):
        list_tasks("mujuco")


def test_default_suite_covers_the_issue() -> None:
    assert set(DEFAULT_SUITE) <= set(TASK_IDS)
    domains = {get_task(t).domain for t in DEFAULT_SUITE}
    assert {"classic", "mujoco", "dmc", "metaworld"} <= domains
    assert len([t for t in DEFAULT_SUITE if t.startswith("metaworld/")]) == 10


def test_bad_action_is_rejected_with_the_expected_shape() -> None:
    env = make_env("mujoco/reacher-v5", seed=0)
    env.reset()
    with pytest.raises(ValueError, match=r"expected an action of shape \(2,\) \(continuous, float32\), got shape \(3,\)"):
        env.step(np.zeros(3))
    env = make_env("classic/cartpole-v1", seed=0)
    env.reset()
    with pytest.raises(ValueError, match=r"integers in \[0, 2\)"):
        env.step(np.array([2]))
    with pytest.raises(ValueError, match=r"expected an action of shape \(1,\) \(discrete, int64\) or one int of Discrete\(2\), got shape \(2,\)"):
        env.step(np.array([0, 1]))


def test_registry_import_loads_no_simulator() -> None:
    import subprocess
    import sys

    code = (
        "import sys; from omnipolicy.envs import list_tasks, DEFAULT_SUITE; list_tasks(); DEFAULT_SUITE;"
        "print(sorted(m for m in ('mujoco', 'ale_py', 'dm_control', 'metaworld', 'pygame') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_base_docstring_examples() -> None:
    import doctest

    from omnipolicy.envs import base

    result = doctest.testmod(base)
    assert result.failed == 0 and result.attempted > 0, result
