"""The main job at a tiny budget: collect -> train -> eval -> report, through the command line."""

import json
import math
import time

import pytest

from omnipolicy.cli import main
from omnipolicy.datasets import EpisodeStore
from omnipolicy.datasets.collect import task_path


def test_demo_smoke_collect_train_eval_report(tmp_path, load_script, capsys):
    out = tmp_path / "demo"
    start = time.perf_counter()
    argv = [
        "demo", "--out", str(out), "--tasks", "classic/cartpole-v1", "classic/pendulum-v1",
        "--episodes", "3", "--workers", "0", "--train-steps", "20", "--batch-size", "4",
        "--eval-episodes", "2", "--eval-envs", "2", "--no-video", "--val-fraction", "0.34", "--dagger-episodes", "2",
    ]
    main(argv)
    elapsed = time.perf_counter() - start
    assert elapsed < 120, f"smoke run took {elapsed:.0f} s"
    report = json.loads((out / "report.json").read_text())
    assert set(report["tasks"]) == {"classic/cartpole-v1", "classic/pendulum-v1"}
    for t in report["tasks"].values():
        assert t["episodes"] == 2 and len(t["returns"]) == 2
        assert math.isfinite(t["normalized_mean"])
        lo, hi = t["normalized_ci95"]
        assert lo <= t["normalized_mean"] <= hi
    assert report["protocol"]["demonstrations"] == {"classic/cartpole-v1": 3, "classic/pendulum-v1": 3}
    assert 0.0 <= report["overall"]["share_at_least_50"] <= 1.0
    assert "tasks at or above 50% of expert" in (out / "report.md").read_text()
    # one of 3 demonstrations per task held out: both tasks have a validation and a training-episodes loss
    for key in ("validation_loss", "training_episodes_loss"):
        assert set(report["protocol"][key]) == {"classic/cartpole-v1", "classic/pendulum-v1"}
    # two DAgger rounds (after steps 6 and 13 of 20) of 2 policy episodes per task, times 3 for Pendulum
    # (DAGGER_EPISODE_SCALE); CartPole-v1 is in DAGGER_SKIP
    assert report["protocol"]["dagger"].startswith("2 round(s) after steps [6, 13], 2 policy episodes per task")
    assert report["protocol"]["dagger"].endswith("per task: {'classic/pendulum-v1': 6}")
    assert not task_path(out / "dagger", "classic/cartpole-v1").exists()
    assert EpisodeStore(task_path(out / "dagger", "classic/pendulum-v1")).num_episodes == 12
    # a rerun of the finished run (say, after an interrupted evaluation) skips training and evaluates the same checkpoint
    main(argv)
    assert EpisodeStore(task_path(out / "dagger", "classic/pendulum-v1")).num_episodes == 12
    rerun = json.loads((out / "report.json").read_text())
    assert rerun["protocol"]["checkpoint"] == report["protocol"]["checkpoint"]
    assert rerun["protocol"]["validation_loss"] == report["protocol"]["validation_loss"]
    assert rerun["tasks"]["classic/cartpole-v1"]["returns"] == report["tasks"]["classic/cartpole-v1"]["returns"]
    # the checkpoint evaluates again through `omnipolicy eval`, with the same protocol and numbers
    main(["eval", "--checkpoint", str(out / "train"), "--episodes", "2", "--num-envs", "2",
          "--out", str(tmp_path / "eval"), "--no-video", "--tasks", "classic/cartpole-v1"])
    again = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert again["tasks"]["classic/cartpole-v1"]["returns"] == report["tasks"]["classic/cartpole-v1"]["returns"]
    # the action-error diagnostic: the checkpoint's one continuous-action task, expert-driven
    tool = load_script("action_error")
    errors = tool.main(tool.Config(checkpoint=out / "train", envs=2, steps=10))
    assert set(errors) == {"classic/pendulum-v1"} and 0.0 < errors["classic/pendulum-v1"] < 4.0  # torque in [-2, 2]
    with pytest.raises(ValueError, match="action error needs a continuous action, the task's is discrete"):
        tool.action_error(tool.PolicyActor.from_checkpoint(out / "train"), "classic/cartpole-v1", 1, 2, 0)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:  # a user error: one line and status 2 (tests/test_cli.py)
        main(["eval", "--checkpoint", str(out / "train"), "--tasks", "classic/acrobot-v1", "--out", str(tmp_path / "x")])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.startswith(
        "omnipolicy eval: error: Checkpoint was not trained on ['classic/acrobot-v1']; it knows")


