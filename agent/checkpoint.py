"""Checkpoints: safetensors weights plus a JSON of everything needed to use them.

A checkpoint is a directory written atomically (filled under a temporary name
in the same parent, then renamed: :func:`omnipolicy.files.atomic_dir`)::

    step_000500/
      model.safetensors   weights (tied embeddings stored once)
      checkpoint.json     format, model config, tokenizer VocabLayout,
                          TimestepSpec per task id, training state (step, losses, config)
      trainer.pt          optimizer, RNG and data-loader state (only for --resume)
      image_tokenizer/    the image tokenizer of a model whose images are vq codes (ImageTokenizer.save's files)

A training run keeps its checkpoints under ``<out>/checkpoints/`` with a
``latest`` file naming the newest one; :func:`resolve_checkpoint` accepts the
run directory, the ``checkpoints`` directory or a step directory.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_model, save_model

from omnipolicy.files import atomic_dir
from omnipolicy.tokenizers.image_vq import ImageTokenizer
from omnipolicy.tokenizers.spec import TimestepSpec
from omnipolicy.tokenizers.vocab import VocabLayout

from .config import ModelConfig
from .model import GatoModel

FORMAT = "omnipolicy-checkpoint"
FORMAT_VERSION = 1
WEIGHTS = "model.safetensors"
META = "checkpoint.json"
TRAINER = "trainer.pt"
IMAGE_TOKENIZER = "image_tokenizer"
LATEST = "latest"


@dataclass
class CheckpointMeta:
    """The JSON half of a checkpoint.

    Attributes:
        model: model config (vocabulary size bound).
        layout: the tokenizer's vocabulary layout the model was trained with.
        tasks: observation/action spec of every task the model was trained on.
        train_state: step, tokens seen, last loss, the training config, ...
    """

    model: ModelConfig
    layout: VocabLayout
    tasks: dict[str, TimestepSpec]
    train_state: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "model": self.model.to_dict(),
            "vocab_layout": self.layout.to_dict(),
            "tasks": {task_id: spec.to_dict() for task_id, spec in sorted(self.tasks.items())},
            "train_state": self.train_state,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "CheckpointMeta":
        if d.get("format") != FORMAT:
            raise ValueError(f"Not an omnipolicy checkpoint: format {d.get('format')!r}, expected {FORMAT!r}")
        if d.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"Unsupported checkpoint format_version {d.get('format_version')!r}; this version reads {FORMAT_VERSION}")
        return cls(
            model=ModelConfig.from_dict(d["model"]),
            layout=VocabLayout.from_dict(d["vocab_layout"]),
            tasks={task_id: TimestepSpec.from_dict(s) for task_id, s in d["tasks"].items()},
            train_state=d.get("train_state", {}),
        )


def save_checkpoint(
    path: str | os.PathLike,
    model: GatoModel,
    meta: CheckpointMeta,
    trainer_state: dict[str, Any] | None = None,
    image_tokenizer: ImageTokenizer | None = None,
) -> Path:
    """Write a checkpoint directory atomically, replacing one already at ``path``.

    Args:
        path: the checkpoint directory to create.
        model: the (unwrapped) model whose weights to save.
        meta: configs, layout, task specs and training state.
        trainer_state: optimizer/RNG/loader state to resume training (saved with ``torch.save``).
        image_tokenizer: the tokenizer of the layout's image codes (required when the layout has some).

    Returns:
        The checkpoint directory.

    Raises:
        ValueError: the image tokenizer is missing or is not the layout's.
    """
    _check_image_tokenizer(meta.layout, image_tokenizer, "save_checkpoint")
    path = Path(path)
    with atomic_dir(path) as tmp:
        save_model(model, str(tmp / WEIGHTS))
        (tmp / META).write_text(json.dumps(meta.to_dict(), indent=2, sort_keys=True) + "\n")
        if trainer_state is not None:
            torch.save(trainer_state, tmp / TRAINER)
        if image_tokenizer is not None:
            (tmp / IMAGE_TOKENIZER).mkdir()
            image_tokenizer.write_into(tmp / IMAGE_TOKENIZER)
    return path


def _check_image_tokenizer(layout: VocabLayout, image: ImageTokenizer | None, where: str) -> None:
    want = (layout.image_codes, layout.image_model)
    got = (0, "") if image is None else (image.num_codes, image.sha256[:16])
    if want != got:
        raise ValueError(f"{where}: the layout's image codes ({want[0]} codes of image tokenizer {want[1] or 'none'}) "
                         f"need their image tokenizer, got {image!r}")


def load_image_tokenizer(path: str | os.PathLike) -> ImageTokenizer | None:
    """The image tokenizer a checkpoint's image codes come from (None when its images are patches).

    Raises:
        FileNotFoundError: no checkpoint at ``path``, or its layout has image codes but no image tokenizer folder.
        ValueError: the folder is damaged or holds another tokenizer than the layout's.
    """
    ckpt = resolve_checkpoint(path)
    layout = load_meta(ckpt).layout
    if not layout.image_codes:
        return None
    image = ImageTokenizer.load(ckpt / IMAGE_TOKENIZER)
    _check_image_tokenizer(layout, image, str(ckpt))
    return image


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """The checkpoint directory meant by ``path``.

    Accepts a step directory (holding ``checkpoint.json``), a ``checkpoints``
    directory or a run directory (the newest checkpoint named by ``latest``).

    Raises:
        FileNotFoundError: no checkpoint there (the message says where it looked).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"No checkpoint at {path}: the path does not exist")
    for candidate in (path, path / "checkpoints"):
        if (candidate / META).is_file():
            return candidate
        if (candidate / LATEST).is_file():
            step_dir = candidate / (candidate / LATEST).read_text().strip()
            if (step_dir / META).is_file():
                return step_dir
    raise FileNotFoundError(
        f"No checkpoint at {path}: expected {META} there, or a {LATEST!r} file in it or in {path / 'checkpoints'}"
    )


