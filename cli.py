"""The ``omnipolicy`` command line.

Each subcommand lives in the module that owns its work and is named here by a
lazy import path (``"module:function"``), so ``omnipolicy --help`` starts in
milliseconds and a subcommand imports only what it needs (no torch for
``omnipolicy tasks``). The function receives the remaining arguments and parses
them with ``tyro`` against its own typed dataclass config.
"""

from __future__ import annotations

import importlib
import os
import sys

# OpenMP threads that spin while they wait make small matmuls ~30x slower when cores are shared
# (measured here); passive waiting costs little on an idle machine. Set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
from dataclasses import dataclass


@dataclass(frozen=True)
class Command:
    """One subcommand: where its entry function lives and a one-line summary."""

    entry: str
    summary: str


COMMANDS: dict[str, Command] = {
    "tokenize-demo": Command(
        "omnipolicy.tokenizers.demo:main",
        "Tokenize a synthetic Atari-like and Meta-World-like episode and print the layout.",
    ),
    "tasks": Command("omnipolicy.envs.registry:tasks_command", "List registered tasks with their random and expert scores."),
    "collect": Command("omnipolicy.datasets.collect:collect_command", "Collect expert demonstrations into a dataset."),
    "dagger": Command("omnipolicy.datasets.dagger:dagger_command",
                      "Run a checkpoint's policy and record the expert's action in each state it visits (DAgger)."),
    "dataset": Command("omnipolicy.datasets.cli:dataset_command", "Inspect, verify, import or export a dataset (info, verify, ...)."),
    "train": Command("omnipolicy.agent.train:train_command", "Train a generalist policy on one or more datasets."),
    "eval": Command("omnipolicy.envs.evaluate:eval_command", "Evaluate a checkpoint in the simulators and write a report."),
    "demo": Command("omnipolicy.demo:demo_command", "Collect, train, evaluate and report end to end (the main job)."),
    "deploy": Command("omnipolicy.robot_bridge.deploy:deploy_command", "Drive a ROS 2 robot with a trained policy."),
    "sim-robot": Command("omnipolicy.robot_bridge.sim_robot:sim_robot_command", "Expose a simulated MuJoCo arm as a ROS 2 robot."),
}


def _usage() -> str:
    width = max(len(name) for name in COMMANDS)
    lines = ["usage: omnipolicy <command> [options]", "", "commands:"]
    lines += [f"  {name:<{width}}  {cmd.summary}" for name, cmd in COMMANDS.items()]
    lines += ["", "Run `omnipolicy <command> --help` for a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Dispatch ``omnipolicy <command> ...`` to the command's entry function."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return
    name, rest = argv[0], argv[1:]
    if name in ("-V", "--version"):
        from omnipolicy import __version__

        print(__version__)
        return
    if name not in COMMANDS:
        import difflib

        close = difflib.get_close_matches(name, COMMANDS, n=3)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        sys.exit(f"omnipolicy: unknown command {name!r}.{hint} Available commands: {', '.join(COMMANDS)}.")
    module_name, func_name = COMMANDS[name].entry.split(":")
    func = getattr(importlib.import_module(module_name), func_name)
    func(rest, prog=f"omnipolicy {name}")


if __name__ == "__main__":
    main()
