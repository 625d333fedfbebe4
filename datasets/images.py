"""PNG codec of image fields: lossless bytes of one frame, and the ``struct<bytes, path>`` column (the Hugging Face
``Image`` feature) that holds them."""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
import pyarrow as pa


def encode_png(image: np.ndarray) -> bytes:
    """Lossless PNG bytes of one uint8 (H, W, C) image, C in (1, 3)."""
    from PIL import Image  # on first use: stores without image fields never load PIL

    img = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def decode_png(data: bytes, shape: Sequence[int]) -> np.ndarray:
    """uint8 (H, W, C) array of PNG bytes (C from ``shape``)."""
    from PIL import Image  # on first use: stores without image fields never load PIL

    with Image.open(io.BytesIO(data)) as img:
        arr = np.asarray(img.convert("L" if shape[-1] == 1 else "RGB"))
    return arr.reshape(shape)


def image_column(frames: np.ndarray) -> pa.Array:
    """(T, H, W, C) uint8 frames -> ``struct<bytes, path>`` column of their PNG bytes (paths null)."""
    encoded = [encode_png(frame) for frame in frames]
    return pa.StructArray.from_arrays(
        [pa.array(encoded, pa.binary()), pa.nulls(len(encoded), pa.string())], names=["bytes", "path"]
    )
