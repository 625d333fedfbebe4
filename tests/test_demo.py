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
        "--ema-decay", "0.9",  # the average goes through the rounds' stops and resumes
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
    assert report["protocol"]["task_decoding"] == {"metaworld": "mode"}  # the recipe's, read back from the checkpoint
    assert report["protocol"]["training"].endswith("weights averaged (decay 0.9)")
    assert 0.0 <= report["overall"]["share_at_least_50"] <= 1.0
    assert "tasks at or above 50% of expert" in (out / "report.md").read_text()
    # one of 3 demonstrations per task held out: both tasks have a validation and a training-episodes loss
    for key in ("validation_loss", "training_episodes_loss"):
        assert set(report["protocol"][key]) == {"classic/cartpole-v1", "classic/pendulum-v1"}
    # two DAgger rounds (after steps 6 and 13 of 20) of 2 policy episodes per task, times 3 for Pendulum
    # (recipe.dagger_scale); CartPole-v1's scale is 0
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
    # the open-loop probe: the expert drives, the policy predicts alongside, correlated per action dimension
    probe = load_script("probe_actions")
    got = probe.probe(probe.Config(checkpoint=out / "train", task="classic/pendulum-v1", episodes=3, first=1, last=4))
    assert got["samples"] == 12 and len(got["corr"]) == len(got["mae"]) == len(got["mae_of_mean"]) == 1
    assert -1.0 <= got["corr"][0] <= 1.0 and 0.0 <= got["mae"][0] < 4.0
    with pytest.raises(ValueError, match="classic/cartpole-v1 has a discrete action"):
        probe.probe(probe.Config(checkpoint=out / "train", task="classic/cartpole-v1"))
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
    from omnipolicy.demo import DemoRecipe, check_collection_settings

    noise = {"metaworld/reach-v3": 0.3, "dmc/point_mass-easy": 0.3}
    check_collection_settings(tmp_path, noise, {"metaworld/reach-v3": 250})
    record = json.loads((tmp_path / "demo_collection.json").read_text())
    assert record["max_steps"] == {"metaworld/reach-v3": 250, "dmc/point_mass-easy": None}
    check_collection_settings(tmp_path, noise, {"metaworld/reach-v3": 250, "dmc/point_mass-easy": None})  # the same
    with pytest.raises(ValueError, match=r"other episode caps .*\{'metaworld/reach-v3': \(250, None\)\}"):
        check_collection_settings(tmp_path, noise)
    recipe = DemoRecipe()
    assert recipe.max_steps_for("metaworld/push-v3") == 250 and recipe.max_steps_for("dmc/reacher-easy") == 150
    assert recipe.max_steps_for("classic/cartpole-v1") is None


def test_dagger_shortfall_counts_episodes_and_steps():
    from omnipolicy.demo import DemoRecipe

    dagger_shortfall = DemoRecipe().dagger_shortfall

    # enough steps: only the episode count matters
    assert dagger_shortfall(10, 2400, 0, 0, per_episode=400) == 10
    assert dagger_shortfall(20, 4800, 10, 4000, per_episode=400) == 10
    assert dagger_shortfall(10, 2400, 10, 4000, per_episode=400) == 0
    # short episodes (a pendulum that falls within 43 steps): the steps missing / their mean length
    assert dagger_shortfall(10, 6000, 10, 430, per_episode=43) == 130  # ceil(5570 / 43)
    assert dagger_shortfall(10, 6000, 0, 0, per_episode=400) == 15  # before any episode: the demonstrations' length
    assert dagger_shortfall(10, 10**6, 10, 10, per_episode=1) == DemoRecipe().dagger_max_episodes == 200
    assert DemoRecipe(dagger_max_episodes=50).dagger_shortfall(10, 10**6, 10, 10, per_episode=1) == 50


def test_dagger_rounds_only_for_the_dagger_domains():
    from omnipolicy.demo import DemoConfig, dagger_stops

    cfg = DemoConfig()
    assert cfg.rounds_for(["metaworld/reach-v3", "classic/pendulum-v1"]) == 2
    assert cfg.rounds_for(["metaworld/reach-v3"]) == 0  # Meta-World trains on its demonstrations alone
    assert cfg.rounds_for(["classic/cartpole-v1", "classic/acrobot-v1"]) == 0  # scale 0: no rounds either
    assert dagger_stops(8500, 2) == [2833, 5666, 8500] and dagger_stops(20, 0) == [20]


