"""The shared evaluation protocol, checked with actors whose scores are known."""

import json

import numpy as np
import pytest

from omnipolicy.envs.evaluate import ExpertActor, FrameSampler, RandomActor, bootstrap_ci, evaluate, run_task, write_gif


def test_expert_scores_near_100_and_random_near_0(tmp_path):
    tasks = ("classic/cartpole-v1", "classic/mountaincar-v0")
    expert = evaluate(ExpertActor(), tasks, episodes=6, out=tmp_path / "expert", num_envs=3, video=False)
    random = evaluate(RandomActor(seed=1), tasks, episodes=6, out=tmp_path / "random", num_envs=3, video=False)
    for t in tasks:
        assert expert["tasks"][t]["normalized_mean"] > 80, expert["tasks"][t]
        assert abs(random["tasks"][t]["normalized_mean"]) < 25, random["tasks"][t]
    assert expert["overall"]["tasks_at_least_50"] == 2
    assert random["overall"]["tasks_at_least_50"] == 0
    on_disk = json.loads((tmp_path / "expert" / "report.json").read_text())
    assert on_disk["overall"]["share_at_least_50"] == 1.0
    md = (tmp_path / "expert" / "report.md").read_text()
    assert "2 of 2 tasks at or above 50% of expert" in md and "## Protocol" in md
    assert (tmp_path / "expert" / "scores.png").stat().st_size > 1000


def test_parallel_envs_do_not_change_results():
    one = run_task(ExpertActor(), "classic/acrobot-v1", episodes=4, num_envs=1, seed=123)
    many = run_task(ExpertActor(), "classic/acrobot-v1", episodes=4, num_envs=4, seed=123)
    assert one.returns == many.returns
    assert one.lengths == many.lengths


def test_video_written(tmp_path):
    r = run_task(RandomActor(), "classic/cartpole-v1", episodes=2, num_envs=2, video_path=tmp_path / "v.gif")
    from PIL import Image

    with Image.open(r.video) as im:
        assert im.n_frames > 5


def test_gif_plays_at_the_episode_speed_when_frames_are_sampled(tmp_path):
    frames = [np.full((4, 4, 3), 10 * i, np.uint8) for i in range(20)]
    from PIL import Image

    for frame_step, ms in ((1, 50), (8, 400)):  # 20 steps per second either way
        with Image.open(write_gif(frames, tmp_path / f"{frame_step}.gif", frame_step=frame_step)) as im:
            assert im.n_frames == 20 and im.info["duration"] == ms


def test_bootstrap_ci_brackets_mean():
    v = np.random.default_rng(0).normal(10, 2, size=200)
    lo, hi = bootstrap_ci(v)
    assert lo < v.mean() < hi and hi - lo < 1.5


def test_bad_episode_count():
    with pytest.raises(ValueError, match="episodes must be >= 1"):
        run_task(RandomActor(), "classic/cartpole-v1", episodes=0)


@pytest.mark.parametrize("steps", [1, 7, 149, 150, 500, 1000, 2001])
def test_frame_sampler_keeps_evenly_spaced_frames_and_renders_only_those(steps):
    sampler, rendered = FrameSampler(max_frames=150), []

    def render(t):
        rendered.append(t)
        return np.full((2, 2, 3), t % 256, np.uint8)

    for t in range(steps):
        sampler.offer(lambda t=t: render(t))
    kept = [t for t in range(steps) if t % sampler.stride == 0]
    assert len(sampler.frames) == len(kept) < 150
    assert [int(f[0, 0, 0]) for f in sampler.frames] == [t % 256 for t in kept]  # every stride-th step, from step 0
    assert len(sampler.frames) >= min(steps, 75)  # never fewer than half the cap once the episode is long enough
    assert len(rendered) <= min(steps, 150 + steps // 2)  # long episodes are not rendered at every step


def test_worker_processes_give_the_same_results_as_one_process(tmp_path):
    tasks = ("classic/acrobot-v1", "classic/cartpole-v1", "classic/mountaincar-v0")
    for actor in (ExpertActor(), RandomActor(seed=3)):
        one = evaluate(actor, tasks, episodes=3, out=tmp_path / f"{actor.name}1", num_envs=3, video=False)
        two = evaluate(actor, tasks, episodes=3, out=tmp_path / f"{actor.name}2", num_envs=3, video=False, workers=2)
        assert list(two["tasks"]) == list(tasks)  # the report keeps the caller's order
        for t in tasks:
            assert two["tasks"][t]["returns"] == one["tasks"][t]["returns"], (actor.name, t)


def test_workers_need_an_actor_with_a_recipe(tmp_path):
    actor = ExpertActor()
    actor.recipe = None
    with pytest.raises(ValueError, match="has no recipe"):
        evaluate(actor, ("classic/acrobot-v1", "classic/cartpole-v1"), episodes=1, out=tmp_path, video=False, workers=2)
    with pytest.raises(ValueError, match="workers must be >= 1, got 0"):
        evaluate(ExpertActor(), ("classic/acrobot-v1",), episodes=1, out=tmp_path, video=False, workers=0)
