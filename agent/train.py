"""Train a generalist policy: ``omnipolicy train`` and :func:`train`.

Samples context windows across every task of the given datasets (per-task
weights, optional Gato-style prompting), and minimises the cross-entropy of
the action and text tokens with AdamW (betas 0.9/0.95, weight decay 0.1 on
matrices), linear warm-up then cosine decay, and gradient clipping. bf16
autocast on CUDA. Progress bar with loss and tokens/s, TensorBoard logs,
a checkpoint every ``save_every`` steps, and ``--resume`` that continues a
killed run exactly (weights, optimizer, RNG and data-loader state, step).

Data parallel through ``torchrun`` (gloo on CPU, NCCL on CUDA): every rank
draws the same global batch and trains on its share of the rows, and the loss
is normalised by the global number of target tokens, so the update equals
single-process training on the same global batch::

    torchrun --nproc_per_node 2 -m omnipolicy.cli train --data runs/data --preset cpu-small
"""

from __future__ import annotations

import dataclasses
import math
import os
import random
import shutil
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Literal, Sequence

import numpy as np
import torch
import torch.distributed as dist
import tyro
from safetensors.torch import load_model
from torch import Tensor, nn
from tqdm import tqdm

from omnipolicy.datasets import TokenCache, WindowLoader, holdout_split
from omnipolicy.datasets.cache import EPISODE_COLUMNS
from omnipolicy.files import write_text_atomic
from omnipolicy.tokenizers import ImageTokenizer, Tokenizer
from omnipolicy.tokenizers.chunking import ActionChunking
from omnipolicy.tokenizers.image import concat_ranges, image_starts
from omnipolicy.tokenizers.spec import TimestepSpec
from omnipolicy.tokenizers.vocab import VocabLayout

from .checkpoint import (
    LATEST,
    WEIGHTS,
    CheckpointMeta,
    load_meta,
    load_model_weights,
    load_trainer_state,
    resolve_checkpoint,
    save_checkpoint,
)
from .config import PRESETS, ModelConfig, get_preset, presets_table
from .model import GatoModel
from .policy import CONTINUOUS_DECODINGS, check_task_decoding
from .synthetic import SYNTHETIC_TASK_ID, SyntheticWindows, synthetic_spec

PresetName = Literal[tuple(PRESETS)]  # type: ignore[valid-type]
_MOE_FIELDS = ("ffn", "moe_experts", "moe_top_k", "moe_aux_coef", "moe_z_coef")
"""The feed-forward overrides of ``TrainConfig``, named as the ``ModelConfig`` fields they set."""


