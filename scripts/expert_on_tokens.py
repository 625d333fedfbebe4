"""Can a task be solved from what the model sees? Each expert acts on Gato-tokenised observations.

Every continuous observation field goes through the tokenizer's own binning
and back (mu-law and 1024 bins, or the field's bounds) before the task's
scripted expert sees it; the expert's success and return are compared with the
same episodes on the exact observations (episode k of a task is reset with seed
``seed + k`` in both runs). If the expert still succeeds, the tokenisation is
not what limits a policy trained on that task.

Only experts that act on the observation are tested: the default tasks are the
default suite's Meta-World and classic-control ones. The dm_control, MuJoCo and
Atari experts read the simulator's state or emulator and would not notice.

    python scripts/expert_on_tokens.py                      # 10 episodes per task
    python scripts/expert_on_tokens.py --tasks metaworld/push-v3 --episodes 20

Ends with one line of JSON: per task, the exact and tokenised success rates and
mean returns.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import numpy as np
import tqdm
import tyro

from omnipolicy.envs import DEFAULT_SUITE
from omnipolicy.envs.registry import get_task, make_env, make_expert
from omnipolicy.envs.rollout import run_episode
from omnipolicy.tokenizers.continuous import decode_continuous, encode_continuous

OBSERVATION_EXPERT_DOMAINS = ("metaworld", "classic")
"""Domains whose experts act on the observation only (the others read simulator internals)."""


@dataclass(frozen=True)
class Config:
    tasks: tuple[str, ...] = ()
    """Task ids (default: the default suite's tasks of the domains whose experts act on the observation)."""
    episodes: int = 10
    """Episodes per task and observation kind."""
    seed: int = 60_000
    """Reset seed of episode 0 (episode k: seed + k)."""


def through_tokens(obs: dict, spec) -> dict:
    """``obs`` with every continuous field binned and decoded as the tokenizer does (bin centres)."""
    out = dict(obs)
    for f in spec.observation:
        if f.kind == "continuous":
            low, high = (f.low, f.high) if f.bounded else (None, None)
            bins, _ = encode_continuous(np.asarray(obs[f.name]), low, high, field=f.name)
            out[f.name] = decode_continuous(bins, low, high).astype(np.asarray(obs[f.name]).dtype)
    return out


class OnTokens:
    """An expert that sees the tokenised observation instead of the exact one."""

    def __init__(self, expert, spec) -> None:
        self.expert, self.spec = expert, spec

    def reset(self, env, obs) -> None:
        self.expert.reset(env, through_tokens(obs, self.spec))

    def act(self, env, obs):
        return self.expert.act(env, through_tokens(obs, self.spec))


def main(cfg: Config) -> dict:
    tasks = cfg.tasks or tuple(t for t in DEFAULT_SUITE if t.split("/")[0] in OBSERVATION_EXPERT_DOMAINS)
    results = {}
    for task_id in tqdm.tqdm(tasks, desc="tasks", unit="task"):
        spec = get_task(task_id)
        row = {}
        for kind in ("exact", "tokens"):
            env = make_env(task_id)
            returns, successes = [], []
            for k in range(cfg.episodes):
                expert = make_expert(task_id, seed=k)
                policy = expert if kind == "exact" else OnTokens(expert, spec.timestep)
                r = run_episode(env, policy, cfg.seed + k)
                returns.append(r.ret)
                successes.append(r.success)
            env.close()
            row[f"{kind}_return"] = round(float(np.mean(returns)), 1)
            if spec.has_success:
                row[f"{kind}_success"] = round(float(np.mean(successes)), 2)
        results[task_id] = row
        succ = f"success {row['exact_success']:.0%} -> {row['tokens_success']:.0%}, " if spec.has_success else ""
        tqdm.tqdm.write(f"{task_id:40s} {succ}return {row['exact_return']:.1f} -> {row['tokens_return']:.1f}")
    print(json.dumps({"episodes": cfg.episodes, "seed": cfg.seed, "tasks": results}))
    return results


if __name__ == "__main__":
    os.environ.setdefault("MUJOCO_GL", "egl")
    main(tyro.cli(Config))
