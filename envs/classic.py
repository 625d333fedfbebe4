"""Gymnasium classic control: CartPole, Acrobot, MountainCar, Pendulum (state vectors)."""

from __future__ import annotations

from omnipolicy.envs.registry import bounded_action, discrete_action, register_task, vector

EXPERTS = "omnipolicy.envs.experts.classic"


@register_task(
    "classic/cartpole-v1",
    domain="classic",
    observation=(vector("state", 4),),
    action=discrete_action(2),
    max_steps=500,
    instruction="Push the cart left or right to keep the pole upright.",
    expert=f"{EXPERTS}:CartPoleExpert",
    default=True,
    gym_id="CartPole-v1",
)
@register_task(
    "classic/acrobot-v1",
    domain="classic",
    observation=(vector("state", 6),),
    action=discrete_action(3),
    max_steps=500,
    instruction="Swing the two-link arm until its tip rises above the bar.",
    expert=f"{EXPERTS}:AcrobotExpert",
    default=True,
    gym_id="Acrobot-v1",
)
@register_task(
    "classic/mountaincar-v0",
    domain="classic",
    observation=(vector("state", 2),),
    action=discrete_action(3),
    max_steps=200,
    instruction="Rock the car back and forth to drive it up to the flag on the right hill.",
    expert=f"{EXPERTS}:MountainCarExpert",
    default=True,
    gym_id="MountainCar-v0",
)
@register_task(
    "classic/pendulum-v1",
    domain="classic",
    observation=(vector("state", 3),),
    action=bounded_action(-2.0, 2.0, 1),
    max_steps=200,
    instruction="Swing the pendulum up and hold it upright with little torque.",
    expert=f"{EXPERTS}:PendulumExpert",
    default=True,
    gym_id="Pendulum-v1",
)
def make_classic(spec, render_mode: str | None = None, *, gym_id: str):
    """A classic-control task: the gymnasium env's observation is ``"state"``."""
    # gymnasium loads only when an env is made: registering and listing tasks imports no simulator
    import gymnasium as gym

    from omnipolicy.envs.base import GymTaskEnv  # imports gymnasium

    return GymTaskEnv(spec, gym.make(gym_id, render_mode=render_mode).unwrapped, render_mode)
