"""``omnipolicy sim-robot``: a simulated arm of the task suite, or any arm with an MJCF model, as a ROS 2 robot.

The node steps the arm's simulator in real time, one control period per
tick (50 Hz for ``dmc/reacher-easy``), and speaks what a ros2_control robot
speaks (the topics of each arm are in its robot file; see
:mod:`omnipolicy.robot_bridge.arms`). ``--task`` picks a shipped arm,
``--robot FILE`` any robot file (an MJCF model is simulated by
:class:`~omnipolicy.robot_bridge.mjcf_arm.MjcfArm`):

- publishes ``/joint_states`` (``sensor_msgs/JointState``: position, velocity,
  effort = the applied command) and the task state on its own topic
  (``/sim_robot/task_state``, a ``JointState`` of named values, same stamp);
- publishes every camera the observation reads (``sensor_msgs/Image``, rgb8,
  sensor-data QoS) at every control step at the robot file's size, and a
  camera on ``/sim_robot/camera/image_raw`` when ``--camera-rate-hz`` is set;
- accepts commands on the arm's command topic (``Float64MultiArray`` in
  controller joint order, or ``JointTrajectory``) and ``JointTrajectory``
  messages on its trajectory topic (for an effort interface the first point's
  positions become targets of a joint PD, as joint_trajectory_controller does);
  the newest valid command of either kind is in force;
- for an arm split over controllers (``[[command]]`` groups in its robot
  file: an arm trajectory controller and a gripper forward-command controller,
  say) subscribes to every group's topic instead.

**Group rule.** A command of every joint goes in force only once every group
has delivered a valid message (until then the arm holds, as before the first
command); after that each message replaces its own group's joints and the
other groups keep their newest values, as each ros2_control controller holds
its last command. An effort (velocity) command's timeout counts from its
oldest group's arrival: a controller that falls silent stops the whole arm.

**Hold rule.** An effort (velocity) command is in force for
``--command-timeout`` seconds after it arrives; after that the robot applies
zero effort (velocity): torque off, the joints' damping stops the arm within a
few tenths of a second. A position target stays in force until replaced (the
last safe command of a position interface; before the first one the arm holds
its initial pose). Malformed commands (wrong length, unknown joints, NaN)
are rejected with one log line each and leave the previous command in force.

**Episodes.** Episode ``k`` starts from ``env.reset(seed=SEED + k)``, exactly
as plain simulation does, and lasts ``--episode-seconds``; the first one
starts when the first command arrives (until then the arm rests at its
initial state and the state is published). A new episode takes the command
in force out of force: the reset arm holds until the next command arrives
(the last scene's target would otherwise pull it back toward where the last
episode ended). At the start of each episode the node publishes
``Bool(True)`` on ``/sim_robot/episode_start``; at its end,
``Bool(success)`` on ``/sim_robot/success``, where **success means the
target is reached at the end of the episode** (for the reacher: the
fingertip inside the target sphere, dm_control's reward radius; an SO-101
scene's is the env's own, sticky: the named object lifted, put or pushed at
some step, as plain evaluation counts it). An arm
without a target (an MJCF arm) has no success: its episodes are of fixed
length and report ``success: null``, and nothing goes on the success topic. It also
prints one JSON line per episode on stdout (``{"event": "episode", ...}``),
a ``{"event": "ready"}`` line once its endpoints exist and a
``{"event": "summary"}`` line at exit (also written to ``--summary``).

**Instructions.** An arm whose robot file has an ``[instruction]`` topic
(the SO-101 scenes) publishes the scene's instruction (``std_msgs/String``)
when the scene is reset and right after each episode's start message (so a
recording from that message on holds it), and again whenever a new reader
joins the topic (a deploy node that starts later still hears the instruction
in force). A new instruction on that
topic is applied between two control steps: the scene follows it (the
SO-101: the named object becomes the target, and success is judged for it)
or refuses it with one log line saying why (text naming no object of the
scene); the episode's report lists the instructions it followed.

**Network.** ``--network system`` (default) joins the ROS 2 graph the
environment describes, as ``ros2 run`` would; ``--network loopback`` keeps
every packet on 127.0.0.1 (tests and benchmarks).

SIGINT/SIGTERM stop it cleanly (summary written, endpoints closed).

    omnipolicy sim-robot --task dmc/reacher-easy --transport dds --episodes 10
    omnipolicy sim-robot --robot tests/data/robots/two_joint_arm.toml --transport dds
    omnipolicy sim-robot --robot robot_bridge/robots/so101_lift.toml --episodes 10 --episode-seconds 5
"""

