"""``omnipolicy deploy``: drive a ROS 2 robot with a trained policy (or the task's scripted expert), safely.

Each control tick (the fixed-rate control loop, default the task's control
rate; with ``--act-on state`` as soon as every observation topic has brought a
new message) does, in this order:

1. **e-stop**: a ``Bool(True)`` on ``--estop-topic`` latches a stop; only a
   ``Bool(True)`` on ``--estop-clear-topic`` releases it (``False`` on the
   e-stop topic is logged and ignored) -> hold.
2. **watchdog**: every topic of the observation recipe must have delivered a
   valid message within ``--state-timeout`` seconds (receive time) -> else hold,
   logged once when it starts and once when state returns.
3. **rejected state**: a message that cannot be used (unknown, missing or
   duplicate joint names, wrong lengths, NaN/inf, a malformed or undecodable
   message) is rejected with one log line; the robot is held for at least one
   tick, and until a valid message arrives on that topic. ROS allows empty
   ``velocity``/``effort`` arrays: one the recipe reads is said missing once
   (field and topic) and holds; an empty velocity it does not read is
   estimated from consecutive positions.
4. **observation**: the task's observation dict is rebuilt from the newest
   messages by the arm's explicit recipe (:mod:`omnipolicy.robot_bridge.arms`)
   and checked against the checkpoint's ``TimestepSpec`` (checked once at
   start-up too: a checkpoint of another task or layout never runs).
5. **act**: the policy (``--actor policy``; ``Policy.from_checkpoint``) or the
   task's scripted expert (``--actor expert``, on a local copy of the
   simulator synced to the observation: validates the wiring before you trust
   a policy).
6. **safety**: :class:`~omnipolicy.robot_bridge.wire.safety.SafetyFilter` clips the
   command to the joint position, velocity and effort limits and the maximum
   change per step (the rate limit: on by default with the arm's figure, its
   expert's largest change per step with a margin, printed at start;
   ``--max-delta`` tightens it, ``--no-rate-limit`` turns it off with a
   warning); every clip is counted and reported.
7. **publish** the command (the arm's command topic: ``Float64MultiArray`` in controller joint order, or a
   one-point ``JointTrajectory``). An arm split over controllers (``[[command]]`` groups in its robot file)
   gets one message per group, each of its own joints, from the one filtered command.

**The robot.** ``--task`` picks a shipped arm (``robot_bridge/robots/``); ``--robot FILE`` reads any robot file
(:mod:`omnipolicy.robot_bridge.robot_file`). The checkpoint's task is ``--task``, else the file's ``task``; a file
without one needs ``--task`` naming a task id of the checkpoint, which need not be registered in ``envs`` (the
checkpoint carries its spec). Before anything is sent the policy's spec must match the robot
(:meth:`~omnipolicy.robot_bridge.robot_file.ArmSpec.check_spec`): observation keys, shapes, image sizes, one action
value per joint, and the element names where the checkpoint's fields carry them; else deploy refuses, naming the
mismatch.

**When to act.** ``--act-on clock`` (default) ticks on deploy's own clock at the control rate: right for a
robot whose topics come at their own rates (joint states at 100 Hz, a camera at 30). The robot's clock and
deploy's are not in phase, so an observation waits up to a period for the tick and the command up to a period
for the robot's next control step. ``--act-on state`` acts as soon as every topic of the observation has
brought a new message since the last tick (at most every 0.9 periods, at least every 1.5; the watchdog judges
then): for a robot that publishes its whole state once per control period, as ``sim-robot`` does, the command
reaches the step after the observation, as in simulation. The report's ``observation_age`` (receive to act, of
the newest joint state) shows the lag either way.

Holding publishes the interface's hold command (zero effort; see
:mod:`~omnipolicy.robot_bridge.wire.safety`). A command not ready one period after
its tick is never sent: the control loop sends the hold command instead.
After a hold or a late tick, and on every ``Bool(True)`` on the arm's episode
topic (and every new instruction), the policy's context is reset: its history
no longer matches the robot. A new episode also starts the rate limit afresh,
as at start-up (the arm was reset; the velocity guard bounds the first
command), so the last scene's last command does not hold the new one back.
The expert twin keeps its state machine over a hold (it re-plans from the
synced scene at every step; a grasp in progress goes on) and starts afresh
only at a new episode or instruction.
The policy acts through a KV-cached ``InferenceSession`` (a few ms a step on
a CPU for the tiny presets). The node keeps running when the robot
side restarts (state goes stale -> hold; state returns -> resume).
SIGINT/SIGTERM: publish one last hold command, write the summary, close.

Network: ``--network system`` (default) joins the ROS 2 graph the
environment describes, as ``ros2 run`` would (``ROS_DOMAIN_ID``,
``ROS_AUTOMATIC_DISCOVERY_RANGE``, ``ROS_STATIC_PEERS``, ``RMW_IMPLEMENTATION``,
``CYCLONEDDS_URI``, ...); ``--network loopback`` keeps every packet on
127.0.0.1 (tests, benchmarks).

Transports: ``dds`` runs anywhere ``.venv`` runs. ``rclpy`` needs rclpy *and*
torch in one interpreter: build ``.venv-ros`` with
``scripts/make_ros_venv.sh --with-torch`` (torch 2.13.0 is installed there
first, pinned) and run ``.venv-ros/bin/omnipolicy deploy --transport rclpy``;
``--actor expert`` needs only ``--with-sim``.

    omnipolicy deploy --checkpoint runs/reacher --task dmc/reacher-easy --transport dds
    omnipolicy deploy --actor expert --task dmc/reacher-easy --transport rclpy --duration 30
    omnipolicy deploy --actor expert --robot robot_bridge/robots/so101_lift.toml
    omnipolicy deploy --checkpoint runs/arm --robot my_arm.toml --task my/arm-task --transport dds
"""