# The default recipe, task by task: (demonstrations, DART noise, collection cap, DAgger episodes per round of 10,
# DAgger episode cap); None: the task's own limit, 0 DAgger episodes: no rounds. These are the demo's settings
# as the tables at the top of demo.py gave them before they became DemoRecipe.
DEFAULT_RECIPE = {
    "atari/breakout": (10, 0.0, None, 10, 400),
    "atari/pong": (10, 0.0, None, 10, 400),
    "classic/acrobot-v1": (30, 0.0, None, 0, 400),
    "classic/cartpole-v1": (30, 0.3, None, 0, 400),
    "classic/mountaincar-v0": (60, 0.0, None, 0, 400),
    "classic/pendulum-v1": (100, 0.3, None, 30, 400),
    "dmc/cartpole-balance": (12, 0.3, None, 10, 400),
    "dmc/cartpole-swingup": (30, 0.3, 400, 30, 400),
    "dmc/point_mass-easy": (12, 0.3, None, 10, 400),
    "dmc/reacher-easy": (80, 0.3, 150, 20, 150),
    "metaworld/button-press-topdown-v3": (40, 0.3, 250, 0, 250),
    "metaworld/door-open-v3": (40, 0.3, 250, 0, 250),
    "metaworld/drawer-close-v3": (40, 0.3, 250, 0, 250),
    "metaworld/drawer-open-v3": (40, 0.3, 250, 0, 250),
    "metaworld/peg-insert-side-v3": (40, 0.3, 250, 0, 250),
    "metaworld/pick-place-v3": (40, 0.3, 250, 0, 250),
    "metaworld/push-v3": (40, 0.3, 250, 0, 250),
    "metaworld/reach-v3": (40, 0.3, 250, 0, 250),
    "metaworld/window-close-v3": (40, 0.3, 250, 0, 250),
    "metaworld/window-open-v3": (40, 0.3, 250, 0, 250),
    "mujoco/inverted-double-pendulum-v5": (30, 0.1, None, 10, 400),
    "mujoco/inverted-pendulum-v5": (30, 0.3, None, 10, 400),
    "mujoco/reacher-v5": (200, 0.3, None, 10, 400),
}


def test_default_recipe_gives_every_default_task_its_settings():
    from omnipolicy.demo import DemoConfig
    from omnipolicy.envs import DEFAULT_SUITE

    cfg = DemoConfig()
    assert set(DEFAULT_SUITE) == set(DEFAULT_RECIPE)
    got = {t: (cfg.episodes_for(t), cfg.noise_for(t), cfg.recipe.max_steps_for(t), cfg.dagger_episodes_for(t),
               cfg.recipe.dagger_cap(t)) for t in DEFAULT_SUITE}
    assert got == DEFAULT_RECIPE
    labelled = cfg.recipe.dagger_tasks(DEFAULT_SUITE)
    assert labelled == [t for t in DEFAULT_SUITE if DEFAULT_RECIPE[t][3]]
    assert cfg.recipe.dagger_domains == ("atari", "classic", "dmc", "mujoco")  # named in the report's protocol
    assert (cfg.recipe.dagger_step_share, cfg.recipe.dagger_max_episodes) == (0.2, 200)
    weights = {t: cfg.recipe.weight_for(t) for t in DEFAULT_SUITE}
    assert sum(weights.values()) == len(DEFAULT_SUITE)  # per-task budgets moved, not added: the job's time holds
    assert {t for t, w in weights.items() if w > 1} == {"dmc/cartpole-swingup", "mujoco/inverted-double-pendulum-v5",
                                                        "metaworld/pick-place-v3", "metaworld/peg-insert-side-v3"}
    assert weights["atari/pong"] == weights["atari/breakout"] == 0.25
    # --episodes and --action-noise set one value for every task over the recipe's
    flat = DemoConfig(episodes=5, action_noise=0.1)
    assert {(flat.episodes_for(t), flat.noise_for(t)) for t in DEFAULT_SUITE} == {(5, 0.1)}


