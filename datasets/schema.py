"""Feature mapping: TimestepSpec field <-> LeRobot feature (``info.json["features"]``), the Arrow schema of the
data files, and numeric columns <-> numpy arrays."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

import numpy as np
import pyarrow as pa

from omnipolicy.tokenizers.spec import FieldSpec, TimestepSpec

DEFAULT_FEATURES: dict[str, dict] = {
    "timestamp": {"dtype": "float32", "shape": [1], "names": None},
    "frame_index": {"dtype": "int64", "shape": [1], "names": None},
    "episode_index": {"dtype": "int64", "shape": [1], "names": None},
    "index": {"dtype": "int64", "shape": [1], "names": None},
    "task_index": {"dtype": "int64", "shape": [1], "names": None},
}
STEP_FEATURES: dict[str, dict] = {
    "next.reward": {"dtype": "float32", "shape": [1], "names": None},
    "next.done": {"dtype": "bool", "shape": [1], "names": None},
}


def _safe(name: str) -> str:
    return name.replace("/", ".")


def feature_key(f: FieldSpec) -> str:
    """LeRobot feature name of one observation field (``observation.state``, ``observation.images.image``)."""
    return f"observation.images.{_safe(f.name)}" if f.kind == "image" else f"observation.{_safe(f.name)}"


def _feature(f: FieldSpec) -> dict:
    if f.kind == "image":
        return {"dtype": "image", "shape": list(f.shape), "names": ["height", "width", "channels"]}
    if f.kind == "text":
        return {"dtype": "string", "shape": [1], "names": None}
    return {"dtype": np.dtype(f.dtype).name, "shape": list(f.shape) or [1], "names": list(f.names) if f.names else None}


def spec_features(spec: TimestepSpec) -> tuple[dict[str, dict], dict[str, str]]:
    """LeRobot features of a task and the column of each observation field.

    Returns:
        ``(features, columns)``: feature key -> ``{dtype, shape, names}`` (observations, action, next.*, then
        LeRobot's default index features), and field name -> feature key (``"action"`` for the action).

    Raises:
        ValueError: two fields map to the same feature key.
    """
    features: dict[str, dict] = {}
    columns: dict[str, str] = {}
    for f in sorted(spec.observation, key=lambda f: f.name):
        key = feature_key(f)
        if key in features:
            raise ValueError(f"Observation fields {f.name!r} and another field both map to column {key!r}")
        features[key], columns[f.name] = _feature(f), key
    features["action"] = _feature(spec.action)
    columns["action"] = "action"
    features.update(json.loads(json.dumps(STEP_FEATURES)))
    features.update(json.loads(json.dumps(DEFAULT_FEATURES)))
    return features, columns


def _arrow_type(ft: dict) -> pa.DataType:
    if ft["dtype"] == "image":
        return pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    if ft["dtype"] == "string":
        return pa.string()
    t = pa.from_numpy_dtype(np.dtype(ft["dtype"]))
    if list(ft["shape"]) == [1]:
        return t
    for n in reversed(ft["shape"]):
        t = pa.list_(t, int(n))
    return t


def data_schema(features: Mapping[str, dict]) -> pa.Schema:
    """Arrow schema of the data files for LeRobot features."""
    return pa.schema([(k, _arrow_type(ft)) for k, ft in features.items()])


def tensor_column(values: np.ndarray, shape: Sequence[int]) -> pa.Array:
    """(T, *shape) -> scalar column when shape is () / (1,) else nested fixed-size lists."""
    values = np.ascontiguousarray(values)
    if len(shape) == 0 or list(shape) == [1]:
        return pa.array(values.reshape(len(values)))
    arr: pa.Array = pa.array(values.reshape(-1))
    for n in reversed(shape):
        arr = pa.FixedSizeListArray.from_arrays(arr, int(n))
    return arr


def column_to_numpy(col: pa.Array | pa.ChunkedArray, f: FieldSpec) -> np.ndarray:
    """Inverse of :func:`tensor_column` (with the field's exact dtype and shape); variable-length list columns (as
    other writers of LeRobot datasets make them) too.

    Raises:
        ValueError: the column does not hold ``shape``'s number of values per row.
    """
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    t = len(col)
    while pa.types.is_fixed_size_list(col.type) or pa.types.is_list(col.type) or pa.types.is_large_list(col.type):
        col = col.flatten()
    values = col.to_numpy(zero_copy_only=False)
    need = t * int(np.prod(f.shape))
    if values.size != need:
        raise ValueError(f"{values.size} values for {t} rows; shape {list(f.shape)} needs {need}")
    return values.astype(f.dtype, copy=False).reshape((t, *f.shape))
