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

TASK_IDS = [s.id for s in list_tasks()]
STEPS = 6


def check_obs(spec, obs: dict) -> None:
    names = [f.name for f in spec.timestep.observation]
    assert sorted(obs) == sorted(names), f"observation keys {sorted(obs)} != spec {sorted(names)}"
    for f in spec.timestep.observation:
        value = obs[f.name]
        if f.kind == "text":
            assert isinstance(value, str) and value == spec.instruction
            continue
        assert isinstance(value, np.ndarray), f"{f.name}: {type(value)}"
        assert value.shape == f.shape and value.dtype == np.dtype(f.dtype), (f.name, value.shape, value.dtype)
        if f.kind == "continuous":
            assert np.all(np.isfinite(value)), f.name


def rollout(env, seed: int, actions: list, mutate: bool):
    """Observations (copied) and rewards of a seeded episode; ``mutate`` scribbles on every returned obs."""
    trace = []
    obs, _ = env.reset(seed=seed)
    for a in [None] + actions:
        if a is not None:
            obs, reward, terminated, truncated, _ = env.step(a)
            trace.append(reward)
        trace.append(copy.deepcopy(obs))
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
        native = env.native_action_space
        if a.kind == "discrete":
            assert isinstance(native, gym.spaces.Discrete) and native.n == a.n
        else:
            assert native.shape == a.shape
            np.testing.assert_allclose(native.low.ravel(), a.low, rtol=1e-6)
            np.testing.assert_allclose(native.high.ravel(), a.high, rtol=1e-6)

        # The first unseeded reset uses make_env's seed.
        first, _ = env.reset()
        check_obs(spec, first)
        assert env.observation_space.contains({k: v for k, v in first.items()})
        again, _ = env.reset(seed=11)
        assert_same([first], [again])

        policy = RandomPolicy(spec, seed=0)
        actions = [policy.act(env, first) for _ in range(STEPS)]
        for act in actions:
            assert act.shape == a.shape and act.dtype == np.dtype(a.dtype)
        clean = rollout(env, 5, actions, mutate=False)
        for item in clean:
            if isinstance(item, dict):
                check_obs(spec, item)
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
        # A different seed gives a different start (seeds reach the simulator). ALE games always
        # start from the same screen; there the seed drives the sticky actions instead.
        if spec.domain != "atari":
            other = rollout(env, 6, [], mutate=False)
            assert any(not np.array_equal(clean[0][k], other[0][k]) for k in clean[0] if k != "instruction")
    finally:
        env.close()


@pytest.mark.parametrize("task_id", TASK_IDS)
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


def test_registry_import_loads_no_simulator() -> None:
    import subprocess
    import sys

    code = (
        "import sys; from omnipolicy.envs import list_tasks, DEFAULT_SUITE; list_tasks(); DEFAULT_SUITE;"
        "print(sorted(m for m in ('mujoco', 'ale_py', 'dm_control', 'metaworld', 'pygame') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