from __future__ import annotations

import logging
import math
import signal
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import tyro

from omnipolicy.envs import TaskSpec, get_task, list_tasks, make_expert
from omnipolicy.envs.rollout import Actor
from omnipolicy.files import write_json_atomic
from omnipolicy.robot_bridge.arms import ArmSpec, arm_of, get_arm, make_sim_arm
from omnipolicy.robot_bridge.robot_file import NamedSource
from omnipolicy.robot_bridge.sim_robot import emit, percentiles_ms, setup_logging
from omnipolicy.robot_bridge.wire.control_loop import TRIGGER_SPACING, ControlLoop, ControlLoopConfig
from omnipolicy.robot_bridge.wire.messages import (
    Bool,
    Image,
    JointMap,
    JointState,
    RosMessage,
    String,
    image_to_array,
)
from omnipolicy.robot_bridge.wire.network import Network
from omnipolicy.robot_bridge.wire.safety import EStopLatch, SafetyFilter, SafetyLimits, Watchdog, parse_joint_limits
from omnipolicy.robot_bridge.wire.transport import (
    QOS_DEFAULT,
    QOS_ROS2_CONTROL,
    QOS_SENSOR_DATA,
    Transport,
    make_transport,
)
from omnipolicy.tokenizers import TimestepSpec, Tokenizer, check_observation

log = logging.getLogger("omnipolicy.deploy")

HOLD_REASONS = ("estop", "stale", "rejected", "observation", "actor", "safety", "late")
#: The task (and arm) deploy drives without --task or --robot.
DEFAULT_TASK = "dmc/reacher-easy"


@dataclass(frozen=True)
class DeployConfig:
    """Drive a ROS 2 robot with a trained policy (or the task's scripted expert) behind a safety filter."""

    task: str | None = None
    """Task the robot performs: without --robot, a task with a shipped arm (dmc/reacher-easy, the default,
    dmc/reacher-easy-pixels, so101/{lift,place,push}-v1 and their -unseen- variants); with --robot, the checkpoint's
    task id (default: the robot file's `task`)."""
    robot: Path | None = None
    """Robot file (TOML; docs/ros2.md) of the arm to drive, instead of --task's shipped arm."""
    checkpoint: Path | None = None
    """Checkpoint (step or run directory) of the policy; required with --actor policy."""
    actor: Literal["policy", "expert"] = "policy"
    """policy: the checkpoint; expert: the task's scripted expert on a local simulator synced to the observation."""
    transport: Literal["dds", "rclpy"] = "dds"
    """rclpy: a real ROS 2 node; dds: ROS 2's wire protocol over Cyclone DDS (no ROS install)."""
    network: Network = "system"
    """system: the ROS 2 environment as `ros2 run` reads it (ROS_DOMAIN_ID, ROS_AUTOMATIC_DISCOVERY_RANGE,
    ROS_STATIC_PEERS, RMW_IMPLEMENTATION, CYCLONEDDS_URI, ...); loopback: 127.0.0.1 only (tests, benchmarks)."""
    domain_id: int | None = None
    """ROS domain id (default: ROS_DOMAIN_ID or 0)."""
    rate_hz: float = 0.0
    """Control rate (0: the arm's control rate, 50 Hz for dmc/reacher-easy)."""
    act_on: Literal["clock", "state"] = "clock"
    """clock: tick at the control rate on deploy's clock (any robot); state: act as soon as every observation topic
    has brought a new message (a robot that publishes its state once per control period, such as sim-robot: no
    phase lag between its clock and deploy's)."""
    state_timeout: float | None = None
    """Watchdog: hold when the newest valid state of any observation topic is older than this (s; default: 0.1 s or
    2.5 control periods, whichever is longer: a 10 Hz arm's states arrive every 0.1 s)."""
    max_delta: float | None = None
    """Tighter maximum change of every joint's command between two ticks (default: the arm's rate limit, its
    expert's largest change per tick with a margin; printed at start)."""
    no_rate_limit: bool = False
    """Turn the rate limit off (the command may then jump by the whole effort range in one tick; warned at start)."""
    effort_limit: float | None = None
    """Tighter absolute effort limit for every joint (default: the arm's)."""
    velocity_limit: float | None = None
    """Tighter joint speed limit for every joint, rad/s (default: the arm's)."""
    position_limit: tuple[str, ...] = ()
    """Tighter joint position limits, each 'joint:lower:upper' in rad (repeatable)."""
    estop_topic: str = "/estop"
    """std_msgs/Bool: True latches an emergency stop."""
    estop_clear_topic: str = "/estop/clear"
    """std_msgs/Bool: True clears a latched emergency stop."""
    duration: float = 0.0
    """Stop after this many seconds (0: run until SIGINT/SIGTERM)."""
    summary: Path | None = None
    """Write the final statistics JSON here (atomically)."""
    device: str = "cpu"
    """torch device of the policy."""
    temperature: float = 0.0
    """Policy sampling temperature (0: greedy)."""
    continuous_decoding: Literal["auto", "mean", "mode"] = "auto"
    """Greedy bin of a continuous action dimension, as in ``omnipolicy eval``: mean (expected bin), mode (most
    likely bin), or auto: the checkpoint's own preference (its training run's ``--decoding``)."""
    torch_threads: int = 1
    """torch CPU threads (0: torch's default). One is fastest for the small presets on a shared CPU: measured here
    under load, a control step took 3.1 ms p50 / 7.7 ms p99 with 1 thread and 16.5 / 77.6 ms with 2."""
    log_level: str = "INFO"
    """Logging level (stderr)."""
    instruction: str | None = None
    """The instruction of a policy that reads one (a text observation field, e.g. a LeRobot dataset's task):
    given to every step (required by such a policy)."""

    def __post_init__(self) -> None:
        if self.actor == "policy" and self.checkpoint is None:
            raise ValueError("deploy --actor policy needs --checkpoint (or use --actor expert to validate the wiring)")
        if self.state_timeout is not None and not self.state_timeout > 0:
            raise ValueError(f"--state-timeout must be > 0 seconds, got {self.state_timeout}")
        if self.torch_threads < 0:
            raise ValueError(f"--torch-threads must be >= 0 (0: torch's default), got {self.torch_threads}")
        if self.rate_hz < 0 or self.duration < 0:
            raise ValueError(f"--rate-hz and --duration must be >= 0, got {self.rate_hz} and {self.duration}")
        if self.no_rate_limit and self.max_delta is not None:
            raise ValueError(f"--max-delta {self.max_delta} and --no-rate-limit contradict each other; give one of them")


