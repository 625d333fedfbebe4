"""Training: overfitting, exact resume, data-parallel equivalence, checkpoints and the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from omnipolicy.agent import Policy, TrainConfig, load_meta, load_model_weights, train
from omnipolicy.agent.checkpoint import LATEST
from omnipolicy.agent.model import GatoModel
from omnipolicy.agent.synthetic import SYNTHETIC_TASK_ID, SyntheticWindows, synthetic_spec
from omnipolicy.agent.train import (
    LossModule,
    accumulate_gradients,
    autocast_dtype,
    cpu_has_native_bf16,
    lr_at,
    resolve_device,
    slice_batch,
    train_command,
)
from omnipolicy.tokenizers import Tokenizer

LAYOUT = Tokenizer.default().layout
TASKS = {SYNTHETIC_TASK_ID: synthetic_spec(6, 2)}
REPO = Path(__file__).resolve().parents[2]


def small_cfg(out: Path, **overrides) -> TrainConfig:
    base = dict(out=out, preset="cpu-tiny", context=64, steps=6, batch_size=4, lr=3e-3, warmup_steps=2,
                save_every=3, progress=False, tensorboard=False, threads=1, dtype="float32")
    return TrainConfig(**{**base, **overrides})


def source(seed: int = 0, images: int = 0, batch_size: int = 4, **kw) -> SyntheticWindows:
    return SyntheticWindows(LAYOUT, context=64, batch_size=batch_size, image_patches=images, seed=seed, **kw)


def params(path: Path) -> dict[str, torch.Tensor]:
    model, _ = load_model_weights(path)
    return {k: v.clone() for k, v in model.state_dict().items()}


def float64_gradients(batch: dict[str, np.ndarray], grad_accum: int = 1, rank: int = 0, world: int = 1,
                      wrap=None) -> dict[str, torch.Tensor]:
    """Each parameter's gradient of ``batch``'s mean loss, in float64, from the same initial weights.

    float64 makes the comparison independent of the CPU's kernels and thread count: a float32 run sums
    in another order on AVX2 and AVX-512, and gradients that are exactly zero in exact arithmetic (the
    key part of each attention bias) come out as rounding noise of either sign.
    """
    torch.manual_seed(0)
    model = GatoModel(small_cfg(Path(".")).model_config(LAYOUT)).double()
    module = LossModule(model) if wrap is None else wrap(LossModule(model))
    batch = {**batch, "patches": batch["patches"].astype(np.float64)}
    accumulate_gradients(module, batch, rank=rank, world=world, grad_accum=grad_accum)
    return {k: p.grad.clone() for k, p in model.named_parameters()}


def assert_same_gradients(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-9, atol=1e-12, msg=lambda m: f"{k}: {m}")


def test_device_resolution_gives_cuda_an_index():
    # `--device cuda` once reached torch.cuda.set_device without an index and failed on a GPU machine
    assert resolve_device("cuda", True, 1, 0) == torch.device("cuda", 0)
    assert resolve_device("cuda", True, 2, 3) == torch.device("cuda", 1)  # torchrun's LOCAL_RANK modulo the GPUs
    assert resolve_device("cuda:1", True, 2, 0) == torch.device("cuda", 1)
    assert resolve_device("auto", True, 4, 2) == torch.device("cuda", 2)
    assert resolve_device("auto", False, 0, 0) == torch.device("cpu")
    assert resolve_device("cpu", True, 1, 0) == torch.device("cpu")


def test_overfits_a_tiny_dataset(tmp_path):
    cfg = small_cfg(tmp_path, steps=120, batch_size=8, warmup_steps=10, save_every=1000, dtype="bfloat16")  # the bf16 path learns too
    result = train(cfg, loader=source(batch_size=8, num_windows=8), layout=LAYOUT, tasks=TASKS)
    assert result.losses[0] > 5.0  # starts near log(vocab)
    assert np.mean(result.losses[-5:]) < 0.05, result.losses[-10:]


class KilledAfter:
    """A batch source that dies (like a killed process) after ``n`` batches."""

    def __init__(self, inner: SyntheticWindows, n: int) -> None:
        self.inner, self.n = inner, n

    def __iter__(self):
        for i, batch in enumerate(self.inner):
            if i == self.n:
                raise KeyboardInterrupt("killed")
            yield batch

    def state_dict(self):
        return self.inner.state_dict()

    def load_state_dict(self, state):
        self.inner.load_state_dict(state)


def test_resumed_run_equals_uninterrupted_run(tmp_path):
    full = train(small_cfg(tmp_path / "full"), loader=source(images=4), layout=LAYOUT, tasks=TASKS)
    cfg = small_cfg(tmp_path / "killed")
    with pytest.raises(KeyboardInterrupt):
        train(cfg, loader=KilledAfter(source(images=4), 4), layout=LAYOUT, tasks=TASKS)
    assert (tmp_path / "killed/checkpoints/step_0000003").is_dir()
    # a fresh process state: other RNG draws in between must not matter
    torch.manual_seed(1234)
    np.random.seed(99)
    resumed = train(replace(cfg, resume=True), loader=source(images=4), layout=LAYOUT, tasks=TASKS)
    assert resumed.step == full.step == 6
    assert resumed.losses == full.losses[3:]
    a, b = params(tmp_path / "full"), params(tmp_path / "killed")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert load_meta(tmp_path / "killed").train_state["step"] == 6


def test_resume_refuses_another_model(tmp_path):
    train(small_cfg(tmp_path, steps=3), loader=source(), layout=LAYOUT, tasks=TASKS)
    with pytest.raises(ValueError, match=r"another model config .*'n_layer': \(2, 4\)"):
        train(small_cfg(tmp_path, steps=4, preset="cpu-small", resume=True), loader=source(), layout=LAYOUT, tasks=TASKS)


def test_init_from_loads_a_checkpoints_weights_and_starts_a_fresh_schedule(tmp_path):
    from omnipolicy.agent.train import _init_from

    data = dict(batch_size=8, num_windows=8)
    trained = train(small_cfg(tmp_path / "pre", steps=40, batch_size=8), loader=source(**data), layout=LAYOUT, tasks=TASKS)
    pre = params(tmp_path / "pre")
    # the weights, a longer context: the positions the checkpoint has are copied, the others keep their initialisation
    torch.manual_seed(5)
    model = GatoModel(small_cfg(tmp_path, context=128).model_config(LAYOUT))
    fresh = {k: v.clone() for k, v in model.state_dict().items()}
    assert _init_from(model, tmp_path / "pre", LAYOUT) == {}  # nothing but the context differs
    got = model.state_dict()
    assert all(torch.equal(got[k], pre[k]) for k in pre if k != "wpe.weight")
    assert torch.equal(got["wpe.weight"][:64], pre["wpe.weight"]) and torch.equal(got["wpe.weight"][64:], fresh["wpe.weight"][64:])
    # a run from it starts at the checkpoint's loss, at step 0 of its own schedule
    tuned = train(small_cfg(tmp_path / "tuned", steps=2, batch_size=8, init_from=tmp_path / "pre"), loader=source(**data),
                  layout=LAYOUT, tasks=TASKS)
    scratch = train(small_cfg(tmp_path / "scratch", steps=2, batch_size=8), loader=source(**data), layout=LAYOUT, tasks=TASKS)
    assert tuned.step == 2 and tuned.losses[0] < 0.5 * scratch.losses[0]
    assert abs(tuned.losses[0] - trained.losses[-1]) < 0.5 * trained.losses[-1] + 0.1  # about where the checkpoint ended
    hidden = GatoModel(small_cfg(tmp_path, action_inputs="hidden").model_config(LAYOUT))  # same shapes, another option
    assert _init_from(hidden, tmp_path / "pre", LAYOUT) == {"action_inputs": ("tokens", "hidden")}
    # modules that start inert (FiLM, keypoints) and the checkpoint lacks keep their initial weights
    torch.manual_seed(6)
    grown = GatoModel(small_cfg(tmp_path, film=True, keypoints=3).model_config(LAYOUT))
    new = {k: v.clone() for k, v in grown.state_dict().items() if k.startswith(("film.", "keypoints."))}
    assert _init_from(grown, tmp_path / "pre", LAYOUT) == {"film": (False, True), "keypoints": (0, 3)}
    got = grown.state_dict()
    assert sorted(new) == sorted(set(got) - set(pre)) and all(torch.equal(got[k], v) for k, v in new.items())
    assert all(torch.equal(got[k], pre[k]) for k in pre if k != "wpe.weight")
    with pytest.raises(ValueError, match=r"--init-from: checkpoint .* holds another model's parameters .*n_layer"):
        _init_from(GatoModel(small_cfg(tmp_path, preset="cpu-small").model_config(LAYOUT)), tmp_path / "pre", LAYOUT)
    with pytest.raises(FileNotFoundError, match="No checkpoint at"):
        train(small_cfg(tmp_path / "x", init_from=tmp_path / "missing"), loader=source(), layout=LAYOUT, tasks=TASKS)


def test_grad_accumulation_gives_the_same_gradient():
    batch = source(images=4).next_batch()
    whole = float64_gradients(batch)
    assert sum(float(g.abs().sum()) for g in whole.values()) > 1.0  # a real gradient, not zeros compared to zeros
    assert_same_gradients(whole, float64_gradients(batch, grad_accum=2))
    assert_same_gradients(whole, float64_gradients(batch, grad_accum=4))


def test_grad_accumulation_trains_like_one_batch(tmp_path):
    one = train(small_cfg(tmp_path / "a", steps=3), loader=source(images=4), layout=LAYOUT, tasks=TASKS)
    acc = train(small_cfg(tmp_path / "b", steps=3, grad_accum=2), loader=source(images=4), layout=LAYOUT, tasks=TASKS)
    assert acc.losses[0] == pytest.approx(one.losses[0], rel=1e-6)  # before any update: the same batch, the same loss
    # later losses follow updates that Adam computed from float32 gradients summed in another order
    np.testing.assert_allclose(acc.losses, one.losses, rtol=1e-3)


def _ddp_gradient_worker(rank: int, world: int, init_file: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        for accum in (1, 2):
            grads = float64_gradients(source(images=4).next_batch(), grad_accum=accum, rank=rank, world=world,
                                      wrap=nn.parallel.DistributedDataParallel)
            torch.save(grads, Path(out) / f"grads_rank{rank}_accum{accum}.pt")
    finally:
        dist.destroy_process_group()


def test_two_process_gloo_ddp_averages_to_the_single_process_gradient(tmp_path):
    single = float64_gradients(source(images=4).next_batch())
    mp.spawn(_ddp_gradient_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    for rank in (0, 1):
        for accum in (1, 2):  # each rank computed half the batch; DDP's all-reduce gives every rank the whole
            assert_same_gradients(single, torch.load(tmp_path / f"grads_rank{rank}_accum{accum}.pt"))


def _ddp_worker(rank: int, world: int, init_file: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        result = train(small_cfg(Path(out), steps=3), loader=source(images=4), layout=LAYOUT, tasks=TASKS)
        if rank == 0:
            Path(out, "losses.json").write_text(json.dumps(result.losses))
        dist.barrier()  # both ranks done before either tears the group down (a rank aborted in gloo's teardown once)
    finally:
        dist.destroy_process_group()


def test_two_process_gloo_ddp_trains_like_single_process(tmp_path):
    single = train(small_cfg(tmp_path / "single", steps=3), loader=source(images=4), layout=LAYOUT, tasks=TASKS)
    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), str(tmp_path / "ddp")), nprocs=2, join=True)
    ddp_losses = json.loads((tmp_path / "ddp/losses.json").read_text())
    assert ddp_losses[0] == pytest.approx(single.losses[0], rel=1e-6)
    np.testing.assert_allclose(ddp_losses, single.losses, rtol=1e-3)
    assert load_meta(tmp_path / "ddp").train_state["world_size"] == 2


def test_slice_batch_keeps_each_rows_patches():
    batch = source(images=4).next_batch()
    part = slice_batch(batch, 2, 4)
    for r in range(2):
        idx = part["patch_index"][r]
        np.testing.assert_array_equal(part["patches"][idx[idx >= 0]], batch["patches"][batch["patch_index"][2 + r][idx >= 0]])
    assert part["patches"].shape[0] == int((batch["patch_index"][2:4] >= 0).sum())


def test_autocast_dtype_choices():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert autocast_dtype(cpu, "float32") is None and autocast_dtype(cuda, "float32") is None
    assert autocast_dtype(cpu, "bfloat16") == autocast_dtype(cuda, "auto") == torch.bfloat16
    assert autocast_dtype(cpu, "auto") is None
    assert isinstance(cpu_has_native_bf16(), bool)


def test_lr_schedule_warms_up_then_decays_to_the_floor():
    cfg = TrainConfig(steps=100, warmup_steps=10, lr=1.0, min_lr_ratio=0.1)
    lrs = [lr_at(s, cfg) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    assert lrs[-1] == pytest.approx(0.1, abs=1e-3)


def test_checkpoints_are_written_atomically_and_pruned(tmp_path):
    result = train(small_cfg(tmp_path, steps=7, save_every=2, keep_last=2), loader=source(), layout=LAYOUT, tasks=TASKS)
    ckpts = tmp_path / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == [LATEST, "step_0000006", "step_0000007"]  # no temporaries
    assert (ckpts / LATEST).read_text().strip() == "step_0000007" == result.checkpoint.name
    meta = json.loads((result.checkpoint / "checkpoint.json").read_text())
    assert meta["vocab_layout"]["text_model"] == LAYOUT.text_model
    assert meta["tasks"][SYNTHETIC_TASK_ID]["action"]["shape"] == [2]
    assert meta["train_state"]["config"]["preset"] == "cpu-tiny"


def test_checkpoint_reload_gives_bit_identical_outputs(tmp_path):
    result = train(small_cfg(tmp_path, steps=2), loader=source(), layout=LAYOUT, tasks=TASKS)
    torch.manual_seed(0)
    model, _ = load_model_weights(result.checkpoint)
    again, _ = load_model_weights(tmp_path)  # run directory resolves to the latest checkpoint
    from omnipolicy.agent.train import to_tensors

    b = to_tensors(source(images=4, seed=5).next_batch(), torch.device("cpu"))
    args = (b["tokens"], b["local_pos"], b["patch_index"], b["patches"], b["patch_pos"])
    with torch.no_grad():
        assert torch.equal(model.logits(model(*args)), again.logits(again(*args)))
    assert model.training is False


def test_policy_refuses_a_checkpoint_with_another_layout(tmp_path):
    result = train(small_cfg(tmp_path, steps=1), loader=source(), layout=LAYOUT, tasks=TASKS)
    meta_path = result.checkpoint / "checkpoint.json"
    meta = json.loads(meta_path.read_text())
    meta["vocab_layout"]["text_model"] = "0123456789abcdef"
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"another vocabulary layout .*text_model: '0123456789abcdef' != '" + LAYOUT.text_model):
        Policy.from_checkpoint(tmp_path)


def test_train_cli_smoke_on_synthetic_data(tmp_path, capsys):
    train_command(["--synthetic", "--out", str(tmp_path), "--steps", "3", "--batch-size", "2", "--context", "64",
                   "--save-every", "2", "--no-progress", "--threads", "1"], prog="omnipolicy train")
    out = capsys.readouterr().out
    assert "trained 3 steps" in out
    assert load_meta(tmp_path).train_state["step"] == 3
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))


@pytest.mark.slow
def test_torchrun_two_processes_cli(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "omnipolicy.cli",
           "train", "--synthetic", "--out", str(tmp_path), "--steps", "2", "--batch-size", "4", "--context", "64",
           "--no-progress"]
    subprocess.run(cmd, check=True, env=env, cwd=REPO, timeout=300)
    assert load_meta(tmp_path).train_state["world_size"] == 2


def test_stop_at_then_resume_equals_uninterrupted_run(tmp_path):
    full = train(small_cfg(tmp_path / "full"), loader=source(images=4), layout=LAYOUT, tasks=TASKS)
    cfg = small_cfg(tmp_path / "phased")
    first = train(replace(cfg, stop_at=4), loader=source(images=4), layout=LAYOUT, tasks=TASKS)
    assert first.step == 4 and first.checkpoint.name == "step_0000004"
    rest = train(replace(cfg, resume=True), loader=source(images=4), layout=LAYOUT, tasks=TASKS)
    assert rest.step == full.step == 6
    assert first.losses + rest.losses == full.losses  # the learning-rate schedule is the whole run's
    a, b = params(tmp_path / "full"), params(tmp_path / "phased")
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(ValueError, match=r"stop_at must be in \[1, steps=6\]"):
        replace(cfg, stop_at=7)


def test_checkpoints_hold_the_moving_average_and_training_continues_from_the_raw_weights(tmp_path):
    from omnipolicy.agent.checkpoint import load_trainer_state
    from omnipolicy.agent.train import RAW_WEIGHTS

    torch.manual_seed(0)  # the run's initialisation (seed 0), to follow the average by hand
    start = {k: v.double() for k, v in GatoModel(small_cfg(tmp_path).model_config(LAYOUT)).state_dict().items()}
    cfg = small_cfg(tmp_path / "ema", ema_decay=0.9, save_every=1)
    first = train(replace(cfg, stop_at=1), loader=source(images=4), layout=LAYOUT, tasks=TASKS)
    raw1 = load_trainer_state(first.checkpoint)[RAW_WEIGHTS]
    average = params(first.checkpoint)
    # after the first step the ramp's decay is min(0.9, 1 / 10): 0.1 of the start, 0.9 of the trained weights
    moved = [k for k in start if not torch.equal(raw1[k], start[k].float())]
    assert len(moved) > 10
    for k in moved:
        torch.testing.assert_close(average[k].double(), 0.1 * start[k] + 0.9 * raw1[k].double(), rtol=1e-5, atol=1e-6)
    # a resumed run goes on from the raw weights and the average, as if never stopped
    rest = train(replace(cfg, resume=True), loader=source(images=4), layout=LAYOUT, tasks=TASKS)
    full = train(replace(cfg, out=tmp_path / "full"), loader=source(images=4), layout=LAYOUT, tasks=TASKS)
    assert first.losses + rest.losses == full.losses
    a, b = params(tmp_path / "full"), params(tmp_path / "ema")
    assert all(torch.equal(a[k], b[k]) for k in a)
    # the checkpoint acts with the average: it differs from the raw weights the training holds
    raw = load_trainer_state(full.checkpoint)[RAW_WEIGHTS]
    assert any(not torch.equal(raw[k], a[k]) for k in moved)
    assert load_meta(full.checkpoint).train_state["config"]["ema_decay"] == 0.9
    # fine-tuning: the average starts from the checkpoint's weights, not from a fresh initialisation
    tuned = train(replace(cfg, out=tmp_path / "tuned", init_from=tmp_path / "full", stop_at=1), loader=source(images=4),
                  layout=LAYOUT, tasks=TASKS)
    raw_tuned, average = load_trainer_state(tuned.checkpoint)[RAW_WEIGHTS], params(tuned.checkpoint)
    for k in moved:
        torch.testing.assert_close(average[k].double(), 0.1 * a[k].double() + 0.9 * raw_tuned[k].double(),
                                   rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match=r"ema_decay must be in \[0, 1\) \(0 = no average\), got 1.0"):
        small_cfg(tmp_path, ema_decay=1.0)


def test_the_runs_decoding_is_written_into_its_checkpoints_for_policies_to_follow(tmp_path):
    from omnipolicy.agent.policy import preferred_decoding

    done = train(small_cfg(tmp_path, decoding="mean"), loader=source(images=4), layout=LAYOUT, tasks=TASKS)
    meta = load_meta(done.checkpoint)
    assert meta.train_state["config"]["decoding"] == "mean" and meta.train_state["config"]["bin_sigma"] == 0
    assert preferred_decoding(meta) == "mean"  # one-hot targets alone would have said mode
    with pytest.raises(ValueError, match=r"TrainConfig.decoding must be 'auto', 'mean' or 'mode', got 'median'"):
        small_cfg(tmp_path, decoding="median")
    with pytest.raises(ValueError, match=r"TrainConfig.task_decoding values must be 'mean' or 'mode', got \{'dmc': 'auto'\}"):
        small_cfg(tmp_path, task_decoding={"dmc": "auto"})


def test_n_layer_overrides_the_presets_depth_only(tmp_path):
    deep = small_cfg(tmp_path, n_layer=3).model_config(LAYOUT)
    base = small_cfg(tmp_path).model_config(LAYOUT)
    assert (deep.n_layer, base.n_layer) == (3, 2)
    assert replace(deep, n_layer=2) == base  # nothing else moved
    assert len(GatoModel(deep).blocks) == 3
    with pytest.raises(ValueError, match="n_layer"):
        small_cfg(tmp_path, n_layer=0).model_config(LAYOUT)
