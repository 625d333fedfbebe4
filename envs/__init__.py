"""Tasks, simulator adapters and scripted experts.

>>> from omnipolicy.envs import get_task, make_env, make_expert, DEFAULT_SUITE

Importing this package loads no simulator; ``make_env`` imports the one it needs.
"""

from typing import Any

from omnipolicy.envs.registry import TaskSpec, get_task, list_tasks, make_env, make_expert, register_task

__all__ = ["TaskSpec", "register_task", "get_task", "list_tasks", "make_env", "make_expert", "DEFAULT_SUITE"]


def __getattr__(name: str) -> Any:
    if name == "DEFAULT_SUITE":
        from omnipolicy.envs import registry

        return registry.DEFAULT_SUITE
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