@dataclass(frozen=True)
class RobotTask:
    """The task of an arm known only by its robot file: a checkpoint's task id the registry does not know, and the
    spec the file implies (an actor with a spec of its own, a checkpoint's, acts with that one)."""

    id: str
    timestep: Any
    instruction: str = ""


def deploy_target(cfg: "DeployConfig") -> tuple[ArmSpec, TaskSpec | RobotTask]:
    """The arm to drive and the task the actor acts in (``--robot`` / ``--task``; module docstring, "The robot").

    Raises:
        ValueError: a robot file without a task and no ``--task``; ``--actor expert`` for an unregistered task.
        KeyError: no arm for ``--task`` (without ``--robot``).
        FileNotFoundError, ~omnipolicy.robot_bridge.robot_file.RobotFileError: a missing or invalid robot file.
    """
    arm = arm_of(cfg.task or DEFAULT_TASK, cfg.robot)
    task_id = cfg.task or arm.task_id
    if not task_id:
        raise ValueError(f"robot file {str(cfg.robot)!r} names no `task`: give --task, a task id of the checkpoint")
    if cfg.robot is None or task_id in {t.id for t in list_tasks()}:
        return arm, get_task(task_id)
    if cfg.actor == "expert":
        raise ValueError(f"--actor expert needs a registered task with a scripted expert; {task_id!r} is not one")
    return arm, RobotTask(task_id, arm.timestep_spec())


# ---------------------------------------------------------------------------
# Actors
# ---------------------------------------------------------------------------


def policy_actor(cfg: "DeployConfig") -> Actor:
    """``--actor policy``: the checkpoint acting through its KV-cached session (a few ms a control step on a CPU).

    Each step prefills one timestep's observation tokens and decodes the action tokens instead of recomputing the
    whole context window.
    """
    # torch and the model load only when a policy acts: `deploy --actor expert` runs in the ROS venv, which has no torch
    import torch  # noqa: PLC0415

    from omnipolicy.agent import PolicyActor  # noqa: PLC0415  (imports torch)

    if cfg.torch_threads > 0 and torch.device(cfg.device).type == "cpu":
        torch.set_num_threads(cfg.torch_threads)
    return PolicyActor.from_checkpoint(cfg.checkpoint, device=cfg.device, temperature=cfg.temperature,
                                       continuous_decoding=cfg.continuous_decoding)


class TwinExpertActor:
    """``--actor expert``: the task's scripted expert on a local copy of the simulator, synced to each observation.

    An :class:`~omnipolicy.envs.rollout.Actor` for one environment that it does not see (the robot): the expert
    reads the twin's simulator instead. Some twins read more of the robot than the policy's observation (the SO-101's
    object poses on its task-state topic): :attr:`sources` names them, and the deploy node subscribes to them and adds
    them to the observation the twin gets (never to a policy's).

    Args:
        arm: the robot being driven (default: the task's registered arm), whose simulator the twin is.
    """

    name = "expert"

    def __init__(self, arm: ArmSpec | None = None) -> None:
        self.arm = arm
        self.sources: tuple[NamedSource, ...] = ()

    def begin(self, task: TaskSpec, envs: Sequence) -> None:
        self.spec = task.timestep
        self.twin = make_sim_arm(task.id if self.arm is None else  # the task's simulator, the robot's topics
                                 replace(self.arm, task_id=task.id, sim=get_arm(task.id).sim))
        keys = sorted(f.name for f in self.spec.observation)
        if not set(self.twin.twin_keys) <= set(keys):
            raise ValueError(
                f"--actor expert for {task.id} syncs its simulator from observation keys {list(self.twin.twin_keys)}, "
                f"but the task observes {keys}; use a state task of the same arm to validate the wiring"
            )
        self.sources = self.twin.twin_sources()
        self.twin.reset(0)
        self.expert = make_expert(task.id)

    def reset_env(self, index: int, obs: dict) -> None:
        self.twin.sync_to(obs)
        self.expert.reset(self.twin.env, dict(obs))

    def resume(self, index: int, obs: dict) -> None:
        """After a hold (not a new episode or instruction): the expert keeps its state (a grasp in progress); it
        re-plans from the synced scene at every step anyway."""

    def close(self) -> None:
        close_twin = getattr(getattr(self, "twin", None), "close", None)
        if close_twin is not None:
            close_twin()

    def act(self, active: Sequence[int], observations: Sequence[dict]) -> list[np.ndarray]:
        actions = []
        for obs in observations:
            self.twin.sync_to(obs)
            actions.append(np.asarray(self.expert.act(self.twin.env, dict(obs))))
        return actions


