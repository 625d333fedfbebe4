"""Experts for the dm_control suite: LQR / energy shaping, saturated PD, IK + PD."""

from __future__ import annotations

import numpy as np

from omnipolicy.envs.experts.base import Expert
from omnipolicy.envs.experts.lqr import dlqr, linearize
from omnipolicy.envs.experts.mujoco import joint_error, two_link_ik, wrap_angle


class CartpoleExpert(Expert):
    """Energy-shaping swing-up with cart centring, then LQR once the pole is near upright.

    The pole's energy relative to upright rest, normalised by ``m g l_c``, is
    ``E = th_dot^2 / (2 w0^2) + cos(th) - 1`` (``w0^2 = m g l_c / I``); a cart force
    ``k E th_dot cos(th)`` drives E toward 0 (upright energy). Balance starts near upright, so
    it is LQR from the first step.
    """

    catch_cos = 0.85
    pump_gain = 5.0
    centre_gains = (1.0, 1.0)
    _K: np.ndarray | None = None

    def reset(self, env, obs):
        if self._K is None:
            physics = env.physics
            model = physics.model.ptr
            A, B = linearize(model, np.zeros(2), np.zeros(2), np.zeros(1), env.n_sub_steps)
            self._K = dlqr(A, B, np.diag([1.0, 10.0, 0.1, 0.1]), np.eye(1))
            m = float(physics.named.model.body_mass["pole_1"])
            lc = float(physics.named.model.body_ipos["pole_1"][2])
            inertia = float(physics.named.model.body_inertia["pole_1"][1]) + m * lc * lc
            self._w0_sq = m * 9.81 * lc / inertia

    def act(self, env, obs):
        physics = env.physics
        x, th = (float(v) for v in physics.named.data.qpos[["slider", "hinge_1"]])
        x_dot, th_dot = (float(v) for v in physics.named.data.qvel[["slider", "hinge_1"]])
        th = float(wrap_angle(th))
        if np.cos(th) > self.catch_cos:
            return self.continuous(-self._K @ np.array([x, th, x_dot, th_dot]))
        energy = 0.5 * th_dot**2 / self._w0_sq + np.cos(th) - 1.0
        pump = self.pump_gain * energy * th_dot * np.cos(th)
        kx, kv = self.centre_gains
        return self.continuous(pump - kx * x - kv * x_dot)


class PointMassExpert(Expert):
    """Saturated PD toward the target at the origin."""

    kp, kd = 20.0, 4.0

    def act(self, env, obs):
        physics = env.physics
        target = physics.named.data.geom_xpos["target"][:2]
        pos, vel = physics.named.data.qpos[:2] - target, physics.named.data.qvel[:2]
        return self.continuous(-self.kp * pos - self.kd * vel)


class ReacherExpert(Expert):
    """Analytic two-link inverse kinematics to the target, joint-space PD.

    The gains are soft on purpose: at kp 5 / kd 0.5 the motors saturated in 21% of an episode's
    first 150 steps (bang-bang, hard for a policy to imitate: the learner overshot and circled the
    arm past the target), at kp 2 / kd 0.3 in 3% (12 seeds), for a return 0.3% lower (982 against
    985, the 20 episodes measured in envs/expert_scores.json; the target is reached ~3 steps later).
    """

    links = (0.12, 0.12)
    kp, kd = 2.0, 0.3

    def act(self, env, obs):
        physics = env.physics
        q = physics.named.data.qpos[["shoulder", "wrist"]].copy()
        qd = physics.named.data.qvel[["shoulder", "wrist"]].copy()
        target = physics.named.data.geom_xpos["target"][:2] - physics.named.data.xpos["arm"][:2]
        q_des = two_link_ik(target, self.links, q, elbow_limit=np.deg2rad(160))
        return self.continuous(self.kp * joint_error(q_des, q) - self.kd * qd)
