"""The arms omnipolicy knows as ROS 2 robots: the registry of robot files, and their simulators.

An arm is described by a robot file (:mod:`omnipolicy.robot_bridge.robot_file`: joints, command interface, limits,
topics, cameras, the observation recipe). The shipped ones live in ``robot_bridge/robots/`` and are registered here
under their task id, so ``get_arm(task_id)`` finds them; a user's arm is used straight from its file
(``--robot FILE``).

``dmc/reacher-easy`` (dm_control's two-link planar reacher, effort-driven; ``robots/dmc_reacher_easy.toml``):

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

The simulated side of an arm is a :class:`SimArm` subclass named by the file's ``sim`` (``"module:Class"``, imported
only when an arm is simulated): :class:`DmcReacherArm` here, ``So101Arm`` (:mod:`omnipolicy.robot_bridge.so101_arm`)
for the SO-101 tabletop scenes (``robots/so101_{lift,place,push}.toml``; a file's ``task`` list registers it under
each of its task ids), ``MjcfArm`` (:mod:`omnipolicy.robot_bridge.mjcf_arm`) for any arm whose file names an MJCF
model.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from omnipolicy.envs import get_task, make_env
from omnipolicy.envs.registry import load_attr
from omnipolicy.robot_bridge.robot_file import ArmSpec, NamedSource, load_robot_file

# ---------------------------------------------------------------------------
# The registry: the shipped robot files, and arms registered in Python
# ---------------------------------------------------------------------------

#: The robot files shipped with omnipolicy (package data), one arm each.
ROBOTS_DIR = Path(__file__).resolve().parent / "robots"

ARMS: dict[str, ArmSpec] = {}


def _add(spec: ArmSpec) -> None:
    """Register an arm under each of its task ids (a file's ``task`` list), with that ``task_id``."""
    if not spec.task_id:
        raise ValueError(f"{spec.source or spec.name}: a registered arm needs a task id (the file's `task`)")
    for task_id in spec.task_ids:
        if task_id in ARMS:
            raise ValueError(f"An arm is already registered for task {task_id!r}")
        ARMS[task_id] = replace(spec, task_id=task_id)


def register_arm(spec: ArmSpec) -> Callable[[type], type]:
    """Class decorator: register ``spec`` (an arm described in Python) with the decorated :class:`SimArm` as its
    simulator.

    Raises:
        ValueError: the task already has an arm.
    """

    def wrap(cls: type) -> type:
        _add(ArmSpec(**{**spec.__dict__, "sim": f"{cls.__module__}:{cls.__qualname__}"}))
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


def arm_of(task_id: str | None, robot: str | Path | None) -> ArmSpec:
    """The arm a command runs on: the robot file's when one is given, else the task's registered arm.

    Raises:
        FileNotFoundError, ~omnipolicy.robot_bridge.robot_file.RobotFileError: a missing or invalid robot file.
        KeyError: no arm for the task.
    """
    return load_robot_file(robot) if robot is not None else get_arm(str(task_id))


def make_sim_arm(arm: str | ArmSpec, render: bool = False) -> "SimArm":
    """Build the simulated arm of a task or an arm spec (imports its simulator).

    Raises:
        KeyError: no arm for the task. ValueError: the arm names no simulator (no ``sim``, no ``mjcf``).
    """
    spec = get_arm(arm) if isinstance(arm, str) else arm
    if not spec.sim:
        raise ValueError(f"arm {spec.label!r} ({spec.source or 'registered in Python'}) names no simulator: give its "
                         f"robot file an `mjcf` model (or a `sim` class)")
    return load_attr(spec.sim)(spec, render=render)


for _path in sorted(ROBOTS_DIR.glob("*.toml")):  # the shipped arms
    _add(load_robot_file(_path))


# ---------------------------------------------------------------------------
# Simulated arms
# ---------------------------------------------------------------------------


class SimArm:
    """A task's environment seen as a robot: joint state, task state, commands in, success out.

    Args:
        spec: the arm's spec.
        render: build the env so that ``camera()`` can render.
    """

    #: observation keys :meth:`sync_to` needs (the expert twin of ``deploy --actor expert``)
    twin_keys: tuple[str, ...] = ()
    #: whether :meth:`inside` and :meth:`distance` judge a target (sim-robot then reports success per episode)
    has_success: bool = True

    def __init__(self, spec: ArmSpec, render: bool = False) -> None:
        self.spec = spec
        self.task = get_task(spec.task_id)
        self.env = make_env(spec.task_id)
        self.obs: dict[str, Any] = {}

    @property
    def max_steps(self) -> int | None:
        """The longest episode in control steps (None: no limit)."""
        return self.task.max_steps

    def reset(self, seed: int) -> None:
        """Start an episode exactly as ``env.reset(seed=seed)`` does in plain simulation."""
        self.obs, _ = self.env.reset(seed=int(seed))

    def step(self, effort: np.ndarray) -> None:
        """Advance one control period with this command (controller joint order; effort for the task arms)."""
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

    def camera(self, height: int, width: int, name: str = "") -> np.ndarray:
        """uint8 (H, W, 3) RGB from the camera ``name`` (empty: the task's camera)."""
        raise NotImplementedError

    def episode_info(self) -> dict[str, Any]:
        """What sim-robot adds to an episode's report at its end (JSON-able; e.g. the named object)."""
        return {}

    # instructions (an arm whose robot file has an [instruction] topic)
    def instruction(self) -> str | None:
        """The scene's instruction now (sim-robot publishes it at each episode start), or None: the arm takes none."""
        return None

    def follow(self, text: str) -> str:
        """Take a new instruction mid-episode (from the instruction topic).

        Returns:
            What changed, in words (for the log).

        Raises:
            ValueError: the text asks for nothing this scene can do (the message says why).
        """
        raise ValueError(f"{self.spec.label} takes no instructions")

    # deploy side: the task's scripted expert, on a copy of the simulator synced to the observation
    def twin_sources(self) -> tuple[NamedSource, ...]:
        """Values the expert twin reads besides the observation (the robot's topics; never the policy's
        observation): each source's ``key`` joins the observation :meth:`sync_to` gets."""
        return ()

    def sync_to(self, obs: Mapping[str, np.ndarray]) -> None:
        """Set this simulator's state so that it produces ``obs`` (for the expert twin)."""
        raise NotImplementedError


class DmcReacherArm(SimArm):
    """dm_control ``reacher/easy`` (state and pixels): the fingertip must touch the 5 cm target (dm_control's reward
    radius). Its robot files: ``robots/dmc_reacher_easy.toml``, ``robots/dmc_reacher_easy_pixels.toml``."""

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

    def camera(self, height: int, width: int, name: str = "") -> np.ndarray:
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

