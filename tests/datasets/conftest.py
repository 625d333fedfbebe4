"""Fixtures of the dataset tests: a spec with every kind of field, episodes of it, and an exact comparison."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from omnipolicy.datasets import Episode
from omnipolicy.tokenizers import FieldSpec, TimestepSpec

EVERYTHING_SPEC = TimestepSpec(
    observation=(
        FieldSpec("image", "image", (20, 24, 3), "uint8"),
        FieldSpec("gray", "image", (16, 16, 1), "uint8"),
        FieldSpec("state", "continuous", (5,), "float64"),
        FieldSpec("grid", "discrete", (2, 3), "int64", n=7),
        FieldSpec("lives", "discrete", (), "int32", n=5),
        FieldSpec("instruction", "text", (), "str"),
    ),
    action=FieldSpec("action", "continuous", (2,), "float32", low=(-1.0, -1.0), high=(1.0, 1.0)),
)


def _make_episode(seed: int, length: int | None = None, task_id: str = "toy/everything-v0") -> Episode:
    rng = np.random.default_rng(seed)
    t = int(length or rng.integers(3, 12))
    return Episode(
        task_id=task_id,
        observations={
            "image": rng.integers(0, 256, (t, 20, 24, 3), dtype=np.uint8),
            "gray": rng.integers(0, 256, (t, 16, 16, 1), dtype=np.uint8),
            "state": rng.normal(size=(t, 5)),
            "grid": rng.integers(0, 7, (t, 2, 3)),
            "lives": rng.integers(0, 5, t).astype(np.int32),
            "instruction": [f"step {i} of épisode {seed}" for i in range(t)],
        },
        actions=rng.uniform(-1, 1, (t, 2)).astype(np.float32),
        rewards=rng.normal(size=t).astype(np.float32),
        success=bool(seed % 2),
        seed=seed,
        terminated=bool(seed % 3 == 0),
        spec=EVERYTHING_SPEC,
        instruction="Do everything at once.",
    )


def _assert_same(a: Episode, b: Episode) -> None:
    assert a.task_id == b.task_id and a.seed == b.seed and a.success == b.success and a.terminated == b.terminated
    assert set(a.observations) == set(b.observations)
    for f in EVERYTHING_SPEC.observation:
        x, y = a.observations[f.name], b.observations[f.name]
        if f.kind == "text":
            assert list(x) == list(y)
        else:
            assert y.dtype == np.dtype(f.dtype) and y.shape == np.asarray(x).shape, f.name
            np.testing.assert_array_equal(x, y)
    assert b.actions.dtype == np.float32
    np.testing.assert_array_equal(a.actions, b.actions)
    np.testing.assert_array_equal(np.asarray(a.rewards, np.float32), b.rewards)


@pytest.fixture()
def everything_spec() -> TimestepSpec:
    """Two images (RGB and one channel), a float64 vector, a discrete grid and scalar, and text."""
    return EVERYTHING_SPEC


@pytest.fixture()
def make_episode() -> Callable[..., Episode]:
    """``make_episode(seed, length=None, task_id="toy/everything-v0")``: a random episode of ``everything_spec``,
    the same for the same arguments (3 to 11 steps unless ``length`` is given)."""
    return _make_episode


@pytest.fixture()
def assert_same() -> Callable[[Episode, Episode], None]:
    """``assert_same(written, loaded)``: the episode came back with the same values, dtypes and shapes."""
    return _assert_same
