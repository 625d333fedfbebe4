"""The GPU checks of issues 4 and 5, in one call on a lent GPU machine.

1. ``tests/agent/test_inference.py``: the CUDA tests compare the graph-replayed session (float32 and
   bfloat16) with a full recomputation at every step of episodes longer than the window; the CPU tests run too.
2. ``scripts/bench_inference.py`` on ``gato-1.18b`` in bfloat16 at context 1024 (64-token observation,
   7-dimension action): session, naive recomputation and transformers GPT-2 of the same shape, the
   HBM bandwidth and the bound it implies. Targets (issue 5): p99 >= 50 control steps/s, p50 within 2x
   of the HBM bound.
3. ``scripts/bench_train.py`` on ``gato-79m`` and ``gato-364m`` under bf16 autocast: training tokens/s
   against transformers GPT-2 of the same shape, and model FLOPs utilisation (issue 4; no target).
4. The user paths on CUDA: ``train`` (bf16 autocast, a checkpoint, ``resume``) on synthetic windows, then
   ``Policy.act`` on CUDA through the session and through recomputation, against the CPU policy.

Exit status 0 only if the tests pass and the inference targets are met; 3 when there is no CUDA device
(nothing was checked). Each part runs on even if an earlier one failed, and its error is recorded.
Figures go to ``$OUT/device_check.json`` (or ``--out``). Run through ``scripts/device_check.sh``, which
makes ``import omnipolicy`` work without installing it.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path

from omnipolicy.files import write_json_atomic

ROOT = Path(__file__).resolve().parents[1]
PARTS = ("tests", "inference", "train", "policy")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.environ.get("OUT", "/tmp/device_check"))
    ap.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    ap.add_argument("--steps", type=int, default=200, help="timed session / transformers steps")
    ap.add_argument("--train-presets", nargs="+", default=["gato-79m", "gato-364m"])
    ap.add_argument("--train-batch", type=int, default=16, help="windows of 1024 tokens per training step")
    a = ap.parse_args()
    import torch

    if not torch.cuda.is_available():
        print("device_check: no CUDA device (torch.cuda.is_available() is False); nothing checked", flush=True)
        return 3
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    report: dict = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__, "parts": a.parts}
    print(f"device_check: {report['gpu']}, torch {report['torch']}", flush=True)
    sys.path.insert(0, str(ROOT / "scripts"))

    def save() -> None:
        write_json_atomic(out / "device_check.json", report, indent=1, sort_keys=True, default=str)

    ok = True
    if "tests" in a.parts:
        t0 = time.time()
        r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/agent/test_inference.py"],
                           cwd=ROOT, capture_output=True, text=True)
        print(r.stdout[-4000:], r.stderr[-2000:], flush=True)
        report["tests"] = {"returncode": r.returncode, "seconds": round(time.time() - t0, 1),
                           "summary": (r.stdout.strip().splitlines() or [""])[-1]}
        ok &= r.returncode == 0
        save()

    if "inference" in a.parts:
        try:
            from bench_inference import Args, run

            res = run(Args(preset=("gato-1.18b",), device="cuda", steps=a.steps, naive_steps=5, rolling_steps=a.steps, threads=0))
            g = res["presets"]["gato-1.18b"]
            report["inference"] = res
            report["targets"] = {
                "p99_steps_per_s": g["steps_per_s_p99"], "p99_target": 50.0,
                "p50_ratio_to_hbm_bound": g["ratio_to_bound"], "ratio_target": 2.0,
                "met": bool(g["steps_per_s_p99"] >= 50 and g["ratio_to_bound"] <= 2.0),
            }
            ok &= report["targets"]["met"]
        except Exception:  # record it and go on to the training part
            report["inference"] = {"error": traceback.format_exc()}
            print(report["inference"]["error"], flush=True)
            ok = False
        save()

    if "train" in a.parts:
        from bench_train import Args as TrainArgs
        from bench_train import main as bench_train

        report["train"] = {}
        for preset in a.train_presets:
            try:
                torch.cuda.empty_cache()
                report["train"][preset] = bench_train(TrainArgs(preset=preset, batch_size=a.train_batch, device="cuda",
                                                                dtype="bfloat16", steps=8, warmup=3))
            except Exception:
                report["train"][preset] = {"error": traceback.format_exc()}
                print(report["train"][preset]["error"], flush=True)
            save()

    if "policy" in a.parts:
        try:
            report["policy"] = policy_smoke(out / "policy_smoke", "cuda")
            ok &= report["policy"]["ok"]
        except Exception:
            report["policy"] = {"error": traceback.format_exc()}
            print(report["policy"]["error"], flush=True)
            ok = False
        save()

    report["ok"] = bool(ok)
    save()
    lines = [f"device_check: {'PASS' if ok else 'FAIL'} on {report['gpu']}"]
    if "tests" in report:
        lines.append(f"  tests: {report['tests']['summary']}")
    if "targets" in report:
        t = report["targets"]
        lines.append(f"  gato-1.18b bf16: p99 {t['p99_steps_per_s']:.0f} steps/s (>= 50), p50 {t['p50_ratio_to_hbm_bound']:.2f}x HBM bound (<= 2)")
    if "agreement_with_cpu" in report.get("policy", {}):
        p = report["policy"]
        lines.append(f"  train + act on CUDA: steps {p['steps']}, actions agree with the CPU policy: "
                     + ", ".join(f"{k} {v:.0%}" for k, v in p["agreement_with_cpu"].items()))
    for preset, r in report.get("train", {}).items():
        if "results" in r:
            lines.append(f"  train {preset}: " + ", ".join(
                f"{k} {v['ours_tokens_per_s']:,.0f} tok/s ({v['ratio']:.2f}x GPT-2, MFU {v.get('ours_mfu', float('nan')):.1%})"
                for k, v in r["results"].items()))
    print("\n".join(lines), flush=True)
    return 0 if ok else 1


def policy_smoke(out: Path, device: str) -> dict:
    """Train cpu-tiny for 60 steps, resume to 90 (on ``device``), then act with it there and on the CPU."""
    import shutil

    import numpy as np

    from omnipolicy.agent import Policy, TrainConfig, train
    from omnipolicy.agent.synthetic import SYNTHETIC_TASK_ID, SyntheticWindows, synthetic_spec
    from omnipolicy.tokenizers import Tokenizer

    shutil.rmtree(out, ignore_errors=True)
    layout = Tokenizer.default().layout
    spec = synthetic_spec(obs_tokens=6, action_tokens=3)
    steps = []
    for n in (60, 90):  # the second run resumes from the first one's last checkpoint
        cfg = TrainConfig(out=out, preset="cpu-tiny", context=64, steps=n, batch_size=8, lr=3e-3, warmup_steps=5,
                          save_every=30, progress=False, tensorboard=False, device=device, resume=True)
        loader = SyntheticWindows(layout, context=64, batch_size=8, obs_tokens=6, action_tokens=3, seed=0)
        steps.append(train(cfg, loader=loader, layout=layout, tasks={SYNTHETIC_TASK_ID: spec}).step)
    checkpoint = out / "checkpoints"
    policies = {"session": Policy.from_checkpoint(checkpoint, device=device, use_session=True),
                "recompute": Policy.from_checkpoint(checkpoint, device=device, use_session=False),
                "cpu": Policy.from_checkpoint(checkpoint, device="cpu", use_session=True)}
    rng = np.random.default_rng(0)
    episode = [[{"state": rng.uniform(-1, 1, 6).astype(np.float32)} for _ in range(3)] for _ in range(20)]
    actions = {}
    for name, policy in policies.items():
        policy.reset(3)
        actions[name] = np.stack([np.stack(policy.act(SYNTHETIC_TASK_ID, obs)) for obs in episode])  # (20, 3, 3)
    agree = {k: float(np.isclose(v, actions["cpu"], atol=0.02).mean()) for k, v in actions.items() if k != "cpu"}
    finite = all(bool(np.isfinite(v).all()) and v.shape == (20, 3, 3) for v in actions.values())
    res = {"steps": steps, "agreement_with_cpu": agree, "actions_finite": finite,
           "ok": steps == [60, 90] and finite}
    print(f"policy smoke on {device}: {res}", flush=True)
    return res


if __name__ == "__main__":
    sys.exit(main())
