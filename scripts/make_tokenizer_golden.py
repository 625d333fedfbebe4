"""Write tests/tokenizers/data/tokenizer_golden.json: tokenizer inputs and the ids Gato's formulas give.

Computed independently of ``omnipolicy.tokenizers``: this script imports
nothing from the package and evaluates the formulas of the paper (arXiv
2205.06175, section 2.1) in 60-digit decimal arithmetic:

- mu-law ``F(x) = sgn(x) ln(|x| mu + 1) / ln(M mu + 1)``, ``mu = 100``, ``M = 256``;
- clip to [-1, 1]; bin ``floor((F + 1) / 2 * 1024)``, with ``F = 1`` in bin 1023;
- decoding: bin centre ``-1 + (2 b + 1) / 1024``, inverse mu-law
  ``sgn(y) ((M mu + 1)^|y| - 1) / mu``;
- bounded mode: ``y = 2 (x - low) / (high - low) - 1``, then the same bins;
- images: ``(p / 255 * 2 - 1) / 4``.

Random inputs whose scaled value lies within 1e-9 of a bin edge are skipped
(float64 and exact arithmetic may legitimately disagree there); the fixed
inputs (0, +-1, +-256, ...) are always kept.

Usage: ``.venv/bin/python scripts/make_tokenizer_golden.py`` (deterministic).
"""

from __future__ import annotations

import json
import os
import random
import tempfile
from decimal import ROUND_FLOOR, Decimal, getcontext
from pathlib import Path

getcontext().prec = 60
MU, M, BINS = Decimal(100), Decimal(256), 1024
OUT = Path(__file__).resolve().parent.parent / "tests" / "tokenizers" / "data" / "tokenizer_golden.json"
EDGE = Decimal("1e-9")


def mu_law(x: Decimal) -> Decimal:
    if x == 0:
        return Decimal(0)
    f = (abs(x) * MU + 1).ln() / (M * MU + 1).ln()
    return f if x > 0 else -f


def bin_of(y: Decimal) -> tuple[int, Decimal]:
    """Bin of a value in [-1, 1] (after clipping) and its distance to the nearest edge."""
    y = min(max(y, Decimal(-1)), Decimal(1))
    scaled = (y + 1) * (BINS // 2)
    b = int(scaled.to_integral_value(rounding=ROUND_FLOOR))
    edge_dist = min(scaled - b, b + 1 - scaled)
    return min(max(b, 0), BINS - 1), edge_dist


def inverse_mu_law(y: Decimal) -> Decimal:
    if y == 0:
        return Decimal(0)
    v = ((M * MU + 1) ** abs(y) - 1) / MU
    return v if y > 0 else -v


def main() -> None:
    rng = random.Random(20250101)
    fixed = [0.0, 1e-12, -1e-12, 1e-6, -1e-6, 1e-3, -1e-3, 0.01, -0.01, 0.1, -0.1, 0.5, -0.5, 1.0, -1.0,
             2.0, -2.0, 10.0, -10.0, 100.0, -100.0, 255.9, -255.9, 256.0, -256.0, 256.0000001, 257.0, -257.0,
             1e6, -1e6, 1e300, -1e300, 5e-324, -5e-324]
    randoms = [rng.choice([-1, 1]) * 10 ** rng.uniform(-8, 3) for _ in range(200)] + [rng.uniform(-1, 1) for _ in range(50)]
    mu_cases = []
    for x in fixed + randoms:
        f = mu_law(Decimal(x))
        b, dist = bin_of(f)
        if x not in fixed and dist < EDGE:
            continue
        mu_cases.append({"x": x, "companded": float(f), "bin": b, "clipped": abs(x) > 256})

    bounded_cases = []
    bound_pairs = [(-1.0, 1.0), (0.0, 1.0), (-2.0, 2.0), (-0.25, 0.75), (-3.14159, 3.14159), (10.0, 20.0)]
    for low, high in bound_pairs:
        xs = [low, high, (low + high) / 2, low - 1.0, high + 1.0] + [rng.uniform(low, high) for _ in range(8)]
        for x in xs:
            y = 2 * (Decimal(x) - Decimal(low)) / (Decimal(high) - Decimal(low)) - 1
            b, dist = bin_of(y)
            if x not in (low, high, (low + high) / 2) and dist < EDGE:
                continue
            bounded_cases.append({"x": x, "low": low, "high": high, "bin": b, "clipped": not (low <= x <= high)})

    decode_bins = [0, 1, 2, 100, 255, 511, 512, 513, 768, 1000, 1021, 1022, 1023] + sorted(rng.sample(range(1024), 20))
    decode_cases = []
    for b in decode_bins:
        centre = Decimal(-1) + Decimal(2 * b + 1) / BINS
        decode_cases.append({"bin": b, "centre": float(centre), "mu_law_value": float(inverse_mu_law(centre)),
                             "bounded": [{"low": lo, "high": hi,
                                          "value": float((centre + 1) / 2 * (Decimal(hi) - Decimal(lo)) + Decimal(lo))}
                                         for lo, hi in bound_pairs[:3]]})

    pixels = [0, 1, 127, 128, 254, 255]
    image_cases = [{"pixel": p, "value": float((Decimal(p) / 255 * 2 - 1) / 4)} for p in pixels]

    layout_cases = []
    for text_size in (991, 1000, 32000):
        layout_cases.append({"text_size": text_size, "continuous": [text_size, text_size + 1024],
                             "discrete": [text_size + 1024, text_size + 2048],
                             "separator": text_size + 2048, "pad": text_size + 2049, "patch": text_size + 2050,
                             "vocab_size": text_size + 2051})

    golden = {
        "about": "Inputs and the ids Gato's formulas give (mu=100, M=256, 1024 bins), computed in 60-digit decimal "
                 "arithmetic by scripts/make_tokenizer_golden.py, independently of omnipolicy.tokenizers.",
        "mu_law": mu_cases,
        "bounded": bounded_cases,
        "decode": decode_cases,
        "image": image_cases,
        "layout": layout_cases,
    }
    text = json.dumps(golden, indent=1) + "\n"
    fd, tmp = tempfile.mkstemp(dir=OUT.parent, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, OUT)
    print(f"wrote {OUT}: {len(mu_cases)} mu-law, {len(bounded_cases)} bounded, {len(decode_cases)} decode, "
          f"{len(image_cases)} image, {len(layout_cases)} layout cases ({len(text)} bytes)")


if __name__ == "__main__":
    main()