from __future__ import annotations

import json
import logging
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import tyro

from omnipolicy.envs.rollout import Actor, ExpertActor, run_episodes
from omnipolicy.files import write_json_atomic
from omnipolicy.robot_bridge.arms import ArmSpec, SimArm, arm_of, get_arm, make_sim_arm
from omnipolicy.robot_bridge.robot_file import CommandGroup
from omnipolicy.robot_bridge.wire.loopback import loopback_env
from omnipolicy.robot_bridge.wire.messages import (
    Bool,
    Float64MultiArray,
    Header,
    Image,
    JointMap,
    JointState,
    JointTrajectory,
    RosMessage,
    String,
    Time,
    action_from_command,
    array_to_image,
)
from omnipolicy.robot_bridge.wire.network import Network
from omnipolicy.robot_bridge.wire.transport import (
    QOS_DEFAULT,
    QOS_ROS2_CONTROL,
    QOS_SENSOR_DATA,
    Transport,
    make_transport,
)

log = logging.getLogger("omnipolicy.sim_robot")


@dataclass(frozen=True)
class SimRobotConfig:
    """Run a simulated arm of the task suite, or any arm with an MJCF model, as a ROS 2 robot (joint states out,
    commands in)."""

    task: str = "dmc/reacher-easy"
    """Task whose arm to simulate (tasks with an arm: dmc/reacher-easy, dmc/reacher-easy-pixels, so101/lift-v1,
    so101/place-v1, so101/push-v1 and their -unseen- variants)."""
    robot: Path | None = None
    """Robot file (TOML; docs/ros2.md) of the arm to simulate instead of --task's: its `mjcf` model or `sim` class."""
    transport: Literal["dds", "rclpy"] = "dds"
    """rclpy: a real ROS 2 node (needs rclpy); dds: ROS 2's wire protocol over Cyclone DDS."""
    network: Network = "system"
    """system: the ROS 2 environment as `ros2 run` reads it (ROS_DOMAIN_ID, ROS_AUTOMATIC_DISCOVERY_RANGE,
    ROS_STATIC_PEERS, RMW_IMPLEMENTATION, CYCLONEDDS_URI, ...); loopback: 127.0.0.1 only (tests, benchmarks)."""
    domain_id: int | None = None
    """ROS domain id (default: ROS_DOMAIN_ID or 0)."""
    episodes: int = 0
    """Stop after this many episodes (0: run until stopped)."""
    episode_seconds: float = 2.0
    """Length of an episode; success is judged at its end."""
    seed: int = 0
    """Episode k starts from env.reset(seed=SEED + k)."""
    publish_rate_hz: float = 0.0
    """Joint-state rate (0: every control step). Must divide the control rate."""
    camera_rate_hz: float = 0.0
    """Rate of a camera the observation does not read, on /sim_robot/camera/image_raw (0: none). Must divide the
    control rate. (The cameras the observation reads publish at every control step.)"""
    camera_size: int = 84
    """That camera's image height and width in pixels."""
    command_timeout: float = 0.1
    """An effort (velocity) command is applied for at most this long; then zero (the hold rule)."""
    trajectory_kp: float = 5.0
    """Joint PD gain (effort per rad) that tracks a JointTrajectory's positions."""
    trajectory_kd: float = 0.2
    """Joint PD damping (effort per rad/s); above ~0.3 the light wrist's damping goes unstable at 50 Hz."""
    start_on_command: bool = True
    """Start the first episode at the first command (else at once)."""
    max_seconds: float = 0.0
    """Stop after this long (0: no limit)."""
    summary: Path | None = None
    """Write the final summary JSON here (atomically)."""
    log_level: str = "INFO"
    """Logging level of the node (stderr)."""


def emit(event: str, **fields: Any) -> None:
    """One JSON line on stdout (the machine-readable log of the node)."""
    print(json.dumps({"event": event, **fields}), flush=True)


def percentiles_ms(values_s: list[float]) -> dict[str, float | None]:
    """p50 / p99 / max of durations in seconds, in milliseconds (None when empty)."""
    if not values_s:
        return {"p50_ms": None, "p99_ms": None, "max_ms": None}
    a = np.asarray(values_s) * 1e3
    return {k: round(float(v), 4) for k, v in (("p50_ms", np.percentile(a, 50)), ("p99_ms", np.percentile(a, 99)), ("max_ms", a.max()))}


