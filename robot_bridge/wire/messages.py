"""ROS 2 messages as Python dataclasses, and their mapping to omnipolicy arrays.

One message layer serves every transport and the rosbag import: the
dataclasses below mirror the ROS 2 ``.msg`` definitions field by field (same
names, same order, same primitive types, see ``omnipolicy.robot_bridge.wire.cdr``
for the wire encoding), so a message built here is what a ROS 2 node sees.

Numeric sequences are 1-D numpy arrays of the ROS element type (``float64[]``
-> ``np.float64``, ``uint8[]`` -> ``np.uint8``); string sequences are tuples.
Constructors coerce lists, so ``JointState(name=["a"], position=[0.5])`` works.

The second half maps messages to what a policy sees and emits, with joint
names mapped explicitly by a :class:`JointMap`:

>>> jm = JointMap(robot_joints=("elbow", "shoulder"), task_index=(1, 0))
>>> msg = JointState(name=["shoulder", "elbow"], position=[0.1, 0.2])
>>> jm.task_vector(msg).tolist()   # task order: (shoulder, elbow)
[0.1, 0.2]
>>> jm.robot_vector([0.1, 0.2]).tolist()   # controller order: (elbow, shoulder)
[0.2, 0.1]
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

import numpy as np

# ---------------------------------------------------------------------------
# Field schema
# ---------------------------------------------------------------------------

#: ROS primitive type -> numpy dtype (little-endian on the wire).
PRIMITIVES: dict[str, np.dtype] = {
    "bool": np.dtype(np.bool_),
    "int8": np.dtype(np.int8),
    "uint8": np.dtype(np.uint8),
    "int16": np.dtype(np.int16),
    "uint16": np.dtype(np.uint16),
    "int32": np.dtype(np.int32),
    "uint32": np.dtype(np.uint32),
    "int64": np.dtype(np.int64),
    "uint64": np.dtype(np.uint64),
    "float32": np.dtype(np.float32),
    "float64": np.dtype(np.float64),
}

#: Every registered message class by ROS type name (``"sensor_msgs/msg/JointState"``).
MESSAGE_TYPES: dict[str, type["RosMessage"]] = {}

M = TypeVar("M", bound="RosMessage")


def _ros(kind: Any, *, seq: bool = False) -> Any:
    """A dataclass field of ROS type ``kind`` (primitive name, ``"string"`` or a message class).

    ``seq=True`` makes it an unbounded sequence (``kind[]``). The default is the
    ROS default: zero, empty string, empty sequence, default-constructed message.
    """
    meta = {"ros": kind, "seq": seq}
    if seq:
        if isinstance(kind, str) and kind in PRIMITIVES:
            dtype = PRIMITIVES[kind]
            return field(default_factory=lambda: np.zeros(0, dtype), metadata=meta)
        return field(default=(), metadata=meta)
    if kind == "string":
        return field(default="", metadata=meta)
    if isinstance(kind, str):
        if kind not in PRIMITIVES:
            raise ValueError(f"Unknown ROS primitive type {kind!r}; expected one of {sorted(PRIMITIVES)} or 'string'")
        return field(default=False if kind == "bool" else (0.0 if kind.startswith("float") else 0), metadata=meta)
    return field(default_factory=kind, metadata=meta)


@dataclass(frozen=True)
class RosField:
    """One field of a message: name, ROS kind and whether it is a sequence."""

    name: str
    kind: Any  # primitive name, "string" or a RosMessage subclass
    seq: bool

    @property
    def ros_type(self) -> str:
        base = self.kind.ROS_TYPE if isinstance(self.kind, type) else self.kind
        return base + ("[]" if self.seq else "")


class RosMessage:
    """Base of every message dataclass: ROS names, field schema, value equality."""

    ROS_TYPE: ClassVar[str] = ""
    __ros_fields__: ClassVar[tuple[RosField, ...]] = ()

    def __post_init__(self) -> None:
        for f in self.__ros_fields__:
            value = getattr(self, f.name)
            if f.seq:
                if isinstance(f.kind, str) and f.kind in PRIMITIVES:
                    arr = np.asarray(value, dtype=PRIMITIVES[f.kind])
                    if arr.ndim != 1:
                        arr = arr.reshape(-1)
                    object.__setattr__(self, f.name, arr)
                elif f.kind == "string":
                    if isinstance(value, str):
                        raise TypeError(f"{type(self).__name__}.{f.name}: expected a sequence of str, got a str {value!r}")
                    object.__setattr__(self, f.name, tuple(str(v) for v in value))
                else:
                    items = tuple(value)
                    for item in items:
                        if not isinstance(item, f.kind):
                            raise TypeError(
                                f"{type(self).__name__}.{f.name}: expected {f.kind.__name__} items, got {type(item).__name__}"
                            )
                    object.__setattr__(self, f.name, items)
            elif isinstance(f.kind, type) and not isinstance(value, f.kind):
                raise TypeError(f"{type(self).__name__}.{f.name}: expected {f.kind.__name__}, got {type(value).__name__}")

    @classmethod
    def dds_typename(cls) -> str:
        """The DDS type name ROS 2 uses on the wire, e.g. ``sensor_msgs::msg::dds_::JointState_``."""
        pkg, sub, name = cls.ROS_TYPE.split("/")
        return f"{pkg}::{sub}::dds_::{name}_"

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        for f in self.__ros_fields__:
            a, b = getattr(self, f.name), getattr(other, f.name)
            if isinstance(a, np.ndarray):
                if not np.array_equal(a, b, equal_nan=a.dtype.kind == "f"):
                    return False
            elif a != b:
                return False
        return True

    __hash__ = None  # type: ignore[assignment]  # mutable arrays inside

    def replace(self: M, **changes: Any) -> M:
        """A copy with some fields replaced (``dataclasses.replace``)."""
        return dataclasses.replace(self, **changes)


def ros_message(ros_type: str):
    """Class decorator: make a :class:`RosMessage` dataclass and register it under ``ros_type``."""
    parts = ros_type.split("/")
    if len(parts) != 3 or parts[1] != "msg" or not all(parts):
        raise ValueError(f"ROS message type must look like 'pkg/msg/Name', got {ros_type!r}")

    def wrap(cls: type[M]) -> type[M]:
        cls = dataclass(eq=False)(cls)
        cls.ROS_TYPE = ros_type
        cls.__ros_fields__ = tuple(
            RosField(f.name, f.metadata["ros"], f.metadata["seq"]) for f in dataclasses.fields(cls) if "ros" in f.metadata
        )
        if ros_type in MESSAGE_TYPES:
            raise ValueError(f"ROS message type {ros_type!r} is registered twice")
        MESSAGE_TYPES[ros_type] = cls
        return cls

    return wrap


def message_type(ros_type: str) -> type[RosMessage]:
    """The message class registered for ``ros_type`` (``pkg/msg/Name``; ``pkg/Name`` is accepted too).

    Raises:
        ValueError: unknown type; the message lists the supported ones.
    """
    key = ros_type if ros_type.count("/") == 2 else ros_type.replace("/", "/msg/", 1)
    if key not in MESSAGE_TYPES:
        raise ValueError(f"Unsupported ROS message type {ros_type!r}; supported types: {sorted(MESSAGE_TYPES)}")
    return MESSAGE_TYPES[key]


# ---------------------------------------------------------------------------
# Messages (field order is the wire order: keep it as in the .msg files)
# ---------------------------------------------------------------------------


class _SecNanosec(RosMessage):
    """Shared by Time and Duration: ``sec`` (int32) + ``nanosec`` (uint32, ``[0, 1e9)``)."""

    sec: int
    nanosec: int

    @classmethod
    def from_ns(cls, ns: int) -> Any:
        """From integer nanoseconds (floor division: ``nanosec`` stays non-negative)."""
        sec, nanosec = divmod(int(ns), 1_000_000_000)
        return cls(sec=sec, nanosec=nanosec)

    @classmethod
    def from_sec(cls, seconds: float) -> Any:
        """From float seconds, rounded to the nanosecond."""
        return cls.from_ns(round(seconds * 1e9))

    def to_ns(self) -> int:
        return int(self.sec) * 1_000_000_000 + int(self.nanosec)

    def to_sec(self) -> float:
        return self.to_ns() * 1e-9


@ros_message("builtin_interfaces/msg/Time")
class Time(_SecNanosec):
    """A point in time: seconds and nanoseconds since the epoch (ROS clock)."""

    sec: int = _ros("int32")
    nanosec: int = _ros("uint32")

    @classmethod
    def now(cls) -> "Time":
        """The current wall-clock (system) time, as ROS' ``SYSTEM_TIME`` clock gives it."""
        return cls.from_ns(time.time_ns())


