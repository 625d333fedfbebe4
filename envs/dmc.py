"""dm_control suite: cartpole, point_mass, reacher (named observations, optional pixels).

Each named dm_control observation becomes a flat float32 vector of the same name
(scalars become shape (1,)). The ``-pixels`` variants observe only an 84x84 RGB
image from camera 0 (shadows off), with the same dynamics, expert and scores as
the state task. Episodes last 1000 steps, dm_control's own time limit.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from omnipolicy.envs.base import TaskEnv
from omnipolicy.envs.registry import bounded_action, image, register_task, vector

CARTPOLE = (vector("position", 3), vector("velocity", 2))
POINT_MASS = (vector("position", 2), vector("velocity", 2))
REACHER = (vector("position", 2), vector("to_target", 2), vector("velocity", 2))
PIXELS = (image(),)
BALANCE = "Move the cart to keep the pole balanced upright."
SWINGUP = "Swing the hanging pole up by moving the cart, then balance it upright."
POINT = "Push the point mass to the target at the centre and keep it there."
REACH = "Move the tip of the two-link arm onto the target."
EXPERTS = {"cartpole": "CartpoleExpert", "point_mass": "PointMassExpert", "reacher": "ReacherExpert"}


def dmc_task(id: str, *, action_size: int, domain_name: str, **kwargs):
    """:func:`register_task` for a dm_control task: 1000 steps, actions in [-1, 1], the domain's expert."""
    return register_task(
        id,
        domain="dmc",
        action=bounded_action(-1.0, 1.0, action_size),
        max_steps=1000,
        expert=f"omnipolicy.envs.experts.dmc:{EXPERTS[domain_name]}",
        domain_name=domain_name,
        **kwargs,
    )



class DmcEnv(TaskEnv):
    """A dm_control suite task behind the gymnasium interface.

    Args:
        spec: the task's spec.
        domain_name, task_name: the dm_control suite task.
        pixels: observe an RGB image (``"image"``) instead of the named state vectors.
        render_mode: None or ``"rgb_array"`` (``render()`` gives 240x240 frames).
    """

    def __init__(self, spec, domain_name: str, task_name: str, pixels: bool = False, render_mode: str | None = None):
        from dm_control import suite

        super().__init__(spec, render_mode)
        self.env = suite.load(domain_name, task_name, task_kwargs={"random": 0})
        self.physics.model.light_castshadow[:] = 0
        self.pixels = pixels
        if self.env.action_spec().shape != spec.timestep.action.shape:
            raise ValueError(f"{spec.id}: dm_control action shape {self.env.action_spec().shape} != spec")

    @property
    def physics(self):
        """The dm_control ``Physics`` (experts read named joints from it)."""
        return self.env.physics

    @property
    def native_action_space(self):
        import gymnasium as gym  # the simulator loads only when it is used: importing the task registry loads none

        spec = self.env.action_spec()
        return gym.spaces.Box(spec.minimum, spec.maximum, spec.shape, spec.dtype)

    @property
    def n_sub_steps(self) -> int:
        """Physics steps per control step."""
        return self.env._n_sub_steps

    def _observe(self, time_step) -> dict[str, Any]:
        if self.pixels:
            return {"image": self.physics.render(84, 84, camera_id=0)}
        return {k: np.asarray(v).reshape(-1) for k, v in time_step.observation.items()}

    def _reset(self, seed: int | None) -> tuple[dict[str, Any], dict]:
        if seed is not None:
            self.env.task._random = np.random.RandomState(seed)
        return self._observe(self.env.reset()), {}

    def _step(self, action: np.ndarray) -> tuple[dict[str, Any], float, bool, bool, dict]:
        ts = self.env.step(action)
        last = ts.last()
        terminated = bool(last and ts.discount == 0.0)
        return self._observe(ts), float(ts.reward or 0.0), terminated, bool(last and not terminated), {}

    def render(self) -> np.ndarray:
        """RGB frame (240x240x3 uint8) from camera 0."""
        if self.render_mode != "rgb_array":
            raise RuntimeError(f"{self.task.id}: make the env with render_mode='rgb_array' to render")
        return self.physics.render(240, 240, camera_id=0)

    def close(self) -> None:
        self.env.close()


@dmc_task(
    "dmc/cartpole-balance",
    observation=CARTPOLE, action_size=1, instruction=BALANCE, default=True, domain_name="cartpole",
    task_name="balance",
)
@dmc_task(
    "dmc/cartpole-swingup",
    observation=CARTPOLE, action_size=1, instruction=SWINGUP, default=True, domain_name="cartpole",
    task_name="swingup",
)
@dmc_task(
    "dmc/point_mass-easy",
    observation=POINT_MASS, action_size=2, instruction=POINT, default=True, domain_name="point_mass",
    task_name="easy",
)
@dmc_task(
    "dmc/reacher-easy",
    observation=REACHER, action_size=2, instruction=REACH, default=True, domain_name="reacher",
    task_name="easy",
)
@dmc_task(
    "dmc/cartpole-balance-pixels",
    observation=PIXELS, action_size=1, instruction=BALANCE, scores_from="dmc/cartpole-balance",
    domain_name="cartpole", task_name="balance", pixels=True,
)
@dmc_task(
    "dmc/cartpole-swingup-pixels",
    observation=PIXELS, action_size=1, instruction=SWINGUP, scores_from="dmc/cartpole-swingup",
    domain_name="cartpole", task_name="swingup", pixels=True,
)
@dmc_task(
    "dmc/point_mass-easy-pixels",
    observation=PIXELS, action_size=2, instruction=POINT, scores_from="dmc/point_mass-easy",
    domain_name="point_mass", task_name="easy", pixels=True,
)
@dmc_task(
    "dmc/reacher-easy-pixels",
    observation=PIXELS, action_size=2, instruction=REACH, scores_from="dmc/reacher-easy",
    domain_name="reacher", task_name="easy", pixels=True,
)
def make_dmc(spec, render_mode: str | None = None, *, domain_name: str, task_name: str, pixels: bool = False) -> DmcEnv:
    """A dm_control suite task."""
    return DmcEnv(spec, domain_name, task_name, pixels=pixels, render_mode=render_mode)
