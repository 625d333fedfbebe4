"""scripts/bench_all.py: the table of every benchmark's figures, targets and whether they were met."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "bench_all.py"

TRAIN_OUTPUT = "device cpu ...\n  full head ... ratio 0.93\n" + json.dumps({"bench": "train", "targets": [
    {"figure": "ratio, full head", "value": 0.934, "target": ">= 1", "met": False},
    {"figure": "ratio, target head", "value": 1.0, "target": None, "met": None},
]}) + "\n"
LOADER_OUTPUT = "speed-up 13.7x\n" + json.dumps({"targets": [{"figure": "cache vs parquet", "value": 13.74, "target": ">= 10",
                                                               "met": True}]}) + "\n"


def test_rows_read_from_the_last_json_line(load_script) -> None:
    bench_all = load_script("bench_all")
    rows = bench_all.rows_of("train", TRAIN_OUTPUT, 0)
    assert [(r.bench, r.figure, r.value, r.target, r.met, r.ran) for r in rows] == [
        ("train", "ratio, full head", 0.934, ">= 1", False, True), ("train", "ratio, target head", 1.0, None, None, True)]
    crashed = bench_all.rows_of("bridge", "Traceback ...\n", 1)
    assert [(r.figure, r.met, r.ran) for r in crashed] == [("failed (exit status 1)", False, False)]
    no_json = bench_all.rows_of("collect", "all done\n", 0)
    no_targets = bench_all.rows_of("collect", json.dumps({"bench": "collect", "max_overhead": 0.1}), 0)
    assert [r.ran for r in no_json + no_targets] == [False, False]
    assert no_json[0].figure.startswith("no JSON line")


def test_table_has_a_row_per_figure_with_its_target_and_met(load_script) -> None:
    bench_all = load_script("bench_all")
    rows = bench_all.rows_of("train", TRAIN_OUTPUT, 0) + bench_all.rows_of("loader", LOADER_OUTPUT, 0)
    lines = bench_all.format_table(rows).splitlines()
    assert lines[0].split() == ["benchmark", "figure", "value", "target", "met"]
    assert set(lines[1]) <= {"-", " "}
    body = [line.split() for line in lines[2:]]
    assert body == [
        ["train", "ratio,", "full", "head", "0.934", ">=", "1", "NO"],
        ["train", "ratio,", "target", "head", "1.00", "-", "-"],
        ["loader", "cache", "vs", "parquet", "13.7", ">=", "10", "yes"],
    ]
    assert all(len(line) <= len(lines[1]) for line in lines)  # columns padded to one width


def test_runner_on_the_tokenizer_bench_ends_with_its_table() -> None:
    proc = subprocess.run([sys.executable, str(SCRIPT), "--benches", "tokenizer"], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout.strip().splitlines()
    summary = json.loads(next(line for line in out if line.startswith("{")))  # the benchmark's own JSON line
    assert out[-1].startswith("1 benchmark(s) in ") and out[-1].endswith(f"targets met: "
                                                                       f"{sum(t['met'] for t in summary['targets'])} of 2")
    table = out[out.index(next(line for line in out if line.startswith("benchmark"))):-2]
    assert len(table) == 2 + 2  # header, rule, one row per target of the tokenizer bench
    for line, t in zip(table[2:], summary["targets"]):
        assert line.startswith("tokenizer") and t["figure"] in line and t["target"] in line
        assert line.rstrip().endswith("yes" if t["met"] else "NO")
        assert f"{t['value']:#.3g}" in line
