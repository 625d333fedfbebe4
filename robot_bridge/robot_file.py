"""The robot description: :class:`ArmSpec` (joints, command interface, limits, topics, cameras, observation recipe)
and the robot file (TOML) it is read from.

An :class:`ArmSpec` says everything both ends of the wire agree on: the joints in the controller's order, the command
interface and its limits, which topics carry what with which QoS, and the **observation recipe**: for every key of
the policy's observation (its ``TimestepSpec``), the topic, message field and names its values come from, in order.
``omnipolicy sim-robot`` publishes by it; ``omnipolicy deploy`` rebuilds the exact observation vector from the
messages with it and checks it, and the action, against the checkpoint's spec before acting
(:meth:`ArmSpec.check_spec`).

A robot file holds one arm (schema: docs/ros2.md, "Robot files"; an annotated example:
``tests/data/robots/two_joint_arm.toml``). :func:`load_robot_file` validates all of it before building anything and
raises :class:`RobotFileError` naming the file and the key, what was expected and what came. The arms shipped with
omnipolicy are such files (``robot_bridge/robots/``), registered by :mod:`omnipolicy.robot_bridge.arms`.
"""

from __future__ import annotations

import difflib
import math
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from omnipolicy.robot_bridge.wire.messages import (
    Bool,
    Image,
    JointMap,
    JointState,
    JointTrajectory,
    RosMessage,
    action_from_command,
    command_from_action,
    image_to_array,
    message_type,
    trajectory_from_action,
    validate,
)
from omnipolicy.robot_bridge.wire.safety import INTERFACES, SafetyLimits
from omnipolicy.robot_bridge.wire.transport import QOS_PRESETS, QosProfile, ros_topic_name
from omnipolicy.tokenizers.spec import FieldSpec, TimestepSpec


def check_names(what: str, expected: Sequence[str] | None, found: Sequence[str], where: str) -> None:
    """Element names a spec's field carries (None: none to check) against the robot's, in order.

    Raises:
        ValueError: the names or their order differ (naming ``what``, the expected and the found names).
    """
    if expected is None or tuple(expected) == tuple(found) or tuple(_joint_names(expected)) == tuple(found):
        return
    exp, got = list(expected), list(found)
    detail = ("same names in another order" if sorted(exp) == sorted(got) else
              f"missing on the robot: {sorted(set(exp) - set(got))}, not in the policy: {sorted(set(got) - set(exp))}")
    raise ValueError(f"{what}: the policy's element names {exp} differ from the robot's {got} ({where}; {detail})")


#: LeRobot names a joint's value ``<joint>.pos`` (``.vel``, ``.effort``); the robot's names are the joints'.
LEROBOT_SUFFIXES = (".pos", ".vel", ".effort")


def _joint_names(names: Sequence[str]) -> list[str]:
    """Element names with LeRobot's per-joint suffix removed, when every name carries the same one."""
    for suffix in LEROBOT_SUFFIXES:
        if names and all(n.endswith(suffix) for n in names):
            return [n[: -len(suffix)] for n in names]
    return list(names)


# ---------------------------------------------------------------------------
# Observation recipe
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class NamedSource:
    """One observation key filled from named values of a ``JointState`` topic.

    Attributes:
        key: the observation key.
        topic: ROS topic of the ``JointState`` messages.
        field: ``position``, ``velocity`` or ``effort``.
        names: the names whose values make the observation vector, in its element order.
        ignored: other names the topic may carry (dropped).
    """

    key: str
    topic: str
    field: Literal["position", "velocity", "effort"]
    names: tuple[str, ...]
    ignored: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.field not in ("position", "velocity", "effort"):
            raise ValueError(f"NamedSource {self.key!r}: field must be position, velocity or effort, got {self.field!r}")
        object.__setattr__(self, "_map", JointMap(tuple(self.names), ignored=tuple(self.ignored)))

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.names),)

    def values(self, msg: JointState) -> np.ndarray:
        """float64 (len(names),) from one message.

        Raises:
            ValueError: unknown, missing or duplicate names, wrong lengths, an empty field, NaN/inf.
        """
        return self._map.task_vector(msg, self.field)  # type: ignore[attr-defined]

    def describe(self) -> str:
        return f"{self.key} <- {self.topic} {self.field}{list(self.names)}"


