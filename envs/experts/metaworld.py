"""Meta-World experts: the scripted policies that ship with ``metaworld.policies``."""

from __future__ import annotations

import warnings

import numpy as np

from omnipolicy.envs.experts.base import Expert

# The scripted policies warn on every step whose P-gain saturates the action; the env clips anyway.
warnings.filterwarnings("ignore", message=r"Constant\(s\) may be too high", module="metaworld")

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
        import metaworld.policies

        super().__init__(spec, seed)
        name = policy_name(spec.factory_kwargs["env_name"])
        try:
            self.policy = getattr(metaworld.policies, name)()
        except AttributeError:
            raise ValueError(f"{spec.id}: metaworld.policies has no {name}") from None

    def act(self, env, obs):
        return self.continuous(self.policy.get_action(np.asarray(obs["state"], dtype=np.float64)))
