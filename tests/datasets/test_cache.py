"""TokenCache (built once, rebuilt on data or layout change) and WindowLoader (shapes, boundaries, weights, prompts)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from omnipolicy.datasets import Episode, EpisodeStore, TokenCache, WindowLoader, holdout_split
from omnipolicy.tokenizers import FieldSpec, TimestepSpec, Tokenizer, normalize_patches

# Observations name their own episode and timestep, so every token says where it came from.
ID_SPEC = TimestepSpec(
    (FieldSpec("ep", "discrete", (), "int64", n=1024), FieldSpec("t", "discrete", (), "int64", n=1024)),
    FieldSpec("action", "continuous", (2,), "float32", low=(-1.0, -1.0), high=(1.0, 1.0)),
)
IMG_SPEC = TimestepSpec(
    (FieldSpec("image", "image", (20, 36, 3), "uint8"), FieldSpec("instruction", "text", (), "str")),
    FieldSpec("action", "discrete", (), "int64", n=4),
)


def id_episode(task: str, e: int, t: int) -> Episode:
    rng = np.random.default_rng(e)
    return Episode(task, {"ep": np.full(t, e), "t": np.arange(t)}, rng.uniform(-1, 1, (t, 2)).astype(np.float32),
                   np.ones(t), seed=e, spec=ID_SPEC)


def img_episode(e: int, t: int) -> Episode:
    rng = np.random.default_rng(100 + e)
    return Episode("toy/pixels-v0", {"image": rng.integers(0, 256, (t, 20, 36, 3), dtype=np.uint8),
                                     "instruction": ["look then act"] * t},
                   rng.integers(0, 4, t), np.zeros(t), seed=e, spec=IMG_SPEC)


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer.default()


@pytest.fixture()
def stores(tmp_path: Path) -> Path:
    a = EpisodeStore(tmp_path / "data" / "a")
    a.append_episodes([id_episode("toy/ids-a-v0", e, t) for e, t in enumerate([30, 45, 12, 60])])
    b = EpisodeStore(tmp_path / "data" / "b")
    b.append_episodes([id_episode("toy/ids-b-v0", 50 + e, t) for e, t in enumerate([25, 40])])
    c = EpisodeStore(tmp_path / "data" / "c")
    c.append_episodes([img_episode(e, t) for e, t in enumerate([6, 9])])
    for s in (a, b, c):
        s.close()
    return tmp_path / "data"


def test_cache_holds_exact_tokens_and_patches(stores: Path, tmp_path: Path, tok: Tokenizer) -> None:
    cache = TokenCache.build([stores], tok, tmp_path / "cache", progress=False)
    assert cache.task_ids == ["toy/ids-a-v0", "toy/ids-b-v0", "toy/pixels-v0"]
    assert cache.num_episodes == 8 and cache.layout == tok.layout
    for i in range(cache.num_episodes):
        row = dict(zip(("token_start", "token_end", "patch_start", "patch_end", "L", "T", "task", "store", "episode"),
                       cache.episodes[i].tolist()))
        store = EpisodeStore(cache.manifest["stores"][row["store"]])
        ep = store.load_episode(row["episode"])
        want = tok.tokenize_episode(store.timestep_spec(ep.task_id), ep.observations, ep.actions, raw_patches=True)
        got = cache.episode(i)
        assert got.task_id == ep.task_id and got.num_timesteps == ep.length
        np.testing.assert_array_equal(got.tokens, want.tokens)
        np.testing.assert_array_equal(got.loss_mask, want.loss_mask)
        np.testing.assert_array_equal(got.local_pos, want.local_pos)
        np.testing.assert_array_equal(got.timestep, want.timestep)
        np.testing.assert_array_equal(got.patches, want.patches)
        np.testing.assert_array_equal(got.patch_pos, want.patch_pos)
        pidx = cache.patch_index[row["token_start"]:row["token_end"]]
        is_patch = want.tokens == tok.layout.patch_id
        assert np.all((pidx >= 0) == is_patch)
        np.testing.assert_array_equal(cache.patches[pidx[is_patch]], want.patches)


def test_a_full_disk_is_a_clear_error_and_leaves_no_partial_build(stores: Path, tmp_path: Path, tok: Tokenizer,
                                                                    monkeypatch) -> None:
    import errno
    import shutil

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(shutil, "copyfileobj", full)  # the .bin -> .npy copy
    with pytest.raises(OSError, match="No space left on the device of .* while writing the token cache"):
        TokenCache.build([stores], tok, tmp_path / "cache", progress=False)
    assert not list((tmp_path / "cache").glob(".build-*")) and not list((tmp_path / "cache").glob("*.npy"))
    monkeypatch.undo()  # with space again, the build completes
    assert TokenCache.build([stores], tok, tmp_path / "cache", progress=False).num_episodes == 8


def test_cache_rebuilds_only_on_change(stores: Path, tmp_path: Path, tok: Tokenizer) -> None:
    out = tmp_path / "cache"
    first = TokenCache.build([stores], tok, out, progress=False)
    stamp = (out / "tokens.npy").stat().st_mtime_ns
    same = TokenCache.build([stores], tok, out, progress=False)
    assert (out / "tokens.npy").stat().st_mtime_ns == stamp and same.num_tokens == first.num_tokens
    # new data -> rebuilt with the new episode
    a = EpisodeStore(stores / "a")
    a.append_episodes([id_episode("toy/ids-a-v0", 9, 7)])
    a.close()
    grown = TokenCache.build([stores], tok, out, progress=False)
    assert grown.num_episodes == first.num_episodes + 1 and grown.num_tokens > first.num_tokens
    # another tokenizer layout -> rebuilt and tagged with it
    other = Tokenizer(tok.text, layout=dataclasses.replace(tok.layout, version=tok.layout.version + 1))
    stamp = (out / "tokens.npy").stat().st_mtime_ns
    rebuilt = TokenCache.build([stores], other, out, progress=False)
    assert rebuilt.layout == other.layout and (out / "tokens.npy").stat().st_mtime_ns != stamp
    assert TokenCache(out).layout.version == tok.layout.version + 1


def _decode(batch: dict, layout) -> tuple[np.ndarray, np.ndarray]:
    """(episode id, timestep) of every token of the id tasks (-1 where unknown)."""
    toks, pos = batch["tokens"], batch["local_pos"]
    d = toks - layout.discrete_offset
    ep = np.where((pos == 0) & (d >= 0) & (d < 1024), d, -1)
    t = np.where((pos == 1) & (d >= 0) & (d < 1024), d, -1)
    return ep, t


def test_loader_batches_shapes_and_boundaries(stores: Path, tmp_path: Path, tok: Tokenizer) -> None:
    cache = TokenCache.build([stores], tok, tmp_path / "cache", progress=False)
    loader = WindowLoader(cache, context=64, batch_size=16, seed=3)
    for _ in range(20):
        b = next(iter(loader))
        B, S = 16, 64
        assert b["tokens"].shape == (B, S) and b["tokens"].dtype == np.int64
        assert b["loss_mask"].shape == (B, S) and b["loss_mask"].dtype == np.bool_
        assert b["local_pos"].dtype == np.int64 and b["patch_index"].dtype == np.int64
        assert b["task_index"].shape == (B,) and b["task_index"].dtype == np.int64
        P = len(b["patches"])
        assert b["patches"].shape == (P, 3, 16, 16) and b["patches"].dtype == np.float32
        assert b["patch_pos"].shape == (P, 2) and b["patch_pos"].dtype == np.int64
        assert np.all(b["local_pos"][:, 0] == 0)  # every window starts at a timestep boundary
        is_patch = b["tokens"] == tok.layout.patch_id
        assert np.all((b["patch_index"] >= 0) == is_patch)
        assert sorted(b["patch_index"][is_patch].tolist()) == list(range(P))
        pad = b["tokens"] == tok.layout.pad_id
        assert not np.any(b["loss_mask"] & pad)
        ep, t = _decode(b, tok.layout)
        for r in range(B):
            if cache.task_ids[b["task_index"][r]] == "toy/pixels-v0":
                continue
            n_valid = int((~pad[r]).sum())
            assert not pad[r, :n_valid].any()  # pads only after the episode's end
            eps, ts = ep[r][ep[r] >= 0], t[r][t[r] >= 0]
            assert len(set(eps.tolist())) == 1 and np.array_equal(ts, np.arange(ts[0], ts[0] + len(ts)))
    # the pixel task's patches are the cache's, normalised, in raster order of the batch
    loader = WindowLoader(cache, context=200, batch_size=4, task_weights={"toy/pixels-v0": 1.0}, seed=0)
    b = loader.sample()
    assert len(b["patches"]) > 0
    every = normalize_patches(np.asarray(cache.patches)).reshape(len(cache.patches), -1)  # (P_all, 768)
    for patch, pos in zip(b["patches"], b["patch_pos"]):
        match = np.flatnonzero(np.all(every == patch.reshape(1, -1), axis=1))
        assert len(match) >= 1 and any(np.array_equal(cache.patch_pos[m], pos) for m in match)


def test_task_weights_are_respected(stores: Path, tmp_path: Path, tok: Tokenizer) -> None:
    cache = TokenCache.build([stores], tok, tmp_path / "cache", progress=False)
    loader = WindowLoader(cache, context=32, batch_size=500, seed=1,
                          task_weights={"toy/ids-a-v0": 3.0, "toy/ids-b-v0": 1.0})
    counts = np.bincount(np.concatenate([loader.sample()["task_index"] for _ in range(8)]), minlength=3)
    frac = counts / counts.sum()
    assert counts[2] == 0  # weight 0 (left out) is never drawn
    assert abs(frac[0] - 0.75) < 0.03 and abs(frac[1] - 0.25) < 0.03, frac
    with pytest.raises(ValueError, match=r"Unknown task ids in task_weights: \['toy/nope'\]"):
        WindowLoader(cache, context=32, batch_size=2, task_weights={"toy/nope": 1.0})
    with pytest.raises(ValueError, match="No task has a positive weight"):
        WindowLoader(cache, context=32, batch_size=2, task_weights={"toy/ids-a-v0": 0.0})


def test_prompts_come_from_other_episodes_of_the_same_task(stores: Path, tmp_path: Path, tok: Tokenizer) -> None:
    cache = TokenCache.build([stores], tok, tmp_path / "cache", progress=False)
    lengths = {e: t for e, t in enumerate([30, 45, 12, 60])} | {50: 25, 51: 40}
    loader = WindowLoader(cache, context=96, batch_size=256, prompt_prob=1.0, seed=7,
                          task_weights={"toy/ids-a-v0": 1.0, "toy/ids-b-v0": 1.0})
    b = loader.sample()
    ep, t = _decode(b, tok.layout)
    L = 5  # ep, t, separator, 2 action tokens
    from_end = 0
    for r in range(256):
        eps = ep[r][ep[r] >= 0]
        switch = np.flatnonzero(np.diff(eps) != 0)
        assert len(switch) == 1, eps  # a prompt episode, then the window's episode
        k = int(switch[0]) + 1  # prompt timesteps
        prompt_ep, main_ep = int(eps[0]), int(eps[k])
        assert prompt_ep != main_ep and (prompt_ep >= 50) == (main_ep >= 50)  # same task, other episode
        assert k * L <= 96 // 2 and not b["loss_mask"][r, : k * L].any() and b["local_pos"][r, k * L] == 0
        prompt_t = t[r][t[r] >= 0][:k]
        from_end += int(prompt_t[-1] == lengths[prompt_ep] - 1)
    assert 0.35 < from_end / 256 < 0.75  # half from episode ends (plus uniform ones that happen to end there)


def test_held_out_episodes_never_reach_training_windows(stores: Path, tmp_path: Path, tok: Tokenizer) -> None:
    cache = TokenCache.build([stores], tok, tmp_path / "cache", progress=False)
    # cache order: task a's 4 episodes, then b's 2 and c's 2; a quarter holds out a's last episode only
    train_eps, held = holdout_split(cache, 0.25)
    assert held.tolist() == [3] and train_eps.tolist() == [0, 1, 2, 4, 5, 6, 7]
    assert holdout_split(cache, 0.5)[1].tolist() == [2, 3, 5, 7]
    assert holdout_split(cache, 0.0)[1].tolist() == []
    loader = WindowLoader(cache, context=32, batch_size=200, seed=3, prompt_prob=1.0, episodes=train_eps,
                          task_weights={"toy/ids-a-v0": 1.0, "toy/ids-b-v0": 1.0})
    b = loader.sample()
    ep, _ = _decode(b, tok.layout)
    assert 3 not in set(b["episode"].tolist()) and not (ep == 3).any()  # neither as window nor as prompt
    only = WindowLoader(cache, context=32, batch_size=50, seed=3, episodes=held)
    assert set(only.sample()["episode"].tolist()) == {3} and only.task_names == ["toy/ids-a-v0"]
    with pytest.raises(ValueError, match=r"hold-out fraction must be in \[0, 1\)"):
        holdout_split(cache, 1.0)
    with pytest.raises(ValueError, match=r"episodes must be a non-empty list of cache episode indices in \[0, 8\)"):
        WindowLoader(cache, context=32, batch_size=2, episodes=[8])


def test_hold_out_only_from_eligible_episodes(stores: Path, tmp_path: Path, tok: Tokenizer) -> None:
    cache = TokenCache.build([stores], tok, tmp_path / "cache", progress=False)
    # task a's episodes are 0-3: with 3 not eligible (say, a DAgger round added later), 2 is held out instead
    eligible = np.ones(8, bool)
    eligible[3] = False
    train_eps, held = holdout_split(cache, 0.5, eligible)
    assert held.tolist() == [2, 5, 7] and 3 in train_eps.tolist()  # floor(0.5 * 3) = 1 of task a's eligible three
    assert holdout_split(cache, 0.25, eligible)[1].tolist() == []  # 3 eligible episodes are too few for a quarter
    with pytest.raises(ValueError, match=r"eligible must hold one flag per cache episode \(8\), got shape \(3,\)"):
        holdout_split(cache, 0.25, np.ones(3, bool))