@dataclass(frozen=True)
class ImageSource:
    """One image observation key filled from a ``sensor_msgs/Image`` topic (converted to RGB uint8).

    Attributes:
        key: the observation key.
        topic: ROS topic of the images.
        shape: (height, width, channels) the camera gives, or None (any: checked against the spec per image).
    """

    key: str
    topic: str
    shape: tuple[int, int, int] | None = None

    def describe(self) -> str:
        size = "" if self.shape is None else f" {'x'.join(map(str, self.shape))}"
        return f"{self.key} <- {self.topic} (sensor_msgs/Image{size} -> RGB uint8)"


Source = NamedSource | ImageSource


@dataclass(frozen=True)
class ObservationRecipe:
    """How messages make one timestep's observation dict: one source per observation key."""

    sources: tuple[Source, ...]

    def __post_init__(self) -> None:
        keys = [s.key for s in self.sources]
        if len(set(keys)) != len(keys):
            raise ValueError(f"ObservationRecipe: observation keys must be unique, got {keys}")

    @property
    def topics(self) -> dict[str, type[RosMessage]]:
        """Every topic the recipe reads, with its message type."""
        out: dict[str, type[RosMessage]] = {}
        for s in self.sources:
            cls = Image if isinstance(s, ImageSource) else JointState
            if out.setdefault(s.topic, cls) is not cls:
                raise ValueError(f"ObservationRecipe: topic {s.topic} is read as two message types")
        return out

    def check_spec(self, spec: Any) -> None:
        """Check the recipe against a ``TimestepSpec``: the same keys, the shapes it can produce, image sizes, and the
        element names where the spec's field carries them (a LeRobot feature's ``names``).

        Raises:
            ValueError: a key missing on either side, or a shape, kind, image size or name that differs (naming the key,
                what the spec expects and what the recipe gives).
        """
        # text fields (an instruction) do not come from the robot's topics: deploy gives them (--instruction)
        fields = {f.name: f for f in spec.observation if f.kind != "text"}
        mine = {s.key: s for s in self.sources}
        if set(fields) != set(mine):
            raise ValueError(
                f"Observation recipe keys {sorted(mine)} differ from the checkpoint's observation keys {sorted(fields)}"
                f" (missing: {sorted(set(fields) - set(mine))}, extra: {sorted(set(mine) - set(fields))})"
            )
        for key, src in mine.items():
            f = fields[key]
            if isinstance(src, ImageSource):
                if f.kind != "image":
                    raise ValueError(f"Observation recipe: {key!r} comes from an Image but the spec's field is {f.kind}")
                if src.shape is not None and tuple(f.shape) != src.shape:
                    raise ValueError(f"Observation recipe: {key!r} comes from a camera of (height, width, channels) "
                                     f"{src.shape} on {src.topic}, the spec's image is {tuple(f.shape)}")
                continue
            if f.kind != "continuous" or tuple(f.shape) != src.shape:
                raise ValueError(
                    f"Observation recipe: {key!r} gives a continuous vector of shape {src.shape}, "
                    f"the spec's field is {f.kind} {tuple(f.shape)}"
                )
            check_names(f"observation {key!r}", getattr(f, "names", None), src.names, f"{src.topic} {src.field}")

    def build(self, latest: Mapping[str, RosMessage], spec: Any) -> dict[str, np.ndarray]:
        """The observation dict from the newest message of each topic, in the spec's dtypes and shapes.

        Raises:
            ValueError: a topic without a message yet, or a message the recipe cannot use (one line saying why).
        """
        fields = {f.name: f for f in spec.observation}
        obs: dict[str, np.ndarray] = {}
        for s in self.sources:
            msg = latest.get(s.topic)
            if msg is None:
                raise ValueError(f"no message on {s.topic} yet (observation key {s.key!r})")
            f = fields[s.key]
            if isinstance(s, ImageSource):
                img = image_to_array(msg)  # type: ignore[arg-type]  # (H, W, C) RGB
                if img.shape != tuple(f.shape):
                    raise ValueError(f"{s.topic}: image of shape {img.shape}, observation {s.key!r} needs {tuple(f.shape)}")
                obs[s.key] = img
            else:
                obs[s.key] = s.values(validate(msg)).astype(f.dtype)  # type: ignore[arg-type]  # (n,)
        return obs

    def describe(self) -> list[str]:
        return [s.describe() for s in self.sources]


# ---------------------------------------------------------------------------
# Arm specs
# ---------------------------------------------------------------------------