@ros_message("builtin_interfaces/msg/Duration")
class Duration(_SecNanosec):
    """A span of time: seconds and nanoseconds (``nanosec`` in ``[0, 1e9)``)."""

    sec: int = _ros("int32")
    nanosec: int = _ros("uint32")


@ros_message("std_msgs/msg/Header")
class Header(RosMessage):
    """Timestamp and coordinate frame of the data."""

    stamp: Time = _ros(Time)
    frame_id: str = _ros("string")


@ros_message("sensor_msgs/msg/JointState")
class JointState(RosMessage):
    """Joint positions (rad or m), velocities and efforts by joint name; any array may be empty."""

    header: Header = _ros(Header)
    name: tuple[str, ...] = _ros("string", seq=True)
    position: np.ndarray = _ros("float64", seq=True)  # (N,)
    velocity: np.ndarray = _ros("float64", seq=True)  # (N,) or (0,)
    effort: np.ndarray = _ros("float64", seq=True)  # (N,) or (0,)


@ros_message("sensor_msgs/msg/Image")
class Image(RosMessage):
    """An uncompressed image: ``height`` rows of ``step`` bytes in ``data``."""

    header: Header = _ros(Header)
    height: int = _ros("uint32")
    width: int = _ros("uint32")
    encoding: str = _ros("string")
    is_bigendian: int = _ros("uint8")
    step: int = _ros("uint32")
    data: np.ndarray = _ros("uint8", seq=True)  # (height * step,)


