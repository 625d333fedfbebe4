"""rosbag2 recordings (MCAP or SQLite3) of a robot -> aligned observation/action arrays.

Reads a bag with PyPI's ``rosbags`` (no ROS install) and decodes the raw CDR
with :mod:`omnipolicy.robot_bridge.wire.cdr`, so bag messages and live messages go
through the same message layer and the same :class:`JointMap` checks.

Alignment rule (the only one): every message is timed by its **receive time
in the bag** (the rosbag2 record timestamp; ``Float64MultiArray`` commands
carry no header, and receive times are on one clock for every topic). Each
command at time ``t`` becomes one timestep whose observation is the **latest
joint state received at or before ``t``** (and, for each camera, the latest
image of its own topic at or before ``t``). A command is dropped when there is
no such state (image, for any camera) or when it is older than
``max_state_age`` (``max_image_age``) seconds at ``t``. The action is the
command itself, in task order. So a timestep pairs "what the robot looked like" with "what it was told next",
exactly what a policy sees and does in the control loop.

**Command groups.** An arm split over controllers (an arm trajectory
controller and a gripper forward-command controller, say) sends one message
per group at each control tick. The groups' messages are merged into ticks
first: a tick is complete at the first message (receive time ``t``) by which
every group has delivered a message since the previous tick completed; its
command is every group's newest values, at time ``t``. A tick whose group
message went missing thus merges into the next one. The ticks are then
aligned like single commands.

``write_bag`` writes such a bag with ``rosbags``' own serializer, for tests
and examples.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from omnipolicy.robot_bridge.wire import cdr
from omnipolicy.robot_bridge.wire.messages import (
    Float64MultiArray,
    Image,
    JointMap,
    JointState,
    JointTrajectory,
    ObservationMap,
    RosMessage,
    action_from_command,
    image_to_array,
    message_type,
    validate,
)
from omnipolicy.robot_bridge.wire.transport import ros_topic_name

log = logging.getLogger(__name__)

COMMAND_TYPES = (Float64MultiArray, JointTrajectory)


@dataclass(frozen=True)
class BagImportConfig:
    """Which topics of a bag make the episode, and how they are aligned."""

    joint_states: str = "/joint_states"
    """sensor_msgs/JointState topic (the robot's state)."""
    commands: str = "/forward_position_controller/commands"
    """Command topic: std_msgs/Float64MultiArray (controller joint order) or trajectory_msgs/JointTrajectory."""
    image: str | None = None
    """Optional sensor_msgs/Image topic filling ``ObservationMap.image_key``."""
    cameras: tuple[tuple[str, str], ...] = ()
    """Further cameras: ``(observation key, sensor_msgs/Image topic)`` pairs, each aligned like ``image``."""
    command_groups: tuple[tuple[str, tuple[str, ...]], ...] = ()
    """An arm split over controllers: ``(command topic, its joints in the controller's order)`` per group, merged
    into control ticks (module docstring); ``commands`` is then unused."""
    max_state_age: float = 0.1
    """Drop a command whose latest joint state is older than this (seconds)."""
    max_image_age: float = 0.2
    """Drop a command whose latest image (of any camera) is older than this (seconds)."""
    strict: bool = True
    """Raise on a malformed message (unknown/missing joints, NaN, bad sizes); else drop it and log one line."""

    def __post_init__(self) -> None:
        for name in ("joint_states", "commands") + (("image",) if self.image is not None else ()):
            object.__setattr__(self, name, ros_topic_name(getattr(self, name)))
        object.__setattr__(self, "cameras", tuple((key, ros_topic_name(topic)) for key, topic in self.cameras))
        object.__setattr__(self, "command_groups", tuple((ros_topic_name(topic), tuple(joints))
                                                         for topic, joints in self.command_groups))
        topics = [topic for topic, _ in self.command_groups]
        if len(set(topics)) != len(topics):
            raise ValueError(f"BagImportConfig.command_groups: topics must differ, got {topics}")
        keys = [key for key, _ in self.cameras]
        if len(set(keys)) != len(keys):
            raise ValueError(f"BagImportConfig.cameras: observation keys must differ, got {keys}")
        for name in ("max_state_age", "max_image_age"):
            if not getattr(self, name) > 0:
                raise ValueError(f"BagImportConfig.{name} must be > 0 seconds, got {getattr(self, name)!r}")

    @property
    def command_topics(self) -> list[str]:
        """The topics the commands come from: every group's, else ``commands``."""
        return [topic for topic, _ in self.command_groups] or [self.commands]

    def image_topics(self, image_key: str | None) -> dict[str, str]:
        """Observation key -> ``sensor_msgs/Image`` topic of every camera: ``image`` (as ``image_key``), then ``cameras``."""
        return ({image_key: self.image} if self.image is not None and image_key is not None else {}) | dict(self.cameras)


@dataclass
class BagEpisode:
    """Aligned arrays of one recording, ready to become an episode.

    Attributes:
        observations: key -> ``(T, ...)`` array (keys from the ObservationMap).
        actions: ``(T, A)`` float64, task order.
        timestamps_ns: ``(T,)`` int64, receive time of each command.
        state_timestamps_ns: ``(T,)`` int64, receive time of the state paired with it.
        joint_names: task-order joint names (the columns of the vectors).
        dropped: commands dropped by the alignment rule (no state yet, state or image too old).
        rejected: malformed messages skipped (``strict=False`` only).
        stale: topic -> commands it had no fresh message for (none at or before them, or too old); each topic
            counted on its own, so a command stale on two topics counts on both.
    """

    observations: dict[str, np.ndarray]
    actions: np.ndarray
    timestamps_ns: np.ndarray
    state_timestamps_ns: np.ndarray
    joint_names: tuple[str, ...]
    dropped: int = 0
    rejected: int = 0
    stale: dict[str, int] = field(default_factory=dict)

    @property
    def timestamps(self) -> np.ndarray:
        """``(T,)`` float64 seconds since the first timestep."""
        if len(self.timestamps_ns) == 0:
            return np.zeros(0)
        return (self.timestamps_ns - self.timestamps_ns[0]) * 1e-9

    def __len__(self) -> int:
        return len(self.actions)


def read_topics(path: Path, topics: Sequence[str]) -> dict[str, tuple[type[RosMessage], list[tuple[int, bytes]]]]:
    """Every message of ``topics`` in a rosbag2 folder, raw, in receive order.

    Args:
        path: the rosbag2 folder.
        topics: the topics to read; each must be in the bag with one type.

    Returns:
        ``{topic: (message class, [(receive time ns, CDR bytes), ...])}``, each list sorted by time.

    Raises:
        FileNotFoundError: no such folder.
        ValueError: a topic missing from the bag, or recorded with two types.
    """
    from rosbags.rosbag2 import Reader  # noqa: PLC0415

    if not path.exists():
        raise FileNotFoundError(f"rosbag2 directory {str(path)!r} does not exist")
    out: dict[str, tuple[type[RosMessage], list[tuple[int, bytes]]]] = {}
    with Reader(path) as reader:
        available = {c.topic: c.msgtype for c in reader.connections}
        missing = [t for t in topics if t not in available]
        if missing:
            raise ValueError(f"rosbag {path.name}: topics {missing} not found; the bag has {sorted(available)}")
        conns = [c for c in reader.connections if c.topic in topics]
        for c in conns:
            if c.msgtype != available[c.topic]:
                raise ValueError(f"rosbag {path.name}: topic {c.topic} has two types {c.msgtype} and {available[c.topic]}")
        for t in topics:
            out[t] = (message_type(available[t]), [])
        for conn, stamp, raw in reader.messages(connections=conns):
            out[conn.topic][1].append((int(stamp), bytes(raw)))
    for _, msgs in out.values():
        msgs.sort(key=lambda m: m[0])
    return out


def latest_before(times: np.ndarray, query: np.ndarray, max_age: float) -> tuple[np.ndarray, np.ndarray]:
    """For each query time, the index of the latest ``times`` entry at or before it, and whether it is fresh.

    Returns:
        ``(index, ok)``, both ``(len(query),)``; ``ok`` is False where no entry
        exists or it is older than ``max_age`` seconds (``index`` is then clipped to 0).
    """
    idx = np.searchsorted(times, query, side="right") - 1  # (Q,)
    ok = idx >= 0
    idx = np.maximum(idx, 0)
    if len(times):
        ok &= query - times[idx] <= round(max_age * 1e9)
    return idx, ok


def merge_ticks(groups: Sequence[tuple[np.ndarray, Sequence[np.ndarray]]]) -> tuple[np.ndarray, list[list[np.ndarray]]]:
    """Merge command groups' message streams into control ticks (the rule of the module docstring).

    Args:
        groups: per group, its receive times ``(N_g,)`` int64 (sorted) and the values of each message.

    Returns:
        ``(times, values)``: the time of each complete tick ``(T,)`` int64, and per tick each group's newest values.
    """
    events = sorted((int(t), g, k) for g, (times, _) in enumerate(groups) for k, t in enumerate(times))
    newest: list[np.ndarray | None] = [None] * len(groups)
    pending: set[int] = set()
    times_out, values_out = [], []
    for t, g, k in events:
        newest[g] = groups[g][1][k]
        pending.add(g)
        if len(pending) == len(groups):
            times_out.append(t)
            values_out.append(list(newest))
            pending.clear()
    return np.asarray(times_out, dtype=np.int64), values_out  # type: ignore[return-value]


def read_bag(path: str | Path, obs_map: ObservationMap, config: BagImportConfig = BagImportConfig()) -> BagEpisode:
    """Read a rosbag2 recording into aligned arrays (see the module docstring for the rule).

    Args:
        path: the bag directory (``metadata.yaml`` and its ``.mcap`` or ``.db3`` files).
        obs_map: joint map and observation keys; ``obs_map.image_key`` must be
            set iff ``config.image`` is.
        config: topics and alignment limits; ``config.cameras`` add further image keys.

    Returns:
        The episode arrays; ``T`` may be 0 if every command was dropped.

    Raises:
        ValueError: missing topics, wrong message types, a camera whose image size changes, or (``strict``) a
            malformed message; each names its topic.
        FileNotFoundError: no such bag.
    """
    path = Path(path)
    if (config.image is None) != (obs_map.image_key is None):
        raise ValueError(
            f"BagImportConfig.image ({config.image!r}) and ObservationMap.image_key ({obs_map.image_key!r}) "
            "must be both set or both None"
        )
    taken = {k for k in (obs_map.position_key, obs_map.velocity_key, obs_map.image_key) if k is not None}
    clash = sorted(taken & {key for key, _ in config.cameras})
    if clash:
        raise ValueError(f"BagImportConfig.cameras: keys {clash} are also keys of the ObservationMap ({sorted(taken)})")
    cameras = config.image_topics(obs_map.image_key)  # observation key -> Image topic
    topics = list(dict.fromkeys([config.joint_states, *config.command_topics, *cameras.values()]))
    data = read_topics(path, topics)
    state_type, state_raw = data[config.joint_states]
    if state_type is not JointState:
        raise ValueError(f"rosbag: {config.joint_states} has type {state_type.ROS_TYPE}, expected sensor_msgs/msg/JointState")
    for topic in config.command_topics:
        if data[topic][0] not in COMMAND_TYPES:
            raise ValueError(f"rosbag: {topic} has type {data[topic][0].ROS_TYPE}; expected one of "
                             f"{[c.ROS_TYPE for c in COMMAND_TYPES]}")
    for key, topic in cameras.items():
        if data[topic][0] is not Image:
            raise ValueError(f"rosbag: {topic} (camera {key!r}) has type {data[topic][0].ROS_TYPE}, expected {Image.ROS_TYPE}")
    rejected = 0

    def decode_all(topic: str, kind: type, raw: list[tuple[int, bytes]], convert: Any) -> tuple[np.ndarray, list[Any]]:
        nonlocal rejected
        times, values = [], []
        for i, (t, b) in enumerate(raw):
            try:
                values.append(convert(validate(cdr.decode(kind, b))))
            except ValueError as e:
                if config.strict:
                    raise ValueError(f"rosbag: {topic} message {i} (t={t} ns): {e}") from None
                rejected += 1
                log.warning("rosbag: skipping %s message %d (t=%d ns): %s", topic, i, t, e)
                continue
            times.append(t)
        return np.asarray(times, dtype=np.int64), values

    jm = obs_map.joints
    s_t, s_obs = decode_all(config.joint_states, JointState, state_raw, obs_map.joint_observation)
    if config.command_groups:  # one message per group and tick: merged into ticks, then named into task order
        streams = [decode_all(topic, data[topic][0], data[topic][1], lambda m, g=JointMap(joints): action_from_command(m, g))
                   for topic, joints in config.command_groups]
        c_t, ticks = merge_ticks(streams)
        names = [j for _, joints in config.command_groups for j in joints]
        c_act = [jm.task_from_named(names, np.concatenate(values), what="command groups") for values in ticks]
    else:
        c_t, c_act = decode_all(config.commands, data[config.commands][0], data[config.commands][1],
                                lambda m: action_from_command(m, jm))
    s_idx, keep = latest_before(s_t, c_t, config.max_state_age)
    stale = {config.joint_states: int(np.sum(~keep))}
    images: dict[str, tuple[str, list[np.ndarray], np.ndarray]] = {}  # key -> (topic, frames, frame index per command)
    decoded: dict[str, tuple[np.ndarray, list[np.ndarray]]] = {}  # topic -> (times, frames): a topic decodes once
    for key, topic in cameras.items():
        if topic not in decoded:
            decoded[topic] = decode_all(topic, Image, data[topic][1], image_to_array)
        i_t, i_arr = decoded[topic]
        i_idx, fresh = latest_before(i_t, c_t, config.max_image_age)
        stale[topic] = int(np.sum(~fresh))
        keep &= fresh
        images[key] = (topic, i_arr, i_idx)
    rows = np.flatnonzero(keep)
    observations: dict[str, np.ndarray] = {}
    keys = [k for k in (obs_map.position_key, obs_map.velocity_key) if k is not None]
    for k in keys:
        observations[k] = np.stack([s_obs[s_idx[r]][k] for r in rows]) if len(rows) else np.zeros((0, jm.size))  # (T, J)
    for key, (topic, i_arr, i_idx) in images.items():
        if len(rows):
            shapes = {i_arr[i_idx[r]].shape for r in rows}
            if len(shapes) != 1:
                raise ValueError(f"rosbag: {topic} (camera {key!r}) changes image size within the episode: {sorted(shapes)}")
            observations[key] = np.stack([i_arr[i_idx[r]] for r in rows])  # (T, H, W, C)
        else:
            observations[key] = np.zeros((0, 0, 0, 0), np.uint8)
    actions = np.stack([c_act[r] for r in rows]) if len(rows) else np.zeros((0, jm.size))  # (T, A)
    return BagEpisode(
        observations=observations,
        actions=actions,
        timestamps_ns=c_t[rows],
        state_timestamps_ns=s_t[s_idx[rows]] if len(rows) else np.zeros(0, np.int64),
        joint_names=jm.task_joints,
        dropped=int(len(c_t) - len(rows)),
        rejected=rejected,
        stale=stale,
    )


# ---------------------------------------------------------------------------
# Writing (rosbags' serializer)
# ---------------------------------------------------------------------------


def _typestore() -> Any:
    from rosbags.typesys import Stores, get_typestore  # noqa: PLC0415

    return get_typestore(Stores.LATEST)


def to_rosbags(msg: RosMessage, typestore: Any = None) -> Any:
    """The ``rosbags`` message object equal to ``msg`` (for its serializer)."""
    ts = typestore or _typestore()
    kwargs = {}
    for f in msg.__ros_fields__:
        v = getattr(msg, f.name)
        if isinstance(f.kind, type):
            kwargs[f.name] = [to_rosbags(x, ts) for x in v] if f.seq else to_rosbags(v, ts)
        elif f.kind == "string" and f.seq:
            kwargs[f.name] = list(v)
        else:
            kwargs[f.name] = v
    return ts.types[msg.ROS_TYPE](**kwargs)


def rosbags_cdr(msg: RosMessage, typestore: Any = None) -> bytes:
    """``msg`` serialized by ``rosbags`` (little-endian CDR with header): an independent encoder."""
    ts = typestore or _typestore()
    return bytes(ts.serialize_cdr(to_rosbags(msg, ts), msg.ROS_TYPE))


def write_bag(path: str | Path, messages: Iterable[tuple[str, int, RosMessage]], *, storage: str = "mcap") -> Path:
    """Write ``(topic, receive_time_ns, message)`` triples to a new rosbag2 directory with ``rosbags``.

    Args:
        path: directory to create (must not exist).
        messages: in any order; each topic must keep one message type.
        storage: ``mcap`` or ``sqlite3``.

    Returns:
        The bag directory.

    Raises:
        ValueError: unknown storage, or a topic with two types.
    """
    from rosbags.rosbag2 import StoragePlugin, Writer  # noqa: PLC0415

    plugins = {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}
    if storage not in plugins:
        raise ValueError(f"write_bag: storage must be one of {sorted(plugins)}, got {storage!r}")
    path = Path(path)
    ts = _typestore()
    with Writer(path, version=9, storage_plugin=plugins[storage]) as writer:
        conns: dict[str, Any] = {}
        for topic, stamp, msg in sorted(messages, key=lambda m: m[1]):
            topic = ros_topic_name(topic)
            conn = conns.get(topic)
            if conn is None:
                conn = conns[topic] = writer.add_connection(topic, msg.ROS_TYPE, typestore=ts)
            elif conn.msgtype != msg.ROS_TYPE:
                raise ValueError(f"write_bag: topic {topic} has type {conn.msgtype}, got a {msg.ROS_TYPE}")
            writer.write(conn, int(stamp), rosbags_cdr(msg, ts))
    return path
