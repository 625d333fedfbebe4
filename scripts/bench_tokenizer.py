"""Benchmark: vectorised episode tokenization vs a per-timestep reference, on one core.

Workloads (synthetic data, generated before timing):

(a) Atari-like: ``image`` uint8 (84, 84, 3) frames, discrete action (n = 18).
(b) Meta-World-like: ``state`` (39,) float64, 4-dim continuous action bounded
    to [-1, 1].

For each, the vectorised :meth:`Tokenizer.tokenize_episode` and a
straightforward per-timestep reference (in this file: a Python loop over
timesteps doing the same numpy work on one timestep at a time) tokenize the
same episode; their outputs are checked equal, and timesteps/second and the
ratio are printed. Then 1,000,000 timesteps of (b) are tokenized in chunks and
timed. numpy runs on one thread and the process is pinned to one core.

Targets (issue 2): vectorised >= 20x the reference on (b); 1M timesteps of (b) < 10 s (with ``--total``
under 1M, the time is scaled to 1M). The last line of output is one JSON object with every figure; its
``targets`` rows give each target's figure, bound and whether it was met.

Usage: ``.venv/bin/python scripts/bench_tokenizer.py [--episode-len 1000] [--total 1000000] [--quick]``
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"  # before numpy is imported

import json
import platform
import sys
import time
from dataclasses import dataclass

import numpy as np
import tyro

from omnipolicy.tokenizers import FieldSpec, TimestepSpec, TokenizedEpisode, Tokenizer

ATARI = TimestepSpec((FieldSpec("image", "image", (84, 84, 3), "uint8"),),
                     FieldSpec("action", "discrete", (), "int64", n=18))
METAWORLD = TimestepSpec((FieldSpec("state", "continuous", (39,), "float64"),),
                         FieldSpec("action", "continuous", (4,), "float32", low=(-1.0,) * 4, high=(1.0,) * 4))


@dataclass(frozen=True)
class Args:
    episode_len: int = 1000
    """Timesteps per episode for the vectorised-vs-reference comparison."""
    total: int = 1_000_000
    """Timesteps of workload (b) for the throughput run."""
    chunk: int = 50_000
    """Timesteps per tokenize_episode call in the throughput run."""
    repeats: int = 3
    """Timing repeats; the best is reported."""
    seed: int = 0
    quick: bool = False
    """The quick profile of `make bench` (episodes of 200 timesteps, 200,000 timesteps of (b), 2 repeats); flags
    given with it still apply."""


QUICK = Args(episode_len=200, total=200_000, repeats=2, quick=True)


# ------------------------------------------------------------ the reference
def reference_tokenize(tok: Tokenizer, spec: TimestepSpec, observations: dict, actions: np.ndarray) -> dict:
    """One timestep at a time: what one would write first. Same outputs as tokenize_episode."""
    lay = tok.layout
    c_off, d_off = lay.continuous_offset, lay.discrete_offset
    log_denom = np.log1p(256.0 * 100.0)
    images = spec.fields("image")
    tensors = sorted((f for f in spec.observation if f.kind in ("continuous", "discrete")), key=lambda f: f.name)

    def bins(y):
        return np.clip(np.floor((np.clip(y, -1.0, 1.0) + 1.0) * 512.0).astype(np.int64), 0, 1023)

    def continuous(f: FieldSpec, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64).ravel()
        if not np.isfinite(x).all():
            raise ValueError(f"Field {f.name!r}: NaN/inf")
        if f.bounded:
            lo, hi = np.asarray(f.low), np.asarray(f.high)
            y = (x - lo) * (2.0 / (hi - lo)) - 1.0
        else:
            x = np.clip(x, -256.0, 256.0)
            y = np.sign(x) * np.log1p(np.abs(x) * 100.0) / log_denom
        return bins(y) + c_off

    def discrete(f: FieldSpec, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x).ravel()
        if (x < 0).any() or (x >= f.n).any():
            raise ValueError(f"Field {f.name!r}: out of range")
        return x.astype(np.int64) + d_off

    tokens, loss, patches, patch_pos = [], [], [], []
    for t in range(len(actions)):
        step, step_loss = [], []
        for f in images:
            img = observations[f.name][t]
            h, w, c = img.shape
            rows, cols = -(-h // 16), -(-w // 16)
            pad = np.zeros((rows * 16, cols * 16, c), np.uint8)
            pad[:h, :w] = img
            for r in range(rows):
                for q in range(cols):
                    p = pad[r * 16:(r + 1) * 16, q * 16:(q + 1) * 16]
                    if c == 1:
                        p = np.repeat(p, 3, axis=2)
                    patches.append(((p.astype(np.float32) / 255.0 * 2.0 - 1.0) / 4.0).transpose(2, 0, 1))
                    patch_pos.append((r, q))
                    step.append(lay.patch_id)
                    step_loss.append(False)
        for f in tensors:
            ids = (continuous if f.kind == "continuous" else discrete)(f, observations[f.name][t])
            step.extend(ids.tolist())
            step_loss.extend([False] * len(ids))
        step.append(lay.separator_id)
        step_loss.append(False)
        a = spec.action
        ids = (continuous if a.kind == "continuous" else discrete)(a, actions[t])
        step.extend(ids.tolist())
        step_loss.extend([True] * len(ids))
        tokens.extend(step)
        loss.extend(step_loss)
    return {
        "tokens": np.asarray(tokens, np.int32),
        "loss_mask": np.asarray(loss, bool),
        "patches": np.stack(patches) if patches else np.zeros((0, 3, 16, 16), np.float32),
        "patch_pos": np.asarray(patch_pos, np.int32).reshape(-1, 2),
    }


# ---------------------------------------------------------------- workloads
def make_episode(spec: TimestepSpec, t: int, rng: np.random.Generator) -> tuple[dict, np.ndarray]:
    if spec is ATARI:
        # Smooth-ish frames like a game screen: a few flat colours plus a moving block.
        frames = np.zeros((t, 84, 84, 3), np.uint8)
        frames[:, :, :, 0] = 144
        frames[:, 30:34, :, :] = 200
        for_rows = rng.integers(0, 80, t)
        frames[np.arange(t)[:, None], (for_rows[:, None] + np.arange(4)), 40] = 236
        return {"image": frames}, rng.integers(0, 18, t)
    state = rng.normal(scale=0.5, size=(t, 39))
    state[:, ::7] *= 400  # some entries outside [-256, 256]: exercise clipping
    return {"state": state}, rng.uniform(-1.05, 1.05, (t, 4)).astype(np.float32)


def best_time(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def check_equal(ep: TokenizedEpisode, ref: dict) -> None:
    np.testing.assert_array_equal(ep.tokens, ref["tokens"])
    np.testing.assert_array_equal(ep.loss_mask, ref["loss_mask"])
    np.testing.assert_allclose(ep.patches, ref["patches"], atol=1e-6)
    np.testing.assert_array_equal(ep.patch_pos, ref["patch_pos"])


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = tyro.cli(Args, args=argv, default=QUICK if "--quick" in argv else None)
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    tok = Tokenizer.default()
    rng = np.random.default_rng(args.seed)
    results: dict = {"episode_len": args.episode_len, "numpy": np.__version__, "python": platform.python_version(),
                     "cores": 1}
    for name, spec in (("atari", ATARI), ("metaworld", METAWORLD)):
        obs, actions = make_episode(spec, args.episode_len, rng)
        ep = tok.tokenize_episode(spec, obs, actions)
        check_equal(ep, reference_tokenize(tok, spec, obs, actions))
        t_vec = best_time(lambda: tok.tokenize_episode(spec, obs, actions), args.repeats)
        t_ref = best_time(lambda: reference_tokenize(tok, spec, obs, actions), args.repeats)
        r = {"tokens_per_timestep": ep.tokens_per_timestep, "vectorised_steps_per_s": args.episode_len / t_vec,
             "reference_steps_per_s": args.episode_len / t_ref, "speedup": t_ref / t_vec}
        results[name] = r
        print(f"({'a' if name == 'atari' else 'b'}) {name:9s} L={ep.tokens_per_timestep:3d}  "
              f"vectorised {r['vectorised_steps_per_s']:>12,.0f} steps/s   "
              f"reference {r['reference_steps_per_s']:>10,.0f} steps/s   speedup {r['speedup']:6.1f}x")
        if spec.fields("image"):  # what the token cache stores: uint8 patches, normalised at batch time
            t_raw = best_time(lambda: tok.tokenize_episode(spec, obs, actions, raw_patches=True), args.repeats)
            r["vectorised_raw_patches_steps_per_s"] = args.episode_len / t_raw
            print(f"    {name:9s} vectorised with raw uint8 patches {args.episode_len / t_raw:>12,.0f} steps/s")

    obs, actions = make_episode(METAWORLD, args.chunk, rng)
    tok.tokenize_episode(METAWORLD, obs, actions)  # warm up
    done, n_tokens, t0 = 0, 0, time.perf_counter()
    while done < args.total:
        n = min(args.chunk, args.total - done)
        ep = tok.tokenize_episode(METAWORLD, {"state": obs["state"][:n]}, actions[:n])
        n_tokens += ep.tokens.size
        done += n
    elapsed = time.perf_counter() - t0
    results["metaworld_total"] = {"timesteps": done, "tokens": n_tokens, "seconds": elapsed,
                                  "steps_per_s": done / elapsed, "chunk": args.chunk}
    per_million = elapsed * 1_000_000 / done
    results["targets"] = [
        {"figure": "(b) vectorised vs per-timestep reference", "value": results["metaworld"]["speedup"],
         "target": ">= 20", "met": results["metaworld"]["speedup"] >= 20},
        {"figure": f"(b) seconds per 1M timesteps (timed on {done:,})", "value": per_million,
         "target": "< 10", "met": per_million < 10.0},
    ]
    print(f"(b) {done:,} timesteps ({n_tokens:,} tokens) in {elapsed:.2f} s on one core "
          f"= {done / elapsed:,.0f} steps/s (chunks of {args.chunk:,})")
    print(json.dumps(results, sort_keys=True))


if __name__ == "__main__":
    main()
