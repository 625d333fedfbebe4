"""The SO-101 tabletop scenes (``so101/*`` tasks) as a ROS 2 robot: ``omnipolicy sim-robot --task so101/lift-v1``.

:class:`So101Arm` is the :class:`~omnipolicy.robot_bridge.arms.SimArm` of the robot files
``robot_bridge/robots/so101_{lift,place,push}.toml``: the env of :mod:`omnipolicy.envs.so101` stepped one control
period (20 Hz) per command, its six joints' state, its ``front`` and ``wrist`` cameras, and success as the env
judges it: sim-robot's ``success`` is the env's own (the named object lifted / resting in the tray / in the zone at
some step; sticky, as plain evaluation, which ends an episode there, counts it), and each episode's report lists the
objects that were at any step (``achieved``; another one than the named: ``wrong_object``).

**Instructions.** Each episode's instruction is the scene's (published by sim-robot at the episode's start). A new
instruction on the instruction topic that names another object of the scene switches the scene's target to it
(``So101Env.set_target``): success is judged for that object from then on. The text is read with the env's own
words (:data:`~omnipolicy.envs.so101.COLOUR_WORDS`, :data:`~omnipolicy.envs.so101.SHAPE_WORDS`): a colour word
names the one object of that colour (a shape word, if any, must agree); a shape word alone names an object only
when one object has that shape. Text naming no object, or several, is refused with one log line and the target
stays (:func:`object_named`).

**Task state** (simulation only; a real arm has no such topic): the objects' poses, the tray's or zone's centre and
the named object's index, as a ``JointState`` of named values (names: :func:`task_state_names`). Only ``deploy
--actor expert`` reads it, to sync its simulator copy (:meth:`So101Arm.sync_to`); it is never part of the policy's
observation, which is the cameras, the joints and the instruction.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from omnipolicy.envs.so101 import COLOUR_WORDS, LIFT_HEIGHT, PHYSICS_STEPS, SHAPE_WORDS
from omnipolicy.robot_bridge.arms import SimArm
from omnipolicy.robot_bridge.robot_file import ArmSpec, NamedSource

#: The pose of each object in the task state: position (m) and orientation quaternion (w, x, y, z), world frame.
POSE_FIELDS = ("x", "y", "z", "qw", "qx", "qy", "qz")
#: The tray's (place) or zone's (push) centre in the task state (m, world frame).
TARGET_NAMES = ("target_x", "target_y", "target_z")
#: The index of the named object (0..3, the scene's object order) in the task state.
NAMED_OBJECT = "named_object"


def task_state_names(objects: Sequence[str], target: bool) -> tuple[str, ...]:
    """The task state's names: ``<object>_<field>`` for every object and :data:`POSE_FIELDS`, the target's centre
    (place, push) and :data:`NAMED_OBJECT`."""
    names = [f"{o}_{f}" for o in objects for f in POSE_FIELDS]
    return (*names, *(TARGET_NAMES if target else ()), NAMED_OBJECT)


def _words(text: str) -> str:
    """Lower-case words of ``text`` separated by single spaces, with a space at both ends (for phrase search)."""
    return " " + " ".join(re.findall(r"[a-z]+", text.lower())) + " "


def object_named(text: str, colours: Sequence[str], shapes: Sequence[str]) -> int:
    """The object an instruction names, by the env's colour and shape words.

    Args:
        text: the instruction.
        colours: each object's colour (``red``, ...), in the scene's object order.
        shapes: each object's shape (``cube``, ``cylinder``).

    Returns:
        The object's index.

    Raises:
        ValueError: the text names no object, several, or a colour and a shape that no object has together.

    >>> object_named("Grab the crimson block and lift it.", ["blue", "red", "green", "purple"],
    ...              ["cube", "cube", "cylinder", "cylinder"])
    1
    """
    words = _words(text)
    named_colours = [c for c, syn in COLOUR_WORDS.items() if any(f" {w} " in words for w in syn)]
    named_shapes = []
    for phrase, shape in sorted(((w, s) for s, syn in SHAPE_WORDS.items() for w in syn), key=lambda p: -len(p[0])):
        if f" {phrase} " in words:  # longest first: "round block" is a cylinder before "block" is a cube
            words = words.replace(f" {phrase} ", " ")
            named_shapes.append(shape)
    named_shapes = sorted(set(named_shapes))
    scene = ", ".join(f"{c} {s}" for c, s in zip(colours, shapes))
    several = named_colours if len(named_colours) > 1 else named_shapes if len(named_shapes) > 1 else []
    if several:
        raise ValueError(f"it names several objects ({', '.join(several)}); expected one of the scene's objects: {scene}")
    if named_colours:
        if named_colours[0] not in colours:
            raise ValueError(f"it names a {named_colours[0]} object, and the scene has none (its objects: {scene})")
        index = list(colours).index(named_colours[0])
        if named_shapes and named_shapes[0] != shapes[index]:
            raise ValueError(f"it names a {named_colours[0]} {named_shapes[0]}, but the {named_colours[0]} object is a "
                             f"{shapes[index]} (the scene's objects: {scene})")
        return index
    if named_shapes:
        matches = [i for i, s in enumerate(shapes) if s == named_shapes[0]]
        if len(matches) == 1:
            return matches[0]
        raise ValueError(f"it names a {named_shapes[0]} without saying which ({len(matches)} in the scene: "
                         f"{', '.join(f'{colours[i]} {shapes[i]}' for i in matches)}); expected a colour word")
    raise ValueError(f"it names no object of the scene (its objects: {scene}); expected a colour word "
                     f"({', '.join(w for syn in COLOUR_WORDS.values() for w in syn)}) or a shape word")


class So101Arm(SimArm):
    """An SO-101 tabletop scene as a robot (see the module docstring).

    Args:
        spec: the arm's spec (a ``so101/*`` task; joints in the env's controller order).
        render: unused (the env renders its cameras at every step).

    Raises:
        ValueError: a control period other than the env's, joints other than the env's, or task-state names the
            scene does not have.
    """

    def __init__(self, spec: ArmSpec, render: bool = False) -> None:
        super().__init__(spec, render)
        env, where = self.env, f"{spec.source or spec.name} ({spec.task_id})"
        m = env.model
        period = PHYSICS_STEPS * m.opt.timestep
        if abs(period - spec.control_period) > 1e-9:
            raise ValueError(f"{where}: rate_hz {spec.rate_hz:g} differs from the scene's control rate {1 / period:g} Hz")
        if tuple(spec.joints) != tuple(env.joint_names):
            raise ValueError(f"{where}: joints {list(spec.joints)} differ from the SO-101's {list(env.joint_names)} "
                             f"(controller order)")
        self._qpos = np.array([m.joint(j).qposadr[0] for j in spec.joints])
        self._dof = np.array([m.joint(j).dofadr[0] for j in spec.joints])
        self._act = np.array([m.actuator(j).id for j in spec.joints])
        self._object_qpos = [int(m.joint(o).qposadr[0]) for o in env.objects]  # each object's free joint
        self._object_dof = [int(m.joint(o).dofadr[0]) for o in env.objects]
        self.state_names = task_state_names(env.objects, env.target_pos() is not None)  # a tray or zone: place, push
        unknown = [n for n in spec.task_state_names if n not in self.state_names]
        if unknown:
            raise ValueError(f"{where}: task_state names {unknown} are not in this scene's task state; expected names "
                             f"from {list(self.state_names)}")
        self.info: dict[str, Any] = {}
        self.achieved: set[int] = set()  # objects lifted / put / pushed at some step of the episode
        self._phrasings = np.random.default_rng(0)  # phrasings drawn when an instruction switches the target

    # -- the scene, stepped ------------------------------------------------------------------------
    def reset(self, seed: int) -> None:
        self.obs, self.info = self.env.reset(seed=int(seed))
        self.achieved = set()

    def step(self, command: np.ndarray) -> None:
        """Six joint-position targets (controller order) for one control period (25 physics steps)."""
        self.obs, _, _, _, self.info = self.env.step(np.asarray(command, dtype=np.float32))
        self.achieved.update(i for i in range(len(self.env.objects)) if self.env.achieved(i))

    def joint_state(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        d = self.env.data
        return (d.qpos[self._qpos].astype(np.float64), d.qvel[self._dof].astype(np.float64),
                d.actuator_force[self._act].astype(np.float64))  # effort: the force the position servos apply

    def _state(self) -> dict[str, float]:
        """Every task-state value by name."""
        env = self.env
        values = {f"{o}_{f}": float(v) for o, adr in zip(env.objects, self._object_qpos)
                  for f, v in zip(POSE_FIELDS, env.data.qpos[adr:adr + 7])}
        target = env.target_pos()
        if target is not None:
            values.update(zip(TARGET_NAMES, map(float, target)))
        values[NAMED_OBJECT] = float(env.target_index)
        return values

    def task_state(self) -> np.ndarray:
        values = self._state()
        return np.array([values[n] for n in self.spec.task_state_names], dtype=np.float64)

    def inside(self) -> bool:
        """The env's success: the named object lifted / resting in the tray / in the zone at some step since the
        episode (or the instruction naming it) began. Sticky, as in plain evaluation, which ends an episode there:
        the expert does not hold a lifted object up for the rest of a fixed-length episode."""
        return bool(self.info.get("success")) or bool(self.env.achieved(self.env.target_index))

    def distance(self) -> float:
        """How far the named object is from done (m): lift, the height it lacks; place and push, its horizontal
        distance to the target's centre."""
        env, i = self.env, self.env.target_index
        target = env.target_pos()
        if target is None:
            bottom = env.object_pos(i)[2] - env.half_height(i)
            return float(max(0.0, LIFT_HEIGHT - bottom))
        return float(np.linalg.norm(env.object_pos(i)[:2] - target[:2]))

    def camera(self, height: int, width: int, name: str = "") -> np.ndarray:
        name = name or "front"
        image = self.obs.get(name)
        if image is not None and image.shape[:2] == (height, width):
            return image  # the env rendered exactly this camera in its step: no second render
        return self.env.render_camera(name, height, width)

    def episode_info(self) -> dict[str, Any]:
        env = self.env
        return {"target_object": env.target_object, "wrong_object": bool(self.info.get("wrong_object", False)),
                "achieved": [env.describe(i) for i in sorted(self.achieved)]}

    # -- instructions ------------------------------------------------------------------------------
    def instruction(self) -> str:
        return self.env.instruction

    def follow(self, text: str) -> str:
        """Switch the target to the object ``text`` names (:func:`object_named`; raises ValueError as it does)."""
        env = self.env
        index = object_named(text, env.colours, [env.shape(i) for i in range(len(env.objects))])
        if index == env.target_index:
            return f"the target stays the {env.target_object}"
        before = env.target_object
        env.set_target(index, rng=self._phrasings)
        self.info = {**self.info, "success": False}  # success is judged for the new object from now on
        return f"the target is now the {env.target_object} (was the {before})"

    # -- the expert twin (deploy --actor expert) ---------------------------------------------------
    def twin_sources(self) -> tuple[NamedSource, ...]:
        """The joint states' positions and velocities, and the whole task state.

        Raises:
            ValueError: the robot file's task state lacks a value the twin needs.
        """
        s = self.spec
        missing = [n for n in self.state_names if n not in s.task_state_names]
        if missing:
            raise ValueError(f"{s.source or s.name}: the expert twin syncs its scene from the task state, which lacks "
                             f"{missing} (task_state.names must list {list(self.state_names)})")
        return (NamedSource("joint_position", s.joint_states_topic, "position", s.joints),
                NamedSource("joint_velocity", s.joint_states_topic, "velocity", s.joints),
                NamedSource("task_state", s.task_state_topic, "position", s.task_state_names))

    def sync_to(self, obs: Mapping[str, np.ndarray]) -> None:
        """The arm's joints from ``joint_position`` / ``joint_velocity``, the objects (at rest), the target and the
        named object from ``task_state``."""
        import mujoco  # noqa: PLC0415  (the env has imported it)

        env = self.env
        d = env.data
        d.qpos[self._qpos] = np.asarray(obs["joint_position"], dtype=np.float64)
        d.qvel[self._dof] = np.asarray(obs["joint_velocity"], dtype=np.float64)
        values = dict(zip(self.spec.task_state_names, np.asarray(obs["task_state"], dtype=np.float64)))
        for o, adr, dof in zip(env.objects, self._object_qpos, self._object_dof):
            d.qpos[adr:adr + 7] = [values[f"{o}_{f}"] for f in POSE_FIELDS]
            d.qvel[dof:dof + 6] = 0.0
        if TARGET_NAMES[0] in values:
            d.mocap_pos[0] = [values[n] for n in TARGET_NAMES]
        env.target_index = int(round(values[NAMED_OBJECT]))
        mujoco.mj_forward(env.model, d)

    def close(self) -> None:
        self.env.close()  # its renderers
