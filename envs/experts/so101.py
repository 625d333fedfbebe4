"""The SO-101 tabletop expert: top-down inverse kinematics and a grasp state machine, re-planned every step.

Each step reads the simulator state (joint angles, the named object's pose, the target) through the env,
decides what to do from that state alone (plus a count of steps spent closing or opening the jaws), picks a
point for the grasp point (the midpoint between the fingertip pads) a bounded distance toward the phase's goal,
solves damped least squares inverse kinematics for it with the jaws pointing straight down and turned to the
object's faces, and adds the servos' gravity sag so the arm ends where it was sent. It follows
``env.set_target`` switches: the named object is read every step, and a held wrong object is put down first.

Lift and place: hover above the object, descend, close, lift (place: carry over the tray, lower, open).
Push: rise, go to a point behind the object on its line to the zone, lower the closed jaws to the table and
push through the object's centre toward the zone centre, re-aligning when the object drifts off the line.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from omnipolicy.envs.experts.base import Expert

DOWN = np.array([0.0, 0.0, -1.0])
TILT_WEIGHT = 0.3
"""Metres of grasp-point error one radian of tilt from straight down is worth in the IK."""
DAMPING = 1e-3
MAX_DQ = 0.2
ITERATIONS = 8
ROLL_SWEEPS = 3
TOP_DOWN_SEED = (-0.45, 0.6, 1.4)
"""shoulder_lift, elbow_flex, wrist_flex of a top-down pose over the middle of the table: the IK's fallback seed."""

TOP_DOWN_REACH = 0.075
"""Highest grasp point the arm holds straight down (wrist_flex reaches its limit above); higher, it may tilt."""
SOFT_TILT = 0.03
TRAVEL = 0.07
"""Height of the grasp point moving between objects (m): 3 cm over the tallest."""
CARRY = 0.10
"""Height of the grasp point carrying an object (m): its bottom 7 cm or more above the table."""
GRIP_DEPTH = 0.012
"""How far below an object's top the pads' centre closes (m)."""
RELEASE = 0.03
"""Height of a carried object's bottom above the table where place lets go (m): it drops into the tray."""
FAST, SLOW = 0.03, 0.012
"""Largest move of the grasp point per step (m) in free space and near the object."""
ALIGNED = 0.006
"""Horizontal error under which the jaws descend onto the object (m)."""
CLOSE_STEPS, OPEN_STEPS = 6, 5
GRASP_SHIFT = 0.002
"""Shift of the grasp point toward the moving jaw (m): the fixed pad descends 3 mm clear of the object (the 4 cm
opening centred on a 3 cm object would leave 5 mm), and the moving jaw closing brings the object against it."""
HELD = (0.02, 0.45)
"""Gripper angles (rad) of jaws stopped on an object (closing on nothing goes to -0.17)."""
PUSH_HEIGHT = 0.012
"""Height of the grasp point above the table while pushing (m)."""
PUSH_BEHIND = 0.045
"""Distance behind the object's centre the push starts from (m)."""


