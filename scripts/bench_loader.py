"""Training windows per second: the packed token cache vs decoding the parquet store per sample.

The baseline loads windows the way LeRobot's ``LeRobotDataset.__getitem__`` serves frames: the parquet data
is opened once (Arrow, memory-mapped), and each sample decodes its rows (PNG -> uint8, vectors -> numpy), then
the tokenizer turns the window's timesteps into tokens and the batch is assembled. The cache path is
:class:`~omnipolicy.datasets.WindowLoader` over a :class:`~omnipolicy.datasets.TokenCache` (memory-mapped,
vectorised gathers). Both produce the same batch dict for the same kind of windows (context tokens from a
timestep boundary).

Data: synthetic episodes written to a real store: an Atari-like pixel task (84x84x3 frames, discrete
action) and a Meta-World-like state task (39 floats + an instruction, 4 bounded actions).

The video path (issue 18): a LeRobot dataset with an mp4 camera, written by LeRobot's own code in
``.venv-lerobot`` (``scripts/make_lerobot_fixture.py`` with a larger textured camera) where that environment
exists and the profile is not ``--quick``, else the committed fixture ``tests/data/lerobot_so101_v30``. It
measures ``import_lerobot`` once (video decoding, resizing and PNG encoding into the store: frames/s), training
windows/s from the imported store through the token cache at the training preset's context, LeRobot's own
per-sample loading (``LeRobotDataset.__getitem__``, pyav backend, run in ``.venv-lerobot``) in the same unit,
timesteps/s, and what training consumes: a few optimizer steps of the preset on those windows, in timesteps/s.

    .venv/bin/python scripts/bench_loader.py          target: >= 10x; ends with one JSON line.
    .venv/bin/python scripts/bench_loader.py --quick  the profile `make bench` runs
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
import tyro

from omnipolicy.agent import GatoModel, TrainConfig, get_preset
from omnipolicy.agent.train import LossModule, accumulate_gradients, make_optimizer
from omnipolicy.datasets import Episode, EpisodeStore, TokenCache, WindowLoader
from omnipolicy.datasets.images import decode_png
from omnipolicy.datasets.lerobot import import_lerobot
from omnipolicy.tokenizers import FieldSpec, TimestepSpec, Tokenizer, normalize_patches

PIXELS = TimestepSpec((FieldSpec("image", "image", (84, 84, 3), "uint8"),), FieldSpec("action", "discrete", (1,), "int64", n=6))
STATE = TimestepSpec(
    (FieldSpec("state", "continuous", (39,), "float32"), FieldSpec("instruction", "text", (), "str")),
    FieldSpec("action", "continuous", (4,), "float32", low=(-1.0,) * 4, high=(1.0,) * 4),
)
REPO = Path(__file__).resolve().parents[1]
LEROBOT_PYTHON = REPO / ".venv-lerobot" / "bin" / "python"
LEROBOT_FIXTURE = REPO / "tests" / "data" / "lerobot_so101_v30"


@dataclass(frozen=True)
class Args:
    episodes: int = 12
    """Episodes per task."""
    steps: int = 300
    """Timesteps per episode."""
    context: int = 1024
    """Tokens per window."""
    batch_size: int = 16
    """Windows per batch."""
    seconds: float = 5.0
    """Approximate seconds per measurement."""
    video: bool = True
    """Measure the video path (a LeRobot dataset with an mp4 camera)."""
    lerobot: bool = True
    """Where .venv-lerobot exists: write the video dataset with LeRobot's own code and time LeRobot's per-sample
    loading (else the committed fixture, and no LeRobot figure)."""
    video_size: tuple[int, int] = (240, 320)
    """(height, width) of the LeRobot-written dataset's video camera."""
    video_lengths: tuple[int, ...] = (100, 100, 100)
    """Frames per episode of the LeRobot-written dataset."""
    import_size: tuple[int, int] = (96, 96)
    """(height, width) every camera is resized to at import (`omnipolicy dataset import --image-size`)."""
    preset: str = "cpu-tiny"
    """Training preset whose context the video windows take and whose training steps measure consumption."""
    train_steps: int = 4
    """Timed training steps (after one untimed) for what training consumes."""
    quick: bool = False
    """The quick profile of `make bench` (6 episodes of 150 timesteps per task, 1.5 s per measurement, the committed
    LeRobot fixture, no LeRobot loader, 1 timed training step); flags given with it still apply."""