# ---------------------------------------------------------------------------
# The node
# ---------------------------------------------------------------------------


@dataclass
class _Topic:
    """The newest valid message of one observation topic."""

    msg: RosMessage | None = None
    values: dict[str, np.ndarray] = field(default_factory=dict)  # source key -> vector (named sources)
    invalid: bool = False  # the newest message was rejected: hold until a valid one comes
    unseen_reject: bool = False  # a rejection no tick has acted on yet: hold at least one tick for it
    rejected: int = 0
    transport_rejected_seen: int = 0
    missing: tuple[str, ...] = ()  # needed fields the newest messages left empty (said once, until they come back)
    last_position: tuple[np.ndarray, float, float] | None = None  # (position, stamp s, receive s): velocity estimate


def arm_limits(arm: ArmSpec, cfg: DeployConfig) -> SafetyLimits:
    """The arm's limits, tightened by the command-line overrides (never loosened), without the rate limit
    only if ``--no-rate-limit`` says so.

    Raises:
        ValueError: an override that loosens a limit, or a bad ``joint:lower:upper``.
    """
    lim = arm.limits
    changes: dict[str, Any] = {"max_delta": None} if cfg.no_rate_limit else {}
    for name, value in (("effort_limit", cfg.effort_limit), ("velocity_limit", cfg.velocity_limit),
                        ("max_delta", cfg.max_delta)):
        if value is not None:
            if any(value > v for v in getattr(lim, name)):
                hint = "; --no-rate-limit turns the rate limit off" if name == "max_delta" else ""
                raise ValueError(f"--{name.replace('_', '-')} {value} loosens the arm's limit {list(getattr(lim, name))}{hint}")
            changes[name] = value
    if cfg.position_limit:
        lower, upper = list(lim.position_lower), list(lim.position_upper)
        for joint, (lo, hi) in parse_joint_limits(cfg.position_limit, lim.joints).items():
            k = lim.joints.index(joint)
            if lo < lower[k] or hi > upper[k]:
                raise ValueError(f"--position-limit {joint}:{lo}:{hi} loosens the arm's limits [{lower[k]}, {upper[k]}]")
            lower[k], upper[k] = lo, hi
        changes.update(position_lower=tuple(lower), position_upper=tuple(upper))
    return lim.replace(**changes) if changes else lim


def instruction_problem(spec: TimestepSpec, text: str, tokenizer: Tokenizer) -> str | None:
    """Why a policy of ``spec`` cannot read ``text`` as its instruction (more tokens than a text field's fixed
    width), or None."""
    widths = {f.name: f.n for f in spec.observation if f.kind == "text" and f.n is not None}
    if not widths:
        return None
    tokens = len(tokenizer.encode_text(text))
    over = {name: n for name, n in widths.items() if tokens > n}
    if over:
        return (f"{tokens} text tokens, but the policy reads instructions of at most {min(over.values())} "
                f"(field(s) {sorted(over)}); say it in fewer words")
    return None


