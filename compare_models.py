"""``omnipolicy compare-models``: the model's native-multimodal options side by side on the same data and budget.

Every variant is one combination of an image encoder (``patches``: Gato's patch tokens; ``resampler``: a Perceiver
Resampler's few latents per image; ``vq``: FSQ codes in the shared vocabulary), a fusion (``early``: the images in
the token sequence; ``cross-attention``: Flamingo's gated cross-attention over the resampler's latents) and a
feed-forward (dense, or ``+moe``: a mixture of experts with as many active parameters per token as the dense MLP,
top-1 routing). All variants train on the same datasets (control tasks and vision-language tasks, collected once
with the main job's recipe) for the same steps, batch and learning rate, then run the same evaluation. The table
gives, per variant: the expert-normalised control score per domain, the answer accuracy of each vision-language
task, training tokens/s and wall time, inference milliseconds per control step (the act calls of the
evaluation, per environment step), and the parameters (total and active per token).

A rerun continues: collected data, the image tokenizer and every finished variant are reused; an interrupted
variant resumes its training from its newest checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from omnipolicy.agent.actor import PolicyActor
from omnipolicy.agent.config import FUSIONS, IMAGE_ENCODERS
from omnipolicy.agent.image_tokenizer import ImageTokenizerConfig, train_image_tokenizer
from omnipolicy.agent.train import TrainConfig, train
from omnipolicy.demo import DemoConfig, DemoRecipe, collect_demonstrations
from omnipolicy.envs.evaluate import evaluate
from omnipolicy.envs.registry import get_task
from omnipolicy.files import write_text_atomic

DEFAULT_VARIANTS = tuple(f"{v}{moe}" for v in ("patches/early", "resampler/early", "resampler/cross-attention",
                                               "vq/early") for moe in ("", "+moe"))
"""The combinations that make sense: cross-attention attends to the resampler's latents, so it needs that encoder."""


@dataclass(frozen=True)
class Variant:
    """One combination of the model's options, written ``encoder/fusion`` or ``encoder/fusion+moe``.

    >>> Variant.parse("resampler/cross-attention+moe")
    Variant(image_encoder='resampler', fusion='cross-attention', moe=True)
    >>> Variant.parse("patches/early").slug
    'patches-early'
    """

    image_encoder: str
    fusion: str
    moe: bool

    @classmethod
    def parse(cls, text: str) -> "Variant":
        """Read ``encoder/fusion[+moe]``.

        Raises:
            ValueError: the text names an unknown encoder or fusion, or misses the ``/``.
        """
        body, plus, extra = text.partition("+")
        encoder, slash, fusion = body.partition("/")
        if not slash or encoder not in IMAGE_ENCODERS or fusion not in FUSIONS or (plus and extra != "moe"):
            raise ValueError(f"a variant is written encoder/fusion[+moe] with encoder in {IMAGE_ENCODERS} and fusion in "
                             f"{FUSIONS}, e.g. 'resampler/cross-attention+moe'; got {text!r}")
        return cls(encoder, fusion, bool(plus))

    @property
    def name(self) -> str:
        return f"{self.image_encoder}/{self.fusion}" + ("+moe" if self.moe else "")

    @property
    def slug(self) -> str:
        """The variant's folder name."""
        return self.name.replace("/", "-").replace("+", "-")


