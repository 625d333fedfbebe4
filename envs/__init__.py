"""Tasks, simulator adapters and scripted experts.

>>> from omnipolicy.envs import get_task, make_env, make_expert, DEFAULT_SUITE

Importing this package loads no simulator; ``make_env`` imports the one it needs.

Conventions shared by every task (``omnipolicy tasks`` lists them):

* observations are dicts keyed by ``spec.timestep.observation`` names: float32 vectors,
  uint8 (H, W, 3) images, ``str`` text; each step returns fresh arrays;
* ``env.action_space`` is Gymnasium's conventional space: ``Discrete(n)`` for one discrete
  value, ``MultiDiscrete`` for several, ``Box`` for continuous actions (float32, clipped to
  the spec's bounds); a discrete observation field is ``Discrete(n)`` when a scalar and
  ``MultiDiscrete`` of its shape otherwise (observations always keep the spec's shape);
* actions inside omnipolicy (experts, policies, rollouts, datasets, the tokenizer) keep the
  spec's form: a discrete action is an int64 array of shape (1,), one token, stored as a
  (T, 1) column. ``env.step`` takes either form: ``env.action_space.sample()`` (an int)
  or the spec's array;
* a text action (the vision-language tasks' answers, ``envs/vqa.py``) is a ``str``: ``env.step``
  takes the string, the tokenizer makes it a fixed width of text tokens ending in an end marker;
* ``reset(seed=s)`` is deterministic; episodes truncate at ``spec.max_steps``;
* where ``spec.has_success``, ``info["success"]`` is True once the task has been solved in
  the episode (so the last step's value is the episode's success);
* ``RandomPolicy`` (``omnipolicy.envs.experts.base``) is the normalisation's 0 point;
  scores are measured by ``scripts/measure_experts.py`` into ``envs/expert_scores.json``.
"""

from typing import Any

from omnipolicy.envs import registry
from omnipolicy.envs.registry import (
    TaskSpec,
    get_task,
    list_tasks,
    make_env,
    make_expert,
    make_teacher,
    register_task,
    task_entry,
)

__all__ = ["TaskSpec", "register_task", "get_task", "list_tasks", "make_env", "make_expert", "make_teacher",
           "task_entry", "DEFAULT_SUITE"]


def __getattr__(name: str) -> Any:
    if name == "DEFAULT_SUITE":  # the registry builds it on first use (it registers every domain's tasks)
        return registry.DEFAULT_SUITE
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
