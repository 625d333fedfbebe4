"""Images -> discrete codes: a finite-scalar-quantisation (FSQ) image tokenizer, applied in numpy.

One code per 16x16 patch (the patch grid of :mod:`~omnipolicy.tokenizers.image`: a 96x96 image gives 36 codes,
raster order). A patch's pixels (scaled to [-1, 1]) go through a small MLP encoder to ``d = len(levels)``
numbers; FSQ (Mentzer et al. 2023, arXiv 2309.15505) bounds each one with a tanh to ``levels[i]`` integer
values and rounds it, and the code is the mixed-radix number of the ``d`` digits: ``prod(levels)`` codes
(levels ``(8, 5, 5, 5)``: 1000) with no codebook to collapse. The decoder MLP maps the grid values back to
pixels (reconstructions for the training command's report; the policy reads only the codes).

The weights are trained in torch by ``omnipolicy image-tokenizer train`` (:mod:`omnipolicy.agent.image_tokenizer`)
and exported to this plain-numpy form, so the token pipeline encodes without torch. The encoder runs in
float64, where a float64 torch forward of the same weights gives the same codes.

A tokenizer is a folder: ``image_tokenizer.json`` (format, config, the weights' SHA-256, training figures)
and ``image_tokenizer.npz`` (float32 weights), written atomically.

>>> levels = (8, 5, 5, 5)
>>> digits = np.array([[-4, -2, -2, -2], [3, 2, 2, 2], [0, 0, 0, 0]])
>>> fsq_index(digits, levels).tolist()
[0, 999, 504]
>>> fsq_digits(np.array([0, 999, 504]), levels).tolist() == digits.tolist()
True
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from omnipolicy.files import atomic_dir

from .image import PATCH, grid_shape, image_to_patches

FORMAT = "omnipolicy-image-tokenizer"
FORMAT_VERSION = 1
CONFIG_FILE = "image_tokenizer.json"
WEIGHTS_FILE = "image_tokenizer.npz"
PATCH_DIM = PATCH * PATCH * 3
"""Inputs of the encoder: one 16x16 RGB patch, flattened row-major (rows, columns, channels)."""
FSQ_EPS = 1e-3
"""The bound reaches this fraction past the outermost levels: every level is reached exactly, and rounding never
leaves the grid."""


# ---------------------------------------------------------------------------------------------------------- FSQ


def _levels(levels: Sequence[int]) -> np.ndarray:
    return np.asarray(levels, dtype=np.int64)


def fsq_bound(z: np.ndarray, levels: Sequence[int]) -> np.ndarray:
    """Squash ``z`` (..., d) into the FSQ range of each dimension: rounding gives the centred digits.

    Dimension ``i`` lands in ``[-(L_i // 2), (L_i - 1) // 2]`` widened by ``FSQ_EPS`` (less than half a step);
    even levels are shifted by half a step so that ``z = 0`` maps to a level, as in the FSQ paper.
    """
    L = _levels(levels).astype(np.float64)
    half_l = (L - 1) * (1 + FSQ_EPS) / 2
    offset = np.where(L % 2 == 0, 0.5, 0.0)
    shift = np.arctanh(offset / half_l)
    return np.tanh(z + shift) * half_l - offset


def fsq_index(digits: np.ndarray, levels: Sequence[int]) -> np.ndarray:
    """Centred integer digits (..., d), digit ``i`` in ``[-(L_i // 2), (L_i - 1) // 2]`` -> int64 codes (...,)."""
    L = _levels(levels)
    basis = np.concatenate([[1], np.cumprod(L[:-1])])  # (d,) mixed radix, first digit least significant
    return ((np.asarray(digits, np.int64) + L // 2) * basis).sum(-1)


def fsq_digits(codes: np.ndarray, levels: Sequence[int]) -> np.ndarray:
    """Inverse of :func:`fsq_index`: int codes (...,) -> centred int64 digits (..., d)."""
    L = _levels(levels)
    basis = np.concatenate([[1], np.cumprod(L[:-1])])
    return (np.asarray(codes, np.int64)[..., None] // basis) % L - L // 2


def fsq_values(codes: np.ndarray, levels: Sequence[int]) -> np.ndarray:
    """The decoder's float64 inputs (..., d) of codes: each digit over ``L_i // 2``, in [-1, 1]."""
    return fsq_digits(codes, levels) / (_levels(levels) // 2)


def gelu_tanh(x: np.ndarray) -> np.ndarray:
    """GELU, tanh approximation (torch's ``gelu(approximate="tanh")``)."""
    return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x**3)))


# ------------------------------------------------------------------------------------------------ the tokenizer


@dataclass(frozen=True)
class FSQConfig:
    """Shape of an FSQ image tokenizer.

    Attributes:
        levels: FSQ levels per latent dimension; ``prod(levels)`` codes.
        hidden: width of the two hidden layers of the encoder and of the decoder.
    """

    levels: tuple[int, ...] = (8, 5, 5, 5)
    hidden: int = 256

    def __post_init__(self) -> None:
        levels = tuple(self.levels)
        if not levels or any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 2 for v in levels):
            raise ValueError(f"FSQConfig.levels must be a non-empty list of ints >= 2, got {list(levels)}")
        if int(np.prod(levels)) > 65536:
            raise ValueError(f"FSQConfig.levels give {int(np.prod(levels))} codes; at most 65536 fit the vocabulary "
                             f"sensibly (e.g. (8, 5, 5, 5) = 1000), got {list(levels)}")
        if isinstance(self.hidden, bool) or not isinstance(self.hidden, int) or self.hidden < 1:
            raise ValueError(f"FSQConfig.hidden must be a positive int, got {self.hidden!r}")
        object.__setattr__(self, "levels", tuple(int(v) for v in levels))

    @property
    def num_codes(self) -> int:
        return int(np.prod(self.levels))

    @property
    def latent_dim(self) -> int:
        return len(self.levels)

    def weight_shapes(self) -> dict[str, tuple[int, ...]]:
        """Name -> shape of every weight: ``enc.k.w`` (in, out) and ``enc.k.b`` (out,), the same for ``dec``."""
        h, d = self.hidden, self.latent_dim
        shapes = {}
        for part, dims in (("enc", (PATCH_DIM, h, h, d)), ("dec", (d, h, h, PATCH_DIM))):
            for k in range(3):
                shapes[f"{part}.{k}.w"] = (dims[k], dims[k + 1])
                shapes[f"{part}.{k}.b"] = (dims[k + 1],)
        return shapes

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "fsq", "levels": list(self.levels), "hidden": self.hidden, "patch": PATCH}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "FSQConfig":
        if d.get("kind") != "fsq" or d.get("patch", PATCH) != PATCH:
            raise ValueError(f"Image tokenizer config must be kind 'fsq' with patch {PATCH}, got kind {d.get('kind')!r}, "
                             f"patch {d.get('patch')!r}")
        return cls(levels=tuple(d["levels"]), hidden=int(d["hidden"]))


def _mlp(x: np.ndarray, weights: Mapping[str, np.ndarray], part: str) -> np.ndarray:
    """Three linear layers with GELU between, in float64: (N, in) -> (N, out)."""
    for k in range(3):
        x = x @ weights[f"{part}.{k}.w"] + weights[f"{part}.{k}.b"]
        if k < 2:
            x = gelu_tanh(x)
    return x


class ImageTokenizer:
    """A trained FSQ image tokenizer: uint8 images <-> one code per 16x16 patch, in numpy.

    Args:
        config: levels and hidden width.
        weights: name -> array of every shape in ``config.weight_shapes()`` (kept as float32, run in float64).
        info: what training recorded (steps, data, reconstruction figures); saved with the tokenizer.

    Raises:
        ValueError: a weight is missing, unexpected, of the wrong shape or not finite.
    """

    def __init__(self, config: FSQConfig, weights: Mapping[str, np.ndarray], info: Mapping[str, Any] | None = None) -> None:
        shapes = config.weight_shapes()
        if set(weights) != set(shapes):
            raise ValueError(f"Image tokenizer weights must be {sorted(shapes)}; missing {sorted(set(shapes) - set(weights))}, "
                             f"unexpected {sorted(set(weights) - set(shapes))}")
        stored = {}
        for name, shape in shapes.items():
            w = np.asarray(weights[name], dtype=np.float32)
            if w.shape != shape or not np.isfinite(w).all():
                raise ValueError(f"Image tokenizer weight {name!r} must be finite with shape {shape}, got {w.shape}")
            stored[name] = w
        self.config = config
        self.weights = stored  # float32, what is saved and hashed
        self._w64 = {k: v.astype(np.float64) for k, v in stored.items()}
        self.info = dict(info or {})
        self.sha256 = self._digest()

    def _digest(self) -> str:
        h = hashlib.sha256(json.dumps(self.config.to_dict(), sort_keys=True).encode())
        for name in sorted(self.weights):
            h.update(name.encode())
            h.update(np.ascontiguousarray(self.weights[name]).tobytes())
        return h.hexdigest()

    def __repr__(self) -> str:
        return f"ImageTokenizer(levels={list(self.config.levels)}, hidden={self.config.hidden}, sha256={self.sha256[:16]})"

    @property
    def num_codes(self) -> int:
        return self.config.num_codes

    @staticmethod
    def codes_per_image(height: int, width: int) -> int:
        """Codes of one ``height x width`` image (its 16x16 patch grid, padded as the patches are)."""
        rows, cols = grid_shape(height, width)
        return rows * cols

    # ------------------------------------------------------------------ encode
    def latents(self, raw: np.ndarray) -> np.ndarray:
        """The encoder's float64 outputs (P, d) of uint8 patches (P, 16, 16, 3), before FSQ."""
        x = np.asarray(raw).reshape(-1, PATCH_DIM).astype(np.float64) / 127.5 - 1.0  # (P, 768) in [-1, 1]
        return _mlp(x, self._w64, "enc")

    def encode_patches(self, raw: np.ndarray) -> np.ndarray:
        """uint8 patches (P, 16, 16, 3) -> int64 codes (P,) in ``[0, num_codes)``."""
        levels = self.config.levels
        return fsq_index(np.round(fsq_bound(self.latents(raw), levels)).astype(np.int64), levels)

    def encode(self, images: np.ndarray, field: str = "image") -> np.ndarray:
        """uint8 images (T, H, W, C), C in {1, 3} -> int64 codes (T, n), raster order over the patch grid.

        Raises:
            ValueError: not uint8 (T, H, W, C) with C in {1, 3} (naming ``field``).
        """
        raw, pos = image_to_patches(images, field=field)  # (T, n, 16, 16, 3)
        t, n = raw.shape[:2]
        if t * n == 0:
            return np.zeros((t, n), np.int64)
        return self.encode_patches(raw.reshape(-1, PATCH, PATCH, 3)).reshape(t, n)

    # ------------------------------------------------------------------ decode
    def decode_patches(self, codes: np.ndarray) -> np.ndarray:
        """int codes (P,) -> uint8 reconstructed patches (P, 16, 16, 3).

        Raises:
            ValueError: a code outside ``[0, num_codes)``.
        """
        codes = np.asarray(codes, np.int64).reshape(-1)
        if codes.size and (codes.min() < 0 or codes.max() >= self.num_codes):
            raise ValueError(f"Image codes must be in [0, {self.num_codes}), got {codes.min()}..{codes.max()}")
        y = _mlp(fsq_values(codes, self.config.levels), self._w64, "dec")  # (P, 768) in about [-1, 1]
        return np.clip(np.round((y + 1.0) * 127.5), 0, 255).astype(np.uint8).reshape(-1, PATCH, PATCH, 3)

    def decode(self, codes: np.ndarray, height: int, width: int) -> np.ndarray:
        """int codes (T, n) of ``height x width`` images -> uint8 reconstructions (T, height, width, 3).

        Raises:
            ValueError: ``n`` is not the number of patches of such an image, or a code is out of range.
        """
        codes = np.asarray(codes)
        rows, cols = grid_shape(height, width)
        if codes.ndim != 2 or codes.shape[1] != rows * cols:
            raise ValueError(f"Codes of {height}x{width} images must have shape (T, {rows * cols}), got {codes.shape}")
        t = codes.shape[0]
        patches = self.decode_patches(codes).reshape(t, rows, cols, PATCH, PATCH, 3)
        images = patches.transpose(0, 1, 3, 2, 4, 5).reshape(t, rows * PATCH, cols * PATCH, 3)
        return np.ascontiguousarray(images[:, :height, :width])

    # -------------------------------------------------------------------- files
    def save(self, path: str | os.PathLike, extra_files: Mapping[str, bytes] | None = None) -> Path:
        """Write the tokenizer folder atomically (replacing one at ``path``), with ``extra_files`` (name -> bytes).

        Returns:
            The folder.
        """
        path = Path(path)
        with atomic_dir(path) as tmp:
            self.write_into(tmp)
            for name, data in (extra_files or {}).items():
                (tmp / name).write_bytes(data)
        return path

    def write_into(self, folder: str | os.PathLike) -> None:
        """Write the two files into a folder that is being filled as a whole (the temporary folder of
        :func:`~omnipolicy.files.atomic_dir`: :meth:`save`'s, a checkpoint's)."""
        folder = Path(folder)
        meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "config": self.config.to_dict(),
                "sha256": self.sha256, "info": self.info}
        with open(folder / WEIGHTS_FILE, "wb") as fh:
            np.savez(fh, **self.weights)
        (folder / CONFIG_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike) -> "ImageTokenizer":
        """Read a tokenizer folder written by :meth:`save`.

        Raises:
            FileNotFoundError: the folder or one of its two files is missing.
            ValueError: another format, damaged files, or weights whose SHA-256 differs from the recorded one.
        """
        path = Path(path)
        for name in (CONFIG_FILE, WEIGHTS_FILE):
            if not (path / name).is_file():
                raise FileNotFoundError(f"No image tokenizer at {path}: missing {name} (train one with "
                                        "`omnipolicy image-tokenizer train`)")
        try:
            meta = json.loads((path / CONFIG_FILE).read_text())
            if meta.get("format") != FORMAT or meta.get("format_version") != FORMAT_VERSION:
                raise ValueError(f"format {meta.get('format')!r} version {meta.get('format_version')!r}, expected "
                                 f"{FORMAT!r} version {FORMAT_VERSION}")
            with np.load(path / WEIGHTS_FILE, allow_pickle=False) as npz:
                weights = {k: npz[k] for k in npz.files}
            tokenizer = cls(FSQConfig.from_dict(meta["config"]), weights, meta.get("info"))
        except (ValueError, KeyError, OSError) as exc:
            raise ValueError(f"{path} is not a readable image tokenizer: {exc}") from exc
        if tokenizer.sha256 != meta.get("sha256"):
            raise ValueError(f"{path / WEIGHTS_FILE}: SHA-256 {tokenizer.sha256[:16]}... differs from the recorded "
                             f"{str(meta.get('sha256'))[:16]}...; the tokenizer is damaged")
        return tokenizer