@ros_message("trajectory_msgs/msg/JointTrajectoryPoint")
class JointTrajectoryPoint(RosMessage):
    """One waypoint: per-joint targets (each array empty or one value per joint) and its time from start."""

    positions: np.ndarray = _ros("float64", seq=True)
    velocities: np.ndarray = _ros("float64", seq=True)
    accelerations: np.ndarray = _ros("float64", seq=True)
    effort: np.ndarray = _ros("float64", seq=True)
    time_from_start: Duration = _ros(Duration)


@ros_message("trajectory_msgs/msg/JointTrajectory")
class JointTrajectory(RosMessage):
    """A trajectory for named joints (joint_trajectory_controller's ``~/joint_trajectory``)."""

    header: Header = _ros(Header)
    joint_names: tuple[str, ...] = _ros("string", seq=True)
    points: tuple[JointTrajectoryPoint, ...] = _ros(JointTrajectoryPoint, seq=True)


@ros_message("std_msgs/msg/MultiArrayDimension")
class MultiArrayDimension(RosMessage):
    """One dimension of a multi-array: label, size and stride."""

    label: str = _ros("string")
    size: int = _ros("uint32")
    stride: int = _ros("uint32")


@ros_message("std_msgs/msg/MultiArrayLayout")
class MultiArrayLayout(RosMessage):
    """Dimensions of a multi-array and the offset of its first element in ``data``."""

    dim: tuple[MultiArrayDimension, ...] = _ros(MultiArrayDimension, seq=True)
    data_offset: int = _ros("uint32")


