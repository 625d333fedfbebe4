"""GPU check of issue 5, in one call: CUDA-graph session == full recomputation, and gato-1.18b latency.

1. ``tests/test_inference_session.py`` (the CUDA tests compare the graph-replayed session, float32 and
   bfloat16, with a full recomputation at every step of episodes longer than the window; the CPU tests run too).
2. ``scripts/bench_inference.py`` on ``gato-1.18b`` in bfloat16 at context 1024 (64-token observation,
   7-dimension action): session, naive recomputation and transformers GPT-2 of the same shape, the
   HBM bandwidth and the bound it implies.
3. Targets: p99 >= 50 control steps/s, p50 within 2x of the HBM bound. Exit status 0 only if the tests
   pass and both targets are met; 3 when there is no CUDA device (nothing was checked).

Figures go to ``$OUT/device_check_inference.json`` (or ``--out``). Run through
``scripts/device_check_inference.sh``, which makes ``import omnipolicy`` work without installing it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.environ.get("OUT", "/tmp/device_check_inference"))
    ap.add_argument("--steps", type=int, default=200, help="timed session / transformers steps")
    ap.add_argument("--skip-tests", action="store_true")
    a = ap.parse_args()
    import torch

    if not torch.cuda.is_available():
        print("device_check_inference: no CUDA device (torch.cuda.is_available() is False); nothing checked", flush=True)
        return 3
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    report: dict = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__}
    print(f"device_check_inference: {report['gpu']}, torch {report['torch']}", flush=True)

    ok = True
    if not a.skip_tests:
        t0 = time.time()
        r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_inference_session.py"],
                           cwd=ROOT, capture_output=True, text=True)
        print(r.stdout[-4000:], r.stderr[-2000:], flush=True)
        report["tests"] = {"returncode": r.returncode, "seconds": round(time.time() - t0, 1),
                           "summary": (r.stdout.strip().splitlines() or [""])[-1]}
        ok &= r.returncode == 0

    sys.path.insert(0, str(ROOT / "scripts"))
    from bench_inference import Args, run  # noqa: E402

    res = run(Args(preset=("gato-1.18b",), device="cuda", steps=a.steps, naive_steps=5, rolling_steps=a.steps, threads=0))
    g = res["presets"]["gato-1.18b"]
    report["bench"] = res
    report["targets"] = {
        "p99_steps_per_s": g["steps_per_s_p99"], "p99_target": 50.0,
        "p50_ratio_to_hbm_bound": g["ratio_to_bound"], "ratio_target": 2.0,
        "met": bool(g["steps_per_s_p99"] >= 50 and g["ratio_to_bound"] <= 2.0),
    }
    ok &= report["targets"]["met"]
    report["ok"] = bool(ok)
    (out / "device_check_inference.json").write_text(json.dumps(report, indent=1, sort_keys=True))
    print(f"device_check_inference: {'PASS' if ok else 'FAIL'}: p99 {g['steps_per_s_p99']:.0f} steps/s (>= 50), "
          f"p50 {g['ratio_to_bound']:.2f}x HBM bound (<= 2); tests {report.get('tests', {}).get('summary', 'skipped')}",
          flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