class Deployer:
    """The deploy node: subscriptions, the per-tick decision, the command publisher; a context manager.

    Args:
        cfg: the configuration.
        transport: an open transport (default: made from ``cfg``; closed with the node).
        actor: what acts (default: from ``cfg``), an :class:`~omnipolicy.envs.rollout.Actor` of one environment (the
            robot; its envs are ``[None]``); an actor that acts with a spec of its own (a checkpoint's) has it as
            ``spec`` after ``begin``.

    Raises:
        KeyError: no arm for the task, or a checkpoint not trained on it.
        ValueError: the policy's observation or action does not match the robot (:meth:`ArmSpec.check_spec`), or
            see :func:`deploy_target`.
    """

    def __init__(self, cfg: DeployConfig, transport: Transport | None = None, actor: Any = None) -> None:
        self.cfg = cfg
        self.arm, task = deploy_target(cfg)
        arm = self.arm
        self.task_id = task.id
        if actor is None:
            actor = TwinExpertActor(self.arm) if cfg.actor == "expert" else policy_actor(cfg)
        self.actor = actor
        actor.begin(task, [None])
        self.spec = getattr(actor, "spec", task.timestep)
        try:
            arm.check_spec(self.spec)  # before any command is sent
        except ValueError as e:
            raise ValueError(f"the policy for {task.id!r} does not match robot {arm.name or arm.label!r}"
                             f"{f' ({arm.source})' if arm.source else ''}: {e}") from None
        # the text fields (an instruction) the policy reads: --instruction, then each String on the arm's
        # instruction topic (a new instruction starts a new context)
        self.text = {f.name: cfg.instruction for f in self.spec.observation if f.kind == "text"}
        self._tokenizer = Tokenizer.default()
        if cfg.instruction is not None and (problem := instruction_problem(self.spec, cfg.instruction, self._tokenizer)):
            raise ValueError(f"--instruction {cfg.instruction!r}: {problem}")
        self._said_waiting = False
        if self.text and cfg.instruction is None and arm.instruction_topic is None:
            raise ValueError(f"the policy for {task.id!r} reads an instruction (text field(s) {sorted(self.text)}): "
                             f"give --instruction TEXT, e.g. the task string it was trained with, or an "
                             f"[instruction] topic in the robot file")
        self.period = 1.0 / cfg.rate_hz if cfg.rate_hz > 0 else arm.control_period
        self.safety = SafetyFilter(arm_limits(arm, cfg), dt=self.period)
        self.joints = JointMap(arm.joints)
        self.estop = EStopLatch()
        # what the expert twin reads besides the observation (the SO-101's task state); never a policy's input
        self.twin_sources: tuple[NamedSource, ...] = tuple(getattr(actor, "sources", ()))
        # the joint states are always read: the safety filter and the hold command need them
        self.topic_types = {arm.joint_states_topic: JointState, **arm.observation.topics,
                            **{s.topic: JointState for s in self.twin_sources}}
        if self.topic_types[arm.joint_states_topic] is not JointState:
            raise ValueError(f"{arm.joint_states_topic} must carry JointState messages")
        self.state_timeout = cfg.state_timeout or max(0.1, 2.5 * self.period)
        self.watchdogs = {topic: Watchdog(self.state_timeout) for topic in self.topic_types}
        self._lock = threading.Lock()
        self._topics = {topic: _Topic() for topic in self.topic_types}
        self._fresh: set[str] = set()  # topics with a new valid message since the last tick
        self.observed = threading.Event()  # every topic has one: what --act-on state ticks on
        self._sources: dict[str, list[Any]] = {topic: [] for topic in self.topic_types}
        for s in (*arm.observation.sources, *self.twin_sources):
            self._sources.setdefault(s.topic, []).append(s)
        # JointState fields the node cannot act without: topic -> field -> who needs it
        self._needs: dict[str, dict[str, list[str]]] = {arm.joint_states_topic: {"position": ["the safety filter"]}}
        for s in (*arm.observation.sources, *self.twin_sources):
            if isinstance(s, NamedSource):
                who = f"the expert twin's {s.key!r}" if s in self.twin_sources else f"observation {s.key!r}"
                self._needs.setdefault(s.topic, {}).setdefault(s.field, []).append(who)
        self._estimating = False  # the joint states carry no velocity (said once)
        self._reset_requested = False
        self._new_episode = False  # a start on the episode topic: the scene (and the arm) were reset
        self._restart = True  # a start (the first, a new episode or instruction) the actor has not acted on yet
        self._late = False
        self._holding: str | None = "stale"  # nothing received yet
        self.holds = {r: 0 for r in HOLD_REASONS}
        self.ticks = 0
        self.acted = 0
        self.context_resets = 0
        self.act_time: list[float] = []
        self.observation_age: list[float] = []  # receive to act, of the newest joint state
        self.observations_overrun = 0  # complete observations replaced before a tick took them
        self.tick_time: list[float] = []
        self.last_command: np.ndarray | None = None
        self.last_reason: str | None = None
        self.loop: ControlLoop | None = None
        self._stop_requested = False

        self._own_transport = transport is None
        if transport is None:
            kwargs: dict[str, Any] = {"domain_id": cfg.domain_id, "network": cfg.network}
            if cfg.transport == "rclpy":
                kwargs["node_name"] = "omnipolicy_deploy"
            transport = make_transport(cfg.transport, **kwargs)
        self.t = transport
        # one publisher per command group (controller); a one-table [command] is one group of every joint
        self.pubs = [self.t.publisher(g.topic, g.message_class, arm.qos_of(g.topic, QOS_ROS2_CONTROL))
                     for g in arm.commands]
        self.subs = {}
        for topic, cls in self.topic_types.items():
            qos = arm.qos_of(topic, QOS_SENSOR_DATA if cls is Image else QOS_ROS2_CONTROL)
            self.subs[topic] = self.t.subscription(topic, cls, lambda m, topic=topic: self.on_state(topic, m), qos)
        self.t.subscription(cfg.estop_topic, Bool, self.on_estop, QOS_DEFAULT)
        self.t.subscription(cfg.estop_clear_topic, Bool, self.on_estop_clear, QOS_DEFAULT)
        self.t.subscription(arm.episode_topic, Bool, self.on_episode, arm.qos_of(arm.episode_topic, QOS_DEFAULT))
        if self.text and arm.instruction_topic is not None:
            self.t.subscription(arm.instruction_topic, String, self.on_instruction,
                                arm.qos_of(arm.instruction_topic, QOS_DEFAULT))
        log.info("deploying %s (%s) on %s (%s network) at %.1f Hz (%s); observation recipe: %s", self.task_id,
                 cfg.actor, self.t.name, self.t.network, 1.0 / self.period,
                 "on each new state" if cfg.act_on == "state" else "on deploy's clock",
                 "; ".join(arm.observation.describe()))
        if self.twin_sources:
            log.info("the expert twin also reads (never a policy): %s", "; ".join(s.describe() for s in self.twin_sources))
        log.info("commands: %s", arm.describe_commands())
        self._log_rate_limit()

    @property
    def max_delta(self) -> dict[str, float | None] | None:
        """The rate limit in force: joint -> largest command change per tick (None: no limit for it), or None if off."""
        lim = self.safety.limits
        if all(math.isinf(d) for d in lim.max_delta):
            return None
        return {j: None if math.isinf(d) else round(d, 6) for j, d in zip(lim.joints, lim.max_delta)}

    def _log_rate_limit(self) -> None:
        limit = self.max_delta
        if limit is None:
            log.warning("rate limit OFF (--no-rate-limit): a command may change by the whole effort range in one tick")
            return
        where = (f"max_delta of {self.cfg.robot}" if self.cfg.robot is not None else
                 "the arm's default: its expert's largest change per tick with a margin")
        source = ("--max-delta" if self.cfg.max_delta is not None else f"{where}; --max-delta tightens it, "
                  "--no-rate-limit turns it off")
        per_joint = ", ".join(f"{j} {'unlimited' if d is None else f'{d:g}'}" for j, d in limit.items())
        log.info("rate limit: each joint's command changes by at most %s per tick (%s)", per_joint, source)

    # -------------------------------------------------------------- callbacks
    def on_state(self, topic: str, msg: RosMessage, now: float | None = None) -> None:
        """A message on an observation topic: keep it if the recipe can use it, else reject it (one log line).

        ROS allows empty ``velocity`` and ``effort`` arrays in a ``JointState``. A field the node needs (one the
        recipe reads, or the joint positions) left empty is rejected and said once, until it comes back; an empty
        velocity on the joint states the recipe does not read is estimated from consecutive positions (the
        safety filter's velocity limit needs it).
        """
        now = time.monotonic() if now is None else now
        needs = self._needs.get(topic, {})
        missing = tuple(f for f in needs if len(getattr(msg, f)) == 0)
        if missing:
            empty = "; ".join(f"JointState.{f} is empty but needed by {' and '.join(needs[f])}" for f in missing)
            self._reject(topic, msg, f"{empty}; said once, until a JointState on {topic} carries {' and '.join(missing)}",
                         missing)
            return
        try:
            values = {}
            for s in self._sources[topic]:
                if isinstance(s, NamedSource):
                    values[s.key] = s.values(msg).astype(self._dtype(s.key))  # (n,) in the spec's dtype
                else:
                    values[s.key] = image = image_to_array(msg)  # type: ignore[arg-type]  # (H, W, C) RGB uint8
                    want = self._shape(s.key)
                    if image.shape != want:
                        raise ValueError(f"image of shape {image.shape}, observation {s.key!r} needs {want}")
            if topic == self.arm.joint_states_topic:
                values["_position"] = self.joints.task_vector(msg, "position")  # type: ignore[arg-type]
                if len(msg.velocity):  # type: ignore[attr-defined]  # empty: estimated below (the recipe does not read it)
                    values["_velocity"] = self.joints.task_vector(msg, "velocity")  # type: ignore[arg-type]
        except ValueError as e:
            self._reject(topic, msg, str(e))
            return
        with self._lock:
            st = self._topics[topic]
            if topic == self.arm.joint_states_topic and "_velocity" not in values:
                values["_velocity"] = self._estimate_velocity(st, values["_position"], msg, now)  # type: ignore[arg-type]
                if values["_velocity"] is None:
                    return  # no estimate yet (first message, or after a gap): not usable, the watchdog is not fed
            st.msg, st.values, st.invalid, st.missing = msg, values, False, ()
            self.watchdogs[topic].feed(now)
            self._fresh.add(topic)
            if len(self._fresh) == len(self._topics):
                self._fresh.clear()
                if self.observed.is_set():  # the last one was never acted on: states come faster than the ticks
                    self.observations_overrun += 1
                    if self.observations_overrun == 1 and self.cfg.act_on == "state":
                        log.warning("a new observation arrived before deploy acted on the last: the robot publishes "
                                    "faster than the control rate (%.1f Hz), and --act-on state acts at most every "
                                    "%g periods; --act-on clock suits such a robot", 1.0 / self.period,
                                    TRIGGER_SPACING[0])
                self.observed.set()

    def _reject(self, topic: str, msg: RosMessage, reason: str, missing: tuple[str, ...] = ()) -> None:
        """Hold until a valid message comes; one log line (for missing fields: once, until they come back)."""
        with self._lock:
            st = self._topics[topic]
            st.invalid = st.unseen_reject = True
            st.rejected += 1
            said, st.missing = bool(missing) and st.missing == missing, missing
        if not said:
            log.warning("rejected a %s on %s: %s (robot held until a valid one)", type(msg).__name__, topic, reason)

    def _estimate_velocity(self, st: _Topic, position: np.ndarray, msg: JointState, now: float) -> np.ndarray | None:
        """(J,) joint velocity from the change of position since the previous message (header stamps when both are
        set, else receive times); None without a previous message at most ``--state-timeout`` before."""
        stamp = msg.header.stamp.sec + 1e-9 * msg.header.stamp.nanosec
        previous, st.last_position = st.last_position, (position, stamp, now)
        if not self._estimating:
            self._estimating = True
            log.info("%s carries no velocity: estimating it from consecutive positions for the safety filter",
                     self.arm.joint_states_topic)
        if previous is None:
            return None
        p0, stamp0, now0 = previous
        dt = stamp - stamp0 if stamp > 0 and stamp0 > 0 else now - now0
        return (position - p0) / dt if 0 < dt <= self.state_timeout else None

    def on_estop(self, msg: Bool) -> None:
        if msg.data:
            if self.estop.engage():
                log.error("E-STOP engaged on %s: holding until a True on %s", self.cfg.estop_topic, self.cfg.estop_clear_topic)
        else:
            if self.estop.engaged:
                log.warning("e-stop False on %s ignored: the stop is latched; publish True on %s to clear it",
                            self.cfg.estop_topic, self.cfg.estop_clear_topic)
            self.estop.release_request()

    def on_estop_clear(self, msg: Bool) -> None:
        if msg.data and self.estop.clear():
            log.warning("e-stop cleared on %s", self.cfg.estop_clear_topic)

    def on_episode(self, msg: Bool) -> None:
        if msg.data:
            with self._lock:
                self._reset_requested = self._new_episode = True

    def on_instruction(self, msg: String) -> None:
        """A new instruction: every text field of the observation takes it, and the policy's context starts afresh.
        One the policy cannot read (too long) is logged and ignored: the arm goes on with the previous one."""
        with self._lock:
            if all(v == msg.data for v in self.text.values()):
                return
            if problem := instruction_problem(self.spec, msg.data, self._tokenizer):
                log.error("ignored the instruction on %s: %r: %s", self.arm.instruction_topic, msg.data, problem)
                return
            log.info("new instruction on %s: %r", self.arm.instruction_topic, msg.data)
            self.text = dict.fromkeys(self.text, msg.data)
            self._reset_requested = True

    # ------------------------------------------------------------------ tick
    def _hold_reason(self, now: float) -> str | None:
        if self.estop.engaged:
            return "estop"
        stale = rejected = False
        for topic, st in self._topics.items():
            sub_rejected = self.subs[topic].rejected  # undecodable / inconsistent messages the transport dropped
            if sub_rejected != st.transport_rejected_seen:
                st.transport_rejected_seen = sub_rejected
                st.unseen_reject = True  # counted and logged (one line each) by the subscription itself
            if st.invalid or st.unseen_reject:
                st.unseen_reject = False
                rejected = True
            stale |= not self.watchdogs[topic].fresh(now)
        # stale outranks rejected: a sender that died right after a bad message is a dead sender
        return "stale" if stale else "rejected" if rejected else None

    def decide(self, step: int = 0, now: float | None = None) -> np.ndarray | None:
        """One control step's command (the control loop's callback): act, or the hold command.

        Returns:
            (J,) task-order command to send, or None (nothing to send: a position hold without a known position).
        """
        t0 = time.perf_counter()
        now = time.monotonic() if now is None else now
        self.ticks += 1
        with self._lock:
            reason = self._hold_reason(now)
            values = {k: v for st in self._topics.values() for k, v in st.values.items()}
            reset, self._reset_requested = self._reset_requested, False
            new_episode, self._new_episode = self._new_episode, False
            late, self._late = self._late, False
            self.observed.clear()  # taken (a next one may be arriving: its topics so far stay counted)
            age = self.watchdogs[self.arm.joint_states_topic].age(now)
        if new_episode:  # the arm was reset: the rate limit starts afresh, as at start-up, not from the last scene's
            self.safety.last_sent = None  # last command (the velocity guard still bounds the first one)
        command = None
        if reason is None:
            # a new episode, or the history broke (a hold, or a late action replaced): the actor starts afresh
            fresh = reset or late or self._holding is not None
            self.context_resets += fresh
            self._restart |= reset  # a new episode or instruction: kept until the actor has acted on it
            command, reason = self._act(values, fresh)
            if reason is None:
                self.observation_age.append(age)
        else:
            self._restart |= reset
        if reason is not None:
            command = self._hold(reason, now, values.get("_position"))
        elif self._holding is not None:
            log.info("resumed after holding (%s)", self._holding)
            self._holding = None
        self.last_reason = reason
        self.tick_time.append(time.perf_counter() - t0)
        return command

    def send(self, command: np.ndarray) -> None:
        """Publish a command (task order -> each controller's order, one message per command group); it becomes the
        rate limiter's reference."""
        command = np.asarray(command, dtype=np.float64)
        for pub, (_, msg) in zip(self.pubs, self.arm.split_command(self.joints.robot_vector(command))):
            pub.publish(msg)
        self.safety.last_sent = command
        self.last_command = command

    def fallback(self) -> np.ndarray | None:
        """What the control loop sends when a command misses its deadline: the hold command."""
        self.holds["late"] += 1
        with self._lock:
            self._late = True  # the actor's last action never went out: its context no longer matches the robot
            position = self._topics[self.arm.joint_states_topic].values.get("_position")
        return self.safety.hold(position, commit=False)

    def tick(self, now: float | None = None) -> np.ndarray | None:
        """:meth:`decide` then :meth:`send` (one step without the control loop); returns what was sent."""
        command = self.decide(0, now)
        if command is not None:
            self.send(command)
        return command

    def run(self, duration: float | None = None, handle_signals: bool = False) -> dict[str, Any]:
        """Run in the fixed-rate :class:`ControlLoop` until ``duration`` passes or :meth:`stop`; then hold.

        A command that misses its deadline (one period) is never sent; the hold command goes out instead.

        Args:
            duration: seconds to run (None: until stopped).
            handle_signals: SIGINT/SIGTERM stop the loop (main thread only).

        Returns:
            :meth:`report` with the loop's ``LoopSummary`` under ``"loop"``.
        """
        loop_cfg = ControlLoopConfig(rate_hz=1.0 / self.period, fallback="default", default_action=self.fallback,
                                     duration_s=duration, print_summary=False,
                                     trigger=self.observed if self.cfg.act_on == "state" else None)
        self.loop = ControlLoop(self.decide, loop_cfg, send=self.send)
        if self._stop_requested:
            self.loop.stop()
        with self.loop:
            summary = self.loop.run(handle_signals=(signal.SIGINT, signal.SIGTERM) if handle_signals else ())
        final = self.safety.hold(self._topics[self.arm.joint_states_topic].values.get("_position"), commit=False)
        if final is not None:
            self.send(final)  # leave the robot with the hold command
        log.info("%s", summary)
        out = self.report()
        out["loop"] = summary.to_dict()
        return out

    def stop(self) -> None:
        """Ask :meth:`run` to return (from another thread or a signal handler)."""
        self._stop_requested = True
        if self.loop is not None:
            self.loop.stop()

    def _act(self, values: Mapping[str, np.ndarray], fresh: bool) -> tuple[np.ndarray | None, str | None]:
        try:
            if None in self.text.values():
                if not self._said_waiting:
                    log.warning("holding until an instruction arrives on %s", self.arm.instruction_topic)
                    self._said_waiting = True
                return None, "observation"
            obs = {**{s.key: values[s.key] for s in self.arm.observation.sources}, **self.text}
            check_observation(self.spec, obs)
            obs.update({s.key: values[s.key] for s in self.twin_sources})  # the expert twin's extra state
        except (KeyError, ValueError) as e:
            log.warning("observation rejected: %s", e)
            return None, "observation"
        t0 = time.perf_counter()
        try:
            if fresh and (self._restart or not hasattr(self.actor, "resume")):
                self.actor.reset_env(0, obs)
            elif fresh:  # after a hold: an actor whose state is the scene's, not a history (the expert twin), goes on
                self.actor.resume(0, obs)
            self._restart = False
            action = np.asarray(self.actor.act([0], [obs])[0], dtype=np.float64).reshape(-1)
        except Exception as e:  # noqa: BLE001  the robot is held; the node keeps running
            log.error("actor failed: %s: %s", type(e).__name__, e)
            return None, "actor"
        self.act_time.append(time.perf_counter() - t0)
        try:
            # not committed: the control loop may still drop it as late; send() makes it the rate limit's reference
            safe = self.safety.filter(action, values["_position"], values["_velocity"], commit=False)
        except ValueError as e:
            log.error("unsafe action rejected: %s", e)
            return None, "safety"
        for kind, joints in safe.clipped.items():
            log.debug("clipped (%s) %s: %s -> %s", kind, [j for j, c in zip(self.safety.limits.joints, joints) if c],
                      safe.requested.tolist(), safe.command.tolist())
        self.acted += 1
        return safe.command, None

    def _dtype(self, key: str) -> np.dtype:
        """The spec's dtype of an observation key (float64 for what only the expert twin reads)."""
        return np.dtype(next((f.dtype for f in self.spec.observation if f.name == key), np.float64))

    def _shape(self, key: str) -> tuple[int, ...]:
        return tuple(next(f.shape for f in self.spec.observation if f.name == key))

    def _hold(self, reason: str, now: float, position: np.ndarray | None) -> np.ndarray | None:
        self.holds[reason] += 1
        if self._holding != reason:
            if reason == "stale":
                ages = {t: round(w.age(now), 3) for t, w in self.watchdogs.items()}
                log.warning("holding: state stale (age s %s > %.3f s)", ages, self.state_timeout)
            elif reason != "estop":  # the e-stop logs itself
                log.warning("holding: %s", reason)
            self._holding = reason
        return self.safety.hold(position, commit=False)

    # ------------------------------------------------------------- reporting
    def report(self) -> dict[str, Any]:
        """Counters and timings (JSON-able)."""
        return {
            "task": self.task_id,
            "actor": self.cfg.actor,
            "transport": self.t.name,
            "rate_hz": round(1.0 / self.period, 3),
            "act_on": self.cfg.act_on,
            "max_delta": self.max_delta,
            "ticks": self.ticks,
            "acted": self.acted,
            "holds": dict(self.holds),
            "context_resets": self.context_resets,
            "rejected": {t: st.rejected + self.subs[t].rejected for t, st in self._topics.items()},
            "estop": {"engagements": self.estop.engagements, "clears": self.estop.clears,
                      "ignored_releases": self.estop.ignored_releases, "engaged": self.estop.engaged},
            "safety": self.safety.report(),
            "act_time": percentiles_ms(self.act_time),
            "observation_age": percentiles_ms(self.observation_age),
            "observations_overrun": self.observations_overrun,
            "tick_time": percentiles_ms(self.tick_time),
            "commands_published": sum(p.published for p in self.pubs),
        }

    def close(self) -> None:
        close_actor = getattr(self.actor, "close", None)
        if close_actor is not None:
            close_actor()  # the expert twin's simulator (its renderers)
        if self._own_transport:
            self.t.close()

    def __enter__(self) -> "Deployer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def deploy_command(argv: list[str], prog: str) -> None:
    """Entry point of ``omnipolicy deploy``."""
    cfg = tyro.cli(DeployConfig, args=argv, prog=prog, description=__doc__.split("\n\n")[0])
    setup_logging(cfg.log_level)
    with Deployer(cfg) as node:  # a bad robot file or a mismatched policy: one line from the CLI
        emit("ready", task=node.task_id, robot=node.arm.name, actor=cfg.actor, transport=node.t.name, network=node.t.network,
             rate_hz=round(1.0 / node.period, 3), max_delta=node.max_delta)
        out = node.run(duration=cfg.duration or None, handle_signals=True)
    emit("summary", **out)
    if cfg.summary is not None:
        write_json_atomic(cfg.summary, out, indent=1)
