"""Atari: the resized screen, and the scoring protocol (one episode cap and simulator settings for expert, random
and policy scores)."""

from __future__ import annotations

import numpy as np
import pytest

from omnipolicy.envs import get_task, list_tasks, make_env
from omnipolicy.envs.atari import EPISODE_STEPS, SETTINGS
from omnipolicy.envs.registry import format_table, load_scores, protocol_mismatch, score_protocol


@pytest.mark.parametrize("task_id", ["atari/pong", "atari/breakout"])
def test_the_task_definition_is_the_protocol(task_id: str) -> None:
    spec = get_task(task_id)
    assert spec.max_steps == EPISODE_STEPS == 2000
    assert score_protocol(spec) == {"max_steps": 2000, "frameskip": 4, "noop_max": 30, "repeat_action_probability": 0.25}
    assert SETTINGS == {"frameskip": 4, "repeat_action_probability": 0.25, "noop_max": 30}
    env = make_env(task_id)
    try:
        ale_env = env.env.unwrapped
        assert ale_env._frameskip == 4 and env.noop_max == 30
        assert env.ale.getFloat("repeat_action_probability") == pytest.approx(0.25)
    finally:
        env.close()


def test_scores_are_measured_under_each_tasks_protocol() -> None:
    scores = load_scores()
    for spec in list_tasks():
        entry = scores[spec.scores_from or spec.id]
        assert protocol_mismatch(spec, scores) == {}, spec.id
        for policy in ("expert", "random"):
            # no measured episode ran past the limit evaluation runs to
            assert entry[policy]["mean_length"] <= spec.max_steps, (spec.id, policy, entry[policy]["mean_length"])
            if spec.domain == "atari":
                assert entry[policy]["protocol"] == score_protocol(spec), (spec.id, policy)
                assert "scripts/measure_experts.py" in entry[policy]["command"]


def test_scores_of_another_protocol_are_flagged() -> None:
    spec = get_task("atari/breakout")
    old = {"max_steps": 27_000, "frameskip": 4, "repeat_action_probability": 0.25}
    scores = {"atari/breakout": {"expert": {"return_mean": 465.1, "protocol": old},
                                 "random": {"return_mean": 1.2, "protocol": score_protocol(spec)}}}
    assert protocol_mismatch(spec, scores) == {"expert": old}
    assert protocol_mismatch(spec, {"atari/breakout": {"expert": {"return_mean": 1.0}}}) == {}  # nothing recorded
    table = format_table([spec], scores)
    assert " !" in table.splitlines()[2] and "re-measure with scripts/measure_experts.py --tasks atari/breakout" in table
    assert "atari: frameskip 4, noop_max 30, repeat_action_probability 0.25 (scores and evaluation alike)" in table
    assert "!" not in format_table([spec]).splitlines()[2]  # the committed scores are the protocol's


def test_noop_starts_are_seeded_and_vary_the_start_state() -> None:
    env = make_env("atari/pong")
    try:
        starts = {}
        for seed in range(12):
            _, info = env.reset(seed=seed)
            assert 1 <= info["noops"] <= 30 and info["episode_frame_number"] == info["noops"], info
            starts[seed] = (info["noops"], env.ale.getRAM().copy())
        assert len({n for n, _ in starts.values()}) >= 6  # 1 to 30, uniform
        other = next(s for s in starts if starts[s][0] != starts[0][0])
        assert not np.array_equal(starts[other][1], starts[0][1])  # another count, another emulator state
        _, info = env.reset(seed=7)
        assert info["noops"] == starts[7][0] and np.array_equal(env.ale.getRAM(), starts[7][1])  # reproducible
        # unseeded resets continue the seeded RNG, reproducibly
        env.reset(seed=3)
        first = [env.reset()[1]["noops"] for _ in range(4)]
        env.reset(seed=3)
        assert [env.reset()[1]["noops"] for _ in range(4)] == first
    finally:
        env.close()


def test_noop_max_is_validated() -> None:
    from omnipolicy.envs.atari import AtariEnv

    with pytest.raises(ValueError, match=r"atari/pong: noop_max must be an int >= 0, got -1"):
        AtariEnv(get_task("atari/pong"), env=None, noop_max=-1)


