"""The SO-101 tabletop expert: top-down inverse kinematics and a grasp state machine, re-planned every step.

Each step reads the simulator state (joint angles, the named object's pose, the target) through the env,
decides what to do from that state alone (plus a count of steps spent closing or opening the jaws), picks a
point for the grasp point (the midpoint between the fingertip pads) a bounded distance toward the phase's goal,
solves damped least squares inverse kinematics for it with the jaws pointing straight down and turned to the
object's faces, and adds the servos' gravity sag so the arm ends where it was sent. It follows
``env.set_target`` switches: the named object is read every step, and a held wrong object is put down first
(carried clear of the tray in place).

It lifts as soon as the closing jaws have stopped on the named object: a rule the joints show (a learner that
sees the gripper angle stop can follow it), where waiting a fixed count of closing steps would show it the same
picture before "hold" and before "lift". The same rule labels a grip another actor made (DAgger), and its count
of closing steps only advances once the jaws have left the open angle, so it keeps saying "close" to an actor
that has not. It reads joints and objects only (no record of the commands), so a twin synced from a robot's
topics acts the same.

Lift and place: above the object, descend, close, lift (place: carry over the tray, lower, open).
Push: rise, go to a point behind the object on its line to the zone, lower the closed jaws to the table and
push through the object's centre toward the zone centre, re-aligning when the object drifts off the line.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from omnipolicy.envs.experts.base import Expert
from omnipolicy.envs.so101_scene import GRIPPER_CLOSED, TRAY_HALF, TRAY_WALL, jaw_midpoint

DOWN = np.array([0.0, 0.0, -1.0])
TILT_WEIGHT = 0.3
"""Metres of grasp-point error one radian of tilt from straight down is worth in the IK."""
DAMPING = 1e-3
"""Damping of the least squares (m^2): keeps steps bounded near singular poses."""
MAX_DQ = 0.2
"""Largest joint change of one IK iteration (rad)."""
ITERATIONS, ROLL_SWEEPS = 8, 3
"""IK iterations per sweep; sweeps (position, then the wrist roll turned to the jaw direction) per solve."""
TOP_DOWN_SEED = (-0.45, 0.6, 1.4)
"""shoulder_lift, elbow_flex, wrist_flex of a top-down pose over the middle of the table: the IK's fallback seed."""

TOP_DOWN_REACH = 0.075
"""Highest grasp point the arm holds straight down (wrist_flex reaches its limit above); higher, it may tilt."""
SOFT_TILT = 0.03
"""The tilt weight above top-down reach (lifting, carrying): the grasp point's position comes first."""
TRAVEL = 0.07
"""Height of the grasp point moving between objects (m): 3 cm over the tallest."""
CARRY = 0.10
"""Height of the grasp point carrying an object (m): its bottom 7 cm or more above the table."""
GRIP_DEPTH = 0.012
"""How far below an object's top the pads' centre closes (m)."""
RELEASE = 0.03
"""Height of a carried object's bottom above the table where place lets go (m): it drops into the tray."""
TRAY_INSIDE = 0.03
"""Offset of an object's centre from the tray's under which it is inside the tray, whatever its angle (m)."""
TRAY_HALF_OUTER = TRAY_HALF + TRAY_WALL
FAST, SLOW = 0.03, 0.012
"""Largest move of the grasp point per step (m) in free space and near the object."""
ALIGNED, FINE = 0.012, 0.012
"""Horizontal error under which the jaws descend toward the object, and past its top (m). The descent keeps
centring the jaws on the object, so 12 mm at the gate still grasps; a tighter gate is a trap for whoever imitates
it with less precision than the simulator's state gives: a camera policy about 1 cm off hovers over the object,
as this expert did under execution noise with 2.5 mm (docs/results.md, "The descent gate")."""
TWIST = 0.3
"""Angle (rad) between the jaws' axis and the wanted one under which they descend past the object's top. A cube
closed on 0.35 rad off its faces still lifts (0.45: 25 of 28); with 0.12 the camera policy, whose wrist roll is
about 0.28 rad off over a cube, hovered or held the grip it made at an angle no demonstration showed
(docs/results.md, "DAgger under the new hold rule and the twist gate")."""
ROLL_STEP = 0.18
"""Largest wrist_roll target away from its current angle (rad): turning the jaws takes a few steps, and no target
jumps (the SO-101 robot files bound each step's change)."""
CLOSE_STEPS, OPEN_STEPS = 6, 5
"""Steps the jaws get to close (jaws that stop on the object earlier lift at once) and to open."""
OPEN = 0.65
"""Gripper angle of the open jaws (rad): pads 5 cm apart inside, room around a 3 cm object, not wide enough to
brush its neighbours or the tray's walls."""
NEIGHBOUR = 0.08
"""Distance between object centres under which the jaws turn to straddle the object away from its neighbour (m)."""
HELD = (0.02, 0.45)
"""Gripper angles (rad) of jaws stopped on an object (closing on nothing goes to -0.17)."""
STOPPED = 0.3
"""Gripper speed (rad/s) under which closing jaws have stopped (on an object, or fully closed): 0.015 rad a step."""
PUSH_HEIGHT = 0.014
"""Height of the pusher (the closed pads' centre) above the table while pushing (m)."""
PUSH_CONTACT = 0.026
"""Distance from an object's centre to the pusher's centre when they touch (m): 1.5 cm radius, pads ~1 cm deep."""
PUSH_STEP = 0.02
"""How far into the object the pusher is sent (m): the servos push with a force that grows with the lag."""