@ros_message("std_msgs/msg/Float64MultiArray")
class Float64MultiArray(RosMessage):
    """float64 values with a layout (forward_command_controller's ``~/commands``, in its joint order)."""

    layout: MultiArrayLayout = _ros(MultiArrayLayout)
    data: np.ndarray = _ros("float64", seq=True)


@ros_message("std_msgs/msg/Bool")
class Bool(RosMessage):
    """A single boolean (used for the e-stop topic)."""

    data: bool = _ros("bool")


@ros_message("std_msgs/msg/String")
class String(RosMessage):
    """Text (a robot's instruction topic)."""

    data: str = _ros("string")


# ---------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------

#: Image encodings we convert to arrays: encoding -> (channels, RGB channel order or None).
IMAGE_ENCODINGS: dict[str, tuple[int, tuple[int, ...] | None]] = {
    "rgb8": (3, (0, 1, 2)),
    "bgr8": (3, (2, 1, 0)),
    "rgba8": (4, (0, 1, 2)),
    "bgra8": (4, (2, 1, 0)),
    "mono8": (1, None),
    "8UC1": (1, None),
    "8UC3": (3, (0, 1, 2)),
}


def validate(msg: RosMessage) -> RosMessage:
    """Check a message's internal consistency and return it.

    JointState: unique, non-empty names; ``position``/``velocity``/``effort``
    each empty or one value per name. Image: ``step * height == len(data)`` and
    ``step >= width * channels`` for known encodings. JointTrajectory: unique
    names, each point's arrays empty or one value per joint. Float64MultiArray:
    ``data_offset <= len(data)``. Time/Duration: ``nanosec < 1e9``.
    Values themselves (NaN) are checked where they are used, by :class:`JointMap`
    (joint_state_broadcaster sends NaN for interfaces a joint does not have).

    Raises:
        ValueError: one line naming the message type, the field and the values.
    """
    kind = type(msg).__name__
    if isinstance(msg, (Time, Duration)):
        if not 0 <= msg.nanosec < 1_000_000_000:
            raise ValueError(f"{kind}: nanosec must be in [0, 1e9), got {msg.nanosec}")
    elif isinstance(msg, JointState):
        _check_names(kind, "name", msg.name)
        n = len(msg.name)
        for fname in ("position", "velocity", "effort"):
            m = len(getattr(msg, fname))
            if m not in (0, n):
                raise ValueError(f"{kind}: {fname} has {m} values for {n} joint names {list(msg.name)}; expected {n} or 0")
        validate(msg.header.stamp)
    elif isinstance(msg, Image):
        if msg.step * msg.height != len(msg.data):
            raise ValueError(
                f"Image: data has {len(msg.data)} bytes, expected step*height = {msg.step}*{msg.height} = {msg.step * msg.height}"
            )
        if msg.encoding in IMAGE_ENCODINGS and msg.step < msg.width * IMAGE_ENCODINGS[msg.encoding][0]:
            raise ValueError(
                f"Image: step {msg.step} is smaller than width*channels = {msg.width}*{IMAGE_ENCODINGS[msg.encoding][0]}"
                f" for encoding {msg.encoding!r}"
            )
        validate(msg.header.stamp)
    elif isinstance(msg, JointTrajectory):
        _check_names(kind, "joint_names", msg.joint_names)
        n = len(msg.joint_names)
        for i, p in enumerate(msg.points):
            for fname in ("positions", "velocities", "accelerations", "effort"):
                m = len(getattr(p, fname))
                if m not in (0, n):
                    raise ValueError(f"{kind}: points[{i}].{fname} has {m} values for {n} joints; expected {n} or 0")
            validate(p.time_from_start)
        validate(msg.header.stamp)
    elif isinstance(msg, Float64MultiArray):
        if msg.layout.data_offset > len(msg.data):
            raise ValueError(f"Float64MultiArray: layout.data_offset {msg.layout.data_offset} > len(data) {len(msg.data)}")
    return msg


