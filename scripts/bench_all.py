"""Run every benchmark and end with one table: each figure, its target, and whether it was met.

Each benchmark runs as a subprocess (``python scripts/bench_<name>.py --quick`` by default: the quick
profiles take a few minutes in all), its output passes through, and its last line of output, one JSON
object, gives its ``targets`` rows: ``{"figure", "value", "target", "met"}`` (``target`` and ``met`` are
null for a figure reported without a target). A benchmark that fails, or ends without that JSON, gets
one row saying so and makes the exit status 1; a missed target does not (timings on a shared machine
are noisy: the table says what was met).

    .venv/bin/python scripts/bench_all.py                       # all seven, quick profiles (`make bench`)
    .venv/bin/python scripts/bench_all.py --benches tokenizer train --no-quick
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

SCRIPTS = Path(__file__).resolve().parent
BENCHES = ("tokenizer", "loader", "collect", "inference", "train", "bridge", "chunking")


@dataclass(frozen=True)
class Args:
    benches: tuple[Literal["tokenizer", "loader", "collect", "inference", "train", "bridge", "chunking"], ...] = BENCHES
    """Benchmarks to run, in this order (``scripts/bench_<name>.py``)."""
    quick: bool = True
    """Run each benchmark's quick profile (``--quick``); ``--no-quick`` runs the full ones."""
    timeout: float = 600.0
    """Seconds one benchmark may run before it is stopped (and counted as failed)."""


@dataclass(frozen=True)
class Row:
    bench: str
    figure: str
    value: float | None
    target: str | None
    met: bool | None
    ran: bool = True
    """False on the row of a benchmark that failed or printed no targets."""


def rows_of(bench: str, output: str, returncode: int) -> list[Row]:
    """The target rows of one benchmark's run, from the last line of its output.

    Args:
        bench: the benchmark's name.
        output: everything it printed to stdout.
        returncode: its exit status.

    Returns:
        Its ``targets`` rows, or one unmet row saying why there are none.
    """
    lines = output.strip().splitlines()
    if returncode != 0:
        return [Row(bench, f"failed (exit status {returncode})", None, "finishes", False, ran=False)]
    try:
        result = json.loads(lines[-1]) if lines else None
    except json.JSONDecodeError:
        result = None
    if not isinstance(result, dict) or not isinstance(result.get("targets"), list):
        return [Row(bench, "no JSON line with `targets` at the end of its output", None, "JSON", False, ran=False)]
    return [Row(bench, str(t["figure"]), t["value"], t["target"], t["met"]) for t in result["targets"]]


def _cell(x: float | bool | str | None) -> str:
    if x is None:
        return "-"
    if isinstance(x, bool):
        return "yes" if x else "NO"
    if isinstance(x, float):
        return f"{x:,.0f}" if abs(x) >= 1000 else f"{x:#.3g}"  # 1.00, not 1: next to ">= 1" the digits matter
    return str(x)


def format_table(rows: list[Row]) -> str:
    """A plain-text table: benchmark, figure, value, target, met."""
    cells = [("benchmark", "figure", "value", "target", "met")]
    cells += [(r.bench, r.figure, _cell(r.value), _cell(r.target), _cell(r.met)) for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(5)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cell, widths)).rstrip() for cell in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def run_bench(bench: str, quick: bool, timeout: float) -> tuple[str, int]:
    """Run ``scripts/bench_<bench>.py``, echoing its output; returns (its stdout, its exit status)."""
    cmd = [sys.executable, str(SCRIPTS / f"bench_{bench}.py"), *(["--quick"] if quick else [])]
    print(f"\n=== {' '.join(cmd[1:])}", flush=True)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    timer = threading.Timer(timeout, proc.kill)
    timer.start()
    out = []
    try:
        for line in proc.stdout:
            print(line, end="", flush=True)
            out.append(line)
        return "".join(out), proc.wait()
    finally:
        timer.cancel()


def main(args: Args) -> int:
    rows, seconds = [], {}
    t_all = time.perf_counter()
    for bench in args.benches:
        t0 = time.perf_counter()
        output, code = run_bench(bench, args.quick, args.timeout)
        seconds[bench] = time.perf_counter() - t0
        rows += rows_of(bench, output, code)
    total = time.perf_counter() - t_all
    print("\n" + format_table(rows))
    print(f"\n{len(args.benches)} benchmark(s) in {total:.0f} s (" + ", ".join(f"{b} {s:.0f} s" for b, s in seconds.items())
          + f"); targets met: {sum(r.met is True for r in rows)} of {sum(r.met is not None for r in rows)}")
    return 0 if all(r.ran for r in rows) else 1


if __name__ == "__main__":
    import tyro

    sys.exit(main(tyro.cli(Args)))
