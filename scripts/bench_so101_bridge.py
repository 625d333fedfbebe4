"""Benchmark: the SO-101 scripted expert through the ROS 2 bridge against plain simulation (issue 19, point 5).

For each task: the expert in plain simulation on seeds ``SEED .. SEED+N-1`` (episodes end at success, as evaluation
ends them), then ``omnipolicy sim-robot --robot robot_bridge/robots/so101_<kind>.toml`` (a child process, loopback
DDS) driven by ``deploy --actor expert`` in this process (limits, rate limit, watchdog and e-stop on) for the same
seeds, one fixed-length episode each. Success is the env's own in both (sticky: the named object lifted / put /
pushed at some step). Also: the command rate on each controller's topic, deploy's act time, holds, and the robot's
tick lateness.

``--limits`` instead measures the figures of the robot files' ``[limits]``: the expert's largest target change
between two control steps (``max_delta``, with ``omnipolicy.robot_bridge.sim_robot.largest_command_change``) and
its largest distance of a target from the measured joint angle (``velocity`` is that over a control period), per
joint, in plain simulation over whole episodes.

The last line of output is one JSON object with every figure.

Usage: ``.venv/bin/python scripts/bench_so101_bridge.py [--tasks so101/lift-v1 ...] [--seeds 10] [--limits]``
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tyro

from omnipolicy.envs import get_task, make_env, make_expert
from omnipolicy.envs.rollout import ExpertActor
from omnipolicy.robot_bridge.arms import get_arm
from omnipolicy.robot_bridge.deploy import DeployConfig, Deployer
from omnipolicy.robot_bridge.sim_robot import NodeProcess, largest_command_change, simulate_episodes
from omnipolicy.robot_bridge.wire.dds import DdsTransport
from omnipolicy.robot_bridge.wire.loopback import random_domain_id
from omnipolicy.robot_bridge.wire.messages import Float64MultiArray, JointTrajectory

ROBOTS = Path(__file__).resolve().parents[1] / "robot_bridge" / "robots"


@dataclass(frozen=True)
class Args:
    """The SO-101 expert over the ROS 2 bridge vs in plain simulation (or, with --limits, the limits' figures)."""

    tasks: tuple[str, ...] = ("so101/lift-v1", "so101/place-v1", "so101/push-v1")
    """Tasks to run (each with a robot file so101_<kind>.toml)."""
    seeds: int = 10
    """Episodes (seeds) per task."""
    seed: int = 0
    """First seed."""
    limits: bool = False
    """Measure the robot files' limit figures instead (plain simulation only)."""


def limit_figures(task: str, seeds: range) -> dict:
    """Largest target change per step and largest |target - measured angle|, per joint (rad), over whole episodes."""
    env, expert = make_env(task), make_expert(task)
    qpos = [env.model.joint(j).qposadr[0] for j in env.joint_names]
    lead = np.zeros(len(qpos))  # (6,)
    try:
        for seed in seeds:
            obs, _ = env.reset(seed=seed)
            expert.reset(env, obs)
            for _ in range(env.task.max_steps):
                action = np.asarray(expert.act(env, obs), dtype=np.float64)
                np.maximum(lead, np.abs(action - env.data.qpos[qpos]), out=lead)
                obs, _, terminated, truncated, _ = env.step(action)
                if terminated or truncated:
                    break
    finally:
        env.close()
    change = largest_command_change(task, seeds)
    return {"max_change": np.round(change, 5).tolist(), "max_lead": np.round(lead, 5).tolist()}


def over_the_bridge(task: str, seeds: range) -> dict:
    """sim-robot (child process) driven by deploy --actor expert (this process) for one episode per seed."""
    arm = get_arm(task)
    kind = task.split("/")[1].split("-")[0]
    episode_s = arm.control_period * get_task(task).max_steps
    domain = random_domain_id()
    robot_file = ROBOTS / f"so101_{kind}.toml"
    args = ["--robot", str(robot_file), "--transport", "dds", "--episodes", str(len(seeds)), "--episode-seconds",
            str(episode_s), "--seed", str(seeds[0])]
    cfg = DeployConfig(robot=robot_file, task=task, actor="expert", network="loopback", domain_id=domain)
    counts = {g.topic: 0 for g in arm.commands}
    with DdsTransport(network="loopback", domain_id=domain) as t, NodeProcess("sim-robot", args, domain) as robot, \
            Deployer(cfg) as node:
        for g in arm.commands:
            t.subscription(g.topic, JointTrajectory if g.type == JointTrajectory.ROS_TYPE else Float64MultiArray,
                           lambda m, topic=g.topic: counts.__setitem__(topic, counts[topic] + 1))
        report: dict = {}
        th = threading.Thread(target=lambda: report.update(node.run()), daemon=True)
        t0 = time.monotonic()
        th.start()
        robot.wait(len(seeds) * episode_s + 120)
        wall = time.monotonic() - t0
        node.stop()
        th.join(15)
    summary = robot.of("summary")[0]
    episodes = robot.of("episode")
    return {
        "success": summary["successes"], "success_rate": summary["success_rate"],
        "wrong_object": [e["wrong_object"] for e in episodes],
        "command_rate_hz": {topic: round(n / wall, 2) for topic, n in counts.items()},
        "act_ms": report["act_time"], "holds": report["holds"], "clipped": report["safety"]["clipped"],
        "robot_tick_lateness_ms": summary["tick_lateness"], "robot_step_ms": summary["step_time"],
        "overruns": summary["overruns"], "episode_s": episode_s,
    }


def main(args: Args) -> dict:
    seeds = range(args.seed, args.seed + args.seeds)
    out: dict = {"seeds": [seeds[0], seeds[-1]], "tasks": {}}
    for task in args.tasks:
        if args.limits:
            out["tasks"][task] = limit_figures(task, seeds)
        else:
            direct = [e["success"] for e in simulate_episodes(task, ExpertActor(), list(seeds), 60.0)]
            bridge = over_the_bridge(task, seeds)
            out["tasks"][task] = {"direct_success": direct, "direct_rate": float(np.mean(direct)), "bridge": bridge}
        print(task, json.dumps(out["tasks"][task]), flush=True)
    if args.limits:
        figures = out["tasks"].values()
        out["largest"] = {k: np.max([f[k] for f in figures], axis=0).tolist() for k in ("max_change", "max_lead")}
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main(tyro.cli(Args))