def _divisor(rate_hz: float, control_hz: float, what: str) -> int:
    if rate_hz <= 0:
        return 1
    k = control_hz / rate_hz
    if abs(k - round(k)) > 1e-6 or round(k) < 1:
        raise ValueError(f"--{what} must divide the control rate {control_hz:g} Hz (e.g. {control_hz:g}, {control_hz / 2:g}), got {rate_hz:g}")
    return int(round(k))


class CommandSlot:
    """The command in force, written by transport threads and read by the stepping loop.

    Args:
        joints: the controller's joint map.
        timeout: seconds an effort (velocity) command stays in force.
        clock: monotonic clock.
        interface: the robot's command interface (``effort``, ``position`` or ``velocity``).
    """

    def __init__(self, joints: JointMap, timeout: float, clock: Callable[[], float] = time.monotonic,
                 interface: str = "effort", groups: Sequence[CommandGroup] = ()) -> None:
        self.joints = joints
        self.timeout = float(timeout)
        self.interface = interface
        self.clock = clock
        self._lock = threading.Lock()
        self._effort: tuple[float, np.ndarray] | None = None  # (arrival time, task-order effort)
        self._target: np.ndarray | None = None  # trajectory position target (task order)
        self._newest: str | None = None  # "effort" | "trajectory"
        self.groups = tuple(groups)
        # each group's joints' slots in the task vector, and its newest (arrival time, values)
        self._group_slots = [np.array([joints.task_joints.index(j) for j in g.joints], dtype=np.intp) for g in self.groups]
        self._group_newest: list[tuple[float, np.ndarray] | None] = [None] * len(self.groups)
        self.received = 0
        self.rejected = 0
        self.first_command: float | None = None

    def on_effort(self, msg: Float64MultiArray) -> None:
        self._accept(msg, "effort")

    def on_trajectory(self, msg: JointTrajectory) -> None:
        self._accept(msg, "trajectory")

    def on_command(self, msg: RosMessage) -> None:
        """A message on the arm's command topic: a trajectory or a forward command, by its type."""
        self._accept(msg, "trajectory" if isinstance(msg, JointTrajectory) else "effort")

    def on_group(self, index: int, msg: RosMessage) -> None:
        """A message of command group ``index`` (an arm split over controllers; the group rule in the module
        docstring): it replaces that group's values; once every group has delivered one, the command of all joints
        (each group's newest values) is in force, timed by the oldest group's arrival."""
        now = self.clock()
        group = self.groups[index]
        try:
            values = group.values(msg)  # (len(group.joints),) the group's order; raises on length/names/NaN
        except ValueError as e:
            self._rejected(msg, f"{group.topic}: {e}")
            return
        with self._lock:
            self._group_newest[index] = (now, values)
            newest = list(self._group_newest)
            if any(g is None for g in newest):  # not every controller has a command yet: the arm holds
                self.received += 1
                return
            command = np.empty(self.joints.size)  # (J,) task order
            for slots, (_, v) in zip(self._group_slots, newest):  # type: ignore[misc]
                command[slots] = v
            # position interface: both kinds are targets that stay; an effort (velocity) command expires after the
            # timeout counted from its oldest group's arrival: a controller that falls silent stops the whole arm
            kind = "trajectory" if all(g.message_class is JointTrajectory for g in self.groups) else "effort"
            self._store(command, kind, min(t for t, _ in newest))  # type: ignore[union-attr]

    def clear(self) -> None:
        """Take every command out of force: the arm holds (as before its first command) until each group has sent
        one again. At a new episode, so that the previous scene's last command does not move the reset arm for the
        ticks before the actor's first command for the new scene arrives."""
        with self._lock:
            self._effort = self._target = self._newest = None
            self._group_newest = [None] * len(self.groups)

    def _rejected(self, msg: Any, reason: str) -> None:
        with self._lock:
            self.rejected += 1
        log.warning("rejected a %s command: %s (previous command stays in force)", type(msg).__name__, reason)

    def _accept(self, msg: Any, kind: str) -> None:
        now = self.clock()
        try:
            values = action_from_command(msg, self.joints)  # (J,) task order; raises on length/names/NaN
        except ValueError as e:
            self._rejected(msg, str(e))
            return
        with self._lock:
            self._store(values, kind, now)

    def _store(self, values: np.ndarray, kind: str, arrival: float) -> None:
        """Put a command of every joint in force (the lock held)."""
        self.received += 1
        if self.first_command is None:
            self.first_command = self.clock()
        if kind == "effort":
            self._effort = (arrival, values)
        else:
            self._target = values
        self._newest = kind

    def effort(self, position: np.ndarray, velocity: np.ndarray, kp: float, kd: float) -> tuple[np.ndarray, bool]:
        """The command to apply now (task order; effort for an effort interface) and whether the hold rule chose it.

        Position interface: the newest target (either kind) until replaced; before any, the current position.
        Effort: a trajectory's positions through the joint PD (``kp``, ``kd``). Velocity: ``kp`` times a trajectory's
        position error. A forward command expires after the timeout (then zero effort or velocity).
        """
        now = self.clock()
        with self._lock:
            newest, effort, target = self._newest, self._effort, self._target
        if self.interface == "position":
            last = target if newest == "trajectory" else effort[1] if effort is not None else None
            return (np.array(position, dtype=np.float64), True) if last is None else (last, False)
        if newest == "trajectory" and target is not None:
            if self.interface == "velocity":
                return kp * (target - position), False
            return np.clip(kp * (target - position) - kd * velocity, -1.0, 1.0), False
        if effort is not None and now - effort[0] <= self.timeout:
            return effort[1], False
        return np.zeros(self.joints.size), True