QUICK = Args(episodes=6, steps=150, seconds=1.5, lerobot=False, train_steps=1, quick=True)


def _frames(rng: np.random.Generator, t: int) -> np.ndarray:
    """Game-like frames: flat background, a moving paddle and ball, a little noise (PNG-compressible)."""
    img = np.full((t, 84, 84, 3), 40, np.uint8)
    pos = (np.cumsum(rng.integers(-2, 3, t)) % 70).astype(int)
    for i in range(t):
        img[i, pos[i] : pos[i] + 12, 4:8] = 200
        img[i, (2 * pos[i]) % 80 : (2 * pos[i]) % 80 + 3, (3 * i) % 80 : (3 * i) % 80 + 3] = 255
    img += rng.integers(0, 3, img.shape, dtype=np.uint8)
    return img


def make_stores(root: Path, episodes: int, steps: int) -> list[EpisodeStore]:
    rng = np.random.default_rng(0)
    pix, st = EpisodeStore(root / "atari-like"), EpisodeStore(root / "metaworld-like")
    pix.append_episodes([
        Episode("bench/pixels-v0", {"image": _frames(rng, steps)}, rng.integers(0, 6, (steps, 1)), rng.normal(size=steps), seed=e, spec=PIXELS)
        for e in range(episodes)
    ])
    st.append_episodes([
        Episode("bench/state-v0", {"state": rng.normal(size=(steps, 39)).astype(np.float32), "instruction": ["Push the puck to the goal."] * steps},
                rng.uniform(-1, 1, (steps, 4)).astype(np.float32), rng.normal(size=steps), seed=e, spec=STATE)
        for e in range(episodes)
    ])
    for s in (pix, st):
        s.close()
    return [EpisodeStore(root / "atari-like"), EpisodeStore(root / "metaworld-like")]