def test_recipe_entries_are_options_of_the_demo_command(capsys):
    import tyro

    from omnipolicy.demo import DemoConfig

    args = ["--recipe.episodes.atari", "20", "--recipe.noise.classic/cartpole-v1", "0.1", "--recipe.max-steps.dmc",
            "500", "--recipe.dagger-scale.metaworld", "1", "--recipe.dagger-step-share", "0.5",
            "--recipe.weight.atari", "2", "--recipe.decoding.metaworld", "mean"]
    cfg = tyro.cli(DemoConfig, args=args)
    assert cfg.episodes_for("atari/pong") == 20 and cfg.episodes_for("metaworld/reach-v3") == 40
    assert cfg.noise_for("classic/cartpole-v1") == 0.1 and cfg.noise_for("classic/acrobot-v1") == 0.0
    assert cfg.recipe.max_steps_for("dmc/point_mass-easy") == 500
    assert cfg.recipe.max_steps_for("dmc/reacher-easy") == 150  # the task's own entry wins over its domain's
    assert cfg.dagger_episodes_for("metaworld/reach-v3") == 10 and cfg.recipe.dagger_step_share == 0.5
    assert cfg.recipe.weight_for("atari/pong") == 2.0 and cfg.recipe.weight_for("metaworld/push-v3") == 1.0
    assert cfg.recipe.decoding == {"metaworld": "mean"}
    assert tyro.cli(DemoConfig, args=[]) == DemoConfig()
    with pytest.raises(SystemExit):
        tyro.cli(DemoConfig, args=["--help"], prog="omnipolicy demo")
    help_text = capsys.readouterr().out
    for option in ("--recipe.episodes.atari", "--recipe.noise.mujoco/inverted-double-pendulum-v5",
                   "--recipe.max-steps.metaworld", "--recipe.dagger-scale.classic/pendulum-v1",
                   "--recipe.dagger-max-steps", "--recipe.weight.metaworld"):
        assert option in help_text


def test_recipe_rejects_bad_values_and_names_a_missing_entry():
    from omnipolicy.demo import DemoConfig, DemoRecipe

    with pytest.raises(ValueError, match=r"DemoRecipe.noise values must be in \[0, 1\], got \{'dmc': 2.0\}"):
        DemoRecipe(noise={**DemoRecipe().noise, "dmc": 2.0})
    with pytest.raises(ValueError, match=r"DemoRecipe.episodes values must be an int >= 1, got \{'atari': 0\}"):
        DemoRecipe(episodes={**DemoRecipe().episodes, "atari": 0})
    with pytest.raises(ValueError, match=r"DemoRecipe.weight values must be a float >= 0 .*, got \{'atari': -1.0\}"):
        DemoRecipe(weight={"atari": -1.0})
    with pytest.raises(ValueError, match=r"DemoRecipe.decoding values must be 'mean' or 'mode', got \{'dmc': 'max'\}"):
        DemoRecipe(decoding={"dmc": "max"})
    with pytest.raises(ValueError, match=r"DemoRecipe.dagger_max_steps must be >= 1, got 0"):
        DemoRecipe(dagger_max_steps=0)
    recipe = DemoRecipe(episodes={"dmc": 12}, noise={"dmc": 0.3}, max_steps={"dmc": 500}, dagger_scale={"dmc": 1})
    with pytest.raises(ValueError, match=r"DemoRecipe.episodes has no entry for 'atari/pong' or its domain 'atari'; "
                                         r"it has \['dmc'\] \(or set one value for every task with --episodes\)"):
        recipe.episodes_for("atari/pong")
    with pytest.raises(ValueError, match=r"DemoRecipe.noise has no entry .* with --action-noise"):
        recipe.noise_for("atari/pong")
    assert DemoConfig(episodes=3, action_noise=0.0, recipe=recipe).episodes_for("atari/pong") == 3
    # a domain without a cap or a DAgger entry: the task's own limit, no rounds
    assert recipe.max_steps_for("atari/pong") is None and recipe.dagger_tasks(["atari/pong"]) == []


def test_recipe_weights_reach_the_training_config(tmp_path, monkeypatch):
    from omnipolicy import demo

    seen = []
    monkeypatch.setattr(demo, "train", lambda cfg: seen.append(cfg) or "result")
    recipe = demo.DemoRecipe(weight={"metaworld": 1.0, "atari": 0.5, "metaworld/push-v3": 4.0})
    cfg = demo.DemoConfig(train_steps=10, dagger_rounds=0, recipe=recipe)
    tasks = ["atari/pong", "metaworld/push-v3", "metaworld/reach-v3", "dmc/reacher-easy"]
    assert demo.train_with_dagger(cfg, tmp_path, tasks, {}) == "result"
    assert [c.task_weights for c in seen] == [
        {"atari/pong": 0.5, "metaworld/push-v3": 4.0, "metaworld/reach-v3": 1.0, "dmc/reacher-easy": 1.0}]
    assert seen[0].steps == seen[0].stop_at == 10
    assert seen[0].task_decoding == {"metaworld": "mode"}  # the recipe's decodings go into the checkpoint
    assert seen[0].ema_decay == 0.0  # the checkpoints hold the last weights, not an average
