"""The SO-101 main job: a vision-language-action policy for a real arm's model, end to end, as a user runs it.

``make demo-so101`` runs ``omnipolicy demo-so101``: on the SO-101 tabletop tasks (``envs/so101.py``: lift, place,
push the named one of four objects, seen through a front and a wrist camera, told in words)

1. the scripted expert's demonstrations, collected directly in simulation (``out/data``);
2. more demonstrations recorded **over ROS 2**: ``sim-robot`` runs the lift scenes as a ros2_control-style robot,
   ``deploy --actor expert`` drives it through the safety filter, ``omnipolicy record`` writes one rosbag2 bag per
   episode (``out/bags``) and ``dataset from-rosbag`` imports them (``out/rosbag``);
3. one policy trained on all of it (pixels, joints and the instruction; never the objects' positions), with
   DAgger rounds where the expert labels the states the policy reaches;
4. the evaluation protocol on 50 unseen scenes per task (``report.md``: success per task, per phrasing and per
   named object, the wrong-object rate, videos), and on instructions phrased in words held out of training
   (``unseen/report.md``);
5. instruction swaps: mid-episode the instruction names another object; how often the policy lifts the new one;
6. the policy over ROS 2: ``sim-robot`` + ``deploy`` (limits, rate limit, watchdog and e-stop on) on the
   evaluation's first scenes, success through the bridge against success in direct simulation.

Every stage resumes (datasets top up, training continues from its newest checkpoint); ``report.md`` gathers all of
it with the timings. The settings are :class:`So101DemoConfig`, sized for about an hour on a 2-core CPU.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import tyro

from omnipolicy.agent import PolicyActor
from omnipolicy.commands import dataset_command
from omnipolicy.datasets.collect import task_path
from omnipolicy.datasets.store import EpisodeStore
from omnipolicy.demo import DemoConfig, DemoRecipe, collect_demonstrations, train_with_dagger
from omnipolicy.envs import get_task, make_env
from omnipolicy.envs.evaluate import evaluate
from omnipolicy.envs.rollout import run_episodes
from omnipolicy.files import write_json_atomic, write_text_atomic
from omnipolicy.robot_bridge.arms import arm_of
from omnipolicy.robot_bridge.deploy import DeployConfig, Deployer
from omnipolicy.robot_bridge.recorder import BagRecorder
from omnipolicy.robot_bridge.sim_robot import NodeProcess
from omnipolicy.robot_bridge.wire.dds import DdsTransport
from omnipolicy.robot_bridge.wire.loopback import random_domain_id
from omnipolicy.robot_bridge.wire.messages import Bool, String
from omnipolicy.robot_bridge.wire.transport import QOS_DEFAULT

TASKS = ("so101/lift-v1", "so101/place-v1", "so101/push-v1")
ROBOTS = Path(__file__).resolve().parent / "robot_bridge" / "robots"


@dataclass
class So101DemoConfig:
    """Collect (directly and over ROS 2) -> train -> evaluate (in simulation and over ROS 2) on the SO-101 tabletop."""

    out: Path = Path("runs/demo-so101")
    """Run folder: data/, bags/, rosbag/, dagger/, train/, report.md, unseen/, swaps.json, bridge.json."""
    tasks: tuple[str, ...] = TASKS
    """The tasks (their -unseen- variants are evaluated too)."""
    episodes: int = 150
    """Expert demonstrations per task, collected directly."""
    action_noise: float = 0.005
    """DART noise of the demonstrations, in half-ranges of each joint's target range (the recorded actions are the
    expert's). The expert's grasps survive 0.005 (every lift, place and push of 40 seeds); at 0.01 a lift succeeds
    57% of the time and a place 70%, at 0.03 most fail: failed demonstrations teach hovering."""
    rosbag_episodes: int = 10
    """Demonstrations of the first task recorded over ROS 2 (0: skip the stage)."""
    preset: str = "cpu-tiny"
    """Model preset (cpu-small trains ~8x slower per step on two cameras' patches)."""
    train_steps: int = 6000
    """Optimizer steps."""
    batch_size: int = 16
    """Windows per optimizer step."""
    lr: float = 1e-3
    """Peak learning rate."""
    action_chunk: int | None = None
    """Actions per timestep (ACT's chunking; default: the preset's, 1)."""
    chunk_execution: Literal["ensemble", "receding"] | None = None
    """How chunks run (default: the preset's)."""
    decoding: Literal["auto", "mean", "mode"] = "auto"
    """How the policy picks a continuous action's bin (evaluation, DAgger, and ``deploy`` left at auto; auto: the
    expected bin, since the job trains with Gaussian bin targets)."""
    dagger_rounds: int = 2
    """DAgger rounds between training phases (0: behaviour cloning only)."""
    dagger_episodes: int = 20
    """Policy episodes per task per DAgger round."""
    eval_episodes: int = 50
    """Evaluation episodes per task (unseen scenes: seeds from 10 000)."""
    unseen_episodes: int = 20
    """Evaluation episodes per task with instructions phrased as in no training episode."""
    swap_trials: int = 20
    """Lift episodes whose instruction names another object after ``swap_at`` steps."""
    swap_at: int = 6
    """Step at which the instruction changes (the arm is on its way to the first object)."""
    bridge_episodes: int = 10
    """Lift episodes run over ROS 2 (sim-robot + deploy on 127.0.0.1; 0: skip)."""
    workers: int = 2
    """Processes for collection, DAgger and evaluation."""
    video: bool = True
    """Rollout GIFs in the reports."""
    seed: int = 0
    """Seed of collection and training."""
    recipe_noise: dict[str, float] = field(default_factory=dict)
    """Per-task DART noise overriding ``action_noise`` (e.g. ``{"so101/push-v1": 0.0}``)."""

    def demo_config(self) -> DemoConfig:
        """The main job's settings of collection, training and DAgger for these tasks."""
        recipe = DemoRecipe(episodes={"so101": self.episodes}, max_steps={"so101": 0},
                            noise={"so101": self.action_noise, **self.recipe_noise}, dagger_scale={"so101": 1},
                            dagger_max_steps=200)
        return DemoConfig(out=self.out, tasks=self.tasks, workers=self.workers, preset=self.preset,
                          train_steps=self.train_steps, batch_size=self.batch_size, lr=self.lr,
                          eval_episodes=self.eval_episodes, eval_workers=self.workers, video=self.video,
                          seed=self.seed, action_chunk=self.action_chunk, chunk_execution=self.chunk_execution,
                          dagger_rounds=self.dagger_rounds, dagger_episodes=self.dagger_episodes, recipe=recipe,
                          decoding=self.decoding)


def robot_file(task_id: str) -> Path:
    """The shipped robot file of an SO-101 task (``so101/lift-v1`` -> ``robots/so101_lift.toml``)."""
    kind = task_id.split("/")[1].split("-")[0]
    return ROBOTS / f"so101_{kind}.toml"


# ---------------------------------------------------------------------------
# ROS 2 stages
# ---------------------------------------------------------------------------


def _episode_seconds(task_id: str) -> float:
    task = get_task(task_id)
    return task.max_steps * arm_of(task_id, robot_file(task_id)).control_period


def _drive_sim_robot(task_id: str, episodes: int, seed: int, deploy: DeployConfig, domain: int) -> dict[str, Any]:
    """``sim-robot`` runs ``episodes`` scenes of ``task_id`` from ``seed`` while a deploy node of ``deploy`` drives it
    (DDS on 127.0.0.1, ROS domain ``domain``); returns sim-robot's summary (None if it gave none), its episode events
    and deploy's report."""
    args = ["--robot", str(robot_file(task_id)), "--episodes", str(episodes), "--episode-seconds",
            str(_episode_seconds(task_id)), "--seed", str(seed)]
    report: dict[str, Any] = {}
    with NodeProcess("sim-robot", args, domain, ready_timeout=120) as sim, Deployer(deploy) as node:
        runner = threading.Thread(target=lambda: report.update(node.run()), daemon=True)
        runner.start()
        try:
            sim.wait(episodes * (_episode_seconds(task_id) + 5) + 120)
        finally:
            node.stop()
            runner.join(30)
    summary = sim.of("summary")
    return {"robot": summary[0] if summary else None, "deploy": report, "episodes": sim.of("episode")}


def record_expert_over_ros(task_id: str, episodes: int, bags: Path, seed: int) -> list[Path]:
    """``sim-robot`` runs ``episodes`` scenes of ``task_id`` from ``seed``, ``deploy --actor expert`` drives it and
    ``omnipolicy record`` writes a bag per episode into ``bags`` (DDS on 127.0.0.1)."""
    robot, domain = robot_file(task_id), random_domain_id()
    with DdsTransport(domain_id=domain, network="loopback") as t:
        recorder = BagRecorder(arm_of(task_id, robot), bags, t, episodes=episodes)
        _drive_sim_robot(task_id, episodes, seed,
                         DeployConfig(robot=robot, actor="expert", network="loopback", domain_id=domain,
                                      act_on="state"), domain)
        recorder.done.wait(10)
        return recorder.close()


def policy_over_ros(checkpoint: Path, task_id: str, episodes: int, seed: int) -> dict[str, Any]:
    """The checkpoint drives ``sim-robot`` over ROS 2 for ``episodes`` scenes from ``seed``, acting on each state as it
    arrives (``deploy --act-on state``): sim-robot's summary (success per episode) and the deploy node's report (acted
    and held ticks, latency)."""
    domain = random_domain_id()
    return _drive_sim_robot(task_id, episodes, seed,
                            DeployConfig(robot=robot_file(task_id), checkpoint=checkpoint, actor="policy",
                                         network="loopback", domain_id=domain, torch_threads=1, act_on="state"),
                            domain)


class _SaysAnotherObject:
    """On the arm's instruction topic, ``at`` control steps after each episode starts (a ``Bool(True)`` on the
    episode topic), names another object of that episode's scene (the scene of ``seed`` + its index)."""

    def __init__(self, transport: DdsTransport, task_id: str, seed: int, at: int) -> None:
        arm = arm_of(task_id, robot_file(task_id))
        self.env, self.seed, self.delay = make_env(task_id), seed, at * arm.control_period
        self.env.swap = (at, at)  # its reset draws the swap step, as swap_trials' envs do
        self.pub = transport.publisher(arm.instruction_topic, String, arm.qos_of(arm.instruction_topic, QOS_DEFAULT))
        transport.subscription(arm.episode_topic, Bool, self.on_episode, arm.qos_of(arm.episode_topic, QOS_DEFAULT))
        self.said: list[dict[str, Any]] = []
        self.timers: list[threading.Timer] = []

    def on_episode(self, msg: Bool) -> None:
        if not msg.data:
            return
        index = len(self.said)
        self.env.reset(seed=self.seed + index)
        first = self.env.target_object
        text = self.env.swap_target()  # the object and phrasing swap_trials' scene of that seed swaps to
        self.said.append({"episode": index, "first": first, "new": self.env.target_object, "instruction": text})
        timer = threading.Timer(self.delay, self.pub.publish, (String(data=text),))
        timer.start()
        self.timers.append(timer)

    def close(self) -> None:
        for timer in self.timers:
            timer.cancel()
        self.env.close()


def swaps_over_ros(deploy: DeployConfig, task_id: str, episodes: int, at: int, seed: int) -> dict[str, Any]:
    """``deploy`` (its ``domain_id`` set) drives ``sim-robot`` for ``episodes`` scenes of ``task_id`` from ``seed``;
    ``at`` control steps into each scene another object is named on the instruction topic (both sim-robot and deploy
    take it): how often the arm then achieves the new object's goal (``switched_rate``) or the first one's
    (``stayed_rate``), as :func:`swap_trials` measures in plain simulation."""
    if deploy.domain_id is None:
        raise ValueError("swaps_over_ros needs deploy.domain_id: the nodes and the instruction meet on one domain")
    with DdsTransport(domain_id=deploy.domain_id, network="loopback") as t:
        speaker = _SaysAnotherObject(t, task_id, seed, at)
        try:
            out = _drive_sim_robot(task_id, episodes, seed, deploy, deploy.domain_id)
        finally:
            speaker.close()
    pairs = list(zip(out["episodes"], speaker.said))  # sim-robot's episode events, what was said in each
    followed = [(e, said) for e, said in pairs if e["target_object"] == said["new"]]  # the robot took the instruction
    switched = [bool(e["success"]) for e, _ in followed]
    stayed = [said["first"] in e["achieved"] for e, said in followed]
    return {**out, "said": speaker.said, "swap_at_step": at, "swapped": len(followed),
            "switched_rate": float(np.mean(switched)) if followed else None,
            "stayed_rate": float(np.mean(stayed)) if followed else None}


# ---------------------------------------------------------------------------
# Instruction swaps
# ---------------------------------------------------------------------------


def swap_trials(actor: Any, task_id: str, trials: int, at: int, seed: int = 20_000) -> dict[str, Any]:
    """``trials`` episodes of ``task_id`` whose instruction names another object at step ``at``: how often the
    policy then achieves the new object's goal (``switched_rate``) or the first object's (``stayed_rate``: the
    wrong object, after the swap), over the episodes still running at the swap."""
    envs = [make_env(task_id) for _ in range(2)]
    for env in envs:
        env.swap = (at, at)  # So101Env: the instruction names another object, drawn at random, at step ``at``
    try:
        rollouts = run_episodes(actor, get_task(task_id), envs, [seed + k for k in range(trials)])
    finally:
        for env in envs:
            env.close()
    swapped = [r for r in rollouts if r.length > at]
    return {
        "task": task_id,
        "trials": trials,
        "swap_at_step": at,
        "swapped": len(swapped),
        "switched_rate": float(np.mean([bool(r.success) for r in swapped])) if swapped else None,
        "stayed_rate": float(np.mean([r.flags.get("wrong_object", False) for r in swapped])) if swapped else None,
        "episodes": [{"seed": r.seed, "success": bool(r.success), "steps": r.length, **r.flags} for r in rollouts],
    }


# ---------------------------------------------------------------------------
# The job
# ---------------------------------------------------------------------------


def run_demo_so101(cfg: So101DemoConfig) -> dict[str, Any]:
    """Every stage; returns what ``report.md`` shows (also in ``summary.json``)."""
    for t in cfg.tasks:
        get_task(t)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    demo = cfg.demo_config()
    timings: dict[str, float] = {}

    print(f"[1/6] expert demonstrations of {len(cfg.tasks)} tasks into {out / 'data'}")
    collected = collect_demonstrations(demo, cfg.tasks, out, timings)

    extra: tuple[Path, ...] = ()
    if cfg.rosbag_episodes:
        t0 = time.perf_counter()
        task = cfg.tasks[0]
        store = task_path(out / "rosbag", task)
        have = EpisodeStore(store).num_episodes if store.is_dir() else 0
        if have < cfg.rosbag_episodes:
            print(f"[2/6] the expert drives sim-robot over ROS 2 ({task}); recording {cfg.rosbag_episodes - have} "
                  f"episodes into {out / 'bags'}")
            bags = record_expert_over_ros(task, cfg.rosbag_episodes - have, out / "bags" / f"run-{have:04d}",
                                          seed=1_000_000 + have)
            dataset_command(["from-rosbag", *map(str, bags), "--out", str(store), "--robot", str(robot_file(task)),
                             "--task", task], "omnipolicy dataset")
        extra = (out / "rosbag",)
        timings["rosbag_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    print(f"[3/6] training {cfg.preset} for {cfg.train_steps} steps with {demo.rounds_for(cfg.tasks)} DAgger round(s)")
    result = train_with_dagger(demo, out, cfg.tasks, timings, extra_data=extra)
    timings["train_s"] = time.perf_counter() - t0 - timings.get("dagger_s", 0.0)

    t0 = time.perf_counter()
    print(f"[4/6] evaluating {len(cfg.tasks)} tasks x {cfg.eval_episodes} unseen scenes, and held-out phrasings")
    actor = PolicyActor.from_checkpoint(result.checkpoint)
    protocol = {"checkpoint": str(result.checkpoint), "preset": cfg.preset, "training_steps": result.step,
                "demonstrations": {t: collected[t]["episodes"] for t in cfg.tasks},
                "rosbag_demonstrations": cfg.rosbag_episodes, "action_chunk": cfg.action_chunk,
                "chunk_execution": cfg.chunk_execution}
    summary = evaluate(actor, cfg.tasks, cfg.eval_episodes, out, num_envs=4, video=cfg.video, workers=cfg.workers,
                       title="omnipolicy SO-101: camera + instruction -> joint targets", extra_protocol=protocol)
    unseen_tasks = [t.removesuffix("-v1") + "-unseen-v1" for t in cfg.tasks]
    unseen = evaluate(actor, unseen_tasks, cfg.unseen_episodes, out / "unseen", num_envs=4, video=False,
                      workers=cfg.workers, title="omnipolicy SO-101: instructions phrased as in no training episode",
                      extra_protocol=protocol)
    timings["eval_s"] = time.perf_counter() - t0

    swaps = None
    if cfg.swap_trials:
        t0 = time.perf_counter()
        print(f"[5/6] {cfg.swap_trials} {cfg.tasks[0]} episodes whose instruction names another object at step "
              f"{cfg.swap_at}")
        swaps = swap_trials(actor, cfg.tasks[0], cfg.swap_trials, cfg.swap_at)
        write_json_atomic(out / "swaps.json", swaps, indent=1)
        timings["swaps_s"] = time.perf_counter() - t0

    bridge = None
    if cfg.bridge_episodes:
        t0 = time.perf_counter()
        print(f"[6/6] the policy drives sim-robot over ROS 2 for {cfg.bridge_episodes} {cfg.tasks[0]} scenes")
        bridge = policy_over_ros(result.checkpoint, cfg.tasks[0], cfg.bridge_episodes, seed=10_000)
        direct = summary["tasks"][cfg.tasks[0]]["successes"][: cfg.bridge_episodes]  # the same seeds, directly
        bridge["direct_success_rate"] = float(np.mean(direct)) if direct else None
        write_json_atomic(out / "bridge.json", bridge, indent=1)
        timings["bridge_s"] = time.perf_counter() - t0

    everything = {"evaluation": summary, "unseen": unseen, "swaps": swaps, "bridge": bridge, "timings": timings}
    write_json_atomic(out / "timings.json", timings, indent=2)
    write_text_atomic(out / "report.md", (out / "report.md").read_text() + _extra_markdown(everything))
    write_json_atomic(out / "summary.json", everything, indent=1, default=str)
    return everything


def _extra_markdown(s: dict[str, Any]) -> str:
    lines = ["", "## Instructions phrased as in no training episode", ""]
    lines += ["| task | episodes | success |", "| --- | ---: | ---: |"]
    for tid, t in s["unseen"]["tasks"].items():
        lines.append(f"| {tid} | {t['episodes']} | {100 * (t['success_rate'] or 0):.0f}% |")
    lines += ["", "Per phrasing: [unseen/report.md](unseen/report.md)."]
    if s["swaps"]:
        w = s["swaps"]
        rate = "—" if w["switched_rate"] is None else f"{100 * w['switched_rate']:.0f}%"
        lines += ["", "## Instruction swaps", "",
                  f"{w['trials']} {w['task']} episodes; at step {w['swap_at_step']} the instruction names another "
                  f"object. The policy achieved the new object's goal in **{rate}** of the {w['swapped']} episodes "
                  f"still running at the swap, the first object's in {100 * (w['stayed_rate'] or 0):.0f}% "
                  f"(swaps.json)."]
    if s["bridge"] and s["bridge"]["robot"]:
        r = s["bridge"]["robot"]
        lines += ["", "## Over ROS 2", "",
                  f"sim-robot + deploy (DDS on 127.0.0.1, limits, rate limit, watchdog and e-stop on): success "
                  f"**{100 * (r['success_rate'] or 0):.0f}%** over {r['episodes']} episodes, against "
                  f"{100 * (s['bridge'].get('direct_success_rate') or 0):.0f}% in direct simulation on the same "
                  f"seeds (bridge.json)."]
    lines += ["", "## Timings", "", *[f"- {k}: {v:.0f} s" for k, v in s["timings"].items()], ""]
    return "\n".join(lines)


def demo_so101_command(argv: list[str], prog: str) -> None:
    cfg = tyro.cli(So101DemoConfig, args=argv, prog=prog)
    s = run_demo_so101(cfg)
    print("\n" + json.dumps({t: v["success_rate"] for t, v in s["evaluation"]["tasks"].items()})
          + f"\nreport: {cfg.out / 'report.md'}")