def load_meta(path: str | os.PathLike) -> CheckpointMeta:
    """Read only the JSON half of the checkpoint at ``path`` (see :func:`resolve_checkpoint`).

    Raises:
        FileNotFoundError: no checkpoint at ``path``.
        ValueError: its checkpoint.json is damaged or not an omnipolicy checkpoint's (the message names the file).
    """
    file = resolve_checkpoint(path) / META
    try:
        d = json.loads(file.read_text())
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
        raise ValueError(f"{file} is not valid JSON ({exc}); the checkpoint is damaged") from exc
    if not isinstance(d, dict):
        raise ValueError(f"{file} holds a JSON {type(d).__name__}; expected an object with format {FORMAT!r}")
    try:
        return CheckpointMeta.from_dict(d)
    except ValueError as exc:
        raise ValueError(f"{file}: {exc}") from exc
    except KeyError as exc:
        raise ValueError(f"{file} has no entry {exc}; the checkpoint is damaged") from exc


def load_model_weights(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[GatoModel, CheckpointMeta]:
    """Build the model of a checkpoint and load its weights.

    Returns:
        ``(model, meta)`` with the model in eval mode on ``device``.

    Raises:
        FileNotFoundError: no checkpoint at ``path``, or its weights file is missing.
        ValueError: its checkpoint.json or weights file is damaged (the message names the file).
    """
    ckpt = resolve_checkpoint(path)
    meta = load_meta(ckpt)
    model = GatoModel(meta.model)
    try:
        load_model(model, str(ckpt / WEIGHTS), strict=True, device=str(device))
    except SafetensorError as exc:
        raise ValueError(f"{ckpt / WEIGHTS} is not a readable safetensors file ({exc}); the checkpoint is damaged") from exc
    model.to(device).eval()
    return model, meta


def load_trainer_state(path: str | os.PathLike) -> dict[str, Any]:
    """The optimizer/RNG/loader state saved next to the weights.

    Raises:
        FileNotFoundError: the checkpoint holds no trainer state (an export without it).
    """
    ckpt = resolve_checkpoint(path)
    if not (ckpt / TRAINER).is_file():
        raise FileNotFoundError(f"Checkpoint {ckpt} has no {TRAINER}; it cannot be resumed")
    # our own file: it holds numpy RNG states and the loader's state dict, so it is not weights-only
    return torch.load(ckpt / TRAINER, map_location="cpu", weights_only=False)
