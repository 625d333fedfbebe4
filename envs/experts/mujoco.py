"""Experts for gymnasium MuJoCo: LQR for the pendulums, inverse kinematics + PD for Reacher."""

from __future__ import annotations

import numpy as np

from omnipolicy.envs.experts.base import Expert
from omnipolicy.envs.experts.lqr import dlqr, linearize


class _UprightLQR(Expert):
    """LQR on the joint state ``[qpos, qvel]`` around upright rest (the model's qpos0)."""

    q_weight: tuple[float, ...] = ()
    r_weight: float = 1.0
    _K: np.ndarray | None = None

    def reset(self, env, obs):
        if self._K is None:
            sim = env.unwrapped_env
            nv = sim.model.nv
            A, B = linearize(sim.model, np.zeros(nv), np.zeros(nv), np.zeros(sim.model.nu), sim.frame_skip)
            self._K = dlqr(A, B, np.diag(self.q_weight), self.r_weight * np.eye(sim.model.nu))

    def act(self, env, obs):
        data = env.unwrapped_env.data
        return self.continuous(-self._K @ np.concatenate([data.qpos, data.qvel]))


class InvertedPendulumExpert(_UprightLQR):
    """LQR on (cart x, pole angle, velocities)."""

    q_weight = (1.0, 10.0, 0.1, 0.1)
    r_weight = 0.1


class InvertedDoublePendulumExpert(_UprightLQR):
    """LQR on (cart x, hinge 1, hinge 2, velocities)."""

    q_weight = (1.0, 20.0, 20.0, 0.1, 0.1, 0.1)
    r_weight = 0.1


class ReacherExpert(Expert):
    """Analytic two-link inverse kinematics to the target, then joint-space PD."""

    links = (0.1, 0.11)  # shoulder->elbow, elbow->fingertip
    kp, kd = 0.2, 0.04

    def act(self, env, obs):
        sim = env.unwrapped_env
        q, qd = sim.data.qpos[:2], sim.data.qvel[:2]
        target = sim.get_body_com("target")[:2]
        q_des = two_link_ik(target, self.links, q, elbow_limit=3.0)
        return self.continuous(self.kp * joint_error(q_des, q) - self.kd * qd)


def two_link_ik(target: np.ndarray, links: tuple[float, float], q_now: np.ndarray, elbow_limit: float = np.pi) -> np.ndarray:
    """Joint angles putting a planar two-link tip at ``target``.

    Of the two elbow branches, the one within ``elbow_limit`` that is nearer ``q_now`` (the
    shoulder turns freely, so its distance wraps; the elbow is a limited joint, so it doesn't).
    """
    l1, l2 = links
    x, y = float(target[0]), float(target[1])
    c2 = np.clip((x * x + y * y - l1 * l1 - l2 * l2) / (2 * l1 * l2), -1.0, 1.0)
    best = None
    for s in (1.0, -1.0):
        q2 = float(np.clip(s * np.arccos(c2), -elbow_limit, elbow_limit))
        q1 = np.arctan2(y, x) - np.arctan2(l2 * np.sin(q2), l1 + l2 * np.cos(q2))
        q = np.array([q1, q2])
        dist = abs(wrap_angle(q1 - q_now[0])) + abs(q2 - q_now[1])
        if best is None or dist < best[0]:
            best = (dist, q)
    return best[1]


def wrap_angle(angle):
    """Angle(s) wrapped to [-pi, pi)."""
    return (np.asarray(angle) + np.pi) % (2 * np.pi) - np.pi


def joint_error(q_des: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Shoulder error wrapped (a free joint), elbow error direct (a limited joint)."""
    return np.array([wrap_angle(q_des[0] - q[0]), q_des[1] - q[1]])
