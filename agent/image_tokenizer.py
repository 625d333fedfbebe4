"""Train an FSQ image tokenizer on a dataset's camera frames: ``omnipolicy image-tokenizer train``.

The torch twin of :class:`~omnipolicy.tokenizers.image_vq.ImageTokenizer` (the same MLP encoder, FSQ and
decoder, one code per 16x16 patch) is trained to reconstruct the patches of the frames of the given datasets
(mean squared error, straight-through rounding), then exported to the numpy tokenizer that the token pipeline
uses. The run writes, atomically, a folder with the tokenizer, ``reconstructions.png`` (held-out frames over
their reconstructions) and ``metrics.json``: reconstruction error (MSE on [0, 1] pixels, PSNR) and codebook
use (share of the codes used, perplexity) on the frames of held-out episodes and on training frames.

    omnipolicy image-tokenizer train --data data/so101 --out runs/image-tokenizer --steps 2000
    omnipolicy image-tokenizer eval runs/image-tokenizer --data data/so101-other --out runs/itok-eval
    omnipolicy train --data data/so101 --image-encoder vq --image-tokenizer runs/image-tokenizer
"""

from __future__ import annotations

import io
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
import tyro
from torch import Tensor, nn
from tqdm import tqdm

from omnipolicy.datasets.layout import find_stores
from omnipolicy.datasets.store import EpisodeStore
from omnipolicy.files import atomic_dir
from omnipolicy.tokenizers.image import PATCH, image_to_patches
from omnipolicy.tokenizers.image_vq import FSQ_EPS, PATCH_DIM, FSQConfig, ImageTokenizer

from .train import cosine_lr

RECONSTRUCTIONS = "reconstructions.png"
METRICS = "metrics.json"


# ------------------------------------------------------------------------------------------------------- config