class SimRobot:
    """A simulated arm publishing and commanded over a :class:`Transport`; a context manager.

    Args:
        cfg: the node's configuration.
        transport: an open transport (default: made from ``cfg``; closed with the robot).
        sim: the simulated arm (default: ``make_sim_arm`` of the robot file's or the task's arm).

    Raises:
        KeyError: no arm for the task. FileNotFoundError, RobotFileError: a missing or invalid robot file.
        ValueError: inconsistent rates or episode length, or an arm without a simulator.
    """

    def __init__(self, cfg: SimRobotConfig, transport: Transport | None = None, sim: SimArm | None = None) -> None:
        self.cfg = cfg
        self.spec: ArmSpec = arm_of(cfg.task, cfg.robot)
        s = self.spec
        control_hz = s.rate_hz
        self.publish_every = _divisor(cfg.publish_rate_hz, control_hz, "publish-rate-hz")
        self.camera_every = _divisor(cfg.camera_rate_hz, control_hz, "camera-rate-hz") if cfg.camera_rate_hz > 0 else 0
        self.camera_size = (cfg.camera_size, cfg.camera_size)
        if any(c.topic == s.camera_topic for c in s.cameras):  # that camera is observed: every step, its own size
            if self.camera_every > 1:
                raise ValueError(f"{s.label} observes the camera at every control step; --camera-rate-hz must be "
                                 f"{control_hz:g} or 0, got {cfg.camera_rate_hz:g}")
            self.camera_every = 0
        self.episode_steps = int(round(cfg.episode_seconds / s.control_period))
        if self.episode_steps < 1:
            raise ValueError(f"--episode-seconds must be at least one control period ({s.control_period} s), got {cfg.episode_seconds}")
        self.sim = sim if sim is not None else make_sim_arm(s, render=self.camera_every > 0 or bool(s.cameras))
        limit = self.sim.max_steps
        if limit is not None and self.episode_steps > limit:
            raise ValueError(
                f"--episode-seconds {cfg.episode_seconds} is {self.episode_steps} steps; the task's episodes last at most "
                f"{limit} steps ({limit * s.control_period:g} s)"
            )
        self._own_transport = transport is None
        if transport is None:
            kwargs: dict[str, Any] = {"domain_id": cfg.domain_id, "network": cfg.network}
            if cfg.transport == "rclpy":
                kwargs["node_name"] = "omnipolicy_sim_robot"
            transport = make_transport(cfg.transport, **kwargs)
        self.t = transport
        joints = JointMap(s.joints)
        self.commands = CommandSlot(joints, cfg.command_timeout, interface=s.limits.interface, groups=s.command_groups)
        self.pub_state = self.t.publisher(s.joint_states_topic, JointState, s.qos_of(s.joint_states_topic, QOS_ROS2_CONTROL))
        self.pub_task = (self.t.publisher(s.task_state_topic, JointState, s.qos_of(s.task_state_topic, QOS_ROS2_CONTROL))
                         if s.task_state_names else None)
        self.pub_episode = self.t.publisher(s.episode_topic, Bool, s.qos_of(s.episode_topic, QOS_DEFAULT))
        self.pub_success = self.t.publisher(s.success_topic, Bool, s.qos_of(s.success_topic, QOS_DEFAULT))
        self.pub_camera = self.t.publisher(s.camera_topic, Image, QOS_SENSOR_DATA) if self.camera_every else None
        self.pub_cameras = [(c, self.t.publisher(c.topic, Image, s.qos_of(c.topic, QOS_SENSOR_DATA))) for c in s.cameras]
        if s.command_groups:  # one subscription per controller
            self.sub_commands = [self.t.subscription(g.topic, g.message_class, lambda m, k=k: self.commands.on_group(k, m),
                                                     s.qos_of(g.topic, QOS_ROS2_CONTROL))
                                 for k, g in enumerate(s.command_groups)]
        else:
            self.sub_commands = [self.t.subscription(s.command_topic, s.command_class, self.commands.on_command,
                                                     s.qos_of(s.command_topic, QOS_ROS2_CONTROL))]
        if s.trajectory_topic and s.trajectory_topic != s.command_topic and not s.command_groups:
            self.sub_commands.append(self.t.subscription(s.trajectory_topic, JointTrajectory, self.commands.on_trajectory,
                                                         s.qos_of(s.trajectory_topic, QOS_ROS2_CONTROL)))
        # instructions: the scene's at each episode start out, new ones in (applied between control steps)
        self.instruction: str | None = None  # the instruction in force
        self.instructions: queue.SimpleQueue[str] = queue.SimpleQueue()
        self.pub_instruction = self.sub_instruction = None
        self._instruction_readers = 0  # readers matched on the instruction topic (a new one hears the instruction)
        if s.instruction_topic is not None:
            qos = s.qos_of(s.instruction_topic, QOS_DEFAULT)
            self.pub_instruction = self.t.publisher(s.instruction_topic, String, qos)
            self.sub_instruction = self.t.subscription(s.instruction_topic, String, lambda m: self.instructions.put(m.data),
                                                       qos)
        self.stop_event = threading.Event()
        self.episodes: list[dict[str, Any]] = []
        self.ticks = 0
        self.hold_ticks = 0
        self.overruns = 0
        self.lateness: list[float] = []
        self.step_time: list[float] = []

    # ------------------------------------------------------------ publishing
    def publish_state(self, camera: bool = False) -> None:
        """Joint state and task state, the observed cameras' images (and the extra camera's) of this instant, with one
        stamp."""
        stamp = Time.now()
        for c, pub in self.pub_cameras:  # rendered first: the image is the state below
            pub.publish(array_to_image(self.sim.camera(c.height, c.width, c.name), stamp=stamp, frame_id=c.name or "camera"))
        if camera and self.pub_camera is not None:
            self.pub_camera.publish(array_to_image(self.sim.camera(*self.camera_size), stamp=stamp, frame_id="camera"))
        pos, vel, eff = self.sim.joint_state()
        self.pub_state.publish(JointState(Header(stamp=stamp), self.spec.joints, pos, vel, eff))
        if self.pub_task is not None:
            self.pub_task.publish(JointState(Header(stamp=stamp, frame_id="world"), self.spec.task_state_names, self.sim.task_state()))

    def announce(self) -> None:
        """Take the instruction of the scene just reset as the one in force and publish it."""
        if self.pub_instruction is not None:
            self.instruction = self.sim.instruction()
            self.say_instruction()

    def say_instruction(self) -> None:
        """Publish the instruction in force (if the arm has one)."""
        if self.pub_instruction is not None and self.instruction is not None:
            self.pub_instruction.publish(String(data=self.instruction))

    def greet_readers(self) -> None:
        """Publish the instruction in force again when a new reader has joined the instruction topic (what a
        TRANSIENT_LOCAL writer does, while readers of any durability, ``ros2 topic pub``'s too, still match)."""
        if self.pub_instruction is None:
            return
        readers = self.pub_instruction.matched()
        if readers > self._instruction_readers:
            self.say_instruction()
        self._instruction_readers = readers

    def take_instructions(self, ep: dict[str, Any]) -> None:
        """Apply the instructions received since the last step (the scene switches its target, or says why not)."""
        while True:
            try:
                text = self.instructions.get_nowait()
            except queue.Empty:
                return
            if text == self.instruction:  # ours, or a repeat
                continue
            try:
                change = self.sim.follow(text)
            except ValueError as e:
                log.warning("instruction %r on %s refused: %s; the instruction in force stays %r", text,
                            self.spec.instruction_topic, e, self.instruction)
                continue
            self.instruction = text
            ep["instructions"].append(text)
            log.info("instruction %r on %s: %s", text, self.spec.instruction_topic, change)
            emit("instruction", episode=ep["index"], text=text, change=change)

    # --------------------------------------------------------------- running
    def run(self) -> dict[str, Any]:
        """Step in real time until the episodes are done, ``max_seconds`` pass or :meth:`stop` is called.

        Returns:
            The summary (also printed as a JSON line and written to ``cfg.summary``).
        """
        cfg, period = self.cfg, self.spec.control_period
        episode, step_in_ep = 0, 0
        self.sim.reset(cfg.seed)
        ep = self._new_episode(episode)
        started = not cfg.start_on_command
        t_start = time.monotonic()
        emit("ready", task=self.spec.label, robot=self.spec.name, transport=self.t.name, network=self.t.network,
             joints=list(self.spec.joints), period_s=period, interface=self.spec.limits.interface,
             episode_steps=self.episode_steps, command_topic=self.spec.command_topic,
             command_topics=[g.topic for g in self.spec.commands])
        cam = self.camera_every > 0
        every_tick = bool(self.pub_cameras)  # the observation reads a camera: state and images at every control step
        self.publish_state(cam)
        self.announce()
        ep["instruction"] = self.instruction
        next_tick = time.monotonic() + period
        while not self.stop_event.is_set():
            if cfg.max_seconds and time.monotonic() - t_start > cfg.max_seconds:
                break
            delay = next_tick - time.monotonic()
            if delay > 0:
                self.stop_event.wait(delay)
                if self.stop_event.is_set():
                    break
            now = time.monotonic()
            late = now - next_tick
            self.lateness.append(max(0.0, late))
            if late > period:  # fell behind by more than a tick: count it and re-anchor (physics stays 1 step per tick)
                self.overruns += 1
                next_tick = now
            next_tick += period
            self.take_instructions(ep)
            self.greet_readers()
            if not started:
                if self.commands.first_command is None:
                    self.publish_state(cam)  # at rest at the episode's initial state until commanded
                    continue
                started = True
                self.pub_episode.publish(Bool(True))
                self.say_instruction()  # after the start too: a recording of the episode holds its instruction
            t0 = time.perf_counter()
            pos, vel, _ = self.sim.joint_state()
            effort, held = self.commands.effort(pos, vel, cfg.trajectory_kp, cfg.trajectory_kd)
            self.sim.step(effort)
            self.step_time.append(time.perf_counter() - t0)
            self.ticks += 1
            self.hold_ticks += held
            step_in_ep += 1
            ep["hold_steps"] += held
            if self.sim.has_success and ep["first_reach_s"] is None and self.sim.inside():
                ep["first_reach_s"] = round(step_in_ep * period, 4)
            if step_in_ep >= self.episode_steps:
                self._end_episode(ep, step_in_ep)
                episode += 1
                if cfg.episodes and episode >= cfg.episodes:
                    break
                step_in_ep = 0
                self.sim.reset(cfg.seed + episode)
                self.commands.clear()  # the last scene's command must not move the reset arm
                ep = self._new_episode(episode)
                self.pub_episode.publish(Bool(True))
                self.announce()
                ep["instruction"] = self.instruction
            camera_now = cam and (self.ticks % self.camera_every == 0 or step_in_ep == 0)
            if every_tick or camera_now or self.ticks % self.publish_every == 0 or step_in_ep == 0:
                self.publish_state(camera_now)
        return self.finish()

    def _new_episode(self, index: int) -> dict[str, Any]:
        return {"index": index, "seed": self.cfg.seed + index, "first_reach_s": None, "hold_steps": 0, "instructions": []}

    def _end_episode(self, ep: dict[str, Any], steps: int) -> None:
        if self.sim.has_success:
            success = bool(self.sim.inside())
            ep.update(success=success, reached=ep["first_reach_s"] is not None, steps=steps,
                      final_distance=round(self.sim.distance(), 5))
            self.pub_success.publish(Bool(success))
        else:  # no target: an episode of fixed length, no success
            ep.update(success=None, reached=None, steps=steps, final_distance=None)
        ep.update(self.sim.episode_info())
        self.episodes.append(ep)
        emit("episode", **ep)

    def summary(self) -> dict[str, Any]:
        eps = self.episodes
        judged = bool(eps) and self.sim.has_success
        return {
            "task": self.spec.label,
            "transport": self.t.name,
            "episodes": len(eps),
            "success_rate": float(np.mean([e["success"] for e in eps])) if judged else None,
            "reached_rate": float(np.mean([e["reached"] for e in eps])) if judged else None,
            "successes": [e["success"] for e in eps],
            "seeds": [e["seed"] for e in eps],
            "ticks": self.ticks,
            "hold_ticks": self.hold_ticks,
            "overruns": self.overruns,
            "tick_lateness": percentiles_ms(self.lateness),
            "step_time": percentiles_ms(self.step_time),
            "commands_received": self.commands.received,
            "commands_rejected": self.commands.rejected + sum(sub.rejected for sub in self.sub_commands),
            "states_published": self.pub_state.published,
        }

    def finish(self) -> dict[str, Any]:
        out = self.summary()
        emit("summary", **out)
        if self.cfg.summary is not None:
            write_json_atomic(self.cfg.summary, out, indent=1)
        return out

    def stop(self) -> None:
        """Ask :meth:`run` to return (safe from signal handlers and other threads)."""
        self.stop_event.set()

    def close(self) -> None:
        close_sim = getattr(self.sim, "close", None)
        if close_sim is not None:
            close_sim()  # an MJCF arm's renderers
        if self._own_transport:
            self.t.close()

    def __enter__(self) -> "SimRobot":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def install_stop_signals(stop: Callable[[], None]) -> None:
    """SIGINT and SIGTERM call ``stop`` (the main loop then shuts down cleanly)."""

    def handler(signum: int, frame: Any) -> None:
        log.info("%s: shutting down", signal.Signals(signum).name)
        stop()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


