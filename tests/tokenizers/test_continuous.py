"""Continuous and discrete values: golden ids, round trips, clipping, errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from omnipolicy.tokenizers import decode_continuous, encode_continuous, encode_discrete, mu_law_decode, mu_law_encode

GOLDEN = json.loads((Path(__file__).parent / "data" / "tokenizer_golden.json").read_text())
HALF_BIN = 1.0 / 1024  # bins are 2/1024 wide over [-1, 1]


def test_golden_mu_law_bins() -> None:
    cases = GOLDEN["mu_law"]
    x = np.array([c["x"] for c in cases])
    bins, clipped = encode_continuous(x)
    np.testing.assert_array_equal(bins, [c["bin"] for c in cases])
    assert clipped == sum(c["clipped"] for c in cases)
    np.testing.assert_allclose(mu_law_encode(x), [c["companded"] for c in cases], rtol=1e-13, atol=1e-300)


def test_golden_edges_named_in_the_issue() -> None:
    by_x = {c["x"]: c["bin"] for c in GOLDEN["mu_law"]}
    assert by_x[256.0] == 1023 and by_x[-256.0] == 0 and by_x[0.0] == 512
    bins, clipped = encode_continuous(np.array([256.0, -256.0, 0.0]))
    assert bins.tolist() == [1023, 0, 512] and clipped == 0


def test_golden_bounded_bins() -> None:
    for c in GOLDEN["bounded"]:
        bins, clipped = encode_continuous(np.array([c["x"]]), low=[c["low"]], high=[c["high"]])
        assert bins.tolist() == [c["bin"]], c
        assert clipped == int(c["clipped"]), c


def test_golden_decode() -> None:
    cases = GOLDEN["decode"]
    bins = np.array([c["bin"] for c in cases])
    np.testing.assert_allclose(decode_continuous(bins), [c["mu_law_value"] for c in cases], rtol=1e-12, atol=1e-15)
    for k in range(3):
        low, high = cases[0]["bounded"][k]["low"], cases[0]["bounded"][k]["high"]
        np.testing.assert_allclose(decode_continuous(bins, [low], [high]),
                                   [c["bounded"][k]["value"] for c in cases], rtol=1e-12, atol=1e-15)


def test_plus_one_is_last_bin_not_next_range() -> None:
    # The bug of public re-implementations: int((x + 1) * 512) puts +1 in bin 1024.
    bins, _ = encode_continuous(np.array([1.0, -1.0, 1.0 - 1e-16]), low=[-1.0], high=[1.0])
    assert bins.tolist() == [1023, 0, 1023]
    assert decode_continuous(np.array([1023]), [-1.0], [1.0])[0] == pytest.approx(1 - HALF_BIN)


def test_decode_returns_bin_centres() -> None:
    np.testing.assert_allclose(mu_law_encode(decode_continuous(np.arange(1024))),
                               -1 + (np.arange(1024) + 0.5) * 2 / 1024, atol=1e-12)


@settings(max_examples=200, deadline=None)
@given(hnp.arrays(np.float64, hnp.array_shapes(max_dims=3, max_side=6),
                  elements=st.one_of(st.floats(-1e308, 1e308), st.sampled_from([0.0, 1.0, -1.0, 256.0, -256.0]))))
def test_mu_law_round_trip_within_half_a_bin(x: np.ndarray) -> None:
    bins, clipped = encode_continuous(x)
    assert bins.shape == x.shape and bins.dtype == np.int64
    assert ((bins >= 0) & (bins < 1024)).all()
    assert clipped == int(np.count_nonzero(np.abs(x) > 256))
    back = decode_continuous(bins)
    # Within half a bin in the companded space, of the clipped input.
    err = np.abs(mu_law_encode(back) - np.clip(mu_law_encode(x), -1, 1))
    assert (err <= HALF_BIN * (1 + 1e-9)).all()
    # And the decoded value is in the same bin again.
    np.testing.assert_array_equal(encode_continuous(back)[0], bins)


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_bounded_round_trip_within_half_a_bin(data: st.DataObject) -> None:
    n = data.draw(st.integers(1, 5))
    low = np.array(data.draw(st.lists(st.floats(-1e3, 1e3), min_size=n, max_size=n)))
    width = np.array(data.draw(st.lists(st.floats(1e-3, 1e3), min_size=n, max_size=n)))
    high = low + width
    frac = data.draw(hnp.arrays(np.float64, (data.draw(st.integers(0, 7)), n), elements=st.floats(-0.5, 1.5)))
    x = low + frac * width
    bins, clipped = encode_continuous(x, low, high, element_ndim=1)
    assert clipped == int(np.count_nonzero((x < low) | (x > high)))
    back = decode_continuous(bins, low, high, element_ndim=1)
    assert (np.abs(back - np.clip(x, low, high)) <= width / 1024 * (1 + 1e-6) + 1e-9).all()


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_raises_naming_the_field(bad: float) -> None:
    with pytest.raises(ValueError, match=r"Field 'joint_pos': continuous values must be finite, got 1 NaN/inf value"):
        encode_continuous(np.array([0.0, bad, 1.0]), field="joint_pos")
    with pytest.raises(ValueError, match="Field 'act'"):
        encode_continuous(np.array([[0.0, bad]]), low=[-1, -1], high=[1, 1], field="act", element_ndim=1)


def test_decode_rejects_bins_out_of_range() -> None:
    with pytest.raises(ValueError, match=r"Continuous bin ids must be in \[0, 1024\), got 1024"):
        decode_continuous(np.array([3, 1024]))


def test_mu_law_inverse_is_exact_inverse() -> None:
    x = np.array([-256.0, -3.5, -1e-4, 0.0, 1e-4, 0.7, 256.0])
    np.testing.assert_allclose(mu_law_decode(mu_law_encode(x)), x, rtol=1e-12, atol=1e-15)
    assert math.copysign(1, mu_law_encode(np.array([-0.0]))[0]) == -1  # sign kept, still bin 512
    assert encode_continuous(np.array([-0.0]))[0].tolist() == [512]


# ---------------------------------------------------------------- discrete
@settings(max_examples=100, deadline=None)
@given(st.integers(1, 1024).flatmap(lambda n: st.tuples(
    st.just(n), hnp.arrays(st.sampled_from([np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16]),
                           hnp.array_shapes(min_dims=0, max_dims=3, max_side=5),
                           elements=st.integers(0, min(n - 1, 127))))))
def test_discrete_round_trip_exact(case) -> None:
    n, x = case
    ids = encode_discrete(x, n)
    assert ids.dtype == np.int64 and ids.shape == x.shape
    np.testing.assert_array_equal(ids, x)


@pytest.mark.parametrize(
    "value, n, match",
    [
        (-1, 1024, r"discrete value -1 is outside the allowed range \[0, 1024\)"),
        (1024, 1024, r"discrete value 1024 is outside the allowed range \[0, 1024\)"),
        (6, 6, r"discrete value 6 is outside the allowed range \[0, 6\)"),
        (2.5, 1024, r"discrete values must be whole numbers in \[0, 1024\), got 2.5"),
        (np.nan, 1024, r"discrete values must be whole numbers in \[0, 1024\), got nan"),
    ],
)
def test_discrete_errors(value, n, match) -> None:
    with pytest.raises(ValueError, match=r"Field 'buttons': " + match):
        encode_discrete(np.array([0, value]), n, field="buttons")


def test_discrete_accepts_whole_floats_and_bools() -> None:
    assert encode_discrete(np.array([0.0, 3.0])).tolist() == [0, 3]
    assert encode_discrete(np.array([True, False]), n=2).tolist() == [1, 0]
    with pytest.raises(ValueError, match="got dtype <U1"):
        encode_discrete(np.array(["a"]))