#: forward_command_controller's command type (controller joint order).
FORWARD_COMMAND = "std_msgs/msg/Float64MultiArray"


def _field_spec(name: str, kind: str, shape: tuple[int, ...], dtype: str, low: Any = None, high: Any = None,
                names: tuple[str, ...] | None = None) -> FieldSpec:
    """A ``FieldSpec``, with element names where this version of ``FieldSpec`` carries them."""
    extra = {"names": names} if "names" in FieldSpec.__dataclass_fields__ else {}
    return FieldSpec(name, kind, shape, dtype, low, high, **extra)


@dataclass(frozen=True)
class CameraSpec:
    """One camera the observation reads.

    Attributes:
        key: the observation key its images fill.
        topic: ROS topic of its ``sensor_msgs/Image`` messages.
        height, width, channels: the image size (channels 3: RGB, 1: mono).
        name: the simulator's camera (an MJCF camera name; empty: the model's first camera).
    """

    key: str
    topic: str
    height: int
    width: int
    channels: int = 3
    name: str = ""

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.height, self.width, self.channels)


@dataclass(frozen=True)
class CommandGroup:
    """One controller's share of the arm's command, as ros2_control splits an arm over controllers (an arm
    trajectory controller and a gripper forward-command controller, say).

    Attributes:
        joints: the controller's joints, in its order (a subset of the arm's joints; the groups of an arm cover its
            joints exactly once).
        topic: where its commands go.
        type: its message type: ``Float64MultiArray`` in the controller's joint order, or a one-point
            ``JointTrajectory`` (position interface only).
    """

    joints: tuple[str, ...]
    topic: str
    type: str = FORWARD_COMMAND

    @property
    def message_class(self) -> type[RosMessage]:
        return message_type(self.type)

    @property
    def joint_map(self) -> JointMap:
        """The controller's joints (its message order)."""
        return JointMap(self.joints)

    def message(self, values: np.ndarray) -> RosMessage:
        """The command message of this group's values (float (len(joints),), in ``joints`` order)."""
        if self.message_class is JointTrajectory:
            return trajectory_from_action(values, self.joint_map)
        return command_from_action(values, self.joint_map)

    def values(self, msg: RosMessage) -> np.ndarray:
        """float64 (len(joints),) in ``joints`` order from one command message.

        Raises:
            ValueError: wrong length, unknown or missing joints, no points, NaN/inf.
        """
        return action_from_command(msg, self.joint_map)  # type: ignore[arg-type]

    def describe(self) -> str:
        return f"{self.topic} ({self.type}) {list(self.joints)}"