def _check_names(kind: str, fname: str, names: Sequence[str]) -> None:
    if any(not n for n in names):
        raise ValueError(f"{kind}: {fname} contains an empty joint name: {list(names)}")
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if list(names).count(n) > 1})
        raise ValueError(f"{kind}: duplicate joint names {dup} in {fname}")


def _fixed_vector(values: Any, names: Sequence[str], what: str, label: str) -> np.ndarray:
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    if len(v) != len(names):
        raise ValueError(f"{what}: expected {len(names)} values for {label} {list(names)}, got {len(v)}")
    return v


def _check_finite(what: str, values: np.ndarray, names: Sequence[str]) -> None:
    bad = ~np.isfinite(values)
    if bad.any():
        raise ValueError(f"{what}: non-finite values for joints {[names[i] for i in np.flatnonzero(bad)]}: {values[bad].tolist()}")


# ---------------------------------------------------------------------------
# Joint names <-> task vectors
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class JointMap:
    """The robot's joints, in its controller's order, and where each sits in the task's vector.

    ``robot_joints[k]`` is the name of the k-th joint as the robot's controller
    lists it (the order of a ``Float64MultiArray`` command), and
    ``task_index[k]`` is that joint's index in the task's observation/action
    vector. The map is a bijection: every task index ``0..n-1`` appears once.
    Joints the robot publishes but the task ignores (a gripper finger, a
    passive wheel) must be listed in ``ignored``; any other unknown name in a
    message is an error, as is a missing one.

    Attributes:
        robot_joints: joint names in the controller's order.
        task_index: index in the task vector of each robot joint; default identity.
        ignored: names allowed in incoming messages and dropped.
    """

    robot_joints: tuple[str, ...]
    task_index: tuple[int, ...] | None = None
    ignored: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        joints = tuple(str(j) for j in self.robot_joints)
        object.__setattr__(self, "robot_joints", joints)
        if not joints:
            raise ValueError("JointMap: robot_joints is empty; expected at least one joint name")
        _check_names("JointMap", "robot_joints", joints)
        n = len(joints)
        index = tuple(range(n)) if self.task_index is None else tuple(int(i) for i in self.task_index)
        if sorted(index) != list(range(n)):
            raise ValueError(f"JointMap: task_index must be a permutation of 0..{n - 1} (one per robot joint), got {list(index)}")
        object.__setattr__(self, "task_index", index)
        ignored = tuple(str(j) for j in self.ignored)
        clash = sorted(set(ignored) & set(joints))
        if clash:
            raise ValueError(f"JointMap: joints {clash} are both mapped and ignored")
        object.__setattr__(self, "ignored", ignored)
        # robot position of each task index: task_vector = robot_vector[_robot_of_task]
        object.__setattr__(self, "_robot_of_task", np.argsort(np.asarray(index)))
        object.__setattr__(self, "_slot", {name: index[k] for k, name in enumerate(joints)})

    @classmethod
    def from_task_order(cls, robot_joints: Sequence[str], task_joints: Sequence[str], ignored: Sequence[str] = ()) -> "JointMap":
        """A map from the controller's joint order and the task's joint order (same names, any order).

        Raises:
            ValueError: the two lists do not hold the same names.
        """
        robot_joints, task_joints = list(robot_joints), list(task_joints)
        if sorted(robot_joints) != sorted(task_joints) or len(set(task_joints)) != len(task_joints):
            raise ValueError(
                f"JointMap: robot joints {robot_joints} and task joints {task_joints} must name the same joints once each"
            )
        return cls(tuple(robot_joints), tuple(task_joints.index(j) for j in robot_joints), tuple(ignored))

    @property
    def size(self) -> int:
        """Length of the task vector (number of mapped joints)."""
        return len(self.robot_joints)

    @property
    def task_joints(self) -> tuple[str, ...]:
        """Joint names in task-vector order."""
        return tuple(self.robot_joints[k] for k in self._robot_of_task)

    def task_from_named(self, names: Sequence[str], values: Any, *, what: str = "values") -> np.ndarray:
        """Task vector from values labelled by joint name (any order, ignored names dropped).

        Args:
            names: joint name of each value.
            values: one float per name.
            what: what the values are, for error messages (``"JointState.position"``).

        Returns:
            ``(size,)`` float64 array in task order.

        Raises:
            ValueError: wrong length, duplicate, unknown or missing names, non-finite values.
        """
        values = np.asarray(values, dtype=np.float64).reshape(-1)
        names = list(names)
        if len(values) != len(names):
            raise ValueError(f"{what}: {len(values)} values for {len(names)} joint names {names}")
        if len(set(names)) != len(names):
            raise ValueError(f"{what}: duplicate joint names {sorted({n for n in names if names.count(n) > 1})}")
        unknown = [n for n in names if n not in self._slot and n not in self.ignored]
        if unknown:
            raise ValueError(
                f"{what}: unknown joint names {unknown}; expected {list(self.robot_joints)}"
                + (f" (ignored: {list(self.ignored)})" if self.ignored else "")
            )
        missing = [j for j in self.robot_joints if j not in names]
        if missing:
            raise ValueError(f"{what}: missing joint names {missing}; got {names}")
        out = np.empty(self.size, dtype=np.float64)  # (size,)
        for n, v in zip(names, values):
            slot = self._slot.get(n)
            if slot is not None:
                out[slot] = v
        _check_finite(what, out, self.task_joints)
        return out

    def task_from_robot(self, values: Any, *, what: str = "values") -> np.ndarray:
        """Task vector from values in the controller's joint order (a ``Float64MultiArray`` command).

        Raises:
            ValueError: wrong length or non-finite values.
        """
        values = _fixed_vector(values, self.robot_joints, what, "joints")
        out = values[self._robot_of_task]  # (size,) task order
        _check_finite(what, out, self.task_joints)
        return out

    def robot_vector(self, task_vector: Any, *, what: str = "action") -> np.ndarray:
        """Values in the controller's joint order from a task vector.

        Raises:
            ValueError: wrong length or non-finite values.
        """
        v = _fixed_vector(task_vector, self.task_joints, what, "task joints")
        _check_finite(what, v, self.task_joints)
        return v[np.asarray(self.task_index)]  # (size,) robot order

    def task_vector(self, msg: JointState, field: str = "position") -> np.ndarray:
        """Task vector of one ``JointState`` field (``position``, ``velocity`` or ``effort``).

        Raises:
            ValueError: bad field name, an empty field, or any error of :meth:`task_from_named`.
        """
        if field not in ("position", "velocity", "effort"):
            raise ValueError(f"JointState field must be 'position', 'velocity' or 'effort', got {field!r}")
        values = getattr(msg, field)
        if len(values) == 0:
            raise ValueError(f"JointState.{field} is empty; the task needs it for joints {list(self.task_joints)}")
        return self.task_from_named(msg.name, values, what=f"JointState.{field}")


