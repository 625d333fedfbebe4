"""Record an arm's ROS 2 topics into rosbag2 bags, one per episode: ``omnipolicy record``.

What ``ros2 bag record`` does, for a machine without a ROS install and for the topics a robot file names: the joint
states, the task state (when the arm has one), every camera, every command topic (each controller of the robot
file's command groups, and the trajectory topic ``sim-robot`` also accepts), the instruction topic, and the episode
start / success topics. Messages are kept with their receive time, the time ``omnipolicy dataset from-rosbag`` aligns
by. A ``Bool(True)`` on the episode topic opens a bag and the ``Bool`` on the success topic (sim-robot's verdict at
an episode's end) closes it, so a recording of ``sim-robot`` holds exactly one episode per bag, which is what
``from-rosbag`` imports as one episode; a robot that publishes no verdict gets its bags closed at the next start.

    omnipolicy sim-robot --robot robot_bridge/robots/so101_lift.toml --episodes 10 &
    omnipolicy record --robot robot_bridge/robots/so101_lift.toml --out recordings/lift --episodes 10 &
    omnipolicy deploy --robot robot_bridge/robots/so101_lift.toml --actor expert
    omnipolicy dataset from-rosbag recordings/lift/episode-* --out data/lift --robot robot_bridge/robots/so101_lift.toml

Each bag is written when its episode ends (or the recorder stops), atomically: a bag directory that exists is
complete.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import tyro

from omnipolicy.files import fsync_dir
from omnipolicy.robot_bridge.arms import arm_of
from omnipolicy.robot_bridge.robot_file import ArmSpec
from omnipolicy.robot_bridge.wire.messages import Bool, Image, JointState, JointTrajectory, RosMessage, String
from omnipolicy.robot_bridge.wire.network import Network
from omnipolicy.robot_bridge.wire.rosbag import write_bag
from omnipolicy.robot_bridge.wire.transport import (
    QOS_DEFAULT,
    QOS_ROS2_CONTROL,
    QOS_SENSOR_DATA,
    QosProfile,
    Transport,
    make_transport,
)

log = logging.getLogger("omnipolicy.record")


def arm_topics(arm: ArmSpec) -> dict[str, tuple[type[RosMessage], QosProfile]]:
    """Every topic of an arm with its message type and QoS (the robot file's, else what the robot publishes with)."""
    topics: dict[str, tuple[type[RosMessage], QosProfile]] = {}

    def add(topic: str | None, cls: type[RosMessage], default: QosProfile) -> None:
        if topic and topic not in topics:
            topics[topic] = (cls, arm.qos_of(topic, default))

    add(arm.joint_states_topic, JointState, QOS_ROS2_CONTROL)
    if arm.task_state_names:
        add(arm.task_state_topic, JointState, QOS_ROS2_CONTROL)
    for camera in arm.cameras:
        add(camera.topic, Image, QOS_SENSOR_DATA)
    for group in arm.commands:
        add(group.topic, group.message_class, QOS_ROS2_CONTROL)
    add(arm.trajectory_topic, JointTrajectory, QOS_ROS2_CONTROL)
    add(arm.instruction_topic, String, QOS_DEFAULT)
    add(arm.episode_topic, Bool, QOS_DEFAULT)
    add(arm.success_topic, Bool, QOS_DEFAULT)
    return topics


class BagRecorder:
    """Subscribes to an arm's topics and writes one bag per episode into ``out`` (``episode-0000``, ...).

    Args:
        arm: the arm whose topics to record.
        out: folder of the bags (created).
        transport: an open transport (the recorder does not close it).
        episodes: stop after this many bags (0: until :meth:`close`).
        storage: ``mcap`` or ``sqlite3``.
    """

    def __init__(self, arm: ArmSpec, out: Path, transport: Transport, episodes: int = 0, storage: str = "mcap") -> None:
        if episodes < 0:
            raise ValueError(f"episodes must be >= 0 (0: until stopped), got {episodes}")
        self.arm, self.out, self.episodes, self.storage = arm, Path(out), int(episodes), storage
        self.out.mkdir(parents=True, exist_ok=True)
        self.written: list[Path] = []
        self.done = threading.Event()
        self._lock = threading.Lock()
        self._messages: list[tuple[str, int, RosMessage]] | None = None  # None: before the first episode start
        self._index = len(list(self.out.glob("episode-*")))  # a second recording into the folder continues it
        self.topics = arm_topics(arm)
        self.subs = [transport.subscription(topic, cls, lambda msg, topic=topic: self._on(topic, msg), qos)
                     for topic, (cls, qos) in self.topics.items()]

    def _on(self, topic: str, msg: RosMessage) -> None:
        now = time.time_ns()
        with self._lock:
            if self.done.is_set():
                return
            if topic == self.arm.episode_topic and isinstance(msg, Bool) and msg.data:
                self._flush()
                if self.done.is_set():
                    return
                self._messages = []
            if self._messages is not None:
                self._messages.append((topic, now, msg))
                if topic == self.arm.success_topic:  # sim-robot's end of the episode
                    self._flush()

    def _flush(self) -> None:
        """Write the episode being recorded (caller holds the lock); a bag without a command is not an episode."""
        messages, self._messages = self._messages, None
        commands = {g.topic for g in self.arm.commands} | {self.arm.trajectory_topic}
        if not messages or not any(topic in commands for topic, _, _ in messages):
            return
        path = self.out / f"episode-{self._index:04d}"
        tmp = self.out / f".{path.name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)  # a bag an interrupted recorder left half written
        write_bag(tmp, messages, storage=self.storage)
        tmp.rename(path)
        fsync_dir(self.out)
        self._index += 1
        self.written.append(path)
        log.info("wrote %s (%d messages)", path, len(messages))
        if self.episodes and len(self.written) >= self.episodes:
            self.done.set()

    def close(self) -> list[Path]:
        """Write the episode being recorded and stop; returns every bag written."""
        with self._lock:
            if not self.done.is_set():
                self._flush()
            self.done.set()
        return self.written


@dataclass(frozen=True)
class RecordConfig:
    """Record an arm's ROS 2 topics into rosbag2 bags, one per episode (a `ros2 bag record` of the robot file's
    topics, no ROS install needed)."""

    out: Path
    """Folder of the bags: episode-0000, episode-0001, ... (a second recording into it continues the numbering)."""
    task: str = "dmc/reacher-easy"
    """Task whose shipped arm's topics to record (ignored with --robot)."""
    robot: Path | None = None
    """Robot file (TOML; docs/ros2.md) whose topics to record."""
    episodes: int = 0
    """Stop after this many episodes (0: until Ctrl-C or --max-seconds)."""
    max_seconds: float = 0.0
    """Stop after this long (0: no limit)."""
    storage: Literal["mcap", "sqlite3"] = "mcap"
    """rosbag2 storage of the bags."""
    transport: Literal["dds", "rclpy"] = "dds"
    """rclpy: a real ROS 2 node (needs rclpy); dds: ROS 2's wire protocol over Cyclone DDS."""
    network: Network = "system"
    """system: the ROS 2 environment as `ros2 run` reads it; loopback: 127.0.0.1 only (tests)."""
    domain_id: int | None = None
    """ROS domain id (default: ROS_DOMAIN_ID or 0)."""


def record(cfg: RecordConfig, stop: threading.Event | None = None) -> list[Path]:
    """Record until ``cfg.episodes`` bags are written, ``cfg.max_seconds`` pass or ``stop`` is set.

    Returns:
        The bags written.
    """
    arm = arm_of(cfg.task, cfg.robot)
    kwargs: dict[str, Any] = {"domain_id": cfg.domain_id, "network": cfg.network}
    if cfg.transport == "rclpy":
        kwargs["node_name"] = "omnipolicy_recorder"
    stop = stop or threading.Event()
    deadline = time.monotonic() + cfg.max_seconds if cfg.max_seconds > 0 else None
    with make_transport(cfg.transport, **kwargs) as t:
        recorder = BagRecorder(arm, cfg.out, t, cfg.episodes, cfg.storage)
        print(f"recording {len(recorder.topics)} topics of {arm.label} into {cfg.out}: "
              + ", ".join(f"{topic} [{cls.ROS_TYPE}]" for topic, (cls, _) in recorder.topics.items()), flush=True)
        try:
            while not (recorder.done.is_set() or stop.is_set() or (deadline and time.monotonic() > deadline)):
                time.sleep(0.05)
        except KeyboardInterrupt:
            pass
        return recorder.close()


def record_command(argv: list[str], prog: str) -> None:
    cfg = tyro.cli(RecordConfig, args=argv, prog=prog)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    bags = record(cfg)
    print(f"{len(bags)} bag(s) in {cfg.out}")