class ParquetWindows:
    """Per-sample decoding from the parquet store, then tokenizing (the LeRobot-style baseline)."""

    def __init__(self, stores: list[EpisodeStore], tok: Tokenizer, context: int, batch_size: int, seed: int = 0,
                 only: int | None = None) -> None:
        self.tok, self.context, self.batch_size, self.only = tok, context, batch_size, only
        self.rng = np.random.default_rng(seed)
        self.items = []  # (table, spec, columns, episode rows, tokens per timestep)
        for s in stores:
            table = pa.concat_tables([pq.read_table(p, memory_map=True) for p in s.data_files()])
            tid = s.task_ids[0]
            spec = s.timestep_spec(tid)
            L = tok.tokenize_episode(spec, s.load_episode(0).observations, s.load_episode(0).actions).tokens_per_timestep
            meta = s.episode_table()
            bounds = list(zip(meta["dataset_from_index"].to_pylist(), meta["dataset_to_index"].to_pylist()))
            self.items.append((table, spec, s.info["omnipolicy"]["tasks"][tid]["columns"], bounds, L))

    def window(self, task: int) -> dict[str, np.ndarray]:
        table, spec, columns, bounds, L = self.items[task]
        lo, hi = bounds[int(self.rng.integers(len(bounds)))]
        need = -(-self.context // L)
        start = lo + int(self.rng.integers(0, max(1, hi - lo - need + 1)))
        rows = table.slice(start, min(need, hi - start))
        obs = {}
        for f in spec.observation:
            col = rows[columns[f.name]]
            if f.kind == "image":
                obs[f.name] = np.stack([decode_png(d["bytes"], f.shape) for d in col.to_pylist()])
            elif f.kind == "text":
                obs[f.name] = col.to_pylist()
            else:
                obs[f.name] = np.asarray(col.to_pylist(), dtype=f.dtype).reshape(len(rows), *f.shape)
        actions = np.asarray(rows["action"].to_pylist(), dtype=spec.action.dtype).reshape(len(rows), *spec.action.shape)
        ep = self.tok.tokenize_episode(spec, obs, actions, raw_patches=True)
        n = min(self.context, len(ep.tokens))
        return {"tokens": ep.tokens[:n], "loss": ep.loss_mask[:n], "pos": ep.local_pos[:n], "patches": ep.patches, "patch_pos": ep.patch_pos}

    def sample(self) -> dict[str, np.ndarray]:
        B, S = self.batch_size, self.context
        pad = self.tok.layout.pad_id
        tokens = np.full((B, S), pad, np.int64)
        loss = np.zeros((B, S), bool)
        pos = np.zeros((B, S), np.int64)
        pidx = np.full((B, S), -1, np.int64)
        task = self.rng.integers(0, len(self.items), B) if self.only is None else np.full(B, self.only)
        patches, ppos = [], []
        n_patch = 0
        for b in range(B):
            w = self.window(int(task[b]))
            n = len(w["tokens"])
            tokens[b, :n], loss[b, :n], pos[b, :n] = w["tokens"], w["loss"], w["pos"]
            is_patch = np.flatnonzero(w["tokens"] == self.tok.layout.patch_id)
            pidx[b, is_patch] = n_patch + np.arange(len(is_patch))
            patches.append(w["patches"][: len(is_patch)])
            ppos.append(w["patch_pos"][: len(is_patch)])
            n_patch += len(is_patch)
        return {"tokens": tokens, "loss_mask": loss, "local_pos": pos, "patch_index": pidx,
                "patches": normalize_patches(np.concatenate(patches)), "patch_pos": np.concatenate(ppos).astype(np.int64),
                "task_index": task.astype(np.int64)}


def windows_per_second(sample, batch_size: int, seconds: float) -> tuple[float, int]:
    sample()  # warm up
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds or n < 2:
        sample()
        n += 1
    return n * batch_size / (time.perf_counter() - t0), n


def lerobot_dataset(root: Path, args: Args) -> tuple[Path, dict | None]:
    """The LeRobot dataset to import, and LeRobot's own per-sample loading figures where they were measured.

    With ``args.lerobot`` and ``.venv-lerobot``, LeRobot writes a larger dataset (``make_lerobot_fixture.py``) and
    times its loader in that environment; otherwise the committed fixture, and ``None``.
    """
    if not (args.lerobot and LEROBOT_PYTHON.exists()):
        return LEROBOT_FIXTURE, None
    out = root / "lerobot_written"
    cmd = [str(LEROBOT_PYTHON), str(REPO / "scripts" / "make_lerobot_fixture.py"), str(out), "--front-size",
           *map(str, args.video_size), "--lengths", *map(str, args.video_lengths), "--textured", "--no-dump",
           "--time-loader", str(args.seconds)]
    # cwd outside the repository: its root is the omnipolicy package, whose datasets/ would shadow HF datasets
    done = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return out, json.loads(done.stdout.strip().splitlines()[-1])


def training_timesteps_per_second(loader: WindowLoader, preset: str, layout, steps: int, L: int) -> float:
    """Timesteps/s that ``steps`` optimizer steps of ``preset`` consume from ``loader`` (tokens/s over L)."""
    cfg = TrainConfig(preset=preset)
    model = GatoModel(get_preset(preset).with_layout(layout)).train()
    module, opt = LossModule(model), make_optimizer(model, cfg, torch.device("cpu"))
    tokens, elapsed = 0, 0.0
    for i in range(steps + 1):  # the first step is untimed (allocations, autotuning)
        batch = loader.sample()
        t0 = time.perf_counter()
        accumulate_gradients(module, batch, dtype=cfg.dtype)
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i:
            elapsed += time.perf_counter() - t0
            tokens += batch["tokens"].size
    return tokens / elapsed / L


def video_path(root: Path, tok: Tokenizer, args: Args) -> dict:
    """The video figures (see the module docstring): import frames/s, cache windows/s, LeRobot's samples/s, and
    training's consumption, all but the first in timesteps/s."""
    start = time.perf_counter()
    src, lerobot = lerobot_dataset(root, args)
    t0 = time.perf_counter()
    summary = import_lerobot(src, root / "video_store", image_size=args.import_size, progress=False)
    import_s = time.perf_counter() - t0
    store = EpisodeStore(root / "video_store")
    spec = store.timestep_spec(summary["task_id"])
    first = store.load_episode(0)
    L = tok.tokenize_episode(spec, first.observations, first.actions).tokens_per_timestep
    cache = TokenCache.build([store], tok, root / "video_cache", progress=False)
    context = get_preset(args.preset).context
    loader = WindowLoader(cache, context=context, batch_size=args.batch_size, seed=0)
    wps, _ = windows_per_second(loader.sample, args.batch_size, args.seconds)
    per_window = context / L  # timesteps a window holds (windows start at a timestep boundary)
    train_tps = training_timesteps_per_second(loader, args.preset, tok.layout, args.train_steps, L)
    res = {
        "source": "written by LeRobot (.venv-lerobot)" if lerobot else f"committed fixture {LEROBOT_FIXTURE.relative_to(REPO)}",
        "frames": summary["frames"], "cameras": summary["cameras"], "tokens_per_timestep": L, "context": context,
        "import_frames_per_s": round(summary["frames"] / import_s, 1),
        "decode_frames_per_s": round(summary["read_frames_per_s"], 1),
        "cache_windows_per_s": round(wps, 1), "cache_timesteps_per_s": round(wps * per_window, 1),
        "train_preset": args.preset, "train_tokens_per_s": round(train_tps * L, 1),
        "train_timesteps_per_s": round(train_tps, 1),
    }
    res["import_vs_train"] = round(res["import_frames_per_s"] / train_tps, 1)
    res["section_s"] = round(time.perf_counter() - start, 1)
    if lerobot:
        res["lerobot_video_size"] = list(args.video_size)
        res["lerobot_samples_per_s"] = round(lerobot["samples_per_s"], 1)  # one sample = one timestep
        res["cache_vs_lerobot"] = round(wps * per_window / lerobot["samples_per_s"], 1)
    return res


def print_video(v: dict) -> None:
    print(f"video path ({v['source']}, {v['frames']} frames; cameras at import {v['cameras']}; "
          f"{v['tokens_per_timestep']} tokens per timestep, context {v['context']}; {v['section_s']} s):")
    print(f"  import_lerobot (once): {v['import_frames_per_s']:9.1f} frames/s (decode + PNG encode + write; "
          f"reading and decoding alone {v['decode_frames_per_s']:.1f})")
    print(f"  token cache windows:   {v['cache_windows_per_s']:9.1f} windows/s = {v['cache_timesteps_per_s']:.1f} timesteps/s")
    if "lerobot_samples_per_s" in v:
        print(f"  LeRobot __getitem__:   {v['lerobot_samples_per_s']:9.1f} samples/s = timesteps/s (pyav, frames decoded per "
              f"sample at {v['lerobot_video_size'][0]}x{v['lerobot_video_size'][1]}); cache {v['cache_vs_lerobot']:.1f}x")
    else:
        print("  LeRobot __getitem__:   not measured (--quick, --no-lerobot or no .venv-lerobot)")
    print(f"  training consumes:     {v['train_timesteps_per_s']:9.1f} timesteps/s ({v['train_preset']}, "
          f"{v['train_tokens_per_s']:,.0f} tokens/s); import decodes {v['import_vs_train']:.1f}x that, once, at import; "
          f"training reads the cache")


def main(args: Args) -> dict:
    tok = Tokenizer.default()
    root = Path(tempfile.mkdtemp(prefix="bench_loader_"))
    try:
        t0 = time.perf_counter()
        stores = make_stores(root / "data", args.episodes, args.steps)
        t_write = time.perf_counter() - t0
        t0 = time.perf_counter()
        cache = TokenCache.build(stores, tok, root / "cache", progress=False)
        t_build = time.perf_counter() - t0
        loader = WindowLoader(cache, context=args.context, batch_size=args.batch_size, seed=0)
        baseline = ParquetWindows(stores, tok, args.context, args.batch_size)
        b1, b2 = loader.sample(), baseline.sample()
        for k in ("tokens", "loss_mask", "local_pos", "patch_index", "task_index"):
            assert b1[k].shape == b2[k].shape and b1[k].dtype == b2[k].dtype, k
        base_wps, base_n = windows_per_second(baseline.sample, args.batch_size, args.seconds)
        cache_wps, cache_n = windows_per_second(loader.sample, args.batch_size, args.seconds)
        per_task = {}
        for k, store in enumerate(stores):  # each task alone: pixels cost PNG decoding, states only tokenizing
            tid = store.task_ids[0]
            only_cache = WindowLoader(cache, context=args.context, batch_size=args.batch_size, seed=1, task_weights={tid: 1.0})
            only_base = ParquetWindows(stores, tok, args.context, args.batch_size, seed=1, only=k)
            b_wps, _ = windows_per_second(only_base.sample, args.batch_size, args.seconds / 2)
            c_wps, _ = windows_per_second(only_cache.sample, args.batch_size, args.seconds / 2)
            per_task[tid] = {"parquet_windows_per_s": round(b_wps, 1), "cache_windows_per_s": round(c_wps, 1), "speedup": round(c_wps / b_wps, 1)}
        cache_bytes = sum(p.stat().st_size for p in (root / "cache").glob("*.npy"))
        store_bytes = sum(p.stat().st_size for p in (root / "data").rglob("*") if p.is_file())
        video = video_path(root, tok, args) if args.video else None
    finally:
        shutil.rmtree(root, ignore_errors=True)
    ratio = cache_wps / base_wps
    print(f"parquet per-sample decode + tokenize: {base_wps:9.1f} windows/s ({base_n} batches)")
    print(f"packed token cache (WindowLoader):    {cache_wps:9.1f} windows/s ({cache_n} batches)")
    for tid, r in per_task.items():
        print(f"  {tid:<18} parquet {r['parquet_windows_per_s']:8.1f}  cache {r['cache_windows_per_s']:9.1f}  speed-up {r['speedup']:.1f}x")
    print(f"speed-up {ratio:.1f}x; cache built in {t_build:.2f} s ({cache_bytes / 2**20:.1f} MiB) from a "
          f"{store_bytes / 2**20:.1f} MiB store written in {t_write:.2f} s")
    if video is not None:
        print_video(video)
    summary = {
        "bench": "loader", "context": args.context, "batch_size": args.batch_size,
        "episodes": 2 * args.episodes, "frames": 2 * args.episodes * args.steps,
        "parquet_windows_per_s": round(base_wps, 1), "cache_windows_per_s": round(cache_wps, 1),
        "speedup": round(ratio, 1), "per_task": per_task, "target_speedup": 10, "meets_target": ratio >= 10,
        "targets": [{"figure": "windows/s, token cache vs parquet decode", "value": ratio, "target": ">= 10",
                     "met": ratio >= 10}],
        "cache_build_s": round(t_build, 2), "cache_mib": round(cache_bytes / 2**20, 1), "store_mib": round(store_bytes / 2**20, 1),
    }
    if video is not None:
        summary["video"] = video
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main(tyro.cli(Args, default=QUICK if "--quick" in sys.argv[1:] else None))