@dataclass(frozen=True)
class CompareConfig:
    """Train every variant on the same data and steps, evaluate each the same way, and tabulate."""

    out: Path = Path("runs/compare")
    """Run folder: data/, image-tokenizer/, variants/<variant>/ (train/, eval/, result.json), comparison.md/.json."""
    variants: tuple[str, ...] = DEFAULT_VARIANTS
    """Variants, ``encoder/fusion[+moe]`` (encoders: patches, resampler, vq; fusions: early, cross-attention)."""
    control_tasks: tuple[str, ...] = ("atari/breakout", "atari/pong", "dmc/cartpole-balance-pixels",
                                      "dmc/point_mass-easy-pixels", "classic/cartpole-v1", "metaworld/reach-v3")
    """Control tasks: pixel tasks, where the image options differ, and two state-vector tasks as a check."""
    vqa_tasks: tuple[str, ...] = ("vqa/easy-v1", "vqa/so101-v1")
    """Vision-language tasks trained in the same weights (their accuracy is the success rate of ``eval``)."""
    vqa_episodes: int = 3000
    """Collected question-answer episodes per vision-language task (the control tasks use the main job's recipe)."""
    preset: str = "cpu-tiny"
    """Model preset every variant starts from."""
    steps: int = 1500
    """Optimizer steps of every variant."""
    batch_size: int = 16
    """Windows per optimizer step."""
    lr: float = 1e-3
    """Peak learning rate."""
    resampler_latents: int = 8
    """Latents per image of the resampler variants."""
    moe_experts: int = 4
    """Experts per layer of the ``+moe`` variants (top-1 routing: as many active parameters as the dense MLP)."""
    image_tokenizer_steps: int = 2000
    """Training steps of the FSQ image tokenizer of the ``vq`` variants (trained once on the collected frames)."""
    control_episodes: int = 10
    """Evaluation episodes per control task."""
    vqa_eval_episodes: int = 200
    """Evaluation questions per vision-language task (held-out seeds)."""
    eval_envs: int = 10
    """Parallel evaluation environments per task (batched through the policy)."""
    workers: int = 2
    """Collection worker processes."""
    seed: int = 0
    """Seed of collection and of every variant's initialisation and data order."""
    docs: Path | None = None
    """Also write the table here (a Markdown file, e.g. docs/model_options.md)."""
    recipe: DemoRecipe = field(default_factory=DemoRecipe)
    """Collection settings of the control tasks (the main job's, ``omnipolicy demo``)."""

    def __post_init__(self) -> None:
        for v in self.variants:
            Variant.parse(v)
        for name in ("steps", "batch_size", "vqa_episodes", "control_episodes", "vqa_eval_episodes", "eval_envs",
                     "resampler_latents", "moe_experts", "image_tokenizer_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"CompareConfig.{name} must be >= 1, got {getattr(self, name)!r}")
        bad = [t for t in self.vqa_tasks if get_task(t).domain != "vqa"]
        if bad:
            raise ValueError(f"CompareConfig.vqa_tasks must be vision-language tasks (domain 'vqa'), got {bad}")
        if not self.control_tasks and not self.vqa_tasks:
            raise ValueError("CompareConfig: give at least one control or vision-language task")

    @property
    def tasks(self) -> tuple[str, ...]:
        return (*self.control_tasks, *self.vqa_tasks)

    def demo_config(self) -> DemoConfig:
        """Collection settings: the main job's recipe, plus ``vqa_episodes`` noiseless episodes per VQA task."""
        recipe = dataclasses.replace(self.recipe, episodes={**self.recipe.episodes, "vqa": self.vqa_episodes},
                                     noise={**self.recipe.noise, "vqa": 0.0})
        return DemoConfig(out=self.out, tasks=self.tasks, workers=self.workers, seed=self.seed, recipe=recipe)

    def train_config(self, variant: Variant, image_tokenizer: Path | None) -> TrainConfig:
        """The training run of ``variant``: the same data, steps and recipe as every other variant."""
        demo = self.demo_config()
        options: dict[str, Any] = {"image_encoder": variant.image_encoder, "fusion": variant.fusion}
        if variant.image_encoder == "resampler":
            options["resampler_latents"] = self.resampler_latents
        if variant.image_encoder == "vq":
            options["image_tokenizer"] = image_tokenizer
        if variant.moe:
            options.update(ffn="moe", moe_experts=self.moe_experts, moe_top_k=1)
        return TrainConfig(data=(self.out / "data",), out=self.out / "variants" / variant.slug / "train",
                           preset=self.preset, steps=self.steps, batch_size=self.batch_size, lr=self.lr,
                           warmup_steps=100, seed=self.seed, bin_sigma=demo.bin_sigma, action_inputs=demo.action_inputs,
                           prompt_prob=demo.prompt_prob, val_fraction=demo.val_fraction, val_every=self.steps,
                           save_every=max(100, self.steps // 4), resume=True, **options)


class TimedActor:
    """An actor that times another's ``act`` calls per task (wall clock, per environment step)."""

    def __init__(self, actor: Any) -> None:
        self.actor = actor
        self.name = actor.name
        self.seconds: dict[str, float] = {}
        self.steps: dict[str, int] = {}
        self._task = ""

    def __getattr__(self, name: str) -> Any:
        return getattr(self.actor, name)

    def begin(self, task: Any, envs: Sequence) -> None:
        self._task = task.id
        self.actor.begin(task, envs)

    def reset_env(self, index: int, obs: dict) -> None:
        self.actor.reset_env(index, obs)

    def act(self, active: Sequence[int], observations: Sequence[dict]) -> list[np.ndarray]:
        t0 = time.perf_counter()
        actions = self.actor.act(active, observations)
        self.seconds[self._task] = self.seconds.get(self._task, 0.0) + time.perf_counter() - t0
        self.steps[self._task] = self.steps.get(self._task, 0) + len(active)
        return actions

    def ms_per_step(self, task_id: str) -> float:
        """Milliseconds of act time per environment step of ``task_id`` (nan if it never acted)."""
        n = self.steps.get(task_id, 0)
        return 1000.0 * self.seconds.get(task_id, 0.0) / n if n else float("nan")


def run_variant(cfg: CompareConfig, variant: Variant, image_tokenizer: Path | None) -> dict[str, Any]:
    """Train and evaluate one variant (or read its finished result); returns its row of the table."""
    folder = cfg.out / "variants" / variant.slug
    done = folder / "result.json"
    if done.is_file():
        return json.loads(done.read_text())
    print(f"== {variant.name}: training {cfg.steps} steps")
    t0 = time.perf_counter()
    result = train(cfg.train_config(variant, image_tokenizer))
    train_s = time.perf_counter() - t0
    actor = TimedActor(PolicyActor.from_checkpoint(result.checkpoint))
    model_cfg = actor.policy.model.cfg
    row: dict[str, Any] = {
        "variant": variant.name,
        "steps": result.step,
        "params_total": int(model_cfg.num_params()),
        "params_active": int(model_cfg.num_active_params()),
        "train_tokens_per_s": float(result.tokens_per_s),
        "train_seconds": train_s,
        "val_loss": float(np.mean(list(result.val_loss.values()))) if result.val_loss else None,
    }
    if cfg.control_tasks:
        control = evaluate(actor, cfg.control_tasks, cfg.control_episodes, folder / "eval-control",
                           num_envs=cfg.eval_envs, video=False, title=f"compare-models: {variant.name}")
        row["control"] = {d: v["normalized_mean"] for d, v in control["domains"].items()}
        row["control_mean"] = float(np.mean([t["normalized_mean"] for t in control["tasks"].values()]))
        pixel = [t for t in cfg.control_tasks if get_task(t).timestep.fields("image")]
        row["ms_per_step"] = {t: actor.ms_per_step(t) for t in cfg.control_tasks}
        row["ms_per_step_pixels"] = float(np.mean([actor.ms_per_step(t) for t in pixel])) if pixel else None
    if cfg.vqa_tasks:
        vqa = evaluate(actor, cfg.vqa_tasks, cfg.vqa_eval_episodes, folder / "eval-vqa", num_envs=cfg.eval_envs,
                       video=False, title=f"compare-models: {variant.name}")
        row["vqa_accuracy"] = {t: v["success_rate"] for t, v in vqa["tasks"].items()}
    write_text_atomic(done, json.dumps(row, indent=2))
    return row


def _fmt(x: float | None, spec: str = ".1f") -> str:
    return "-" if x is None or (isinstance(x, float) and np.isnan(x)) else format(x, spec)


def comparison_markdown(cfg: CompareConfig, rows: Sequence[dict[str, Any]], tokenizer: dict | None) -> str:
    """The side-by-side table (Markdown) of the variants' rows."""
    domains = sorted({d for r in rows for d in r.get("control", {})})
    head = ["variant", *[f"{d} score" for d in domains], "control mean",
            *[f"{t.split('/')[1]} acc." for t in cfg.vqa_tasks], "train tok/s", "train min", "ms/step (pixels)",
            "params total", "params active"]
    lines = ["| " + " | ".join(head) + " |", "| --- |" + " ---: |" * (len(head) - 1)]
    for r in rows:
        cells = [r["variant"], *[_fmt(r.get("control", {}).get(d)) for d in domains], _fmt(r.get("control_mean")),
                 *[_fmt(100 * r["vqa_accuracy"][t], ".1f") + "%" if "vqa_accuracy" in r else "-" for t in cfg.vqa_tasks],
                 _fmt(r["train_tokens_per_s"], ",.0f"), _fmt(r["train_seconds"] / 60, ".1f"),
                 _fmt(r.get("ms_per_step_pixels"), ".2f"), f"{r['params_total']:,}", f"{r['params_active']:,}"]
        lines.append("| " + " | ".join(cells) + " |")
    notes = [
        f"Same data and budget for every variant: preset `{cfg.preset}`, {cfg.steps} steps of {cfg.batch_size} "
        f"windows, peak learning rate {cfg.lr}, seed {cfg.seed}; control tasks {', '.join(cfg.control_tasks) or '-'} "
        f"({cfg.control_episodes} evaluation episodes each, the main job's collection recipe); vision-language tasks "
        f"{', '.join(cfg.vqa_tasks) or '-'} ({cfg.vqa_episodes} collected, {cfg.vqa_eval_episodes} held-out "
        "questions each, accuracy = exact answers).",
        f"Resampler: {cfg.resampler_latents} latents per image. MoE: {cfg.moe_experts} experts, top-1 routing (as many "
        "active parameters per token as the dense MLP, plus the router).",
        "Scores are expert-normalised (0 random, 100 expert) means over the domain's tasks; ms/step is the policy's "
        "act time per environment step on the pixel tasks, at the evaluation's batch of environments, on this "
        "machine; train tok/s counts the tokens of the sequence (a resampler timestep holds fewer of them).",
    ]
    if tokenizer:
        notes.append(f"vq: FSQ image tokenizer trained {cfg.image_tokenizer_steps} steps on the collected frames; "
                     f"held-out PSNR {tokenizer.get('psnr', float('nan')):.2f} dB, "
                     f"{tokenizer.get('codes_used', '?')} codes used.")
    return "\n".join(lines) + "\n\n" + "\n".join(f"- {n}" for n in notes) + "\n"


def run_compare(cfg: CompareConfig) -> list[dict[str, Any]]:
    """Collect once, train the image tokenizer if a ``vq`` variant needs it, run every variant, write the table."""
    cfg.out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    collect_demonstrations(cfg.demo_config(), cfg.tasks, cfg.out, timings)
    variants = [Variant.parse(v) for v in cfg.variants]
    tokenizer_dir, tokenizer_metrics = None, None
    if any(v.image_encoder == "vq" for v in variants):
        tokenizer_dir = cfg.out / "image-tokenizer"
        metrics = tokenizer_dir / "metrics.json"
        if not metrics.is_file():
            train_image_tokenizer(ImageTokenizerConfig(data=(cfg.out / "data",), out=tokenizer_dir,
                                                       steps=cfg.image_tokenizer_steps, seed=cfg.seed))
        tokenizer_metrics = json.loads(metrics.read_text()).get("test")
    rows = [run_variant(cfg, v, tokenizer_dir) for v in variants]
    table = comparison_markdown(cfg, rows, tokenizer_metrics)
    write_text_atomic(cfg.out / "comparison.md", "# Model options side by side\n\n" + table)
    write_text_atomic(cfg.out / "comparison.json", json.dumps({"config": str(cfg), "rows": rows}, indent=2))
    if cfg.docs is not None:
        write_text_atomic(cfg.docs, "# Model options side by side\n\n" + table)
    print(table)
    return rows


def compare_command(argv: list[str], prog: str) -> None:
    import tyro

    description = ("Train the model's image-encoder, fusion and feed-forward options on the same data and steps, "
                   "evaluate each the same way, and write one table (comparison.md).")
    run_compare(tyro.cli(CompareConfig, args=argv, prog=prog, description=description))