class So101Expert(Expert):
    """Scripted expert of the ``so101/*`` tasks (see the module docstring).

    Args:
        spec: the task's spec.
        seed: unused (the expert is deterministic).
    """

    def __init__(self, spec, seed: int = 0) -> None:
        super().__init__(spec, seed)
        self.kind = spec.factory_kwargs["kind"]
        self._scratch = None
        self.reset(None, {})

    def reset(self, env, obs: dict[str, Any]) -> None:
        self.closing = 0
        self.opening = 0
        self.close_at = np.zeros(3)

    # -- kinematics ------------------------------------------------------------------------------
    def _setup(self, env) -> None:
        import mujoco

        if self._scratch is not None and self._model is env.model:
            return
        m = env.model
        self._model = m
        self._scratch = mujoco.MjData(m)
        self._qadr = np.array([m.joint(j).qposadr[0] for j in env.joint_names])
        self._dadr = np.array([m.joint(j).dofadr[0] for j in env.joint_names])
        self._range = m.jnt_range[[m.joint(j).id for j in env.joint_names]]
        self._site = m.site("gripperframe").id
        self._body = m.site_bodyid[self._site]
        self._roll_joint = m.joint("wrist_roll").id
        self._kp = m.actuator_gainprm[[m.actuator(j).id for j in env.joint_names], 0]
        # The grasp point: midway between the fingertip pads with the jaws 4 cm apart, in the site's frame.
        d = self._scratch
        d.qpos[m.joint("gripper").qposadr[0]] = 0.46
        mujoco.mj_kinematics(m, d)
        mid = np.mean([d.geom_xpos[m.geom(p).id] for p in ("fixed_jaw_pad", "moving_jaw_pad")], axis=0)
        self._offset = d.site_xmat[self._site].reshape(3, 3).T @ (mid - d.site_xpos[self._site])

    def _kinematics(self, q: np.ndarray):
        import mujoco

        d = self._scratch
        d.qpos[self._qadr[:5]] = q
        mujoco.mj_kinematics(self._model, d)
        mujoco.mj_comPos(self._model, d)
        rot = d.site_xmat[self._site].reshape(3, 3)
        return d.site_xpos[self._site] + rot @ self._offset, rot

    def grasp_point(self, env) -> np.ndarray:
        """World position of the grasp point at the env's current joint angles."""
        self._setup(env)
        point, _ = self._kinematics(env.data.qpos[self._qadr[:5]])
        return point.copy()

    def solve(self, q: np.ndarray, point: np.ndarray, jaw: np.ndarray | None, tilt: float = TILT_WEIGHT) -> np.ndarray:
        """Arm angles (5,) from ``q`` putting the grasp point at ``point``, pointing down, jaws along ``jaw``.

        Damped least squares over shoulder_pan, shoulder_lift, elbow_flex and wrist_flex for the position and
        the two tilt components of the approach axis; wrist_roll, which then turns the jaws about the vertical,
        is set in closed form (the jaw axis is symmetric: the nearer of the two turns).
        """
        import mujoco

        m, d = self._model, self._scratch
        q = np.array(q, dtype=np.float64)
        jacp, jacr = np.zeros((3, m.nv)), np.zeros((3, m.nv))
        cols = self._dadr[:4]
        lo, hi = self._range[:4, 0], self._range[:4, 1]
        for sweep in range(ROLL_SWEEPS if jaw is not None else 1):
            for _ in range(ITERATIONS):
                p, rot = self._kinematics(q)
                axis = rot[:, 0]  # the approach axis, wanted straight down
                err = np.concatenate([point - p, tilt * (DOWN - axis)])
                if np.linalg.norm(err) < 1e-5:
                    break
                mujoco.mj_jac(m, d, jacp, jacr, p, self._body)
                skew = np.array([[0.0, -axis[2], axis[1]], [axis[2], 0.0, -axis[0]], [-axis[1], axis[0], 0.0]])
                jac = np.vstack([jacp[:, cols], -tilt * skew @ jacr[:, cols]])  # (6, 4): d(axis) = w x axis
                free = np.ones(4, dtype=bool)
                for _ in range(4):  # joints at a limit that the step pushes further are held there (active set)
                    dq = np.zeros(4)
                    jf = jac[:, free]
                    dq[free] = np.linalg.solve(jf.T @ jf + DAMPING * np.eye(free.sum()), jf.T @ err)
                    blocked = ((q[:4] <= lo + 1e-6) & (dq < 0)) | ((q[:4] >= hi - 1e-6) & (dq > 0))
                    if not blocked.any():
                        break
                    free &= ~blocked
                q[:4] = np.clip(q[:4] + dq * min(1.0, MAX_DQ / max(np.abs(dq).max(), 1e-12)), lo, hi)
            if jaw is None or sweep == ROLL_SWEEPS - 1:
                break
            # The roll turns the jaws about the (nearly vertical) approach axis; the grasp point sits a little off
            # that axis, so the position is solved again after each turn.
            _, rot = self._kinematics(q)
            hinge = d.xaxis[self._roll_joint]
            current = rot[:, 2] - (rot[:, 2] @ hinge) * hinge
            wanted = jaw - (jaw @ hinge) * hinge
            turn = np.arctan2(np.cross(current, wanted) @ hinge, current @ wanted)
            turn = (turn + np.pi / 2) % np.pi - np.pi / 2  # the jaw axis either way round
            rlo, rhi = self._range[4]
            options = [q[4] + turn + k * np.pi for k in (-1, 0, 1) if rlo <= q[4] + turn + k * np.pi <= rhi]
            q[4] = min(options, key=lambda v: abs(v - q[4])) if options else np.clip(q[4] + turn, rlo, rhi)
        return q

    def _residual(self, q: np.ndarray, point: np.ndarray, tilt: float) -> float:
        """The IK's weighted error at ``q``: grasp-point distance plus ``tilt`` times the tilt from straight down."""
        p, rot = self._kinematics(q)
        return float(np.linalg.norm(point - p) + tilt * np.arccos(np.clip(rot[:, 0] @ DOWN, -1.0, 1.0)))

    def command(self, env, point, jaw: np.ndarray | None, gripper: float, tilt: float = TILT_WEIGHT) -> np.ndarray:
        """The 6 joint targets that bring the grasp point to ``point``, with gravity's sag added back."""
        point = np.asarray(point, dtype=np.float64)
        current = env.data.qpos[self._qadr[:5]]
        q = self.solve(current, point, jaw, tilt)
        if np.linalg.norm(self._kinematics(q)[0] - point) > 0.005:  # a far branch (from home, say): try a top-down seed
            seed = np.array([-np.arctan2(point[1], point[0]), *TOP_DOWN_SEED, current[4]])  # pan turns toward -y
            other = self.solve(seed, point, jaw, tilt)
            if self._residual(other, point, tilt) < self._residual(q, point, tilt):
                q = other
        sag = env.data.qfrc_bias[self._dadr[:5]] / self._kp[:5]
        return self.continuous([*(q + sag), gripper])

    # -- the state machine -----------------------------------------------------------------------
    def act(self, env, obs: dict[str, Any]) -> np.ndarray:
        from omnipolicy.envs.so101_scene import GRIPPER_CLOSED, GRIPPER_OPEN

        self._setup(env)
        here = self.grasp_point(env)
        index = env.target_index
        obj = env.object_pos(index)
        if self.kind == "push":
            return self._push(env, here, obj, GRIPPER_CLOSED)
        jaw = self._jaw_direction(env, index, obj)
        grip = obj[2] + env.half_height(index) - GRIP_DEPTH
        # Centre the pads' 4 cm opening so the fixed pad touches the object and the moving one closes on it.
        _, rot = self._kinematics(env.data.qpos[self._qadr[:5]])
        obj = obj.copy()
        obj[:2] += rot[:2, 2] * GRASP_SHIFT
        if self.opening or any(self._held(env, i, here) for i in range(len(env.objects)) if i != index):
            return self._release(env, here)  # letting go, or holding the wrong object (the target changed)
        if env.achieved(index):  # placed: stay clear of it
            return self.move(env, here, [*here[:2], TRAVEL], FAST, None, GRIPPER_OPEN)
        if self.closing >= CLOSE_STEPS:
            if self._held(env, index, here):
                return self._carry(env, here, obj, index)
            self.closing = 0  # closed on nothing: open and start over
            return self.move(env, here, [*here[:2], TRAVEL], FAST, jaw, GRIPPER_OPEN)
        flat = np.linalg.norm(obj[:2] - here[:2])
        if self.closing:
            if flat < 0.02 and abs(here[2] - grip) < 0.02:
                self.closing += 1
                return self.command(env, self.close_at, jaw, GRIPPER_CLOSED)  # hold still: following would push it
            self.closing = 0  # knocked away while closing: start over
        if flat > ALIGNED:
            if here[2] < TRAVEL - 0.015 and flat > 0.02:  # low and off the object: rise first, sweep nothing
                return self.move(env, here, [*here[:2], TRAVEL], FAST, jaw, GRIPPER_OPEN)
            return self.move(env, here, [*obj[:2], TRAVEL], FAST if flat > 0.04 else SLOW, jaw, GRIPPER_OPEN)
        if here[2] > grip + 0.004:
            return self.move(env, here, [*obj[:2], grip], SLOW, jaw, GRIPPER_OPEN)
        self.closing = 1
        self.close_at = np.array([*obj[:2], grip])
        return self.command(env, self.close_at, jaw, GRIPPER_CLOSED)

    def move(self, env, here: np.ndarray, goal, step: float, jaw: np.ndarray | None, gripper: float) -> np.ndarray:
        """Command the grasp point at most ``step`` toward ``goal``; above top-down reach the jaws may tilt."""
        point = self._toward(here, goal, step)
        tilt = TILT_WEIGHT if point[2] <= TOP_DOWN_REACH else SOFT_TILT
        return self.command(env, point, jaw, gripper, tilt)

    def _carry(self, env, here: np.ndarray, obj: np.ndarray, index: int) -> np.ndarray:
        from omnipolicy.envs.so101_scene import GRIPPER_CLOSED

        if self.kind == "lift":
            return self.move(env, here, [*here[:2], CARRY + 0.01], FAST, None, GRIPPER_CLOSED)
        tray = env.target_pos()
        goal = here[:2] + tray[:2] - obj[:2]  # steer the object, not the jaws, over the tray's centre
        off = np.linalg.norm(goal - here[:2])
        if off > 0.015:
            if here[2] < CARRY - 0.02:
                return self.move(env, here, [*here[:2], CARRY], FAST, None, GRIPPER_CLOSED)
            return self.move(env, here, [*goal, CARRY], FAST if off > 0.04 else SLOW, None, GRIPPER_CLOSED)
        bottom = obj[2] - env.half_height(index)
        if bottom > RELEASE:
            return self.move(env, here, [*goal, here[2] - (bottom - RELEASE)], SLOW, None, GRIPPER_CLOSED)
        return self._release(env, here)

    def _release(self, env, here: np.ndarray) -> np.ndarray:
        from omnipolicy.envs.so101_scene import GRIPPER_OPEN

        self.opening += 1
        self.closing = 0
        if self.opening <= OPEN_STEPS:
            return self.command(env, here, None, GRIPPER_OPEN)
        self.opening = 0
        return self.move(env, here, [*here[:2], here[2] + 0.04], FAST, None, GRIPPER_OPEN)

    def _held(self, env, index: int, here: np.ndarray) -> bool:
        """Whether object ``index`` sits between the closed jaws (they stop on it, short of closing fully)."""
        p = env.object_pos(index)
        angle = env.data.qpos[self._qadr[5]]
        return bool(np.linalg.norm(p[:2] - here[:2]) < 0.03 and abs(p[2] - here[2]) < 0.035 and HELD[0] < angle < HELD[1])

    def _jaw_direction(self, env, index: int, obj: np.ndarray) -> np.ndarray:
        """The horizontal direction the jaws close along: across the object as seen from the base.

        A cube is held by the pair of faces whose normal is nearest that direction.
        """
        across = np.array([-obj[1], obj[0], 0.0]) / max(np.linalg.norm(obj[:2]), 1e-6)
        if env.shape(index) != "cube":
            return across
        rot = env.object_rot(index)
        normals = [rot[:, 0], rot[:, 1]]
        best = max(normals, key=lambda n: abs(n @ across))
        best = np.array([best[0], best[1], 0.0])
        return best / np.linalg.norm(best)

    def _toward(self, here: np.ndarray, goal, step: float) -> np.ndarray:
        goal = np.asarray(goal, dtype=np.float64)
        delta = goal - here
        dist = np.linalg.norm(delta)
        return goal if dist <= step else here + delta * (step / dist)

    def _push(self, env, here: np.ndarray, obj: np.ndarray, closed: float) -> np.ndarray:
        zone = env.target_pos()
        line = zone[:2] - obj[:2]
        dist = np.linalg.norm(line)
        u = line / max(dist, 1e-6)
        start = obj[:2] - u * PUSH_BEHIND
        # Where the jaws are relative to the push line through the object: along (behind < 0) and across.
        rel = here[:2] - obj[:2]
        along, across = rel @ u, rel @ np.array([-u[1], u[0]])
        jaw = np.array([-u[1], u[0], 0.0])  # jaws across the push direction: a wide pusher
        low = PUSH_HEIGHT
        behind = along < -0.02 and abs(across) < 0.012
        if behind and here[2] < low + 0.02:  # in line behind the object: push through its centre to the zone's
            goal = obj[:2] + u * (dist + 0.0)
            aim = here[:2] + (goal - obj[:2]) + (obj[:2] - u * (PUSH_BEHIND - 0.015) - here[:2]) * 0.5
            target = self._toward(here, [*aim, low], SLOW)
            return self.command(env, target, jaw, closed)
        if np.linalg.norm(here[:2] - start) < 0.012:  # above the start: lower
            return self.command(env, self._toward(here, [*start, low], SLOW * 1.5), jaw, closed)
        clear = 0.07
        if here[2] < clear - 0.01:  # low but not in line: rise clear of the objects first
            return self.command(env, self._toward(here, [*here[:2], clear], FAST), jaw, closed)
        return self.command(env, self._toward(here, [*start, clear], FAST), jaw, closed)
