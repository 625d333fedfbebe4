"""Benchmark: control-step latency of the KV-cached InferenceSession against two baselines.

Workload: a 64-token observation (63 continuous tokens and the separator) and
a 7-dimension continuous action per timestep, context 1024, the window full
of past timesteps (13 past timesteps of 71 tokens: 923 tokens, plus the
current 64 + 6 fed action tokens = 993). A control step is "observation
tokens in, action tokens out" and contains one prefill and 6 decode steps.

Measured in the same process, for each preset (random weights, seeded), the
contenders taking turns step after step (so a machine shared with other
processes loads them alike); wall-clock and the stepping thread's CPU time:

- ``session``: :class:`~omnipolicy.agent.inference.InferenceSession` at the
  full window (each timed step is rolled back afterwards, so every step sees
  the same 923-token history), plus a rolling run of whole episodes with its
  evictions (``rolling``: p50 / p99 / max over every step, and the rebuilds).
- ``naive``: a full recomputation of the window without a cache for each of
  the 7 action tokens (what a cache-less policy does).
- ``hf``: Hugging Face ``transformers`` GPT-2 of the same width, depth, heads,
  feed-forward and vocabulary, with its own ``past_key_values`` cache (a
  ``DynamicCache`` cropped back to the history after each step).

It also measures the machine's memory bandwidth (a large tensor copy) and
prints the bound it implies: a control step reads the weights at least once
per forward pass (1 prefill + 6 decodes = 7 passes), so
``bound = 7 * weight_bytes_per_token / bandwidth``; ``ratio = p50 / bound``.
The weights are the blocks, the final norm and the LM-head rows of the action
ids (the only logits the session computes). A second bound adds the KV cache
each pass reads at the full window (at context 1024 it is as large as the
weights of the CPU presets).

Targets (issue 5), CPU presets: session >= 5x faster than naive and >= 1.5x
faster than transformers at context 1024, p50 within 3x of the bandwidth
bound. GPU (``--preset gato-1.18b --device cuda``): p99 >= 50 steps/s, p50
within 2x of the HBM bound.

Usage: ``.venv/bin/python scripts/bench_inference.py [--preset cpu-tiny cpu-small] [--device cpu] [--quick]``.
The last line of output is one JSON object with every figure; its ``targets`` rows give each target's figure,
bound and whether it was met.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import os
import platform
import sys
import time
from dataclasses import dataclass

import numpy as np
import torch

from omnipolicy.agent.config import get_preset
from omnipolicy.agent.inference import InferenceSession, ObsTokens, SessionConfig
from omnipolicy.agent.model import GatoModel
from omnipolicy.tokenizers import Tokenizer


@dataclass(frozen=True)
class Args:
    preset: tuple[str, ...] = ("cpu-tiny", "cpu-small")
    """Model presets to benchmark (their context is set to --context)."""
    device: str = "cpu"
    """Torch device: cpu or cuda."""
    context: int = 1024
    """Context window in tokens."""
    obs_tokens: int = 64
    """Observation tokens per timestep (including the separator)."""
    action_dims: int = 7
    """Action tokens per timestep."""
    steps: int = 200
    """Timed control steps of the session at the full window (and of the transformers baseline)."""
    naive_steps: int = 5
    """Timed control steps of the naive recomputation (each costs 7 forwards over the window)."""
    rolling_steps: int = 300
    """Steps of the rolling run with evictions (0 to skip)."""
    evict_keep: float = 0.5
    """SessionConfig.evict_keep of the rolling run."""
    hf: bool = True
    """Run the transformers GPT-2 baseline."""
    threads: int = 1
    """torch threads on the CPU for every contender (0: torch's default). One by default: on a small shared
    machine a second thread waits for a core held by other processes and slows small models down many times."""
    seed: int = 0
    quick: bool = False
    """The quick profile of `make bench` (40 timed steps, 2 naive steps, 60 rolling steps); flags given with it
    still apply."""


QUICK = Args(steps=40, naive_steps=2, rolling_steps=60, quick=True)


# --------------------------------------------------------------- utilities
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def percentiles(times_s: list[float]) -> dict[str, float]:
    """p50 / p99 / max / mean in milliseconds."""
    ms = np.asarray(times_s) * 1e3
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)),
            "max_ms": float(ms.max()), "mean_ms": float(ms.mean()), "n": len(ms)}


def memory_bandwidth(device: torch.device, nbytes: int, repeats: int = 5) -> float:
    """Bytes per second of a large device-local copy (read + write counted)."""
    n = nbytes // 4
    a = torch.ones(n, dtype=torch.float32, device=device)
    b = torch.empty_like(a)
    b.copy_(a)
    best = float("inf")
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        b.copy_(a)
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * n * 4 / best


class Workload:
    """Seeded token streams: ``history`` past timesteps and fresh observations."""

    def __init__(self, layout, obs_tokens: int, action_dims: int, seed: int) -> None:
        self.lay, self.L, self.A = layout, obs_tokens, action_dims
        self.rng = np.random.default_rng(seed)
        lo = layout.continuous_offset
        self.ranges = np.array([[lo, lo + layout.num_bins]] * action_dims, dtype=np.int64)

    def obs(self) -> np.ndarray:
        """int64 (L,): L-1 continuous tokens and the separator."""
        bins = self.rng.integers(0, self.lay.num_bins, self.L - 1) + self.lay.continuous_offset
        return np.concatenate([bins, [self.lay.separator_id]]).astype(np.int64)

    def timestep(self) -> np.ndarray:
        """int64 (L + A,): an observation and an action."""
        act = self.rng.integers(0, self.lay.num_bins, self.A) + self.lay.continuous_offset
        return np.concatenate([self.obs(), act])


# ------------------------------------------------------------- contenders
class SessionContender:
    """The KV-cached session at the full window: each step is rolled back (untimed) afterwards."""

    name = "session"

    def __init__(self, model: GatoModel, work: Workload, history: list[np.ndarray], device, evict_keep: float) -> None:
        self.work = work
        self.sess = InferenceSession(model, SessionConfig(num_envs=1, evict_keep=evict_keep), device=device)
        self.sess.append([[ObsTokens(t) for t in history]])
        self.window_tokens = int(self.sess.num_tokens[0]) + work.L + work.A - 1

    def step(self, obs: np.ndarray) -> np.ndarray:
        return self.sess.step([ObsTokens(obs)], self.work.ranges).action_tokens[0]

    def after(self) -> None:
        self.sess.rollback(1)


class NaiveContender:
    """No cache: the whole window is recomputed for each of the action tokens."""

    name = "naive"

    def __init__(self, model: GatoModel, work: Workload, history: list[np.ndarray], device) -> None:
        self.model, self.work, self.device = model, work, device
        self.hist = torch.from_numpy(np.concatenate(history)).to(device)
        self.hist_loc = torch.from_numpy(np.concatenate([np.arange(len(t)) for t in history])).to(device)
        self.no_patches = torch.zeros((0, 3, 16, 16), device=device, dtype=next(model.parameters()).dtype)
        self.no_pos = torch.zeros((0, 2), dtype=torch.long, device=device)

    @torch.inference_mode()
    def step(self, obs: np.ndarray) -> np.ndarray:
        tok = torch.cat([self.hist, torch.from_numpy(obs).to(self.device)])[None]
        loc = torch.cat([self.hist_loc, torch.arange(len(obs), device=self.device)])[None]
        for lo, hi in self.work.ranges:
            h = self.model(tok, loc, torch.full_like(tok, -1), self.no_patches, self.no_pos)  # (1, n, D): the whole window
            choice = self.model.logits(h[:, -1]).float()[:, lo:hi].argmax(-1) + int(lo)
            tok = torch.cat([tok, choice[:, None]], dim=1)
            loc = torch.cat([loc, loc[:, -1:] + 1], dim=1)
        return tok[0, -len(self.work.ranges):].cpu().numpy()

    def after(self) -> None:
        pass


class HFContender:
    """transformers GPT-2 of the same shape with its own cache (a DynamicCache cropped back after each step)."""

    name = "hf"

    def __init__(self, model: GatoModel, work: Workload, history: list[np.ndarray], device, dtype, seed: int) -> None:
        import transformers
        from transformers import DynamicCache, GPT2Config, GPT2LMHeadModel

        c = model.cfg
        hf_cfg = GPT2Config(vocab_size=c.vocab_size, n_positions=c.context, n_embd=c.n_embd, n_layer=c.n_layer,
                            n_head=c.n_head, n_inner=c.d_ff, activation_function="gelu_new", resid_pdrop=0.0,
                            embd_pdrop=0.0, attn_pdrop=0.0, tie_word_embeddings=True, bos_token_id=None, eos_token_id=None)
        torch.manual_seed(seed)
        with device:  # initialise on the device (a 1B model initialises slowly on the CPU)
            self.gpt = GPT2LMHeadModel._from_config(hf_cfg, attn_implementation="sdpa").to(dtype=dtype).eval()
        self.version = transformers.__version__
        self.params = sum(p.numel() for p in self.gpt.parameters())
        self.work, self.device = work, device
        # transformers 5.x calls the cache argument `cache` (and crops by a negative count); 4.x `past_key_values`
        self.cache_kw = "cache" if "cache" in inspect.signature(self.gpt.forward).parameters else "past_key_values"
        hist = torch.from_numpy(np.concatenate(history)).to(device)[None]
        self.n_hist = hist.shape[1]
        self.cache = DynamicCache()
        with torch.inference_mode():
            self.gpt(hist, use_cache=True, **{self.cache_kw: self.cache})

    @torch.inference_mode()
    def step(self, obs: np.ndarray) -> np.ndarray:
        x, pos, chosen = torch.from_numpy(obs).to(self.device)[None], self.n_hist, []
        for lo, hi in self.work.ranges:
            ids = torch.arange(pos, pos + x.shape[1], device=self.device)[None]
            logits = self.gpt(x, use_cache=True, position_ids=ids, logits_to_keep=1, **{self.cache_kw: self.cache}).logits
            x = logits[:, -1].float()[:, lo:hi].argmax(-1, keepdim=True) + int(lo)
            chosen.append(x)
            pos += ids.shape[1]
        return torch.cat(chosen, 1)[0].cpu().numpy()

    def after(self) -> None:
        extra = self.cache.get_seq_length() - self.n_hist
        try:
            self.cache.crop(-extra)
        except ValueError:
            self.cache.crop(self.n_hist)


def interleaved(contenders: list, work: Workload, args: Args, device) -> dict[str, dict]:
    """Time the contenders in turn, round after round, so that all of them meet the same machine load.

    Returns:
        name -> {"full_window": wall-clock percentiles, "thread_cpu": CPU time of the stepping thread}.
    """
    wall = {c.name: [] for c in contenders}
    cpu = {c.name: [] for c in contenders}
    warm, obs = 10, [work.obs() for _ in range(16)]
    every = max(1, args.steps // max(args.naive_steps, 1))  # a few naive steps (one warm-up), spread over the run
    for i in range(args.steps + warm):
        for c in contenders:
            if c.name == "naive" and not (i >= warm - 1 and (i - warm + 1) % every == 0
                                          and len(wall["naive"]) <= args.naive_steps):
                continue
            _sync(device)
            t0, c0 = time.perf_counter(), time.thread_time()
            c.step(obs[i % len(obs)])
            _sync(device)
            wall[c.name].append(time.perf_counter() - t0)
            cpu[c.name].append(time.thread_time() - c0)
            c.after()
    out = {}
    for c in contenders:
        skip = 1 if c.name == "naive" else warm
        out[c.name] = {"full_window": percentiles(wall[c.name][skip:]), "thread_cpu": percentiles(cpu[c.name][skip:])}
    return out


def rolling(model: GatoModel, work: Workload, args: Args, device) -> dict:
    """Whole episodes from an empty window with evictions: every step's latency and the rebuild steps'."""
    sess = InferenceSession(model, SessionConfig(num_envs=1, evict_keep=args.evict_keep), device=device)
    obs = [work.obs() for _ in range(16)]
    times, rebuild_times = [], []
    for i in range(args.rolling_steps):
        _sync(device)
        t0 = time.perf_counter()
        r = sess.step([ObsTokens(obs[i % len(obs)])], work.ranges)
        dt = time.perf_counter() - t0
        times.append(dt)
        if r.rebuilt:
            rebuild_times.append(dt)
    return percentiles(times[5:] if len(times) > 10 else times) | {
        "evict_keep": args.evict_keep,
        "rebuild_steps": len(rebuild_times),
        "rebuild_step_p50_ms": float(np.median(rebuild_times) * 1e3) if rebuild_times else None,
    }


def run_preset(name: str, args: Args, layout, device: torch.device) -> dict:
    cfg = dataclasses.replace(get_preset(name), context=args.context).with_vocab(layout.vocab_size)
    torch.manual_seed(args.seed)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    with device:
        model = GatoModel(cfg).to(dtype).eval()
    work = Workload(layout, args.obs_tokens, args.action_dims, args.seed)
    step_len = args.obs_tokens + args.action_dims
    n_hist = (args.context - (step_len - 1)) // step_len  # past timesteps that leave room for the current one
    history = [work.timestep() for _ in range(n_hist)]
    res = {"preset": name, "params": model.num_params(), "dtype": str(dtype).replace("torch.", ""),
           "history_timesteps": n_hist}
    print(f"\n== {name}: {model.num_params():,d} parameters, {res['dtype']}, {n_hist} past timesteps of {step_len} tokens")
    session = SessionContender(model, work, history, device, args.evict_keep)
    contenders = [session, NaiveContender(model, work, history, device)]
    if args.hf:
        try:
            contenders.append(HFContender(model, work, history, device, dtype, args.seed))
        except ImportError as e:
            print(f"hf gpt2   skipped: {e} (pip install transformers)")
    timed = interleaved(contenders, work, args, device)
    res["session"] = timed["session"] | {"window_tokens": session.window_tokens,
                                         "weight_bytes_per_token": session.sess.weight_bytes_per_token(),
                                         "cuda_graphs": len(session.sess._graphs)}
    res["naive"] = timed["naive"]
    for c in contenders:
        t = timed[c.name]
        graphs = f", {len(session.sess._graphs)} CUDA graphs" if session.sess._graphs else ""
        extra = f"  (window {session.window_tokens} tokens{graphs})" if c.name == "session" else ""
        if c.name == "hf":
            res["hf"] = t | {"version": c.version, "params": c.params}
            extra = f"  (transformers {c.version}, {c.params:,d} parameters)"
        print(f"{c.name:<9} p50 {t['full_window']['p50_ms']:8.2f} ms  p99 {t['full_window']['p99_ms']:8.2f} ms"
              f"  thread CPU p50 {t['thread_cpu']['p50_ms']:8.2f} ms{extra}")
    if args.rolling_steps:
        r = res["session"]["rolling"] = rolling(model, work, args, device)
        print(f"rolling   p50 {r['p50_ms']:8.2f} ms  p99 {r['p99_ms']:8.2f} ms  max {r['max_ms']:.2f} ms "
              f"({r['rebuild_steps']} rebuild steps, p50 {r['rebuild_step_p50_ms'] or 0:.2f} ms, evict_keep {r['evict_keep']})")
    return res


def main(argv: list[str] | None = None) -> None:
    import tyro

    argv = sys.argv[1:] if argv is None else argv
    run(tyro.cli(Args, args=argv, default=QUICK if "--quick" in argv else None))


def run(args: Args) -> dict:
    """Benchmark every preset of ``args``; print the tables and the JSON line; return the figures."""
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda asked for but torch.cuda.is_available() is False")
    if args.threads:
        torch.set_num_threads(args.threads)
    layout = Tokenizer.default().layout
    bw = memory_bandwidth(device, 1 << 30 if device.type == "cuda" else 1 << 28)
    machine = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{platform.processor() or platform.machine()} x{torch.get_num_threads()} threads"
    print(f"machine: {machine}; memory bandwidth (copy) {bw / 1e9:.1f} GB/s")
    results = {"bench": "inference", "device": args.device, "machine": machine, "bandwidth_GBps": bw / 1e9,
               "threads": torch.get_num_threads(), "loadavg_start": os.getloadavg(),
               "context": args.context, "obs_tokens": args.obs_tokens, "action_dims": args.action_dims, "presets": {},
               "targets": []}
    for name in args.preset:
        res = run_preset(name, args, layout, device)
        s50 = res["session"]["full_window"]["p50_ms"]
        s99 = res["session"]["full_window"]["p99_ms"]
        bound_ms = args.action_dims * res["session"]["weight_bytes_per_token"] / bw * 1e3
        res["bound_ms"] = bound_ms
        res["ratio_to_bound"] = s50 / bound_ms
        # the same with the KV cache a pass reads at the full window (keys and values of every layer)
        cfg = dataclasses.replace(get_preset(name), context=args.context)
        elem = 2 if device.type == "cuda" else 4
        kv_bytes = 2 * cfg.n_layer * res["session"]["window_tokens"] * cfg.n_embd * elem
        res["kv_bytes_per_token"] = kv_bytes
        res["bound_with_kv_ms"] = args.action_dims * (res["session"]["weight_bytes_per_token"] + kv_bytes) / bw * 1e3
        res["ratio_to_bound_with_kv"] = s50 / res["bound_with_kv_ms"]
        if device.type == "cpu":
            res["ratio_to_bound_thread_cpu"] = res["session"]["thread_cpu"]["p50_ms"] / bound_ms
        res["speedup_vs_naive"] = res["naive"]["full_window"]["p50_ms"] / s50
        res["steps_per_s_p99"] = 1e3 / s99
        cpu_note = f" (thread CPU time {res['ratio_to_bound_thread_cpu']:.2f}x)" if "ratio_to_bound_thread_cpu" in res else ""
        print(f"bandwidth bound {bound_ms:.2f} ms/step ({args.action_dims} passes x "
              f"{res['session']['weight_bytes_per_token'] / 1e6:.1f} MB / {bw / 1e9:.1f} GB/s); session p50 = "
              f"{res['ratio_to_bound']:.2f}x bound{cpu_note}; {res['speedup_vs_naive']:.1f}x faster than naive", end="")
        if "hf" in res:
            res["speedup_vs_hf"] = res["hf"]["full_window"]["p50_ms"] / s50
            res["speedup_vs_hf_thread_cpu"] = res["hf"]["thread_cpu"]["p50_ms"] / res["session"]["thread_cpu"]["p50_ms"]
            print(f"; {res['speedup_vs_hf']:.2f}x faster than transformers", end="")
        print(f"; p99 {res['steps_per_s_p99']:.0f} steps/s; weights+KV bound {res['bound_with_kv_ms']:.2f} ms "
              f"({res['ratio_to_bound_with_kv']:.2f}x)")
        if device.type == "cuda":
            rows = [(f"{name} control steps/s at p99", res["steps_per_s_p99"], ">=", 50.0),
                    (f"{name} p50 / HBM bound", res["ratio_to_bound"], "<=", 2.0)]
        else:
            rows = [(f"{name} session vs naive recomputation", res["speedup_vs_naive"], ">=", 5.0),
                    (f"{name} session vs transformers GPT-2", res.get("speedup_vs_hf"), ">=", 1.5),  # None: not run
                    (f"{name} p50 / bandwidth bound", res["ratio_to_bound"], "<=", 3.0)]
        for figure, value, op, bound in rows:
            met = value is not None and (value >= bound if op == ">=" else value <= bound)
            results["targets"].append({"figure": figure, "value": value, "target": f"{op} {bound:g}", "met": bool(met)})
        res["meets_targets"] = all(row["met"] for row in results["targets"][-len(rows):])
        results["presets"][name] = res
    results["loadavg_end"] = os.getloadavg()
    print(json.dumps(results, sort_keys=True))
    return results


if __name__ == "__main__":
    main()
