"""Continuous values -> 1024 bins and back (Gato, section 2.1, bugs fixed).

Two modes, both ending in the same 1024 uniform bins over [-1, 1]:

- mu-law (unbounded values, e.g. proprioception):
  ``F(x) = sgn(x) log(|x| mu + 1) / log(M mu + 1)`` with ``mu = 100``,
  ``M = 256``, then clipped to [-1, 1] (so ``|x| > 256`` is clipped);
- bounded (values with known ``low``/``high``, e.g. action spaces):
  ``y = 2 (x - low) / (high - low) - 1``, clipped to [-1, 1].

Binning is ``floor((y + 1) / 2 * 1024)`` clamped to ``[0, 1023]``: ``y = -1``
is bin 0 and ``y = +1`` is bin 1023 (not 1024, the bug of public
re-implementations). Decoding returns the bin *centre* ``-1 + (b + 0.5) * 2 / 1024``
and inverts the mu-law (or the linear scaling), so a round trip lands within
half a bin (in the companded space) of the clipped input.

>>> bins, clipped = encode_continuous(np.array([-256.0, 0.0, 256.0, 1e6]))
>>> bins.tolist(), clipped
([0, 512, 1023, 1023], 1)
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from .vocab import NUM_BINS

MU: float = 100.0
"""Mu-law compression parameter (Gato: 100)."""
M: float = 256.0
"""Mu-law input scale (Gato: 256): |x| = M maps to exactly 1."""

_LOG_DENOM = math.log1p(M * MU)  # log(M mu + 1)


def _check_finite(x: np.ndarray, field: str) -> None:
    if not np.isfinite(x).all():
        bad = x[~np.isfinite(x)]
        idx = np.argwhere(~np.isfinite(x))[0].tolist()
        raise ValueError(
            f"Field {field!r}: continuous values must be finite, got {bad.size} NaN/inf value(s) "
            f"(first {bad[0].item()!r} at index {tuple(idx)})"
        )


def mu_law_encode(x: np.ndarray) -> np.ndarray:
    """``F(x) = sgn(x) log(|x| mu + 1) / log(M mu + 1)`` elementwise, float64, not clipped."""
    x = np.asarray(x, dtype=np.float64)
    with np.errstate(over="ignore"):  # |x| > 1.8e306: log1p(inf) = inf, the right limit
        return np.copysign(np.log1p(np.abs(x) * MU) / _LOG_DENOM, x)


def mu_law_decode(y: np.ndarray) -> np.ndarray:
    """Inverse of :func:`mu_law_encode`: ``sgn(y) ((M mu + 1)^|y| - 1) / mu``, float64."""
    y = np.asarray(y, dtype=np.float64)
    return np.copysign(np.expm1(np.abs(y) * _LOG_DENOM) / MU, y)


def _bounds(low: Sequence[float] | np.ndarray, high: Sequence[float] | np.ndarray, shape: tuple[int, ...]):
    """Broadcast flattened per-element bounds to the trailing ``shape`` of the data."""
    n = int(np.prod(shape, dtype=np.int64))
    lo = np.asarray(low, dtype=np.float64).ravel()
    hi = np.asarray(high, dtype=np.float64).ravel()
    if lo.size not in (1, n) or hi.size not in (1, n):
        raise ValueError(f"Bounds must have 1 or {n} elements for element shape {shape}, got low {lo.size}, high {hi.size}")
    return np.broadcast_to(lo, (n,)).reshape(shape), np.broadcast_to(hi, (n,)).reshape(shape)


def bins_from_unit(y: np.ndarray) -> np.ndarray:
    """Bin index (int64) of values already in [-1, 1]; +1 -> 1023, -1 -> 0."""
    b = np.floor((np.asarray(y, dtype=np.float64) + 1.0) * (NUM_BINS / 2)).astype(np.int64)
    return np.clip(b, 0, NUM_BINS - 1, out=b)


def bin_centres(bins: np.ndarray) -> np.ndarray:
    """Centre of each bin in [-1, 1] (float64)."""
    return (np.asarray(bins, dtype=np.float64) + 0.5) * (2.0 / NUM_BINS) - 1.0


def encode_continuous(
    x: np.ndarray,
    low: Sequence[float] | np.ndarray | None = None,
    high: Sequence[float] | np.ndarray | None = None,
    field: str = "value",
    element_ndim: int | None = None,
) -> tuple[np.ndarray, int]:
    """Bin continuous values.

    Args:
        x: values, any shape (float or int).
        low, high: per-element bounds for the bounded mode, flattened over the
            trailing ``element_ndim`` axes of ``x`` (scalars broadcast). ``None``:
            mu-law mode.
        field: field name used in error messages.
        element_ndim: how many trailing axes of ``x`` one element-wise bound
            covers (default: all axes when bounds are per-element, e.g.
            ``x.shape == (T, 4)`` with 4 bounds needs ``element_ndim=1``).

    Returns:
        ``(bins, clipped)``: int64 bin ids in ``[0, 1024)`` with ``x``'s shape,
        and the number of values outside the representable range that were
        clipped (``|x| > 256`` in mu-law mode, outside ``[low, high]`` in
        bounded mode).

    Raises:
        ValueError: a value is NaN or infinite (message names ``field``).
    """
    x = np.asarray(x)
    if x.dtype.kind not in "fiub":
        raise ValueError(f"Field {field!r}: continuous values must be a numeric array, got dtype {x.dtype}")
    x = x.astype(np.float64, copy=False)
    _check_finite(x, field)
    if low is None and high is None:
        # |F(x)| > 1 exactly when |x| > M, and F(M) == 1 exactly (same log1p above and below the
        # fraction bar), so clipping x to [-M, M] first is the same as clipping F(x) to [-1, 1].
        clipped = int(np.count_nonzero(np.abs(x) > M))
        y = mu_law_encode(np.clip(x, -M, M))
    elif low is None or high is None:
        raise ValueError(f"Field {field!r}: give both low and high or neither")
    else:
        ndim = x.ndim if element_ndim is None else element_ndim
        lo, hi = _bounds(low, high, x.shape[x.ndim - ndim:])
        clipped = int(np.count_nonzero((x < lo) | (x > hi)))
        y = (x - lo) * (2.0 / (hi - lo)) - 1.0
    np.clip(y, -1.0, 1.0, out=y)
    return bins_from_unit(y), clipped


def decode_continuous(
    bins: np.ndarray,
    low: Sequence[float] | np.ndarray | None = None,
    high: Sequence[float] | np.ndarray | None = None,
    element_ndim: int | None = None,
) -> np.ndarray:
    """Bin ids -> values (float64): bin centre, then inverse mu-law or inverse scaling.

    Args:
        bins: int bin ids in ``[0, 1024)``.
        low, high: the bounds used when encoding (bounded mode) or ``None`` (mu-law).
        element_ndim: as in :func:`encode_continuous`.

    Raises:
        ValueError: a bin id is outside ``[0, 1024)``.
    """
    bins = np.asarray(bins)
    if bins.size and (bins.min() < 0 or bins.max() >= NUM_BINS):
        bad = bins[(bins < 0) | (bins >= NUM_BINS)]
        raise ValueError(f"Continuous bin ids must be in [0, {NUM_BINS}), got {bad.ravel()[0].item()!r}")
    y = bin_centres(bins)
    if low is None and high is None:
        return mu_law_decode(y)
    ndim = bins.ndim if element_ndim is None else element_ndim
    lo, hi = _bounds(low, high, bins.shape[bins.ndim - ndim:])
    return (y + 1.0) * ((hi - lo) / 2.0) + lo
