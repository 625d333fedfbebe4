"""Discrete values (integers in ``[0, n)``, ``n <= 1024``) -> their own id range.

>>> encode_discrete(np.array([0, 5, 1023])).tolist()
[0, 5, 1023]
"""

from __future__ import annotations

import numpy as np

from .vocab import NUM_DISCRETE


def encode_discrete(x: np.ndarray, n: int = NUM_DISCRETE, field: str = "value") -> np.ndarray:
    """Check discrete values and return them as int64 value ids (before the layout offset).

    Args:
        x: integer array (bool, any int dtype, or floats holding whole numbers).
        n: number of valid values (``1 <= n <= 1024``).
        field: field name used in error messages.

    Returns:
        int64 array of ``x``'s shape with values in ``[0, n)``.

    Raises:
        ValueError: a value is negative, ``>= n``, not a whole number, or not finite;
            the message gives the value and the allowed range.
    """
    if not 1 <= n <= NUM_DISCRETE:
        raise ValueError(f"Field {field!r}: discrete n must be in [1, {NUM_DISCRETE}], got {n}")
    x = np.asarray(x)
    if x.dtype.kind == "f":
        ok = np.isfinite(x) & (x == np.floor(x))
        if not ok.all():
            raise ValueError(
                f"Field {field!r}: discrete values must be whole numbers in [0, {n}), got {x[~ok].ravel()[0].item()!r}"
            )
    elif x.dtype.kind not in "iub":
        raise ValueError(f"Field {field!r}: discrete values must be integers in [0, {n}), got dtype {x.dtype}")
    if x.size:
        bad = (x < 0) | (x >= n)
        if bad.any():
            raise ValueError(
                f"Field {field!r}: discrete value {x[bad].ravel()[0].item()!r} is outside the allowed range [0, {n})"
            )
    return x.astype(np.int64)