@dataclass(frozen=True)
class ArmSpec:
    """What a robot and a deploy node agree on for one arm.

    Attributes:
        task_id: the registered task it corresponds to (its ``TimestepSpec`` is what the policy sees), or empty for an
            arm known only by its robot file (the policy's spec then comes from the checkpoint).
        limits: joints in controller order, command interface and limits.
        observation: the observation recipe.
        task_state_names: names of the non-joint values on ``task_state_topic``.
        control_period: the control step in seconds (the simulator's rate).
        sim: ``"module:Class"`` of the :class:`~omnipolicy.robot_bridge.arms.SimArm` that simulates it (or empty).
        joint_states_topic, task_state_topic: where the robot publishes its state.
        camera_topic: where ``sim-robot --camera-rate-hz`` publishes a camera the observation does not read.
        command_topic: where commands go, as ``command_type`` (``Float64MultiArray`` in controller joint order, or a
            one-point ``JointTrajectory``); with ``command_groups``, the first group's.
        trajectory_topic: ``sim-robot`` also accepts ``JointTrajectory`` position targets here (empty: not at all).
        command_groups: the command split over several controllers (``[[command]]`` tables), or empty: one command of
            every joint on ``command_topic`` (:attr:`commands` gives the groups either way).
        cameras: the cameras the observation reads.
        instruction_topic: ``std_msgs/String`` instructions a policy with a text field reads (deploy).
        episode_topic: Bool True at the start of each episode (a deploy node resets the policy's context).
        success_topic: Bool at the end of each episode: target reached and held.
        qos: ``(topic, QosProfile)`` pairs overriding the default QoS of a topic (:meth:`qos_of`).
        name: the robot's name.
        mjcf: absolute path of the MJCF model that simulates it, or None.
        description: one line for ``--help`` and logs.
        source: the robot file it was read from (not compared).
        tasks: a robot file's ``task`` list: every task id the arm serves, ``task_id`` first (the registry has the
            arm under each, with that ``task_id``); empty for one task (:attr:`task_ids` gives them either way).
    """

    task_id: str
    limits: SafetyLimits
    observation: ObservationRecipe
    task_state_names: tuple[str, ...] = ()
    control_period: float = 0.02
    sim: str = ""
    joint_states_topic: str = "/joint_states"
    task_state_topic: str = "/sim_robot/task_state"
    camera_topic: str = "/sim_robot/camera/image_raw"
    command_topic: str = "/effort_controller/commands"
    command_type: str = FORWARD_COMMAND
    trajectory_topic: str = "/joint_trajectory_controller/joint_trajectory"
    command_groups: tuple[CommandGroup, ...] = ()
    cameras: tuple[CameraSpec, ...] = ()
    instruction_topic: str | None = None
    episode_topic: str = "/sim_robot/episode_start"
    success_topic: str = "/sim_robot/success"
    qos: tuple[tuple[str, QosProfile], ...] = ()
    name: str = ""
    mjcf: str | None = None
    description: str = ""
    source: str = field(default="", compare=False)
    tasks: tuple[str, ...] = ()

    @property
    def joints(self) -> tuple[str, ...]:
        return self.limits.joints

    @property
    def task_ids(self) -> tuple[str, ...]:
        """Every task id the arm serves (``task_id`` first; none for an arm known only by its file)."""
        return self.tasks or ((self.task_id,) if self.task_id else ())

    @property
    def rate_hz(self) -> float:
        return 1.0 / self.control_period

    @property
    def label(self) -> str:
        """The task id, else the robot's name (for logs)."""
        return self.task_id or self.name

    @property
    def command_class(self) -> type[RosMessage]:
        return message_type(self.command_type)

    @property
    def commands(self) -> tuple[CommandGroup, ...]:
        """The command groups: ``command_groups``, else one group of every joint on ``command_topic``."""
        return self.command_groups or (CommandGroup(self.joints, self.command_topic, self.command_type),)

    def group_index(self, group: CommandGroup) -> np.ndarray:
        """int (len(group.joints),): where each of the group's joints sits in the arm's joint vector."""
        return np.array([self.joints.index(j) for j in group.joints], dtype=np.intp)

    def split_command(self, command: np.ndarray) -> list[tuple[CommandGroup, RosMessage]]:
        """One message per command group from a command of every joint (float (J,), the arm's joint order).

        Raises:
            ValueError: wrong length or non-finite values.
        """
        command = np.asarray(command, dtype=np.float64).reshape(-1)  # (J,)
        if command.shape != (len(self.joints),):
            raise ValueError(f"command: expected {len(self.joints)} values, one per joint {list(self.joints)}, "
                             f"got {command.shape[0]}")
        return [(g, g.message(command[self.group_index(g)])) for g in self.commands]

    def describe_commands(self) -> str:
        """The command topics with their types and joints (for logs)."""
        return "; ".join(g.describe() for g in self.commands)

    def qos_of(self, topic: str, default: QosProfile) -> QosProfile:
        """The QoS of a topic: the robot file's, else ``default`` (what ros2_control / sensors use)."""
        return dict(self.qos).get(topic, default)

    def timestep_spec(self) -> TimestepSpec:
        """The ``TimestepSpec`` the arm's observation recipe and commands make (for an arm without a registered task).

        Vectors are float32 with the recipe's element names; images uint8 of the cameras' sizes; the action is one
        float32 value per joint, bounded by the interface's limits where all are finite (effort: +-effort, position:
        lower..upper, velocity: +-velocity).
        """
        cams = {c.key: c for c in self.cameras}
        fields = []
        for s in self.observation.sources:
            if isinstance(s, ImageSource):
                fields.append(FieldSpec(s.key, "image", cams[s.key].shape, "uint8"))
            else:
                fields.append(_field_spec(s.key, "continuous", s.shape, "float32", names=tuple(s.names)))
        lim = self.limits
        low, high = {"effort": ([-v for v in lim.effort_limit], lim.effort_limit),
                     "position": (lim.position_lower, lim.position_upper),
                     "velocity": ([-v for v in lim.velocity_limit], lim.velocity_limit)}[lim.interface]
        bounded = all(math.isfinite(v) for v in (*low, *high))
        action = _field_spec("action", "continuous", (len(self.joints),), "float32", tuple(low) if bounded else None,
                             tuple(high) if bounded else None, names=tuple(self.joints))
        return TimestepSpec(tuple(fields), action)

    def check_spec(self, spec: Any) -> None:
        """Check a policy's ``TimestepSpec`` against this robot before it acts: observation keys, shapes, image sizes
        and element names (:meth:`ObservationRecipe.check_spec`); one continuous action value per joint, with the
        joints' names in controller order where the spec's action carries names.

        Raises:
            ValueError: the first mismatch, naming the key, what the policy expects and what the robot gives.
        """
        self.observation.check_spec(spec)
        a = spec.action
        if a.kind != "continuous" or tuple(a.shape) != (len(self.joints),):
            raise ValueError(f"action: the policy's action is {a.kind} {tuple(a.shape)}, the robot takes one continuous "
                             f"{self.limits.interface} command per joint: ({len(self.joints)},) for {list(self.joints)}")
        check_names("action", getattr(a, "names", None), self.joints, f"{' + '.join(g.topic for g in self.commands)} joints")


