"""Arms of the task suite as ROS 2 robots: joints, limits, topics, the observation recipe, success.

An :class:`ArmSpec` says everything both ends of the wire agree on for one
task: the joints in the controller's order, the command interface and its
limits, which topics carry what, and the **observation recipe**: for every
key of the task's observation (its ``TimestepSpec``), the topic, message
field and names its values come from, in order. ``omnipolicy sim-robot``
publishes by it; ``omnipolicy deploy`` rebuilds the exact observation vector
from the messages with it and checks the result against the checkpoint's
spec before acting.

``dmc/reacher-easy`` (dm_control's two-link planar reacher, effort-driven):

==============  =============================  ==========================================
observation     topic, field                   names (element order)
==============  =============================  ==========================================
``position``    ``/joint_states`` position     ``shoulder``, ``wrist`` (rad)
``velocity``    ``/joint_states`` velocity     ``shoulder``, ``wrist`` (rad/s)
``to_target``   ``/sim_robot/task_state``      ``to_target_x``, ``to_target_y`` (m; target
                position                       minus fingertip, world frame)
==============  =============================  ==========================================

Task state that is not a joint travels as a ``sensor_msgs/JointState`` of
named values on its own topic (stamped like the joint state of the same
instant): named, validated and mapped by the same :class:`JointMap` code as
the joints. Commands: ``Float64MultiArray`` efforts in ``[-1, 1]`` on
``/effort_controller/commands`` in the order ``shoulder, wrist``.

The simulated side of an arm is a :class:`SimArm` subclass registered with
:func:`register_arm` (lazy: the registry imports no simulator).
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from omnipolicy.envs import get_task, make_env
from omnipolicy.envs.registry import load_attr
from omnipolicy.robot_bridge.wire.messages import Image, JointMap, JointState, RosMessage, image_to_array, validate
from omnipolicy.robot_bridge.wire.safety import SafetyLimits

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
    """One image observation key filled from a ``sensor_msgs/Image`` topic (converted to RGB uint8)."""

    key: str
    topic: str

    def describe(self) -> str:
        return f"{self.key} <- {self.topic} (sensor_msgs/Image -> RGB uint8)"


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
        """Check the recipe against a ``TimestepSpec``: the same keys, and the shapes it can produce.

        Raises:
            ValueError: a key missing on either side, or a shape/kind that differs.
        """
        fields = {f.name: f for f in spec.observation}
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
            elif f.kind != "continuous" or tuple(f.shape) != src.shape:
                raise ValueError(
                    f"Observation recipe: {key!r} gives a continuous vector of shape {src.shape}, "
                    f"the spec's field is {f.kind} {tuple(f.shape)}"
                )

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
# Arm specs and the registry
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ArmSpec:
    """What a robot and a deploy node agree on for one task.

    Attributes:
        task_id: the registered task (its ``TimestepSpec`` is what the policy sees).
        limits: joints in controller order, command interface and limits.
        observation: the observation recipe.
        task_state_names: names of the non-joint values on ``task_state_topic``.
        control_period: the task's control step in seconds (the simulator's rate).
        sim: ``"module:Class"`` of the :class:`SimArm` (set by :func:`register_arm`).
        joint_states_topic, task_state_topic, camera_topic: where the robot publishes.
        controller: forward command controller name (commands on ``/<controller>/commands``).
        trajectory_controller: joint trajectory controller name (``/<name>/joint_trajectory``).
        camera: (height, width) of the camera image the observation needs at every control step, or None.
        episode_topic: Bool True at the start of each episode (a deploy node resets the policy's context).
        success_topic: Bool at the end of each episode: target reached and held.
        description: one line for ``--help`` and logs.
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
    controller: str = "effort_controller"
    trajectory_controller: str = "joint_trajectory_controller"
    camera: tuple[int, int] | None = None
    episode_topic: str = "/sim_robot/episode_start"
    success_topic: str = "/sim_robot/success"
    description: str = ""

    @property
    def joints(self) -> tuple[str, ...]:
        return self.limits.joints

    @property
    def command_topic(self) -> str:
        return f"/{self.controller}/commands"

    @property
    def trajectory_topic(self) -> str:
        return f"/{self.trajectory_controller}/joint_trajectory"

    @property
    def rate_hz(self) -> float:
        return 1.0 / self.control_period


ARMS: dict[str, ArmSpec] = {}


def register_arm(spec: ArmSpec) -> Callable[[type], type]:
    """Class decorator: register ``spec`` with the decorated :class:`SimArm` as its simulator.

    Raises:
        ValueError: the task already has an arm.
    """

    def wrap(cls: type) -> type:
        if spec.task_id in ARMS:
            raise ValueError(f"An arm is already registered for task {spec.task_id!r}")
        ARMS[spec.task_id] = ArmSpec(**{**spec.__dict__, "sim": f"{cls.__module__}:{cls.__qualname__}"})
        return cls

    return wrap


def get_arm(task_id: str) -> ArmSpec:
    """The :class:`ArmSpec` of a task.

    Raises:
        KeyError: no arm for this task (the message lists the tasks that have one).
    """
    try:
        return ARMS[task_id]
    except KeyError:
        close = difflib.get_close_matches(str(task_id), ARMS, n=3)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise KeyError(f"No robot arm for task {task_id!r}.{hint} Tasks with an arm: {sorted(ARMS)}") from None


def make_sim_arm(task_id: str, render: bool = False) -> "SimArm":
    """Build the simulated arm of a task (imports its simulator)."""
    spec = get_arm(task_id)
    return load_attr(spec.sim)(spec, render=render)


# ---------------------------------------------------------------------------
# Simulated arms
# ---------------------------------------------------------------------------


class SimArm:
    """A task's environment seen as a robot: joint state, task state, effort in, success out.

    Args:
        spec: the arm's spec.
        render: build the env so that ``camera()`` can render.
    """

    #: observation keys :meth:`sync_to` needs (the expert twin of ``deploy --actor expert``)
    twin_keys: tuple[str, ...] = ()

    def __init__(self, spec: ArmSpec, render: bool = False) -> None:
        self.spec = spec
        self.task = get_task(spec.task_id)
        self.env = make_env(spec.task_id)
        self.obs: dict[str, Any] = {}

    def reset(self, seed: int) -> None:
        """Start an episode exactly as ``env.reset(seed=seed)`` does in plain simulation."""
        self.obs, _ = self.env.reset(seed=int(seed))

    def step(self, effort: np.ndarray) -> None:
        """Advance one control period with this effort (controller joint order)."""
        self.obs = self.env.step(np.asarray(effort, dtype=np.float32))[0]

    # state, as the robot publishes it
    def joint_state(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """position, velocity, effort (each float64 (J,), controller joint order)."""
        raise NotImplementedError

    def task_state(self) -> np.ndarray:
        """float64 (len(spec.task_state_names),) the non-joint values."""
        raise NotImplementedError

    def distance(self) -> float:
        """Distance between the end effector and the target (m)."""
        raise NotImplementedError

    def inside(self) -> bool:
        """Whether the target counts as reached right now."""
        raise NotImplementedError

    def camera(self, height: int, width: int) -> np.ndarray:
        """uint8 (H, W, 3) RGB from the task's camera."""
        raise NotImplementedError

    # deploy side: the task's scripted expert, on a copy of the simulator synced to the observation
    def sync_to(self, obs: Mapping[str, np.ndarray]) -> None:
        """Set this simulator's state so that it produces ``obs`` (for the expert twin)."""
        raise NotImplementedError


REACHER_JOINTS = ("shoulder", "wrist")
REACHER_TASK_STATE = ("to_target_x", "to_target_y")


#: Default rate limits are an arm's expert's largest command change per control step times this margin.
RATE_LIMIT_MARGIN = 1.25

#: The reacher expert's largest effort change between two control steps (shoulder, wrist), measured in plain
#: simulation over whole episodes (1000 steps) of seeds 0-299 (the first command, from rest, is no change):
#:   python -c "from omnipolicy.robot_bridge.sim_robot import largest_command_change as f; print(f('dmc/reacher-easy', range(300)))"
#: -> [0.587 1.464] (about 80 s). The wrist's comes from an episode's second step, where the light link's PD reverses
#: the saturated first command; the pixels task has the same arm and expert (the same figures on seeds 0-19).
REACHER_EXPERT_MAX_CHANGE = (0.587, 1.464)

REACHER_LIMITS = SafetyLimits(
    REACHER_JOINTS,
    "effort",
    position_lower=(-math.inf, math.radians(-160)),  # reacher.xml: shoulder unlimited, wrist -160..160 deg
    position_upper=(math.inf, math.radians(160)),
    velocity_limit=(40.0, 60.0),  # rad/s; about 2x the expert's peak speeds
    effort_limit=(1.0, 1.0),  # the motors' ctrlrange
    max_delta=tuple(round(RATE_LIMIT_MARGIN * d, 6) for d in REACHER_EXPERT_MAX_CHANGE),  # (0.73375, 1.83) per step
    position_margin=math.radians(5),
)


@register_arm(
    ArmSpec(
        task_id="dmc/reacher-easy-pixels",
        limits=REACHER_LIMITS,
        observation=ObservationRecipe((ImageSource("image", "/sim_robot/camera/image_raw"),)),
        control_period=0.02,
        camera=(84, 84),
        description="the same reacher observed only through its 84x84 camera (camera 0, every control step)",
    )
)
@register_arm(
    ArmSpec(
        task_id="dmc/reacher-easy",
        limits=REACHER_LIMITS,
        observation=ObservationRecipe(
            (
                NamedSource("position", "/joint_states", "position", REACHER_JOINTS),
                NamedSource("velocity", "/joint_states", "velocity", REACHER_JOINTS),
                NamedSource("to_target", "/sim_robot/task_state", "position", REACHER_TASK_STATE),
            )
        ),
        task_state_names=REACHER_TASK_STATE,
        control_period=0.02,
        description="dm_control's two-link planar reacher (effort-driven); success: fingertip inside the target sphere",
    )
)
class DmcReacherArm(SimArm):
    """dm_control ``reacher/easy``: the fingertip must touch the 5 cm target (dm_control's reward radius)."""

    twin_keys = ("position", "velocity", "to_target")

    def __init__(self, spec: ArmSpec, render: bool = False) -> None:
        super().__init__(spec, render)
        self.physics = self.env.physics
        if abs(self.physics.timestep() * self.env.n_sub_steps - spec.control_period) > 1e-9:
            raise ValueError(f"{spec.task_id}: control period {spec.control_period} s differs from the simulator's")

    def joint_state(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        d = self.physics.named.data
        joints = list(self.spec.joints)
        return (
            np.array(d.qpos[joints], dtype=np.float64),
            np.array(d.qvel[joints], dtype=np.float64),
            np.array(d.ctrl[joints], dtype=np.float64),  # the applied motor command (actuators share the joints' names)
        )

    def task_state(self) -> np.ndarray:
        return np.array(self.physics.finger_to_target(), dtype=np.float64)  # (2,) target - fingertip, world xy

    def radius(self) -> float:
        """dm_control's reward radius: target radius + fingertip radius."""
        return float(self.physics.named.model.geom_size[["target", "finger"], 0].sum())

    def distance(self) -> float:
        return float(self.physics.finger_to_target_dist())

    def inside(self) -> bool:
        return self.distance() <= self.radius()

    def camera(self, height: int, width: int) -> np.ndarray:
        image = self.obs.get("image")
        if image is not None and image.shape[:2] == (height, width):
            return image  # the pixels task rendered exactly this (camera 0) in its step: no second render
        return np.asarray(self.physics.render(height, width, camera_id=0), dtype=np.uint8)

    def sync_to(self, obs: Mapping[str, np.ndarray]) -> None:
        """Joint angles and speeds from ``position``/``velocity``; the target placed at fingertip + ``to_target``."""
        p = self.physics
        joints = list(self.spec.joints)
        p.named.data.qpos[joints] = np.asarray(obs["position"], dtype=np.float64)
        p.named.data.qvel[joints] = np.asarray(obs["velocity"], dtype=np.float64)
        p.forward()
        target = p.named.data.geom_xpos["finger", :2] + np.asarray(obs["to_target"], dtype=np.float64)
        p.named.model.geom_pos["target", :2] = target  # the target geom hangs off the world body: model pos = world pos
        p.forward()