# ---------------------------------------------------------------------------
# Messages <-> observations and actions
# ---------------------------------------------------------------------------


def image_to_array(msg: Image) -> np.ndarray:
    """An ``Image`` as a ``(H, W, C)`` uint8 array, RGB for colour encodings (alpha dropped), C=1 for mono.

    Raises:
        ValueError: unsupported encoding or inconsistent sizes.
    """
    if msg.encoding not in IMAGE_ENCODINGS:
        raise ValueError(f"Image: unsupported encoding {msg.encoding!r}; supported: {sorted(IMAGE_ENCODINGS)}")
    validate(msg)
    channels, order = IMAGE_ENCODINGS[msg.encoding]
    h, w = int(msg.height), int(msg.width)
    rows = np.asarray(msg.data, dtype=np.uint8).reshape(h, msg.step)[:, : w * channels]  # (H, W*C) without row padding
    px = rows.reshape(h, w, channels)  # (H, W, C)
    out = px if order is None else px[..., list(order)]
    return np.ascontiguousarray(out)


def array_to_image(array: Any, *, encoding: str = "rgb8", stamp: Time | None = None, frame_id: str = "") -> Image:
    """An ``Image`` from a ``(H, W, C)`` (or ``(H, W)``) uint8 array in RGB (or mono) order.

    Args:
        array: pixel values; C=3 for ``rgb8``/``bgr8``, C=1 or 2-D for ``mono8``.
        encoding: ``rgb8``, ``bgr8`` or ``mono8``.
        stamp: header time; default now.
        frame_id: header frame.

    Raises:
        ValueError: wrong dtype, shape or encoding.
    """
    a = np.asarray(array)
    if a.dtype != np.uint8:
        raise ValueError(f"array_to_image: expected a uint8 array, got dtype {a.dtype}")
    if a.ndim == 2:
        a = a[:, :, None]
    if encoding not in ("rgb8", "bgr8", "mono8"):
        raise ValueError(f"array_to_image: encoding must be 'rgb8', 'bgr8' or 'mono8', got {encoding!r}")
    channels = 1 if encoding == "mono8" else 3
    if a.ndim != 3 or a.shape[2] != channels:
        raise ValueError(f"array_to_image: {encoding!r} needs shape (H, W, {channels}), got {tuple(np.shape(array))}")
    if encoding == "bgr8":
        a = a[..., ::-1]
    h, w = a.shape[:2]
    return Image(
        header=Header(stamp=stamp or Time.now(), frame_id=frame_id),
        height=h,
        width=w,
        encoding=encoding,
        is_bigendian=0,
        step=w * channels,
        data=np.ascontiguousarray(a).reshape(-1),
    )


