"""compare-models: variant names, the table, the timed actor, and a tiny end-to-end run."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from omnipolicy.compare_models import (
    DEFAULT_VARIANTS,
    CompareConfig,
    TimedActor,
    Variant,
    comparison_markdown,
    run_compare,
)
from omnipolicy.demo import DemoRecipe


def test_variants_parse_and_name_round_trip():
    for text in DEFAULT_VARIANTS:
        v = Variant.parse(text)
        assert v.name == text
        assert "/" not in v.slug and "+" not in v.slug
    assert Variant.parse("vq/early+moe") == Variant("vq", "early", True)
    assert len({Variant.parse(t).slug for t in DEFAULT_VARIANTS}) == len(DEFAULT_VARIANTS)


@pytest.mark.parametrize("text", ["patches", "pixels/early", "resampler/late", "patches/early+dense"])
def test_bad_variant_names_the_expected_form(text):
    with pytest.raises(ValueError, match=r"encoder/fusion\[\+moe\].*got"):
        Variant.parse(text)


def test_config_refuses_bad_values():
    with pytest.raises(ValueError, match="CompareConfig.steps must be >= 1, got 0"):
        CompareConfig(steps=0)
    with pytest.raises(ValueError, match="vision-language tasks .*classic/cartpole-v1"):
        CompareConfig(vqa_tasks=("classic/cartpole-v1",))
    with pytest.raises(ValueError, match="encoder/fusion"):
        CompareConfig(variants=("patches/late",))


def test_train_config_sets_each_variants_options(tmp_path):
    cfg = CompareConfig(out=tmp_path, steps=7, moe_experts=3, resampler_latents=4)
    tok = tmp_path / "image-tokenizer"
    a = cfg.train_config(Variant.parse("resampler/cross-attention+moe"), tok)
    assert (a.image_encoder, a.fusion, a.resampler_latents) == ("resampler", "cross-attention", 4)
    assert (a.ffn, a.moe_experts, a.moe_top_k) == ("moe", 3, 1)
    b = cfg.train_config(Variant.parse("vq/early"), tok)
    assert (b.image_encoder, b.image_tokenizer, b.ffn) == ("vq", tok, None)
    assert a.steps == b.steps == 7 and a.data == b.data == (tmp_path / "data",)
    assert a.out != b.out  # each variant trains in its own folder
    demo = cfg.demo_config()
    assert demo.recipe.episodes_for("vqa/easy-v1") == cfg.vqa_episodes and demo.recipe.noise_for("vqa/easy-v1") == 0.0


class _Counting:
    name = "counting"

    def __init__(self):
        self.calls = []
        self.recipe = "kept"

    def begin(self, task, envs):
        self.calls.append(("begin", task.id, len(envs)))

    def reset_env(self, index, obs):
        self.calls.append(("reset", index))

    def act(self, active, observations):
        return [np.full(1, i) for i in active]


def test_timed_actor_delegates_and_counts_steps():
    inner = _Counting()
    actor = TimedActor(inner)

    class Task:
        id = "x/y"

    actor.begin(Task(), [None, None])
    actor.reset_env(1, {})
    out = actor.act([0, 1], [{}, {}])
    out += actor.act([1], [{}])
    assert [int(a[0]) for a in out] == [0, 1, 1]
    assert inner.calls == [("begin", "x/y", 2), ("reset", 1)]
    assert actor.steps == {"x/y": 3} and actor.recipe == "kept" and actor.name == "counting"
    assert actor.ms_per_step("x/y") >= 0.0 and math.isnan(actor.ms_per_step("other"))


def test_markdown_table_has_a_row_per_variant_with_its_figures():
    cfg = CompareConfig(vqa_tasks=("vqa/easy-v1",))
    rows = [
        {"variant": "patches/early", "control": {"atari": 12.5, "classic": 90.0}, "control_mean": 51.25,
         "vqa_accuracy": {"vqa/easy-v1": 0.805}, "train_tokens_per_s": 8000.0, "train_seconds": 600.0,
         "ms_per_step_pixels": 5.13, "params_total": 925792, "params_active": 925792},
        {"variant": "patches/early+moe", "control": {"atari": 10.0}, "control_mean": 10.0,
         "vqa_accuracy": {"vqa/easy-v1": 0.5}, "train_tokens_per_s": 6000.0, "train_seconds": 660.0,
         "ms_per_step_pixels": float("nan"), "params_total": 2000000, "params_active": 926000},
    ]
    md = comparison_markdown(cfg, rows, {"psnr": 21.0, "codes_used": 500})
    lines = md.splitlines()
    assert lines[0].startswith("| variant | atari score | classic score | control mean | easy-v1 acc.")
    assert "| patches/early | 12.5 | 90.0 | 51.2 | 80.5% | 8,000 | 10.0 | 5.13 | 925,792 | 925,792 |" in lines
    assert "| patches/early+moe | 10.0 | - | 10.0 | 50.0% | 6,000 | 11.0 | - | 2,000,000 | 926,000 |" in lines
    assert "21.00 dB, 500 codes used" in md


def test_tiny_run_end_to_end_and_rerun_reuses_results(tmp_path):
    cfg = CompareConfig(
        out=tmp_path / "cmp", variants=("patches/early", "resampler/cross-attention+moe", "vq/early"),
        control_tasks=("classic/cartpole-v1",), vqa_tasks=("vqa/so101-v1",), vqa_episodes=12, steps=3,
        batch_size=2, image_tokenizer_steps=5, control_episodes=1, vqa_eval_episodes=2, eval_envs=1, workers=0,
        recipe=DemoRecipe(episodes={"classic": 2}), docs=tmp_path / "docs" / "table.md")
    rows = run_compare(cfg)
    assert [r["variant"] for r in rows] == list(cfg.variants)
    for r in rows:
        assert r["steps"] == 3
        assert set(r["control"]) == {"classic"} and set(r["vqa_accuracy"]) == {"vqa/so101-v1"}
        assert 0.0 <= r["vqa_accuracy"]["vqa/so101-v1"] <= 1.0
        assert r["params_active"] <= r["params_total"] and r["train_tokens_per_s"] > 0
        assert r["ms_per_step"]["classic/cartpole-v1"] > 0
    moe = rows[1]
    assert moe["params_active"] < moe["params_total"]
    saved = json.loads((cfg.out / "comparison.json").read_text())
    assert saved["rows"] == json.loads(json.dumps(rows))
    assert (cfg.docs).read_text() == (cfg.out / "comparison.md").read_text()
    assert (cfg.out / "image-tokenizer" / "metrics.json").is_file()
    # a rerun reads the finished variants instead of training them again
    stamp = {r["variant"]: (cfg.out / "variants" / r["variant"].replace("/", "-").replace("+", "-") / "result.json")
             .stat().st_mtime_ns for r in rows}
    assert run_compare(cfg) == rows
    assert stamp == {r["variant"]: (cfg.out / "variants" / r["variant"].replace("/", "-").replace("+", "-")
                                    / "result.json").stat().st_mtime_ns for r in rows}