def test_demo_refuses_to_extend_data_collected_with_other_noise(tmp_path):
    from omnipolicy.demo import check_collection_settings

    check_collection_settings(tmp_path, {"dmc/cartpole-balance": 0.3, "classic/cartpole-v1": 0.0})
    check_collection_settings(tmp_path, {"dmc/cartpole-balance": 0.3, "mujoco/reacher-v5": 0.3})  # same, and a new task
    record = json.loads((tmp_path / "demo_collection.json").read_text())["action_noise"]
    assert record == {"classic/cartpole-v1": 0.0, "dmc/cartpole-balance": 0.3, "mujoco/reacher-v5": 0.3}
    with pytest.raises(ValueError, match=r"other action noise \(before, now\): \{'dmc/cartpole-balance': \(0.3, 0.0\)\}"):
        check_collection_settings(tmp_path, {"dmc/cartpole-balance": 0.0})
    old = tmp_path / "old"
    (old / "dmc" / "reacher-easy").mkdir(parents=True)  # a dataset from before the record: collected without noise
    with pytest.raises(ValueError, match=r"\{'dmc/reacher-easy': \(0.0, 0.3\)\}"):
        check_collection_settings(old, {"dmc/reacher-easy": 0.3})


def test_demo_refuses_to_extend_data_collected_with_other_episode_caps(tmp_path):
    from omnipolicy.demo import check_collection_settings, max_steps_for

    noise = {"metaworld/reach-v3": 0.3, "dmc/point_mass-easy": 0.3}
    check_collection_settings(tmp_path, noise, {"metaworld/reach-v3": 250})
    record = json.loads((tmp_path / "demo_collection.json").read_text())
    assert record["max_steps"] == {"metaworld/reach-v3": 250, "dmc/point_mass-easy": None}
    check_collection_settings(tmp_path, noise, {"metaworld/reach-v3": 250, "dmc/point_mass-easy": None})  # the same
    with pytest.raises(ValueError, match=r"other episode caps .*\{'metaworld/reach-v3': \(250, None\)\}"):
        check_collection_settings(tmp_path, noise)
    assert max_steps_for("metaworld/push-v3") == 250 and max_steps_for("dmc/reacher-easy") == 150
    assert max_steps_for("classic/cartpole-v1") is None


def test_dagger_shortfall_counts_episodes_and_steps():
    from omnipolicy.demo import DAGGER_MAX_EPISODES, dagger_shortfall

    # enough steps: only the episode count matters
    assert dagger_shortfall(10, 2400, 0, 0, per_episode=400) == 10
    assert dagger_shortfall(20, 4800, 10, 4000, per_episode=400) == 10
    assert dagger_shortfall(10, 2400, 10, 4000, per_episode=400) == 0
    # short episodes (a pendulum that falls within 43 steps): the steps missing / their mean length
    assert dagger_shortfall(10, 6000, 10, 430, per_episode=43) == 130  # ceil(5570 / 43)
    assert dagger_shortfall(10, 6000, 0, 0, per_episode=400) == 15  # before any episode: the demonstrations' length
    assert dagger_shortfall(10, 10**6, 10, 10, per_episode=1) == DAGGER_MAX_EPISODES


def test_dagger_rounds_only_for_the_dagger_domains():
    from omnipolicy.demo import DemoConfig, dagger_rounds, dagger_stops

    cfg = DemoConfig()
    assert dagger_rounds(cfg, ["metaworld/reach-v3", "classic/pendulum-v1"]) == 2
    assert dagger_rounds(cfg, ["metaworld/reach-v3"]) == 0  # Meta-World trains on its demonstrations alone
    assert dagger_rounds(cfg, ["classic/cartpole-v1", "classic/acrobot-v1"]) == 0  # DAGGER_SKIP's tasks neither
    assert dagger_stops(8500, 2) == [2833, 5666, 8500] and dagger_stops(20, 0) == [20]