@dataclass(frozen=True)
class ObservationMap:
    """How ROS messages fill a task's observation dict.

    Attributes:
        joints: joint names <-> task vector indices.
        position_key: observation key of the joint positions (task order), or None.
        velocity_key: observation key of the joint velocities, or None.
        image_key: observation key of the camera image ``(H, W, C)`` uint8, or None.
    """

    joints: JointMap
    position_key: str | None = "joint_positions"
    velocity_key: str | None = None
    image_key: str | None = None

    def __post_init__(self) -> None:
        keys = [k for k in (self.position_key, self.velocity_key, self.image_key) if k is not None]
        if not keys:
            raise ValueError("ObservationMap: set at least one of position_key, velocity_key, image_key")
        if len(set(keys)) != len(keys):
            raise ValueError(f"ObservationMap: observation keys must differ, got {keys}")

    def observation(self, state: JointState, image: Image | None = None) -> dict[str, np.ndarray]:
        """The observation dict of one timestep.

        Raises:
            ValueError: a malformed state (see :class:`JointMap`) or image, or a missing image.
        """
        obs = self.joint_observation(state)
        if self.image_key is not None:
            if image is None:
                raise ValueError(f"ObservationMap: observation key {self.image_key!r} needs an Image, got none")
            obs[self.image_key] = image_to_array(image)  # (H, W, C)
        return obs

    def joint_observation(self, state: JointState) -> dict[str, np.ndarray]:
        """The joint-state part of the observation (no image).

        Raises:
            ValueError: a malformed state (see :class:`JointMap`).
        """
        validate(state)
        obs: dict[str, np.ndarray] = {}
        if self.position_key is not None:
            obs[self.position_key] = self.joints.task_vector(state, "position")  # (J,)
        if self.velocity_key is not None:
            obs[self.velocity_key] = self.joints.task_vector(state, "velocity")  # (J,)
        return obs

    def check_spec(self, spec: Any) -> None:
        """Check the keys and shapes against a task's ``TimestepSpec``.

        Raises:
            ValueError: a key the spec lacks, or a shape that differs.
        """
        fields = {f.name: f for f in spec.observation}
        for key, shape in ((self.position_key, (self.joints.size,)), (self.velocity_key, (self.joints.size,))):
            if key is None:
                continue
            if key not in fields:
                raise ValueError(f"ObservationMap: key {key!r} is not in the task's observation keys {sorted(fields)}")
            if tuple(fields[key].shape) != shape:
                raise ValueError(f"ObservationMap: {key!r} has shape {shape} from {self.joints.size} joints, spec says {fields[key].shape}")
        if self.image_key is not None and self.image_key not in fields:
            raise ValueError(f"ObservationMap: key {self.image_key!r} is not in the task's observation keys {sorted(fields)}")


