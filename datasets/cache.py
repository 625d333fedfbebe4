"""Packed token cache: every episode tokenized once into memory-mapped ``.npy`` arrays.

Layout of ``out_dir/``::

    manifest.json      fingerprint of the data (committed files, sizes, mtimes) and of the tokenizer layout,
                       task ids, TimestepSpecs, array shapes; written last, so a cache without it is rebuilt
    tokens.npy         int32 (N,)   token ids (``layout.patch_id`` where an image patch goes)
    loss_mask.npy      bool  (N,)
    local_pos.npy      int32 (N,)   position within the timestep
    timestep.npy       int32 (N,)   timestep index within the episode
    patch_index.npy    int32 (N,)   row of ``patches`` for patch tokens, -1 elsewhere; in a cache built with
                                    ``image_slots=N`` (a resampler's slots), ``image * N + latent`` of each slot
    patches.npy        uint8 (P, 16, 16, 3)   raw patches (``normalize_patches`` gives the model's float form)
    patch_pos.npy      int32 (P, 2)  (row, col) of each patch within its image
    episodes.npy       int64 (E, 9)  one row per episode, columns ``EPISODE_COLUMNS``

:meth:`TokenCache.build` returns the existing cache when its fingerprint matches the stores and the
tokenizer, and rebuilds it otherwise (a new episode, a rewritten file, another tokenizer layout).
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from omnipolicy.files import fsync_file, staging_dir, write_json_atomic
from omnipolicy.tokenizers import TimestepSpec, Tokenizer, VocabLayout
from omnipolicy.tokenizers.chunking import ActionChunking
from omnipolicy.tokenizers.image import image_starts

from .layout import INFO_PATH, find_stores
from .store import EpisodeStore

CACHE_VERSION = 1
MANIFEST = "manifest.json"
EPISODE_COLUMNS = (
    "token_start",  # first token of the episode in tokens.npy
    "token_end",
    "patch_start",  # first patch of the episode in patches.npy
    "patch_end",
    "tokens_per_timestep",  # L
    "num_timesteps",  # T
    "task_index",  # into TokenCache.task_ids
    "store_index",  # into manifest["stores"]
    "episode_index",  # within its store
)
# name -> (dtype, trailing shape)
ARRAYS: dict[str, tuple[str, tuple[int, ...]]] = {
    "tokens": ("int32", ()),
    "loss_mask": ("bool", ()),
    "local_pos": ("int32", ()),
    "timestep": ("int32", ()),
    "patch_index": ("int32", ()),
    "patches": ("uint8", (16, 16, 3)),
    "patch_pos": ("int32", (2,)),
    "episodes": ("int64", (len(EPISODE_COLUMNS),)),
}


def _as_stores(stores: Sequence[EpisodeStore | str | os.PathLike] | EpisodeStore | str | os.PathLike) -> list[EpisodeStore]:
    if isinstance(stores, (EpisodeStore, str, os.PathLike)):
        stores = [stores]
    out: list[EpisodeStore] = []
    for s in stores:
        if isinstance(s, EpisodeStore):
            out.append(s)
            continue
        roots = find_stores(s)
        if not roots:
            missing = "" if Path(s).exists() else ": the path does not exist"
            raise FileNotFoundError(f"No dataset (meta/info.json) at or below {s}{missing}")
        out.extend(EpisodeStore(r) for r in roots)
    if not out:
        raise ValueError("TokenCache.build needs at least one store")
    return out


def data_fingerprint(store: EpisodeStore) -> dict[str, Any]:
    """What identifies a store's committed content: info.json's hash and every committed file's size and mtime."""
    store.refresh()
    files = [store.root / INFO_PATH, *store.episodes_files(), *store.data_files()]
    return {
        "root": str(store.root.resolve()),
        "info_sha256": hashlib.sha256((store.root / INFO_PATH).read_bytes()).hexdigest(),
        "files": [[str(p.relative_to(store.root)), p.stat().st_size, p.stat().st_mtime_ns] for p in files],
    }