@dataclass(frozen=True)
class TrainConfig:
    """Train a Gato-style generalist on one or more datasets."""

    data: tuple[Path, ...] = ()
    """Dataset directories (EpisodeStore roots) to train on."""
    out: Path = Path("runs/train")
    """Run directory: checkpoints/, tb/ (TensorBoard) and the token cache."""
    preset: PresetName = "cpu-tiny"
    """Model preset (see --list-presets for their parameter counts)."""
    context: int | None = None
    """Context window in tokens; default: the preset's."""
    n_layer: int | None = None
    """Transformer blocks; default: the preset's (the other dimensions stay the preset's)."""
    action_inputs: Literal["tokens", "hidden"] | None = None
    """What the model reads at action positions (ModelConfig.action_inputs): tokens (Gato) or hidden (every action
    predicted from observations only; no copying of the last action); default: the preset's."""
    action_chunk: int | None = None
    """Actions per timestep of a continuous-action task (ModelConfig.action_chunk; ACT's chunking): the model predicts
    the next k actions at once; tasks with a discrete action keep one. Default: the preset's (1)."""
    chunk_execution: Literal["ensemble", "receding"] | None = None
    """How the chunks are executed (ModelConfig.chunk_execution): ensemble (query every tick, temporal ensembling of
    the overlapping chunks) or receding (train on every k-th tick, execute each chunk open loop). Default: the
    preset's (ensemble)."""
    image_encoder: Literal["patches", "resampler", "vq"] | None = None
    """How an image becomes model inputs (ModelConfig.image_encoder): patches (Gato: one token per 16x16 patch),
    resampler (a Perceiver Resampler: N latents per image) or vq (each 16x16 patch a code of the --image-tokenizer,
    between <image> markers, in the shared vocabulary). Default: the preset's (patches)."""
    image_tokenizer: Path | None = None
    """The image tokenizer folder (`omnipolicy image-tokenizer train --out`) of --image-encoder vq (needed by vq
    only); checkpoints carry a copy."""
    resampler_latents: int | None = None
    """Latents per image of the resampler (ModelConfig.resampler_latents). Default: the preset's (8)."""
    fusion: Literal["early", "cross-attention"] | None = None
    """Where images meet the tokens (ModelConfig.fusion): early (in the sequence) or cross-attention (Flamingo's
    gated cross-attention over the resampler's latents; needs --image-encoder resampler). Default: the preset's."""
    cross_attn_every: int | None = None
    """A gated cross-attention block before every this many transformer blocks (ModelConfig.cross_attn_every).
    Default: the preset's (1)."""
    film: bool = False
    """Condition every image patch on the instruction (ModelConfig.film: FiLM, as RT-1's image encoder; needs
    --image-encoder patches and early fusion)."""
    keypoints: int | None = None
    """Spatial-softmax keypoints per image (ModelConfig.keypoints): K learned maps of the patch features, each
    one expected (x, y) over the whole image, given to every patch of the image. Default: the preset's (0, none)."""
    keypoint_film: bool = False
    """Condition the keypoint maps on the instruction (ModelConfig.keypoint_film: FiLM of the features they read), so
    a keypoint can be where the named object is; needs --keypoints."""
    ffn: Literal["dense", "moe"] | None = None
    """Feed-forward of every block (ModelConfig.ffn): dense (one MLP) or moe (a dropless top-k mixture of experts of
    the MLP's shape, with load-balancing and router z-losses). Default: the preset's (dense)."""
    moe_experts: int | None = None
    """Experts per MoE layer (ModelConfig.moe_experts; needs --ffn moe). Default: the preset's (8)."""
    moe_top_k: int | None = None
    """Experts each token is routed to (ModelConfig.moe_top_k; needs --ffn moe). Default: the preset's (2)."""
    moe_aux_coef: float | None = None
    """Weight of the load-balancing loss (ModelConfig.moe_aux_coef; needs --ffn moe). Default: the preset's (0.01)."""
    moe_z_coef: float | None = None
    """Weight of the router z-loss (ModelConfig.moe_z_coef; needs --ffn moe). Default: the preset's (0.001)."""
    steps: int = 2000
    """Optimizer steps in total (a resumed run continues up to this)."""
    stop_at: int | None = None
    """Stop after this step (and save a checkpoint there) although the schedule runs to ``steps``; a later
    ``--resume`` continues, for example after a DAgger round added data (``omnipolicy dagger``). None: run to
    ``steps``."""
    batch_size: int = 16
    """Global batch size in windows (split across data-parallel ranks)."""
    grad_accum: int = 1
    """Micro-batches per rank per step (same update, less memory)."""
    lr: float = 1e-3
    """Peak learning rate."""
    min_lr_ratio: float = 0.1
    """Final learning rate as a fraction of the peak (cosine decay)."""
    warmup_steps: int = 100
    """Linear warm-up steps."""
    weight_decay: float = 0.1
    """AdamW weight decay (matrices and embeddings only; not biases or norms)."""
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    """Clip the global gradient norm to this (0 disables)."""
    ema_decay: float = 0.0
    """Keep an exponential moving average of the weights with this decay per step (0 disables; 0.999 averages
    over about the last thousand steps). With it, checkpoints hold the average (what ``eval``, ``dagger`` and
    ``deploy`` act with, and what the validation loss measures) and their trainer state the raw weights that
    training continues from. The decay ramps up as ``min(ema_decay, (1 + step) / (10 + step))``."""
    task_weights: dict[str, float] = field(default_factory=dict)
    """Sampling weight per task id (tasks not named get 1.0)."""
    bin_sigma: float = 0.0
    """Continuous action targets as a Gaussian of this many bins around the demonstrated bin (HL-Gauss; loss = KL);
    0: Gato's one-hot cross-entropy. Neighbouring bins share credit, which small budgets learn much faster from."""
    decoding: Literal["auto", "mean", "mode"] = "auto"
    """How this run's policies pick a continuous action's bin when ``eval``, ``dagger`` or ``deploy`` are left at
    ``--continuous-decoding auto`` (written into each checkpoint): mean (the expected bin), mode (the most likely
    bin, Gato's argmax), or auto: mean with ``bin_sigma > 0``, mode without. Grasping policies trained with
    ``bin_sigma`` succeed more often with mode."""
    task_decoding: dict[str, Literal["mean", "mode"]] = field(default_factory=dict)
    """Decodings that ``--continuous-decoding auto`` takes for some domains or tasks instead of ``decoding``'s,
    keyed by domain (``metaworld``) or task id (a task's entry wins over its domain's; written into each
    checkpoint). An explicit ``--continuous-decoding mean`` or ``mode`` applies to every task."""
    prompt_prob: float = 0.25
    """Share of windows prefixed with a demonstration of the same task (Gato: 0.25)."""
    random_shift: int = 0
    """DrQ's random-shift augmentation of training images, in pixels: each window's images move together by up to
    this many pixels per axis (border pixels repeated; DrQ: 4). 0: images as recorded. Evaluation never shifts."""
    val_fraction: float = 0.0
    """Share of each task's episodes held out of training for a validation loss on their action tokens (its last
    floor(share x episodes); a task with fewer than 1 / share episodes keeps all of them). 0 disables."""
    holdout_from: tuple[Path, ...] = ()
    """Datasets whose episodes the validation may hold out (default: every --data dataset). Name the
    demonstrations when later datasets (DAgger rounds) are added between resumes, so the held-out episodes
    stay the same."""
    val_every: int = 500
    """Validation period in steps (and at the end), when ``val_fraction`` holds episodes out."""
    val_windows: int = 16
    """Windows per task for the held-out (val) and training-episode (fit) losses (drawn once, the same every time)."""
    seed: int = 0
    """Seed of the initialisation and the data order."""
    save_every: int = 500
    """Write a checkpoint every this many steps (and at the end)."""
    keep_last: int = 2
    """Checkpoints kept in out/checkpoints (older ones are deleted)."""
    log_every: int = 10
    """TensorBoard logging period in steps."""
    resume: bool = False
    """Continue from the newest checkpoint in out/ (exactly, including data order)."""
    init_from: Path | None = None
    """Start from this checkpoint's weights (a checkpoint, its checkpoints folder or its run folder) instead of a
    fresh initialisation: fine-tuning, e.g. a policy from a model pretrained on vision-language questions. The
    optimizer, schedule and step start anew; the model must have the same parameter shapes and vocabulary (the same
    preset and options). The context may differ: positions past the checkpoint's keep their fresh initialisation.
    A ``--resume`` that finds a checkpoint in out/ continues from it."""
    device: str = "auto"
    """'auto' (CUDA if available), 'cpu', 'cuda' or 'cuda:N'."""
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    """Autocast dtype: auto = bfloat16 on CUDA, float32 on the CPU (bfloat16 pays off on CPUs with AVX512-BF16/AMX)."""
    threads: int | None = None
    """torch CPU threads per process (default: torch's choice)."""
    synthetic: bool = False
    """Train on synthetic copy-task windows instead of datasets (smoke tests, benchmarks)."""
    progress: bool = True
    """Show a progress bar."""
    tensorboard: bool = True
    """Write TensorBoard logs to out/tb."""
    list_presets: bool = False
    """Print the model presets with their exact parameter counts and exit."""

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "grad_accum", "save_every", "log_every", "keep_last", "val_every", "val_windows"):
            if getattr(self, name) < 1:
                raise ValueError(f"TrainConfig.{name} must be >= 1, got {getattr(self, name)!r}")
        if self.warmup_steps < 0 or self.lr <= 0 or not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(
                f"TrainConfig: need warmup_steps >= 0, lr > 0 and 0 <= min_lr_ratio <= 1, got "
                f"{self.warmup_steps}, {self.lr}, {self.min_lr_ratio}"
            )
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"TrainConfig.ema_decay must be in [0, 1) (0 = no average), got {self.ema_decay!r}")
        if not self.bin_sigma >= 0:
            raise ValueError(f"TrainConfig.bin_sigma must be >= 0 (0 = one-hot targets), got {self.bin_sigma!r}")
        if self.decoding not in CONTINUOUS_DECODINGS:
            raise ValueError(f"TrainConfig.decoding must be 'auto', 'mean' or 'mode', got {self.decoding!r}")
        check_task_decoding(self.task_decoding, "TrainConfig.task_decoding")
        if not isinstance(self.random_shift, int) or self.random_shift < 0:
            raise ValueError(f"TrainConfig.random_shift must be an int >= 0 (pixels), got {self.random_shift!r}")
        if not 0.0 <= self.prompt_prob <= 1.0:
            raise ValueError(f"TrainConfig.prompt_prob must be in [0, 1], got {self.prompt_prob!r}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"TrainConfig.val_fraction must be in [0, 1), got {self.val_fraction!r}")
        bad = {k: v for k, v in self.task_weights.items() if not v >= 0}
        if bad:
            raise ValueError(f"TrainConfig.task_weights must be >= 0, got {bad}")
        if self.stop_at is not None and not 1 <= self.stop_at <= self.steps:
            raise ValueError(f"TrainConfig.stop_at must be in [1, steps={self.steps}] (or None), got {self.stop_at!r}")
        try:
            chunking = self.chunking
        except ValueError as e:
            raise ValueError(f"TrainConfig: {e}") from None
        if self.synthetic and chunking.size > 1:
            raise ValueError(f"TrainConfig: action_chunk={chunking.size} needs datasets (--data); the synthetic copy-task "
                             "windows have no episodes to chunk")
        try:
            shape = self.adjust(get_preset(self.preset))
        except ValueError as e:
            raise ValueError(f"TrainConfig: {e}") from None
        encoder = shape.image_encoder
        if encoder == "vq" and self.image_tokenizer is None:
            raise ValueError("TrainConfig: image_encoder='vq' needs the image tokenizer its codes come from "
                             "(--image-tokenizer DIR, the folder of `omnipolicy image-tokenizer train --out`), got none")
        if encoder != "vq" and self.image_tokenizer is not None:
            raise ValueError(f"TrainConfig: --image-tokenizer {self.image_tokenizer} is only used by image_encoder='vq' "
                             f"(images as its codes), got image_encoder={encoder!r}; add --image-encoder vq or drop "
                             "--image-tokenizer")
        if self.synthetic and self.image_tokenizer is not None:
            raise ValueError("TrainConfig: --image-encoder vq needs datasets (--data) with images; the synthetic "
                             "copy-task windows have none")
        moe_set = [f"--{name.replace('_', '-')}" for name in _MOE_FIELDS[1:] if getattr(self, name) is not None]
        if shape.ffn != "moe" and moe_set:
            raise ValueError(f"TrainConfig: {', '.join(moe_set)} configure a mixture-of-experts feed-forward, but the "
                             f"model's is {shape.ffn!r}; add --ffn moe")

    @property
    def chunking(self) -> ActionChunking:
        """The preset's action chunking with the ``action_chunk`` and ``chunk_execution`` overrides."""
        preset = get_preset(self.preset)
        size = preset.action_chunk if self.action_chunk is None else self.action_chunk
        return ActionChunking(size, self.chunk_execution or preset.chunk_execution)

    def vision_config(self, cfg: ModelConfig) -> ModelConfig:
        """``cfg`` with the image-encoder and fusion overrides (validated by ModelConfig)."""
        names = ("image_encoder", "resampler_latents", "fusion", "cross_attn_every", "film", "keypoints", "keypoint_film")
        return dataclasses.replace(cfg, **{n: getattr(self, n) for n in names if getattr(self, n) is not None})

    @property
    def slots_per_image(self) -> int | None:
        """Sequence slots per image of the model this config trains (``ModelConfig.slots_per_image``)."""
        return self.vision_config(get_preset(self.preset)).slots_per_image

    def model_config(self, layout: VocabLayout) -> ModelConfig:
        """The preset with the context, action-input, chunking, vision and feed-forward overrides, bound to ``layout``."""
        cfg = self.adjust(get_preset(self.preset))
        if self.action_inputs is not None:
            cfg = dataclasses.replace(cfg, action_inputs=self.action_inputs)
        chunking = self.chunking
        cfg = dataclasses.replace(cfg, action_chunk=chunking.size, chunk_execution=chunking.execution)
        return cfg.with_layout(layout)

    def adjust(self, cfg: ModelConfig) -> ModelConfig:
        """``cfg`` (a preset) with this run's overrides of its shape: the vision options, the context, the depth and
        the feed-forward.

        Raises:
            ValueError: an override the model config refuses (the message names it).
        """
        shape = {name: getattr(self, name) for name in ("context", "n_layer", *_MOE_FIELDS)
                 if getattr(self, name) is not None}
        return dataclasses.replace(self.vision_config(cfg), **shape)

    def tokenizer(self) -> Tokenizer:
        """The installed tokenizer, writing images as the ``image_tokenizer``'s codes where one is given."""
        tok = Tokenizer.default()
        if self.image_tokenizer is None:
            return tok
        return tok.with_image_tokenizer(ImageTokenizer.load(self.image_tokenizer))


@dataclass
class TrainResult:
    """What a training run did.

    Attributes:
        step: optimizer steps done in total (including those before a resume).
        losses: mean target-token loss of each step run in this call.
        checkpoint: the newest checkpoint: the last one this call wrote, else the one it resumed from (None if neither).
        tokens_per_s: global training throughput (window tokens per second) of this call.
        num_params: model parameters.
        val_loss: task id -> loss on its held-out windows at the last validation (empty without ``val_fraction``).
        fit_loss: task id -> loss on as many fixed windows of its training episodes, measured alongside
            ``val_loss`` (the same tasks and measurement, so the two compare: a gap means overfitting).
    """

    step: int
    losses: list[float]
    checkpoint: Path | None
    tokens_per_s: float
    num_params: int
    val_loss: dict[str, float] = field(default_factory=dict)
    fit_loss: dict[str, float] = field(default_factory=dict)

    def validation_summary(self) -> str:
        """One line: the mean held-out and training-episode losses and the three worst tasks ('' without validation)."""
        if not self.val_loss:
            return ""
        worst = sorted(self.val_loss.items(), key=lambda kv: -kv[1])[:3]
        return (f"validation loss {np.mean(list(self.val_loss.values())):.4f} on held-out episodes, "
                f"{np.mean(list(self.fit_loss.values())):.4f} on training episodes (mean over {len(self.val_loss)} "
                f"task(s)); highest: " + ", ".join(f"{t} {v:.4f}" for t, v in worst))


# --------------------------------------------------------------------------- data


def to_tensors(batch: dict[str, np.ndarray], device: torch.device) -> dict[str, Tensor]:
    """A numpy WindowLoader batch as tensors on ``device``."""
    out = {}
    for key in ("tokens", "loss_mask", "local_pos", "patch_index", "patches", "patch_pos", *_FRAME_KEYS):
        if key not in batch:  # the frame keys come with cross-attention's images only
            continue
        t = torch.from_numpy(np.ascontiguousarray(batch[key]))
        out[key] = t.to(device, non_blocking=True)
    for key in ("tokens", "local_pos", "patch_index", "patch_pos", *_FRAME_KEYS):
        if key in out:
            out[key] = out[key].long()
    return out


_FRAME_KEYS = ("frame_index", "image_frame")
"""The batch keys of cross-attention fusion (WindowLoader's whole images with ``image_slots=0``)."""


def slice_batch(batch: dict[str, np.ndarray], lo: int, hi: int, slots_per_image: int | None = None) -> dict[str, np.ndarray]:
    """Rows ``lo:hi`` of a WindowLoader batch, with only the patches they use (``patch_index`` remapped).

    Args:
        slots_per_image: the batch's layout (``ModelConfig.slots_per_image``): None for one slot per patch,
            N for whole images of N slots each, 0 for cross-attention's frames.
    """
    out = {k: batch[k][lo:hi] for k in ("tokens", "loss_mask", "local_pos", "task_index")}
    index = batch["patch_index"][lo:hi]
    if slots_per_image is None:
        rows, index = _used(index)
        out.update(patch_index=index, patches=batch["patches"][rows], patch_pos=batch["patch_pos"][rows])
        return out
    starts = np.append(image_starts(batch["patch_pos"]), len(batch["patch_pos"]))  # (I + 1,)
    if slots_per_image > 0:
        N = slots_per_image
        images, image_index = _used(np.where(index >= 0, index // N, -1))
        out["patch_index"] = np.where(index >= 0, image_index * N + index % N, -1)
    else:
        frames, out["frame_index"] = _used(batch["frame_index"][lo:hi])
        keep = np.isin(batch["image_frame"], frames)
        images = np.flatnonzero(keep)
        out["image_frame"] = np.searchsorted(frames, batch["image_frame"][keep])
        out["patch_index"] = index
    rows = concat_ranges(starts[images], starts[images + 1] - starts[images])
    out.update(patches=batch["patches"][rows], patch_pos=batch["patch_pos"][rows])
    return out


def _used(index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct values >= 0 of ``index`` (sorted) and ``index`` renumbered into them (-1 stays -1)."""
    used = index >= 0
    values, inverse = np.unique(index[used], return_inverse=True)
    new_index = np.full_like(index, -1)
    new_index[used] = inverse
    return values, new_index


def check_batch(batch: dict[str, np.ndarray], cfg: ModelConfig) -> None:
    """Raise if a batch does not fit the model (too long, unknown ids, local positions past the table)."""
    B, S = batch["tokens"].shape
    if S > cfg.context:
        raise ValueError(f"Batch windows have {S} tokens but the model's context is {cfg.context}")
    top = int(batch["tokens"].max(initial=0))
    if top >= cfg.vocab_size or int(batch["tokens"].min(initial=0)) < 0:
        raise ValueError(f"Batch token ids must be in [0, {cfg.vocab_size}), got max {top}")
    lp = int(batch["local_pos"].max(initial=0))
    if lp >= cfg.local_positions:
        raise ValueError(
            f"A timestep has {lp + 1} tokens but the model's local position table has {cfg.local_positions} "
            f"entries; use a preset with more local_positions or smaller observations"
        )
    slots = cfg.slots_per_image
    if slots is not None and len(batch["patch_pos"]):  # whole images: N slots each, or none (cross-attention)
        n_images = len(image_starts(batch["patch_pos"]))
        top = int(batch["patch_index"].max(initial=-1))
        if top >= n_images * slots or (slots == 0 and "frame_index" not in batch):
            raise ValueError(f"Batch images are not laid out for the model's slots_per_image={slots} (image_encoder="
                             f"{cfg.image_encoder!r}, fusion={cfg.fusion!r}): {n_images} image(s), slot rows up to {top}; "
                             f"build the token cache with image_slots={slots}")


def build_dataset_loader(
    cfg: TrainConfig, context: int, is_main: bool
) -> tuple[Iterable, VocabLayout, dict[str, TimestepSpec], dict[tuple[str, str], dict[str, np.ndarray]]]:
    """The WindowLoader over ``cfg.data``, the tokenizer layout, the task specs and the validation batches.

    The token cache lives in ``out/token_cache`` and is rebuilt only when the
    data or the tokenizer layout changed (ranks wait on its lock; one builds).
    With ``cfg.val_fraction``, each task's last episodes are left out of the
    loader and ``cfg.val_windows`` windows of them (no prompts, a fixed seed)
    make that task's validation batch, under ``(task, "val")``; as many windows
    of the task's training episodes go under ``(task, "fit")``. Both score the
    action tokens only (where a task has any): the instruction that an
    observation repeats every step is predicted almost perfectly and would
    dilute the figure (a Meta-World step has 8 instruction tokens, 4 actions).

    Raises:
        ValueError: no dataset given, or task weights naming tasks the data does not hold.
    """
    if not cfg.data:
        raise ValueError("train needs at least one dataset directory (--data DIR [DIR ...]) or --synthetic")
    tok = cfg.tokenizer()
    cache = TokenCache.build(list(cfg.data), tok, cfg.out / "token_cache", progress=is_main, chunking=cfg.chunking,
                             image_slots=cfg.slots_per_image)
    _check_chunking(cfg.chunking, cache.specs, is_main)
    unknown = sorted(set(cfg.task_weights) - set(cache.task_ids))
    if unknown:
        raise ValueError(f"task_weights names unknown tasks {unknown}; the datasets hold {cache.task_ids}")
    eligible = holdout_eligible(cache, cfg.holdout_from)
    train_eps, held_out = holdout_split(cache, cfg.val_fraction, eligible)
    loader = WindowLoader(
        cache,
        context=context,
        batch_size=cfg.batch_size,
        task_weights={t: float(cfg.task_weights.get(t, 1.0)) for t in cache.task_ids},
        prompt_prob=cfg.prompt_prob,
        seed=cfg.seed,
        episodes=train_eps,
        random_shift=cfg.random_shift,
    )
    val: dict[tuple[str, str], dict[str, np.ndarray]] = {}
    if len(held_out):
        task_of = np.asarray(cache.episodes)[:, EPISODE_COLUMNS.index("task_index")]
        # training windows of the same datasets as the held-out ones, so that "fit" and "val" compare
        fit_eps = train_eps[eligible[train_eps]]
        for task in sorted({cache.task_ids[i] for i in task_of[held_out]}):
            for kind, eps in (("val", held_out), ("fit", fit_eps)):
                one = WindowLoader(cache, context=context, batch_size=cfg.val_windows, task_weights={task: 1.0},
                                   seed=cfg.seed + 1, episodes=eps)
                batch = one.sample()
                actions = batch["loss_mask"] & (batch["tokens"] >= cache.layout.text_size)
                if actions.any():  # score actions only: an instruction repeated every step is predicted trivially
                    batch["loss_mask"] = actions
                val[task, kind] = batch
    if is_main and cfg.val_fraction > 0:
        kept = sorted(set(cache.task_ids) - {task for task, _ in val})
        print(f"validation: {len(held_out)} held-out episode(s) of {len(val) // 2} task(s)"
              + (f"; too few episodes to hold any out: {kept}" if kept else ""), file=sys.stderr)
    return loader, cache.layout, dict(cache.specs), val


def _check_chunking(chunking: ActionChunking, specs: dict[str, TimestepSpec], is_main: bool) -> None:
    """Refuse chunking when no task has a continuous action; say which tasks keep one action per timestep.

    Raises:
        ValueError: ``chunking.size > 1`` and every task's action is discrete.
    """
    if chunking.size == 1:
        return
    single = sorted(t for t, spec in specs.items() if chunking.for_action(spec.action)[0] == 1)
    if len(single) == len(specs):
        raise ValueError(f"action_chunk={chunking.size} chunks continuous actions, but every task of the datasets has a "
                         f"discrete action: {single}; train them with action_chunk=1")
    if single and is_main:
        print(f"action chunking: {chunking.size} actions per timestep ({chunking.execution}); tasks with a discrete "
              f"action keep one: {single}", file=sys.stderr)


def holdout_eligible(cache: Any, holdout_from: Sequence[Path]) -> np.ndarray:
    """bool (episodes,): the cache episodes that come from a dataset under one of ``holdout_from`` (all if empty).

    Raises:
        ValueError: no dataset of the cache lies under ``holdout_from``.
    """
    if not cache.num_episodes:
        return np.zeros(0, bool)
    store_of = np.asarray(cache.episodes)[:, EPISODE_COLUMNS.index("store_index")]
    if not holdout_from:
        return np.ones(len(store_of), bool)
    roots = [Path(p).resolve() for p in holdout_from]
    stores = [Path(r).resolve() for r in cache.manifest["stores"]]
    chosen = [i for i, r in enumerate(stores) if any(r == root or root in r.parents for root in roots)]
    if not chosen:
        raise ValueError(f"holdout_from {[str(p) for p in holdout_from]} holds none of the training datasets "
                         f"{[str(r) for r in stores]}")
    return np.isin(store_of, chosen)


def build_synthetic_loader(cfg: TrainConfig, context: int) -> tuple[Iterable, VocabLayout, dict[str, TimestepSpec]]:
    """Synthetic copy-task windows with the installed tokenizer's layout (no dataset needed)."""
    layout = Tokenizer.default().layout
    src = SyntheticWindows(layout, context=context, batch_size=cfg.batch_size, seed=cfg.seed)
    return src, layout, {SYNTHETIC_TASK_ID: synthetic_spec(src.obs_tokens, src.action_tokens)}


# ----------------------------------------------------------------------- helpers


RAW_WEIGHTS = "raw_weights"
"""The trainer-state key of the raw weights, in checkpoints whose weights file holds their moving average."""


def _average_of(model: GatoModel) -> GatoModel:
    """A copy of ``model`` to hold its moving average: eval mode, no gradients."""
    average = GatoModel(model.cfg).to(next(model.parameters()).device)
    average.load_state_dict(model.state_dict())
    return average.requires_grad_(False).eval()


@torch.no_grad()
def update_average(average: nn.Module, model: nn.Module, decay: float) -> None:
    """One step of the exponential moving average: ``average = decay * average + (1 - decay) * model`` for every
    parameter; buffers are copied.

    >>> a, m = nn.Linear(1, 1, bias=False), nn.Linear(1, 1, bias=False)
    >>> _ = a.weight.fill_(1.0), m.weight.fill_(3.0)
    >>> update_average(a, m, 0.75); round(a.weight.item(), 6)
    1.5
    """
    for p, src in zip(average.parameters(), model.parameters()):
        p.lerp_(src, 1.0 - decay)
    for b, src in zip(average.buffers(), model.buffers()):
        b.copy_(src)


def cosine_lr(step: int, peak: float, steps: int, warmup_steps: int = 0, min_ratio: float = 0.1) -> float:
    """Learning rate of optimizer step ``step`` (0-based) of ``steps``: linear warm-up over ``warmup_steps``, then
    cosine decay from ``peak`` to ``min_ratio * peak``.

    >>> [round(cosine_lr(s, 1.0, 100), 6) for s in (0, 50, 100)], cosine_lr(4, 1.0, 100, warmup_steps=10)
    ([1.0, 0.55, 0.1], 0.5)
    """
    if step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    span = max(1, steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return peak * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate of optimizer step ``step`` (0-based): linear warm-up, then cosine to ``min_lr_ratio * lr``."""
    return cosine_lr(step, cfg.lr, cfg.steps, cfg.warmup_steps, cfg.min_lr_ratio)


def make_optimizer(model: nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices/embeddings/conv kernels only; fused where supported."""
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), fused=device.type in ("cpu", "cuda"))


class LossModule(nn.Module):
    """Wraps the model so DDP sees ``forward(batch) -> (loss_sum, count, router_loss)``.

    ``router_loss`` is the weighted MoE auxiliary loss of this forward pass (:meth:`GatoModel.router_loss`), to be
    added to the mean token loss; ``None`` for a dense model or in eval mode.
    """

    def __init__(self, model: GatoModel, bin_sigma: float = 0.0) -> None:
        super().__init__()
        self.model = model
        self.bin_sigma = bin_sigma

    def forward(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor, Tensor | None]:
        loss_sum, count = self.model.loss_terms(batch, self.bin_sigma)
        return loss_sum, count, self.model.router_loss() if self.model.training else None


def accumulate_gradients(
    train_module: nn.Module,
    batch: dict[str, np.ndarray],
    *,
    rank: int = 0,
    world: int = 1,
    grad_accum: int = 1,
    device: torch.device | None = None,
    dtype: str = "float32",
    slots_per_image: int | None = None,
) -> tuple[Tensor, int]:
    """Forward and backward passes over this rank's share of ``batch``, in ``grad_accum`` micro-batches.

    However the batch is split (across ranks, then into micro-batches), each parameter's ``.grad`` ends as
    the gradient of the whole batch's summed token loss divided by the batch's count of loss positions:
    the mean loss of the batch. A mixture-of-experts model adds the gradient of its router loss, averaged over
    the micro-batches of every rank (the router losses are means over tokens already). With more than one rank ``train_module`` is a
    ``DistributedDataParallel`` that averages over ranks on the last micro-batch.

    Args:
        train_module: a :class:`LossModule` (or DDP around one) returning ``(loss_sum, count, router_loss)``.
        batch: the global WindowLoader batch (every rank passes the same one).
        rank: this process's rank; it takes rows ``[rank * B / world, (rank + 1) * B / world)``.
        world: number of ranks.
        grad_accum: micro-batches per rank.
        device: where the tensors go (default: the module's parameters' device).
        dtype: the training dtype (``"bfloat16"`` autocasts).
        slots_per_image: the batch's image layout (see :func:`slice_batch`).

    Returns:
        ``(loss_sum, count)``: this rank's summed token loss (detached) and the global count of loss positions.
    """
    if device is None:
        device = next(train_module.parameters()).device
    rows = batch["tokens"].shape[0]
    if rows % (world * grad_accum):
        raise ValueError(f"a batch of {rows} rows must be divisible by ranks x grad_accum = {world} x {grad_accum}")
    per_rank = rows // world
    micro = per_rank // grad_accum
    global_count = int(batch["loss_mask"][:, 1:].sum())
    scale = world / max(global_count, 1)  # DDP averages over ranks: gradients = d(global sum)/global count
    loss_sum = torch.zeros((), device=device)
    for k in range(grad_accum):
        lo = rank * per_rank + k * micro
        part = to_tensors(slice_batch(batch, lo, lo + micro, slots_per_image), device)
        sync = k == grad_accum - 1 or world == 1
        with (nullcontext() if sync else train_module.no_sync()), _autocast(device, dtype):
            part_sum, _, router = train_module(part)
        objective = part_sum * scale
        if router is not None:
            objective = objective + router / grad_accum  # DDP's mean over ranks completes the mean over micro-batches
        objective.backward()
        loss_sum += part_sum.detach()
    return loss_sum, global_count


def loader_state(loader: Any) -> Any:
    """The resumable state of a batch source: its ``state_dict()``, else the state of its numpy ``rng``."""
    if hasattr(loader, "state_dict"):
        return {"state_dict": loader.state_dict()}
    if isinstance(getattr(loader, "rng", None), np.random.Generator):
        return {"rng": loader.rng.bit_generator.state}
    return None


def set_loader_state(loader: Any, state: dict[str, Any]) -> None:
    """Inverse of :func:`loader_state`."""
    if "state_dict" in state:
        loader.load_state_dict(state["state_dict"])
    else:
        loader.rng.bit_generator.state = state["rng"]


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def resolve_device(device_arg: str, cuda_available: bool, gpus: int, local_rank: int) -> torch.device:
    """The training device of ``TrainConfig.device``: auto = CUDA where available; a CUDA device without an
    index is this process's GPU (torchrun's ``LOCAL_RANK`` modulo the GPUs), as ``torch.cuda.set_device`` needs one."""
    device = torch.device("cuda" if cuda_available else "cpu") if device_arg == "auto" else torch.device(device_arg)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank % max(gpus, 1))
    return device


def _setup_distributed(device_arg: str) -> tuple[int, int, torch.device, bool]:
    """``(rank, world, device, created_group)``; joins torchrun's group when launched by it."""
    device = resolve_device(device_arg, torch.cuda.is_available(), torch.cuda.device_count(),
                            int(os.environ.get("LOCAL_RANK", "0")))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    created = False
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        created = True
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    return rank, world, device, created


def _rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _prune(ckpt_root: Path, keep_last: int) -> None:
    steps = sorted(p for p in ckpt_root.glob("step_*") if p.is_dir())
    for old in steps[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)


def cpu_has_native_bf16() -> bool:
    """True on CPUs with bfloat16 matrix instructions (AVX512-BF16 or AMX), where bf16 autocast pays off."""
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in probes)


def autocast_dtype(device: torch.device, dtype: str) -> torch.dtype | None:
    """The autocast dtype of a ``TrainConfig.dtype`` on ``device`` (None: plain float32).

    ``auto`` is bfloat16 on CUDA and float32 on the CPU: with native bf16
    (AVX512-BF16/AMX) bf16 made cpu-small steps about 1.5x faster but cpu-tiny
    ones no faster, and learned a copy task more slowly per step; ask for it
    with ``bfloat16``.
    """
    if dtype == "bfloat16" or (dtype == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


def _autocast(device: torch.device, dtype: str):
    amp = autocast_dtype(device, dtype)
    return torch.autocast(device.type, dtype=amp) if amp is not None else nullcontext()


# ------------------------------------------------------------------------- train


def train(
    cfg: TrainConfig,
    *,
    loader: Iterable[dict[str, np.ndarray]] | None = None,
    layout: VocabLayout | None = None,
    tasks: dict[str, TimestepSpec] | None = None,
) -> TrainResult:
    """Train (or resume) a model as ``cfg`` says.

    Args:
        cfg: the training config.
        loader: batch source in the WindowLoader format (an iterable of dicts;
            ``state_dict``/``load_state_dict`` make resumes exact). Default: built
            from ``cfg.data`` (or synthetic windows with ``cfg.synthetic``).
        layout: vocabulary layout of ``loader``'s ids (required with ``loader``).
        tasks: task specs saved into checkpoints (required with ``loader``).

    Returns:
        The :class:`TrainResult`.

    Raises:
        ValueError: bad data, or ``--resume`` from a checkpoint of another model or layout.
    """
    threads = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    rank, world, device, created_group = _setup_distributed(cfg.device)
    is_main = rank == 0
    try:
        return _train(cfg, loader, layout, tasks, rank, world, device, is_main)
    finally:
        torch.set_num_threads(threads)
        if created_group:
            dist.destroy_process_group()


def _train(cfg, loader, layout, tasks, rank, world, device, is_main) -> TrainResult:
    """:func:`train` in this process: data, model and optimizer, resume, the step loop, the result."""
    loader, layout, tasks, val_batches = _training_data(cfg, loader, layout, tasks, world, is_main)
    model_cfg = cfg.model_config(layout)
    image_tokenizer = _image_tokenizer(cfg, layout)
    model, optimizer = _build_model(cfg, model_cfg, tasks, world, device, is_main)
    run = _Run(cfg, rank, world, device, is_main, loader, layout, tasks, val_batches, model_cfg, model, optimizer,
               image_tokenizer, ema=_average_of(model) if cfg.ema_decay > 0 else None)
    _resume(run)
    train_module = _train_module(run)
    writer, bar = _open_logs(cfg, is_main, run.step)
    batches = iter(loader)
    model.train()
    t_start = time.perf_counter()
    tokens_this_call = _step_loop(run, train_module, batches, t_start, writer, bar)
    if bar is not None:
        bar.close()
    if writer is not None:
        writer.close()
    elapsed = time.perf_counter() - t_start
    return TrainResult(run.step, run.losses, run.last_ckpt, tokens_this_call / max(elapsed, 1e-9), model.num_params(),
                       run.val_loss, run.fit_loss)


@dataclass
class _Run:
    """One training call: what it set up, and how far it got (read and advanced by the steps below)."""

    cfg: TrainConfig
    rank: int
    world: int
    device: torch.device
    is_main: bool
    loader: Iterable[dict[str, np.ndarray]]
    layout: VocabLayout
    tasks: dict[str, TimestepSpec]
    val_batches: dict[tuple[str, str], dict[str, np.ndarray]]
    model_cfg: ModelConfig
    model: GatoModel
    optimizer: torch.optim.Optimizer
    image_tokenizer: ImageTokenizer | None = None
    """The tokenizer of the vq image codes, saved with each checkpoint (None: images are patches)."""
    ema: GatoModel | None = None
    """The moving average of ``model``'s weights (``ema_decay`` > 0; eval mode, no gradients), else None."""
    step: int = 0
    """Optimizer steps done in total (including those before a resume)."""
    tokens_seen: int = 0
    losses: list[float] = field(default_factory=list)
    """Mean target-token loss of each step run in this call."""
    val_loss: dict[str, float] = field(default_factory=dict)
    fit_loss: dict[str, float] = field(default_factory=dict)
    last_ckpt: Path | None = None
    """The last checkpoint this call wrote, else the one it resumed from."""

    @property
    def policy_model(self) -> GatoModel:
        """The weights a checkpoint's user acts with: the moving average where there is one, else the model."""
        return self.model if self.ema is None else self.ema

    @property
    def ckpt_root(self) -> Path:
        return self.cfg.out / "checkpoints"

    @property
    def end(self) -> int:
        """The step this call stops at: ``stop_at``, else ``steps``."""
        return self.cfg.steps if self.cfg.stop_at is None else self.cfg.stop_at


def _training_data(
    cfg: TrainConfig,
    loader: Iterable[dict[str, np.ndarray]] | None,
    layout: VocabLayout | None,
    tasks: dict[str, TimestepSpec] | None,
    world: int,
    is_main: bool,
) -> tuple[Iterable, VocabLayout, dict[str, TimestepSpec], dict[tuple[str, str], dict[str, np.ndarray]]]:
    """``(loader, layout, tasks, validation batches)``: the given loader, else one built from ``cfg``.

    Raises:
        ValueError: a batch size the ranks and micro-batches do not divide, or a loader without layout and tasks.
    """
    if cfg.batch_size % (world * cfg.grad_accum):
        raise ValueError(
            f"batch_size {cfg.batch_size} must be divisible by ranks x grad_accum = {world} x {cfg.grad_accum}"
        )
    context = cfg.context or get_preset(cfg.preset).context
    val_batches: dict[tuple[str, str], dict[str, np.ndarray]] = {}
    if cfg.val_fraction > 0 and is_main and (loader is not None or cfg.synthetic):
        print("validation: val_fraction holds out episodes of --data datasets; a given loader or --synthetic windows "
              "get no validation loss", file=sys.stderr)
    if loader is None:
        if cfg.synthetic:
            loader, layout, tasks = build_synthetic_loader(cfg, context)
        else:
            loader, layout, tasks, val_batches = build_dataset_loader(cfg, context, is_main)
    elif layout is None or tasks is None:
        raise ValueError("train(loader=...) also needs layout= and tasks=")
    return loader, layout, tasks, val_batches


def _image_tokenizer(cfg: TrainConfig, layout: VocabLayout) -> ImageTokenizer | None:
    """The image tokenizer of ``--image-encoder vq`` (None otherwise), checked against the data's layout.

    Raises:
        ValueError: the layout's image codes are not this tokenizer's (or there are none to go with it, or codes
            but no tokenizer).
    """
    if cfg.image_tokenizer is None:
        if layout.image_codes:
            raise ValueError(f"The training data's layout holds image codes (image tokenizer {layout.image_model}); "
                             "train it with --image-encoder vq --image-tokenizer DIR")
        return None
    image = ImageTokenizer.load(cfg.image_tokenizer)
    if (layout.image_codes, layout.image_model) != (image.num_codes, image.sha256[:16]):
        raise ValueError(f"--image-tokenizer {cfg.image_tokenizer} ({image.num_codes} codes, {image.sha256[:16]}) is not "
                         f"the one the training data was tokenized with ({layout.image_codes} codes, "
                         f"{layout.image_model or 'none'})")
    return image


def _build_model(
    cfg: TrainConfig, model_cfg: ModelConfig, tasks: dict[str, TimestepSpec], world: int, device: torch.device,
    is_main: bool,
) -> tuple[GatoModel, torch.optim.AdamW]:
    """The model initialised from ``cfg.seed`` on ``device`` (TF32 matmuls on CUDA) and its optimizer."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    torch.manual_seed(cfg.seed)
    model = GatoModel(model_cfg).to(device)
    if is_main:
        amp = autocast_dtype(device, cfg.dtype)
        active = (f" ({model_cfg.num_active_params():,d} active per token: {model_cfg.moe_experts} experts, top-"
                  f"{model_cfg.moe_top_k})" if model_cfg.ffn == "moe" else "")
        print(f"model {cfg.preset}: {model.num_params():,d} parameters{active}, context {model_cfg.context}, vocabulary "
              f"{model_cfg.vocab_size}; {len(tasks)} task(s); {world} process(es) on {device}, "
              f"{'bfloat16 autocast' if amp else 'float32'}", file=sys.stderr)
    optimizer = make_optimizer(model, cfg, device)
    return model, optimizer


def _resume(run: _Run) -> None:
    """With ``--resume``, continue from the newest checkpoint, if there is one: weights, optimizer, RNGs, loader,
    step and tokens seen, and the last validation losses."""
    cfg, ckpt_root, is_main = run.cfg, run.ckpt_root, run.is_main
    done: dict[str, Any] = {}  # train_state of the checkpoint resumed from
    if cfg.resume:
        try:
            ckpt = resolve_checkpoint(ckpt_root)
        except FileNotFoundError:
            ckpt = None
            if is_main:
                print(f"--resume: no checkpoint in {ckpt_root}; starting from scratch", file=sys.stderr)
        if ckpt is not None:
            run.step, run.tokens_seen, done = _restore(ckpt, run.model, run.optimizer, run.loader, run.model_cfg,
                                                       run.layout, run.device, run.ema)
            run.last_ckpt = ckpt
            if is_main:
                print(f"resumed from {ckpt} at step {run.step}", file=sys.stderr)
    if run.last_ckpt is None and cfg.init_from is not None:
        changed = _init_from(run.model, cfg.init_from, run.layout)
        if run.ema is not None:  # the average starts from the weights the run starts from
            run.ema.load_state_dict(run.model.state_dict())
        if is_main:
            print(f"--init-from: weights of {resolve_checkpoint(cfg.init_from)}"
                  + (f" (trained with other options, checkpoint vs now: {changed})" if changed else ""), file=sys.stderr)
    # a resumed run that has no step left still reports its checkpoint and last validation
    run.val_loss = dict(done.get("val_loss") or {})
    run.fit_loss = dict(done.get("fit_loss") or {})


def _train_module(run: _Run) -> nn.Module:
    """The :class:`LossModule` the steps run, inside DDP with several ranks."""
    train_module: nn.Module = LossModule(run.model, run.cfg.bin_sigma)
    if run.world > 1:
        train_module = nn.parallel.DistributedDataParallel(
            train_module, device_ids=[run.device.index] if run.device.type == "cuda" else None
        )
    return train_module


def _open_logs(cfg: TrainConfig, is_main: bool, step: int) -> tuple[Any, tqdm | None]:
    """The main process's TensorBoard writer and progress bar (starting at ``step``); None where off."""
    writer = None
    if is_main and cfg.tensorboard:
        from torch.utils.tensorboard import SummaryWriter  # tensorboard loads only when logging is on

        writer = SummaryWriter(str(cfg.out / "tb"))
    bar = None
    if is_main and cfg.progress:
        bar = tqdm(total=cfg.steps, initial=step, desc="train", unit="step", dynamic_ncols=True)
    return writer, bar


def _step_loop(
    run: _Run, train_module: nn.Module, batches: Iterator, t_start: float, writer: Any, bar: tqdm | None
) -> int:
    """Optimizer steps up to ``run.end``, validating, logging and saving on their periods: the window tokens trained.

    ``t_start`` (``time.perf_counter``) is when the call's training began, for the tokens/s figures.
    """
    cfg, end = run.cfg, run.end
    tokens_this_call = 0
    while run.step < end:
        lr = lr_at(run.step, cfg)
        loss, grad_norm, n_tokens = _optimizer_step(run, train_module, batches, lr)
        tokens_this_call += n_tokens
        tok_s = tokens_this_call / max(time.perf_counter() - t_start, 1e-9)
        if run.is_main and run.val_batches and (run.step % cfg.val_every == 0 or run.step == end):
            run.val_loss, run.fit_loss = _validate(run)
            _log_validation(writer, run)
        _report_step(run, writer, bar, loss, lr, tok_s, grad_norm)
        if run.step % cfg.save_every == 0 or run.step == end:
            if run.is_main:
                run.last_ckpt = _save(run)
            _barrier()
    return tokens_this_call


def _optimizer_step(
    run: _Run, train_module: nn.Module, batches: Iterator, lr: float
) -> tuple[float, Tensor | None, int]:
    """One update at ``lr`` on the next batch: ``(mean loss, gradient norm before clipping or None, window tokens)``."""
    cfg = run.cfg
    for group in run.optimizer.param_groups:
        group["lr"] = lr
    batch = next(batches)
    check_batch(batch, run.model_cfg)
    loss_sum, global_count = accumulate_gradients(train_module, batch, rank=run.rank, world=run.world,
                                                  grad_accum=cfg.grad_accum, device=run.device, dtype=cfg.dtype,
                                                  slots_per_image=run.model_cfg.slots_per_image)
    grad_norm = torch.nn.utils.clip_grad_norm_(run.model.parameters(), cfg.grad_clip) if cfg.grad_clip > 0 else None
    run.optimizer.step()
    run.optimizer.zero_grad(set_to_none=True)
    if run.ema is not None:
        update_average(run.ema, run.model, min(cfg.ema_decay, (1 + run.step) / (10 + run.step)))
    if run.world > 1:
        dist.all_reduce(loss_sum)
    loss = loss_sum.item() / max(global_count, 1)
    run.losses.append(loss)
    run.step += 1
    n_tokens = int(batch["tokens"].size)
    run.tokens_seen += n_tokens
    return loss, grad_norm, n_tokens


def _validate(run: _Run) -> tuple[dict[str, float], dict[str, float]]:
    """Loss of the checkpoints' weights (``run.policy_model``) on each task's held-out and training windows (main
    process only; the trained model stays in training mode)."""
    model, device, cfg = run.policy_model, run.device, run.cfg
    model.eval()
    out: dict[str, dict[str, float]] = {"val": {}, "fit": {}}
    with torch.no_grad(), _autocast(device, cfg.dtype):
        for (task, kind), vb in run.val_batches.items():
            s, n = model.loss_terms(to_tensors(vb, device), cfg.bin_sigma)
            out[kind][task] = float(s) / max(float(n), 1.0)
    run.model.train()
    return out["val"], out["fit"]


def _log_validation(writer: Any, run: _Run) -> None:
    """The validation and fit losses (their mean and each task's) to TensorBoard."""
    if writer is not None:
        for name, losses_of in (("val", run.val_loss), ("fit", run.fit_loss)):
            writer.add_scalar(f"{name}/loss", float(np.mean(list(losses_of.values()))), run.step)
            for task, v in losses_of.items():
                writer.add_scalar(f"{name}/{task}", v, run.step)


def _report_step(
    run: _Run, writer: Any, bar: tqdm | None, loss: float, lr: float, tok_s: float, grad_norm: Tensor | None
) -> None:
    """Advance the progress bar; every ``log_every`` steps (and at ``steps``) log the training scalars."""
    cfg, step = run.cfg, run.step
    if bar is not None:
        extra = {k: f"{np.mean(list(v.values())):.4f}" for k, v in (("val", run.val_loss), ("fit", run.fit_loss)) if v}
        bar.set_postfix(loss=f"{loss:.4f}", **extra, tok_s=f"{tok_s:,.0f}", lr=f"{lr:.2e}", refresh=False)
        bar.update(1)
    if writer is not None and (step % cfg.log_every == 0 or step == cfg.steps):
        writer.add_scalar("train/loss", loss, step)
        writer.add_scalar("train/lr", lr, step)
        writer.add_scalar("train/tokens_per_s", tok_s, step)
        if grad_norm is not None:
            writer.add_scalar("train/grad_norm", float(grad_norm), step)
        _log_router(writer, run.model, step)


def _log_router(writer: Any, model: GatoModel, step: int) -> None:
    """The MoE routing of the step's last micro-batch: the router losses (mean over layers), and per layer each
    expert's share of the token-to-expert assignments and the mean entropy of the tokens' router distributions."""
    stats = model.router_stats()
    if not stats:
        return
    writer.add_scalar("moe/aux_loss", float(np.mean([float(s.aux.detach()) for s in stats])), step)
    writer.add_scalar("moe/z_loss", float(np.mean([float(s.z.detach()) for s in stats])), step)
    for layer, s in enumerate(stats):
        writer.add_scalar(f"moe/layer{layer}/entropy", float(s.entropy), step)
        for e, share in enumerate(s.load.tolist()):
            writer.add_scalar(f"moe/layer{layer}/load_expert{e}", share, step)


def _save(run: _Run) -> Path:
    """Write a checkpoint of step ``run.step``, point ``latest`` at it and prune the old ones: its path."""
    cfg, step, ckpt_root = run.cfg, run.step, run.ckpt_root
    meta = CheckpointMeta(
        model=run.model_cfg,
        layout=run.layout,
        tasks=dict(run.tasks),
        train_state={"step": step, "tokens_seen": run.tokens_seen, "loss": run.losses[-1] if run.losses else None,
                     "val_loss": dict(run.val_loss) or None, "fit_loss": dict(run.fit_loss) or None,
                     "world_size": run.world, "config": _jsonable(asdict(cfg))},
    )
    trainer_state = {
        "optimizer": run.optimizer.state_dict(),
        "rng": _rng_state(),
        "loader": loader_state(run.loader),
        "step": step,
        "tokens_seen": run.tokens_seen,
    }
    if run.ema is not None:  # the weights file holds the average; training continues from the raw weights
        trainer_state[RAW_WEIGHTS] = run.model.state_dict()
    path = save_checkpoint(ckpt_root / f"step_{step:07d}", run.policy_model, meta, trainer_state, run.image_tokenizer)
    write_text_atomic(ckpt_root / LATEST, path.name + "\n")
    _prune(ckpt_root, cfg.keep_last)
    return path


def _config_differences(saved: ModelConfig, now: ModelConfig) -> dict[str, tuple[Any, Any]]:
    """The model options that differ, ``{name: (saved, now)}``."""
    old, new = saved.to_dict(), now.to_dict()
    return {k: (v, new[k]) for k, v in old.items() if new[k] != v}


def _init_from(model: GatoModel, path: Path, layout: VocabLayout) -> dict[str, tuple[Any, Any]]:
    """Load the weights of the checkpoint at ``path`` into ``model`` (fine-tuning's start).

    Modules this run adds that start inert (``GatoModel.INERT_AT_START``: FiLM, keypoints) keep their initial
    weights when the checkpoint has none, so a trained model can be fine-tuned with them.

    Returns:
        The model options that differ without changing a parameter's shape, ``{name: (checkpoint's, this run's)}``
        (say ``action_inputs`` or ``film``; the context is not counted): the weights load, and the caller tells
        the user.

    Raises:
        FileNotFoundError: no checkpoint at ``path``.
        ValueError: its vocabulary layout or its parameters' names or shapes are not the model's (the message
            names the first differences).
    """
    ckpt = resolve_checkpoint(path)
    source, meta = load_model_weights(ckpt)
    if meta.layout != layout:
        raise ValueError(f"--init-from: checkpoint {ckpt} has another vocabulary layout: {'; '.join(meta.layout.diff(layout))}")
    theirs, mine = source.state_dict(), model.state_dict()
    old_wpe, new_wpe = theirs.get("wpe.weight"), mine.get("wpe.weight")
    if old_wpe is not None and new_wpe is not None and old_wpe.shape[1:] == new_wpe.shape[1:]:
        # the context may differ: copy the positions both have
        rows = min(len(old_wpe), len(new_wpe))
        theirs["wpe.weight"] = torch.cat([old_wpe[:rows], new_wpe[rows:]])
    for k in mine:
        if k not in theirs and k.startswith(tuple(f"{name}." for name in GatoModel.INERT_AT_START)):
            theirs[k] = mine[k]
    diff = [f"{k}: {tuple(theirs[k].shape) if k in theirs else 'absent'} vs {tuple(mine[k].shape) if k in mine else 'absent'}"
            for k in sorted(set(theirs) | set(mine))
            if k not in theirs or k not in mine or theirs[k].shape != mine[k].shape]
    changed = _config_differences(meta.model, model.cfg)
    changed.pop("context", None)
    if diff:
        raise ValueError(f"--init-from: checkpoint {ckpt} holds another model's parameters (checkpoint vs this run): "
                         f"{'; '.join(diff[:4])}{' ...' if len(diff) > 4 else ''}; config differences {changed}")
    model.load_state_dict(theirs)
    return changed


def _restore(
    ckpt: Path, model, optimizer, loader, model_cfg: ModelConfig, layout: VocabLayout, device,
    ema: GatoModel | None = None,
) -> tuple[int, int, dict[str, Any]]:
    """Load ``ckpt`` into the model, optimizer, RNGs and loader (and the moving average ``ema``, where there is one):
    ``(step, tokens_seen, the checkpoint's train_state)``.

    A checkpoint of a run with a moving average holds the average as its weights and the raw weights in its trainer
    state: the model continues from the raw ones, the average from the average. A checkpoint without one starts
    the average from its weights."""
    meta = load_meta(ckpt)
    if meta.model != model_cfg:
        raise ValueError(f"--resume: checkpoint {ckpt} has another model config (checkpoint, now): "
                         f"{_config_differences(meta.model, model_cfg)}")
    if meta.layout != layout:
        raise ValueError(f"--resume: checkpoint {ckpt} has another vocabulary layout: {'; '.join(meta.layout.diff(layout))}")
    load_model(model, str(ckpt / WEIGHTS), strict=True, device=str(device))
    state = load_trainer_state(ckpt)
    if ema is not None:
        ema.load_state_dict(model.state_dict())
    if RAW_WEIGHTS in state:
        model.load_state_dict(state[RAW_WEIGHTS])
    optimizer.load_state_dict(state["optimizer"])
    _set_rng_state(state["rng"])
    if state.get("loader") is not None:
        set_loader_state(loader, state["loader"])
    return int(state["step"]), int(state["tokens_seen"]), meta.train_state


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        out[k] = [str(x) for x in v] if isinstance(v, tuple) else str(v) if isinstance(v, Path) else v
    return out


# --------------------------------------------------------------------------- CLI


def _presets_text(cfg: TrainConfig) -> str:
    return presets_table(cfg.tokenizer().layout, adjust=cfg.adjust)  # with the image codes of a vq tokenizer


def train_command(argv: list[str], prog: str) -> None:
    """``omnipolicy train``: parse ``argv`` into a :class:`TrainConfig` and train."""
    description = "Train a Gato-style generalist policy on one or more datasets (torchrun for several processes)."
    if "-h" in argv or "--help" in argv:
        layout = Tokenizer.default().layout
        lines = [
            f"{name}: {c.n_layer} layers, width {c.n_embd}, {c.n_head} heads, ff {c.d_ff}, context {c.context}: "
            f"{c.with_layout(layout).num_params():,d} parameters"
            for name, c in PRESETS.items()
        ]
        moe = dataclasses.replace(PRESETS["cpu-tiny"], ffn="moe").with_layout(layout)
        lines.append(f"--ffn moe replaces each MLP by {moe.moe_experts} experts of its shape, {moe.moe_top_k} per token: "
                     f"cpu-tiny then has {moe.num_params():,d} parameters, {moe.num_active_params():,d} active per "
                     "token (--list-presets --ffn moe lists every preset)")
        description += "\n\nModel presets (exact parameter counts with the installed tokenizer):\n\n" + "\n\n".join(lines)
    cfg = tyro.cli(TrainConfig, args=argv, prog=prog, description=description)
    if cfg.list_presets:
        print(_presets_text(cfg))
        return
    result = train(cfg)
    if int(os.environ.get("RANK", "0")) == 0:
        print(
            f"trained {result.step} steps ({result.num_params:,d} parameters), final loss "
            f"{result.losses[-1] if result.losses else float('nan'):.4f}, {result.tokens_per_s:,.0f} tokens/s; "
            f"checkpoint {result.checkpoint}"
        )
        if result.val_loss:
            print(result.validation_summary())
