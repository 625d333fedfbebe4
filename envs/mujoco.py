"""Gymnasium MuJoCo v5: InvertedPendulum, InvertedDoublePendulum, Reacher (state vectors).

``render_mode="rgb_array"`` gives ``env.render()`` frames (shadows off: llvmpipe
renders several times faster without them).
"""

from __future__ import annotations

from omnipolicy.envs.registry import bounded_action, register_task, vector

EXPERTS = "omnipolicy.envs.experts.mujoco"


@register_task(
    "mujoco/inverted-pendulum-v5",
    domain="mujoco",
    observation=(vector("state", 4),),
    action=bounded_action(-3.0, 3.0, 1),
    max_steps=1000,
    instruction="Move the cart to keep the pole balanced upright.",
    expert=f"{EXPERTS}:InvertedPendulumExpert",
    default=True,
    gym_id="InvertedPendulum-v5",
)
@register_task(
    "mujoco/inverted-double-pendulum-v5",
    domain="mujoco",
    observation=(vector("state", 9),),
    action=bounded_action(-1.0, 1.0, 1),
    max_steps=1000,
    instruction="Move the cart to keep both poles of the double pendulum balanced upright.",
    expert=f"{EXPERTS}:InvertedDoublePendulumExpert",
    default=True,
    gym_id="InvertedDoublePendulum-v5",
)
@register_task(
    "mujoco/reacher-v5",
    domain="mujoco",
    observation=(vector("state", 10),),
    action=bounded_action(-1.0, 1.0, 2),
    max_steps=50,
    instruction="Move the tip of the two-joint arm to the target.",
    expert=f"{EXPERTS}:ReacherExpert",
    default=True,
    gym_id="Reacher-v5",
)
def make_mujoco(spec, render_mode: str | None = None, *, gym_id: str):
    """A gymnasium MuJoCo task: the env's observation is ``"state"``."""
    # gymnasium loads only when an env is made: registering and listing tasks imports no simulator
    import gymnasium as gym

    from omnipolicy.envs.base import GymTaskEnv  # imports gymnasium

    kwargs = {"width": 240, "height": 240} if render_mode else {}
    env = gym.make(gym_id, render_mode=render_mode, **kwargs).unwrapped
    env.model.light_castshadow[:] = 0
    return GymTaskEnv(spec, env, render_mode)