def _fingerprint(stores: Sequence[EpisodeStore], layout: "VocabLayout", chunking: ActionChunking,
                 image_slots: int | None = None) -> dict[str, Any]:
    fp = {"cache_version": CACHE_VERSION, "layout": layout.to_dict(), "stores": [data_fingerprint(s) for s in stores]}
    if chunking.size > 1:  # unchunked caches keep the key they had before chunking existed
        fp["chunking"] = chunking.to_dict()
    if image_slots is not None:  # so do caches with one slot per patch
        fp["image_slots"] = int(image_slots)
    return fp



def _digest(fp: dict) -> str:
    return hashlib.sha256(json.dumps(fp, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class CachedEpisode:
    """Views into the cache for one episode (memory-mapped, no copy)."""

    task_id: str
    tokens: np.ndarray  # (T*L,)
    loss_mask: np.ndarray
    local_pos: np.ndarray
    timestep: np.ndarray
    patches: np.ndarray  # (P, 16, 16, 3) uint8
    patch_pos: np.ndarray  # (P, 2)
    tokens_per_timestep: int
    num_timesteps: int


class TokenCache:
    """Memory-mapped, pre-tokenized episodes of one or more stores.

    Open an existing cache with ``TokenCache(out_dir)``; make or refresh one with :meth:`build`.

    Attributes:
        tokens, loss_mask, local_pos, timestep, patch_index, patches, patch_pos, episodes: the arrays above.
        task_ids: task ids in task_index order.
        layout: the tokenizer layout the cache was built with.
        specs: task id -> TimestepSpec.
        chunking: the action chunking the episodes were tokenized with (``ActionChunking()``: none).
        image_slots: sequence slots per image the episodes were tokenized with (``None``: one per patch;
            ``ModelConfig.slots_per_image``).
    """

    def __init__(self, out_dir: str | os.PathLike) -> None:
        self.dir = Path(out_dir)
        path = self.dir / MANIFEST
        if not path.is_file():
            raise FileNotFoundError(f"No token cache at {self.dir} (missing {MANIFEST}); build one with TokenCache.build")
        self.manifest: dict = json.loads(path.read_text())
        self.layout: VocabLayout = VocabLayout.from_dict(self.manifest["fingerprint"]["layout"])
        self.task_ids: list[str] = list(self.manifest["task_ids"])
        self.specs: dict[str, TimestepSpec] = {t: TimestepSpec.from_dict(d) for t, d in self.manifest["specs"].items()}
        self.chunking = ActionChunking(**self.manifest["fingerprint"].get("chunking", {}))
        self.image_slots: int | None = self.manifest["fingerprint"].get("image_slots")
        for name, (dtype, tail) in ARRAYS.items():
            arr = np.load(self.dir / f"{name}.npy", mmap_mode="r")
            expect = (self.manifest["sizes"][name], *tail)
            if arr.dtype != np.dtype(dtype) or arr.shape != expect:
                raise ValueError(f"{self.dir / (name + '.npy')}: expected {dtype} {expect}, got {arr.dtype} {arr.shape}")
            setattr(self, name, arr)

    # -- building ------------------------------------------------------------------------------------------

    @classmethod
    def build(
        cls,
        stores: Sequence[EpisodeStore | str | os.PathLike] | EpisodeStore | str | os.PathLike,
        tokenizer: "Tokenizer",
        out_dir: str | os.PathLike,
        progress: bool = True,
        chunking: ActionChunking | None = None,
        image_slots: int | None = None,
    ) -> "TokenCache":
        """Return the cache of ``stores`` tokenized by ``tokenizer`` at ``out_dir``, (re)building it if needed.

        Args:
            stores: EpisodeStores or paths (a store, or a folder of stores such as ``collect --out``).
            tokenizer: the tokenizer; its layout is part of the fingerprint.
            out_dir: cache folder (created).
            progress: show a tqdm bar while tokenizing.
            chunking: tokenize each continuous-action task's episodes in chunks of actions (and with the
                receding horizon's stride); part of the fingerprint. Default: none.
            image_slots: sequence slots per image (``Tokenizer.tokenize_episode``'s; None: one per patch);
                part of the fingerprint.

        Returns:
            The opened cache. Concurrent callers (e.g. several training ranks) wait on a lock; one builds.
        """
        stores = _as_stores(stores)
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        with open(out / ".lock", "a+b") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            chunking = ActionChunking() if chunking is None else chunking
            fp = _fingerprint(stores, tokenizer.layout, chunking, image_slots)
            if cls.is_current(out, fp):
                return cls(out)
            cls._build(stores, tokenizer, out, fp, progress, chunking, image_slots)
        return cls(out)

    @staticmethod
    def is_current(out_dir: str | os.PathLike, fingerprint: dict) -> bool:
        path = Path(out_dir) / MANIFEST
        if not path.is_file():
            return False
        try:
            return json.loads(path.read_text()).get("digest") == _digest(fingerprint)
        except json.JSONDecodeError:
            return False

    @staticmethod
    def _build(stores: Sequence[EpisodeStore], tokenizer: "Tokenizer", out: Path, fp: dict, progress: bool,
               chunking: ActionChunking, image_slots: int | None = None) -> None:
        task_ids = sorted({t for s in stores for t in s.task_ids})
        specs: dict[str, dict] = {}
        for s in stores:
            for t in s.task_ids:
                d = s.timestep_spec(t).to_dict()
                if specs.setdefault(t, d) != d:
                    raise ValueError(f"Task {t!r} has different TimestepSpecs in different stores (e.g. {s.root})")
        for stale in out.glob(".build-*"):  # left by a killed build (we hold the lock)
            shutil.rmtree(stale, ignore_errors=True)
        # the arrays are built in a staging folder, so a failed build leaves the old cache as it was
        try:
            with staging_dir(out, prefix=".build-") as tmp:  # deleted on the way out, with what is left in it
                sizes = TokenCache._write_arrays(stores, tokenizer, task_ids, tmp, progress, chunking, image_slots)
                (out / MANIFEST).unlink(missing_ok=True)
                for name in ARRAYS:
                    os.replace(tmp / f"{name}.npy", out / f"{name}.npy")
        except OSError as e:
            if e.errno == errno.ENOSPC:  # the staging folder is gone: what it took is free again
                free = shutil.disk_usage(out).free
                raise OSError(errno.ENOSPC, f"No space left on the device of {out} while writing the token cache "
                                            f"({free / 2**30:.1f} GiB free now); free some space or give the run "
                                            f"another --out") from e
            raise
        manifest = {
            "digest": _digest(fp),
            "fingerprint": fp,
            "task_ids": task_ids,
            "specs": specs,
            "sizes": sizes,
            "stores": [str(s.root) for s in stores],
            "columns": list(EPISODE_COLUMNS),
        }
        write_json_atomic(out / MANIFEST, manifest)

    @staticmethod
    def _write_arrays(stores: Sequence[EpisodeStore], tokenizer: "Tokenizer", task_ids: list[str], tmp: Path,
                      progress: bool, chunking: ActionChunking, image_slots: int | None = None) -> dict[str, int]:
        """Tokenize every episode into ``tmp/<array>.npy``; return each array's length.

        Everything is written with plain file writes, so a full disk raises OSError (ENOSPC); writing
        through a memory map would kill the process with SIGBUS instead.
        """
        from tqdm import tqdm

        streams = {name: open(tmp / f"{name}.bin", "wb") for name in ARRAYS}  # noqa: SIM115
        sizes = dict.fromkeys(ARRAYS, 0)
        n_tok = n_patch = n_image = 0
        total = sum(s.num_episodes for s in stores)
        bar = tqdm(total=total, desc="tokenize episodes", unit="ep", disable=not progress)
        try:
            for si, store in enumerate(stores):
                for ei in range(store.num_episodes):
                    ep = store.load_episode(ei)
                    spec = store.timestep_spec(ep.task_id)
                    chunk, stride = chunking.for_action(spec.action)
                    tk = tokenizer.tokenize_episode(spec, ep.observations, ep.actions, raw_patches=True, chunk=chunk,
                                                    stride=stride, image_slots=image_slots)
                    n, p, k = len(tk.tokens), len(tk.patches), len(image_starts(tk.patch_pos))
                    is_patch = tk.tokens == tokenizer.layout.patch_id
                    slots, first = (p, n_patch) if image_slots is None else (k * image_slots, n_image * image_slots)
                    if int(is_patch.sum()) != slots:
                        raise ValueError(f"{store.root} episode {ei}: {int(is_patch.sum())} image slots, expected {slots} "
                                         f"({p} patches of {k} images, image_slots={image_slots})")
                    patch_index = np.full(n, -1, np.int32)
                    patch_index[is_patch] = first + np.arange(slots, dtype=np.int32)
                    row = [n_tok, n_tok + n, n_patch, n_patch + p, tk.tokens_per_timestep, tk.num_timesteps,
                           task_ids.index(ep.task_id), si, ei]
                    parts = {
                        "tokens": tk.tokens, "loss_mask": tk.loss_mask, "local_pos": tk.local_pos,
                        "timestep": tk.timestep, "patch_index": patch_index, "patches": tk.patches,
                        "patch_pos": tk.patch_pos, "episodes": np.asarray([row]),
                    }
                    for name, arr in parts.items():
                        dtype, tail = ARRAYS[name]
                        arr = np.ascontiguousarray(arr, dtype=dtype).reshape((-1, *tail))
                        streams[name].write(arr.tobytes())
                        sizes[name] += len(arr)
                    n_tok, n_patch, n_image = n_tok + n, n_patch + p, n_image + k
                    bar.update(1)
        finally:
            bar.close()
            for fh in streams.values():
                fh.close()
        # .bin -> .npy: an .npy header (so the loader can memory-map it), then the raw bytes
        for name, (dtype, tail) in ARRAYS.items():
            src, dst = tmp / f"{name}.bin", tmp / f"{name}.npy"
            header = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False,
                      "shape": (sizes[name], *tail)}
            with open(dst, "wb") as fh, open(src, "rb") as raw:
                np.lib.format.write_array_header_1_0(fh, header)
                shutil.copyfileobj(raw, fh, 1 << 22)
            fsync_file(dst)
            src.unlink()
        return sizes

    # -- access --------------------------------------------------------------------------------------------

    @property
    def num_episodes(self) -> int:
        return int(self.episodes.shape[0])

    @property
    def num_tokens(self) -> int:
        return int(self.tokens.shape[0])

    def column(self, name: str) -> np.ndarray:
        """One column of the episode table, e.g. ``cache.column("task_index")`` -> (E,) int64."""
        return np.asarray(self.episodes[:, EPISODE_COLUMNS.index(name)])

    def episode(self, i: int) -> CachedEpisode:
        """Views of episode ``i``'s arrays."""
        t0, t1, p0, p1, tpt, T, task, _, _ = (int(v) for v in self.episodes[i])
        return CachedEpisode(
            task_id=self.task_ids[task],
            tokens=self.tokens[t0:t1],
            loss_mask=self.loss_mask[t0:t1],
            local_pos=self.local_pos[t0:t1],
            timestep=self.timestep[t0:t1],
            patches=self.patches[p0:p1],
            patch_pos=self.patch_pos[p0:p1],
            tokens_per_timestep=tpt,
            num_timesteps=T,
        )

    def __repr__(self) -> str:
        return f"TokenCache({str(self.dir)!r}, episodes={self.num_episodes}, tokens={self.num_tokens}, tasks={self.task_ids})"