def command_from_action(action: Any, joints: JointMap) -> Float64MultiArray:
    """A forward_command_controller command (controller joint order) from a task action vector.

    Raises:
        ValueError: wrong length or non-finite values.
    """
    return Float64MultiArray(layout=MultiArrayLayout(), data=joints.robot_vector(action))


def trajectory_from_action(
    action: Any, joints: JointMap, *, time_from_start: float = 0.0, stamp: Time | None = None
) -> JointTrajectory:
    """A one-point ``JointTrajectory`` to the action's joint positions.

    Args:
        action: task-order joint position targets.
        joints: the joint map.
        time_from_start: seconds to reach the point.
        stamp: header stamp; ``Time()`` (zero: start now) by default, as joint_trajectory_controller reads it.

    Raises:
        ValueError: wrong length or non-finite values.
    """
    point = JointTrajectoryPoint(positions=joints.robot_vector(action), time_from_start=Duration.from_sec(time_from_start))
    return JointTrajectory(header=Header(stamp=stamp or Time()), joint_names=joints.robot_joints, points=(point,))


def action_from_command(msg: Float64MultiArray | JointTrajectory, joints: JointMap) -> np.ndarray:
    """A task action vector from a command message.

    ``Float64MultiArray``: ``data[data_offset:]`` in the controller's joint
    order. ``JointTrajectory``: the positions of its first point (the
    immediate target of a streamed trajectory), by joint name.

    Raises:
        ValueError: wrong length, unknown/missing joints, no points, non-finite values.
    """
    if isinstance(msg, Float64MultiArray):
        validate(msg)
        return joints.task_from_robot(msg.data[msg.layout.data_offset :], what="Float64MultiArray.data")
    if isinstance(msg, JointTrajectory):
        validate(msg)
        if not msg.points:
            raise ValueError("JointTrajectory: no points; expected at least one")
        if len(msg.points[0].positions) == 0:
            raise ValueError("JointTrajectory: points[0].positions is empty; expected joint positions")
        return joints.task_from_named(msg.joint_names, msg.points[0].positions, what="JointTrajectory.points[0].positions")
    raise ValueError(f"action_from_command: expected Float64MultiArray or JointTrajectory, got {type(msg).__name__}")


def stamp_ns(msg: RosMessage) -> int | None:
    """The header stamp in nanoseconds, or None when the message has no header."""
    header = getattr(msg, "header", None)
    return header.stamp.to_ns() if isinstance(header, Header) else None


def joint_state(names: Sequence[str], position: Any, velocity: Any = (), effort: Any = (), *, stamp: Time | None = None) -> JointState:
    """A validated ``JointState`` (stamp: now by default)."""
    msg = JointState(Header(stamp=stamp or Time.now()), tuple(names), position, velocity, effort)
    return validate(msg)  # type: ignore[return-value]