def test_area_resize_is_exact_area_interpolation() -> None:
    from omnipolicy.envs.atari import area_resize

    frame = np.random.default_rng(0).integers(0, 256, (210, 160, 3)).astype(np.uint8)
    out = area_resize(frame)
    assert out.shape == (84, 84, 3) and out.dtype == np.uint8
    # Output (0, 0) covers rows [0, 2.5) and columns [0, 160/84) of the input.
    wr, wc = np.array([1.0, 1.0, 0.5]), np.array([1.0, 160 / 84 - 1])
    expected = np.einsum("r,c,rck->k", wr, wc, frame[:3, :2].astype(np.float64)) / (wr.sum() * wc.sum())
    np.testing.assert_allclose(out[0, 0], expected, atol=0.5)
    assert np.all(area_resize(np.full((210, 160, 3), 77, np.uint8)) == 77)
    # Block means when the ratio is an integer.
    small = np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3)
    np.testing.assert_allclose(area_resize(small, 2, 3), small.reshape(2, 2, 3, 2, 3).mean(axis=(1, 3)), atol=0.5)


def test_atari_observation_is_the_resized_screen() -> None:
    from omnipolicy.envs import make_env
    from omnipolicy.envs.atari import area_resize

    env = make_env("atari/breakout", seed=0, render_mode="rgb_array")
    obs, _ = env.reset()
    obs, *_ = env.step(np.array([1]))
    screen = env.render()
    assert screen.shape == (210, 160, 3)
    np.testing.assert_array_equal(obs["image"], area_resize(screen))


def test_stack_tasks_show_the_grey_levels_of_the_last_three_frames() -> None:
    from omnipolicy.envs.atari import GREY, STACK, area_resize

    spec, plain = get_task("atari/pong-stack"), get_task("atari/pong")
    assert score_protocol(spec) == score_protocol(plain) and not spec.default
    assert (spec.expert_score, spec.random_score) == (plain.expert_score, plain.random_score)  # one protocol

    def grey(screen: np.ndarray) -> np.ndarray:
        return np.clip(np.rint(area_resize(screen).astype(np.float32) @ GREY), 0, 255).astype(np.uint8)

    env = make_env("atari/pong-stack", seed=0, render_mode="rgb_array")
    try:
        obs, _ = env.reset(seed=3)
        first = grey(env.render())
        assert obs["image"].shape == (84, 84, STACK) and obs["image"].dtype == np.uint8
        for c in range(STACK):  # a reset repeats its first frame
            np.testing.assert_array_equal(obs["image"][..., c], first)
        shown = [first, first]
        for _ in range(40):
            obs, *_ = env.step(np.array([2]))
            shown.append(grey(env.render()))
            for c in range(STACK):
                np.testing.assert_array_equal(obs["image"][..., c], shown[-STACK + c])
        assert not np.array_equal(shown[-1], shown[-2])  # the frames differ: something moved
        obs, _ = env.reset(seed=4)
        assert all(np.array_equal(obs["image"][..., c], obs["image"][..., 0]) for c in range(STACK))
    finally:
        env.close()
    with pytest.raises(ValueError, match="frame_stack must be 1 or 3"):
        from omnipolicy.envs.atari import make_atari

        make_atari(spec, game="Pong", frame_stack=2, **SETTINGS)


@pytest.mark.parametrize("game, task_id", [("Pong", "atari/pong-located"), ("Breakout", "atari/breakout-located")])
def test_located_tasks_show_the_objects_ram_positions(game: str, task_id: str) -> None:
    from omnipolicy.envs.atari import LOCATED

    spec, plain = get_task(task_id), get_task(task_id.replace("-located", ""))
    assert score_protocol(spec) == score_protocol(plain) and not spec.default
    assert (spec.expert_score, spec.random_score) == (plain.expert_score, plain.random_score)  # one protocol
    assert [f.name for f in spec.timestep.observation] == ["objects"]
    addresses = list(LOCATED[game].values())
    env = make_env(task_id, seed=0)
    try:
        obs, _ = env.reset(seed=3)
        ram = env.ale.getRAM()
        bytes_ = ram[addresses].astype(np.float64)
        want = np.concatenate([bytes_[:2], bytes_[:2], bytes_[2:]]) / 127.5 - 1  # no motion at the first step
        np.testing.assert_allclose(obs["objects"], want, atol=1e-6)
        moved = False
        for _ in range(80):  # FIRE serves in Breakout; Pong serves by itself
            before = env.ale.getRAM()[addresses[:2]].astype(np.float64)
            obs, *_ = env.step(np.array([1]))
            now = env.ale.getRAM()[addresses].astype(np.float64)
            np.testing.assert_allclose(obs["objects"], np.concatenate([now[:2], before, now[2:]]) / 127.5 - 1,
                                       atol=1e-6)
            moved |= bool(now[1] != 0 and before[1] != 0 and np.any(now[:2] != before))
        assert moved  # the ball came into play and its two positions differ
    finally:
        env.close()