@dataclass(frozen=True)
class ImageTokenizerConfig:
    """Train an FSQ image tokenizer (one code per 16x16 patch) on the camera frames of datasets."""

    data: tuple[Path, ...] = ()
    """Dataset directories (EpisodeStore roots, or folders of them) whose image fields to train on."""
    out: Path = Path("runs/image-tokenizer")
    """Folder to write: the tokenizer, reconstructions.png and metrics.json (replaced atomically)."""
    steps: int = 2000
    """Optimizer steps."""
    batch_size: int = 512
    """Patches per step."""
    lr: float = 1e-3
    """Peak learning rate (Adam; cosine decay to a tenth)."""
    levels: tuple[int, ...] = (8, 5, 5, 5)
    """FSQ levels per latent dimension; their product is the number of codes."""
    hidden: int = 256
    """Width of the encoder's and decoder's two hidden layers."""
    val_fraction: float = 0.1
    """Share of each dataset's episodes (its last ones; at least one of two or more) held out for the figures."""
    max_frames: int = 4000
    """At most this many training frames (evenly spaced over the training episodes)."""
    distinct: bool = False
    """Draw each distinct patch equally often instead of each patch: a static background repeats in every frame and
    otherwise takes most of the loss, so small moving things (a paddle, a cube) blur away; drawn distinct, they
    come back sharper but the backgrounds blur (a lower PSNR overall)."""
    samples: int = 8
    """Held-out frames shown in reconstructions.png."""
    seed: int = 0
    """Seed of the initialisation and the batches."""
    threads: int | None = None
    """torch CPU threads (default: torch's choice)."""
    progress: bool = True
    """Show a progress bar."""

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "max_frames", "samples"):
            if getattr(self, name) < 1:
                raise ValueError(f"ImageTokenizerConfig.{name} must be >= 1, got {getattr(self, name)!r}")
        if not self.lr > 0:
            raise ValueError(f"ImageTokenizerConfig.lr must be > 0, got {self.lr!r}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"ImageTokenizerConfig.val_fraction must be in [0, 1), got {self.val_fraction!r}")
        FSQConfig(self.levels, self.hidden)  # validates levels and hidden

    @property
    def fsq(self) -> FSQConfig:
        return FSQConfig(self.levels, self.hidden)


# ------------------------------------------------------------------------------------------------------- module


class FSQAutoencoder(nn.Module):
    """The torch twin of :class:`~omnipolicy.tokenizers.image_vq.ImageTokenizer`: per-patch MLP encoder, FSQ, decoder.

    Args:
        config: levels and hidden width.
    """

    def __init__(self, config: FSQConfig) -> None:
        super().__init__()
        self.config = config
        h, d = config.hidden, config.latent_dim
        self.enc = nn.ModuleList([nn.Linear(PATCH_DIM, h), nn.Linear(h, h), nn.Linear(h, d)])
        self.dec = nn.ModuleList([nn.Linear(d, h), nn.Linear(h, h), nn.Linear(h, PATCH_DIM)])
        levels = torch.tensor(config.levels, dtype=torch.float64)
        self.register_buffer("levels", levels, persistent=False)
        half_l = (levels - 1) * (1 + FSQ_EPS) / 2
        offset = torch.where(levels % 2 == 0, 0.5, 0.0)
        self.register_buffer("half_l", half_l, persistent=False)
        self.register_buffer("offset", offset, persistent=False)
        self.register_buffer("shift", torch.atanh(offset / half_l), persistent=False)
        self.register_buffer("half_width", torch.div(levels, 2, rounding_mode="floor"), persistent=False)
        basis = torch.cumprod(torch.cat([torch.ones(1, dtype=torch.float64), levels[:-1]]), 0)
        self.register_buffer("basis", basis.long(), persistent=False)

    @staticmethod
    def _mlp(layers: nn.ModuleList, x: Tensor) -> Tensor:
        for k, layer in enumerate(layers):
            x = layer(x)
            if k < len(layers) - 1:
                x = F.gelu(x, approximate="tanh")
        return x

    def latents(self, x: Tensor) -> Tensor:
        """(P, 768) patches in [-1, 1] -> (P, d) encoder outputs."""
        return self._mlp(self.enc, x)

    def bound(self, z: Tensor) -> Tensor:
        """:func:`~omnipolicy.tokenizers.image_vq.fsq_bound` in torch: (P, d)."""
        return torch.tanh(z + self.shift.to(z.dtype)) * self.half_l.to(z.dtype) - self.offset.to(z.dtype)

    def codes(self, x: Tensor) -> Tensor:
        """(P, 768) patches in [-1, 1] -> int64 codes (P,)."""
        digits = self.bound(self.latents(x)).round().long()  # (P, d) centred
        return ((digits + self.half_width.long()) * self.basis).sum(-1)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(P, 768) patches in [-1, 1] -> (reconstruction (P, 768), centred digits (P, d) as floats).

        Rounding passes the gradient straight through (FSQ's straight-through estimator).
        """
        b = self.bound(self.latents(x))  # (P, d)
        q = b + (b.round() - b).detach()
        return self._mlp(self.dec, q / self.half_width.to(q.dtype)), q

    def export(self, info: dict[str, Any] | None = None) -> ImageTokenizer:
        """The numpy :class:`~omnipolicy.tokenizers.image_vq.ImageTokenizer` with these weights."""
        weights = {}
        for part in ("enc", "dec"):
            for k, layer in enumerate(getattr(self, part)):
                weights[f"{part}.{k}.w"] = layer.weight.detach().cpu().float().numpy().T
                weights[f"{part}.{k}.b"] = layer.bias.detach().cpu().float().numpy()
        return ImageTokenizer(self.config, weights, info)

    @classmethod
    def from_tokenizer(cls, tokenizer: ImageTokenizer) -> "FSQAutoencoder":
        """The torch module of an exported tokenizer (its float32 weights)."""
        module = cls(tokenizer.config)
        with torch.no_grad():
            for part in ("enc", "dec"):
                for k, layer in enumerate(getattr(module, part)):
                    layer.weight.copy_(torch.from_numpy(tokenizer.weights[f"{part}.{k}.w"].T))
                    layer.bias.copy_(torch.from_numpy(tokenizer.weights[f"{part}.{k}.b"]))
        return module


def patches_to_inputs(raw: np.ndarray, dtype: torch.dtype = torch.float32) -> Tensor:
    """uint8 patches (P, 16, 16, 3) -> (P, 768) in [-1, 1] of ``dtype``, flattened and scaled as the numpy encoder
    does (in float64, then cast)."""
    return torch.from_numpy(np.asarray(raw).reshape(-1, PATCH_DIM).astype(np.float64) / 127.5 - 1.0).to(dtype)


# --------------------------------------------------------------------------------------------------------- data


@dataclass
class Frames:
    """Camera frames of datasets, split by episode.

    Attributes:
        train: uint8 (T, H, W, C) arrays (one per image shape met) of the training episodes.
        test: the same of the held-out episodes (the training frames when no store could hold one out).
        held_out: whether ``test`` comes from held-out episodes.
    """

    train: list[np.ndarray]
    test: list[np.ndarray]
    held_out: bool

    @staticmethod
    def count(arrays: Sequence[np.ndarray]) -> int:
        return sum(len(a) for a in arrays)


def load_frames(data: Sequence[Path], val_fraction: float = 0.1, max_frames: int | None = None) -> Frames:
    """Every image field's frames of the datasets under ``data``; each store's last episodes held out.

    Args:
        data: dataset directories (stores or folders of stores).
        val_fraction: share of each store's episodes held out (the last ones; at least one of two or more).
        max_frames: keep at most this many training frames, evenly spaced.

    Raises:
        FileNotFoundError: no dataset under a path.
        ValueError: no dataset given, or no image field in any of them.
    """
    if not data:
        raise ValueError("image-tokenizer train needs at least one dataset directory (--data DIR [DIR ...])")
    groups: dict[str, dict[tuple[int, ...], list[np.ndarray]]] = {"train": {}, "test": {}}
    for path in data:
        roots = find_stores(path)
        if not roots:
            raise FileNotFoundError(f"No dataset (meta/info.json) at or below {path}")
        for root in roots:
            store = EpisodeStore(root)
            n = store.num_episodes
            n_test = max(1, int(math.floor(val_fraction * n + 1e-9))) if val_fraction > 0 and n >= 2 else 0
            for i in range(n):
                ep = store.load_episode(i)
                for f in store.timestep_spec(ep.task_id).fields("image"):
                    x = np.asarray(ep.observations[f.name])
                    groups["test" if i >= n - n_test else "train"].setdefault(x.shape[1:], []).append(x)
    train = [np.concatenate(v) for v in groups["train"].values()]
    test = [np.concatenate(v) for v in groups["test"].values()]
    if not train and not test:
        raise ValueError(f"The datasets {[str(p) for p in data]} hold no image field to train an image tokenizer on")
    held_out = bool(test)
    if not train:  # every store had one episode: nothing to hold out
        train, test, held_out = test, test, False
    if not test:
        test = train
    total = Frames.count(train)
    if max_frames is not None and total > max_frames:
        keep = max_frames / total
        train = [a[np.unique(np.linspace(0, len(a) - 1, max(1, round(len(a) * keep))).round().astype(int))] for a in train]
    return Frames(train, test, held_out)


def frame_patches(arrays: Sequence[np.ndarray]) -> np.ndarray:
    """uint8 patches (P, 16, 16, 3) of every frame of ``arrays``."""
    parts = [image_to_patches(a)[0].reshape(-1, PATCH, PATCH, 3) for a in arrays if len(a)]
    return np.concatenate(parts) if parts else np.zeros((0, PATCH, PATCH, 3), np.uint8)


# ------------------------------------------------------------------------------------------------------ figures


def reconstruction_metrics(tokenizer: ImageTokenizer, arrays: Sequence[np.ndarray]) -> dict[str, float]:
    """Reconstruction error and codebook use of ``tokenizer`` (numpy) on the frames of ``arrays``.

    Returns:
        ``frames``, ``patches``; ``mse`` (mean squared error of [0, 1] pixels, over the image itself, not the
        padding) and ``psnr`` (dB, peak 1); ``codes_used`` (distinct codes), ``code_share`` (their share of the
        codebook) and ``perplexity`` (``exp`` of the entropy of the code histogram: the effective number of codes).
    """
    sq_err, n_values, counts = 0.0, 0, np.zeros(tokenizer.num_codes, np.int64)
    for a in arrays:
        for lo in range(0, len(a), 256):  # bounded memory
            x = np.asarray(a[lo:lo + 256])
            codes = tokenizer.encode(x)  # (t, n)
            counts += np.bincount(codes.ravel(), minlength=tokenizer.num_codes)
            rec = tokenizer.decode(codes, x.shape[1], x.shape[2]).astype(np.float64)  # (t, H, W, 3)
            orig = np.broadcast_to(x, x.shape[:3] + (3,)).astype(np.float64)
            sq_err += float((((rec - orig) / 255.0) ** 2).sum())
            n_values += orig.size
    mse = sq_err / max(n_values, 1)
    p = counts[counts > 0] / max(counts.sum(), 1)
    return {
        "frames": Frames.count(arrays),
        "patches": int(counts.sum()),
        "mse": mse,
        "psnr": float(10 * np.log10(1.0 / mse)) if mse > 0 else float("inf"),
        "codes_used": int((counts > 0).sum()),
        "code_share": float((counts > 0).mean()),
        "perplexity": float(np.exp(-(p * np.log(p)).sum())) if len(p) else 0.0,
    }


def reconstruction_png(tokenizer: ImageTokenizer, arrays: Sequence[np.ndarray], samples: int, scale: int = 2) -> bytes:
    """PNG bytes of ``samples`` frames (evenly spaced over ``arrays``): originals on the top row, their
    reconstructions below, each ``scale`` times enlarged (nearest neighbour) on a grey background."""
    from PIL import Image

    frames = [a[i] for a in arrays for i in np.linspace(0, len(a) - 1, min(len(a), samples)).round().astype(int)]
    step = max(1, len(frames) // samples)
    frames = frames[::step][:samples]
    h = max(f.shape[0] for f in frames) * scale
    w = max(f.shape[1] for f in frames) * scale
    gap = 4
    canvas = np.full((2 * h + 3 * gap, len(frames) * (w + gap) + gap, 3), 128, np.uint8)
    for k, f in enumerate(frames):
        rgb = np.broadcast_to(f, f.shape[:2] + (3,))
        rec = tokenizer.decode(tokenizer.encode(f[None]), f.shape[0], f.shape[1])[0]
        for row, img in enumerate((rgb, rec)):
            big = img.repeat(scale, 0).repeat(scale, 1)
            y, x = gap + row * (h + gap), gap + k * (w + gap)
            canvas[y:y + big.shape[0], x:x + big.shape[1]] = big
    buf = io.BytesIO()
    Image.fromarray(canvas).save(buf, format="PNG")
    return buf.getvalue()


# -------------------------------------------------------------------------------------------------------- train


@dataclass
class ImageTokenizerResult:
    """What a training run did: the exported tokenizer, its figures and where it went."""

    tokenizer: ImageTokenizer
    metrics: dict[str, Any]
    out: Path
    seconds: float


def fit_autoencoder(module: FSQAutoencoder, patches: np.ndarray, cfg: ImageTokenizerConfig) -> list[float]:
    """Adam steps on random batches of ``patches`` (uint8 (P, 16, 16, 3)): the loss of each step.

    Raises:
        ValueError: no patches.
    """
    if not len(patches):
        raise ValueError("No image patches to train the image tokenizer on")
    gen = np.random.default_rng(cfg.seed)
    opt = torch.optim.Adam(module.parameters(), lr=cfg.lr)
    bar = tqdm(total=cfg.steps, desc="image tokenizer", unit="step", dynamic_ncols=True, disable=not cfg.progress)
    losses = []
    module.train()
    for step in range(cfg.steps):
        for group in opt.param_groups:
            group["lr"] = cosine_lr(step, cfg.lr, cfg.steps)  # no warm-up, down to a tenth
        x = patches_to_inputs(patches[np.sort(gen.integers(0, len(patches), cfg.batch_size))])  # (B, 768)
        recon, _ = module(x)
        loss = F.mse_loss(recon, x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        mse01 = losses[-1] / 4  # [-1, 1] -> [0, 1] pixels
        bar.set_postfix(loss=f"{losses[-1]:.4f}", psnr=f"{10 * math.log10(1 / max(mse01, 1e-12)):.1f}", refresh=False)
        bar.update(1)
    bar.close()
    module.eval()
    return losses


def train_image_tokenizer(cfg: ImageTokenizerConfig) -> ImageTokenizerResult:
    """Train, export and evaluate an image tokenizer as ``cfg`` says; write ``cfg.out`` atomically.

    Raises:
        FileNotFoundError: no dataset under a ``--data`` path.
        ValueError: no dataset, or no image field in them.
    """
    threads = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:
        t0 = time.perf_counter()
        frames = load_frames(cfg.data, cfg.val_fraction, cfg.max_frames)
        patches = frame_patches(frames.train)
        n_all = len(patches)
        if cfg.distinct and n_all:
            patches = np.unique(patches.reshape(n_all, -1), axis=0).reshape(-1, PATCH, PATCH, 3)
        if cfg.progress:
            print(f"image tokenizer: {Frames.count(frames.train)} training frames ({n_all} patches, {len(patches)} "
                  f"{'distinct ' if cfg.distinct else ''}drawn from), "
                  f"{Frames.count(frames.test)} {'held-out' if frames.held_out else 'training (none held out)'} frames; "
                  f"{cfg.fsq.num_codes} codes", file=sys.stderr)
        torch.manual_seed(cfg.seed)
        module = FSQAutoencoder(cfg.fsq)
        t_fit = time.perf_counter()
        losses = fit_autoencoder(module, patches, cfg)
        info = {"steps": cfg.steps, "batch_size": cfg.batch_size, "lr": cfg.lr, "seed": cfg.seed,
                "distinct": cfg.distinct, "data": [str(p) for p in cfg.data], "final_loss": losses[-1],
                "load_seconds": round(t_fit - t0, 1), "train_seconds": round(time.perf_counter() - t_fit, 1)}
        tokenizer = module.export(info)
    finally:
        torch.set_num_threads(threads)
    metrics = {
        "held_out": frames.held_out,
        "test": reconstruction_metrics(tokenizer, frames.test),
        "train": reconstruction_metrics(tokenizer, [a[:: max(1, Frames.count(frames.train) // 1000)] for a in frames.train]),
        "num_codes": tokenizer.num_codes,
        "levels": list(cfg.levels),
        "sha256": tokenizer.sha256,
        **{k: info[k] for k in ("steps", "load_seconds", "train_seconds", "final_loss")},
    }
    tokenizer.info["metrics"] = {k: metrics[k] for k in ("held_out", "test", "train")}
    png = reconstruction_png(tokenizer, frames.test, cfg.samples)
    tokenizer.save(cfg.out, {RECONSTRUCTIONS: png, METRICS: (json.dumps(metrics, indent=2) + "\n").encode()})
    return ImageTokenizerResult(tokenizer, metrics, cfg.out, time.perf_counter() - t0)


def evaluate_image_tokenizer(path: Path, data: Sequence[Path], out: Path, samples: int = 8) -> dict[str, Any]:
    """Figures and reconstructions of the tokenizer at ``path`` on every frame of ``data``, written to ``out``."""
    tokenizer = ImageTokenizer.load(path)
    frames = load_frames(data, val_fraction=0.0)
    metrics = {"tokenizer": str(path), "data": [str(p) for p in data], "sha256": tokenizer.sha256,
               "frames": reconstruction_metrics(tokenizer, frames.train)}
    with atomic_dir(out) as tmp:
        (tmp / RECONSTRUCTIONS).write_bytes(reconstruction_png(tokenizer, frames.train, samples))
        (tmp / METRICS).write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics


def summary_line(name: str, m: dict[str, float]) -> str:
    """One line of reconstruction figures."""
    return (f"{name}: {m['frames']} frames, MSE {m['mse']:.5f} (PSNR {m['psnr']:.2f} dB), codes used "
            f"{m['codes_used']} ({100 * m['code_share']:.1f}%), perplexity {m['perplexity']:.1f}")


# ---------------------------------------------------------------------------------------------------------- CLI


@dataclass(frozen=True)
class EvalImageTokenizer:
    """Reconstruct every frame of datasets with a trained image tokenizer: reconstructions.png and metrics.json."""

    tokenizer: tyro.conf.Positional[Path]
    """The tokenizer folder (what `image-tokenizer train --out` wrote)."""
    data: tuple[Path, ...] = ()
    """Dataset directories whose image fields to reconstruct."""
    out: Path = Path("runs/image-tokenizer-eval")
    """Folder for reconstructions.png and metrics.json (replaced atomically)."""
    samples: int = 8
    """Frames shown in reconstructions.png."""


def image_tokenizer_command(argv: list[str], prog: str) -> None:
    """``omnipolicy image-tokenizer train|eval``."""
    cmd = tyro.cli(
        Annotated[ImageTokenizerConfig, tyro.conf.subcommand("train")]
        | Annotated[EvalImageTokenizer, tyro.conf.subcommand("eval")],
        args=argv, prog=prog,
        description="Train an FSQ image tokenizer on datasets' camera frames (its codes become `--image-encoder vq` "
                    "tokens), or measure one on other frames.",
    )
    if isinstance(cmd, EvalImageTokenizer):
        m = evaluate_image_tokenizer(cmd.tokenizer, cmd.data, cmd.out, cmd.samples)
        print(summary_line("frames", m["frames"]))
        print(f"wrote {cmd.out / RECONSTRUCTIONS} and {cmd.out / METRICS}")
        return
    result = train_image_tokenizer(cmd)
    m = result.metrics
    print(f"trained {cmd.steps} steps in {m['train_seconds']:.1f} s (frames loaded in {m['load_seconds']:.1f} s); "
          f"{m['num_codes']} codes (levels {m['levels']}), final batch loss {m['final_loss']:.4f}")
    print(summary_line("held-out episodes" if m["held_out"] else "training frames (none held out)", m["test"]))
    print(summary_line("training frames", m["train"]))
    print(f"wrote {result.out} (tokenizer {m['sha256'][:16]}, {RECONSTRUCTIONS}, {METRICS})")