class So101Expert(Expert):
    """Scripted expert of the ``so101/*`` tasks (see the module docstring).

    Args:
        spec: the task's spec.
        seed: unused (the expert is deterministic).
    """

    def __init__(self, spec, seed: int = 0) -> None:
        super().__init__(spec, seed)
        self.kind = spec.factory_kwargs["kind"]
        self.aim = bool(spec.factory_kwargs.get("aim", False))
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
        # The point the IK moves, in the site's frame: midway between the fingertip pads, with the jaws 4 cm apart
        # (lift, place: the grasp point) or closed (push: the pusher).
        d = self._scratch
        d.qpos[m.joint("gripper").qposadr[0]] = 0.46 if self.kind != "push" else GRIPPER_CLOSED
        mujoco.mj_kinematics(m, d)
        mid = jaw_midpoint(m, d)
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
        the approach axis's difference from straight down (weighted by ``tilt``), a joint at its limit held there;
        wrist_roll, which then turns the jaws about the vertical, is set in closed form (the jaw axis is
        symmetric: the nearer of the two turns).
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
        if tilt > SOFT_TILT and np.linalg.norm(self._kinematics(q)[0] - point) > 0.008:
            q = self.solve(q, point, jaw, SOFT_TILT)  # out of top-down reach: tilt rather than stop short
        q[4] = np.clip(q[4], current[4] - ROLL_STEP, current[4] + ROLL_STEP)
        sag = env.data.qfrc_bias[self._dadr[:5]] / self._kp[:5]
        aim = env.object_pos(env.target_index) if self.aim else ()  # an -aim task's: the named object's centre
        return self.continuous([*(q + sag), gripper, *aim])

    # -- the state machine -----------------------------------------------------------------------
    def act(self, env, obs: dict[str, Any]) -> np.ndarray:
        self._setup(env)
        here = self.grasp_point(env)
        index = env.target_index
        obj = env.object_pos(index)
        if self.kind == "push":
            return self._push(env, here, obj, GRIPPER_CLOSED)
        if self.opening:
            return self._release(env, here)
        wrong = [i for i in range(len(env.objects)) if i != index and self._held(env, i, here)]
        if wrong:  # holding an object that is no longer the named one (the target changed): put it aside
            return self._put_aside(env, here, wrong[0])
        if env.achieved(index):  # placed: stay clear of it
            return self.move(env, here, [*here[:2], TRAVEL], FAST, None, OPEN)
        if (self.closing >= CLOSE_STEPS or self._jaws_still(env)) and self._held(env, index, here):  # lift once stopped
            return self._carry(env, here, obj, index)
        jaw = self._jaw_direction(env, index)
        top = obj[2] + env.half_height(index)
        grip = top - GRIP_DEPTH
        if self.closing >= CLOSE_STEPS:
            self.closing = 0  # closed on nothing: open and start over
            return self.move(env, here, [*here[:2], TRAVEL], FAST, jaw, OPEN)
        flat = np.linalg.norm(obj[:2] - here[:2])
        if self.closing:
            if flat < 0.02 and abs(here[2] - grip) < 0.02:
                self.closing += self._closing_jaws(env)  # an actor that has not closed yet is told to again
                return self.command(env, self.close_at, jaw, GRIPPER_CLOSED)  # hold still: following would push it
            self.closing = 0  # knocked away while closing: start over
        if flat > ALIGNED:
            if here[2] < TRAVEL - 0.015 and flat > 0.02:  # low and off the object: rise first, sweep nothing
                return self.move(env, here, [*here[:2], TRAVEL], FAST, jaw, OPEN)
            return self.move(env, here, [*obj[:2], TRAVEL], FAST if flat > 0.04 else SLOW, jaw, OPEN)
        _, rot = self._kinematics(env.data.qpos[self._qadr[:5]])
        twist = np.arccos(min(1.0, abs(rot[:, 2] @ jaw) / max(np.linalg.norm(rot[:2, 2]), 1e-6)))
        aligned = flat <= FINE and twist <= TWIST
        if here[2] > grip + 0.004 or not aligned:  # past the object's top only centred and turned to it
            return self.move(env, here, [*obj[:2], grip if aligned else top + 0.015], SLOW, jaw, OPEN)
        self.closing = 1
        self.close_at = np.array([*obj[:2], grip])
        return self.command(env, self.close_at, jaw, GRIPPER_CLOSED)

    def move(self, env, here: np.ndarray, goal, step: float, jaw: np.ndarray | None, gripper: float) -> np.ndarray:
        """Command the grasp point at most ``step`` toward ``goal``; above top-down reach the jaws may tilt."""
        point = self._toward(here, goal, step)
        tilt = TILT_WEIGHT if point[2] <= TOP_DOWN_REACH else SOFT_TILT
        return self.command(env, point, jaw, gripper, tilt)

    def _carry(self, env, here: np.ndarray, obj: np.ndarray, index: int) -> np.ndarray:
        if self.kind == "lift":
            return self.move(env, here, [*here[:2], CARRY + 0.01], FAST, None, GRIPPER_CLOSED)
        tray = env.target_pos()
        bottom = obj[2] - env.half_height(index)
        if np.all(np.abs(obj[:2] - tray[:2]) < TRAY_INSIDE) and bottom < RELEASE + 0.01:
            return self._release(env, here)  # already down in the tray (knocked in, say): let go
        goal = here[:2] + self._tray_spot(env, tray, index) - obj[:2]  # steer the object, not the jaws
        off = np.linalg.norm(goal - here[:2])
        if off > 0.015:
            if here[2] < CARRY - 0.02:
                return self.move(env, here, [*here[:2], CARRY], FAST, None, GRIPPER_CLOSED)
            return self.move(env, here, [*goal, CARRY], FAST if off > 0.04 else SLOW, None, GRIPPER_CLOSED)
        if bottom > RELEASE:
            return self.move(env, here, [*goal, here[2] - (bottom - RELEASE)], SLOW, None, GRIPPER_CLOSED)
        return self._release(env, here)

    def _put_aside(self, env, here: np.ndarray, held: int) -> np.ndarray:
        """Let go of a held object that is not the named one, carried clear of the tray first (place)."""
        tray = env.target_pos()
        obj = env.object_pos(held)
        if tray is None or np.max(np.abs(obj[:2] - tray[:2])) > TRAY_HALF_OUTER + 0.04:
            return self._release(env, here)
        spot = self._aside_spot(env, tray, held)
        if np.linalg.norm(spot - obj[:2]) < 0.015:
            return self._release(env, here)
        goal = here[:2] + spot - obj[:2]
        if here[2] < CARRY - 0.02:
            return self.move(env, here, [*here[:2], CARRY], FAST, None, GRIPPER_CLOSED)
        return self.move(env, here, [*goal, CARRY], FAST, None, GRIPPER_CLOSED)

    @staticmethod
    def _aside_spot(env, tray: np.ndarray, held: int) -> np.ndarray:
        """Where to put a wrong object down: 13 cm from the tray, within reach, as far as can be from the others."""
        others = [env.object_pos(i)[:2] for i in range(len(env.objects)) if i != held]
        spots = [tray[:2] + 0.13 * np.array([np.cos(a), np.sin(a)]) for a in np.linspace(0, 2 * np.pi, 12, endpoint=False)]
        reach = [p for p in spots if 0.13 < np.linalg.norm(p) < 0.27 and abs(np.arctan2(p[1], p[0])) < 1.0] or spots
        return max(reach, key=lambda p: min(np.linalg.norm(p - q) for q in others))

    @staticmethod
    def _tray_spot(env, tray: np.ndarray, index: int) -> np.ndarray:
        """Where in the tray to put the named object: its centre, or beside objects already in it."""
        inside = [env.object_pos(i)[:2] for i in range(len(env.objects))
                  if i != index and np.all(np.abs(env.object_pos(i)[:2] - tray[:2]) < TRAY_HALF_OUTER)]
        if not inside:
            return tray[:2]
        spots = [tray[:2] + np.array([dx, dy]) for dx in (-0.025, 0.0, 0.025) for dy in (-0.025, 0.0, 0.025)]
        return max(spots, key=lambda p: min(np.linalg.norm(p - q) for q in inside))

    def _release(self, env, here: np.ndarray) -> np.ndarray:
        self.opening += 1
        self.closing = 0
        if self.opening <= OPEN_STEPS:
            return self.command(env, here, None, OPEN)
        self.opening = 0
        return self.move(env, here, [*here[:2], here[2] + 0.04], FAST, None, OPEN)

    def grips(self, env, index: int) -> bool:
        """Whether the jaws have closed and stopped on object ``index`` (the state this expert lifts from)."""
        self._setup(env)
        return self._jaws_still(env) and self._held(env, index, self.grasp_point(env))

    def _closing_jaws(self, env) -> bool:
        """Whether the jaws have left the open angle (closing, or closed): read from the joints alone, as a twin
        synced from a robot's joint states has no record of the commands."""
        return bool(env.data.qpos[self._qadr[5]] < OPEN - 0.05)

    def _jaws_still(self, env) -> bool:
        """Whether the gripper has stopped moving (with :meth:`_held`: the jaws have stopped on the object)."""
        return abs(env.data.qvel[self._dadr[5]]) < STOPPED

    def _held(self, env, index: int, here: np.ndarray) -> bool:
        """Whether object ``index`` sits between the closed jaws (they stop on it, short of closing fully)."""
        p = env.object_pos(index)
        angle = env.data.qpos[self._qadr[5]]
        return bool(np.linalg.norm(p[:2] - here[:2]) < 0.03 and abs(p[2] - here[2]) < 0.035 and HELD[0] < angle < HELD[1])

    def _jaw_direction(self, env, index: int) -> np.ndarray:
        """The horizontal direction the jaws should close along.

        With another object within 8 cm, across the line to the nearest one (the open jaws then straddle the
        object without reaching its neighbour); otherwise the nearest to where the jaws close now (the wrist
        turns at most 45 degrees and never flips while closing). A cube is held by the pair of faces whose
        normal is nearest that direction; a cylinder by any pair.
        """
        _, rot = self._kinematics(env.data.qpos[self._qadr[:5]])
        wanted = np.array([rot[0, 2], rot[1, 2], 0.0])
        obj = env.object_pos(index)[:2]
        gaps = [env.object_pos(i)[:2] - obj for i in range(len(env.objects)) if i != index]
        nearest = min(gaps, key=np.linalg.norm)
        if np.linalg.norm(nearest) < NEIGHBOUR:
            wanted = np.array([-nearest[1], nearest[0], 0.0])
        wanted /= max(np.linalg.norm(wanted), 1e-6)
        if env.shape(index) != "cube":
            return wanted
        cube = env.object_rot(index)
        normals = [np.array([n[0], n[1], 0.0]) for n in (cube[:, 0], cube[:, 1])]
        best = max(normals, key=lambda n: abs(n @ wanted) / max(np.linalg.norm(n), 1e-6))
        return best / max(np.linalg.norm(best), 1e-6)

    def _toward(self, here: np.ndarray, goal, step: float) -> np.ndarray:
        goal = np.asarray(goal, dtype=np.float64)
        delta = goal - here
        dist = np.linalg.norm(delta)
        return goal if dist <= step else here + delta * (step / dist)

    def _push(self, env, here: np.ndarray, obj: np.ndarray, closed: float) -> np.ndarray:
        """Push the object through its centre toward the zone's, from behind it on that line, jaws closed."""
        zone = env.target_pos()
        line = zone[:2] - obj[:2]
        u = line / max(np.linalg.norm(line), 1e-6)
        normal = np.array([-u[1], u[0]])
        jaw = np.array([*normal, 0.0])  # the closed pads side by side across the push: a 2 cm wide pusher
        rel = here[:2] - obj[:2]
        along, across = rel @ u, rel @ normal
        start = obj[:2] - u * (PUSH_CONTACT + 0.015)
        low = here[2] < PUSH_HEIGHT + 0.012
        if low and -PUSH_CONTACT - 0.03 < along < -0.01 and abs(across) < 0.008:  # in line behind it: push
            goal = obj[:2] - u * (PUSH_CONTACT - PUSH_STEP)
            return self.command(env, [*goal, PUSH_HEIGHT], jaw, closed)
        if low and along < -0.01 and abs(across) < 0.02:  # drifted off the line: back off and re-align, still low
            return self.command(env, self._toward(here, [*start, PUSH_HEIGHT], SLOW), jaw, closed)
        if np.linalg.norm(here[:2] - start) < 0.01:  # above the start: lower
            return self.move(env, here, [*start, PUSH_HEIGHT], SLOW * 1.5, jaw, closed)
        if here[2] < TRAVEL - 0.015:  # low elsewhere: rise clear of the objects first
            return self.move(env, here, [*here[:2], TRAVEL], FAST, jaw, closed)
        return self.move(env, here, [*start, TRAVEL], FAST if np.linalg.norm(here[:2] - start) > 0.04 else SLOW, jaw, closed)
