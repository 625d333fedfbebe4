"""Worker processes that run rollouts (collection, DAgger rounds, evaluation): what each of them sets up."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import Any


def watch_parent(parent_pid: int) -> None:
    """Exit this worker when the process that started it is gone (e.g. SIGKILLed), so no orphan keeps running.

    Call it first in a process pool's initializer: a daemon thread polls the parent twice a second.

    Args:
        parent_pid: the starting process's pid (``os.getpid()`` there, passed in the initializer's arguments).
    """

    def watch() -> None:
        ppid = os.getppid()
        while True:
            time.sleep(0.5)
            try:
                os.kill(parent_pid, 0)
            except ProcessLookupError:
                os._exit(0)
            if os.getppid() != ppid:
                os._exit(0)

    threading.Thread(target=watch, daemon=True).start()


_ACTOR: Any = None


def actor_recipe(actor: Any, purpose: str) -> Callable[[], Any]:
    """The picklable callable that rebuilds ``actor`` in a worker process (its ``recipe``).

    Args:
        actor: an evaluation actor; ``PolicyActor.from_checkpoint``, ``ExpertActor`` and ``RandomActor`` carry one.
        purpose: what needs it, for the error (e.g. ``"evaluate(workers=2)"``).

    Raises:
        ValueError: the actor has no recipe.
    """
    recipe = getattr(actor, "recipe", None)
    if recipe is None:
        raise ValueError(f"{purpose} rebuilds the actor in each worker process, but this {type(actor).__name__} "
                         f"has no recipe (build a PolicyActor with PolicyActor.from_checkpoint)")
    return recipe


def init_actor_worker(recipe: Callable[[], Any], threads: int, parent_pid: int) -> None:
    """A process pool's initializer: watch the parent, use ``threads`` torch threads, build the actor once.

    The actor is then :func:`worker_actor` for every task the worker runs.
    """
    import torch  # the actor's model; only worker processes that act load it here

    watch_parent(parent_pid)
    torch.set_num_threads(threads)
    global _ACTOR
    _ACTOR = recipe()


def worker_actor() -> Any:
    """The actor :func:`init_actor_worker` built in this worker process."""
    return _ACTOR
