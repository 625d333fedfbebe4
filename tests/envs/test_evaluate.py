"""The shared evaluation protocol, checked with actors whose scores are known."""

import json

import numpy as np
import pytest

from omnipolicy.envs.evaluate import evaluate, run_task
from omnipolicy.envs.report import FrameSampler, write_gif
from omnipolicy.envs.rollout import ExpertActor, RandomActor
from omnipolicy.envs.scores import bootstrap_ci


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


def test_a_cap_below_the_protocol_marks_the_score_not_comparable(tmp_path):
    tasks = ("classic/cartpole-v1", "classic/mountaincar-v0")  # limits 500 and 200
    capped = evaluate(RandomActor(seed=2), tasks, episodes=2, out=tmp_path / "capped", num_envs=2, video=False,
                      max_steps=300)
    cart, car = capped["tasks"]["classic/cartpole-v1"], capped["tasks"]["classic/mountaincar-v0"]
    assert cart["episode_limit"] == 300 and cart["not_comparable"] == (
        "episodes capped at 300 steps, below the 500 its random and expert scores were measured at")
    assert car["episode_limit"] == 200 and car["not_comparable"] is None and car["mean_length"] == 200
    assert capped["overall"]["not_comparable"] == ["classic/cartpole-v1"]
    assert "capped at 300 (tasks with a longer limit are marked not comparable)" in capped["protocol"]["episode_limit"]
    md = (tmp_path / "capped" / "report.md").read_text()
    assert "**Not comparable: 1 of 2 tasks ran under another protocol than their random and expert scores**" in md
    rows = {line.split(" | ")[0][2:]: line for line in md.splitlines() if line.startswith("| classic/")}
    assert " † |" in rows["classic/cartpole-v1"] and "†" not in rows["classic/mountaincar-v0"]
    assert "† classic/cartpole-v1: episodes capped at 300 steps, below the 500" in md
    full = evaluate(RandomActor(seed=2), tasks, episodes=2, out=tmp_path / "full", num_envs=2, video=False)
    assert full["overall"]["not_comparable"] == [] and full["tasks"]["classic/cartpole-v1"]["episode_limit"] == 500
    assert "Not comparable" not in (tmp_path / "full" / "report.md").read_text()


def test_the_report_states_the_atari_protocol(tmp_path):
    summary = evaluate(RandomActor(), ("classic/mountaincar-v0",), episodes=1, out=tmp_path, video=False)
    assert summary["protocol"]["atari"] == (
        "ALE v5, minimal action set, frameskip 4, sticky actions (repeat_action_probability) 0.25, 1 to 30 no-op "
        "frames at each reset (drawn from the reset's seed), episodes of at most 2000 steps; the random and expert "
        "scores are measured under the same protocol")
    assert f"- atari: {summary['protocol']['atari']}" in (tmp_path / "report.md").read_text()


def test_scores_recorded_under_another_protocol_are_not_comparable(monkeypatch):
    from omnipolicy.envs import get_task, registry
    from omnipolicy.envs.evaluate import not_comparable

    pong = get_task("atari/pong")
    assert not_comparable(pong, 2000) is None
    assert not_comparable(pong, 1999) == "episodes capped at 1999 steps, below the 2000 its random and expert scores were measured at"
    old = {"max_steps": 27_000, "frameskip": 4, "repeat_action_probability": 0.25}
    monkeypatch.setattr(registry, "load_scores", lambda: {"atari/pong": {"expert": {"protocol": old}}})
    assert not_comparable(pong, 2000) == f"its scores were measured under another protocol ({ {'expert': old} }) than the task's now"


class _LabelledEnv:
    """A real task env whose infos also carry episode labels and a flag (as the SO-101 scenes' do)."""

    def __init__(self, env):
        self.env, self.task = env, env.task

    def reset(self, seed=None):
        obs, info = self.env.reset(seed=seed)
        self.seed = seed
        return obs, {**info, "phrasing": f"phrasing {seed % 2}", "target_object": "red cube", "unrelated": 1}

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        # the flag is True at one step only in odd-seeded episodes: the episode keeps it
        flag = self.seed % 2 == 1 and self.env.elapsed_steps == 3
        return obs, reward, terminated, truncated, {**info, "wrong_object": flag}


def test_episode_labels_and_flags_reach_the_report():
    from omnipolicy.envs import get_task, make_env
    from omnipolicy.envs.report import render_markdown
    from omnipolicy.envs.rollout import run_episodes
    from omnipolicy.envs.scores import TaskResult, summarize

    task = get_task("classic/cartpole-v1")
    envs = [_LabelledEnv(make_env(task.id)) for _ in range(2)]
    rollouts = run_episodes(RandomActor(), task, envs, [0, 1, 2, 3, 4], limit=10)
    assert [r.labels for r in rollouts] == [{"phrasing": f"phrasing {s % 2}", "target_object": "red cube"}
                                            for s in range(5)]
    assert [r.flags["wrong_object"] for r in rollouts] == [False, True, False, True, False]
    result = TaskResult(task.id, task.domain, [r.ret for r in rollouts], None, [r.length for r in rollouts],
                        task.random_score, task.expert_score, 0.0, 10,
                        labels=[r.labels for r in rollouts], flags=[r.flags for r in rollouts])
    summary = summarize([result], {})
    t = summary["tasks"][task.id]
    assert t["flag_rates"] == {"wrong_object": 0.4}
    assert {k: v["episodes"] for k, v in t["breakdown"]["phrasing"].items()} == {"phrasing 0": 3, "phrasing 1": 2}
    assert t["breakdown"]["target_object"]["red cube"]["episodes"] == 5
    expected = np.mean([result.normalized()[i] for i in (1, 3)])
    assert t["breakdown"]["phrasing"]["phrasing 1"]["normalized_mean"] == pytest.approx(expected)
    md = render_markdown(summary, "t")
    assert "wrong object rate: 40% of 5 episodes" in md and "| phrasing 1 | 2 |" in md
