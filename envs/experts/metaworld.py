"""Meta-World experts: the scripted policies that ship with ``metaworld.policies``."""

from __future__ import annotations

import warnings

import numpy as np

from omnipolicy.envs.experts.base import Expert
from omnipolicy.envs.metaworld import GOAL, HAND, OBJECT

POLICY_NAMES = {"peg-insert-side-v3": "SawyerPegInsertionSideV3Policy"}
"""Policy class names that don't follow ``Sawyer<CamelName>V3Policy``."""


def policy_name(env_name: str) -> str:
    """``"button-press-topdown-v3"`` -> ``"SawyerButtonPressTopdownV3Policy"``."""
    if env_name in POLICY_NAMES:
        return POLICY_NAMES[env_name]
    base, _, version = env_name.rpartition("-")
    return "Sawyer" + "".join(w.capitalize() for w in base.split("-")) + version.upper() + "Policy"


class MetaWorldExpert(Expert):
    """Runs the task's ``metaworld.policies`` scripted policy on the state vector."""

    def __init__(self, spec, seed: int = 0) -> None:
        import metaworld.policies  # the simulator loads only when it is used: importing the task registry loads none

        super().__init__(spec, seed)
        name = policy_name(spec.factory_kwargs["env_name"])
        try:
            self.policy = getattr(metaworld.policies, name)()
        except AttributeError:
            raise ValueError(f"{spec.id}: metaworld.policies has no {name}") from None

    def act(self, env, obs):
        with warnings.catch_warnings():
            # The policies warn on every step whose P-gain saturates the action; the env clips anyway.
            warnings.filterwarnings("ignore", message=r"Constant\(s\) may be too high")
            action = self.policy.get_action(np.asarray(obs["state"], dtype=np.float64))
        return self.continuous(action)


class PegInsertSideExpert(MetaWorldExpert):
    """``SawyerPegInsertionSideV3Policy`` with two fixes (the shipped policy succeeds ~75% here).

    1. It lifts the moment the hand reaches grasp height, before the fingers have closed;
       this expert first holds still for ``HOLD`` steps with the gripper closing.
    2. It goes back down to "re-grasp" whenever the peg hangs more than 2.5 cm below the
       hand, which drags the held peg along the table; this expert keeps carrying a peg
       that hangs up to ``HANG`` below the hand, toward the same targets the policy uses.
    """

    HOLD = 5
    HANG = 0.06
    GRAB = 0.6

    def reset(self, env, obs) -> None:
        self.held = 0

    def act(self, env, obs):
        from metaworld.policies.policy import move

        s = np.asarray(obs["state"], dtype=np.float64)
        hand, peg, goal = s[HAND], s[OBJECT], s[GOAL]
        near_xy = np.linalg.norm(hand[:2] - peg[:2]) <= 0.04
        gap = hand[2] - peg[2]
        if self.held < self.HOLD:
            if near_xy and abs(gap) <= 0.025:
                self.held += 1
                return self.continuous([0.0, 0.0, 0.0, self.GRAB])
            return super().act(env, obs)
        if near_xy and -0.01 <= gap <= self.HANG:  # carrying: the policy's transport targets
            hole = np.array([-0.35, goal[1], 0.16])
            target = hole + np.array([0.4, 0.0, 0.0]) if np.linalg.norm(peg[1:] - hole[1:]) > 0.03 else hole
            return self.continuous([*move(hand, to_xyz=target, p=25.0), self.GRAB])
        self.held = 0  # dropped: start over with the policy
        return super().act(env, obs)