# ---------------------------------------------------------------------------
# Robot files
# ---------------------------------------------------------------------------


class RobotFileError(ValueError):
    """A robot file that cannot be used; the message names the file and the key."""


#: The command message types a robot file may name.
COMMAND_TYPES = (FORWARD_COMMAND, JointTrajectory.ROS_TYPE)
#: The sim-robot class of an arm whose file names an MJCF model and no ``sim``.
MJCF_SIM = "omnipolicy.robot_bridge.mjcf_arm:MjcfArm"
#: Limits keys (in the file) -> SafetyLimits fields.
LIMIT_KEYS = {"position_lower": "position_lower", "position_upper": "position_upper", "velocity": "velocity_limit",
              "effort": "effort_limit", "max_delta": "max_delta"}
_TOP = ("name", "description", "task", "sim", "mjcf", "rate_hz", "joints", "command", "limits", "joint_states",
        "task_state", "cameras", "instruction", "episode", "observation")
_QOS_KEYS = ("reliability", "durability", "history", "depth")


class _Reader:
    """Typed access to one robot file's tables; every error names the file and the dotted key."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def error(self, key: str, message: str) -> RobotFileError:
        return RobotFileError(f"robot file {str(self.path)!r}: {key}: {message}")

    def table(self, value: Any, key: str, allowed: Sequence[str], required: Sequence[str] = ()) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.error(key or "(top level)", f"expected a table, got {type(value).__name__} {value!r}")
        for k in value:
            if k not in allowed:
                close = difflib.get_close_matches(k, allowed, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise self.error(_join(key, k), f"unknown key{hint} Expected one of {list(allowed)}")
        for k in required:
            if k not in value:
                raise self.error(_join(key, k), f"missing; required keys here: {list(required)}")
        return value

    def string(self, value: Any, key: str) -> str:
        if not isinstance(value, str) or not value:
            raise self.error(key, f"expected a non-empty string, got {value!r}")
        return value

    def strings(self, value: Any, key: str) -> tuple[str, ...]:
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise self.error(key, f"expected a list of non-empty strings, got {value!r}")
        if len(set(value)) != len(value):
            raise self.error(key, f"expected unique names, got {value!r}")
        return tuple(value)

    def positive(self, value: Any, key: str, integer: bool = False) -> Any:
        kinds = (int,) if integer else (int, float)
        if isinstance(value, bool) or not isinstance(value, kinds) or not (math.isfinite(value) and value > 0):
            raise self.error(key, f"expected a positive {'integer' if integer else 'number'}, got {value!r}")
        return value

    def topic(self, value: Any, key: str) -> str:
        try:
            return ros_topic_name(self.string(value, key))
        except ValueError as e:
            raise self.error(key, str(e)) from None

    def per_joint(self, value: Any, key: str, joints: Sequence[str]) -> tuple[float, ...]:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = [value] * len(joints)
        if not isinstance(value, list) or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
            raise self.error(key, f"expected a number or a list of numbers (one per joint), got {value!r}")
        if len(value) != len(joints):
            raise self.error(key, f"expected {len(joints)} values, one per joint {list(joints)}, got {len(value)}: {value}")
        return tuple(float(v) for v in value)

    def qos(self, value: Any, key: str) -> QosProfile:
        if isinstance(value, str):
            if value not in QOS_PRESETS:
                raise self.error(key, f"unknown QoS preset {value!r}; expected one of {sorted(QOS_PRESETS)} or a table "
                                      f"of {list(_QOS_KEYS)}")
            return QOS_PRESETS[value]
        tbl = self.table(value, key, _QOS_KEYS)
        try:
            return QosProfile(**tbl)
        except (TypeError, ValueError) as e:
            raise self.error(key, str(e)) from None


def _join(key: str, sub: str) -> str:
    return f"{key}.{sub}" if key else sub


def load_robot_file(path: str | Path) -> ArmSpec:
    """Read and validate a robot file (TOML; schema: docs/ros2.md, "Robot files").

    Args:
        path: the file.

    Returns:
        Its :class:`ArmSpec` (``source`` set to the file).

    Raises:
        FileNotFoundError: no such file.
        RobotFileError: invalid TOML, an unknown key (with the closest valid one), a missing key or limit, a limit list
            whose length differs from the joints, an unknown interface or message type, a topic read as two message
            types, a bad rate or camera size, an observation name that is no joint, a missing MJCF model, ...
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"robot file {str(path)!r} does not exist")
    r = _Reader(path)
    try:
        data = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise r.error("(syntax)", f"not valid TOML: {e}") from None
    top = r.table(data, "", _TOP, required=("name", "rate_hz", "joints", "command", "limits", "joint_states",
                                            "observation"))
    name = r.string(top["name"], "name")
    joints = r.strings(top["joints"], "joints")
    if not joints:
        raise r.error("joints", "expected at least one joint (in the controller's order)")
    rate = r.positive(top["rate_hz"], "rate_hz")
    types: dict[str, tuple[type[RosMessage], str]] = {}  # topic -> (message type, the key that named it)
    qos: dict[str, QosProfile] = {}

    def declare(topic: str, cls: type[RosMessage], key: str, section: dict[str, Any] | None = None,
                section_key: str = "") -> str:
        seen = types.setdefault(topic, (cls, key))
        if seen[0] is not cls:
            raise r.error(key, f"topic {topic} carries {cls.ROS_TYPE} here, but {seen[1]} makes it a {seen[0].ROS_TYPE} "
                               f"topic; a topic has one message type")
        if section is not None and "qos" in section:
            qos[topic] = r.qos(section["qos"], _join(section_key, "qos"))
        return topic

    # command interface: one [command] table, or [[command]] groups (one per controller)
    def command_class(cmd: dict[str, Any], key: str, interface: str) -> type[RosMessage]:
        type_name = r.string(cmd.get("type", FORWARD_COMMAND), f"{key}.type")
        try:
            cls = message_type(type_name)
        except ValueError:
            cls = None
        if cls is None or cls.ROS_TYPE not in COMMAND_TYPES:
            raise r.error(f"{key}.type", f"unknown command message type {type_name!r}; expected one of "
                                         f"{list(COMMAND_TYPES)}")
        if cls is JointTrajectory and interface != "position":
            raise r.error(f"{key}.type", f"a JointTrajectory carries positions; the interface is {interface!r} "
                                         f"(use std_msgs/msg/Float64MultiArray)")
        return cls

    def command_interface(cmd: dict[str, Any], key: str) -> str:
        if cmd["interface"] not in INTERFACES:
            raise r.error(f"{key}.interface", f"unknown interface {cmd['interface']!r}; expected one of "
                                              f"{list(INTERFACES)}")
        return cmd["interface"]

    groups: list[CommandGroup] = []
    trajectory_topic = ""
    if isinstance(top["command"], list):
        interface = ""
        owner: dict[str, str] = {}  # joint -> the group key that commands it
        if not top["command"]:
            raise r.error("command", "expected at least one [[command]] table")
        for i, cmd in enumerate(top["command"]):
            key = f"command[{i}]"
            cmd = r.table(cmd, key, ("interface", "joints", "topic", "type", "qos"),
                          required=("interface", "joints", "topic"))
            mine = command_interface(cmd, key)
            if interface and mine != interface:
                raise r.error(f"{key}.interface", f"expected {interface!r}, the interface of command[0] (the groups "
                                                  f"share one command interface), got {mine!r}")
            interface = mine
            group_joints = r.strings(cmd["joints"], f"{key}.joints")
            if not group_joints:
                raise r.error(f"{key}.joints", "expected at least one joint of the group's controller, got []")
            unknown = [j for j in group_joints if j not in joints]
            if unknown:
                raise r.error(f"{key}.joints", f"unknown joints {unknown}; expected names from `joints` {list(joints)}")
            for j in group_joints:
                if j in owner:
                    raise r.error(f"{key}.joints", f"joint {j!r} is also commanded by {owner[j]}; expected every joint "
                                                   f"in exactly one command group")
                owner[j] = key
            cls = command_class(cmd, key, interface)
            topic = r.topic(cmd["topic"], f"{key}.topic")
            for k, g in enumerate(groups):
                if g.topic == topic:
                    raise r.error(f"{key}.topic", f"topic {topic} is also the topic of command[{k}]; expected one topic "
                                                  f"per command group (controller)")
            declare(topic, cls, f"{key}.topic", cmd, key)
            groups.append(CommandGroup(group_joints, topic, cls.ROS_TYPE))
        missing = [j for j in joints if j not in owner]
        if missing:
            raise r.error("command", f"joints {missing} are in no command group (the groups command {list(owner)}); "
                                     f"expected the groups' `joints` together to cover `joints` {list(joints)} exactly "
                                     f"once")
        command_topic, cmd_cls = groups[0].topic, message_type(groups[0].type)
    else:
        cmd = r.table(top["command"], "command", ("interface", "topic", "type", "trajectory_topic", "qos"),
                      required=("interface", "topic"))
        interface = command_interface(cmd, "command")
        cmd_cls = command_class(cmd, "command", interface)
        command_topic = declare(r.topic(cmd["topic"], "command.topic"), cmd_cls, "command.topic", cmd, "command")
        if "trajectory_topic" in cmd:
            trajectory_topic = declare(r.topic(cmd["trajectory_topic"], "command.trajectory_topic"), JointTrajectory,
                                       "command.trajectory_topic")

    # limits
    lim = r.table(top["limits"], "limits", (*LIMIT_KEYS, "position_margin"))
    needed = ["position_lower", "position_upper", "velocity", "max_delta"] + (["effort"] if interface == "effort" else [])
    for k in needed:
        if k not in lim:
            raise r.error(f"limits.{k}", f"missing limit; a {interface} interface needs {needed} (one value per joint; "
                                         f"inf / -inf for none)")
    values: dict[str, Any] = {LIMIT_KEYS[k]: r.per_joint(v, f"limits.{k}", joints) for k, v in lim.items()
                              if k in LIMIT_KEYS}
    margin = lim.get("position_margin", 0.0)
    if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not margin >= 0:
        raise r.error("limits.position_margin", f"expected a number >= 0, got {margin!r}")
    try:
        limits = SafetyLimits(joints, interface, position_margin=float(margin), **values)
    except ValueError as e:
        raise r.error("limits", str(e)) from None

    # state topics
    js = r.table(top["joint_states"], "joint_states", ("topic", "qos"), required=("topic",))
    joint_states = declare(r.topic(js["topic"], "joint_states.topic"), JointState, "joint_states.topic", js, "joint_states")
    task_state, task_names = ArmSpec.task_state_topic, ()
    if "task_state" in top:
        ts = r.table(top["task_state"], "task_state", ("topic", "names", "qos"), required=("topic", "names"))
        task_state = declare(r.topic(ts["topic"], "task_state.topic"), JointState, "task_state.topic", ts, "task_state")
        task_names = r.strings(ts["names"], "task_state.names")
    cameras = []
    cams = top.get("cameras", [])
    if not isinstance(cams, list):
        raise r.error("cameras", f"expected an array of tables ([[cameras]]), got {cams!r}")
    for i, cam in enumerate(cams):
        key = f"cameras[{i}]"
        c = r.table(cam, key, ("key", "topic", "height", "width", "channels", "name", "qos"),
                    required=("key", "topic", "height", "width"))
        topic = declare(r.topic(c["topic"], f"{key}.topic"), Image, f"{key}.topic", c, key)
        channels = c.get("channels", 3)
        if channels not in (1, 3) or isinstance(channels, bool):
            raise r.error(f"{key}.channels", f"expected 1 (mono) or 3 (RGB), got {channels!r}")
        cameras.append(CameraSpec(r.string(c["key"], f"{key}.key"), topic, r.positive(c["height"], f"{key}.height", True),
                                  r.positive(c["width"], f"{key}.width", True), channels,
                                  r.string(c["name"], f"{key}.name") if "name" in c else ""))
    instruction = None
    if "instruction" in top:
        ins = r.table(top["instruction"], "instruction", ("topic", "qos"), required=("topic",))
        instruction = r.topic(ins["topic"], "instruction.topic")
        if instruction in types:
            raise r.error("instruction.topic", f"topic {instruction} carries std_msgs/msg/String here, but "
                                               f"{types[instruction][1]} makes it a {types[instruction][0].ROS_TYPE} topic")
        if "qos" in ins:
            qos[instruction] = r.qos(ins["qos"], "instruction.qos")
    ep = r.table(top.get("episode", {}), "episode", ("start_topic", "success_topic"))
    episode_topic = declare(r.topic(ep.get("start_topic", ArmSpec.episode_topic), "episode.start_topic"), Bool,
                            "episode.start_topic")
    success_topic = declare(r.topic(ep.get("success_topic", ArmSpec.success_topic), "episode.success_topic"), Bool,
                            "episode.success_topic")

    # observation recipe: named vectors in file order, then the cameras
    obs = r.table(top["observation"], "observation", list(top["observation"]) if isinstance(top["observation"], dict) else ())
    sources: list[Source] = []
    for k, src in obs.items():
        key = f"observation.{k}"
        s = r.table(src, key, ("topic", "field", "names", "ignored"), required=("topic", "field", "names"))
        topic = declare(r.topic(s["topic"], f"{key}.topic"), JointState, f"{key}.topic")
        if s["field"] not in ("position", "velocity", "effort"):
            raise r.error(f"{key}.field", f"expected position, velocity or effort (a JointState field), got {s['field']!r}")
        names = r.strings(s["names"], f"{key}.names")
        ignored = r.strings(s.get("ignored", []), f"{key}.ignored")
        known = joints if topic == joint_states else task_names if topic == task_state else None
        unknown = [n for n in names if known is not None and n not in known]
        if unknown:
            what = "joints" if topic == joint_states else "task_state.names"
            raise r.error(f"{key}.names", f"unknown names {unknown} on {topic}; expected names from {what} {list(known)}")
        if k in {c.key for c in cameras}:
            raise r.error(key, f"observation key {k!r} is also filled by a camera")
        sources.append(NamedSource(k, topic, s["field"], names, ignored))
    sources += [ImageSource(c.key, c.topic, c.shape) for c in cameras]
    if not sources:
        raise r.error("observation", "expected at least one observation key ([observation.KEY] tables or [[cameras]])")
    try:
        recipe = ObservationRecipe(tuple(sources))
    except ValueError as e:
        raise r.error("cameras", str(e)) from None

    mjcf = None
    if "mjcf" in top:
        model = path.parent / r.string(top["mjcf"], "mjcf")
        if not model.is_file():
            raise r.error("mjcf", f"expected an MJCF model file (relative to the robot file), {str(model)!r} does not exist")
        mjcf = str(model.resolve())
    sim = r.string(top["sim"], "sim") if "sim" in top else (MJCF_SIM if mjcf else "")
    if sim and (sim.count(":") != 1 or not all(sim.split(":"))):
        raise r.error("sim", f"expected 'package.module:Class', got {sim!r}")
    tasks: tuple[str, ...] = ()
    if "task" in top:  # one task id, or a list: the same arm for every task of the list (the first is `task_id`)
        tasks = (r.string(top["task"], "task"),) if not isinstance(top["task"], list) else r.strings(top["task"], "task")
        if not tasks:
            raise r.error("task", "expected a task id or a non-empty list of task ids, got []")
    return ArmSpec(
        task_id=tasks[0] if tasks else "",
        tasks=tasks if isinstance(top.get("task"), list) else (),
        limits=limits,
        observation=recipe,
        task_state_names=task_names,
        control_period=1.0 / rate,
        sim=sim,
        joint_states_topic=joint_states,
        task_state_topic=task_state,
        command_topic=command_topic,
        command_type=cmd_cls.ROS_TYPE,
        trajectory_topic=trajectory_topic,
        command_groups=tuple(groups),
        cameras=tuple(cameras),
        instruction_topic=instruction,
        episode_topic=episode_topic,
        success_topic=success_topic,
        qos=tuple(qos.items()),
        name=name,
        mjcf=mjcf,
        description=str(top.get("description", "")),
        source=str(path),
    )
