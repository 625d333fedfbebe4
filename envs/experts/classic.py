"""Hand-written controllers for gymnasium classic control."""

from __future__ import annotations

import numpy as np

from omnipolicy.envs.experts.base import Expert


class CartPoleExpert(Expert):
    """Linear feedback on (x, x_dot, theta, theta_dot): push toward the side the pole falls to."""

    def act(self, env, obs):
        x, x_dot, th, th_dot = obs["state"]
        return self.discrete(th + 0.5 * th_dot + 0.05 * x + 0.1 * x_dot > 0)


class AcrobotExpert(Expert):
    """Pump energy: torque by the sign of the relative velocity against the first link's."""

    def act(self, env, obs):
        th1_dot, th2_dot = obs["state"][4:6]
        return self.discrete(2 if th2_dot - 0.5 * th1_dot > 0 else 0)


class MountainCarExpert(Expert):
    """Push in the direction of motion (push left from rest), which pumps energy."""

    def act(self, env, obs):
        _, velocity = obs["state"]
        return self.discrete(2 if velocity >= 0 and not (velocity == 0 and obs["state"][0] > -0.4) else 0)


class PendulumExpert(Expert):
    """Energy pumping far from the top, PD control near it.

    Dynamics: th_ddot = 15 sin(th) + 3 u (th = 0 upright), so E = th_dot^2 / 2 + 15 (cos th - 1)
    is 0 at upright rest; pumping u = 2 sign(th_dot) raises E at the torque limit.
    """

    def act(self, env, obs):
        cos_th, sin_th, th_dot = (float(v) for v in obs["state"])
        th = np.arctan2(sin_th, cos_th)
        energy = 0.5 * th_dot**2 + 15.0 * (cos_th - 1.0)
        if cos_th > 0.8 and abs(energy) < 6.0:
            return self.continuous(-10.0 * th - 2.0 * th_dot)
        if energy < 0:
            return self.continuous(2.0 if th_dot >= 0 else -2.0)
        return self.continuous(-0.5 * th_dot)