def setup_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), stream=sys.stderr, format="%(asctime)s %(name)s %(levelname)s %(message)s")


def sim_robot_command(argv: list[str], prog: str) -> None:
    """Entry point of ``omnipolicy sim-robot``."""
    cfg = tyro.cli(SimRobotConfig, args=argv, prog=prog, description=__doc__.split("\n\n")[0])
    setup_logging(cfg.log_level)
    with SimRobot(cfg) as robot:
        install_stop_signals(robot.stop)
        robot.run()


class NodeProcess:
    """An ``omnipolicy sim-robot`` or ``deploy`` node in a child process on the loopback network; a context manager.

    Reads the node's JSON event lines (``ready``, ``episode``, ``summary``) from its stdout in a thread.

    Args:
        command: ``"sim-robot"`` or ``"deploy"``.
        args: the command's options.
        domain_id: ROS domain id (also put in the child's environment).
        python: interpreter (``.venv-ros/bin/python`` for ``--transport rclpy``); default this one.
        ready_timeout: seconds to wait for the ``ready`` event.

    Raises:
        RuntimeError: the node exited or did not get ready in time (its stderr tail is in the message).
    """

    def __init__(self, command: str, args: list[str], domain_id: int, python: str | None = None, ready_timeout: float = 60.0) -> None:
        cmd = [python or sys.executable, "-m", "omnipolicy.cli", command, "--network", "loopback", "--domain-id", str(domain_id),
               *args]
        env = loopback_env(domain_id)
        env.setdefault("MUJOCO_GL", "egl")
        self.stderr_file = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=self.stderr_file, text=True, env=env)
        self.events: list[dict[str, Any]] = []
        self._ready = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        deadline = time.monotonic() + ready_timeout
        while not self._ready.wait(0.05):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                tail = self.stderr_tail()
                self.close()
                raise RuntimeError(f"{command} node did not get ready ({' '.join(cmd)}): {tail}")

    def _read(self) -> None:
        for line in self.proc.stdout:  # type: ignore[union-attr]
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                continue
            self.events.append(event)
            if event.get("event") == "ready":
                self._ready.set()

    def of(self, kind: str) -> list[dict[str, Any]]:
        """The events of one kind received so far."""
        return [e for e in list(self.events) if e.get("event") == kind]

    def wait(self, timeout: float) -> int:
        """Wait for the node to exit; its return code. Raises ``subprocess.TimeoutExpired``."""
        rc = self.proc.wait(timeout)
        self._reader.join(5)
        return rc

    def stderr_tail(self, n: int = 3000) -> str:
        self.stderr_file.seek(0)
        return self.stderr_file.read()[-n:]

    def close(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> None:
        """Send ``sig`` (SIGTERM: clean shutdown) and wait; kill if it lingers."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except Exception:  # noqa: BLE001  lingering: kill it
                self.proc.kill()
                self.proc.wait()
        self._reader.join(5)

    def __enter__(self) -> "NodeProcess":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
        self.stderr_file.close()


def simulate_episodes(task: str, actor: Actor, seeds: list[int], episode_seconds: float,
                      arm: SimArm | None = None) -> list[dict[str, Any]]:
    """The node's episodes in plain simulation (no ROS, no real time): the baseline a robot run is compared with.

    Episode ``k`` starts from ``env.reset(seed=seeds[k])``; ``actor`` chooses every control step's effort from the
    task's observation (its envs are the arm's simulator, which scripted experts read), through the one rollout
    loop (:func:`~omnipolicy.envs.rollout.run_episodes`); success is judged at the end exactly as :class:`SimRobot`
    judges it.

    Args:
        task: a task with an arm.
        actor: an :class:`~omnipolicy.envs.rollout.Actor`, e.g. ``ExpertActor()`` or ``PolicyActor``.
        seeds: one seed per episode.
        episode_seconds: episode length (rounded to control periods).
        arm: the simulated arm to run (default: a new one); pass one to read its joint state in the actor.

    Returns:
        One dict per episode with ``seed``, ``success``, ``reached``, ``first_reach_s``, ``final_distance``.
    """
    spec = get_arm(task)
    arm = arm or make_sim_arm(task)
    out = []
    for seed in seeds:
        steps = [0]
        first: list[float] = []

        def watch(_env: int, _episode: int) -> None:  # after the reset (step 0) and after every step
            if not first and steps[0] > 0 and arm.inside():
                first.append(round(steps[0] * spec.control_period, 4))
            steps[0] += 1

        _episode(arm, actor, seed, episode_seconds, on_step=watch)
        out.append({"seed": seed, "success": arm.inside(), "reached": bool(first), "first_reach_s": first[0] if first else None,
                    "final_distance": round(arm.distance(), 5)})
    return out


def _episode(arm: SimArm, actor: Actor, seed: int, episode_seconds: float,
             command: Callable[[np.ndarray], None] | None = None, on_step: Callable[[int, int], None] | None = None) -> None:
    """One episode of ``actor`` on ``arm``'s simulator; ``command`` sees each effort (float64 (J,)) before it is applied."""

    def apply(effort: np.ndarray, _label: np.ndarray) -> np.ndarray:
        effort = np.asarray(effort, dtype=np.float64).reshape(-1)  # (J,)
        if command is not None:
            command(effort)
        return effort.astype(np.float32)  # as SimArm.step applies it

    limit = int(round(episode_seconds / arm.spec.control_period))
    run_episodes(actor, arm.task, [arm.env], [seed], limit=limit, execute=apply, on_step=on_step)


def largest_command_change(task: str, seeds: Any, episode_seconds: float | None = None,
                           actor: Actor | None = None) -> np.ndarray:
    """The largest change of a command between two consecutive control steps of an episode, per joint.

    Runs the actor in plain simulation; the first command of an episode (from rest) is no change.
    The arms' default rate limits are measured with it (:mod:`omnipolicy.robot_bridge.arms`).

    Args:
        task: a task with an arm.
        seeds: the episodes' seeds.
        episode_seconds: episode length (default: the task's whole episode).
        actor: what commands (default: the task's scripted expert, ``ExpertActor()``).

    Returns:
        float64 (J,) in task order.
    """
    spec = get_arm(task)
    arm = make_sim_arm(task)
    actor = actor or ExpertActor()
    if episode_seconds is None:
        episode_seconds = arm.task.max_steps * spec.control_period
    largest = np.zeros(len(spec.joints))  # (J,)
    for seed in seeds:
        previous: list[np.ndarray] = []

        def record(command: np.ndarray) -> None:
            if previous:
                np.maximum(largest, np.abs(command - previous[0]), out=largest)
            previous[:] = [command]

        _episode(arm, actor, int(seed), episode_seconds, command=record)
    return largest
