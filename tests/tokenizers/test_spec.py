"""check_observation: the one check of an observation against a TimestepSpec (policy and deploy use it)."""

from __future__ import annotations

import numpy as np
import pytest

from omnipolicy.tokenizers import FieldSpec, TimestepSpec, check_observation

SPEC = TimestepSpec(
    (FieldSpec("q", "continuous", (2,), "float32"), FieldSpec("mode", "discrete", (), "int64", n=3)),
    FieldSpec("action", "continuous", (1,), "float32", low=(-1.0,), high=(1.0,)),
)


def test_values_of_the_spec_kind_pass() -> None:
    check_observation(SPEC, {"q": np.zeros(2, np.float64), "mode": np.int32(2)})  # any width of the same kind


@pytest.mark.parametrize(
    ("obs", "error", "match"),
    [
        ({"q": np.zeros(2, np.float32)}, KeyError, r"robot: missing key 'mode'; expected keys \['mode', 'q'\], got \['q'\]"),
        ({"q": np.zeros(2, np.float32), "mode": 0, "x": 1}, KeyError, r"unexpected key 'x'"),
        ({"q": np.zeros(3, np.float32), "mode": 0}, ValueError, r"key 'q' expected shape \(2,\), got \(3,\)"),
        ({"q": np.zeros(2, np.int64), "mode": 0}, ValueError, r"key 'q' expected dtype float32 \(or another floating dtype\), got int64"),
        ({"q": np.zeros(2, np.float32), "mode": 0.0}, ValueError, r"key 'mode' expected dtype int64 \(or another integer dtype\), got float64"),
        ({"q": np.array([0.0, np.nan], np.float32), "mode": 0}, ValueError,
         r"robot: key 'q' expected finite values, got 1 NaN/inf value\(s\) \(first nan\): \[0.0, nan\]"),
    ],
)
def test_errors_name_the_key_what_was_expected_and_what_came(obs: dict, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        check_observation(SPEC, obs, where="robot")
